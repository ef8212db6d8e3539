//! Shared helpers for the integration tests: the one control plane per test
//! binary, fresh namespaces, waiting for conditions.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use p12_operator::testenv::TestCluster;

/// The control plane of this test binary, with the local pod runner running the
/// `p12-operator` binary cargo built for these tests.
pub fn cluster() -> &'static TestCluster {
    let c = TestCluster::shared();
    c.start_pod_runner(Path::new(env!("CARGO_BIN_EXE_p12-operator")));
    c
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
