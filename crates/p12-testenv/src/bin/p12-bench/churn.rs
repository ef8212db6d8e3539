//! Churn mode (`--churn CYCLES`): does the operator forget deleted requests?
//!
//! Each cycle creates `--requests` requests (in batches of `--churn-batch`,
//! each batch Ready before the next is sent), reads the operator's memory
//! while it holds them, deletes them all, waits until the operator has
//! observed the deletions (its per-request `p12_certificate_ready` series are
//! gone from `/metrics`) and the garbage collector has removed their Secrets
//! (ownerReferences), lets everything settle for `--churn-settle` seconds and
//! reads the memory again. Names are new in every cycle, so anything kept per
//! name grows from cycle to cycle instead of being reused.
//!
//! Every reading has RSS and its anonymous part (`/proc/<pid>/status`), the
//! allocator's own view (`mallinfo.rs`: bytes in use and bytes free inside
//! glibc's arenas), then RSS again after a `malloc_trim(0)` run through the
//! helper (what the operator's own idle trim would leave), and the series on
//! `/metrics`.

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, watcher};
use p12_core::api::CertificateRequest;
use serde_json::{Value, json};

use crate::driver::{Writer, is_ready, key_of, request_object, wait_for};
use crate::mallinfo::Helper;
use crate::measure::mib;
use crate::{Args, RUN_LABEL, procfs};

/// `GET /metrics` from the operator's admin port.
fn operator_metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    let Some((_, text)) = body.split_once("\r\n\r\n") else {
        bail!("no HTTP body from {addr}/metrics");
    };
    Ok(text.to_string())
}

/// Per-request series (`p12_certificate_ready{…}`) and all series on `/metrics`.
fn series(text: &str) -> (usize, usize) {
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let (mut ready, mut all) = (0, 0);
    for l in samples {
        all += 1;
        if l.starts_with("p12_certificate_ready{") {
            ready += 1;
        }
    }
    (ready, all)
}

/// One reading of the operator's memory, in the order that disturbs it least:
/// `/proc` first, then the allocator's statistics, then a trim and `/proc`
/// again, and `/metrics` last (encoding it allocates: 2.3 MB of text with
/// 10,000 requests).
fn reading(writer: &Writer, helper: Option<&Helper>, admin: Option<SocketAddr>) -> Value {
    let mem = procfs::memory_kib(writer.pid).unwrap_or_default();
    let malloc = helper.map(|h| h.query(false));
    let trimmed = helper.map(|h| h.query(true));
    std::thread::sleep(Duration::from_millis(200));
    let after_trim = procfs::memory_kib(writer.pid).unwrap_or_default();
    let metrics = admin.map(operator_metrics);
    let result = |r: Option<anyhow::Result<Value>>| match r {
        Some(Ok(v)) => v,
        Some(Err(e)) => json!({ "error": format!("{e:#}") }),
        None => Value::Null,
    };
    let (ready_series, all_series, metrics_bytes) = match metrics {
        Some(Ok(text)) => {
            let (r, a) = series(&text);
            (json!(r), json!(a), json!(text.len()))
        }
        Some(Err(e)) => (json!(format!("{e:#}")), Value::Null, Value::Null),
        None => (Value::Null, Value::Null, Value::Null),
    };
    json!({
        "rss_kib": mem.rss,
        "anon_kib": mem.anon,
        "file_kib": mem.file,
        "malloc": result(malloc),
        "trim": result(trimmed),
        "rss_after_trim_kib": after_trim.rss,
        "anon_after_trim_kib": after_trim.anon,
        "ready_series": ready_series,
        "metrics_series": all_series,
        "metrics_bytes": metrics_bytes,
    })
}

/// Secrets of ours (managed-by label) left in the run's namespaces.
async fn managed_secrets(client: &Client, namespaces: &[String]) -> anyhow::Result<usize> {
    let selector = format!(
        "{}={}",
        p12_core::bundle::MANAGED_BY_LABEL,
        p12_core::bundle::MANAGED_BY
    );
    let mut n = 0;
    for ns in namespaces {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        n += api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| anyhow!("listing Secrets in {ns}: {e}"))?
            .items
            .len();
    }
    Ok(n)
}

