//! Running the operator: metrics and health endpoints, leader election with
//! several replicas, hand-over on a crash, a clean shutdown and a frozen leader.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use p12_operator::api::CertificateRequest;
use support::{Operator, cluster, eventually, http_get, kubectl_apply};

const WAIT: Duration = Duration::from_secs(60);

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

async fn ready(client: &Client, ns: &str, name: &str) -> CertificateRequest {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, &format!("{name} Ready"), || {
        let api = api.clone();
        async move {
            let cr = api.get(name).await.ok()?;
            cr.status
                .as_ref()?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(cr.clone())
        }
    })
    .await
}

async fn holder(client: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("p12-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

fn identity(op: &Operator) -> String {
    format!("p12-operator-{}", op.pid())
}

fn signal(op: &Operator, sig: i32) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(op.pid() as i32, sig) };
}

#[tokio::test]
async fn metrics_and_health_endpoints_answer_with_the_documented_names() {
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "metrics").await.unwrap();
    let op = Operator::start("metrics", &["--watch-namespace", &ns]);
    let addr = op.admin_address().await;
    assert_eq!(http_get(&addr, "/livez").await.0, 200);
    eventually(WAIT, "readiness", || {
        let addr = addr.clone();
        async move { (http_get(&addr, "/readyz").await.0 == 200).then_some(()) }
    })
    .await;
    request(&ns, "web");
    ready(&client, &ns, "web").await;
    let (code, body) = http_get(&addr, "/metrics").await;
    assert_eq!(code, 200);
    for needle in [
        format!("p12_certificate_ready{{namespace=\"{ns}\",name=\"web\"}} 1"),
        format!("p12_certificate_not_after_seconds{{namespace=\"{ns}\",name=\"web\"}}"),
        format!("p12_certificate_renewal_seconds{{namespace=\"{ns}\",name=\"web\"}}"),
        "p12_reconciles_total".to_string(),
        "p12_reconcile_duration_seconds_bucket".to_string(),
        "p12_issuance_duration_seconds_count{action=\"issue\"} 1".to_string(),
        "p12_reconciles_in_flight".to_string(),
        "p12_leader 1".to_string(),
    ] {
        assert!(
            body.contains(&needle),
            "missing {needle} in /metrics:\n{body}"
        );
    }
    assert_eq!(http_get(&addr, "/nothing").await.0, 404);
}

#[tokio::test]
async fn two_replicas_elect_one_leader_that_hands_over_when_killed_or_stopped() {
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "ha").await.unwrap();
    let lease_ns = "p12-system-ha";
    let args = ["--watch-namespace", ns.as_str(), "--leader-elect"];
    let a = Operator::start_named("ha", "ha-a", &args);
    let first = eventually(WAIT, "a leader", || {
        let client = client.clone();
        async move { holder(&client, lease_ns).await }
    })
    .await;
    assert_eq!(first, identity(&a));
    let b = Operator::start_named("ha", "ha-b", &args);
    let addr_b = b.admin_address().await;
    assert!(http_get(&addr_b, "/readyz").await.1.contains("standby"));

    for i in 0..4 {
        request(&ns, &format!("r{i}"));
    }
    for i in 0..4 {
        ready(&client, &ns, &format!("r{i}")).await;
    }
    assert!(
        b.logs().lines().all(|l| !l.contains("issued certificate")),
        "the standby wrote nothing"
    );

    // Killed: the standby takes over within the lease duration.
    signal(&a, libc::SIGKILL);
    let killed_at = Instant::now();
    eventually(WAIT, "the standby to take the lease", || {
        let client = client.clone();
        let me = identity(&b);
        async move { (holder(&client, lease_ns).await? == me).then_some(()) }
    })
    .await;
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "hand-over took {took:?} (lease duration 15 s)"
    );
    request(&ns, "after-kill");
    ready(&client, &ns, "after-kill").await;
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
    for i in 0..4 {
        let cr = api.get(&format!("r{i}")).await.unwrap();
        assert_eq!(
            cr.status.unwrap().revision,
            Some(1),
            "r{i} was not issued twice"
        );
    }

    // Frozen past its lease (SIGSTOP): another replica takes over; thawed, the old leader writes nothing and steps down.
    let c = Operator::start_named("ha", "ha-c", &args);
    signal(&b, libc::SIGSTOP);
    eventually(
        Duration::from_secs(40),
        "the third replica to take the lease",
        || {
            let client = client.clone();
            let me = identity(&c);
            async move { (holder(&client, lease_ns).await? == me).then_some(()) }
        },
    )
    .await;
    request(&ns, "during-freeze");
    ready(&client, &ns, "during-freeze").await;
    let b_lines_before = b.logs().lines().count();
    signal(&b, libc::SIGCONT);
    eventually(WAIT, "the thawed replica to step down", || {
        let exited = b.child.lock().unwrap().try_wait().ok().flatten().is_some();
        async move { exited.then_some(()) }
    })
    .await;
    let after: Vec<String> = b
        .logs()
        .lines()
        .skip(b_lines_before)
        .map(String::from)
        .collect();
    assert!(
        after.iter().any(|l| l.contains("stepping down")),
        "the old leader says it steps down: {after:?}"
    );
    assert!(
        after
            .iter()
            .all(|l| !l.contains("issued certificate") && !l.contains("re-encrypted")),
        "the old leader wrote nothing after thawing"
    );
    let cr = api.get("during-freeze").await.unwrap();
    assert_eq!(cr.status.unwrap().revision, Some(1));

    // A clean shutdown releases the lease: a standby takes over in seconds, not a lease duration.
    let d = Operator::start_named("ha", "ha-d", &args);
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(&c, libc::SIGTERM);
    let stopped_at = Instant::now();
    eventually(WAIT, "the standby to take the released lease", || {
        let client = client.clone();
        let me = identity(&d);
        async move { (holder(&client, lease_ns).await? == me).then_some(()) }
    })
    .await;
    let took = stopped_at.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "after a clean shutdown the hand-over took {took:?}"
    );
    assert!(c.logs().contains("released the leader lease"));
}
