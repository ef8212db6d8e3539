//! Trust distribution: the ConfigMap `p12-operator-ca-bundle` in every namespace
//! the `--trust-bundle-namespace-selector` selects, holding the trust bundle as
//! `ca.crt` (PEM), `truststore.p12` (PKCS#12, no password) and
//! `truststore-changeit.p12` (PKCS#12, password `changeit`, for Java builds
//! that cannot open a passwordless file).
//!
//! Level-triggered and paced: the namespace watch (shared with admission, in
//! `run`) and a watch of ConfigMaps of that one name mark namespaces dirty; one
//! task compares each dirty namespace with what it should hold and writes only
//! the difference, at most [`WRITES_PER_SECOND`] writes a second, so a new
//! bundle reaches 10,000 namespaces in minutes without a burst. Only
//! ConfigMaps labelled `app.kubernetes.io/managed-by: p12-operator` are ever
//! updated or deleted; one of that name without the label is reported, never
//! touched.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::context::{Context, MANAGER};
use crate::bundle::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::events::Kind as EventType;
use crate::keystore::{self, Profile};
use crate::pki::TrustBundle;
use crate::sensitive::SecretString;

/// Name of the ConfigMap in every selected namespace.
pub const CONFIGMAP: &str = "p12-operator-ca-bundle";
/// The bundle as concatenated PEM.
pub const CA_CRT: &str = "ca.crt";
/// The bundle as a PKCS#12 truststore without a password (no MAC, nothing encrypted).
pub const TRUSTSTORE: &str = "truststore.p12";
/// The bundle as a PKCS#12 truststore with the password [`CHANGEIT`] (3DES, SHA-1 MAC).
pub const TRUSTSTORE_CHANGEIT: &str = "truststore-changeit.p12";
/// Java's customary truststore password. It protects nothing (certificates are
/// public); it is there for readers that insist on a password.
pub const CHANGEIT: &str = "changeit";
/// SHA-256 fingerprints of the bundle's roots, comma-separated, in order.
pub const ROOTS_ANNOTATION: &str = "p12-operator.io/trust-bundle-roots";

/// Writes (create, update, delete) per second, all namespaces together.
pub const WRITES_PER_SECOND: f64 = 10.0;
/// Writes allowed at once after a quiet time.
const WRITE_BURST: f64 = 20.0;
/// How often every namespace is compared again, whatever the watches said.
const RESYNC: Duration = Duration::from_secs(600);
/// How often the loaded CA is checked for a new bundle.
const BUNDLE_CHECK: Duration = Duration::from_secs(2);
/// Wait before a namespace whose write failed is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// What the watches have shown, and which namespaces to look at next.
pub struct Distribution {
    selector: LabelSelector,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// Namespaces the selector selects (and not being deleted).
    selected: Listed<HashSet<String>>,
    /// Namespace → the ConfigMap named [`CONFIGMAP`] there, ours or not.
    configmaps: Listed<HashMap<String, ConfigMap>>,
    dirty: BTreeSet<String>,
}

/// A watched collection: the current items and, during a (re-)list, the items
/// seen so far, which replace the current ones when the list is complete.
#[derive(Default)]
struct Listed<T> {
    items: T,
    relisting: Option<T>,
    synced: bool,
}

impl<T: Default> Listed<T> {
    fn target(&mut self) -> &mut T {
        self.relisting.as_mut().unwrap_or(&mut self.items)
    }

    fn begin(&mut self) {
        self.relisting = Some(T::default());
    }

    fn finish(&mut self) {
        self.synced = true;
        self.items = self.relisting.take().unwrap_or_default();
    }
}

