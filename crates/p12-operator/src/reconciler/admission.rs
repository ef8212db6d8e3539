//! Which requests policy admits: the IssuancePolicies, the namespaces' labels
//! and the Services' names as the watches deliver them, and the check a pass
//! makes before any key exists. The rules themselves are p12-core's
//! `admission`; this keeps their inputs current. Makes no API calls.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;

use crate::admission::{self, CompiledPolicy, IpRange, Refusal, Settings};
use crate::api::{CertificateRequest, IssuancePolicy};
use crate::plan::Plan;

/// What policy says about one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    Refused(Refusal),
    /// A watch has not listed everything yet: "not seen" cannot mean "absent".
    NotSynced,
}

/// The inputs of policy decisions, kept by three watches.
pub struct Admission {
    settings: Settings,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    policies: Listed<BTreeMap<String, CompiledPolicy>>,
    /// The listed policies in name order, rebuilt when they change (rarely),
    /// so a pass reads them without copying.
    compiled: Vec<CompiledPolicy>,
    /// Namespace → its labels.
    namespaces: Listed<HashMap<String, BTreeMap<String, String>>>,
    /// Namespace → names of its Services.
    services: Listed<HashMap<String, HashSet<String>>>,
}

/// A watched collection: the current items, and during a (re-)list the items
/// seen so far, which replace the current ones when the list is complete.
#[derive(Default)]
struct Listed<T> {
    items: T,
    relisting: Option<T>,
    synced: bool,
}

impl<T: Default> Listed<T> {
    /// The map an event's item goes into: the re-list buffer while one runs.
    fn target(&mut self) -> &mut T {
        self.relisting.as_mut().unwrap_or(&mut self.items)
    }

    fn begin(&mut self) {
        self.relisting = Some(T::default());
    }

    /// Ends a re-list; returns the previous items.
    fn finish(&mut self) -> T {
        self.synced = true;
        let new = self.relisting.take().unwrap_or_default();
        std::mem::replace(&mut self.items, new)
    }
}

impl Admission {
    pub fn new(settings: Settings) -> Self {
        let mut state = State::default();
        // Without the Service check there is nothing to wait for.
        state.services.synced = settings.allow_unknown_services;
        Self {
            settings,
            state: RwLock::new(state),
        }
    }

    /// Whether Services need watching (`--allow-unknown-services` off).
    pub fn watches_services(&self) -> bool {
        !self.settings.allow_unknown_services
    }

    /// Checks a planned request against every policy that applies to its namespace.
    pub fn check(&self, cr: &CertificateRequest, plan: &Plan) -> Verdict {
        let state = self.state.read().unwrap();
        if !(state.policies.synced && state.namespaces.synced && state.services.synced) {
            return Verdict::NotSynced;
        }
        let ns = cr.namespace().unwrap_or_default();
        let services = state.services.items.get(&ns);
        let exists = |svc: &str| services.is_some_and(|s| s.contains(svc));
        let no_labels = BTreeMap::new();
        let labels = state.namespaces.items.get(&ns).unwrap_or(&no_labels);
        let policies = &state.compiled;
        let request = admission::Request {
            namespace: &ns,
            leaf: &plan.leaf,
            key: plan.key_algorithm,
            service_exists: &exists,
        };
        match admission::admit(&request, labels, policies, &self.settings) {
            Ok(()) => Verdict::Admitted,
            Err(r) => Verdict::Refused(r),
        }
    }

    /// Address ranges the probes of requests in `ns` may reach beyond Pods.
    pub fn probe_ranges(&self, ns: &str) -> Vec<IpRange> {
        let state = self.state.read().unwrap();
        let no_labels = BTreeMap::new();
        let labels = state.namespaces.items.get(ns).unwrap_or(&no_labels);
        admission::probe_ranges(ns, labels, &state.compiled)
    }

    /// Applies an IssuancePolicy watch event; true when what policies allow
    /// may have changed (every request is then checked again).
    pub fn observe_policy(&self, event: &Event<IssuancePolicy>) -> bool {
        let mut state = self.state.write().unwrap();
        let changed = Self::apply_policy(&mut state.policies, event);
        state.compiled = state.policies.items.values().cloned().collect();
        changed
    }

