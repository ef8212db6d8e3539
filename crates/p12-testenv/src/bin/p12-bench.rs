//! `p12-bench`: the end-to-end load benchmark.
//!
//! Starts the local control plane, installs the CRD, starts the operator (or,
//! with `--null-writer`, a minimal controller that writes an equivalent Secret
//! and status without any cryptography) as a separate process, creates N
//! CertificateRequests at once and reports how fast they became Ready, what the
//! writer process cost (RSS, CPU) and how many API requests each issuance took
//! (from the API server's own `/metrics`). `--renewal` then forces a renewal
//! wave through the `p12-operator.io/renew-requested-at` annotation and reports
//! the same figures for it.
//!
//! ```text
//! cargo build --release --bins
//! target/release/p12-bench --requests 1000 --json target/bench-1000.json
//! target/release/p12-bench --requests 1000 --null-writer --json target/bench-null.json
//! ```
//!
//! Figures and how to read them: docs/benchmarks.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use p12_core::api::{CertificateRequest, CertificateRequestStatus};
use p12_testenv::{TestCluster, process};
use serde_json::{Value, json};

const RUN_LABEL: &str = "p12-bench.io/run";
const RENEW_ANNOTATION: &str = "p12-operator.io/renew-requested-at";
const OPERATOR_NAMESPACE: &str = "p12-system";
const NULL_MANAGER: &str = "p12-null-writer";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "p12-bench",
    about = "End-to-end load benchmark of p12-operator against the local control plane"
)]
struct Args {
    /// Number of CertificateRequests created at once.
    #[arg(long, default_value_t = 100)]
    requests: usize,
    /// Key algorithm of every request: ECDSA, RSA or Ed25519.
    #[arg(long, default_value = "ECDSA", value_parser = ["ECDSA", "RSA", "Ed25519"])]
    algorithm: String,
    /// Key size (ECDSA 256/384, RSA 2048/3072/4096); the CRD's default when absent.
    #[arg(long)]
    size: Option<u32>,
    /// Keystore profile: Modern2023 or LegacyDES.
    #[arg(long, default_value = "Modern2023", value_parser = ["Modern2023", "LegacyDES"])]
    profile: String,
    /// Namespaces the requests (and unrelated Secrets) are spread over.
    #[arg(long, default_value_t = 1)]
    namespaces: usize,
    /// Unrelated 10 KiB Secrets created before the writer starts.
    #[arg(long, default_value_t = 0)]
    unrelated_secrets: usize,
    /// Then force a renewal of every request and measure that wave too.
    #[arg(long)]
    renewal: bool,
    /// Run the null writer (no cryptography) instead of the operator.
    #[arg(long)]
    null_writer: bool,
    /// Requests the null writer handles at once (the operator's --concurrency default is 16).
    #[arg(long, default_value_t = 16)]
    null_concurrency: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// API calls the load driver keeps in flight while creating objects.
    #[arg(long, default_value_t = 32)]
    create_concurrency: usize,
    /// Extra arguments for `p12-operator run`, e.g. `--operator-arg=--concurrency=32`.
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    operator_args: Vec<String>,
    /// The operator binary (default: `p12-operator` next to this binary).
    #[arg(long)]
    operator_bin: Option<PathBuf>,
    /// Give up waiting for a wave after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Seconds to let the writer settle before idle and holding RSS are read.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Name of the control plane's work folder under target/testenv.
    #[arg(long, default_value = "bench")]
    label: String,
    /// Seconds spent generating keys alone on every core before the run (the
    /// bound "key generation alone allows"); 0 skips it.
    #[arg(long, default_value_t = 5.0)]
    keygen_seconds: f64,
    /// Internal: run the null writer in this process (KUBECONFIG names the cluster).
    #[arg(long, hide = true)]
    serve_null_writer: bool,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = if args.serve_null_writer {
        rt.block_on(null_writer::serve(args))
    } else {
        rt.block_on(run(args))
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// /proc readings

mod procfs {
    use std::path::Path;

    /// (VmRSS, VmHWM) in KiB.
    pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    fn ticks_per_second() -> f64 {
        // SAFETY: plain libc query.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 { t as f64 } else { 100.0 }
    }

    /// utime + stime of a process, in seconds.
    pub fn cpu_seconds(pid: u32) -> Option<f64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) start at field 3.
        let rest = &text[text.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / ticks_per_second())
    }

