//! Keeps the load benchmark working: runs `p12-bench` at a smoke size (5
//! requests, with a renewal wave) against its own local control plane, once
//! with the operator and once with the null writer, and checks that its JSON
//! holds sensible figures. Not a timed test: the real figures are in
//! docs/benchmarks.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The operator binary cargo built beside p12-bench. This crate must not depend
/// on p12-operator, so cargo cannot hand its path over (`CARGO_BIN_EXE_*` covers
/// only this package's binaries); `cargo test --workspace` builds both into the
/// same folder before any test runs. Run alone, build it first:
/// `cargo build -p p12-operator && cargo test -p p12-testenv --test bench_smoke`.
fn operator_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_p12-bench")).with_file_name("p12-operator");
    assert!(
        bin.is_file(),
        "{} is missing: run this test through `cargo test --workspace`, or `cargo build -p p12-operator` first",
        bin.display()
    );
    bin
}

fn run_bench(label: &str, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("result.json");
    let out = Command::new(env!("CARGO_BIN_EXE_p12-bench"))
        .args(["--requests", "5", "--namespaces", "2", "--settle", "1"])
        .args(["--timeout", "60", "--label", label, "--json"])
        .arg(&json)
        .arg("--operator-bin")
        .arg(operator_bin())
        .args(extra)
        .output()
        .expect("p12-bench starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "p12-bench {extra:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("throughput (/s)"),
        "no table on stdout:\n{stdout}"
    );
    let text = std::fs::read_to_string(Path::new(&json)).expect("the JSON file is written");
    serde_json::from_str(&text).expect("the JSON parses")
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for k in path {
        cur = &cur[*k];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v:#}"))
}

fn check_wave(r: &Value, wave: &str, max_writes: f64) {
    let w = &r[wave];
    assert_eq!(f(w, &["requests"]), 5.0, "{wave}: {w:#}");
    assert_eq!(f(w, &["done"]), 5.0, "{wave}: all done: {w:#}");
    assert!(f(w, &["all_done_seconds"]) > 0.0, "{wave}: {w:#}");
    assert!(f(w, &["throughput_per_second"]) > 0.0, "{wave}: {w:#}");
    let p50 = f(w, &["latency_ms", "p50"]);
    let p99 = f(w, &["latency_ms", "p99"]);
    assert!(p50 > 0.0 && p50 <= p99, "{wave}: latencies {w:#}");
    assert!(f(w, &["writer_peak_rss_mib"]) > 0.0, "{wave}: {w:#}");
    assert!(f(w, &["cpu", "writer_cpu_seconds"]) >= 0.0, "{wave}: {w:#}");
    let writes = f(w, &["api", "writes_per_issuance"]);
    assert!(
        (1.0..=max_writes).contains(&writes),
        "{wave}: {writes} writes per issuance: {w:#}"
    );
    assert!(
        f(w, &["api", "secret_writes_per_issuance"]) >= 1.0,
        "{wave}: every issuance writes its Secret: {w:#}"
    );
    assert!(
        f(w, &["api", "status_writes_per_issuance"]) >= 1.0,
        "{wave}: every issuance writes status: {w:#}"
    );
}

#[test]
fn operator_smoke_run_reports_sensible_figures() {
    let r = run_bench("bench-smoke", &["--renewal", "--keygen-seconds", "0.5"]);
    assert_eq!(r["mode"], "operator");
    // The report says which binary ran; cargo's debug build is dynamically
    // linked against glibc, so it must not pass for the image's static one.
    assert_eq!(r["operator_binary"], operator_bin().display().to_string());
    assert_eq!(r["operator_static"], false, "{r:#}");
    // Key generation alone was measured, and issuance is set against it.
    assert!(f(&r, &["keygen_alone", "keys"]) >= 1.0, "{r:#}");
    assert!(f(&r, &["keygen_alone", "mean_ms_per_key"]) > 0.0, "{r:#}");
    let ratio = f(&r, &["issuance", "keygen_ratio", "of_all_cores_bound"]);
    assert!(
        ratio > 0.0 && ratio < 1.0,
        "5 ECDSA issuances cannot outrun key generation alone: {r:#}"
    );
    assert!(f(&r, &["writer_idle_rss_mib"]) > 0.0, "{r:#}");
    // Beside Events, an issuance is a Secret write and a status write; a small
    // run may add a retry, so allow some slack.
    check_wave(&r, "issuance", 3.0);
    check_wave(&r, "renewal", 3.0);
    assert!(
        f(&r, &["issuance", "api", "event_writes_per_issuance"]) >= 1.0,
        "the operator records an Event per issuance: {r:#}"
    );
    // Server-side latency exists for every request (second resolution, may be 0).
    assert_eq!(
        f(&r, &["issuance", "server_latency_seconds", "count"]),
        5.0,
        "{r:#}"
    );
}

#[test]
fn null_writer_smoke_run_reports_sensible_figures() {
    let r = run_bench("bench-smoke-null", &["--null-writer"]);
    assert_eq!(r["mode"], "null-writer");
    assert!(r["operator_binary"].is_null(), "{r:#}");
    check_wave(&r, "issuance", 2.0);
    assert_eq!(
        f(&r, &["issuance", "api", "writes_per_issuance"]),
        2.0,
        "the null writer does exactly one Secret POST and one status patch: {r:#}"
    );
    assert!(r["renewal"].is_null());
}
