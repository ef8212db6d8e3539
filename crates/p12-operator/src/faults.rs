//! Crash points for the reliability suite. With `P12_CRASH_AT=<point>` in its
//! environment the operator kills itself (SIGKILL) when it reaches that point,
//! so tests can prove that a crash at any step converges. With
//! `P12_PANIC_ON=<name>` reconciling a request of that name panics, to prove a
//! poison pill stops nothing else. Unset (always, in production) they cost one
//! environment lookup at start-up.

use std::sync::OnceLock;

fn setting(var: &str) -> Option<&'static str> {
    static CRASH: OnceLock<Option<String>> = OnceLock::new();
    static PANIC: OnceLock<Option<String>> = OnceLock::new();
    let cell = if var == "P12_CRASH_AT" {
        &CRASH
    } else {
        &PANIC
    };
    cell.get_or_init(|| std::env::var(var).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// Kills the process here when `P12_CRASH_AT` names this point.
pub fn crash_point(point: &str) {
    if setting("P12_CRASH_AT") == Some(point) {
        tracing::warn!(point, "P12_CRASH_AT reached: killing the process");
        // SAFETY: raising SIGKILL on ourselves.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Panics when `P12_PANIC_ON` names this request.
pub fn panic_point(request: &str) {
    if setting("P12_PANIC_ON") == Some(request) {
        panic!("P12_PANIC_ON: reconciling {request} panics on purpose");
    }
}
