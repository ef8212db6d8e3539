//! The real node itself: it starts, runs a pod on the pod network that reaches
//! the API server through the `kubernetes` Service, and leaves the host as it
//! was (the runner's last check).

use p12_testenv::Node;
use p12_testenv::node::harness::{self, Case};

fn main() -> std::process::ExitCode {
    harness::main(
        "node-self",
        || vec![],
        &[Case {
            name: "a_pod_runs_on_the_pod_network",
            run: a_pod_runs_on_the_pod_network,
        }],
    )
}

fn a_pod_runs_on_the_pod_network(node: &'static Node) {
    let kubectl = |args: &[&str]| {
        let out = node.cp.kubectl().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    kubectl(&[
        "run",
        "sleeper",
        "--image=localhost/p12-testenv/pause:1",
        "--image-pull-policy=Never",
        "--restart=Never",
    ]);
    kubectl(&[
        "wait",
        "pod/sleeper",
        "--for=condition=Ready",
        "--timeout=60s",
    ]);
    let ip = kubectl(&["get", "pod", "sleeper", "-o", "jsonpath={.status.podIP}"]);
    assert!(
        ip.starts_with("10.244.0."),
        "pod IP {ip} is not on the pod network"
    );
}
