//! Rollouts after a renewal against the scripted API server: which workload
//! is patched, how often, and which is left alone.

use super::super::rollout::RESTARTED_FOR;
use super::*;
use crate::api::{EndpointResult, ProbeStatus, RolloutStatus, WorkloadRolloutStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const ROLLOUT: &str = "rollout: {workloads: [{kind: Deployment, name: web}], timeout: 5m}\n";

fn deployment_path() -> String {
    format!("/apis/apps/v1/namespaces/{NS}/deployments/web")
}

/// Deployment `web` at `generation`, its status as given, with the restart
/// annotation set to `restarted_for` when given.
fn deployment(generation: i64, restarted_for: Option<&str>, status: Value) -> Value {
    let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS, "generation": generation,
                     "resourceVersion": format!("{}", 40 + generation)},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}}},
        "status": status});
    if let Some(f) = restarted_for {
        d["spec"]["template"]["metadata"]["annotations"] = json!({RESTARTED_FOR: f});
    }
    d
}

fn settled(generation: i64) -> Value {
    json!({"observedGeneration": generation, "replicas": 3, "updatedReplicas": 3,
           "readyReplicas": 3, "availableReplicas": 3})
}

/// Issues `cr` (first pass: the rollout only records the certificate), then
/// makes it look renewed since the last rollout. Returns the request as the
/// next pass sees it and the issued fingerprint.
async fn renewed(h: &Harness, cr: CertificateRequest) -> (CertificateRequest, String) {
    h.ctx.request_changed(None, &cr);
    h.api.expect("POST", &secrets_path(), echo("10")).expect(
        "PATCH",
        &status_path(),
        status_echo("11"),
    );
    h.pass(&cr).await.expect("first issuance");
    h.api.assert_done();
    let calls = h.api.calls();
    let mut secret = calls[0].body.clone();
    secret["metadata"]["resourceVersion"] = json!("10");
    h.secret_event(&secret);
    let mut status: CertificateRequestStatus =
        serde_json::from_value(calls[1].body["status"].clone()).unwrap();
    let issued = status.fingerprint_sha256.clone().unwrap();
    let first = status.rollout.clone().expect("a rollout record");
    assert_eq!(first.fingerprint_sha256.as_deref(), Some(issued.as_str()));
    assert!(
        first.start_time.is_none(),
        "nothing to restart at the first issuance"
    );
    // The next pass (the Secret's watch event) has nothing to roll either.
    let mut again = cr.clone();
    again.status = Some(status.clone());
    again.metadata.resource_version = Some("11".into());
    h.api.0.lock().unwrap().calls.clear();
    h.pass(&again).await.unwrap();
    h.api.assert_done();
    assert!(h.api.calls().is_empty(), "{:?}", h.api.calls());
    // The certificate the workloads run was another one.
    status.rollout = Some(RolloutStatus {
        fingerprint_sha256: Some("00".repeat(32)),
        ..Default::default()
    });
    let mut cr = cr;
    cr.status = Some(status);
    cr.metadata.resource_version = Some("12".into());
    h.api.0.lock().unwrap().calls.clear();
    (cr, issued)
}

/// The status the last status patch wrote.
fn written_status(h: &Harness) -> CertificateRequestStatus {
    let call = h
        .api
        .calls()
        .into_iter()
        .rev()
        .find(|c| c.path == status_path())
        .expect("a status patch");
    serde_json::from_value(call.body["status"].clone()).unwrap()
}

fn with_status(
    mut cr: CertificateRequest,
    status: CertificateRequestStatus,
    rv: &str,
) -> CertificateRequest {
    cr.status = Some(status);
    cr.metadata.resource_version = Some(rv.into());
    cr
}

