//! The controller: watches CertificateRequests and the Secrets they own, and
//! makes each Secret hold a valid bundle for its request.
//!
//! One pass: plan the request → find the CA → read the password → compare the
//! Secret with the plan → issue, re-encrypt or do nothing → write the Secret in
//! one call → write status in one call. Every pass is safe to repeat.

pub mod ca;
pub mod probe;
pub mod secret_index;
pub mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::events::{Kind as EventType, Recorder};
use futures::{FutureExt, StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::api::{CertificateRequest, CertificateRequestStatus, RotationPolicy};
use crate::bundle::{self, Existing, Material, Verdict, annotations as ann};
use crate::cli::RunArgs;
use crate::pki::{self, CertificateAuthority, Policy, PrivateKey};
use crate::plan::{self, PasswordSource, Plan};
use crate::probe::pod as probe_pod;
use crate::sensitive::SecretString;
use ca::{CaProblem, CaSettings};
use secret_index::SecretIndex;

/// Errors a pass can end with; the category is the Event reason and the metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to call the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("failed to run the issuance task: {0}")]
    Task(String),
    #[error("failed to build the keystore: {0}")]
    Keystore(#[from] crate::keystore::KeystoreError),
    #[error("failed to issue the certificate: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("{0}")]
    NotLeader(#[from] crate::leader::NotLeader),
    #[error("the Secret changed while it was being written")]
    SecretRaced,
    #[error("reconcile panicked: {0}")]
    Panicked(String),
}

impl Error {
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeError",
            Error::Task(_) => "TaskFailed",
            Error::Keystore(_) => "KeystoreFailed",
            Error::Pki(_) => "IssuanceFailed",
            Error::NotLeader(_) => "NotLeader",
            Error::SecretRaced => "SecretRaced",
            Error::Panicked(_) => "Panicked",
        }
    }
}

/// What was last checked for a request, so an unchanged Secret is not re-read.
/// One is kept per request for as long as it exists, so it is kept small: the
/// inputs the Secret was built from are folded into one digest.
#[derive(Clone, Debug, PartialEq)]
struct Checked {
    secret_version: Box<str>,
    /// [`inputs_digest`] of the plan, CA and password the Secret was built from.
    inputs: [u8; 32],
    renew_token: Option<Box<str>>,
    renewal_time: Timestamp,
    serial: Box<str>,
}

