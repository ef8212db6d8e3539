//! `p12-bench --rotation`: after the issuance wave, stage the next CA (as
//! `p12-operator ca rotate` does, switching in an hour) and measure the bundle
//! rewrite it causes: time until every issued Secret's `ca.crt` holds both
//! roots, the rate the operator paced it at, the Secret writes and reads it
//! cost, and the operator's CPU and memory meanwhile.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, ResourceExt};
use p12_testenv::TestCluster;
use serde_json::{Value, json};

use crate::measure::{Pids, RssSampler, api_summary, cpu_delta, cpu_snapshot, mib, scrape_metrics};
use crate::{OPERATOR_NAMESPACE, procfs};

/// Stages `p12-operator-ca-next` and waits until `n` issued Secrets carry two roots.
pub(crate) async fn bundle_wave(
    client: &Client,
    cluster: &TestCluster,
    pids: &Pids,
    writer_pid: u32,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Value> {
    // Every issued Secret of the run, by whether its ca.crt holds two roots.
    let two_roots: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let secrets: Api<Secret> = Api::all(client.clone());
    let cfg = watcher::Config::default().labels("p12-operator.io/request");
    let seen = two_roots.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(secrets, cfg).boxed();
        while let Some(ev) = stream.next().await {
            let s = match ev {
                Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => s,
                _ => continue,
            };
            let roots = s
                .data
                .as_ref()
                .and_then(|d| d.get("ca.crt"))
                .map(|c| {
                    String::from_utf8_lossy(&c.0)
                        .matches("BEGIN CERTIFICATE")
                        .count()
                })
                .unwrap_or(0);
            if roots == 2 {
                let key = format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any());
                seen.lock().unwrap().entry(key).or_insert_with(Instant::now);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let next = p12_core::pki::CertificateAuthority::generate_self_signed(
        p12_core::pki::KeyAlgorithm::EcdsaP256,
        "p12-operator CA",
        Duration::from_secs(87_600 * 3600),
        jiff::Timestamp::now(),
    )?;
    let switch_at = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let mut data = BTreeMap::new();
    data.insert(
        "tls.crt".to_string(),
        ByteString(next.cert_pem().into_bytes()),
    );
    data.insert(
        "tls.key".to_string(),
        ByteString(next.key_pem().expose().as_bytes().to_vec()),
    );
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("p12-operator-ca-next".into()),
            annotations: Some(
                [(
                    "p12-operator.io/switch-at".to_string(),
                    switch_at.to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    };
    let metrics_before = tokio::task::block_in_place(|| scrape_metrics(cluster))?;
    let cpu_before = cpu_snapshot(pids);
    let sampler = RssSampler::start(writer_pid);
    let began = Instant::now();
    Api::<Secret>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .map_err(|e| anyhow!("staging the next CA: {e}"))?;
    loop {
        let done = two_roots.lock().unwrap().len();
        if done >= n {
            break;
        }
        if began.elapsed() > timeout {
            watch.abort();
            return Err(anyhow!(
                "only {done} of {n} Secrets carried both roots after {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let times: Vec<f64> = two_roots
        .lock()
        .unwrap()
        .values()
        .map(|t| t.duration_since(began).as_secs_f64())
        .collect();
    watch.abort();
    let cpu_after = cpu_snapshot(pids);
    let peak = sampler.finish();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics_after = tokio::task::block_in_place(|| scrape_metrics(cluster))?;
    let last = times.iter().cloned().fold(0.0, f64::max);
    let first = times.iter().cloned().fold(f64::MAX, f64::min);
    let (_, hwm) = procfs::rss_kib(writer_pid).unwrap_or((0, 0));
    Ok(json!({
        "secrets": n,
        "all_rewritten_seconds": (last * 100.0).round() / 100.0,
        "first_rewritten_seconds": (first * 100.0).round() / 100.0,
        "rewrites_per_second": if last > first { ((n as f64 - 1.0) / (last - first) * 10.0).round() / 10.0 } else { 0.0 },
        "cpu": cpu_delta(&cpu_before, &cpu_after),
        "api": api_summary(&metrics_before, &metrics_after, n),
        "writer_peak_rss_mib": mib(hwm.max(peak)),
    }))
}
