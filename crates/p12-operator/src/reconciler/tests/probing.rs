//! Probes against the scripted API server: which endpoints a probe pod is
//! aimed at, where it runs, and whose report counts.

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::store::Writer;

use super::super::probe::{ProbeConfig, ProbeState, sweep};
use super::*;
use crate::probe::admission::parse_ranges;

const OPERATOR_NS: &str = "p12-system";
const POD_UID: &str = "7d1f0000-0000-4000-8000-000000000001";

fn probe_state() -> (ProbeState, Writer<Pod>) {
    let (pods, writer) = kube::runtime::reflector::store::<Pod>();
    let state = ProbeState::new(
        ProbeConfig {
            image: "p12-operator".into(),
            grace: Duration::ZERO,
            network_policy: false,
            namespace: OPERATOR_NS.into(),
            pod_ranges: parse_ranges("10.244.0.0/16").unwrap(),
            api_server: vec!["10.96.0.1".parse().unwrap()],
        },
        pods,
    );
    (state, writer)
}

fn probed_request() -> CertificateRequest {
    request("probe: {service: {name: web, port: 443}, timeout: 2s}\n")
}

fn pods_path() -> String {
    format!("/api/v1/namespaces/{OPERATOR_NS}/pods")
}

/// One EndpointSlice entry: `ip`, with a targetRef to Pod `pod` of `namespace` (or none).
fn entry(ip: &str, target: Option<(&str, &str)>) -> Value {
    let mut e = json!({"addresses": [ip], "conditions": {"ready": true}});
    if let Some((namespace, pod)) = target {
        e["targetRef"] = json!({"kind": "Pod", "namespace": namespace, "name": pod});
    }
    e
}

fn slices(entries: Vec<Value>) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {},
           "items": [{"metadata": {"name": "web-abc", "namespace": NS,
                                   "labels": {"kubernetes.io/service-name": "web"}},
                      "addressType": "IPv4",
                      "ports": [{"name": "https", "port": 8443, "protocol": "TCP"}],
                      "endpoints": entries}]})
}

fn service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "web", "namespace": NS},
           "spec": {"ports": [{"name": "https", "port": 443, "targetPort": 8443}]}})
}

/// Answers the pod create with the pod as created, uid `POD_UID`.
fn created_pod() -> Answer {
    Box::new(|body| {
        let mut b = body.clone();
        b["metadata"]["uid"] = json!(POD_UID);
        b["metadata"]["resourceVersion"] = json!("20");
        (201, b)
    })
}

struct Probed {
    h: Harness,
    pods: Writer<Pod>,
    cr: CertificateRequest,
    /// The probe pod as the operator created it.
    pod: Value,
}

/// Issues the request and runs its first probe pass against `entries`;
/// expects a probe pod unless `expect_pod` is false.
async fn first_probe(entries: Vec<Value>, expect_pod: bool) -> Probed {
    first_probe_under(entries, expect_pod, None).await
}

/// `first_probe`, with `policy` (IssuancePolicy YAML) known to the operator.
async fn first_probe_under(entries: Vec<Value>, expect_pod: bool, policy: Option<&str>) -> Probed {
    let (state, pods) = probe_state();
    let h = harness_with_probe(crate::leader::Leadership::always(), Some(state));
    h.list_secrets(vec![]);
    if let Some(yaml) = policy {
        let policy = crate::api::IssuancePolicy::new("vms", serde_saphyr::from_str(yaml).unwrap());
        h.ctx
            .admission
            .observe_policy(&watcher::Event::Apply(policy));
    }
    let cr = probed_request();
    h.ctx.request_changed(None, &cr);
    h.api
        .expect("POST", &secrets_path(), echo("10"))
        .expect(
            "GET",
            &format!("/api/v1/namespaces/{NS}/services/web"),
            object(service()),
        )
        .expect(
            "GET",
            &format!("/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"),
            object(slices(entries)),
        );
    if expect_pod {
        h.api.expect("POST", &pods_path(), created_pod());
    }
    h.api.expect("PATCH", &status_path(), status_echo("11"));
    h.pass(&cr).await.expect("first pass");
    h.api.assert_done();
    let calls = h.api.calls();
    let mut secret = calls[0].body.clone();
    secret["metadata"]["resourceVersion"] = json!("10");
    h.secret_event(&secret);
    let pod = calls
        .iter()
        .find(|c| c.method == "POST" && c.path == pods_path())
        .map(|c| c.body.clone())
        .unwrap_or(Value::Null);
    let status: CertificateRequestStatus =
        serde_json::from_value(calls.last().unwrap().body["status"].clone()).unwrap();
    let mut cr = cr;
    cr.status = Some(status);
    cr.metadata.resource_version = Some("11".into());
    h.api.0.lock().unwrap().calls.clear();
    Probed { h, pods, cr, pod }
}

