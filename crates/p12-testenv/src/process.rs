//! Child processes that cannot outlive the process that started them.
//!
//! Every child is spawned from one long-lived thread with `PR_SET_PDEATHSIG`, so
//! the kernel kills it when the test binary or the demo exits for any reason
//! (normal exit, panic, abort, SIGKILL). The signal is tied to the spawning
//! *thread*, which is why spawning happens on a thread that never ends.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this loop never ends while the process runs.
            })
            .expect("failed to start the testenv spawner thread");
        tx
    })
}

/// Spawns `cmd` so that it dies with this process; it also gets its own process
/// group, so `kill_group` reaches anything it forks.
pub fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(io::Error::other("parent exited before the child started"));
            }
            Ok(())
        });
    }
    cmd.process_group(0);
    let (tx, rx) = mpsc::channel();
    spawner()
        .send((cmd, tx))
        .map_err(|_| io::Error::other("testenv spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("testenv spawner thread is gone"))?
}

/// Sends `signal` to the process group led by `pid`.
/// Whether a process with this pid exists (signal 0 only checks).
pub(crate) fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 sends nothing; kill only looks the pid up.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

pub fn signal_group(pid: u32, signal: i32) {
    // SAFETY: plain syscall; a stale pid group is harmless (ESRCH).
    unsafe {
        libc::kill(-(pid as i32), signal);
    }
}

/// Stops a child: SIGTERM to its group, then SIGKILL after `grace`, and reaps it.
pub fn stop(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal_group(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_group(child.id(), libc::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}