impl Distribution {
    pub fn new(selector: LabelSelector) -> Self {
        Distribution {
            selector,
            state: Mutex::default(),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Applies a Namespace watch event (the watch `run` keeps for admission).
    pub fn observe_namespace(&self, event: &Event<PartialObjectMeta<Namespace>>) {
        let selects = |n: &PartialObjectMeta<Namespace>| {
            n.metadata.deletion_timestamp.is_none()
                && crate::admission::selector_matches(&self.selector, n.labels())
        };
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        match event {
            Event::Init => state.selected.begin(),
            Event::InitApply(n) | Event::Apply(n) => {
                let name = n.name_any();
                let changed = if selects(n) {
                    state.selected.target().insert(name.clone())
                } else {
                    state.selected.target().remove(&name)
                };
                if changed && matches!(event, Event::Apply(_)) {
                    state.dirty.insert(name);
                }
            }
            Event::Delete(n) => {
                state.selected.target().remove(&n.name_any());
            }
            Event::InitDone => {
                state.selected.finish();
                mark_all(state);
            }
        }
        drop(guard);
        self.wake.notify_one();
    }

    /// Applies a ConfigMap watch event (ConfigMaps named [`CONFIGMAP`] only).
    fn observe_configmap(&self, event: &Event<ConfigMap>) {
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        match event {
            Event::Init => state.configmaps.begin(),
            Event::InitApply(cm) | Event::Apply(cm) => {
                let ns = cm.namespace().unwrap_or_default();
                state.configmaps.target().insert(ns.clone(), cm.clone());
                if matches!(event, Event::Apply(_)) {
                    state.dirty.insert(ns);
                }
            }
            Event::Delete(cm) => {
                let ns = cm.namespace().unwrap_or_default();
                state.configmaps.target().remove(&ns);
                state.dirty.insert(ns);
            }
            Event::InitDone => {
                state.configmaps.finish();
                mark_all(state);
            }
        }
        drop(guard);
        self.wake.notify_one();
    }

    fn synced(&self) -> bool {
        let state = self.state.lock().unwrap();
        state.selected.synced && state.configmaps.synced
    }

    fn mark(&self, ns: String) {
        self.state.lock().unwrap().dirty.insert(ns);
        self.wake.notify_one();
    }

    fn mark_all(&self) {
        mark_all(&mut self.state.lock().unwrap());
        self.wake.notify_one();
    }

    /// The next namespace to look at: whether it is selected, and its ConfigMap.
    fn next(&self) -> Option<(String, bool, Option<ConfigMap>)> {
        let mut state = self.state.lock().unwrap();
        let ns = state.dirty.pop_first()?;
        let selected = state.selected.items.contains(&ns);
        let observed = state.configmaps.items.get(&ns).cloned();
        Some((ns, selected, observed))
    }
}

/// Every namespace that is selected or holds a ConfigMap of our name.
fn mark_all(state: &mut State) {
    let State {
        selected,
        configmaps,
        dirty,
    } = state;
    dirty.extend(selected.items.iter().cloned());
    dirty.extend(configmaps.items.keys().cloned());
}

/// What one namespace needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Nothing,
    Create,
    Update,
    Delete,
    /// A ConfigMap of our name that we did not create, in a selected namespace.
    Conflict,
}

pub(crate) fn is_ours(cm: &ConfigMap) -> bool {
    cm.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
}

/// Compares a namespace with what it should hold; `in_sync` judges the
/// content of a ConfigMap of ours.
pub(crate) fn decide(
    selected: bool,
    observed: Option<&ConfigMap>,
    in_sync: impl FnOnce(&ConfigMap) -> bool,
) -> Action {
    match observed {
        None if selected => Action::Create,
        None => Action::Nothing,
        Some(cm) if !is_ours(cm) => {
            if selected {
                Action::Conflict
            } else {
                Action::Nothing
            }
        }
        Some(cm) if cm.metadata.deletion_timestamp.is_some() => Action::Nothing,
        Some(_) if !selected => Action::Delete,
        Some(cm) if in_sync(cm) => Action::Nothing,
        Some(_) => Action::Update,
    }
}

/// The content every ConfigMap should hold, built once per bundle.
pub(crate) struct Desired {
    pub(crate) bundle: TrustBundle,
    pem: String,
    truststore: Vec<u8>,
    changeit: Vec<u8>,
    roots: String,
    /// Digests of `truststore-changeit.p12` files already opened, with the
    /// verdict: whether they hold exactly the bundle. The file is encrypted
    /// with a random salt, so one written by an earlier process differs in its
    /// bytes from ours; each distinct file is opened once.
    judged: HashMap<[u8; 32], bool>,
}

impl Desired {
    pub(crate) fn build(bundle: TrustBundle) -> Result<Self, keystore::KeystoreError> {
        let changeit = keystore::build_truststore(
            bundle.roots(),
            &SecretString::from(CHANGEIT),
            Profile::LegacyDES,
        )?;
        Ok(Desired {
            pem: bundle.pem(),
            truststore: keystore::build_passwordless_truststore(&bundle),
            changeit: changeit.expose().to_vec(),
            roots: bundle.fingerprints().join(","),
            bundle,
            judged: HashMap::new(),
        })
    }