fn env_of(pod: &Value, name: &str) -> String {
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn endpoints_of(pod: &Value) -> Vec<String> {
    let args: Vec<String> =
        serde_json::from_value(pod["spec"]["containers"][0]["args"].clone()).unwrap();
    args.windows(2)
        .filter(|w| w[0] == "--endpoint")
        .map(|w| w[1].clone())
        .collect()
}

impl Probed {
    /// The probe pod, as the pod watch would see it once it ended with
    /// `report` as its termination message.
    fn finish_pod(&mut self, uid: &str, report: Value) {
        let mut pod = self.pod.clone();
        pod["metadata"]["uid"] = json!(uid);
        pod["metadata"]["creationTimestamp"] = json!(Timestamp::now().to_string());
        pod["status"] = json!({"phase": "Succeeded", "containerStatuses": [{
            "name": "probe", "image": "p12-operator", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "message": report.to_string()}}}]});
        let pod: Pod = serde_json::from_value(pod).unwrap();
        self.pods.apply_watcher_event(&watcher::Event::Apply(pod));
    }

    /// A report that every endpoint the pod was given serves the issued certificate.
    fn report(&self, nonce: &str) -> Value {
        let fp = self.cr.status.as_ref().unwrap().fingerprint_sha256.clone();
        let endpoints: Vec<Value> = endpoints_of(&self.pod)
            .iter()
            .map(|a| {
                json!({"address": a, "verified": true, "reason": "Verified",
                            "matchesIssued": true, "servedFingerprintSha256": fp,
                            "chainLength": 2})
            })
            .collect();
        json!({"endpoints": endpoints, "probedAt": Timestamp::now().to_string(), "nonce": nonce})
    }

    fn pod_name(&self) -> String {
        self.pod["metadata"]["name"].as_str().unwrap().to_string()
    }

    /// The second pass, which reads the finished pod: deletes it and writes status.
    async fn collect(&self) -> Call {
        self.h
            .api
            .expect(
                "DELETE",
                &format!("{}/{}", pods_path(), self.pod_name()),
                object(self.pod.clone()),
            )
            .expect("PATCH", &status_path(), status_echo("12"));
        self.h.pass(&self.cr).await.expect("collecting pass");
        self.h.api.assert_done();
        self.h.api.calls().last().unwrap().clone()
    }
}

fn good_pod(ip: &str) -> Value {
    entry(ip, Some((NS, "web-0")))
}

#[tokio::test]
async fn the_probe_pod_runs_in_the_operators_namespace_labelled_with_its_request() {
    let p = first_probe(vec![good_pod("10.244.0.5")], true).await;
    assert_eq!(p.pod["metadata"]["namespace"], OPERATOR_NS);
    let labels = &p.pod["metadata"]["labels"];
    assert_eq!(labels["p12-operator.io/request-namespace"], NS);
    assert_eq!(labels["p12-operator.io/request-uid"], UID);
    assert_eq!(
        labels["p12-operator.io/probe-pod"],
        p.pod["metadata"]["name"]
    );
    assert_eq!(
        p.pod["metadata"]["annotations"]["p12-operator.io/request"],
        format!("{NS}/web")
    );
    assert!(p.pod["metadata"]["ownerReferences"].is_null());
    assert_eq!(endpoints_of(&p.pod), ["10.244.0.5:8443"]);
    let nonce = env_of(&p.pod, "P12_PROBE_NONCE");
    assert_eq!(nonce.len(), 32, "a 16-byte nonce in the pod's environment");
}

