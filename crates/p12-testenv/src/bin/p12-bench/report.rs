//! The results: latency percentiles and wave figures as JSON, and the table
//! printed at the end. Pure; uses only serde_json values.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Instant;

use serde_json::{Value, json};

use crate::driver::Wave;

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn latency_summary(mut values: Vec<f64>) -> Value {
    values.sort_by(|a, b| a.total_cmp(b));
    json!({
        "p50": percentile(&values, 50.0),
        "p95": percentile(&values, 95.0),
        "p99": percentile(&values, 99.0),
        "max": values.last().copied().unwrap_or(0.0),
        "count": values.len(),
    })
}

pub(crate) fn wave_figures(
    wave: &Wave,
    observed: &HashMap<String, Instant>,
    server_latency: Option<&HashMap<String, i64>>,
) -> Value {
    let n = wave.sent.len();
    let last = observed.values().max().copied().unwrap_or(wave.began);
    let total = last.duration_since(wave.began).as_secs_f64();
    let latencies: Vec<f64> = wave
        .sent
        .iter()
        .filter_map(|(k, t)| {
            observed
                .get(k)
                .map(|r| r.duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    let mut v = json!({
        "requests": n,
        "done": latencies.len(),
        "all_done_seconds": (total * 1000.0).round() / 1000.0,
        "send_seconds": (wave.last_send.duration_since(wave.began).as_secs_f64() * 1000.0).round() / 1000.0,
        "throughput_per_second": if total > 0.0 { ((n as f64 / total) * 10.0).round() / 10.0 } else { 0.0 },
        "latency_ms": latency_summary(latencies),
    });
    if let Some(server) = server_latency {
        let values: Vec<f64> = wave
            .sent
            .keys()
            .filter_map(|k| server.get(k).map(|s| *s as f64))
            .collect();
        v["server_latency_seconds"] = latency_summary(values);
    }
    v
}

/// The machine, its load, and which operator binary ran (static musl as in
/// the image, or a glibc build).
fn print_context(out: &mut impl std::io::Write, r: &Value) {
    let _ = writeln!(
        out,
        "machine: {} × {}, {} MiB; load average before {}, after {}",
        r["machine"]["nproc"],
        r["machine"]["cpu_model"].as_str().unwrap_or(""),
        r["machine"]["memory_mib"],
        r["loadavg_before"].as_str().unwrap_or(""),
        r["loadavg_after"].as_str().unwrap_or(""),
    );
    if let Some(path) = r["operator_binary"].as_str() {
        let kind = crate::driver::linking(r["operator_static"].as_bool());
        let _ = writeln!(out, "operator binary: {path} ({kind})");
    }
}

pub(crate) fn print_table(r: &Value) {
    let mut out = std::io::stdout().lock();
    let p = &r["params"];
    let _ = writeln!(
        out,
        "\np12-bench — {} ({} build): {} × {} {} {}, {} namespace(s), {} unrelated Secrets",
        r["mode"].as_str().unwrap_or(""),
        r["build"].as_str().unwrap_or(""),
        p["requests"],
        p["algorithm"].as_str().unwrap_or(""),
        p["size"],
        p["profile"].as_str().unwrap_or(""),
        p["namespaces"],
        p["unrelated_secrets"],
    );
    print_context(&mut out, r);
    let _ = writeln!(out, "writer idle RSS: {} MiB\n", r["writer_idle_rss_mib"]);
    let _ = writeln!(out, "{:<34} {:>14} {:>14}", "figure", "issuance", "renewal");
    let rows: &[(&str, &[&str])] = &[
        ("requests done", &["done"]),
        ("time until all done (s)", &["all_done_seconds"]),
        ("throughput (/s)", &["throughput_per_second"]),
        ("latency p50 (ms)", &["latency_ms", "p50"]),
        ("latency p95 (ms)", &["latency_ms", "p95"]),
        ("latency p99 (ms)", &["latency_ms", "p99"]),
        ("latency max (ms)", &["latency_ms", "max"]),
        (
            "server latency p99 (s, 1 s res.)",
            &["server_latency_seconds", "p99"],
        ),
        ("writer CPU (s)", &["cpu", "writer_cpu_seconds"]),
        ("kube-apiserver CPU (s)", &["cpu", "apiserver_cpu_seconds"]),
        ("etcd CPU (s)", &["cpu", "etcd_cpu_seconds"]),
        ("load driver CPU (s)", &["cpu", "bench_cpu_seconds"]),
        ("other processes CPU (s)", &["cpu", "other_cpu_seconds"]),
        (
            "machine CPU capacity (s)",
            &["cpu", "machine_capacity_cpu_seconds"],
        ),
        ("writer peak RSS (MiB)", &["writer_peak_rss_mib"]),
        ("writer RSS after wave (MiB)", &["writer_rss_holding_mib"]),
        (
            "writes / issuance (Secret+status)",
            &["api", "writes_per_issuance"],
        ),
        (
            "  Secret writes / issuance",
            &["api", "secret_writes_per_issuance"],
        ),
        (
            "  status writes / issuance",
            &["api", "status_writes_per_issuance"],
        ),
        (
            "Event writes / issuance",
            &["api", "event_writes_per_issuance"],
        ),
        (
            "Secret GETs / issuance",
            &["api", "secret_gets_per_issuance"],
        ),
        ("409 conflicts", &["api", "conflicts_409"]),
        (
            "throughput / keygen alone, all cores",
            &["keygen_ratio", "of_all_cores_bound"],
        ),
        (
            "writer CPU share (cores)",
            &["keygen_ratio", "writer_cores"],
        ),
        (
            "throughput / keygen on writer's CPU",
            &["keygen_ratio", "of_writer_cpu_bound"],
        ),
    ];
    let get = |v: &Value, path: &[&str]| {
        let mut cur = v;
        for k in path {
            cur = &cur[*k];
        }
        match cur {
            Value::Null => "—".to_string(),
            Value::Number(n) => {
                let f = n.as_f64().unwrap_or(0.0);
                if f.fract() == 0.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.2}")
                }
            }
            other => other.to_string(),
        }
    };
    for (name, path) in rows {
        let _ = writeln!(
            out,
            "{:<34} {:>14} {:>14}",
            name,
            get(&r["issuance"], path),
            get(&r["renewal"], path)
        );
    }
    let _ = writeln!(out);
}

/// Churn mode's table: memory at each reading, then what deletion left behind.
pub(crate) fn print_churn(r: &Value) {
    let mut out = std::io::stdout().lock();
    let p = &r["params"];
    let c = &r["churn"];
    let _ = writeln!(
        out,
        "\np12-bench — churn ({} build): {} cycles × {} {}{} {} requests, {} namespace(s), batches of {}, {} s settle before each reading",
        r["build"].as_str().unwrap_or(""),
        p["cycles"],
        p["requests"],
        p["algorithm"].as_str().unwrap_or(""),
        p["size"]
            .as_u64()
            .map(|s| format!("-{s}"))
            .unwrap_or_default(),
        p["profile"].as_str().unwrap_or(""),
        p["namespaces"],
        p["batch"],
        p["settle_seconds"],
    );
    print_context(&mut out, r);
    let _ = writeln!(
        out,
        "RSS/anon: /proc/<pid>/status VmRSS/RssAnon; in use/free: glibc mallinfo2 inside the operator{}; \
         after trim: VmRSS once malloc_trim(0) ran\n",
        if c["allocator_helper"].as_bool() == Some(true) {
            ""
        } else {
            " (not available: helper not loaded)"
        }
    );
    let mib_of_kib = |v: &Value| {
        v.as_f64()
            .map_or("—".into(), |k| format!("{:.1}", k / 1024.0))
    };
    let mib_of_bytes = |v: &Value| {
        v.as_f64()
            .map_or("—".into(), |b| format!("{:.1}", b / 1_048_576.0))
    };
    let plain = |v: &Value| match v {
        Value::Null => "—".to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
            format!("{:.0}", n.as_f64().unwrap_or(0.0))
        }
        other => other.to_string(),
    };
    let _ = writeln!(
        out,
        "{:<24} {:>8} {:>9} {:>11} {:>10} {:>11} {:>12} {:>9}",
        "reading (MiB)", "RSS", "anon", "in use", "free", "RSS trim", "ready series", "series"
    );
    let mut row = |name: String, v: &Value| {
        let _ = writeln!(
            out,
            "{:<24} {:>8} {:>9} {:>11} {:>10} {:>11} {:>12} {:>9}",
            name,
            mib_of_kib(&v["rss_kib"]),
            mib_of_kib(&v["anon_kib"]),
            mib_of_bytes(&v["malloc"]["in_use_bytes"]),
            mib_of_bytes(&v["malloc"]["free_bytes"]),
            mib_of_kib(&v["rss_after_trim_kib"]),
            plain(&v["ready_series"]),
            plain(&v["metrics_series"]),
        );
    };
    row("baseline (idle)".into(), &c["baseline"]);
    let cycles = c["cycles"].as_array().cloned().unwrap_or_default();
    for cy in &cycles {
        row(format!("cycle {}: held", cy["cycle"]), &cy["held"]);
        row(
            format!("cycle {}: after delete", cy["cycle"]),
            &cy["after_delete"],
        );
    }
    let _ = writeln!(
        out,
        "\n{:<8} {:>10} {:>12} {:>10} {:>16} {:>15}",
        "cycle", "create (s)", "all Ready (s)", "delete (s)", "operator forgot", "Secrets gone"
    );
    for cy in &cycles {
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>12} {:>10} {:>16} {:>15}",
            plain(&cy["cycle"]),
            plain(&cy["create_send_seconds"]),
            plain(&cy["all_ready_seconds"]),
            plain(&cy["delete_seconds"]),
            plain(&cy["operator_forgot_seconds"]),
            plain(&cy["secrets_gone_seconds"]),
        );
    }
    let _ = writeln!(
        out,
        "\nbytes per request created in the cycle ({} each; \"previous\" is the baseline for cycle 1):",
        p["requests"]
    );
    let _ = writeln!(
        out,
        "{:<40} {:>8} {:>8} {:>10} {:>9}",
        "", "RSS", "anon", "RSS trim", "in use"
    );
    for rt in c["retained"].as_array().cloned().unwrap_or_default() {
        for (label, key) in [
            ("held − baseline", "held_vs_baseline"),
            ("after delete − baseline", "vs_baseline"),
            ("after delete − previous after delete", "vs_previous_cycle"),
        ] {
            let d = &rt[key];
            let _ = writeln!(
                out,
                "{:<40} {:>8} {:>8} {:>10} {:>9}",
                format!("cycle {}: {label}", rt["cycle"]),
                plain(&d["rss_bytes_per_request"]),
                plain(&d["anon_bytes_per_request"]),
                plain(&d["rss_after_trim_bytes_per_request"]),
                plain(&d["malloc_in_use_bytes_per_request"]),
            );
        }
    }
    let _ = writeln!(out);
}
