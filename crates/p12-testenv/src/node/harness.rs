//! The test runner of a real-node test binary (`harness = false`): one node
//! for the whole binary, the cases one after another (they share one machine
//! with 2 cores, and pods of one case must not slow another's timings), a
//! teardown that always runs — after a failing or panicking case too — and a
//! last check that the host is left as it was.
//!
//! `cargo test --test node -- <filter>` runs the cases whose name contains the
//! filter; `--list` lists them.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use super::Node;

/// One test case: a name and a function of the node. Cases run in the order
/// given and may build on what an earlier one set up (say so in its name).
pub struct Case {
    pub name: &'static str,
    pub run: fn(&'static Node),
}

/// Starts the node (importing `images`), runs the selected cases, tears the
/// node down and checks the host. Exit status 0 only when every case passed
/// and nothing was left behind.
pub fn main(label: &str, images: impl FnOnce() -> Vec<PathBuf>, cases: &[Case]) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for c in cases {
            println!("{}: test", c.name);
        }
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<&Case> = cases
        .iter()
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} tests on a real node", selected.len());
    if selected.is_empty() {
        println!("\ntest result: ok. 0 passed; 0 failed\n");
        return ExitCode::SUCCESS;
    }

    let t = Instant::now();
    let archives = images();
    let node = match Node::start(label, &archives) {
        Ok(n) => &*Box::leak(Box::new(n)),
        Err(e) => {
            // Loud, with the component's own error line; never a fallback.
            eprintln!("\nthe node did not start: {e}\n");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "node up in {:.1}s (images built/found in {:.1}s; imports: {})",
        node.startup.as_secs_f64(),
        (t.elapsed() - node.startup).as_secs_f64(),
        node.imports
            .iter()
            .map(|(n, d)| format!("{n} {:.1}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut failed = Vec::new();
    for case in &selected {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (case.run)(node)));
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => println!("test {} ... ok ({secs:.1}s)", case.name),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                println!("test {} ... FAILED ({secs:.1}s)\n  {msg}", case.name);
                failed.push(case.name);
            }
        }
    }

    let t = Instant::now();
    let left = node.teardown();
    println!("node torn down in {:.1}s", t.elapsed().as_secs_f64());
    if !left.is_empty() {
        println!("test host_left_as_it_was ... FAILED");
        for l in &left {
            println!("  {l}");
        }
        failed.push("host_left_as_it_was");
    } else {
        println!("test host_left_as_it_was ... ok");
    }
    let total = selected.len() + 1;
    if failed.is_empty() {
        println!("\ntest result: ok. {total} passed; 0 failed\n");
        ExitCode::SUCCESS
    } else {
        println!(
            "\nfailures: {}\ntest result: FAILED. {} passed; {} failed\n",
            failed.join(", "),
            total - failed.len(),
            failed.len()
        );
        ExitCode::FAILURE
    }
}
