//! Test hosts in a network namespace of our own: EndpointSlices refuse loopback
//! addresses, so TLS servers that a Service points at listen on addresses of a
//! veth pair into a namespace this process created. Traffic never leaves the
//! machine. Needs root and `ip` (iproute2).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

use super::HarnessError;

/// A network namespace joined to the host by a veth pair: the host side is
/// `<net>.1`, test hosts get `<net>.2`, `<net>.3`, ….
pub struct TestNet {
    pub name: String,
    host_if: String,
    ns_if: String,
    net: [u8; 3],
    next: AtomicU8,
}

fn ip(args: &[&str]) -> Result<(), HarnessError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| HarnessError::Start(format!("failed to run `ip` (install iproute2): {e}")))?;
    if !out.status.success() {
        return Err(HarnessError::Start(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Removes namespaces left by test processes that died without cleaning up.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("p12t-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse().ok())
        {
            if !crate::process::alive(pid) {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
}

/// Namespaces to delete when the process exits (statics are never dropped).
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

extern "C" fn delete_created() {
    if let Ok(names) = CREATED.lock() {
        for name in names.iter() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl TestNet {
    /// Creates namespace `p12t-<pid>-<n>` with a /24 of 10.213.0.0/16 picked from the pid.
    pub fn create(n: u8) -> Result<TestNet, HarnessError> {
        remove_stale();
        let pid = std::process::id();
        let name = format!("p12t-{pid}-{n}");
        let tag = format!("{:x}{n}", pid % 0xfffff);
        let host_if = format!("p12h{tag}");
        let ns_if = format!("p12n{tag}");
        let net = [
            10,
            213,
            ((pid as u8).wrapping_mul(7)).wrapping_add(n.wrapping_mul(31)),
        ];
        let host_ip = format!("{}.{}.{}.1/24", net[0], net[1], net[2]);
        ip(&["netns", "add", &name])?;
        {
            let mut created = CREATED.lock().unwrap();
            if created.is_empty() {
                // SAFETY: registers a plain extern "C" function.
                unsafe { libc::atexit(delete_created) };
            }
            created.push(name.clone());
        }
        let t = TestNet {
            name: name.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
            net,
            next: AtomicU8::new(2),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &host_ip, "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        ip(&["-n", &name, "link", "set", &ns_if, "up"])?;
        Ok(t)
    }

    /// Adds the next address to the namespace side and returns it.
    pub fn add_host(&self) -> Result<Ipv4Addr, HarnessError> {
        let last = self.next.fetch_add(1, Ordering::SeqCst);
        let addr = Ipv4Addr::new(self.net[0], self.net[1], self.net[2], last);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &self.ns_if,
        ])?;
        Ok(addr)
    }

    /// Binds a TCP listener inside the namespace (on a thread that joins it, so
    /// the socket belongs there) and hands it back to use from any thread.
    pub fn bind(&self, addr: SocketAddr) -> Result<TcpListener, HarnessError> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns =
                std::fs::File::open(&path).map_err(|e| format!("failed to open {path}: {e}"))?;
            // SAFETY: setns on this short-lived thread only; the fd is valid.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "failed to enter {path}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            TcpListener::bind(addr).map_err(|e| format!("failed to bind {addr} in {path}: {e}"))
        })
        .join()
        .map_err(|_| HarnessError::Start("netns bind thread panicked".into()))?
        .map_err(HarnessError::Start)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