/// Digest of everything a Secret's contents follow from, besides time.
fn inputs_digest(plan: &Plan, ca_fingerprint: &str, password: Option<&SecretString>) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        plan.spec_hash.as_str(),
        plan.keystore_profile.name(),
        plan.alias.as_str(),
        ca_fingerprint,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    match password {
        // A referenced password: its digest, so a changed password re-encrypts.
        Some(p) => {
            h.update([1]);
            h.update(Sha256::digest(p.expose().as_bytes()));
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

pub struct Context {
    pub client: Client,
    recorder: Arc<Recorder>,
    /// Events being sent at once; beyond this they are dropped (and counted).
    events_in_flight: Arc<Semaphore>,
    policy: Policy,
    ca_settings: CaSettings,
    ca: RwLock<Result<Arc<CertificateAuthority>, CaProblem>>,
    /// Readiness: `/readyz` fails while no CA is usable.
    health: Arc<crate::admin::Health>,
    secrets: Mutex<SecretIndex>,
    /// (namespace, Secret name) → names of the requests in that namespace that
    /// reference it (target or password).
    refs: Mutex<HashMap<(String, String), Vec<String>>>,
    /// Requests to revisit outside the watches (e.g. their Secret vanished
    /// during a watch gap).
    revisit: tokio::sync::mpsc::UnboundedSender<ObjectRef<CertificateRequest>>,
    checked: Mutex<HashMap<ObjectRef<CertificateRequest>, Checked>>,
    /// The status this process last wrote for each request, with the resulting
    /// resourceVersion: the cached request may lag behind our own write.
    written: Mutex<HashMap<ObjectRef<CertificateRequest>, (u64, CertificateRequestStatus)>>,
    failures: Mutex<HashMap<ObjectRef<CertificateRequest>, u32>>,
    crypto: Semaphore,
    /// Passes allowed at once (`--concurrency`). tokio's semaphore is fair, so
    /// requests run in the order they became due: kube-runtime's own limit parks
    /// due requests in a hash set and picks them in no particular order, which
    /// left a few early requests waiting for the whole backlog.
    passes: Semaphore,
    /// Set once shutdown begins: passes still waiting for a slot give up.
    draining: tokio::sync::watch::Sender<bool>,
    probe: Option<probe::ProbeState>,
    pub leadership: crate::leader::Leadership,
    pub metrics: Arc<crate::metrics::Metrics>,
}

pub(crate) const MANAGER: &str = bundle::MANAGED_BY;

/// What a [`Context`] is made from.
pub struct ContextSettings {
    pub instance: String,
    pub policy: Policy,
    pub ca: CaSettings,
    pub concurrency: u16,
    pub probe: Option<probe::ProbeState>,
    pub leadership: crate::leader::Leadership,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub health: Arc<crate::admin::Health>,
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    }
}

impl Context {
    fn ca(&self) -> Result<Arc<CertificateAuthority>, CaProblem> {
        self.ca.read().unwrap().clone()
    }

    fn set_ca(&self, ca: Result<Arc<CertificateAuthority>, CaProblem>) {
        self.health
            .set_ca_problem(ca.as_ref().err().map(|p| p.message.clone()));
        *self.ca.write().unwrap() = ca;
    }

    /// A context with empty caches and no CA loaded yet; the receiver yields
    /// requests to revisit outside the watches.
    pub fn new(
        client: Client,
        settings: ContextSettings,
    ) -> (
        Arc<Context>,
        tokio::sync::mpsc::UnboundedReceiver<ObjectRef<CertificateRequest>>,
    ) {
        let (revisit, revisit_rx) = tokio::sync::mpsc::unbounded_channel();
        let not_yet = CaProblem {
            reason: "CAUnavailable",
            message: "the CA has not been loaded yet".into(),
        };
        settings
            .health
            .set_ca_problem(Some(not_yet.message.clone()));
        let ctx = Context {
            recorder: Arc::new(Recorder::new(client.clone(), MANAGER, settings.instance)),
            events_in_flight: Arc::new(Semaphore::new(EVENTS_IN_FLIGHT)),
            client,
            policy: settings.policy,
            ca_settings: settings.ca,
            ca: RwLock::new(Err(not_yet)),
            health: settings.health,
            secrets: Mutex::default(),
            refs: Mutex::default(),
            revisit,
            checked: Mutex::default(),
            written: Mutex::default(),
            failures: Mutex::default(),
            crypto: Semaphore::new(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2),
            ),
            passes: Semaphore::new(usize::from(settings.concurrency.max(1))),
            draining: tokio::sync::watch::channel(false).0,
            probe: settings.probe,
            leadership: settings.leadership,
            metrics: settings.metrics,
        };
        (Arc::new(ctx), revisit_rx)
    }

    /// The Secrets a request names: its target and its password Secret.
    fn referenced_secrets(cr: &CertificateRequest) -> impl Iterator<Item = &str> {
        std::iter::once(cr.spec.secret_name.as_str()).chain(
            cr.spec
                .keystore
                .password_secret_ref
                .as_ref()
                .map(|r| r.name.as_str()),
        )
    }

    fn register_refs(&self, cr: &CertificateRequest) {
        let ns = cr.namespace().unwrap_or_default();
        let name = cr.name_any();
        let mut refs = self.refs.lock().unwrap();
        for secret in Self::referenced_secrets(cr) {
            let names = refs.entry((ns.clone(), secret.to_string())).or_default();
            if !names.contains(&name) {
                names.reserve_exact(1);
                names.push(name.clone());
            }
        }
    }

    /// A request changed from `old` (the cached copy) to `new`: Secret names it
    /// no longer references are dropped, so a changed `secretName` or password
    /// reference leaves nothing behind. Costs nothing per request in between.
    pub fn request_changed(&self, old: Option<&CertificateRequest>, new: &CertificateRequest) {
        if let Some(old) = old {
            let now: Vec<&str> = Self::referenced_secrets(new).collect();
            let ns = old.namespace().unwrap_or_default();
            let name = old.name_any();
            let mut refs = self.refs.lock().unwrap();
            for secret in Self::referenced_secrets(old).filter(|s| !now.contains(s)) {
                drop_ref(&mut refs, (ns.clone(), secret.to_string()), &name);
            }
        }
        self.register_refs(new);
    }

    /// Drops what this process remembers about a deleted request.
    pub fn forget(&self, cr: &CertificateRequest) {
        let key = request_key(cr);
        if let Some(probe) = &self.probe {
            probe.forget(&key);
        }
        self.checked.lock().unwrap().remove(&key);
        self.written.lock().unwrap().remove(&key);
        self.failures.lock().unwrap().remove(&key);
        let ns = cr.namespace().unwrap_or_default();
        let name = cr.name_any();
        let mut refs = self.refs.lock().unwrap();
        for secret in Self::referenced_secrets(cr) {
            drop_ref(&mut refs, (ns.clone(), secret.to_string()), &name);
        }
    }

    /// Requests to reconcile when a Secret changes.
    fn requests_for(
        &self,
        secret: &PartialObjectMeta<Secret>,
    ) -> Vec<ObjectRef<CertificateRequest>> {
        let ns = secret.namespace().unwrap_or_default();
        let mut out: Vec<_> = self
            .refs
            .lock()
            .unwrap()
            .get(&(ns.clone(), secret.name_any()))
            .map(|names| {
                names
                    .iter()
                    .map(|n| ObjectRef::new(n).within(&ns))
                    .collect()
            })
            .unwrap_or_default();
        for owner in secret.owner_references() {
            if owner.kind == "CertificateRequest" && owner.controller == Some(true) {
                out.push(ObjectRef::new(&owner.name).within(&ns));
            }
        }
        out
    }

    /// Keeps the index of managed Secrets in step with the watch; requests
    /// whose Secret a re-list showed gone are revisited.
    pub fn observe_secret(&self, event: &watcher::Event<PartialObjectMeta<Secret>>) {
        let gone = self.secrets.lock().unwrap().apply(event);
        if gone.is_empty() {
            return;
        }
        let refs = self.refs.lock().unwrap();
        for (ns, secret) in gone {
            tracing::debug!(namespace = %ns, secret = %secret, "Secret gone after a re-list");
            for name in refs.get(&(ns.clone(), secret)).into_iter().flatten() {
                let _ = self.revisit.send(ObjectRef::new(name).within(&ns));
            }
        }
    }

    fn secrets_synced(&self) -> bool {
        self.secrets.lock().unwrap().synced()
    }

    /// The request's status as it stands: the cached copy, unless it predates
    /// the status this process wrote last (resourceVersions are etcd revisions).
    fn current_status(&self, cr: &CertificateRequest) -> Option<CertificateRequestStatus> {
        let cached = cr.resource_version().and_then(|v| v.parse::<u64>().ok());
        let oref = request_key(cr);
        let mut written = self.written.lock().unwrap();
        if let Some((version, status)) = written.get(&oref) {
            if cached.is_none_or(|c| c < *version) {
                return Some(status.clone());
            }
            // The cache has caught up: forget our copy, it only bridged the lag.
            written.remove(&oref);
            // A burst leaves a large, mostly empty table behind: give it back.
            if written.capacity() > 1024 && written.len() * 4 < written.capacity() {
                written.shrink_to_fit();
            }
        }
        cr.status.clone()
    }

    fn failures(&self, oref: &ObjectRef<CertificateRequest>) -> u32 {
        self.failures
            .lock()
            .unwrap()
            .get(oref)
            .copied()
            .unwrap_or(0)
    }
}

fn drop_ref(refs: &mut HashMap<(String, String), Vec<String>>, key: (String, String), name: &str) {
    if let Some(names) = refs.get_mut(&key) {
        names.retain(|x| x != name);
        if names.is_empty() {
            refs.remove(&key);
        }
    }
}

/// Per-request exponential back-off after `failures` failed passes in a row:
/// 10 s, 20 s, 40 s … up to 5 min.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs((5u64 << failures.min(6)).min(300))
}

fn policy(args: &RunArgs) -> Policy {
    Policy {
        min_duration: args.min_duration,
        max_duration: args.max_duration,
        allow_wildcard_dns: !args.deny_wildcards,
        allow_ip_sans: !args.deny_ip_sans,
        ..Policy::default()
    }
}

/// A failure the user can fix: reported in status and as an Event.
struct Refusal {
    reason: &'static str,
    message: String,
    retry: bool,
}

fn refuse(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
        retry: true,
    }
}