    fn apply_policy(
        listed: &mut Listed<BTreeMap<String, CompiledPolicy>>,
        event: &Event<IssuancePolicy>,
    ) -> bool {
        match event {
            Event::Init => {
                listed.begin();
                false
            }
            Event::InitApply(p) | Event::Apply(p) => {
                let compiled = CompiledPolicy::compile(&p.name_any(), &p.spec);
                let old = listed.target().insert(p.name_any(), compiled.clone());
                matches!(event, Event::Apply(_)) && old.as_ref() != Some(&compiled)
            }
            Event::Delete(p) => listed.target().remove(&p.name_any()).is_some(),
            Event::InitDone => {
                let before = listed.finish();
                before != listed.items
            }
        }
    }

    /// Applies a Namespace watch event; returns the namespaces whose labels
    /// changed, when some policy selects by label.
    pub fn observe_namespace(&self, event: &Event<PartialObjectMeta<Namespace>>) -> Vec<String> {
        let mut state = self.state.write().unwrap();
        let by_label = state.policies.items.values().any(|p| p.uses_labels());
        let listed = &mut state.namespaces;
        let changed = match event {
            Event::Init => {
                listed.begin();
                Vec::new()
            }
            Event::InitApply(n) | Event::Apply(n) => {
                let labels = n.labels().clone();
                let old = listed.target().insert(n.name_any(), labels.clone());
                if matches!(event, Event::Apply(_)) && old.as_ref() != Some(&labels) {
                    vec![n.name_any()]
                } else {
                    Vec::new()
                }
            }
            Event::Delete(n) => {
                listed.target().remove(&n.name_any());
                Vec::new()
            }
            Event::InitDone => {
                let before = listed.finish();
                let now = &listed.items;
                now.iter()
                    .filter(|(name, labels)| before.get(*name) != Some(labels))
                    .map(|(name, _)| name.clone())
                    .collect()
            }
        };
        if by_label { changed } else { Vec::new() }
    }