    /// The data, binaryData and annotation of our ConfigMap, in `meta`'s place.
    pub(crate) fn configmap(&self, meta: ObjectMeta) -> ConfigMap {
        let mut meta = meta;
        meta.name = Some(CONFIGMAP.into());
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ROOTS_ANNOTATION.into(), self.roots.clone());
        ConfigMap {
            metadata: meta,
            data: Some([(CA_CRT.to_string(), self.pem.clone())].into()),
            binary_data: Some(
                [
                    (TRUSTSTORE.to_string(), ByteString(self.truststore.clone())),
                    (
                        TRUSTSTORE_CHANGEIT.to_string(),
                        ByteString(self.changeit.clone()),
                    ),
                ]
                .into(),
            ),
            immutable: None,
        }
    }

    /// Whether everything but `truststore-changeit.p12` is as it should be;
    /// that file is judged by [`Desired::changeit_holds_bundle`].
    fn plain_parts_in_sync(&self, cm: &ConfigMap) -> bool {
        let data = cm.data.clone().unwrap_or_default();
        let binary = cm.binary_data.clone().unwrap_or_default();
        cm.annotations().get(ROOTS_ANNOTATION) == Some(&self.roots)
            && data.len() == 1
            && data.get(CA_CRT) == Some(&self.pem)
            && binary.len() == 2
            && binary.get(TRUSTSTORE).map(|b| b.0.as_slice()) == Some(self.truststore.as_slice())
            && binary.contains_key(TRUSTSTORE_CHANGEIT)
            && cm.immutable != Some(true)
    }

    /// Whether a `truststore-changeit.p12` opens with `changeit` and holds the
    /// bundle's roots, in order, as trusted entries. Opening is bounded by the
    /// keystore cost limits and runs off the async runtime.
    async fn changeit_holds_bundle(&mut self, bytes: &[u8]) -> bool {
        if bytes == self.changeit.as_slice() {
            return true;
        }
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(verdict) = self.judged.get(&digest) {
            return *verdict;
        }
        let (file, roots) = (bytes.to_vec(), self.bundle.roots().to_vec());
        let verdict = tokio::task::spawn_blocking(move || {
            keystore::read_keystore(&file, &SecretString::from(CHANGEIT)).is_ok_and(|store| {
                store.key_entries.is_empty()
                    && store.trusted.iter().map(|(_, der)| der).eq(roots.iter())
            })
        })
        .await
        .unwrap_or(false);
        // Bounded: a namespace that keeps rewriting the file cannot grow it.
        if self.judged.len() >= 64 {
            self.judged.clear();
        }
        self.judged.insert(digest, verdict);
        verdict
    }

    async fn in_sync(&mut self, cm: &ConfigMap) -> bool {
        if !self.plain_parts_in_sync(cm) {
            return false;
        }
        let changeit = cm
            .binary_data
            .as_ref()
            .and_then(|b| b.get(TRUSTSTORE_CHANGEIT))
            .map(|b| b.0.clone())
            .unwrap_or_default();
        self.changeit_holds_bundle(&changeit).await
    }
}

/// A token bucket: [`WRITES_PER_SECOND`], bursts of [`WRITE_BURST`].
struct Pace {
    tokens: f64,
    last: tokio::time::Instant,
}