/// Reads the password a request names. Never echoes its value.
async fn referenced_password(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<Result<SecretString, Refusal>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let Some(secret) = api.get_opt(name).await? else {
        return Ok(Err(refuse(
            "PasswordSecretNotFound",
            format!(
                "keystore.passwordSecretRef names Secret {name}, which does not exist in namespace {ns}; create it or fix the reference"
            ),
        )));
    };
    let Some(value) = secret.data.unwrap_or_default().remove(key) else {
        return Ok(Err(refuse(
            "PasswordKeyNotFound",
            format!(
                "Secret {name} has no key {key:?}; add it or fix keystore.passwordSecretRef.key"
            ),
        )));
    };
    if value.0.is_empty() {
        return Ok(Err(refuse(
            "PasswordEmpty",
            format!("key {key:?} of Secret {name} is empty; PKCS#12 keystores need a password"),
        )));
    }
    if value.0.len() > 1024 {
        return Ok(Err(refuse(
            "PasswordInvalid",
            format!("key {key:?} of Secret {name} is longer than 1024 bytes"),
        )));
    }
    match String::from_utf8(value.0) {
        Ok(text) => Ok(Ok(SecretString::from(text))),
        Err(_) => Ok(Err(refuse(
            "PasswordInvalid",
            format!("key {key:?} of Secret {name} is not UTF-8 text"),
        ))),
    }
}

fn owner_reference(cr: &CertificateRequest) -> OwnerReference {
    let mut o = cr.controller_owner_ref(&()).unwrap_or_default();
    o.block_owner_deletion = Some(true);
    o
}

/// The Secret as it should be: `base` (the live Secret, or nothing) with the
/// operator's data keys, labels, annotations and owner reference set; whatever
/// else is there (other managers' keys, labels, annotations) is kept.
fn desired_secret(
    cr: &CertificateRequest,
    base: Option<&Secret>,
    data: BTreeMap<String, ByteString>,
    annotations: BTreeMap<String, String>,
) -> Secret {
    let mut s = base.cloned().unwrap_or_default();
    s.metadata.name = Some(cr.spec.secret_name.clone());
    s.metadata.namespace = cr.namespace();
    s.metadata.managed_fields = None;
    s.type_ = Some("kubernetes.io/tls".into());
    let mut all = s.data.take().unwrap_or_default();
    all.retain(|k, _| !bundle::OWNED_KEYS.contains(&k.as_str()));
    all.extend(data);
    s.data = Some(all);
    let template = cr.spec.secret_template.clone().unwrap_or_default();
    let labels = s.metadata.labels.get_or_insert_with(Default::default);
    labels.extend(template.labels);
    labels.insert(bundle::MANAGED_BY_LABEL.into(), bundle::MANAGED_BY.into());
    labels.insert(bundle::REQUEST_LABEL.into(), cr.name_any());
    let annos = s.metadata.annotations.get_or_insert_with(Default::default);
    annos.retain(|k, _| !k.starts_with("p12-operator.io/"));
    annos.extend(template.annotations);
    annos.extend(annotations);
    let owners = s
        .metadata
        .owner_references
        .get_or_insert_with(Default::default);
    let mine = owner_reference(cr);
    owners.retain(|o| o.uid != mine.uid);
    owners.push(mine);
    s
}

enum Work {
    Issue { reason: &'static str },
    Reencrypt { reason: &'static str },
    Metadata,
    Nothing,
}

/// The key of a request in the operator's own maps: namespace and name only.
/// (`ObjectRef::from_obj` also copies the uid and resourceVersion, which
/// equality ignores; kept per request in several maps they add up.)
pub(crate) fn request_key(cr: &CertificateRequest) -> ObjectRef<CertificateRequest> {
    ObjectRef::new(&cr.name_any()).within(&cr.namespace().unwrap_or_default())
}

/// One reconcile pass for one request.
pub async fn reconcile(cr: Arc<CertificateRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    if cr.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if !ctx.secrets_synced() {
        // Until every Secret has been listed once, "not in the index" cannot mean "absent".
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    // Wait for a slot, first come first served; a draining process stops waiting.
    let gate = ctx.clone();
    let mut draining = gate.draining.subscribe();
    let _slot = tokio::select! {
        slot = gate.passes.acquire() => slot.map_err(|e| Error::Task(e.to_string()))?,
        _ = draining.wait_for(|d| *d) => return Ok(Action::requeue(Duration::from_secs(1))),
    };
    let span = tracing::info_span!("reconcile", namespace = %cr.namespace().unwrap_or_default(), request = %cr.name_any());
    let metrics = ctx.metrics.clone();
    metrics.reconciles.inc();
    metrics.in_flight.inc();
    let started = std::time::Instant::now();
    // A panic in one request's pass must not take the controller down with it.
    // Boxed: the waiting part of this future stays small while thousands wait.
    let result = std::panic::AssertUnwindSafe(Box::pin(reconcile_inner(cr, ctx).instrument(span)))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Panicked(what))
        });
    metrics.in_flight.dec();
    metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(cr: Arc<CertificateRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    crate::faults::panic_point(&cr.name_any());
    let oref = request_key(cr.as_ref());
    ctx.register_refs(&cr);

    let outcome = async {
        let plan = match plan::plan(&cr, &ctx.policy) {
            Ok(p) => p,
            Err(e) => {
                return Ok(Err(Refusal {
                    reason: e.reason,
                    message: e.message,
                    retry: false,
                }));
            }
        };
        let ca = match ctx.ca() {
            Ok(ca) => ca,
            Err(p) => return Ok(Err(refuse(p.reason, p.message))),
        };
        // A pass that failed before reads the Secret first instead of trusting
        // the index: a foreign Secret is then found before any key is made.
        let force_get = ctx.failures(&oref) > 0;
        let converged = match converge(&cr, &ctx, &plan, &ca, force_get).await {
            // The Secret changed under us (or the index lagged): once more,
            // from what is really there.
            Err(Error::SecretRaced) => converge(&cr, &ctx, &plan, &ca, true).await,
            other => other,
        };
        match converged? {
            Ok((mut status, renewal)) => {
                let next_probe = probe::step(&cr, &ctx, &mut status, &ca.root_pem()).await?;
                record_request_metrics(&ctx, &cr, &status);
                write_status(&ctx, &cr, status).await?;
                let renew_in = requeue_after(renewal);
                Ok(Ok(Action::requeue(
                    next_probe.map_or(renew_in, |p| p.min(renew_in)),
                )))
            }
            Err(r) => Ok::<_, Error>(Err(r)),
        }
    }
    .await;
    // Missing permissions are something a person must fix: say so on the request.
    let outcome = match outcome {
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 403 => Err(refuse(
            "Forbidden",
            format!(
                "the operator is not allowed to do what this request needs ({}); check the RBAC rules of its ServiceAccount (docs/install.md lists them)",
                e.message
            ),
        )),
        other => other?,
    };

    match outcome {
        Ok(action) => {
            ctx.failures.lock().unwrap().remove(&oref);
            Ok(action)
        }
        Err(refusal) => {
            let labels = crate::metrics::Metrics::labels(
                &cr.namespace().unwrap_or_default(),
                &cr.name_any(),
            );
            ctx.metrics.ready.get_or_create(&labels).set(0);
            ctx.metrics
                .reconcile_failures
                .get_or_create(&crate::metrics::CategoryLabels {
                    category: refusal.reason.to_string(),
                })
                .inc();
            let failures = ctx.failures(&oref) + 1;
            ctx.failures.lock().unwrap().insert(oref, failures);
            report_refusal(&cr, &ctx, &refusal, failures).await?;
            Ok(if refusal.retry {
                Action::requeue(backoff(failures))
            } else {
                Action::await_change()
            })
        }
    }
}

/// Makes the Secret serve the plan; returns the status describing it and the renewal time.
async fn converge(
    cr: &CertificateRequest,
    ctx: &Context,
    plan: &Plan,
    ca: &Arc<CertificateAuthority>,
    force_get: bool,
) -> Result<Result<(CertificateRequestStatus, Timestamp), Refusal>, Error> {
    let ns = cr.namespace().unwrap_or_default();
    let oref = request_key(cr);
    let uid = cr.uid().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);

