//! Crash points for the reliability suite, compiled in only with the `faults`
//! feature (scripts/test enables it for `tests/reliability.rs`; no build that
//! ships has it). With `P12_CRASH_AT=<point>` in its environment the operator
//! kills itself (SIGKILL) when it reaches that point, so tests can prove that a
//! crash at any step converges. With `P12_PANIC_ON=<name>` reconciling a request
//! of that name panics, to prove a poison pill stops nothing else. Without the
//! feature both hooks are empty: no environment lookup, no messages.

#[cfg(feature = "faults")]
fn setting(var: &str) -> Option<&'static str> {
    use std::sync::OnceLock;
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
#[cfg(feature = "faults")]
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
#[cfg(feature = "faults")]
pub fn panic_point(request: &str) {
    if setting("P12_PANIC_ON") == Some(request) {
        panic!("P12_PANIC_ON: reconciling {request} panics on purpose");
    }
}

/// Without the `faults` feature: nothing.
#[cfg(not(feature = "faults"))]
#[inline(always)]
pub fn crash_point(_point: &str) {}

/// Without the `faults` feature: nothing.
#[cfg(not(feature = "faults"))]
#[inline(always)]
pub fn panic_point(_request: &str) {}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// Reached only in a child process that `p12_crash_at_kills_only_a_build_with_the_faults_feature` starts.
    #[test]
    #[ignore = "run by p12_crash_at_kills_only_a_build_with_the_faults_feature in a child process"]
    fn reach_the_after_keygen_crash_point() {
        super::crash_point("after-keygen");
        super::panic_point("poison");
    }

    #[test]
    fn p12_crash_at_kills_only_a_build_with_the_faults_feature() {
        // A child process, so a hook that fires kills it and not this test run.
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "faults::tests::reach_the_after_keygen_crash_point",
            ])
            .args(["--ignored", "--test-threads=1"])
            .env("P12_CRASH_AT", "after-keygen")
            .env("P12_PANIC_ON", "poison")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if cfg!(feature = "faults") {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGKILL),
                "with the faults feature P12_CRASH_AT kills the process: {}\n{stdout}",
                out.status
            );
        } else {
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "a production build (no faults feature) ignores P12_CRASH_AT and P12_PANIC_ON: {}\n{stdout}",
                out.status
            );
        }
    }
}
