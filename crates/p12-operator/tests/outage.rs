//! The API server goes away and comes back; etcd is compacted under the
//! operator's watches. The operator neither crashes nor spins, and handles
//! everything once it can. One test, run alone in its own control plane,
//! because it stops the API server everyone shares.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use p12_operator::api::CertificateRequest;
use support::{Operator, cluster, eventually, kubectl_apply};

const WAIT: Duration = Duration::from_secs(120);

fn request(ns: &str, name: &str) {
    let yaml = format!(
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {{name: {name}}}\nspec: {{secretName: {name}-tls, dnsNames: [{name}.example]}}\n"
    );
    let out = kubectl_apply(&yaml, ns);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn all_ready(client: &Client, ns: &str, names: &[String]) {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    for name in names {
        eventually(WAIT, &format!("{name} Ready"), || {
            let api = api.clone();
            async move {
                let cr = api.get(name).await.ok()?;
                cr.status?
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
    }
}

/// etcd's current revision, through its JSON gateway.
fn etcd_revision(url: &str) -> i64 {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            &format!("{url}/v3/kv/range"),
            "-d",
            r#"{"key":"AA=="}"#,
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["header"]["revision"].as_str().unwrap().parse().unwrap()
}

fn etcd_compact(url: &str, revision: i64) {
    let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            &format!("{url}/v3/kv/compaction"),
            "-d",
            &body,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcd compaction: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_api_server_outage_and_an_etcd_compaction_are_survived() {
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "outage").await.unwrap();
    let op = Operator::start("outage", &["--watch-namespace", &ns]);
    let cp = cluster().control_plane();

    // 1. Requests pending while the API server is stopped for 30 s.
    let names: Vec<String> = (0..10).map(|i| format!("o{i}")).collect();
    for n in &names {
        request(&ns, n);
    }
    let cpu_before = op.cpu_seconds();
    let outage = Instant::now();
    cp.restart("kube-apiserver", Duration::from_secs(30))
        .unwrap();
    let cpu_during = op.cpu_seconds() - cpu_before;
    assert!(
        !op.exited(),
        "the operator survives a 30 s API server outage"
    );
    assert!(
        cpu_during < 5.0,
        "the operator spun during the outage: {cpu_during:.2} CPU s in {:?}",
        outage.elapsed()
    );
    let back = Instant::now();
    let client = cluster().client().await.unwrap();
    all_ready(&client, &ns, &names).await;
    let recovered = back.elapsed();
    assert!(
        recovered < Duration::from_secs(90),
        "finished {recovered:?} after the API server returned"
    );
    eprintln!(
        "outage: {cpu_during:.2} CPU s during 30 s; all Ready {recovered:?} after the API server returned"
    );

    // 2. Watches resume across an etcd compaction (410 Gone): the operator is
    //    frozen while requests are created and deleted and history is compacted.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(op.pid() as i32, libc::SIGSTOP) };
    let created: Vec<String> = (0..3).map(|i| format!("late{i}")).collect();
    for n in &created {
        request(&ns, n);
    }
    let crs: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
    crs.delete("o0", &DeleteParams::background()).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for i in 0..50 {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("churn{i}")),
                ..Default::default()
            },
            ..Default::default()
        };
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    etcd_compact(&cp.etcd_url, etcd_revision(&cp.etcd_url));
    // Restarting the API server drops its watch cache, so resumed watches hit the compacted history.
    cp.restart("kube-apiserver", Duration::from_secs(1))
        .unwrap();
    unsafe { libc::kill(op.pid() as i32, libc::SIGCONT) };
    let client = cluster().client().await.unwrap();
    all_ready(&client, &ns, &created).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "the deleted request's Secret to be collected", || {
        let secrets = secrets.clone();
        async move { matches!(secrets.get_opt("o0-tls").await, Ok(None)).then_some(()) }
    })
    .await;
    assert!(!op.exited());
    let logs = op.logs();
    let relisted = logs.contains("410")
        || logs.contains("too old resource version")
        || logs.contains("Expired");
    eprintln!("compaction: watch expiry seen in the operator log: {relisted}");
}