#[tokio::test]
async fn a_report_with_the_pods_nonce_from_the_pod_created_verifies() {
    let mut p = first_probe(vec![good_pod("10.244.0.5")], true).await;
    let nonce = env_of(&p.pod, "P12_PROBE_NONCE");
    p.finish_pod(POD_UID, p.report(&nonce));
    let call = p.collect().await;
    let (verified, reason, message) = condition(&call, "Verified");
    assert_eq!(
        (verified.as_str(), reason.as_str()),
        ("True", "Verified"),
        "{message}"
    );
}

#[tokio::test]
async fn a_report_without_the_right_nonce_is_ignored() {
    for forged in ["", "00000000000000000000000000000000"] {
        let mut p = first_probe(vec![good_pod("10.244.0.5")], true).await;
        let nonce = env_of(&p.pod, "P12_PROBE_NONCE");
        p.finish_pod(POD_UID, p.report(forged));
        let call = p.collect().await;
        let (verified, reason, message) = condition(&call, "Verified");
        assert_eq!(
            (verified.as_str(), reason.as_str()),
            ("False", "ProbeFailed")
        );
        assert!(message.contains("lacks this probe's nonce"), "{message}");
        assert!(
            call.body["status"]["probe"]["endpoints"].is_null(),
            "nothing of the forged report is recorded: {}",
            call.body
        );
        let everything = format!("{:?} {:?}", h_events(&p).await, call.body);
        assert!(
            !everything.contains(&nonce),
            "the nonce stays out of status and Events"
        );
    }
}

async fn h_events(p: &Probed) -> Vec<Value> {
    p.h.api.event_reasons().await;
    p.h.api.0.lock().unwrap().events.clone()
}

