//! The controller's decisions against a scripted API server, in milliseconds.
//!
//! Each test lists the calls one pass must make, in order, with the answer
//! each gets; a call the script does not expect fails the test. Events are
//! sent in the background, so they are answered whenever they come and
//! checked by reason. The cases here are the ones that are hard to stage on a
//! real cluster: a re-list after a watch gap, a 409 on our own Secret, a 422,
//! a Secret that lost its label, a CA that arrives late.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::*;
use crate::api::CertificateRequestSpec;
use crate::pki::KeyAlgorithm;

const NS: &str = "shop";
const UID: &str = "0b5e5c1e-1111-4222-8333-944455556666";

type Answer = Box<dyn Fn(&Value) -> (u16, Value) + Send>;

struct Exchange {
    method: &'static str,
    path: String,
    answer: Answer,
}

/// A call the pass made.
#[derive(Clone, Debug)]
#[allow(dead_code)] // method and path show in assertion messages
struct Call {
    method: String,
    path: String,
    body: Value,
}

#[derive(Default)]
struct Script {
    expected: VecDeque<Exchange>,
    calls: Vec<Call>,
    events: Vec<Value>,
    unexpected: Vec<String>,
}

/// The scripted API server behind a real `kube::Client`.
#[derive(Clone, Default)]
struct MockApi(Arc<Mutex<Script>>);

impl MockApi {
    fn client(&self) -> Client {
        let script = self.0.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let script = script.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let method = parts.method.to_string();
                let path = parts.uri.path().to_string();
                let mut s = script.lock().unwrap();
                let (status, reply) = if path.starts_with("/apis/events.k8s.io/") {
                    s.events.push(body.clone());
                    (201, body)
                } else {
                    s.calls.push(Call {
                        method: method.clone(),
                        path: path.clone(),
                        body: body.clone(),
                    });
                    match s.expected.pop_front() {
                        Some(x) if x.method == method && x.path == path => (x.answer)(&body),
                        Some(x) => {
                            let what =
                                format!("expected {} {}, got {method} {path}", x.method, x.path);
                            s.unexpected.push(what.clone());
                            (500, status_body(500, "Mismatch", &what))
                        }
                        None => {
                            let what = format!("unexpected {method} {path}");
                            s.unexpected.push(what.clone());
                            (500, status_body(500, "Unexpected", &what))
                        }
                    }
                };
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(
                            serde_json::to_vec(&reply).unwrap(),
                        ))
                        .unwrap(),
                )
            }
        });
        Client::new(service, "default")
    }

    fn expect(&self, method: &'static str, path: &str, answer: Answer) -> &Self {
        self.0.lock().unwrap().expected.push_back(Exchange {
            method,
            path: path.into(),
            answer,
        });
        self
    }

    /// Every scripted call was made, nothing else was.
    fn assert_done(&self) {
        let s = self.0.lock().unwrap();
        assert!(
            s.unexpected.is_empty(),
            "unexpected calls: {:?}",
            s.unexpected
        );
        let left: Vec<_> = s
            .expected
            .iter()
            .map(|x| format!("{} {}", x.method, x.path))
            .collect();
        assert!(left.is_empty(), "calls not made: {left:?}");
    }

    fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().calls.clone()
    }

    /// The reasons of the Events sent so far, after giving background sends a moment.
    async fn event_reasons(&self) -> Vec<String> {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.0
            .lock()
            .unwrap()
            .events
            .iter()
            .filter_map(|e| e["reason"].as_str().map(String::from))
            .collect()
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn reply(code: u16, reason: &'static str, message: &'static str) -> Answer {
    Box::new(move |_| (code, status_body(code, reason, message)))
}

/// Answers a write with what was written, at resourceVersion `rv`.
fn echo(rv: &'static str) -> Answer {
    Box::new(move |body| {
        let mut b = body.clone();
        b["metadata"]["resourceVersion"] = json!(rv);
        (200, b)
    })
}

/// Answers a status patch with the whole request, as the API server does.
fn status_echo(rv: &'static str) -> Answer {
    Box::new(move |body| {
        let mut cr = serde_json::to_value(request("")).unwrap();
        cr["metadata"]["resourceVersion"] = json!(rv);
        cr["status"] = body["status"].clone();
        (200, cr)
    })
}

fn object(value: Value) -> Answer {
    Box::new(move |_| (200, value.clone()))
}

fn secrets_path() -> String {
    format!("/api/v1/namespaces/{NS}/secrets")
}

fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/secrets/{name}")
}