    // Whose is the Secret?
    let meta = ctx.secrets.lock().unwrap().get(&ns, &plan.secret_name);
    if let Some(m) = &meta {
        if m.controller_uid.as_deref() != Some(uid.as_str()) {
            return Ok(Err(conflict(
                plan,
                "it belongs to another CertificateRequest",
            )));
        }
    }

    // The password.
    let ref_password = match &plan.password {
        PasswordSource::SecretKey { name, key } => {
            match referenced_password(&ctx.client, &ns, name, key).await? {
                Ok(p) => Some(p),
                Err(r) => return Ok(Err(r)),
            }
        }
        PasswordSource::Generated => None,
    };
    let renew_token = cr.annotations().get(ann::RENEW_REQUESTED).cloned();

    // Fast path: the Secret is exactly what was last verified for this plan.
    if let Some(m) = meta.as_ref().filter(|_| !force_get) {
        let last = ctx.checked.lock().unwrap().get(&oref).cloned();
        if let Some(last) = last {
            let same = *last.secret_version == *m.resource_version
                && last.inputs == inputs_digest(plan, &ca.fingerprint(), ref_password.as_ref())
                && (renew_token.is_none() || last.renew_token.as_deref() == renew_token.as_deref())
                && Timestamp::now() < last.renewal_time;
            let st = ctx.current_status(cr).unwrap_or_default();
            let status_current = st.serial_number.as_deref() == Some(&*last.serial)
                && status::get(&st.conditions, status::READY).is_some_and(|c| {
                    c.status == "True" && c.observed_generation == cr.metadata.generation
                });
            if same && status_current {
                return Ok(Ok((st, last.renewal_time)));
            }
        }
    }

    let live = if meta.is_some() || force_get {
        secrets.get_opt(&plan.secret_name).await?
    } else {
        None
    };
    if let Some(s) = &live {
        if s.metadata
            .owner_references
            .as_deref()
            .unwrap_or_default()
            .iter()
            .all(|o| o.uid != uid)
        {
            return Ok(Err(conflict(plan, FOREIGN)));
        }
    }
    let data = live
        .as_ref()
        .and_then(|s| s.data.clone())
        .unwrap_or_default();
    let live_annotations = live
        .as_ref()
        .map(|s| s.annotations().clone())
        .unwrap_or_default();
    let existing = Existing::read(&data);
    let (password, generated) = match (ref_password, existing.stored_password.clone()) {
        (Some(p), _) => (p, false),
        (None, Some(stored)) => (stored, true),
        (None, None) => (bundle::generate_password(), true),
    };
    let renew_requested =
        renew_token.is_some() && live_annotations.get(ann::RENEW_HONOURED) != renew_token.as_ref();

