//! What a pass may know besides the request: the client, the CA, the caches
//! (Secret index, Secret references, last check, last written status, failure
//! counts) and the limits on concurrent work. Uses `secret_index`, `probe`'s
//! state, admin health, leadership and metrics; makes no API calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::Semaphore;

use super::ca::{CaProblem, CaSettings};
use super::probe;
use super::record::EVENTS_IN_FLIGHT;
use super::secret_index::SecretIndex;
use super::secret_write::Checked;
use crate::api::{CertificateRequest, CertificateRequestStatus};
use crate::bundle;
use crate::events::Recorder;
use crate::pki::{Authorities, Policy};

pub struct Context {
    pub client: Client,
    pub(super) recorder: Arc<Recorder>,
    /// Events being sent at once; beyond this they are dropped (and counted).
    pub(super) events_in_flight: Arc<Semaphore>,
    pub(super) policy: Policy,
    /// Who may get which names: IssuancePolicies, namespace labels, Services.
    pub admission: super::Admission,
    pub(super) ca_settings: CaSettings,
    pub(super) rotation: super::rotation::RotationSettings,
    /// Since when no Secret holds a certificate of the previous CA (rotation).
    pub(super) previous_gone_since: Mutex<Option<std::time::Instant>>,
    pub(super) ca: RwLock<Result<Arc<Authorities>, CaProblem>>,
    /// Readiness: `/readyz` fails while no CA is usable.
    pub(super) health: Arc<crate::admin::Health>,
    pub(super) secrets: Mutex<SecretIndex>,
    /// (namespace, Secret name) → names of the requests in that namespace that
    /// reference it (target or password).
    pub(super) refs: Mutex<HashMap<(String, String), Vec<String>>>,
    /// Requests to revisit outside the watches (e.g. their Secret vanished
    /// during a watch gap).
    pub(super) revisit: tokio::sync::mpsc::UnboundedSender<ObjectRef<CertificateRequest>>,
    pub(super) checked: Mutex<HashMap<ObjectRef<CertificateRequest>, Checked>>,
    /// The status this process last wrote for each request, with the resulting
    /// resourceVersion: the cached request may lag behind our own write.
    pub(super) written:
        Mutex<HashMap<ObjectRef<CertificateRequest>, (u64, CertificateRequestStatus)>>,
    pub(super) failures: Mutex<HashMap<ObjectRef<CertificateRequest>, u32>>,
    pub(super) crypto: Semaphore,
    /// Passes allowed at once (`--concurrency`). tokio's semaphore is fair, so
    /// requests run in the order they became due: kube-runtime's own limit parks
    /// due requests in a hash set and picks them in no particular order, which
    /// left a few early requests waiting for the whole backlog.
    pub(super) passes: Semaphore,
    /// Set once shutdown begins: passes still waiting for a slot give up.
    pub(super) draining: tokio::sync::watch::Sender<bool>,
    pub(super) probe: Option<probe::ProbeState>,
    /// Workloads named in `spec.rollout` may be restarted (`--enable-rollout`).
    pub(super) rollout: bool,
    /// Turns for the writes of a CA rotation (`--ca-rewrites-per-second`).
    pub(super) rotation_pace: super::pace::Pace,
    pub leadership: crate::leader::Leadership,
    pub metrics: Arc<crate::metrics::Metrics>,
}

pub(crate) const MANAGER: &str = bundle::MANAGED_BY;

/// What a [`Context`] is made from.
pub struct ContextSettings {
    pub instance: String,
    pub policy: Policy,
    pub admission: super::Admission,
    pub ca: CaSettings,
    pub rotation: super::rotation::RotationSettings,
    pub concurrency: u16,
    pub probe: Option<probe::ProbeState>,
    pub rollout: bool,
    /// Secrets rewritten (or re-issued) per second during a CA rotation.
    pub rotation_rate: f64,
    pub leadership: crate::leader::Leadership,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub health: Arc<crate::admin::Health>,
}

impl Context {
    /// The issuing CA and, during a rotation, the others clients trust.
    pub(super) fn ca(&self) -> Result<Arc<Authorities>, CaProblem> {
        self.ca.read().unwrap().clone()
    }

    /// The roots clients should trust, from the loaded CA: the one place a
    /// rotation adds the next (or keeps the previous) root. None without a CA.
    pub(super) fn trust_bundle(&self) -> Option<crate::pki::TrustBundle> {
        Some(self.ca().ok()?.bundle().clone())
    }