fn status_path() -> String {
    format!("/apis/p12-operator.io/v1alpha1/namespaces/{NS}/certificaterequests/web/status")
}

fn request(extra: &str) -> CertificateRequest {
    let spec: CertificateRequestSpec = serde_saphyr::from_str(&format!(
        "secretName: web-tls\ndnsNames: [web.shop.svc]\n{extra}"
    ))
    .unwrap();
    let mut cr = CertificateRequest::new("web", spec);
    cr.metadata.namespace = Some(NS.into());
    cr.metadata.uid = Some(UID.into());
    cr.metadata.generation = Some(1);
    cr.metadata.resource_version = Some("5".into());
    cr
}

fn test_ca() -> Arc<CertificateAuthority> {
    static CA: std::sync::OnceLock<Arc<CertificateAuthority>> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        Arc::new(
            CertificateAuthority::generate_self_signed(
                KeyAlgorithm::EcdsaP256,
                "test CA",
                Duration::from_secs(365 * 24 * 3600),
                Timestamp::now(),
            )
            .unwrap(),
        )
    })
    .clone()
}

struct Harness {
    api: MockApi,
    ctx: Arc<Context>,
    revisit: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<CertificateRequest>>,
}

fn harness_with(leadership: crate::leader::Leadership) -> Harness {
    let api = MockApi::default();
    let (ctx, revisit) = Context::new(
        api.client(),
        ContextSettings {
            instance: "test".into(),
            policy: Policy::default(),
            ca: CaSettings {
                namespace: "p12-operator".into(),
                secret_name: "p12-operator-ca".into(),
                create: true,
                algorithm: KeyAlgorithm::EcdsaP256,
                common_name: "test CA".into(),
                validity: Duration::from_secs(3600),
                api_server: "https://127.0.0.1:6443".into(),
            },
            concurrency: 4,
            probe: None,
            leadership,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            health: Arc::new(crate::admin::Health::default()),
        },
    );
    ctx.set_ca(Ok(test_ca()));
    Harness { api, ctx, revisit }
}

fn harness() -> Harness {
    let h = harness_with(crate::leader::Leadership::always());
    h.list_secrets(vec![]);
    h
}

fn meta_of(secret: &Value) -> PartialObjectMeta<Secret> {
    let metadata: ObjectMeta = serde_json::from_value(secret["metadata"].clone()).unwrap();
    PartialObjectMeta {
        metadata,
        ..Default::default()
    }
}

impl Harness {
    /// A complete (re-)list of the Secret watch holding `secrets`.
    fn list_secrets(&self, secrets: Vec<&Value>) {
        self.ctx.observe_secret(&watcher::Event::Init);
        for s in secrets {
            self.ctx
                .observe_secret(&watcher::Event::InitApply(meta_of(s)));
        }
        self.ctx.observe_secret(&watcher::Event::InitDone);
    }

    fn secret_event(&self, secret: &Value) {
        self.ctx
            .observe_secret(&watcher::Event::Apply(meta_of(secret)));
    }

    async fn pass(&self, cr: &CertificateRequest) -> Result<Action, Error> {
        reconcile(Arc::new(cr.clone()), self.ctx.clone()).await
    }

    /// Runs a first issuance and returns the Secret as written (resourceVersion
    /// "10") and the request with the status written (resourceVersion "11").
    async fn issued(&self) -> (Value, CertificateRequest) {
        let cr = request("");
        self.api.expect("POST", &secrets_path(), echo("10")).expect(
            "PATCH",
            &status_path(),
            status_echo("11"),
        );
        self.pass(&cr).await.expect("first issuance");
        self.api.assert_done();
        let calls = self.api.calls();
        let mut secret = calls[0].body.clone();
        secret["metadata"]["resourceVersion"] = json!("10");
        let status: CertificateRequestStatus =
            serde_json::from_value(calls[1].body["status"].clone()).unwrap();
        let mut cr = cr;
        cr.status = Some(status);
        cr.metadata.resource_version = Some("11".into());
        self.secret_event(&secret);
        self.api.0.lock().unwrap().calls.clear();
        (secret, cr)
    }
}