/// Polls `count` until it reaches 0; returns the seconds it took.
async fn wait_zero<F, Fut>(
    writer: &mut Writer,
    timeout: Duration,
    what: &str,
    mut count: F,
) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    let began = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let n = count().await?;
        if n == 0 {
            return Ok(began.elapsed().as_secs_f64());
        }
        writer.alive()?;
        if began.elapsed() > timeout {
            bail!("timed out after {}s: {n} {what} left", timeout.as_secs());
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  … {n} {what} left after {:.0}s",
                began.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Runs every cycle against a started operator; returns the figures.
pub(crate) async fn run(
    args: &Args,
    client: &Client,
    namespaces: &[String],
    writer: &mut Writer,
    helper: Option<&Helper>,
) -> anyhow::Result<Value> {
    let admin = {
        let began = Instant::now();
        loop {
            if let Some(a) = writer.admin_addr() {
                break Some(a);
            }
            if began.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "no admin address in {}: deletions are judged by the Secrets alone",
                    writer.log.display()
                );
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let settle = Duration::from_secs(args.churn_settle);
    let timeout = Duration::from_secs(args.timeout);
    let n = args.requests;
    let batch = args.churn_batch.max(1);

    tokio::time::sleep(settle).await;
    let baseline = tokio::task::block_in_place(|| reading(writer, helper, admin));
    eprintln!(
        "baseline after {}s idle: RSS {:.1} MiB, anonymous {:.1} MiB",
        settle.as_secs(),
        mib(baseline["rss_kib"].as_u64().unwrap_or(0)),
        mib(baseline["anon_kib"].as_u64().unwrap_or(0)),
    );

    // Requests of this run that were seen Ready (names are new every cycle).
    let run_id = format!("{:08x}", rand::random::<u32>());
    let ready: Arc<Mutex<HashSet<String>>> = Arc::default();
    let watch = {
        let ready = ready.clone();
        let api: Api<CertificateRequest> = Api::all(client.clone());
        let cfg = watcher::Config::default().labels(&format!("{RUN_LABEL}={run_id}"));
        tokio::spawn(async move {
            let mut stream = watcher(api, cfg).boxed();
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Apply(cr)) | Ok(watcher::Event::InitApply(cr)) => {
                        if is_ready(&cr) {
                            ready.lock().unwrap().insert(key_of(&cr));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("watch error (retrying): {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut cycles = Vec::new();
    for cycle in 0..args.churn {
        eprintln!("cycle {}: creating {n} requests", cycle + 1);
        let items: Vec<(String, usize)> = (0..n)
            .map(|i| (namespaces[i % namespaces.len()].clone(), cycle * n + i))
            .collect();
        let began = Instant::now();
        let mut send_seconds = 0.0;
        for (b, chunk) in items.chunks(batch).enumerate() {
            let sent = Instant::now();
            futures::stream::iter(chunk.iter().cloned())
                .map(|(ns, i)| {
                    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
                    let obj = request_object(args, &run_id, &ns, i);
                    async move {
                        api.create(&PostParams::default(), &obj?)
                            .await
                            .map_err(|e| anyhow!("creating request {i}: {e}"))?;
                        Ok::<_, anyhow::Error>(())
                    }
                })
                .buffer_unordered(args.create_concurrency)
                .try_collect::<Vec<()>>()
                .await?;
            send_seconds += sent.elapsed().as_secs_f64();
            let target = cycle * n + (b * batch + chunk.len());
            let ready = ready.clone();
            wait_for(writer, target, timeout, "Ready (all cycles)", move || {
                ready.lock().unwrap().len()
            })
            .await?;
        }
        let ready_seconds = began.elapsed().as_secs_f64();
        eprintln!(
            "cycle {}: all {n} Ready after {ready_seconds:.1}s",
            cycle + 1
        );
        tokio::time::sleep(settle).await;
        let held = tokio::task::block_in_place(|| reading(writer, helper, admin));

        eprintln!("cycle {}: deleting {n} requests", cycle + 1);
        let deleting = Instant::now();
        futures::stream::iter(items.iter().cloned())
            .map(|(ns, i)| {
                let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
                let name = format!("req-{i:05}");
                async move {
                    match api.delete(&name, &DeleteParams::background()).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                        Err(e) => Err(anyhow!("deleting {ns}/{name}: {e}")),
                    }
                }
            })
            .buffer_unordered(args.create_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        let delete_seconds = deleting.elapsed().as_secs_f64();
        // The operator forgets a request when its watch sees the deletion.
        let forgot_seconds = match admin {
            Some(addr) => Some(
                delete_seconds
                    + wait_zero(writer, timeout, "requests on /metrics", || async move {
                        let text =
                            tokio::task::spawn_blocking(move || operator_metrics(addr)).await??;
                        Ok(series(&text).0)
                    })
                    .await?,
            ),
            None => None,
        };
        let gc_seconds = delete_seconds
            + wait_zero(writer, timeout, "Secrets", || {
                managed_secrets(client, namespaces)
            })
            .await?;
        eprintln!(
            "cycle {}: deleted in {delete_seconds:.1}s; operator forgot them after {}; Secrets gone after {gc_seconds:.1}s",
            cycle + 1,
            forgot_seconds.map_or("—".to_string(), |s| format!("{s:.1}s")),
        );
        tokio::time::sleep(settle).await;
        let after = tokio::task::block_in_place(|| reading(writer, helper, admin));
        cycles.push(json!({
            "cycle": cycle + 1,
            "create_send_seconds": round(send_seconds, 1),
            "all_ready_seconds": round(ready_seconds, 1),
            "delete_seconds": round(delete_seconds, 1),
            "operator_forgot_seconds": forgot_seconds.map(|s| round(s, 1)),
            "secrets_gone_seconds": round(gc_seconds, 1),
            "held": held,
            "after_delete": after,
        }));
    }
    watch.abort();
    Ok(json!({
        "requests_per_cycle": n,
        "batch": batch,
        "settle_seconds": settle.as_secs(),
        "allocator_helper": helper.is_some(),
        "admin_address": admin.map(|a| a.to_string()),
        "baseline": baseline,
        "cycles": cycles,
        "retained": retained(&baseline, &cycles, n),
    }))
}

/// What stays after deletion, against the baseline and the cycle before, per
/// request created in the cycle (bytes).
fn retained(baseline: &Value, cycles: &[Value], n: usize) -> Value {
    let kib = |v: &Value, k: &str| v[k].as_f64();
    let in_use = |v: &Value| v["malloc"]["in_use_bytes"].as_f64();
    let per = |d: f64| round(d / n.max(1) as f64, 0);
    let mut out = Vec::new();
    let mut previous = baseline;
    for c in cycles {
        let after = &c["after_delete"];
        let diff = |a: &Value, b: &Value| -> Value {
            json!({
                "rss_bytes_per_request": kib(a, "rss_kib").zip(kib(b, "rss_kib")).map(|(x, y)| per((x - y) * 1024.0)),
                "anon_bytes_per_request": kib(a, "anon_kib").zip(kib(b, "anon_kib")).map(|(x, y)| per((x - y) * 1024.0)),
                "rss_after_trim_bytes_per_request": kib(a, "rss_after_trim_kib").zip(kib(b, "rss_after_trim_kib")).map(|(x, y)| per((x - y) * 1024.0)),
                "malloc_in_use_bytes_per_request": in_use(a).zip(in_use(b)).map(|(x, y)| per(x - y)),
            })
        };
        out.push(json!({
            "cycle": c["cycle"],
            "vs_baseline": diff(after, baseline),
            "vs_previous_cycle": diff(after, previous),
            "held_vs_baseline": diff(&c["held"], baseline),
        }));
        previous = after;
    }
    json!(out)
}
