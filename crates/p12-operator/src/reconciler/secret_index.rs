//! Which Secrets belong to which request, from the metadata-only Secret watch.
//!
//! A Secret is in the index when it is ours: labelled `managed-by: p12-operator`
//! or controlled (ownerReference with `controller: true`) by a
//! CertificateRequest. The ownerReference decides whose it is, so a Secret that
//! lost its label is still repaired, and one that carries our label without our
//! ownerReference is nobody's to overwrite. Nothing but names, resourceVersion
//! and the controller uid is kept.
//!
//! Each re-list (after a watch gap or a compaction) rebuilds the index from
//! what was listed: a Secret deleted while the watch was down is forgotten, and
//! the keys that disappeared are handed back so their requests are revisited.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;

use crate::bundle;

/// (namespace, name).
pub type SecretKey = (String, String);

/// What the index keeps about one Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedSecret {
    pub resource_version: String,
    /// uid of the CertificateRequest that controls it, if any.
    pub controller_uid: Option<String>,
    /// The first 8 bytes of the SHA-256 fingerprint of the CA that signed its
    /// certificate (annotation `p12-operator.io/ca-fingerprint-sha256`), so a
    /// rotation can tell when no certificate of the previous CA is left.
    pub issuer: Option<u64>,
}

/// The short form of a CA fingerprint (hex) that the index keeps.
pub fn issuer_key(fingerprint_hex: &str) -> Option<u64> {
    u64::from_str_radix(fingerprint_hex.get(..16)?, 16).ok()
}

#[derive(Debug, Default)]
pub struct SecretIndex {
    live: HashMap<SecretKey, ManagedSecret>,
    /// Filled between `Init` and `InitDone` of a (re-)list.
    relisting: Option<HashMap<SecretKey, ManagedSecret>>,
    synced: bool,
}

/// The controlling CertificateRequest's uid, when a CertificateRequest controls it.
fn controlling_request(s: &PartialObjectMeta<Secret>) -> Option<String> {
    s.owner_references()
        .iter()
        .find(|o| {
            o.controller == Some(true)
                && o.kind == "CertificateRequest"
                && o.api_version.starts_with("p12-operator.io/")
        })
        .map(|o| o.uid.clone())
}

/// The index entry for a Secret, or `None` when it is not ours to track.
pub fn entry_for(s: &PartialObjectMeta<Secret>) -> Option<ManagedSecret> {
    let labelled =
        s.labels().get(bundle::MANAGED_BY_LABEL).map(String::as_str) == Some(bundle::MANAGED_BY);
    let controller_uid = controlling_request(s);
    (labelled || controller_uid.is_some()).then(|| ManagedSecret {
        resource_version: s.resource_version().unwrap_or_default(),
        controller_uid,
        issuer: s
            .annotations()
            .get(bundle::annotations::CA_FINGERPRINT)
            .and_then(|f| issuer_key(f)),
    })
}

fn key_of(s: &PartialObjectMeta<Secret>) -> SecretKey {
    (s.namespace().unwrap_or_default(), s.name_any())
}