    /// Applies a Service watch event; returns the namespaces whose set of
    /// Service names changed.
    pub fn observe_service(&self, event: &Event<PartialObjectMeta<Service>>) -> Vec<String> {
        let mut state = self.state.write().unwrap();
        let listed = &mut state.services;
        match event {
            Event::Init => {
                listed.begin();
                Vec::new()
            }
            Event::InitApply(s) | Event::Apply(s) => {
                let ns = s.namespace().unwrap_or_default();
                let added = listed
                    .target()
                    .entry(ns.clone())
                    .or_default()
                    .insert(s.name_any());
                if added && matches!(event, Event::Apply(_)) {
                    vec![ns]
                } else {
                    Vec::new()
                }
            }
            Event::Delete(s) => {
                let ns = s.namespace().unwrap_or_default();
                let map = listed.target();
                let removed = map
                    .get_mut(&ns)
                    .is_some_and(|set| set.remove(&s.name_any()));
                if map.get(&ns).is_some_and(HashSet::is_empty) {
                    map.remove(&ns);
                }
                if removed { vec![ns] } else { Vec::new() }
            }
            Event::InitDone => {
                let before = listed.finish();
                let now = &listed.items;
                let mut changed: Vec<String> = now
                    .iter()
                    .filter(|(ns, set)| before.get(*ns) != Some(set))
                    .map(|(ns, _)| ns.clone())
                    .collect();
                changed.extend(before.keys().filter(|ns| !now.contains_key(*ns)).cloned());
                changed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CertificateRequestSpec;
    use crate::pki::Policy;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta<K: Default>(
        ns: Option<&str>,
        name: &str,
        labels: &[(&str, &str)],
    ) -> PartialObjectMeta<K> {
        PartialObjectMeta {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: ns.map(Into::into),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn request(ns: &str, names: &str) -> (CertificateRequest, Plan) {
        let spec: CertificateRequestSpec =
            serde_saphyr::from_str(&format!("secretName: s\ndnsNames: {names}\n")).unwrap();
        let mut cr = CertificateRequest::new("r", spec);
        cr.metadata.namespace = Some(ns.into());
        let plan = crate::plan::plan(&cr, &Policy::default()).unwrap();
        (cr, plan)
    }

    fn policy(name: &str, yaml: &str) -> IssuancePolicy {
        IssuancePolicy::new(name, serde_saphyr::from_str(yaml).unwrap())
    }

    fn listed(a: &Admission) {
        a.observe_policy(&Event::Init);
        a.observe_policy(&Event::InitDone);
        a.observe_namespace(&Event::Init);
        a.observe_namespace(&Event::InitApply(meta(None, "shop", &[])));
        a.observe_namespace(&Event::InitDone);
        a.observe_service(&Event::Init);
        a.observe_service(&Event::InitApply(meta(Some("shop"), "web", &[])));
        a.observe_service(&Event::InitDone);
    }

    #[test]
    fn nothing_is_decided_before_every_watch_has_listed() {
        let a = Admission::new(Settings::default());
        let (cr, plan) = request("shop", "[web.shop.svc]");
        a.observe_policy(&Event::Init);
        a.observe_policy(&Event::InitDone);
        a.observe_namespace(&Event::Init);
        a.observe_namespace(&Event::InitDone);
        assert_eq!(a.check(&cr, &plan), Verdict::NotSynced);
        a.observe_service(&Event::Init);
        a.observe_service(&Event::InitApply(meta(Some("shop"), "web", &[])));
        a.observe_service(&Event::InitDone);
        assert_eq!(a.check(&cr, &plan), Verdict::Admitted);
    }

    #[test]
    fn a_service_created_later_admits_the_request_and_names_its_namespace() {
        let a = Admission::new(Settings::default());
        listed(&a);
        let (cr, plan) = request("shop", "[api.shop.svc]");
        assert!(matches!(a.check(&cr, &plan), Verdict::Refused(_)));
        let changed = a.observe_service(&Event::Apply(meta(Some("shop"), "api", &[])));
        assert_eq!(changed, vec!["shop".to_string()]);
        assert_eq!(a.check(&cr, &plan), Verdict::Admitted);
        // A status-only update of the same Service changes nothing.
        assert!(
            a.observe_service(&Event::Apply(meta(Some("shop"), "api", &[])))
                .is_empty()
        );
        assert_eq!(
            a.observe_service(&Event::Delete(meta(Some("shop"), "api", &[]))),
            vec!["shop".to_string()]
        );
        assert!(matches!(a.check(&cr, &plan), Verdict::Refused(_)));
    }

    #[test]
    fn a_re_list_replaces_what_a_watch_gap_hid() {
        let a = Admission::new(Settings::default());
        listed(&a);
        let (cr, plan) = request("shop", "[web.shop.svc]");
        assert_eq!(a.check(&cr, &plan), Verdict::Admitted);
        // The Service was deleted while the watch was down: the re-list no longer shows it.
        a.observe_service(&Event::Init);
        let changed = a.observe_service(&Event::InitDone);
        assert_eq!(changed, vec!["shop".to_string()]);
        assert!(matches!(a.check(&cr, &plan), Verdict::Refused(_)));
    }

    #[test]
    fn policies_and_namespace_labels_change_what_is_admitted() {
        let a = Admission::new(Settings::default());
        listed(&a);
        let (cr, plan) = request("shop", "[api.shop.example.com]");
        assert!(matches!(a.check(&cr, &plan), Verdict::Refused(_)));
        let p = policy(
            "shop",
            "namespaces: {selector: {matchLabels: {team: shop}}}\nallow: {dnsNames: ['*.shop.example.com']}\n",
        );
        assert!(a.observe_policy(&Event::Apply(p.clone())));
        // The same policy again (a resync) changes nothing.
        assert!(!a.observe_policy(&Event::Apply(p)));
        assert!(matches!(a.check(&cr, &plan), Verdict::Refused(_)));
        let changed = a.observe_namespace(&Event::Apply(meta(None, "shop", &[("team", "shop")])));
        assert_eq!(changed, vec!["shop".to_string()]);
        assert_eq!(a.check(&cr, &plan), Verdict::Admitted);
        assert!(a.observe_policy(&Event::Delete(policy("shop", "namespaces: {names: [x]}\n"))));
        assert!(matches!(a.check(&cr, &plan), Verdict::Refused(_)));
    }
}
