//! What glibc's allocator holds inside the operator, read without stopping it.
//!
//! RSS says what the kernel maps, not what the program still uses: glibc keeps
//! freed memory in its arenas and gives it back only when the top of an arena
//! is free or `malloc_trim` runs. To tell memory still in use from memory the
//! allocator merely keeps, churn mode preloads a small helper into the operator
//! (`LD_PRELOAD`, built here with `cc`): a thread that blocks on a FIFO and, on
//! request, writes `mallinfo2()` — bytes in use and bytes free inside the
//! allocator, over all arenas — and, when asked, calls `malloc_trim(0)` and
//! reports again. No ptrace: attaching gdb to call `malloc_stats` failed on this
//! VM (gdb could not restore the extended register state and the interrupted
//! system call returned errno 514 to the program), so it is not used.
//!
//! The helper allocates nothing itself (no stdio; one thread with a 64 KiB
//! stack) and is loaded only in churn mode.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

const HELPER_C: &str = r#"
/* p12-bench churn mode: glibc allocator statistics on request (see mallinfo.rs). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char req_path[4096], reply_path[4096], tmp_path[4096];

static void answer(int trim) {
    struct mallinfo2 a = mallinfo2();
    struct mallinfo2 b = a;
    int released = -1;
    if (trim) {
        released = malloc_trim(0);
        b = mallinfo2();
    }
    char buf[1024];
    int n = snprintf(buf, sizeof buf,
        "arena %zu\nhblkhd %zu\nuordblks %zu\nfordblks %zu\nkeepcost %zu\n"
        "released %d\nafter_arena %zu\nafter_hblkhd %zu\nafter_uordblks %zu\nafter_fordblks %zu\n",
        a.arena, a.hblkhd, a.uordblks, a.fordblks, a.keepcost,
        released, b.arena, b.hblkhd, b.uordblks, b.fordblks);
    int fd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return;
    if (n > 0) { ssize_t w = write(fd, buf, (size_t)n); (void)w; }
    close(fd);
    rename(tmp_path, reply_path);
}

static void *serve(void *unused) {
    (void)unused;
    for (;;) {
        int fd = open(req_path, O_RDONLY); /* blocks until p12-bench opens the FIFO */
        if (fd < 0) { sleep(1); continue; }
        char c = 0;
        ssize_t n = read(fd, &c, 1);
        close(fd);
        if (n == 1) answer(c == 't');
    }
    return NULL;
}

__attribute__((constructor)) static void start(void) {
    const char *dir = getenv("P12_BENCH_MALLINFO_DIR");
    if (!dir) return;
    snprintf(req_path, sizeof req_path, "%s/request", dir);
    snprintf(reply_path, sizeof reply_path, "%s/reply", dir);
    snprintf(tmp_path, sizeof tmp_path, "%s/reply.tmp", dir);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    pthread_create(&t, &attr, serve, NULL);
    pthread_attr_destroy(&attr);
}
"#;

/// The helper, built and ready to preload; `dir` holds its FIFO and replies.
pub(crate) struct Helper {
    pub(crate) dir: PathBuf,
    pub(crate) library: PathBuf,
}

impl Helper {
    /// Builds the helper in `dir` (created) and makes its FIFO.
    pub(crate) fn build(dir: &Path) -> anyhow::Result<Helper> {
        std::fs::create_dir_all(dir)?;
        let source = dir.join("mallinfo.c");
        let library = dir.join("mallinfo.so");
        std::fs::write(&source, HELPER_C)?;
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&library)
            .arg(&source)
            .arg("-lpthread")
            .output()
            .context("running cc to build the allocator helper")?;
        if !out.status.success() {
            bail!(
                "cc failed to build the allocator helper: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let fifo = dir.join("request");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
        // SAFETY: plain syscall on a NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            bail!(
                "mkfifo {}: {}",
                fifo.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Helper {
            dir: dir.to_path_buf(),
            library,
        })
    }

    /// Environment for the operator process.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.library.display().to_string()),
            (
                "P12_BENCH_MALLINFO_DIR".into(),
                self.dir.display().to_string(),
            ),
        ]
    }

    /// Asks the helper for `mallinfo2()`; with `trim`, also for `malloc_trim(0)`
    /// and the figures after it. Bytes.
    pub(crate) fn query(&self, trim: bool) -> anyhow::Result<Value> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let reply = self.dir.join("reply");
        let _ = std::fs::remove_file(&reply);
        // Non-blocking: fails at once (ENXIO) when no helper is listening.
        let mut fifo = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(self.dir.join("request"))
            .context("the allocator helper is not listening (not preloaded?)")?;
        fifo.write_all(if trim { b"t" } else { b"s" })?;
        drop(fifo);
        let began = Instant::now();
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&reply) {
                break text;
            }
            if began.elapsed() > Duration::from_secs(10) {
                bail!("the allocator helper did not answer within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(-1)
        };
        let mut v = json!({
            // In use: live allocations (small ones in arenas, large ones mmapped).
            "in_use_bytes": field("uordblks") + field("hblkhd"),
            // Free inside the arenas: kept by malloc, resident or not.
            "free_bytes": field("fordblks"),
            // Obtained from the system: arenas plus mmapped chunks.
            "system_bytes": field("arena") + field("hblkhd"),
            "releasable_top_bytes": field("keepcost"),
        });
        if trim {
            v["trim_released"] = json!(field("released") == 1);
            v["after_trim"] = json!({
                "in_use_bytes": field("after_uordblks") + field("after_hblkhd"),
                "free_bytes": field("after_fordblks"),
                "system_bytes": field("after_arena") + field("after_hblkhd"),
            });
        }
        Ok(v)
    }
}