impl Pace {
    fn new() -> Self {
        Pace {
            tokens: WRITE_BURST,
            last: tokio::time::Instant::now(),
        }
    }

    async fn take(&mut self) {
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * WRITES_PER_SECOND).min(WRITE_BURST);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = (1.0 - self.tokens) / WRITES_PER_SECOND;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            self.tokens = 1.0;
            self.last = tokio::time::Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// Keeps every selected namespace's ConfigMap equal to the current bundle, for
/// the life of the process. `configmaps` is `Api::all` (or the watched
/// namespace's); the Namespace events arrive through
/// [`Distribution::observe_namespace`].
pub async fn distribute(ctx: Arc<Context>, dist: Arc<Distribution>, configmaps: Api<ConfigMap>) {
    let watched = configmaps.clone();
    let (watch_dist, health) = (dist.clone(), ctx.health.clone());
    tokio::spawn(async move {
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={CONFIGMAP}"))
            .any_semantic();
        let mut events = watcher(watched, config)
            .backoff(super::run::watch_backoff())
            .modify(|cm| {
                cm.managed_fields_mut().clear();
            })
            .boxed();
        while let Some(event) = events.next().await {
            health.watch_result("ConfigMap", &event);
            if let Ok(event) = event {
                watch_dist.observe_configmap(&event);
            }
        }
    });

    let mut desired: Option<Desired> = None;
    let mut conflicts: HashSet<String> = HashSet::new();
    let mut pace = Pace::new();
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bundle_check = tokio::time::interval(BUNDLE_CHECK);
    bundle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The bundle of the loaded CA; without a CA, ConfigMaps stay as they are.
        let bundle = ctx.trust_bundle();
        if bundle.as_ref() != desired.as_ref().map(|d| &d.bundle) {
            desired = match bundle.map(Desired::build).transpose() {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %crate::telemetry::error_chain(&e), "failed to build the trust bundle's truststores");
                    None
                }
            };
            if let Some(d) = &desired {
                tracing::info!(roots = %d.roots, "trust bundle changed; updating the {CONFIGMAP} ConfigMaps");
            }
            dist.mark_all();
        }
        if let (Some(want), true, true) =
            (desired.as_mut(), dist.synced(), ctx.leadership.is_leader())
        {
            while let Some((ns, selected, observed)) = dist.next() {
                let action = match observed.as_ref() {
                    Some(cm) if is_ours(cm) && selected => {
                        if want.in_sync(cm).await {
                            Action::Nothing
                        } else {
                            Action::Update
                        }
                    }
                    other => decide(selected, other, |_| true),
                };
                if action == Action::Conflict {
                    if conflicts.insert(ns.clone()) {
                        report_conflict(&ctx, observed.as_ref()).await;
                    }
                    continue;
                }
                conflicts.remove(&ns);
                if action == Action::Nothing {
                    continue;
                }
                pace.take().await;
                if ctx.leadership.check().is_err() {
                    dist.mark(ns);
                    break;
                }
                if let Err(e) = write(&ctx, want, &ns, action, observed.as_ref()).await {
                    tracing::warn!(namespace = %ns, action = ?action, error = %crate::telemetry::error_chain(&e), "failed to write the {CONFIGMAP} ConfigMap; trying again");
                    let dist = dist.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(RETRY).await;
                        dist.mark(ns);
                    });
                }
            }
        }
        tokio::select! {
            _ = dist.wake.notified() => {}
            _ = bundle_check.tick() => {}
            _ = resync.tick() => dist.mark_all(),
        }
    }
}

