//! What a wave cost: RSS and CPU sampling of the processes that share the
//! machine, the API server's request counters per issuance, and the key
//! generation bound measured alone. Uses `procfs` and the control plane.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use p12_testenv::TestCluster;
use serde_json::{Value, json};

use crate::Args;
use crate::procfs;

pub(crate) type Counters = BTreeMap<(String, String, String, String), f64>;

/// `apiserver_request_total` by (verb, resource, subresource, code), for the
/// resources the writers touch.
pub(crate) fn scrape_metrics(cluster: &TestCluster) -> anyhow::Result<Counters> {
    let out = cluster
        .control_plane()
        .kubectl()
        .args(["get", "--raw", "/metrics"])
        .output()
        .context("running kubectl get --raw /metrics")?;
    if !out.status.success() {
        bail!(
            "kubectl get --raw /metrics failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counters = Counters::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let mut map = HashMap::new();
        for pair in labels.split("\",") {
            if let Some((k, v)) = pair.split_once("=\"") {
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
        }
        let resource = map.get("resource").cloned().unwrap_or_default();
        if !matches!(
            resource.as_str(),
            "secrets" | "certificaterequests" | "events"
        ) {
            continue;
        }
        let key = (
            map.get("verb").cloned().unwrap_or_default(),
            resource,
            map.get("subresource").cloned().unwrap_or_default(),
            map.get("code").cloned().unwrap_or_default(),
        );
        *counters.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    Ok(counters)
}

/// What the writer asked of the API server during a wave, per issuance.
pub(crate) fn api_summary(before: &Counters, after: &Counters, n: usize) -> Value {
    let mut breakdown = BTreeMap::new();
    let (mut secret_writes, mut status_writes, mut events, mut secret_reads, mut cr_reads) =
        (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut conflicts = 0.0;
    for (key, value) in after {
        let delta = value - before.get(key).copied().unwrap_or(0.0);
        if delta <= 0.0 {
            continue;
        }
        let (verb, resource, sub, code) = key;
        let name = if sub.is_empty() {
            format!("{verb} {resource} {code}")
        } else {
            format!("{verb} {resource}/{sub} {code}")
        };
        breakdown.insert(name, delta);
        let write = matches!(verb.as_str(), "POST" | "PUT" | "PATCH" | "APPLY");
        match (resource.as_str(), sub.as_str()) {
            ("secrets", "") if write => secret_writes += delta,
            ("secrets", "") if verb == "GET" => secret_reads += delta,
            ("certificaterequests", "status") if write => status_writes += delta,
            ("certificaterequests", "") if verb == "GET" => cr_reads += delta,
            ("events", _) if write => events += delta,
            _ => {}
        }
        if code == "409" {
            conflicts += delta;
        }
    }
    let per = |x: f64| if n == 0 { 0.0 } else { x / n as f64 };
    json!({
        "secret_writes_per_issuance": per(secret_writes),
        "status_writes_per_issuance": per(status_writes),
        "writes_per_issuance": per(secret_writes + status_writes),
        "event_writes_per_issuance": per(events),
        "secret_gets_per_issuance": per(secret_reads),
        "request_gets_per_issuance": per(cr_reads),
        "conflicts_409": conflicts,
        "breakdown": breakdown,
    })
}

pub(crate) fn key_algorithm(args: &Args) -> p12_core::pki::KeyAlgorithm {
    use p12_core::pki::KeyAlgorithm;
    match (args.algorithm.as_str(), args.size) {
        ("RSA", Some(3072)) => KeyAlgorithm::Rsa3072,
        ("RSA", Some(4096)) => KeyAlgorithm::Rsa4096,
        ("RSA", _) => KeyAlgorithm::Rsa2048,
        ("Ed25519", _) => KeyAlgorithm::Ed25519,
        (_, Some(384)) => KeyAlgorithm::EcdsaP384,
        _ => KeyAlgorithm::EcdsaP256,
    }
}

/// Generates keys of the run's algorithm on every core for about `seconds`
/// (each thread finishes the key it is on) and returns what that rate allows:
/// keys per second over all cores, and the mean time of one key on one thread.
pub(crate) fn keygen_alone(args: &Args, seconds: f64) -> anyhow::Result<Value> {
    let algorithm = key_algorithm(args);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let began = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    let per_thread: Vec<anyhow::Result<(usize, Duration)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    let mut n = 0;
                    let mut busy = Duration::ZERO;
                    while began.elapsed() < budget || n == 0 {
                        let t = Instant::now();
                        p12_core::pki::PrivateKey::generate(algorithm)?;
                        busy += t.elapsed();
                        n += 1;
                    }
                    Ok((n, busy))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("key generation panicked")))
            })
            .collect()
    });
    let wall = began.elapsed().as_secs_f64();
    let (mut keys, mut busy) = (0usize, 0.0f64);
    for r in per_thread {
        let (n, b) = r?;
        keys += n;
        busy += b.as_secs_f64();
    }
    let mean_ms = busy / keys as f64 * 1000.0;
    Ok(json!({
        "threads": threads,
        "keys": keys,
        "wall_seconds": (wall * 100.0).round() / 100.0,
        "mean_ms_per_key": (mean_ms * 100.0).round() / 100.0,
        "keys_per_second_all_cores": ((threads as f64 * 1000.0 / mean_ms) * 10.0).round() / 10.0,
    }))
}