    let verdict = if live.is_none() {
        Verdict::Reissue("Missing")
    } else {
        let (d, a, c, p) = (
            data.clone(),
            live_annotations.clone(),
            ca.clone(),
            password.clone(),
        );
        let plan2 = plan.clone();
        let existing2 = Existing::read(&data);
        let now = Timestamp::now();
        tokio::task::spawn_blocking(move || {
            bundle::assess(&d, &a, &existing2, &plan2, &c, &p, renew_requested, now)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    };
    let work = match verdict {
        Verdict::Reissue(reason) => Work::Issue { reason },
        Verdict::Reencrypt(reason) => Work::Reencrypt { reason },
        Verdict::Current => Work::Nothing,
    };

    let work_started = std::time::Instant::now();
    let revision_now: i64 = live_annotations
        .get(ann::REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let (material, revision, honoured) = match &work {
        Work::Issue { .. } => {
            let reuse = match (plan.rotation, existing.key) {
                (RotationPolicy::Never, Some(k)) if k.algorithm() == plan.key_algorithm => Some(k),
                _ => None,
            };
            let _permit = ctx
                .crypto
                .acquire()
                .await
                .map_err(|e| Error::Task(e.to_string()))?;
            if reuse.is_none() {
                ctx.metrics.keys_generated.inc();
            }
            let (plan2, ca2) = (plan.clone(), ca.clone());
            let material = tokio::task::spawn_blocking(move || issue(&plan2, &ca2, reuse))
                .await
                .map_err(|e| Error::Task(e.to_string()))?;
            match material {
                Ok(m) => (m, revision_now + 1, renew_token.clone()),
                Err(IssueError::Policy(reason, v)) => return Ok(Err(refuse(reason, v))),
                Err(IssueError::Pki(e)) => return Err(Error::Pki(e)),
            }
        }
        _ => {
            let (Some(key), Some(leaf_der)) = (existing.key, existing.leaf_der) else {
                return Err(Error::Task("the Secret lost its key between reads".into()));
            };
            (
                Material { key, leaf_der },
                revision_now,
                live_annotations.get(ann::RENEW_HONOURED).cloned(),
            )
        }
    };
    let facts = bundle::CertFacts::of(&material.leaf_der)
        .ok_or_else(|| Error::Task("issued certificate does not parse".into()))?;
    let annotations = bundle::secret_annotations(
        &cr.name_any(),
        plan,
        &facts,
        ca,
        revision,
        honoured.as_deref(),
    );

    let new_data = match &work {
        Work::Issue { .. } | Work::Reencrypt { .. } => {
            let (plan2, ca2, p2) = (plan.clone(), ca.clone(), password.clone());
            let _permit = ctx
                .crypto
                .acquire()
                .await
                .map_err(|e| Error::Task(e.to_string()))?;
            tokio::task::spawn_blocking(move || {
                bundle::build_data(&material, &ca2, &plan2, &p2, generated)
            })
            .await
            .map_err(|e| Error::Task(e.to_string()))??
        }
        _ => data
            .iter()
            .filter(|(k, _)| bundle::OWNED_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    let mut annotations = annotations;
    annotations.insert(
        ann::KEYSTORE_MAC.into(),
        bundle::keystore_mac(ca, &new_data, plan, &password),
    );
    let desired = desired_secret(cr, live.as_ref(), new_data, annotations);
    let work = match work {
        Work::Nothing
            if live.as_ref().is_some_and(|l| {
                l.metadata.labels != desired.metadata.labels
                    || l.metadata.annotations != desired.metadata.annotations
                    || l.metadata.owner_references != desired.metadata.owner_references
            }) =>
        {
            Work::Metadata
        }
        w => w,
    };

    // One write for the Secret.
    if !matches!(work, Work::Nothing) {
        ctx.leadership.check()?;
    }
    // The replace carries the live resourceVersion: a Secret changed since it
    // was read is never overwritten blindly.
    let result = match (&work, &live) {
        (Work::Nothing, Some(l)) => Ok(l.clone()),
        (_, Some(_)) => {
            secrets
                .replace(&plan.secret_name, &post_params(), &desired)
                .await
        }
        (_, None) => secrets.create(&post_params(), &desired).await,
    };
    let written = match result {
        Ok(s) => s,
        Err(kube::Error::Api(e)) if e.code == 409 && live.is_none() => {
            // Ours after all (the index lagged)? Then start over from the live Secret.
            let existing = secrets.get_opt(&plan.secret_name).await?;
            if existing.is_some_and(|s| s.owner_references().iter().any(|o| o.uid == uid)) {
                return Err(Error::SecretRaced);
            }
            return Ok(Err(conflict(plan, FOREIGN)));
        }
        Err(kube::Error::Api(e)) if e.code == 409 => return Err(Error::SecretRaced),
        Err(kube::Error::Api(e)) if e.code == 400 || e.code == 422 => {
            return Ok(Err(Refusal {
                reason: "InvalidRequest",
                message: format!(
                    "the API server refused to write Secret {}: {}; fix the request (e.g. its name or secretTemplate)",
                    plan.secret_name, e.message
                ),
                retry: false,
            }));
        }
        Err(kube::Error::Api(e)) if e.code == 403 => return Err(kube::Error::Api(e).into()),
        Err(e) if matches!(work, Work::Issue { .. } | Work::Reencrypt { .. }) => {
            // The Secret does not hold what the plan asks for: status must not say it does.
            return Ok(Err(refuse(
                "SecretWriteFailed",
                format!(
                    "failed to write Secret {}: {}; it does not hold a current certificate yet, retrying",
                    plan.secret_name,
                    crate::telemetry::error_chain(&e)
                ),
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if !matches!(work, Work::Nothing) {
        crate::faults::crash_point("after-secret-write");
    }
    let renewal = plan::renewal_time(plan, facts.not_before, facts.not_after);
    ctx.checked.lock().unwrap().insert(
        oref.clone(),
        Checked {
            secret_version: written.resource_version().unwrap_or_default().into(),
            inputs: inputs_digest(plan, &ca.fingerprint(), (!generated).then_some(&password)),
            renew_token: renew_token.as_deref().map(Into::into),
            renewal_time: renewal,
            serial: facts.serial_hex.as_str().into(),
        },
    );

    let action = match &work {
        Work::Issue { .. } if revision > 1 => Some("renew"),
        Work::Issue { .. } => Some("issue"),
        Work::Reencrypt { .. } => Some("reencrypt"),
        _ => None,
    };
    if let Some(action) = action {
        ctx.metrics
            .issuance_duration
            .get_or_create(&crate::metrics::ActionLabels {
                action: action.into(),
            })
            .observe(work_started.elapsed().as_secs_f64());
    }
    match &work {
        Work::Issue { reason } => {
            let (event_reason, note) = if revision > 1 {
                (
                    "Renewed",
                    format!(
                        "issued certificate {} (revision {revision}) because {}",
                        facts.serial_hex,
                        describe(reason)
                    ),
                )
            } else {
                (
                    "Issued",
                    format!(
                        "issued certificate {} into Secret {}",
                        facts.serial_hex, plan.secret_name
                    ),
                )
            };
            tracing::info!(namespace = %ns, request = %cr.name_any(), serial = %facts.serial_hex, reason, "issued certificate");
            publish(ctx, cr, EventType::Normal, event_reason, "Issue", note).await;
        }
        Work::Reencrypt { reason } => {
            tracing::info!(namespace = %ns, request = %cr.name_any(), reason, "re-encrypted keystores");
            publish(
                ctx,
                cr,
                EventType::Normal,
                "Reencrypted",
                "Reencrypt",
                format!(
                    "rebuilt the keystores of Secret {} without re-issuing ({})",
                    plan.secret_name,
                    describe(reason)
                ),
            )
            .await;
        }
        Work::Metadata => {
            tracing::debug!(namespace = %ns, request = %cr.name_any(), "restored Secret metadata")
        }
        Work::Nothing => {}
    }

    // One write for status, only when it changed.
    let mut status = ctx.current_status(cr).unwrap_or_default();
    let generation = cr.metadata.generation;
    let until = format!(
        "certificate {} valid until {}, renews at {}",
        facts.serial_hex, facts.not_after, renewal
    );
    status::set(
        &mut status.conditions,
        status::READY,
        true,
        "Issued",
        &until,
        generation,
    );
    status::set(
        &mut status.conditions,
        status::ISSUED,
        true,
        "Issued",
        &format!("Secret {} holds revision {revision}", plan.secret_name),
        generation,
    );
    status.not_before = Some(Time(facts.not_before));
    status.not_after = Some(Time(facts.not_after));
    status.renewal_time = Some(Time(renewal));
    status.serial_number = Some(facts.serial_hex.clone());
    status.fingerprint_sha256 = Some(facts.fingerprint_sha256.clone());
    status.revision = Some(revision);
    status.failed_attempts = None;
    status.last_failure_time = None;
    Ok(Ok((status, renewal)))
}

fn record_request_metrics(
    ctx: &Context,
    cr: &CertificateRequest,
    status: &CertificateRequestStatus,
) {
    let m = &ctx.metrics;
    let labels =
        crate::metrics::Metrics::labels(&cr.namespace().unwrap_or_default(), &cr.name_any());
    let ready = status::get(&status.conditions, status::READY).is_some_and(|c| c.status == "True");
    m.ready.get_or_create(&labels).set(i64::from(ready));
    if let Some(t) = &status.not_after {
        m.not_after
            .get_or_create(&labels)
            .set(t.0.as_second() as f64);
    }
    if let Some(t) = &status.renewal_time {
        m.renewal_time
            .get_or_create(&labels)
            .set(t.0.as_second() as f64);
    }
    match status::get(&status.conditions, status::VERIFIED) {
        Some(c) => {
            m.verified
                .get_or_create(&labels)
                .set(i64::from(c.status == "True"));
        }
        None => {
            m.verified.remove(&labels);
        }
    }
}

fn describe(reason: &str) -> &'static str {
    match reason {
        "Missing" => "the Secret had no certificate",
        "Damaged" => "the certificate in the Secret could not be read",
        "KeyMismatch" => "the key in the Secret did not match its certificate",
        "CAChanged" => "the CA changed",
        "SpecChanged" => "the request's certificate fields changed",
        "RenewalRequested" => "a renewal was requested",
        "Expired" => "the certificate had expired",
        "RenewalDue" => "the renewal time was reached",
        "ProfileChanged" => "the keystore profile changed",
        "KeystoreStale" => "the keystore did not open with the current password or was out of date",
        "TruststoreStale" => {
            "the truststore did not open with the current password or was out of date"
        }
        "CABundleStale" => "ca.crt was out of date",
        "PasswordSourceChanged" => "the password source changed",
        _ => "the Secret was out of date",
    }
}

/// Why a Secret that exists but is not ours cannot be used; one sentence
/// whichever way it was found, so a retry does not rewrite status.
const FOREIGN: &str = "it already exists and is not owned by this CertificateRequest";

fn conflict(plan: &Plan, why: &str) -> Refusal {
    refuse(
        "SecretConflict",
        format!(
            "Secret {} cannot be used because {why}; nothing was written to it. Choose another spec.secretName or remove that Secret",
            plan.secret_name
        ),
    )
}

fn requeue_after(t: Timestamp) -> Duration {
    let secs = t.duration_since(Timestamp::now()).as_secs_f64().max(1.0);
    // Tokio timers handle long sleeps; cap so a changed clock is noticed daily.
    Duration::from_secs_f64(secs.min(86_400.0))
}

enum IssueError {
    Policy(&'static str, String),
    Pki(pki::PkiError),
}

/// Key pair → CSR → verified CSR → policy → signature. Runs on a blocking thread.
fn issue(
    plan: &Plan,
    ca: &CertificateAuthority,
    reuse: Option<PrivateKey>,
) -> Result<Material, IssueError> {
    let key = match reuse {
        Some(k) => k,
        None => PrivateKey::generate(plan.key_algorithm).map_err(IssueError::Pki)?,
    };
    crate::faults::crash_point("after-keygen");
    let csr_der =
        pki::build_csr(&key, &plan.leaf.subject, &plan.leaf.sans).map_err(IssueError::Pki)?;
    let csr = pki::VerifiedCsr::parse_and_verify(&csr_der).map_err(IssueError::Pki)?;
    Policy::default_for_signing(plan)
        .check(&plan.leaf, &csr)
        .map_err(|v| IssueError::Policy(v.reason(), v.message().to_string()))?;
    let cert = pki::sign(ca, &csr, &plan.leaf, Timestamp::now()).map_err(IssueError::Pki)?;
    crate::faults::crash_point("after-sign");
    Ok(Material {
        key,
        leaf_der: cert.der,
    })
}

trait SigningPolicy {
    fn default_for_signing(plan: &Plan) -> Policy;
}

impl SigningPolicy for Policy {
    /// The plan already passed the installation's policy; at signing time the
    /// CSR is checked against the plan with bounds that admit that plan.
    fn default_for_signing(plan: &Plan) -> Policy {
        Policy {
            min_duration: plan.leaf.duration,
            max_duration: plan.leaf.duration,
            allow_wildcard_dns: true,
            allow_ip_sans: true,
            ..Policy::default()
        }
    }
}

pub(crate) async fn publish(
    ctx: &Context,
    cr: &CertificateRequest,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    if !ctx.leadership.is_leader() {
        return;
    }
    // Events are for people; they must not hold up the Secret or status
    // writes, nor pile up without bound while the API server is slow.
    let Ok(permit) = ctx.events_in_flight.clone().try_acquire_owned() else {
        ctx.metrics.events_dropped.inc();
        tracing::debug!(reason, "dropped an event: too many are being sent");
        return;
    };
    let note = status::truncate(&note);
    let (reason, action) = (reason.to_string(), action.to_string());
    let (recorder, reference) = (ctx.recorder.clone(), cr.object_ref(&()));
    tokio::spawn(async move {
        if let Err(e) = recorder
            .publish(&reference, type_, &reason, &action, &note)
            .await
        {
            tracing::warn!(error = %e, "failed to publish an event");
        }
        drop(permit);
    });
}

async fn write_status(
    ctx: &Context,
    cr: &CertificateRequest,
    status: CertificateRequestStatus,
) -> Result<(), Error> {
    if ctx.current_status(cr).as_ref() == Some(&status) {
        return Ok(());
    }
    ctx.leadership.check()?;
    let api: Api<CertificateRequest> =
        Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "p12-operator.io/v1alpha1",
        "kind": "CertificateRequest",
        "status": status,
    });
    let written = api
        .patch_status(
            &cr.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
    if let Some(version) = written
        .resource_version()
        .and_then(|v| v.parse::<u64>().ok())
    {
        ctx.written
            .lock()
            .unwrap()
            .insert(request_key(cr), (version, status));
    }
    Ok(())
}

async fn report_refusal(
    cr: &CertificateRequest,
    ctx: &Context,
    r: &Refusal,
    failures: u32,
) -> Result<(), Error> {
    let mut status = ctx.current_status(cr).unwrap_or_default();
    let previous = status::get(&status.conditions, status::ISSUED)
        .map(|c| (c.reason.clone(), c.message.clone()));
    let message = status::truncate(&r.message);
    let generation = cr.metadata.generation;
    status::set(
        &mut status.conditions,
        status::READY,
        false,
        r.reason,
        &message,
        generation,
    );
    status::set(
        &mut status.conditions,
        status::ISSUED,
        false,
        r.reason,
        &message,
        generation,
    );
    status.failed_attempts = Some(failures as i32);
    status.last_failure_time = Some(Time(Timestamp::now()));
    let changed = previous != Some((r.reason.to_string(), message.clone()));
    if changed {
        tracing::warn!(namespace = %cr.namespace().unwrap_or_default(), request = %cr.name_any(), reason = r.reason, message = %message, "request refused");
        publish(ctx, cr, EventType::Warning, r.reason, "Issue", message).await;
        write_status(ctx, cr, status).await?;
    }
    Ok(())
}

/// Transient errors: back off per request, exponentially.
pub fn error_policy(cr: Arc<CertificateRequest>, err: &Error, ctx: Arc<Context>) -> Action {
    let oref = request_key(cr.as_ref());
    if matches!(err, Error::NotLeader(_)) {
        return Action::await_change();
    }
    ctx.metrics
        .reconcile_failures
        .get_or_create(&crate::metrics::CategoryLabels {
            category: err.category().into(),
        })
        .inc();
    let failures = ctx.failures(&oref) + 1;
    ctx.failures.lock().unwrap().insert(oref, failures);
    tracing::warn!(namespace = %cr.namespace().unwrap_or_default(), request = %cr.name_any(), category = err.category(), error = %err, "reconcile failed");
    Action::requeue(backoff(failures))
}

/// `p12-operator run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| anyhow::anyhow!("failed to configure the Kubernetes client: {e}"))?;
    let api_server = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|e| anyhow::anyhow!("failed to configure the Kubernetes client: {e}"))?;
    let ca_settings = CaSettings {
        api_server: api_server.trim_end_matches('/').to_string(),
        namespace: args.namespace.clone(),
        secret_name: args.ca_secret.clone(),
        create: args.ca_create,
        algorithm: args.ca_key_algorithm,
        common_name: args.ca_common_name.clone(),
        validity: args.ca_duration,
    };
    let instance = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("p12-operator-{}", std::process::id()));

    // Admin endpoints first, so probes answer while this replica waits for the lease.
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let health = Arc::new(crate::admin::Health::default());
    let leadership = if args.leader_elect {
        crate::leader::Leadership::elected()
    } else {
        crate::leader::Leadership::always()
    };
    let admin_listener = tokio::net::TcpListener::bind(args.admin_bind_address)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "failed to listen on --admin-bind-address {}: {e}",
                args.admin_bind_address
            )
        })?;
    tokio::spawn(crate::admin::serve(
        admin_listener,
        metrics.clone(),
        health.clone(),
        leadership.clone(),
    ));

    let lease_api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &args.namespace);
    let lease_cfg = crate::leader::LeaseConfig::new(&args.lease_name, &instance);
    if args.leader_elect {
        health
            .standby
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(lease = %args.lease_name, identity = %instance, "waiting for the leader lease");
        crate::leader::acquire(lease_api.clone(), lease_cfg.clone(), &leadership, || {
            // Writes already stopped at the renew deadline; exit so the pod restarts as a standby.
            std::process::exit(1);
        })
        .await;
        health
            .standby
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    let (pod_reader, pod_writer) = reflector::store::<Pod>();
    let (ctx, revisit_rx) = Context::new(
        client.clone(),
        ContextSettings {
            instance,
            policy: policy(&args),
            ca: ca_settings,
            concurrency: args.concurrency,
            probe: (!args.disable_probes).then(|| {
                probe::ProbeState::new(
                    probe::ProbeConfig {
                        image: args.probe_image.clone(),
                        grace: args.probe_grace,
                        network_policy: args.probe_network_policy,
                    },
                    pod_reader.clone(),
                )
            }),
            leadership: leadership.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
        },
    );

    // The CA: loaded before the controller starts, then kept loaded (retried
    // while the API server cannot deliver it, reloaded when its Secret changes).
    let ca_api: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    let (all_tx, all_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (ca_seen_tx, ca_seen_rx) = tokio::sync::watch::channel::<Option<String>>(None);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(ca::keep_loaded(
        ctx.clone(),
        ca_api,
        ca_seen_rx,
        all_tx,
        first_tx,
    ));
    let ca_meta: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), &args.namespace);
    let ca_filter = watcher::Config::default().fields(&format!("metadata.name={}", args.ca_secret));
    tokio::spawn(async move {
        let mut events = watcher(ca_meta, ca_filter).backoff(watch_backoff()).boxed();
        while let Some(ev) = events.next().await {
            let version = match ev {
                Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => {
                    s.resource_version().unwrap_or_default()
                }
                Ok(watcher::Event::Delete(_)) => "deleted".to_string(),
                _ => continue,
            };
            ca_seen_tx.send_if_modified(|v| {
                let changed = v.as_deref() != Some(version.as_str());
                *v = Some(version);
                changed
            });
        }
    });
    let _ = first_rx.await;

    let (crs, secrets, pods, slices): (
        Api<CertificateRequest>,
        Api<PartialObjectMeta<Secret>>,
        Api<Pod>,
        Api<PartialObjectMeta<EndpointSlice>>,
    ) = match &args.watch_namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    // Probe pods (ours only, by label) and EndpointSlice metadata trigger probes.
    let probe_selector = format!(
        "{}={},{}={}",
        probe_pod::COMPONENT_LABEL,
        probe_pod::COMPONENT,
        bundle::MANAGED_BY_LABEL,
        bundle::MANAGED_BY
    );
    let pod_stream = watcher(
        pods,
        watcher::Config::default()
            .labels(&probe_selector)
            .any_semantic(),
    )
    .backoff(watch_backoff())
    .modify(|p| {
        p.managed_fields_mut().clear();
    })
    .reflect(pod_writer)
    .touched_objects();
    let ctx5 = ctx.clone();
    let slice_stream = watcher(
        slices,
        watcher::Config::default()
            .labels("kubernetes.io/service-name")
            .any_semantic(),
    )
    .backoff(watch_backoff())
    .touched_objects();
    let (reader, writer) = reflector::store();
    let cr_stream = watcher(crs, watcher::Config::default().any_semantic())
        .backoff(watch_backoff())
        .inspect({
            let health = health.clone();
            move |item| health.watch_result("CertificateRequest", item)
        })
        .modify(|cr| {
            // Keep only what reconciling reads: one copy of every request stays
            // in memory. Labels and foreign annotations (`kubectl apply` copies
            // the whole spec into one) are never read, and the cached object is
            // never written back (status goes out as its own patch).
            cr.managed_fields_mut().clear();
            cr.metadata.labels = None;
            cr.annotations_mut()
                .retain(|k, _| k.starts_with(ann::PREFIX));
            if cr.annotations().is_empty() {
                cr.metadata.annotations = None;
            }
        })
        // Before the cache takes the new copy: compare it with the old one, and
        // forget requests that a re-list (after a watch gap) no longer shows.
        .inspect_ok({
            let (ctx, cache, metrics) = (ctx.clone(), reader.clone(), metrics.clone());
            let mut relisted: Option<std::collections::HashSet<ObjectRef<CertificateRequest>>> =
                None;
            move |ev| match ev {
                watcher::Event::Apply(cr) => {
                    ctx.request_changed(cache.get(&request_key(cr)).as_deref(), cr)
                }
                watcher::Event::Init => relisted = Some(Default::default()),
                watcher::Event::InitApply(cr) => {
                    ctx.request_changed(cache.get(&request_key(cr)).as_deref(), cr);
                    relisted
                        .get_or_insert_with(Default::default)
                        .insert(request_key(cr));
                }
                watcher::Event::InitDone => {
                    let seen = relisted.take().unwrap_or_default();
                    for gone in cache.state() {
                        if !seen.contains(&request_key(&gone)) {
                            metrics.forget(&gone.namespace().unwrap_or_default(), &gone.name_any());
                            ctx.forget(&gone);
                        }
                    }
                }
                watcher::Event::Delete(_) => {}
            }
        })
        .reflect(writer)
        .inspect_ok({
            let (metrics, health, forget_ctx) = (metrics.clone(), health.clone(), ctx.clone());
            move |ev| match ev {
                watcher::Event::Delete(cr) => {
                    metrics.forget(&cr.namespace().unwrap_or_default(), &cr.name_any());
                    forget_ctx.forget(cr);
                }
                watcher::Event::InitDone => health
                    .synced
                    .store(true, std::sync::atomic::Ordering::Relaxed),
                _ => {}
            }
        })
        .applied_objects();

    let ctx2 = ctx.clone();
    let secret_stream = watcher(secrets, watcher::Config::default().any_semantic())
        .backoff(watch_backoff())
        .inspect({
            let health = health.clone();
            move |item| health.watch_result("Secret", item)
        })
        .modify(|s| {
            s.managed_fields_mut().clear();
            s.annotations_mut().clear();
        })
        .inspect_ok(move |ev| ctx2.observe_secret(ev))
        .touched_objects();

    // The controller drains in-flight passes on SIGTERM/Ctrl-C; passes still
    // waiting for a slot are not in flight yet and must not delay the exit.
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            ctx.draining.send_replace(true);
        });
    }
    tokio::spawn(return_memory_when_idle(ctx.metrics.clone()));
    let ctx4 = ctx.clone();
    let mut draining = ctx.draining.subscribe();
    tracing::info!(namespace = %args.namespace, watch = %args.watch_namespace.as_deref().unwrap_or("all namespaces"), "starting controller");
    Controller::for_stream(cr_stream, reader)
        // Each watch above backs off on its own; this only guards the merged stream.
        .trigger_backoff(watch_backoff())
        .watches_stream(secret_stream, move |s| ctx4.requests_for(&s))
        .owns_stream(pod_stream)
        .watches_stream(slice_stream, move |s: PartialObjectMeta<EndpointSlice>| {
            let service = s
                .labels()
                .get("kubernetes.io/service-name")
                .cloned()
                .unwrap_or_default();
            match &ctx5.probe {
                Some(p) => p.endpoints_changed(&s.namespace().unwrap_or_default(), &service),
                None => Vec::new(),
            }
        })
        .reconcile_all_on(tokio_stream_from(all_rx))
        .reconcile_on(futures::stream::poll_fn({
            let mut rx = revisit_rx;
            move |cx| rx.poll_recv(cx)
        }))
        // `Context::passes` limits passes, in arrival order; kube-runtime only
        // bounds how many wait for a slot (see ADMITTED).
        .with_config(kube::runtime::controller::Config::default().concurrency(ADMITTED))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    // The controller ends only on SIGTERM/Ctrl-C, which also sets `draining`
    // (from another task, hence the short wait); anything else is a defect.
    let signalled = tokio::time::timeout(Duration::from_secs(1), draining.wait_for(|d| *d))
        .await
        .is_ok_and(|r| r.is_ok());
    if !signalled {
        health.fail("the controller loop ended without a shutdown signal");
    }
    tracing::info!("controller stopped; in-flight reconciles drained");
    if args.leader_elect {
        crate::leader::release(&lease_api, &lease_cfg).await;
    }
    if !signalled {
        anyhow::bail!("failed to keep the controller running: it ended without a shutdown signal");
    }
    Ok(())
}

