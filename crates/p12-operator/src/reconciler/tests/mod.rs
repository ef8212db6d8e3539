//! The controller's decisions against a scripted API server, in milliseconds.
//!
//! Each test lists the calls one pass must make, in order, with the answer
//! each gets; a call the script does not expect fails the test. Events are
//! sent in the background, so they are answered whenever they come and
//! checked by reason. The cases here are the ones that are hard to stage on a
//! real cluster: a re-list after a watch gap, a 409 on our own Secret, a 422,
//! a Secret that lost its label, a CA that arrives late.
//!
//! This file holds the scripted API server and the harness; the tests are in
//! one file per topic.

mod bookkeeping;
mod failures;
mod issuance;
mod ownership;
mod policy;
mod probing;
mod rolling;

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

use jiff::Timestamp;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

use super::ca::{CaProblem, CaSettings};
use super::record::EVENTS_IN_FLIGHT;
use super::*;
use crate::api::{CertificateRequest, CertificateRequestSpec, CertificateRequestStatus};
use crate::bundle;
use crate::events::Kind as EventType;
use crate::pki::KeyAlgorithm;
use crate::pki::{CertificateAuthority, Policy};

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
    harness_with_probe(leadership, None)
}

fn harness_with_probe(
    leadership: crate::leader::Leadership,
    probe: Option<super::probe::ProbeState>,
) -> Harness {
    let api = MockApi::default();
    let (ctx, revisit) = Context::new(
        api.client(),
        ContextSettings {
            instance: "test".into(),
            policy: Policy::default(),
            admission: listed_admission(),
            ca: CaSettings {
                namespace: "p12-operator".into(),
                secret_name: "p12-operator-ca".into(),
                create: true,
                algorithm: KeyAlgorithm::EcdsaP256,
                common_name: "test CA".into(),
                validity: Duration::from_secs(3600),
                api_server: "https://127.0.0.1:6443".into(),
                watch_namespace: None,
            },
            rotation: super::rotation::RotationSettings {
                automatic: true,
                rotate_at: 2.0 / 3.0,
                overlap: Duration::from_secs(3600),
            },
            concurrency: 4,
            probe,
            rollout: true,
            rotation_rate: 20.0,
            leadership,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            health: Arc::new(crate::admin::Health::default()),
        },
    );
    ctx.set_ca(Ok(Arc::new(crate::pki::Authorities::single(test_ca()))));
    Harness { api, ctx, revisit }
}

/// Policy inputs as the watches would deliver them: no IssuancePolicy, the
/// namespace `shop` with its Service `web`.
fn listed_admission() -> Admission {
    fn meta<K: Default>(ns: Option<&str>, name: &str) -> PartialObjectMeta<K> {
        PartialObjectMeta {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: ns.map(Into::into),
                ..Default::default()
            },
            ..Default::default()
        }
    }
    let a = Admission::new(crate::admission::Settings::default());
    a.observe_policy(&watcher::Event::Init);
    a.observe_policy(&watcher::Event::InitDone);
    a.observe_namespace(&watcher::Event::Init);
    a.observe_namespace(&watcher::Event::InitApply(meta(None, NS)));
    a.observe_namespace(&watcher::Event::InitDone);
    a.observe_service(&watcher::Event::Init);
    a.observe_service(&watcher::Event::InitApply(meta(Some(NS), "web")));
    a.observe_service(&watcher::Event::InitDone);
    a
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
        // The request watch registers what a request references.
        self.ctx.request_changed(None, &cr);
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