impl SecretIndex {
    pub fn get(&self, namespace: &str, name: &str) -> Option<ManagedSecret> {
        self.live
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every Secret has been listed at least once: absence from the index
    /// means the Secret is absent (or not ours).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// How many Secrets hold a certificate of the CA with this fingerprint.
    pub fn issued_by(&self, fingerprint_hex: &str) -> usize {
        let key = issuer_key(fingerprint_hex);
        self.live
            .values()
            .filter(|s| key.is_some() && s.issuer == key)
            .count()
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Drops a Secret, giving back the table's memory once it is mostly empty
    /// (after a burst of deletions), as the operator's other tables do.
    fn remove(&mut self, key: &SecretKey) {
        if self.live.remove(key).is_some() {
            super::context::shrink_if_sparse(&mut self.live);
        }
    }

    /// Applies one watch event. Returns the Secrets that a completed re-list
    /// showed to be gone (or no longer ours) although no event said so.
    pub fn apply(&mut self, event: &watcher::Event<PartialObjectMeta<Secret>>) -> Vec<SecretKey> {
        match event {
            watcher::Event::Apply(s) => {
                match entry_for(s) {
                    Some(e) => {
                        self.live.insert(key_of(s), e);
                    }
                    None => self.remove(&key_of(s)),
                };
                Vec::new()
            }
            watcher::Event::Delete(s) => {
                self.remove(&key_of(s));
                Vec::new()
            }
            watcher::Event::Init => {
                self.relisting = Some(HashMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(s) => {
                if let Some(e) = entry_for(s) {
                    self.relisting
                        .get_or_insert_with(HashMap::new)
                        .insert(key_of(s), e);
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let fresh = self.relisting.take().unwrap_or_default();
                let gone: Vec<SecretKey> = self
                    .live
                    .keys()
                    .filter(|k| !fresh.contains_key(*k))
                    .cloned()
                    .collect();
                self.live = fresh;
                self.live.shrink_to_fit();
                self.synced = true;
                gone
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn secret(name: &str, rv: &str, label: bool, owner: Option<&str>) -> PartialObjectMeta<Secret> {
        let mut m: PartialObjectMeta<Secret> = PartialObjectMeta {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        if label {
            m.metadata.labels = Some(
                [(
                    bundle::MANAGED_BY_LABEL.to_string(),
                    bundle::MANAGED_BY.to_string(),
                )]
                .into(),
            );
        }
        if let Some(uid) = owner {
            m.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "p12-operator.io/v1alpha1".into(),
                kind: "CertificateRequest".into(),
                name: "web".into(),
                uid: uid.into(),
                controller: Some(true),
                ..Default::default()
            }]);
        }
        m
    }

    fn listed(index: &mut SecretIndex, items: Vec<PartialObjectMeta<Secret>>) -> Vec<SecretKey> {
        index.apply(&watcher::Event::Init);
        for s in items {
            index.apply(&watcher::Event::InitApply(s));
        }
        index.apply(&watcher::Event::InitDone)
    }

    #[test]
    fn a_burst_of_deletions_gives_the_tables_memory_back() {
        let mut index = SecretIndex::default();
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitDone);
        for i in 0..5000 {
            index.apply(&watcher::Event::Apply(secret(
                &format!("s{i}"),
                "1",
                true,
                None,
            )));
        }
        let peak = index.live.capacity();
        assert!(peak >= 5000);
        for i in 10..5000 {
            index.apply(&watcher::Event::Delete(secret(
                &format!("s{i}"),
                "1",
                true,
                None,
            )));
        }
        assert_eq!(index.live.len(), 10);
        assert!(
            index.live.capacity() < 1024,
            "capacity {} after deleting all but 10 of 5,000 (peak {peak})",
            index.live.capacity()
        );
    }

    #[test]
    fn a_secret_deleted_during_a_watch_gap_is_forgotten_on_the_relist() {
        let mut index = SecretIndex::default();
        let gone = listed(
            &mut index,
            vec![
                secret("a", "1", true, Some("u1")),
                secret("b", "2", true, Some("u2")),
            ],
        );
        assert!(gone.is_empty() && index.synced());
        // The watch breaks; "b" is deleted meanwhile; the re-list shows only "a".
        let gone = listed(&mut index, vec![secret("a", "1", true, Some("u1"))]);
        assert_eq!(gone, vec![("ns".to_string(), "b".to_string())]);
        assert!(index.get("ns", "b").is_none());
        assert_eq!(index.get("ns", "a").unwrap().resource_version, "1");
    }

    #[test]
    fn a_secret_that_lost_our_label_but_not_our_owner_reference_stays_ours() {
        let mut index = SecretIndex::default();
        listed(&mut index, vec![secret("a", "1", true, Some("u1"))]);
        index.apply(&watcher::Event::Apply(secret("a", "2", false, Some("u1"))));
        let e = index.get("ns", "a").expect("still indexed");
        assert_eq!(e.controller_uid.as_deref(), Some("u1"));
        assert_eq!(e.resource_version, "2");
    }

    #[test]
    fn our_label_without_our_owner_reference_belongs_to_nobody() {
        let mut index = SecretIndex::default();
        listed(&mut index, vec![secret("ca", "1", true, None)]);
        assert_eq!(index.get("ns", "ca").unwrap().controller_uid, None);
        // Neither label nor owner: not tracked at all.
        index.apply(&watcher::Event::Apply(secret("ca", "2", false, None)));
        assert!(index.get("ns", "ca").is_none());
    }

    #[test]
    fn until_the_first_list_completes_the_index_is_not_synced() {
        let mut index = SecretIndex::default();
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(secret(
            "a",
            "1",
            true,
            Some("u"),
        )));
        assert!(!index.synced());
        // Entries of an unfinished list are not visible yet.
        assert!(index.get("ns", "a").is_none());
        index.apply(&watcher::Event::InitDone);
        assert!(index.synced() && index.get("ns", "a").is_some());
    }
}