/// One create, update or delete. A 409 (someone wrote in between) or 404 is
/// not an error: the watch brings the new state and the namespace is compared again.
async fn write(
    ctx: &Context,
    want: &Desired,
    ns: &str,
    action: Action,
    observed: Option<&ConfigMap>,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let result = match (action, observed) {
        (Action::Create, _) => {
            let cm = want.configmap(ObjectMeta {
                namespace: Some(ns.into()),
                ..Default::default()
            });
            api.create(&params, &cm).await.map(|_| "created")
        }
        (Action::Update, Some(old)) => {
            // Keep what others added to the metadata; replace the content,
            // only if the ConfigMap is still the version that was compared.
            let mut meta = old.metadata.clone();
            meta.managed_fields = None;
            if old.immutable == Some(true) {
                // Its content cannot change: replace the whole object.
                delete(&api, old).await.map(|_| "deleted (immutable)")
            } else {
                api.replace(CONFIGMAP, &params, &want.configmap(meta))
                    .await
                    .map(|_| "updated")
            }
        }
        (Action::Delete, Some(old)) => delete(&api, old).await.map(|_| "deleted"),
        _ => return Ok(()),
    };
    match result {
        Ok(what) => {
            tracing::info!(namespace = %ns, "{what} the {CONFIGMAP} ConfigMap");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
            tracing::debug!(namespace = %ns, code = e.code, "the {CONFIGMAP} ConfigMap changed meanwhile");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Deletes our ConfigMap, only in the version that was compared.
async fn delete(api: &Api<ConfigMap>, old: &ConfigMap) -> Result<(), kube::Error> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: old.metadata.uid.clone(),
            resource_version: old.metadata.resource_version.clone(),
        }),
        ..Default::default()
    };
    api.delete(CONFIGMAP, &params).await.map(|_| ())
}

