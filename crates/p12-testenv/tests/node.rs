//! The real node itself: it starts, runs a pod on the pod network, and leaves
//! the host as it was (the runner's last check) — also after a run that was
//! killed outright: a first node is started in a child process, given a pod,
//! and SIGKILLed (its shims, containers, bridge, iptables rules, mounts and
//! cgroups stay behind); the next start must clean all of that up.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use p12_testenv::Node;
use p12_testenv::node::harness::{self, Case};
use p12_testenv::node::host::HostState;
use p12_testenv::tools;

const CHILD_ENV: &str = "P12_NODE_KILLED_RUN";
const KILLED_LABEL: &str = "node-self-killed";

fn main() -> ExitCode {
    if std::env::var_os(CHILD_ENV).is_some() {
        return killed_run_child();
    }
    let filters: Vec<String> = std::env::args().skip(1).collect();
    if filters.iter().any(|a| a == "--list") {
        return harness::main("node-self", Vec::new, &cases());
    }
    let marker = tools::target_dir().join("testenv");
    let before = HostState::capture(&marker.join(KILLED_LABEL));
    let t = Instant::now();
    leave_a_killed_run();
    println!(
        "a node run killed with SIGKILL after {:.1}s, its pod running",
        t.elapsed().as_secs_f64()
    );
    let code = harness::main("node-self", Vec::new, &cases());
    // The killed run's leftovers were removed by the next start: the host is as
    // it was before the killed run began.
    let left = before.diff(&HostState::capture(&marker.join(KILLED_LABEL)));
    if left.is_empty() {
        println!("test a_killed_run_leaves_nothing_after_the_next_run ... ok");
        code
    } else {
        println!("test a_killed_run_leaves_nothing_after_the_next_run ... FAILED");
        for l in left {
            println!("  {l}");
        }
        ExitCode::FAILURE
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "the_killed_run_was_cleaned_up_by_this_start",
            run: the_killed_run_was_cleaned_up_by_this_start,
        },
        Case {
            name: "a_pod_runs_on_the_pod_network",
            run: a_pod_runs_on_the_pod_network,
        },
    ]
}

fn kubectl(node: &Node, args: &[&str]) -> String {
    let out = node.cp.kubectl().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_sleeper(node: &Node) {
    kubectl(
        node,
        &[
            "run",
            "sleeper",
            "--image=localhost/p12-testenv/pause:1",
            "--image-pull-policy=Never",
            "--restart=Never",
        ],
    );
    kubectl(
        node,
        &[
            "wait",
            "pod/sleeper",
            "--for=condition=Ready",
            "--timeout=60s",
        ],
    );
}

/// In the child: a node with a running pod, then wait to be killed.
fn killed_run_child() -> ExitCode {
    let node = match Node::start(KILLED_LABEL, &[]) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    run_sleeper(&node);
    println!("READY");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Starts the child and SIGKILLs it once its pod runs: no teardown happens.
fn leave_a_killed_run() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("failed to start the child run");
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "READY");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ready, "the child run did not get its pod running");
}

fn the_killed_run_was_cleaned_up_by_this_start(node: &'static Node) {
    assert!(
        node.recovered
            .iter()
            .any(|d| d.file_name().is_some_and(|n| n == KILLED_LABEL)),
        "this start found no killed run to clean up: {:?}",
        node.recovered
    );
}

fn a_pod_runs_on_the_pod_network(node: &'static Node) {
    run_sleeper(node);
    let ip = kubectl(
        node,
        &["get", "pod", "sleeper", "-o", "jsonpath={.status.podIP}"],
    );
    assert!(
        ip.starts_with("10.244.0."),
        "pod IP {ip} is not on the pod network"
    );
}