/// Issuance throughput against the key-generation bound: over all cores, and
/// over the CPU the writer actually got during the wave.
pub(crate) fn keygen_ratios(wave: &Value, keygen: &Value) -> Value {
    let (Some(tput), Some(all), Some(mean_ms), Some(cpu), Some(total)) = (
        wave["throughput_per_second"].as_f64(),
        keygen["keys_per_second_all_cores"].as_f64(),
        keygen["mean_ms_per_key"].as_f64(),
        wave["cpu"]["writer_cpu_seconds"].as_f64(),
        wave["all_done_seconds"].as_f64(),
    ) else {
        return Value::Null;
    };
    let writer_cores = if total > 0.0 { cpu / total } else { 0.0 };
    let bound_on_writer_cpu = writer_cores * 1000.0 / mean_ms;
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "of_all_cores_bound": round(tput / all),
        "writer_cores": round(writer_cores),
        "of_writer_cpu_bound": if bound_on_writer_cpu > 0.0 { round(tput / bound_on_writer_cpu) } else { 0.0 },
    })
}

/// Samples RSS of a process while a wave runs, keeping the maximum.
pub(crate) struct RssSampler {
    pub(crate) peak_kib: Arc<Mutex<u64>>,
    pub(crate) stop: Arc<std::sync::atomic::AtomicBool>,
}

impl RssSampler {
    pub(crate) fn start(pid: u32) -> RssSampler {
        let peak_kib = Arc::new(Mutex::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak_kib.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some((rss, _)) = procfs::rss_kib(pid) {
                    let mut peak = p.lock().unwrap();
                    *peak = (*peak).max(rss);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler { peak_kib, stop }
    }

    pub(crate) fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        *self.peak_kib.lock().unwrap()
    }
}

pub(crate) fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// CPU seconds of the processes that share the machine during a wave.
pub(crate) struct CpuSnapshot {
    pub(crate) writer: f64,
    pub(crate) apiserver: f64,
    pub(crate) etcd: f64,
    pub(crate) bench: f64,
    pub(crate) machine: f64,
    pub(crate) at: Instant,
}

pub(crate) struct Pids {
    pub(crate) writer: u32,
    pub(crate) apiserver: Option<u32>,
    pub(crate) etcd: Option<u32>,
}

pub(crate) fn cpu_snapshot(p: &Pids) -> CpuSnapshot {
    let cpu = |pid: Option<u32>| pid.and_then(procfs::cpu_seconds).unwrap_or(0.0);
    CpuSnapshot {
        writer: cpu(Some(p.writer)),
        apiserver: cpu(p.apiserver),
        etcd: cpu(p.etcd),
        bench: cpu(Some(std::process::id())),
        machine: procfs::machine_busy_seconds(),
        at: Instant::now(),
    }
}

pub(crate) fn cpu_delta(a: &CpuSnapshot, b: &CpuSnapshot) -> Value {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    let writer = b.writer - a.writer;
    let apiserver = b.apiserver - a.apiserver;
    let etcd = b.etcd - a.etcd;
    let bench = b.bench - a.bench;
    let machine = b.machine - a.machine;
    let round = |x: f64| (x * 100.0).round() / 100.0;
    json!({
        "wall_seconds": round(wall),
        "writer_cpu_seconds": round(writer),
        "apiserver_cpu_seconds": round(apiserver),
        "etcd_cpu_seconds": round(etcd),
        "bench_cpu_seconds": round(bench),
        "machine_busy_cpu_seconds": round(machine),
        "other_cpu_seconds": round((machine - writer - apiserver - etcd - bench).max(0.0)),
        "machine_capacity_cpu_seconds": round(wall * procfs::machine()["nproc"].as_f64().unwrap_or(1.0)),
    })
}