    /// Busy and total jiffies of the whole machine (all CPUs), from /proc/stat.
    pub fn machine_jiffies() -> (f64, f64) {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = text.lines().next() else {
            return (0.0, 0.0);
        };
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: f64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
        (total - idle, total)
    }

    /// Machine CPU seconds (busy) as seen in /proc/stat.
    pub fn machine_busy_seconds() -> f64 {
        machine_jiffies().0 / ticks_per_second()
    }

    /// The first process whose command line contains every needle.
    pub fn find_process(needles: &[&str]) -> Option<u32> {
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(raw) = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))
            else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if needles.iter().all(|n| cmdline.contains(n)) {
                return Some(pid);
            }
        }
        None
    }

    pub fn loadavg() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn machine() -> serde_json::Value {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: u64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        serde_json::json!({
            "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "cpu_model": model,
            "memory_mib": mem_kib / 1024,
        })
    }
}

// ---------------------------------------------------------------------------
// API server metrics

type Counters = BTreeMap<(String, String, String, String), f64>;

/// `apiserver_request_total` by (verb, resource, subresource, code), for the
/// resources the writers touch.
fn scrape_metrics(cluster: &TestCluster) -> anyhow::Result<Counters> {
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
fn api_summary(before: &Counters, after: &Counters, n: usize) -> Value {
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

// ---------------------------------------------------------------------------
// Key generation alone

fn key_algorithm(args: &Args) -> p12_core::pki::KeyAlgorithm {
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
fn keygen_alone(args: &Args, seconds: f64) -> anyhow::Result<Value> {
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
fn keygen_ratios(wave: &Value, keygen: &Value) -> Value {
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

// ---------------------------------------------------------------------------
// The load driver

/// What the watch saw, per request (`namespace/name`).
#[derive(Default)]
struct Seen {
    ready: HashMap<String, Instant>,
    /// Ready lastTransitionTime − creationTimestamp, whole seconds (server clocks).
    server_latency: HashMap<String, i64>,
    renewed: HashMap<String, Instant>,
}

fn is_ready(cr: &CertificateRequest) -> bool {
    cr.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn key_of(cr: &CertificateRequest) -> String {
    format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any())
}

fn request_object(
    args: &Args,
    run_id: &str,
    ns: &str,
    i: usize,
) -> anyhow::Result<CertificateRequest> {
    let name = format!("req-{i:05}");
    let mut private_key = json!({ "algorithm": args.algorithm });
    if let Some(size) = args.size {
        private_key["size"] = json!(size);
    }
    let value = json!({
        "apiVersion": "p12-operator.io/v1alpha1",
        "kind": "CertificateRequest",
        "metadata": { "name": name, "namespace": ns, "labels": { RUN_LABEL: run_id } },
        "spec": {
            "secretName": format!("{name}-tls"),
            "dnsNames": [format!("{name}.{ns}.svc"), format!("{name}.{ns}.svc.cluster.local")],
            "privateKey": private_key,
            "keystore": { "profile": args.profile },
        }
    });
    serde_json::from_value(value).context("building a CertificateRequest")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency_summary(mut values: Vec<f64>) -> Value {
    values.sort_by(|a, b| a.total_cmp(b));
    json!({
        "p50": percentile(&values, 50.0),
        "p95": percentile(&values, 95.0),
        "p99": percentile(&values, 99.0),
        "max": values.last().copied().unwrap_or(0.0),
        "count": values.len(),
    })
}

/// The writer under test: the operator or the null writer, as a child process.
struct Writer {
    child: Child,
    log: PathBuf,
    pid: u32,
}

impl Writer {
    fn start(args: &Args, cluster: &TestCluster) -> anyhow::Result<Writer> {
        let cp = cluster.control_plane();
        let here = std::env::current_exe().context("locating p12-bench")?;
        let (mut cmd, log) = if args.null_writer {
            let mut cmd = Command::new(&here);
            cmd.arg("--serve-null-writer")
                .args(["--algorithm", &args.algorithm])
                .args(["--profile", &args.profile])
                .args(["--null-concurrency", &args.null_concurrency.to_string()]);
            if let Some(size) = args.size {
                cmd.args(["--size", &size.to_string()]);
            }
            (cmd, cp.dir.join("null-writer.log"))
        } else {
            let bin = args.operator_bin.clone().unwrap_or_else(|| {
                here.parent()
                    .map(|d| d.join("p12-operator"))
                    .unwrap_or_else(|| "p12-operator".into())
            });
            if !bin.exists() {
                bail!(
                    "{} does not exist; build it first (cargo build --release --bins)",
                    bin.display()
                );
            }
            let mut cmd = Command::new(bin);
            cmd.args([
                "--log-level",
                "info",
                "run",
                "--namespace",
                OPERATOR_NAMESPACE,
            ])
            .args(&args.operator_args);
            (cmd, cp.dir.join("operator.log"))
        };
        let file = std::fs::File::create(&log)?;
        cmd.env("KUBECONFIG", &cp.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("P12_LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = process::spawn_tied(cmd).context("starting the writer")?;
        let pid = child.id();
        Ok(Writer { child, log, pid })
    }

    /// Waits for the line that says the writer is watching.
    fn wait_started(&mut self, null: bool) -> anyhow::Result<()> {
        let marker = if null {
            "null writer ready"
        } else {
            "starting controller"
        };
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("the writer exited ({status}); see {}", self.log.display());
            }
            if std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .contains(marker)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the writer did not start within 60 s; see {}",
            self.log.display()
        )
    }

    fn alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("the writer exited ({status}); see {}", self.log.display());
        }
        Ok(())
    }
}

/// Samples RSS of a process while a wave runs, keeping the maximum.
struct RssSampler {
    peak_kib: Arc<Mutex<u64>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
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

    fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        *self.peak_kib.lock().unwrap()
    }
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// CPU seconds of the processes that share the machine during a wave.
struct CpuSnapshot {
    writer: f64,
    apiserver: f64,
    etcd: f64,
    bench: f64,
    machine: f64,
    at: Instant,
}

struct Pids {
    writer: u32,
    apiserver: Option<u32>,
    etcd: Option<u32>,
}

fn cpu_snapshot(p: &Pids) -> CpuSnapshot {
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

fn cpu_delta(a: &CpuSnapshot, b: &CpuSnapshot) -> Value {
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

async fn apply_crd(cluster: &TestCluster) -> anyhow::Result<()> {
    let cp = cluster.control_plane();
    let crds = p12_testenv::tools::repo_root().join("crds");
    let out = cp
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(&crds)
        .output()?;
    if !out.status.success() {
        bail!("CRD apply failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = cp
        .kubectl()
        .args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/certificaterequests.p12-operator.io",
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "CRD not established: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(anyhow!("creating namespace {name}: {e}")),
    }
}

async fn create_unrelated(
    client: &Client,
    namespaces: &[String],
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let began = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let ns = namespaces[i % namespaces.len()].clone();
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            async move {
                let mut data = vec![0u8; 10 * 1024];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
                let s = Secret {
                    metadata: ObjectMeta {
                        name: Some(format!("unrelated-{i:05}")),
                        labels: Some([("app".to_string(), "unrelated".to_string())].into()),
                        ..Default::default()
                    },
                    data: Some([("blob".to_string(), ByteString(data))].into()),
                    type_: Some("Opaque".into()),
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &s).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                    Err(e) => Err(anyhow!("creating unrelated Secret {i}: {e}")),
                }
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(began.elapsed())
}

/// Waits until `done()` reaches `n`, failing early when the writer dies.
async fn wait_for(
    writer: &mut Writer,
    n: usize,
    timeout: Duration,
    what: &str,
    done: impl Fn() -> usize,
) -> anyhow::Result<()> {
    let began = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let count = done();
        if count >= n {
            return Ok(());
        }
        writer.alive()?;
        if began.elapsed() > timeout {
            bail!(
                "timed out after {}s: {count}/{n} {what}; writer log: {}",
                timeout.as_secs(),
                writer.log.display()
            );
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  … {count}/{n} {what} after {:.0}s",
                began.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Wave {
    began: Instant,
    sent: HashMap<String, Instant>,
    last_send: Instant,
}

fn wave_figures(
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

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let mode = if args.null_writer {
        "null-writer"
    } else {
        "operator"
    };
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    eprintln!(
        "p12-bench: {mode}, {} × {} {} {}, {} namespace(s), {} unrelated Secrets ({build} build)",
        args.requests,
        args.algorithm,
        args.size.map(|s| s.to_string()).unwrap_or_default(),
        args.profile,
        args.namespaces,
        args.unrelated_secrets
    );
    let keygen = if args.keygen_seconds > 0.0 && !args.null_writer {
        let k = tokio::task::block_in_place(|| keygen_alone(&args, args.keygen_seconds))?;
        eprintln!(
            "key generation alone: {} keys/s on {} cores ({} ms per key)",
            k["keys_per_second_all_cores"], k["threads"], k["mean_ms_per_key"]
        );
        k
    } else {
        Value::Null
    };
    let load_before = procfs::loadavg();
    let cluster = tokio::task::block_in_place(|| TestCluster::start(&args.label))
        .map_err(|e| anyhow!("{e}"))?;
    let cp = cluster.control_plane();
    eprintln!(
        "control plane up in {:.1}s ({})",
        cp.startup.as_secs_f64(),
        cp.dir.display()
    );
    let client = cluster.client().await.map_err(|e| anyhow!("{e}"))?;
    apply_crd(&cluster).await?;

    create_namespace(&client, OPERATOR_NAMESPACE).await?;
    let namespaces: Vec<String> = (0..args.namespaces.max(1))
        .map(|i| format!("bench-{i}"))
        .collect();
    for ns in &namespaces {
        create_namespace(&client, ns).await?;
    }
    let mut unrelated_seconds = 0.0;
    if args.unrelated_secrets > 0 {
        let d = create_unrelated(
            &client,
            &namespaces,
            args.unrelated_secrets,
            args.create_concurrency,
        )
        .await?;
        unrelated_seconds = d.as_secs_f64();
        eprintln!(
            "created {} unrelated Secrets in {:.1}s",
            args.unrelated_secrets, unrelated_seconds
        );
    }

    let mut writer = Writer::start(&args, &cluster)?;
    tokio::task::block_in_place(|| writer.wait_started(args.null_writer))?;
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let (idle_rss, _) = procfs::rss_kib(writer.pid).unwrap_or((0, 0));
    let pids = Pids {
        writer: writer.pid,
        apiserver: procfs::find_process(&["kube-apiserver", &format!("--secure-port={}", cp.port)]),
        etcd: procfs::find_process(&["etcd", &cp.dir.join("etcd-data").display().to_string()]),
    };
    eprintln!(
        "writer pid {} idle RSS {:.1} MiB",
        writer.pid,
        mib(idle_rss)
    );

    // Watch every request of this run.
    let run_id = format!("{:08x}", rand::random::<u32>());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let crs: Api<CertificateRequest> = Api::all(client.clone());
    let cfg = watcher::Config::default().labels(&format!("{RUN_LABEL}={run_id}"));
    let seen2 = seen.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(crs, cfg).boxed();
        while let Some(ev) = stream.next().await {
            let objs: Vec<CertificateRequest> = match ev {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => vec![o],
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("watch error (retrying): {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let now = Instant::now();
            for cr in objs {
                if !is_ready(&cr) {
                    continue;
                }
                let key = key_of(&cr);
                let mut s = seen2.lock().unwrap();
                if !s.ready.contains_key(&key) {
                    s.ready.insert(key.clone(), now);
                    let created = cr.metadata.creation_timestamp.as_ref().map(|t| t.0);
                    let transition = cr.status.as_ref().and_then(|st| {
                        st.conditions
                            .iter()
                            .find(|c| c.type_ == "Ready")
                            .map(|c| c.last_transition_time.0)
                    });
                    if let (Some(c), Some(t)) = (created, transition) {
                        s.server_latency
                            .insert(key.clone(), t.as_second() - c.as_second());
                    }
                }
                let revision = cr.status.as_ref().and_then(|st| st.revision).unwrap_or(0);
                if revision >= 2 && !s.renewed.contains_key(&key) {
                    s.renewed.insert(key, now);
                }
            }
        }
    });
    // Let the watch establish before the wave.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // ---- issuance wave
    let metrics_before = tokio::task::block_in_place(|| scrape_metrics(&cluster))?;
    let cpu_before = cpu_snapshot(&pids);
    let sampler = RssSampler::start(writer.pid);
    let began = Instant::now();
    let sent = Arc::new(Mutex::new(HashMap::new()));
    {
        let sent = sent.clone();
        let items: Vec<(String, usize)> = (0..args.requests)
            .map(|i| (namespaces[i % namespaces.len()].clone(), i))
            .collect();
        futures::stream::iter(items)
            .map(|(ns, i)| {
                let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
                let obj = request_object(&args, &run_id, &ns, i);
                let sent = sent.clone();
                async move {
                    let obj = obj?;
                    let key = format!("{ns}/{}", obj.name_any());
                    sent.lock().unwrap().insert(key, Instant::now());
                    api.create(&PostParams::default(), &obj)
                        .await
                        .map_err(|e| anyhow!("creating request {i}: {e}"))?;
                    Ok::<_, anyhow::Error>(())
                }
            })
            .buffer_unordered(args.create_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
    }
    let last_send = Instant::now();
    eprintln!(
        "created {} requests in {:.2}s",
        args.requests,
        last_send.duration_since(began).as_secs_f64()
    );
    let n = args.requests;
    let timeout = Duration::from_secs(args.timeout);
    {
        let seen = seen.clone();
        wait_for(&mut writer, n, timeout, "Ready", move || {
            seen.lock().unwrap().ready.len()
        })
        .await?;
    }
    let cpu_after = cpu_snapshot(&pids);
    let peak_sampled = sampler.finish();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics_after = tokio::task::block_in_place(|| scrape_metrics(&cluster))?;
    let wave = Wave {
        began,
        sent: sent.lock().unwrap().clone(),
        last_send,
    };
    let mut issuance = {
        let s = seen.lock().unwrap();
        wave_figures(&wave, &s.ready, Some(&s.server_latency))
    };
    issuance["cpu"] = cpu_delta(&cpu_before, &cpu_after);
    issuance["api"] = api_summary(&metrics_before, &metrics_after, n);
    issuance["keygen_ratio"] = keygen_ratios(&issuance, &keygen);
    let (_, hwm) = procfs::rss_kib(writer.pid).unwrap_or((0, 0));
    issuance["writer_peak_rss_mib"] = json!(mib(hwm.max(peak_sampled)));
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let (holding, _) = procfs::rss_kib(writer.pid).unwrap_or((0, 0));
    issuance["writer_rss_holding_mib"] = json!(mib(holding));

    // ---- renewal wave
    let mut renewal = Value::Null;
    if args.renewal {
        let metrics_before = tokio::task::block_in_place(|| scrape_metrics(&cluster))?;
        let cpu_before = cpu_snapshot(&pids);
        let sampler = RssSampler::start(writer.pid);
        let token = jiff::Timestamp::now().to_string();
        let began = Instant::now();
        let sent = Arc::new(Mutex::new(HashMap::new()));
        {
            let keys: Vec<String> = wave.sent.keys().cloned().collect();
            let sent = sent.clone();
            futures::stream::iter(keys)
                .map(|key| {
                    let (ns, name) = key
                        .split_once('/')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .unwrap();
                    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
                    let patch = json!({"metadata": {"annotations": {RENEW_ANNOTATION: token}}});
                    let sent = sent.clone();
                    async move {
                        sent.lock().unwrap().insert(key.clone(), Instant::now());
                        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .map_err(|e| anyhow!("annotating {key}: {e}"))?;
                        Ok::<_, anyhow::Error>(())
                    }
                })
                .buffer_unordered(args.create_concurrency)
                .try_collect::<Vec<()>>()
                .await?;
        }
        let last_send = Instant::now();
        {
            let seen = seen.clone();
            wait_for(&mut writer, n, timeout, "renewed", move || {
                seen.lock().unwrap().renewed.len()
            })
            .await?;
        }
        let cpu_after = cpu_snapshot(&pids);
        let peak_sampled = sampler.finish();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let metrics_after = tokio::task::block_in_place(|| scrape_metrics(&cluster))?;
        let rwave = Wave {
            began,
            sent: sent.lock().unwrap().clone(),
            last_send,
        };
        renewal = {
            let s = seen.lock().unwrap();
            wave_figures(&rwave, &s.renewed, None)
        };
        renewal["cpu"] = cpu_delta(&cpu_before, &cpu_after);
        renewal["api"] = api_summary(&metrics_before, &metrics_after, n);
        renewal["keygen_ratio"] = keygen_ratios(&renewal, &keygen);
        let (_, hwm) = procfs::rss_kib(writer.pid).unwrap_or((0, 0));
        renewal["writer_peak_rss_mib"] = json!(mib(hwm.max(peak_sampled)));
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        let (holding, _) = procfs::rss_kib(writer.pid).unwrap_or((0, 0));
        renewal["writer_rss_holding_mib"] = json!(mib(holding));
    }
    watch.abort();

    let result = json!({
        "mode": mode,
        "build": build,
        "machine": procfs::machine(),
        "loadavg_before": load_before,
        "loadavg_after": procfs::loadavg(),
        "params": {
            "requests": args.requests,
            "algorithm": args.algorithm,
            "size": args.size,
            "profile": args.profile,
            "namespaces": namespaces.len(),
            "unrelated_secrets": args.unrelated_secrets,
            "unrelated_create_seconds": (unrelated_seconds * 10.0).round() / 10.0,
            "renewal": args.renewal,
            "operator_args": args.operator_args,
            "null_concurrency": if args.null_writer { json!(args.null_concurrency) } else { Value::Null },
            "create_concurrency": args.create_concurrency,
        },
        "keygen_alone": keygen,
        "writer_idle_rss_mib": mib(idle_rss),
        "issuance": issuance,
        "renewal": renewal,
        "control_plane_startup_seconds": (cp.startup.as_secs_f64() * 10.0).round() / 10.0,
        "bench_total_seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "writer_log": writer.log.display().to_string(),
    });
    print_table(&result);
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    process::stop(&mut writer.child, Duration::from_secs(5));
    drop(cluster);
    Ok(())
}

fn print_table(r: &Value) {
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
    let _ = writeln!(
        out,
        "machine: {} × {}, {} MiB; load average before {}, after {}",
        r["machine"]["nproc"],
        r["machine"]["cpu_model"].as_str().unwrap_or(""),
        r["machine"]["memory_mib"],
        r["loadavg_before"].as_str().unwrap_or(""),
        r["loadavg_after"].as_str().unwrap_or(""),
    );
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

// ---------------------------------------------------------------------------
// The null writer

mod null_writer {
    use super::*;
    use tokio::sync::Semaphore;

    /// Per request: the renew token honoured and the revision written.
    type Honoured = HashMap<String, (Option<String>, i64)>;

    /// Byte sizes of the data keys of a real bundle for these parameters.
    fn data_sizes(args: &Args) -> anyhow::Result<Vec<(String, usize)>> {
        use p12_core::keystore::{Profile, build_keystore, build_truststore};
        use p12_core::pki::*;
        let algorithm = key_algorithm(args);
        let profile: Profile = args.profile.parse().map_err(|e: String| anyhow!(e))?;
        let now = jiff::Timestamp::now();
        let ca = CertificateAuthority::generate_self_signed(
            KeyAlgorithm::EcdsaP256,
            "p12-operator CA",
            Duration::from_secs(3650 * 86400),
            now,
        )?;
        let leaf = LeafProfile {
            subject: CsrSubject::default(),
            sans: SubjectAltNames {
                dns: vec![
                    "req-00000.bench-0.svc".into(),
                    "req-00000.bench-0.svc.cluster.local".into(),
                ],
                ..Default::default()
            },
            usages: vec![Usage::ServerAuth, Usage::ClientAuth],
            duration: Duration::from_secs(90 * 86400),
        };
        let key = PrivateKey::generate(algorithm)?;
        let csr = VerifiedCsr::parse_and_verify(&build_csr(&key, &leaf.subject, &leaf.sans)?)?;
        let cert = sign(&ca, &csr, &leaf, now)?;
        let pw = p12_core::bundle::generate_password();
        let ks = build_keystore(&key, &cert.der, ca.chain(), "req-00000", &pw, profile)?;
        let ts = build_truststore(&[ca.root_der().to_vec()], &pw, profile)?;
        Ok(vec![
            ("keystore.p12".into(), ks.expose().len()),
            ("truststore.p12".into(), ts.expose().len()),
            ("keystore-password".into(), 24),
            ("tls.crt".into(), cert.pem.len()),
            ("tls.key".into(), key.to_pem().expose().len()),
            ("ca.crt".into(), ca.root_pem().len()),
        ])
    }

    fn random_data(sizes: &[(String, usize)]) -> BTreeMap<String, ByteString> {
        let mut rng = rand::rng();
        sizes
            .iter()
            .map(|(k, n)| {
                let mut v = vec![0u8; *n];
                rand::RngCore::fill_bytes(&mut rng, &mut v);
                (k.clone(), ByteString(v))
            })
            .collect()
    }

    fn hex(n: usize) -> String {
        let mut v = vec![0u8; n];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut v);
        v.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn secret_for(cr: &CertificateRequest, sizes: &[(String, usize)], revision: i64) -> Secret {
        let now = jiff::Timestamp::now();
        let annotations: BTreeMap<String, String> = [
            ("p12-operator.io/request", cr.name_any()),
            ("p12-operator.io/serial", hex(16)),
            ("p12-operator.io/fingerprint-sha256", hex(32)),
            ("p12-operator.io/not-before", now.to_string()),
            ("p12-operator.io/not-after", now.to_string()),
            ("p12-operator.io/spec-hash", hex(32)),
            ("p12-operator.io/keystore-profile", "Modern2023".into()),
            ("p12-operator.io/keystore-alias", cr.name_any()),
            ("p12-operator.io/ca-fingerprint-sha256", hex(32)),
            ("p12-operator.io/revision", revision.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut owner: OwnerReference = cr.controller_owner_ref(&()).unwrap_or_default();
        owner.block_owner_deletion = Some(true);
        Secret {
            metadata: ObjectMeta {
                name: Some(cr.spec.secret_name.clone()),
                namespace: cr.namespace(),
                labels: Some(
                    [
                        (
                            "app.kubernetes.io/managed-by".to_string(),
                            NULL_MANAGER.to_string(),
                        ),
                        ("p12-operator.io/request".to_string(), cr.name_any()),
                    ]
                    .into(),
                ),
                annotations: Some(annotations),
                owner_references: Some(vec![owner]),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(random_data(sizes)),
            ..Default::default()
        }
    }

    fn status_for(cr: &CertificateRequest, revision: i64) -> CertificateRequestStatus {
        let now = jiff::Timestamp::now();
        let mut status = cr.status.clone().unwrap_or_default();
        let generation = cr.metadata.generation;
        for (type_, message) in [
            (
                "Ready",
                format!("certificate {} valid until {now}, renews at {now}", hex(16)),
            ),
            (
                "Issued",
                format!("Secret {} holds revision {revision}", cr.spec.secret_name),
            ),
        ] {
            let existing = status.conditions.iter_mut().find(|c| c.type_ == type_);
            match existing {
                Some(c) => {
                    c.message = message;
                    c.observed_generation = generation;
                }
                None => status.conditions.push(Condition {
                    type_: type_.into(),
                    status: "True".into(),
                    reason: "Issued".into(),
                    message,
                    observed_generation: generation,
                    last_transition_time: Time(now),
                }),
            }
        }
        status.not_before = Some(Time(now));
        status.not_after = Some(Time(now));
        status.renewal_time = Some(Time(now));
        status.serial_number = Some(hex(16));
        status.fingerprint_sha256 = Some(hex(32));
        status.revision = Some(revision);
        status
    }

    /// One issuance: POST (or PUT on renewal) the Secret, then SSA the status.
    async fn write(
        client: Client,
        cr: Arc<CertificateRequest>,
        sizes: Arc<Vec<(String, usize)>>,
        revision: i64,
    ) -> anyhow::Result<()> {
        let ns = cr.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret = secret_for(&cr, &sizes, revision);
        let pp = PostParams {
            field_manager: Some(NULL_MANAGER.into()),
            ..Default::default()
        };
        if revision == 1 {
            match secrets.create(&pp, &secret).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    secrets.replace(&cr.spec.secret_name, &pp, &secret).await?;
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            // Unconditional update (no resourceVersion): one call, as the lower bound.
            secrets.replace(&cr.spec.secret_name, &pp, &secret).await?;
        }
        let crs: Api<CertificateRequest> = Api::namespaced(client, &ns);
        let patch = json!({
            "apiVersion": "p12-operator.io/v1alpha1",
            "kind": "CertificateRequest",
            "status": status_for(&cr, revision),
        });
        crs.patch_status(
            &cr.name_any(),
            &PatchParams::apply(NULL_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
        Ok(())
    }

    /// Watches every CertificateRequest; issues what is not Ready and renews
    /// what carries a renew-requested-at value not yet honoured.
    pub async fn serve(args: Args) -> anyhow::Result<()> {
        let sizes = Arc::new(data_sizes(&args)?);
        let client = Client::try_default().await?;
        let crs: Api<CertificateRequest> = Api::all(client.clone());
        let permits = Arc::new(Semaphore::new(args.null_concurrency.max(1)));
        // Per request: the renew token honoured and the revision written.
        let done: Arc<Mutex<Honoured>> = Arc::default();
        let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut stream = watcher(crs, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let cr = match ev {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => o,
                Ok(watcher::Event::InitDone) => {
                    println!("null writer ready");
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("watch error: {e}");
                    continue;
                }
            };
            let key = key_of(&cr);
            let token = cr.annotations().get(RENEW_ANNOTATION).cloned();
            let status_revision = cr.status.as_ref().and_then(|s| s.revision).unwrap_or(0);
            let revision = {
                let d = done.lock().unwrap();
                match d.get(&key) {
                    Some((t, _)) if *t == token => continue,
                    Some((_, r)) => r + 1,
                    None if is_ready(&cr) && token.is_none() => continue,
                    None => status_revision + 1,
                }
            };
            if !busy.lock().unwrap().insert(key.clone()) {
                continue;
            }
            let permit = permits.clone().acquire_owned().await?;
            let (client, sizes, done, busy) =
                (client.clone(), sizes.clone(), done.clone(), busy.clone());
            let cr = Arc::new(cr);
            tokio::spawn(async move {
                let result = write(client, cr, sizes, revision).await;
                drop(permit);
                match result {
                    Ok(()) => {
                        done.lock().unwrap().insert(key.clone(), (token, revision));
                    }
                    Err(e) => eprintln!("null writer: {key}: {e:#}"),
                }
                busy.lock().unwrap().remove(&key);
            });
        }
        Ok(())
    }
}