/// Events sent at once (client-go's broadcaster queues 1,000 and drops the rest).
const EVENTS_IN_FLIGHT: usize = 1024;

/// Passes kube-runtime hands over at once; they then wait for one of the
/// `--concurrency` slots in arrival order. kube-runtime's runner polls every
/// admitted pass on each wake-up and keeps its table at the largest size it
/// reached, so admitting everything costs CPU and memory in proportion to the
/// backlog. Beyond this many due requests, kube-runtime picks the next one in
/// no particular order (docs/benchmarks.md).
const ADMITTED: u16 = 1024;

/// After a burst of passes, hands the memory it freed back to the system.
/// glibc's allocator keeps freed memory in its arenas, so without this the
/// operator's resident size stays at the peak of its largest wave; one
/// `malloc_trim` when the work stops costs a few milliseconds.
async fn return_memory_when_idle(metrics: Arc<crate::metrics::Metrics>) {
    let mut seen = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let passes = metrics.reconciles.get();
        if passes != seen && metrics.in_flight.get() == 0 {
            seen = passes;
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only releases free memory; it is thread-safe.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// The first SIGTERM or Ctrl-C (the same signals as `Controller::shutdown_on_signal`).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Watch reconnection back-off: 0.5 s doubling to 5 s (with jitter), starting
/// over after 10 s without errors. Shorter than kube's default (30 s cap, 120 s
/// reset) so that after an API server outage the operator is back within
/// seconds; a handful of watches retrying every 5 s cost the API server nothing.
struct WatchBackoff {
    next: Duration,
    last_error: Option<std::time::Instant>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = std::time::Instant::now();
        if self
            .last_error
            .is_some_and(|t| now.duration_since(t) > Duration::from_secs(10))
        {
            self.next = BACKOFF_MIN;
        }
        self.last_error = Some(now);
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        Some(d.mul_f64(rand::random_range(0.8..1.2)))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

fn watch_backoff() -> WatchBackoff {
    WatchBackoff {
        next: BACKOFF_MIN,
        last_error: None,
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<()>,
) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