    pub(super) fn set_ca(&self, ca: Result<Arc<Authorities>, CaProblem>) {
        self.health
            .set_ca_problem(ca.as_ref().err().map(|p| p.message.clone()));
        for reason in ["CAMissing", "CAInvalid", "CANotFound", "CAUnavailable"] {
            let now = ca.as_ref().err().is_some_and(|p| p.reason == reason);
            let labels = crate::metrics::ReasonLabels {
                reason: reason.into(),
            };
            // Only reasons that occurred appear, so a healthy operator exports none.
            if now {
                self.metrics.ca_problem.get_or_create(&labels).set(1);
            } else if let Some(g) = self.metrics.ca_problem.get(&labels) {
                g.set(0);
            }
        }
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
            admission: settings.admission,
            ca_settings: settings.ca,
            rotation: settings.rotation,
            previous_gone_since: Mutex::default(),
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
            rollout: settings.rollout,
            rotation_pace: super::pace::Pace::new(settings.rotation_rate),
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
        self.rotation_pace.forget(&key);
        remove_and_shrink(&mut self.checked.lock().unwrap(), &key);
        remove_and_shrink(&mut self.written.lock().unwrap(), &key);
        remove_and_shrink(&mut self.failures.lock().unwrap(), &key);
        let ns = cr.namespace().unwrap_or_default();
        let name = cr.name_any();
        let mut refs = self.refs.lock().unwrap();
        for secret in Self::referenced_secrets(cr) {
            drop_ref(&mut refs, (ns.clone(), secret.to_string()), &name);
        }
        shrink_if_sparse(&mut refs);
    }

    /// Requests to reconcile when a Secret changes.
    pub(super) fn requests_for(
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

    /// Reconciles a request again soon, outside the watches.
    pub(super) fn revisit(&self, request: ObjectRef<CertificateRequest>) {
        let _ = self.revisit.send(request);
    }

    pub(super) fn secrets_synced(&self) -> bool {
        self.secrets.lock().unwrap().synced()
    }

    /// The request's status as it stands: the cached copy, unless it predates
    /// the status this process wrote last (resourceVersions are etcd revisions).
    pub(super) fn current_status(
        &self,
        cr: &CertificateRequest,
    ) -> Option<CertificateRequestStatus> {
        let cached = cr.resource_version().and_then(|v| v.parse::<u64>().ok());
        let oref = request_key(cr);
        let mut written = self.written.lock().unwrap();
        if let Some((version, status)) = written.get(&oref) {
            if cached.is_none_or(|c| c < *version) {
                return Some(status.clone());
            }
            // The cache has caught up: forget our copy, it only bridged the lag.
            remove_and_shrink(&mut written, &oref);
        }
        cr.status.clone()
    }

    pub(super) fn failures(&self, oref: &ObjectRef<CertificateRequest>) -> u32 {
        self.failures
            .lock()
            .unwrap()
            .get(oref)
            .copied()
            .unwrap_or(0)
    }
}

/// Removes `key`; see [`shrink_if_sparse`].
fn remove_and_shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: &K) {
    if map.remove(key).is_some() {
        shrink_if_sparse(map);
    }
}

/// Gives back the memory of a table that a burst left large and mostly empty
/// (10,000 deleted requests kept their tables' peak size, docs/benchmarks.md
/// "Churn"). Shrinking only below a quarter of the capacity keeps the cost
/// amortised: each shrink follows at least as many removals as it keeps.
/// Tables under [`SHRINK_ABOVE_BYTES`] of slots are left alone, whatever
/// their number of slots: a slot of `written` holds a whole status.
pub(super) fn shrink_if_sparse<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() * std::mem::size_of::<(K, V)>() > SHRINK_ABOVE_BYTES
        && map.len() * 4 < map.capacity()
    {
        map.shrink_to_fit();
    }
}

/// Below this many bytes of slots, a table is not worth shrinking.
pub(super) const SHRINK_ABOVE_BYTES: usize = 32 * 1024;

fn drop_ref(refs: &mut HashMap<(String, String), Vec<String>>, key: (String, String), name: &str) {
    if let Some(names) = refs.get_mut(&key) {
        names.retain(|x| x != name);
        if names.is_empty() {
            refs.remove(&key);
        }
    }
}

/// The key of a request in the operator's own maps: namespace and name only.
/// (`ObjectRef::from_obj` also copies the uid and resourceVersion, which
/// equality ignores; kept per request in several maps they add up.)
pub(crate) fn request_key(cr: &CertificateRequest) -> ObjectRef<CertificateRequest> {
    ObjectRef::new(&cr.name_any()).within(&cr.namespace().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::{SHRINK_ABOVE_BYTES, remove_and_shrink};
    use std::collections::HashMap;

    #[test]
    fn a_table_of_large_entries_gives_its_memory_back_after_a_burst() {
        // Like `written`: few entries, each slot a whole status.
        let mut map: HashMap<u32, [u8; 512]> = HashMap::new();
        for i in 0..3_000 {
            map.insert(i, [0; 512]);
        }
        let peak = map.capacity();
        for i in 1..3_000 {
            remove_and_shrink(&mut map, &i);
        }
        let slot = std::mem::size_of::<(u32, [u8; 512])>();
        assert_eq!(map.len(), 1);
        assert!(
            map.capacity() * slot <= SHRINK_ABOVE_BYTES,
            "{} slots of {slot} bytes left after deleting all but one of 3,000 (peak {peak})",
            map.capacity()
        );
        // Small tables are left alone: shrinking them would only cost time.
        let mut small: HashMap<u32, u8> = (0..100).map(|i| (i, 0)).collect();
        for i in 1..100 {
            remove_and_shrink(&mut small, &i);
        }
        // hashbrown's `capacity` is what can be inserted without growing, so
        // tombstones lower it; shrunk to fit one entry it would be 3.
        assert!(small.capacity() > 3, "{}", small.capacity());
    }
}