#[tokio::test]
async fn a_renewal_patches_the_named_deployments_template_once_and_waits_for_it() {
    let h = harness();
    let (cr, issued) = renewed(&h, request(ROLLOUT)).await;
    h.api
        .expect(
            "GET",
            &deployment_path(),
            object(deployment(1, None, settled(1))),
        )
        .expect("PATCH", &deployment_path(), echo("43"))
        .expect("PATCH", &status_path(), status_echo("13"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let patch = &h.api.calls()[1].body;
    assert_eq!(
        patch["spec"]["template"]["metadata"]["annotations"][RESTARTED_FOR],
        json!(issued),
        "{patch}"
    );
    assert_eq!(
        patch["metadata"]["resourceVersion"],
        json!("41"),
        "patched only as it was read"
    );
    assert_eq!(
        patch.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["metadata", "spec"],
        "nothing but the template annotation: {patch}"
    );
    let status = written_status(&h);
    let (s, reason, _) = condition(&h.api.calls()[2], status::ROLLED_OUT);
    assert_eq!((s.as_str(), reason.as_str()), ("False", "RollingOut"));
    assert_eq!(
        status.rollout.as_ref().unwrap().workloads[0].state,
        "Restarted"
    );
    assert!(
        h.api
            .event_reasons()
            .await
            .contains(&"WorkloadRestarted".to_string())
    );

    // The next pass finds it rolling: it waits, and patches nothing.
    let cr = with_status(cr, status, "13");
    h.api.0.lock().unwrap().calls.clear();
    let rolling = json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1,
                         "readyReplicas": 3, "availableReplicas": 3});
    h.api
        .expect(
            "GET",
            &deployment_path(),
            object(deployment(2, Some(&issued), rolling)),
        )
        .expect("PATCH", &status_path(), status_echo("14"));
    let action = h.pass(&cr).await.unwrap();
    h.api.assert_done();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    let status = written_status(&h);
    assert_eq!(
        status.rollout.as_ref().unwrap().workloads[0].state,
        "Restarted"
    );

    // Done: RolledOut, with its duration; still one patch of the Deployment in all.
    let cr = with_status(cr, status, "14");
    h.api.0.lock().unwrap().calls.clear();
    h.api
        .expect(
            "GET",
            &deployment_path(),
            object(deployment(2, Some(&issued), settled(2))),
        )
        .expect("PATCH", &status_path(), status_echo("15"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let (s, reason, message) = condition(&h.api.calls()[1], status::ROLLED_OUT);
    assert_eq!(
        (s.as_str(), reason.as_str()),
        ("True", "RolledOut"),
        "{message}"
    );
    assert!(
        message.contains("not verified: the request has no spec.probe"),
        "{message}"
    );
    let status = written_status(&h);
    let rollout = status.rollout.as_ref().unwrap();
    assert!(rollout.completion_time.is_some());
    assert_eq!(rollout.workloads[0].state, "RolledOut");
    assert!(rollout.workloads[0].rollout_seconds.is_some());

    // And after that, a pass costs no call at all.
    let cr = with_status(cr, status, "15");
    h.api.0.lock().unwrap().calls.clear();
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    assert!(h.api.calls().is_empty(), "{:?}", h.api.calls());
}

#[tokio::test]
async fn a_pass_that_finds_its_restart_already_made_does_not_patch_again() {
    // The operator patched, then stopped before recording it.
    let h = harness();
    let (cr, issued) = renewed(&h, request(ROLLOUT)).await;
    h.api
        .expect(
            "GET",
            &deployment_path(),
            object(deployment(2, Some(&issued), settled(1))),
        )
        .expect("PATCH", &status_path(), status_echo("13"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    assert_eq!(
        written_status(&h).rollout.unwrap().workloads[0].state,
        "Restarted"
    );
}

#[tokio::test]
async fn a_workload_mid_rollout_is_not_restarted_and_the_wait_is_reported() {
    let h = harness();
    let (cr, _) = renewed(&h, request(ROLLOUT)).await;
    let rolling = json!({"observedGeneration": 5, "replicas": 4, "updatedReplicas": 1,
                         "readyReplicas": 3, "availableReplicas": 3});
    h.api
        .expect(
            "GET",
            &deployment_path(),
            object(deployment(5, None, rolling)),
        )
        .expect("PATCH", &status_path(), status_echo("13"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let w = &written_status(&h).rollout.unwrap().workloads[0];
    assert_eq!(w.state, "Waiting");
    assert!(
        w.message.contains("mid-rollout (1 of 3 replicas updated"),
        "{}",
        w.message
    );
    assert!(
        h.api
            .event_reasons()
            .await
            .contains(&"WorkloadBusy".to_string())
    );
}

#[tokio::test]
async fn a_workload_whose_replicas_already_serve_the_new_certificate_is_skipped() {
    let (pods, _writer) = kube::runtime::reflector::store::<k8s_openapi::api::core::v1::Pod>();
    let state = super::super::probe::ProbeState::new(
        super::super::probe::ProbeConfig {
            image: "p12-operator".into(),
            grace: Duration::ZERO,
            network_policy: false,
            namespace: "p12-system".into(),
            pod_ranges: Vec::new(),
            api_server: Vec::new(),
        },
        pods,
    );
    let h = harness_with_probe(crate::leader::Leadership::always(), Some(state));
    h.list_secrets(vec![]);
    let cr = request(&format!(
        "{ROLLOUT}probe: {{service: {{name: web, port: 443}}}}\n"
    ));
    h.ctx.request_changed(None, &cr);
    h.api.expect("POST", &secrets_path(), echo("10")).expect(
        "PATCH",
        &status_path(),
        status_echo("11"),
    );
    let mut status = {
        // Issued without the probe, whose answer is written by hand below.
        h.pass(&request(ROLLOUT)).await.unwrap();
        h.api.assert_done();
        let calls = h.api.calls();
        let mut secret = calls[0].body.clone();
        secret["metadata"]["resourceVersion"] = json!("10");
        h.secret_event(&secret);
        serde_json::from_value::<CertificateRequestStatus>(calls[1].body["status"].clone()).unwrap()
    };
    let issued = status.fingerprint_sha256.clone().unwrap();
    let now = Timestamp::now();
    status.rollout = Some(RolloutStatus {
        fingerprint_sha256: Some(issued.clone()),
        start_time: Some(Time(now - jiff::SignedDuration::from_secs(30))),
        workloads: vec![WorkloadRolloutStatus {
            kind: "Deployment".into(),
            name: "web".into(),
            state: "Pending".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let served = |pod: &str, f: &str| EndpointResult {
        address: "10.244.0.7:8443".into(),
        pod: Some(pod.into()),
        verified: true,
        served_fingerprint_sha256: Some(f.into()),
        matches_issued: true,
        ..Default::default()
    };
    status.probe = Some(ProbeStatus {
        last_probe_time: Some(Time(now - jiff::SignedDuration::from_secs(5))),
        issued_fingerprint_sha256: Some(issued.clone()),
        endpoints: vec![
            served("web-5d8c7b9f4-x2x7z", &issued),
            served("web-5d8c7b9f4-b7x2k", &issued),
            served("web-5d8c7b9f4-q9zz4", &issued),
            // Another workload behind the same Service, serving the old one.
            served("web-api-6f7d8c9b-c4d5f", &"00".repeat(32)),
        ],
        requested: None,
    });
    let cr = with_status(cr, status, "12");
    h.api.0.lock().unwrap().calls.clear();
    h.api
        .expect(
            "GET",
            &deployment_path(),
            object(deployment(1, None, settled(1))),
        )
        .expect("PATCH", &status_path(), status_echo("13"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let (s, reason, message) = condition(&h.api.calls()[1], status::ROLLED_OUT);
    assert_eq!(
        (s.as_str(), reason.as_str()),
        ("True", "RolledOut"),
        "{message}"
    );
    let w = &written_status(&h).rollout.unwrap().workloads[0];
    assert_eq!(w.state, "Skipped");
    assert!(
        w.message.contains("3 ready replicas already serve"),
        "{}",
        w.message
    );
}

#[tokio::test]
async fn a_workload_of_another_namespace_cannot_be_named() {
    // The schema has no namespace field: the API server refuses it (strict
    // field validation) or drops it (pruning) …
    let crd = serde_json::to_value(<CertificateRequest as kube::CustomResourceExt>::crd()).unwrap();
    let workload = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["rollout"]["properties"]["workloads"]["items"];
    let fields: Vec<_> = workload["properties"].as_object().unwrap().keys().collect();
    assert_eq!(fields, ["kind", "name"], "{workload}");
    let name_pattern = workload["properties"]["name"]["pattern"].as_str().unwrap();
    assert!(!name_pattern.contains('/'), "{name_pattern}");
    // … and whatever reaches the operator, it looks only in the request's namespace.
    let h = harness();
    let (cr, _) = renewed(
        &h,
        request("rollout: {workloads: [{kind: Deployment, name: web, namespace: payments}]}\n"),
    )
    .await;
    h.api
        .expect(
            "GET",
            &deployment_path(),
            reply(404, "NotFound", "deployments.apps \"web\" not found"),
        )
        .expect("PATCH", &status_path(), status_echo("13"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    assert!(
        h.api.calls().iter().all(|c| !c.path.contains("payments")),
        "{:?}",
        h.api.calls()
    );
    let (s, reason, message) = condition(&h.api.calls()[1], status::ROLLED_OUT);
    assert_eq!(
        (s.as_str(), reason.as_str()),
        ("False", "WorkloadNotFound"),
        "{message}"
    );
    assert!(message.contains("not found in namespace shop"), "{message}");
}

#[tokio::test]
async fn without_enable_rollout_a_request_asking_for_one_is_told_so_and_nothing_is_touched() {
    let h = harness();
    // The same harness, but an operator started without --enable-rollout.
    let (ctx, _) = Context::new(
        h.api.client(),
        ContextSettings {
            instance: "test".into(),
            policy: Policy::default(),
            admission: listed_admission(),
            ca: h.ctx.ca_settings.clone(),
            concurrency: 1,
            probe: None,
            rollout: false,
            rotation: super::super::rotation::RotationSettings {
                automatic: true,
                rotate_at: 2.0 / 3.0,
                overlap: Duration::from_secs(3600),
            },
            rotation_rate: 20.0,
            leadership: crate::leader::Leadership::always(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            health: Arc::new(crate::admin::Health::default()),
        },
    );
    ctx.set_ca(Ok(Arc::new(crate::pki::Authorities::single(test_ca()))));
    ctx.observe_secret(&watcher::Event::Init);
    ctx.observe_secret(&watcher::Event::InitDone);
    let cr = request(ROLLOUT);
    ctx.request_changed(None, &cr);
    h.api.expect("POST", &secrets_path(), echo("10")).expect(
        "PATCH",
        &status_path(),
        status_echo("11"),
    );
    reconcile(Arc::new(cr), ctx).await.unwrap();
    h.api.assert_done();
    let (s, reason, message) = condition(&h.api.calls()[1], status::ROLLED_OUT);
    assert_eq!((s.as_str(), reason.as_str()), ("False", "RolloutDisabled"));
    assert!(message.contains("rollout.enabled"), "{message}");
}