fn condition(call: &Call, type_: &str) -> (String, String, String) {
    let c = call.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {}", call.body));
    (
        c["status"].as_str().unwrap().into(),
        c["reason"].as_str().unwrap().into(),
        c["message"].as_str().unwrap().into(),
    )
}

fn keys_generated(ctx: &Context) -> u64 {
    ctx.metrics.keys_generated.get()
}

#[tokio::test]
async fn a_first_issuance_creates_the_secret_and_writes_status_once() {
    let h = harness();
    let (secret, _) = h.issued().await;
    for key in bundle::OWNED_KEYS {
        assert!(secret["data"][key].is_string(), "{key} missing");
    }
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], UID);
    assert_eq!(
        secret["metadata"]["labels"][bundle::MANAGED_BY_LABEL],
        "p12-operator"
    );
    assert_eq!(keys_generated(&h.ctx), 1);
    assert!(h.api.event_reasons().await.contains(&"Issued".to_string()));
}

#[tokio::test]
async fn an_unchanged_request_and_secret_cost_no_api_call() {
    let h = harness();
    let (_, cr) = h.issued().await;
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    assert!(h.api.calls().is_empty(), "{:?}", h.api.calls());
}

#[tokio::test]
async fn a_secret_that_lost_our_label_is_relabelled_in_place() {
    let h = harness();
    let (mut secret, cr) = h.issued().await;
    // Someone removes the managed-by label; the ownerReference stays.
    secret["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove(bundle::MANAGED_BY_LABEL);
    secret["metadata"]["resourceVersion"] = json!("12");
    h.secret_event(&secret);
    h.api
        .expect("GET", &secret_path("web-tls"), object(secret.clone()))
        .expect("PUT", &secret_path("web-tls"), echo("13"));
    h.pass(&cr).await.expect("repaired");
    h.api.assert_done();
    let put = &h.api.calls()[1].body;
    assert_eq!(
        put["metadata"]["labels"][bundle::MANAGED_BY_LABEL],
        "p12-operator"
    );
    assert_eq!(
        put["metadata"]["resourceVersion"], "12",
        "replace without precondition"
    );
    // Same certificate: repaired, not re-issued.
    assert_eq!(put["data"], secret["data"]);
    assert_eq!(keys_generated(&h.ctx), 1);
}

#[tokio::test]
async fn a_secret_deleted_during_a_watch_gap_is_recreated_after_the_relist() {
    let mut h = harness();
    let (_, cr) = h.issued().await;
    // The watch broke; the Secret was deleted meanwhile; the re-list lacks it.
    h.list_secrets(vec![]);
    let revisit = h.revisit.try_recv().expect("the request is revisited");
    assert_eq!(revisit, request_key(&cr));
    h.api.expect("POST", &secrets_path(), echo("20")).expect(
        "PATCH",
        &status_path(),
        status_echo("21"),
    );
    h.pass(&cr).await.expect("recreated");
    h.api.assert_done();
    assert_eq!(keys_generated(&h.ctx), 2);
}

#[tokio::test]
async fn a_foreign_secret_is_refused_and_retries_generate_no_key() {
    let h = harness();
    let cr = request("");
    let foreign = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "web-tls", "namespace": NS, "resourceVersion": "3"},
        "data": {"tls.crt": "Zm9yZWlnbg=="}});
    h.api
        .expect(
            "POST",
            &secrets_path(),
            reply(409, "AlreadyExists", "secrets \"web-tls\" already exists"),
        )
        .expect("GET", &secret_path("web-tls"), object(foreign.clone()))
        .expect("PATCH", &status_path(), status_echo("6"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let (ready, reason, _) = condition(&h.api.calls()[2], "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "SecretConflict")
    );
    let keys_after_first = keys_generated(&h.ctx);

    // The retry looks before it issues: no key, no POST.
    h.api.0.lock().unwrap().calls.clear();
    h.api
        .expect("GET", &secret_path("web-tls"), object(foreign));
    let action = h.pass(&cr).await.unwrap();
    h.api.assert_done();
    assert_eq!(keys_generated(&h.ctx), keys_after_first);
    assert_ne!(
        action,
        Action::await_change(),
        "a conflict is retried with back-off"
    );
}

#[tokio::test]
async fn a_409_on_creating_our_own_secret_is_resolved_in_the_same_pass() {
    let h = harness();
    let (secret, cr) = h.issued().await;
    // A new process: the index has not seen the Secret (it lagged), the request has no status yet.
    let h2 = harness();
    let mut fresh = cr.clone();
    fresh.status = None;
    h2.api
        .expect(
            "POST",
            &secrets_path(),
            reply(409, "AlreadyExists", "already exists"),
        )
        .expect("GET", &secret_path("web-tls"), object(secret.clone()))
        .expect("GET", &secret_path("web-tls"), object(secret.clone()))
        .expect("PATCH", &status_path(), status_echo("12"));
    h2.pass(&fresh).await.expect("no error: the Secret is ours");
    h2.api.assert_done();
    let (ready, _, _) = condition(&h2.api.calls()[3], "Ready");
    assert_eq!(ready, "True");
    drop(h);
}

#[tokio::test]
async fn a_409_on_replacing_our_secret_reads_it_again_and_retries() {
    let h = harness();
    let (mut secret, cr) = h.issued().await;
    // Someone edits a managed key; our replace then races another writer.
    secret["data"]["tls.crt"] = json!("ZWRpdGVk");
    secret["metadata"]["resourceVersion"] = json!("12");
    h.secret_event(&secret);
    let mut newer = secret.clone();
    newer["metadata"]["resourceVersion"] = json!("13");
    h.api
        .expect("GET", &secret_path("web-tls"), object(secret.clone()))
        .expect(
            "PUT",
            &secret_path("web-tls"),
            reply(409, "Conflict", "the object has been modified"),
        )
        .expect("GET", &secret_path("web-tls"), object(newer))
        .expect("PUT", &secret_path("web-tls"), echo("14"))
        .expect("PATCH", &status_path(), status_echo("15"));
    h.pass(&cr).await.expect("repaired after the conflict");
    h.api.assert_done();
    let calls = h.api.calls();
    assert_eq!(calls[3].body["metadata"]["resourceVersion"], "13");
}

#[tokio::test]
async fn a_422_from_the_api_server_becomes_invalid_request_without_retry() {
    let h = harness();
    let cr = request("");
    h.api
        .expect(
            "POST",
            &secrets_path(),
            reply(
                422,
                "Invalid",
                "Secret \"web-tls\" is invalid: metadata.labels: Invalid value",
            ),
        )
        .expect("PATCH", &status_path(), status_echo("6"));
    let action = h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let (ready, reason, message) = condition(&h.api.calls()[1], "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "InvalidRequest")
    );
    assert!(
        message.contains("metadata.labels: Invalid value"),
        "{message}"
    );
    assert_eq!(action, Action::await_change());
    assert!(
        h.api
            .event_reasons()
            .await
            .contains(&"InvalidRequest".to_string())
    );
}

#[tokio::test]
async fn a_failed_write_of_a_missing_secret_says_so_in_status() {
    let h = harness();
    let (_, cr) = h.issued().await;
    h.list_secrets(vec![]);
    h.api
        .expect(
            "POST",
            &secrets_path(),
            reply(500, "InternalError", "etcdserver: request timed out"),
        )
        .expect("PATCH", &status_path(), status_echo("30"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let (ready, reason, message) = condition(&h.api.calls()[1], "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "SecretWriteFailed")
    );
    assert!(
        message.contains("etcdserver: request timed out"),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_password_secret_is_reported_and_nothing_is_issued() {
    let h = harness();
    let cr = request("keystore: {passwordSecretRef: {name: pw, key: password}}\n");
    h.api
        .expect(
            "GET",
            &secret_path("pw"),
            reply(404, "NotFound", "secrets \"pw\" not found"),
        )
        .expect("PATCH", &status_path(), status_echo("6"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let (_, reason, _) = condition(&h.api.calls()[1], "Ready");
    assert_eq!(reason, "PasswordSecretNotFound");
    assert_eq!(keys_generated(&h.ctx), 0);
}

#[tokio::test]
async fn without_a_ca_requests_report_it_and_touch_no_secret() {
    let h = harness();
    h.ctx.set_ca(Err(CaProblem {
        reason: "CANotFound",
        message: "Secret p12-operator/p12-operator-ca does not exist".into(),
    }));
    let cr = request("");
    h.api.expect("PATCH", &status_path(), status_echo("6"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let (_, reason, _) = condition(&h.api.calls()[0], "Ready");
    assert_eq!(reason, "CANotFound");
}

#[tokio::test]
async fn a_replica_without_the_lease_writes_nothing() {
    let h = harness_with(crate::leader::Leadership::elected());
    h.list_secrets(vec![]);
    let cr = request("");
    let err = h.pass(&cr).await.unwrap_err();
    assert!(matches!(err, Error::NotLeader(_)), "{err}");
    h.api.assert_done();
    assert!(h.api.calls().is_empty(), "{:?}", h.api.calls());
}

#[tokio::test(start_paused = true)]
async fn a_ca_that_cannot_be_read_at_start_up_is_retried_until_it_loads() {
    let api = MockApi::default();
    let h = harness_with(crate::leader::Leadership::always());
    h.ctx.set_ca(Err(CaProblem {
        reason: "CAUnavailable",
        message: "the CA has not been loaded yet".into(),
    }));
    let ca = test_ca();
    let ca_secret = json!({"apiVersion": "v1", "kind": "Secret",
    "metadata": {"name": "p12-operator-ca", "namespace": "p12-operator", "resourceVersion": "7"},
    "data": {
        "tls.crt": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ca.cert_pem()),
        "tls.key": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ca.key_pem().expose()),
    }});
    let path = "/api/v1/namespaces/p12-operator/secrets/p12-operator-ca";
    api.expect(
        "GET",
        path,
        reply(503, "ServiceUnavailable", "the server is starting"),
    )
    .expect(
        "GET",
        path,
        reply(503, "ServiceUnavailable", "the server is starting"),
    )
    .expect("GET", path, object(ca_secret));
    let (_seen_tx, seen_rx) = tokio::sync::watch::channel(None);
    let (all_tx, mut all_rx) = tokio::sync::mpsc::channel(1);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(ca::keep_loaded(
        h.ctx.clone(),
        Api::namespaced(api.client(), "p12-operator"),
        seen_rx,
        all_tx,
        first_tx,
    ));
    first_rx.await.unwrap();
    assert_eq!(h.ctx.ca().unwrap_err().reason, "CAUnavailable");
    assert!(
        h.ctx.health.ca_problem().is_some(),
        "ready while no CA is usable"
    );
    // Retried with back-off, without any watch event: the Secret existed all along.
    tokio::time::timeout(Duration::from_secs(120), all_rx.recv())
        .await
        .expect("the CA loaded and every request was revisited");
    assert_eq!(h.ctx.ca().unwrap().fingerprint(), ca.fingerprint());
    assert!(h.ctx.health.ca_problem().is_none());
    api.assert_done();
    task.abort();
}

#[tokio::test]
async fn references_follow_a_changed_secret_name_and_go_with_the_request() {
    let h = harness();
    let a = request("keystore: {passwordSecretRef: {name: pw, key: password}}\n");
    h.ctx.request_changed(None, &a);
    let mut b = a.clone();
    b.spec.secret_name = "other-tls".into();
    h.ctx.request_changed(Some(&a), &b);
    {
        let refs = h.ctx.refs.lock().unwrap();
        let key = |s: &str| (NS.to_string(), s.to_string());
        assert!(!refs.contains_key(&key("web-tls")), "the old name stays");
        assert_eq!(refs.get(&key("other-tls")), Some(&vec!["web".to_string()]));
        assert_eq!(refs.get(&key("pw")), Some(&vec!["web".to_string()]));
    }
    h.ctx.forget(&b);
    assert!(h.ctx.refs.lock().unwrap().is_empty());
}

#[tokio::test]
async fn events_beyond_the_in_flight_bound_are_dropped_and_counted() {
    let h = harness();
    let cr = request("");
    let held = h
        .ctx
        .events_in_flight
        .clone()
        .acquire_many_owned(EVENTS_IN_FLIGHT as u32)
        .await
        .unwrap();
    publish(
        &h.ctx,
        &cr,
        EventType::Normal,
        "Issued",
        "Issue",
        "note".into(),
    )
    .await;
    assert_eq!(h.ctx.metrics.events_dropped.get(), 1);
    drop(held);
    publish(
        &h.ctx,
        &cr,
        EventType::Normal,
        "Issued",
        "Issue",
        "note".into(),
    )
    .await;
    assert_eq!(h.api.event_reasons().await, vec!["Issued".to_string()]);
    assert_eq!(h.ctx.metrics.events_dropped.get(), 1);
}