#[tokio::test]
async fn a_pod_by_the_probe_pods_name_but_another_uid_is_not_heard() {
    let mut p = first_probe(vec![good_pod("10.244.0.5")], true).await;
    let nonce = env_of(&p.pod, "P12_PROBE_NONCE");
    // Even with the right nonce: only the pod the operator created may answer.
    p.finish_pod("another-uid", p.report(&nonce));
    let action = p.h.pass(&p.cr).await.unwrap();
    p.h.api.assert_done();
    assert!(
        p.h.api.calls().is_empty(),
        "no delete, no status: the round waits for its own pod: {:?}",
        p.h.api.calls()
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
}

#[tokio::test]
async fn hostile_endpoints_are_refused_with_a_reason_and_never_probed() {
    let mut p = first_probe(
        vec![
            good_pod("10.244.0.5"),
            // The API server's service address, with a forged Pod targetRef.
            good_pod("10.96.0.1"),
            good_pod("127.0.0.1"),
            entry("10.244.0.6", None),
            entry("10.244.0.7", Some(("kube-system", "coredns-0"))),
            good_pod("192.168.1.1"),
        ],
        true,
    )
    .await;
    assert_eq!(
        endpoints_of(&p.pod),
        ["10.244.0.5:8443"],
        "the probe pod is given only the admitted endpoint"
    );
    let nonce = env_of(&p.pod, "P12_PROBE_NONCE");
    p.finish_pod(POD_UID, p.report(&nonce));
    let call = p.collect().await;
    let (verified, reason, message) = condition(&call, "Verified");
    assert_eq!(
        (verified.as_str(), reason.as_str()),
        ("False", "EndpointRefused"),
        "one verified endpoint does not verify a Service with refused ones: {message}"
    );
    let endpoints = call.body["status"]["probe"]["endpoints"]
        .as_array()
        .unwrap();
    let why = |address: &str| {
        let e = endpoints
            .iter()
            .find(|e| e["address"] == address)
            .unwrap_or_else(|| panic!("{address} in {endpoints:?}"));
        assert_eq!(e["reason"], "EndpointRefused", "{e}");
        assert!(
            e["servedFingerprintSha256"].is_null() && e["tlsVersion"].is_null(),
            "nothing is known of a refused endpoint: {e}"
        );
        e["message"].as_str().unwrap().to_string()
    };
    assert!(why("10.96.0.1:8443").contains("API server"));
    assert!(why("127.0.0.1:8443").contains("loopback"));
    assert!(why("10.244.0.6:8443").contains("no targetRef to a Pod of namespace shop"));
    assert!(why("10.244.0.7:8443").contains("another namespace"));
    assert!(why("192.168.1.1:8443").contains("outside the cluster's pod address ranges"));
    assert_eq!(endpoints.len(), 6);
}

#[tokio::test]
async fn a_policys_probe_address_ranges_admit_endpoints_without_a_pod_and_nothing_more() {
    let policy = "namespaces: {names: [shop]}\nallow: {probeAddressRanges: [192.168.1.0/24]}\n";
    let p = first_probe_under(
        vec![
            entry("192.168.1.10", None),
            entry("192.168.2.10", None),
            good_pod("127.0.0.1"),
        ],
        true,
        Some(policy),
    )
    .await;
    assert_eq!(
        endpoints_of(&p.pod),
        ["192.168.1.10:8443"],
        "a VM in the policy's range is probed; one outside it, and loopback, are not"
    );
    // Without the policy the same VM is refused.
    let p = first_probe(vec![entry("192.168.1.10", None)], false).await;
    let endpoints = &p
        .cr
        .status
        .as_ref()
        .unwrap()
        .probe
        .as_ref()
        .unwrap()
        .endpoints;
    assert_eq!(endpoints[0].reason, "EndpointRefused");
}

#[tokio::test]
async fn with_only_refused_endpoints_no_probe_pod_is_started() {
    let p = first_probe(
        vec![entry("10.244.0.6", None), good_pod("169.254.169.254")],
        false,
    )
    .await;
    let status = p.cr.status.as_ref().unwrap();
    let verified = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Verified")
        .unwrap();
    assert_eq!(
        (verified.status.as_str(), verified.reason.as_str()),
        ("False", "EndpointRefused")
    );
    assert!(
        verified.message.starts_with("2 of 2 endpoints fail"),
        "{}",
        verified.message
    );
    assert_eq!(status.probe.as_ref().unwrap().endpoints.len(), 2);
    assert!(
        p.h.api
            .event_reasons()
            .await
            .contains(&"EndpointRefused".to_string())
    );
}

#[tokio::test]
async fn probe_pods_whose_request_is_gone_are_swept_and_others_kept() {
    let pod = |name: &str, request: Option<&str>, uid: &str| -> Pod {
        let annotations = request.map(|r| json!({"p12-operator.io/request": format!("{NS}/{r}")}));
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": OPERATOR_NS,
                         "labels": {"p12-operator.io/request-uid": uid},
                         "annotations": annotations}}))
        .unwrap()
    };
    // Each orphan next to the live request's pod, which must survive.
    for orphan in [
        pod("deleted-request", Some("gone"), UID),
        pod("recreated-request", Some("web"), "an-older-uid"),
        pod("unlabelled", None, UID),
    ] {
        let (state, mut pods) = probe_state();
        let h = harness_with_probe(crate::leader::Leadership::always(), Some(state));
        let (requests, mut writer) = kube::runtime::reflector::store::<CertificateRequest>();
        writer.apply_watcher_event(&watcher::Event::Apply(request("")));
        let name = orphan.metadata.name.clone().unwrap();
        pods.apply_watcher_event(&watcher::Event::Apply(pod("live", Some("web"), UID)));
        pods.apply_watcher_event(&watcher::Event::Apply(orphan));
        h.api.expect(
            "DELETE",
            &format!("{}/{name}", pods_path()),
            object(json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name}})),
        );
        assert_eq!(sweep(&h.ctx, &requests).await.unwrap(), 1, "{name}");
        h.api.assert_done();
    }
}
