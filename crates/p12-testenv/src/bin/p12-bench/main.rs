//! `p12-bench`: the end-to-end load benchmark.
//!
//! Starts the local control plane, installs the CRD, starts the operator (or,
//! with `--null-writer`, a minimal controller that writes an equivalent Secret
//! and status without any cryptography) as a separate process, creates N
//! CertificateRequests at once and reports how fast they became Ready, what the
//! writer process cost (RSS, CPU) and how many API requests each issuance took
//! (from the API server's own `/metrics`). `--renewal` then forces a renewal
//! wave through the `p12-operator.io/renew-requested-at` annotation and reports
//! the same figures for it. `--churn C` instead creates and deletes the
//! requests C times and reports whether the operator's memory comes back to
//! its idle baseline once they are gone.
//!
//! ```text
//! cargo build --release --bins
//! target/release/p12-bench --requests 1000 --json target/bench-1000.json
//! target/release/p12-bench --requests 1000 --null-writer --json target/bench-null.json
//! target/release/p12-bench --requests 10000 --namespaces 10 --churn 3 --json target/bench-churn.json
//! ```
//!
//! Figures and how to read them: docs/benchmarks.md.
//!
//! Files: `driver.rs` starts the writer, creates namespaces, Secrets and
//! requests and waits for them; `measure.rs` (with `procfs.rs`) reads CPU, RSS,
//! the API server's request counters and the key-generation bound; `report.rs`
//! turns the figures into JSON and a table; `null_writer.rs` is the
//! no-cryptography writer; `churn.rs` is churn mode, with `mallinfo.rs` (the
//! allocator's view from inside the operator). This file holds the flags and
//! the run from start to report.

mod churn;
mod driver;
mod mallinfo;
mod measure;
mod null_writer;
mod procfs;
mod report;
mod rotation;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use p12_core::api::{CertificateRequest, CertificateRequestStatus};
use p12_testenv::{TestCluster, process};
use serde_json::{Value, json};

use driver::{
    Seen, Wave, Writer, apply_crd, create_namespace, create_unrelated, is_ready, key_of,
    request_object, wait_for,
};
use measure::{
    Pids, RssSampler, api_summary, cpu_delta, cpu_snapshot, key_algorithm, keygen_alone,
    keygen_ratios, mib, scrape_metrics,
};
use report::{print_churn, print_table, wave_figures};

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
    /// Then stage the next CA (switching in an hour) and measure the bundle
    /// rewrite of every issued Secret it causes (the operator only).
    #[arg(long)]
    rotation: bool,
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
    /// Churn mode: this many cycles of creating --requests requests, waiting
    /// until all are Ready, deleting them all and waiting until the operator
    /// has forgotten them; memory is read idle, while held and after each
    /// deletion. 0: the issuance benchmark instead.
    #[arg(long, default_value_t = 0)]
    churn: usize,
    /// Churn mode: requests created at once; each batch is Ready before the next.
    #[arg(long, default_value_t = 1000)]
    churn_batch: usize,
    /// Churn mode: seconds of quiet before each memory reading (idle, held, after deletion).
    #[arg(long, default_value_t = 30)]
    churn_settle: u64,
    /// Churn mode: do not preload the allocator helper into the operator (no
    /// mallinfo figures, no trim).
    #[arg(long)]
    no_allocator_stats: bool,
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
    if args.churn > 0 && (args.null_writer || args.renewal) {
        anyhow::bail!("--churn measures the operator alone: no --null-writer, no --renewal");
    }
    let keygen = if args.keygen_seconds > 0.0 && !args.null_writer && args.churn == 0 {
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

    let operator = if args.null_writer {
        None
    } else {
        let o = driver::OperatorBinary::choose(&args)?;
        eprintln!("operator binary: {}", o.describe());
        Some(o)
    };
    let is_static = operator.as_ref().and_then(|o| o.is_static) == Some(true);
    let helper = if args.churn > 0 && is_static {
        eprintln!(
            "no allocator figures: the helper is preloaded into glibc builds only (this binary is static)"
        );
        None
    } else if args.churn > 0 && !args.no_allocator_stats {
        match mallinfo::Helper::build(&cp.dir.join("mallinfo")) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("no allocator figures: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let env = helper.as_ref().map(|h| h.env()).unwrap_or_default();
    let mut writer = Writer::start(&args, &cluster, operator.as_ref(), &env)?;
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

    if args.churn > 0 {
        let churn = churn::run(&args, &client, &namespaces, &mut writer, helper.as_ref()).await?;
        let result = json!({
            "mode": "churn",
            "build": build,
            "operator_binary": operator.as_ref().map(|o| o.path.display().to_string()),
            "operator_static": operator.as_ref().and_then(|o| o.is_static),
            "machine": procfs::machine(),
            "loadavg_before": load_before,
            "loadavg_after": procfs::loadavg(),
            "params": {
                "requests": args.requests,
                "cycles": args.churn,
                "batch": args.churn_batch,
                "settle_seconds": args.churn_settle,
                "algorithm": args.algorithm,
                "size": args.size,
                "profile": args.profile,
                "namespaces": namespaces.len(),
                "unrelated_secrets": args.unrelated_secrets,
                "operator_args": args.operator_args,
                "create_concurrency": args.create_concurrency,
            },
            "writer_start_rss_mib": mib(idle_rss),
            "churn": churn,
            "control_plane_startup_seconds": (cp.startup.as_secs_f64() * 10.0).round() / 10.0,
            "bench_total_seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "writer_log": writer.log.display().to_string(),
        });
        print_churn(&result);
        write_json(&args, &result)?;
        process::stop(&mut writer.child, Duration::from_secs(5));
        drop(cluster);
        return Ok(());
    }

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

    // ---- bundle rewrite of a CA rotation
    let rotation = if args.rotation && !args.null_writer {
        let r = rotation::bundle_wave(&client, &cluster, &pids, writer.pid, n, timeout).await?;
        eprintln!("bundle rewrite: {r}");
        r
    } else {
        Value::Null
    };

    let result = json!({
        "mode": mode,
        "build": build,
        "operator_binary": operator.as_ref().map(|o| o.path.display().to_string()),
        "operator_static": operator.as_ref().and_then(|o| o.is_static),
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
        "rotation": rotation,
        "control_plane_startup_seconds": (cp.startup.as_secs_f64() * 10.0).round() / 10.0,
        "bench_total_seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "writer_log": writer.log.display().to_string(),
    });
    print_table(&result);
    write_json(&args, &result)?;
    process::stop(&mut writer.child, Duration::from_secs(5));
    drop(cluster);
    Ok(())
}

fn write_json(args: &Args, result: &Value) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(result)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