/// A ConfigMap of our name that we did not create: a log line and a Warning
/// Event on it, once per namespace until it is gone or labelled ours.
async fn report_conflict(ctx: &Context, cm: Option<&ConfigMap>) {
    let Some(cm) = cm else { return };
    let ns = cm.namespace().unwrap_or_default();
    let note = format!(
        "ConfigMap {ns}/{CONFIGMAP} was not created by p12-operator (it lacks the label {MANAGED_BY_LABEL}={MANAGED_BY}); \
         the trust bundle is not published in this namespace until it is renamed or deleted"
    );
    tracing::warn!(namespace = %ns, "{note}");
    if let Err(e) = ctx
        .recorder
        .publish(
            &cm.object_ref(&()),
            EventType::Warning,
            "TrustBundleConflict",
            "PublishTrustBundle",
            &note,
        )
        .await
    {
        tracing::debug!(error = %e, "failed to publish an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, KeyAlgorithm};

    fn bundle(name: &str) -> TrustBundle {
        let ca = CertificateAuthority::generate_self_signed(
            KeyAlgorithm::EcdsaP256,
            name,
            Duration::from_secs(3600),
            jiff::Timestamp::now(),
        )
        .unwrap();
        TrustBundle::new([ca.root_der().to_vec()]).unwrap()
    }

    fn ours(want: &Desired) -> ConfigMap {
        want.configmap(ObjectMeta {
            namespace: Some("shop".into()),
            resource_version: Some("7".into()),
            ..Default::default()
        })
    }

    fn foreign() -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIGMAP.into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            data: Some([(CA_CRT.to_string(), "mine".to_string())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_selected_namespace_without_the_configmap_gets_one_and_an_unselected_one_nothing() {
        assert_eq!(decide(true, None, |_| true), Action::Create);
        assert_eq!(decide(false, None, |_| true), Action::Nothing);
    }

    #[test]
    fn a_configmap_we_did_not_create_is_never_updated_or_deleted() {
        let cm = foreign();
        assert_eq!(decide(true, Some(&cm), |_| false), Action::Conflict);
        assert_eq!(decide(false, Some(&cm), |_| false), Action::Nothing);
    }

    #[test]
    fn ours_is_deleted_when_the_namespace_stops_matching_and_updated_when_it_differs() {
        let want = Desired::build(bundle("A")).unwrap();
        let cm = ours(&want);
        assert_eq!(decide(false, Some(&cm), |_| true), Action::Delete);
        assert_eq!(decide(true, Some(&cm), |_| true), Action::Nothing);
        assert_eq!(decide(true, Some(&cm), |_| false), Action::Update);
    }

    #[tokio::test]
    async fn our_configmap_is_in_sync_until_its_content_is_edited() {
        let mut want = Desired::build(bundle("A")).unwrap();
        let cm = ours(&want);
        assert!(want.in_sync(&cm).await);

        let mut edited = cm.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert(CA_CRT.into(), "-----BEGIN CERTIFICATE-----\n".into());
        assert!(!want.in_sync(&edited).await, "ca.crt edited");

        let mut extra = cm.clone();
        extra
            .data
            .as_mut()
            .unwrap()
            .insert("extra".into(), "x".into());
        assert!(!want.in_sync(&extra).await, "a key added");

        let mut gone = cm.clone();
        gone.binary_data.as_mut().unwrap().remove(TRUSTSTORE);
        assert!(!want.in_sync(&gone).await, "truststore.p12 removed");

        let other = Desired::build(bundle("B")).unwrap();
        let mut swapped = cm.clone();
        swapped.binary_data.as_mut().unwrap().insert(
            TRUSTSTORE_CHANGEIT.into(),
            ByteString(other.changeit.clone()),
        );
        assert!(
            !want.in_sync(&swapped).await,
            "truststore-changeit.p12 of another bundle"
        );
    }

    #[tokio::test]
    async fn a_changeit_truststore_written_by_an_earlier_process_is_in_sync_without_a_rewrite() {
        let first = Desired::build(bundle("A")).unwrap();
        let cm = ours(&first);
        // A restart builds the same bundle again: a new salt, other bytes.
        let mut again = Desired::build(first.bundle.clone()).unwrap();
        assert_ne!(again.changeit, first.changeit);
        assert!(again.in_sync(&cm).await);
        assert_eq!(again.judged.len(), 1, "opened once");
        assert!(again.in_sync(&cm).await);
        assert_eq!(again.judged.len(), 1, "then remembered");
    }

    #[test]
    fn the_desired_configmap_keeps_foreign_metadata_and_carries_label_and_roots() {
        let want = Desired::build(bundle("A")).unwrap();
        let cm = want.configmap(ObjectMeta {
            labels: Some([("team".to_string(), "shop".to_string())].into()),
            ..Default::default()
        });
        assert_eq!(cm.metadata.name.as_deref(), Some(CONFIGMAP));
        assert!(is_ours(&cm));
        assert_eq!(cm.labels().get("team").map(String::as_str), Some("shop"));
        assert_eq!(
            cm.annotations().get(ROOTS_ANNOTATION),
            Some(&want.bundle.fingerprints().join(","))
        );
        assert_eq!(
            cm.data.as_ref().unwrap().get(CA_CRT),
            Some(&want.bundle.pem())
        );
    }

    fn namespace(name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<Namespace> {
        let mut n = PartialObjectMeta::<Namespace>::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n
    }

    #[test]
    fn labelling_and_unlabelling_a_namespace_marks_it_for_a_look() {
        let selector = LabelSelector {
            match_labels: Some([("trust".to_string(), "yes".to_string())].into()),
            ..Default::default()
        };
        let dist = Distribution::new(selector);
        dist.observe_namespace(&Event::Init);
        dist.observe_namespace(&Event::InitApply(namespace("a", &[("trust", "yes")])));
        dist.observe_namespace(&Event::InitApply(namespace("b", &[])));
        dist.observe_namespace(&Event::InitDone);
        dist.observe_configmap(&Event::Init);
        dist.observe_configmap(&Event::InitDone);
        assert!(dist.synced());
        let first: Vec<_> = std::iter::from_fn(|| dist.next()).collect();
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].0.as_str(), first[0].1), ("a", true));

        dist.observe_namespace(&Event::Apply(namespace("b", &[("trust", "yes")])));
        dist.observe_namespace(&Event::Apply(namespace("a", &[])));
        let next: Vec<_> = std::iter::from_fn(|| dist.next())
            .map(|(ns, selected, _)| (ns, selected))
            .collect();
        assert_eq!(next, vec![("a".into(), false), ("b".into(), true)]);

        // A label change that does not change the selection costs nothing.
        dist.observe_namespace(&Event::Apply(namespace(
            "b",
            &[("trust", "yes"), ("x", "y")],
        )));
        assert!(dist.next().is_none());
    }
}
