//! Kubernetes Events (`events.k8s.io/v1`) with a small, bounded memory.
//!
//! kube-runtime's `Recorder` keeps every Event object it sent for six minutes
//! (to turn repeats into a series) and scans that whole cache on each publish.
//! During an issuance wave that is one full Event (~1.5 KiB) per request held
//! for six minutes, and a publish cost that grows with the wave. This recorder
//! keeps only what a repeat needs — a hash of the Event's identity, the name of
//! the object written, its count and when it was last seen — for at most
//! [`CAPACITY`] Events, oldest forgotten first (client-go's event broadcaster
//! bounds its cache the same way).
//!
//! An Event is identified by its object, type, reason, action and note: the
//! same warning repeated within [`SERIES_WINDOW`] becomes one Event whose
//! `series.count` grows; a different note (for example a new serial number) is
//! a new Event.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

/// Repeats within this window extend the earlier Event's series.
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);
/// Events remembered for series; beyond this the oldest are forgotten.
pub const CAPACITY: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Normal,
    Warning,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Normal => "Normal",
            Kind::Warning => "Warning",
        }
    }
}

/// What the cache keeps about an Event already written.
#[derive(Debug, Clone)]
struct Sent {
    name: Box<str>,
    count: i32,
    last: Timestamp,
}

/// Bounded memory of recent Events, in the order they were last written.
#[derive(Debug, Default)]
struct Recent {
    by_key: HashMap<u64, Sent>,
    /// (key, time written); a key refreshed later also appears later, and the
    /// older entry is skipped when it reaches the front.
    order: VecDeque<(u64, Timestamp)>,
}

impl Recent {
    /// The Event to extend, if `key` was written within the window.
    fn repeat_of(&self, key: u64, now: Timestamp) -> Option<Sent> {
        self.by_key
            .get(&key)
            .filter(|s| s.last + SERIES_WINDOW > now)
            .cloned()
    }

    fn remember(&mut self, key: u64, sent: Sent) {
        let at = sent.last;
        self.order.push_back((key, at));
        self.by_key.insert(key, sent);
        self.forget_old(at);
    }

    /// Drops entries older than the window, and the oldest while over capacity.
    fn forget_old(&mut self, now: Timestamp) {
        while let Some(&(key, at)) = self.order.front() {
            let expired = at + SERIES_WINDOW <= now;
            if !expired && self.by_key.len() <= CAPACITY && self.order.len() <= 2 * CAPACITY {
                break;
            }
            self.order.pop_front();
            // Only the newest queue entry of a key owns its cache entry.
            if self.by_key.get(&key).is_some_and(|s| s.last == at) {
                self.by_key.remove(&key);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_key.len()
    }
}

fn identity(
    regarding: &ObjectReference,
    kind: Kind,
    reason: &str,
    action: &str,
    note: &str,
) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &regarding.uid,
        &regarding.namespace,
        &regarding.name,
        &regarding.kind,
    )
        .hash(&mut h);
    (kind, reason, action, note).hash(&mut h);
    h.finish()
}

/// Writes Events for one controller instance.
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<Recent>,
}

impl Recorder {
    pub fn new(client: Client, controller: impl Into<String>, instance: impl Into<String>) -> Self {
        Recorder {
            client,
            controller: controller.into(),
            instance: instance.into(),
            recent: Mutex::default(),
        }
    }

    /// Writes the Event, or extends the series of the same Event written
    /// within [`SERIES_WINDOW`].
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        kind: Kind,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let key = identity(regarding, kind, reason, action, note);
        let now = Timestamp::now();
        let repeat = self.recent.lock().unwrap().repeat_of(key, now);
        let sent = match repeat {
            Some(mut prior) => {
                prior.count += 1;
                prior.last = now;
                let patch = serde_json::json!({
                    "series": EventSeries { count: prior.count, last_observed_time: MicroTime(now) }
                });
                match api
                    .patch(&prior.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => prior,
                    // Deleted meanwhile (Events expire): start a new one.
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        self.create(&api, regarding, kind, reason, action, note, now)
                            .await?
                    }
                    Err(e) => return Err(e),
                }
            }
            None => {
                self.create(&api, regarding, kind, reason, action, note, now)
                    .await?
            }
        };
        self.recent.lock().unwrap().remember(key, sent);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        api: &Api<Event>,
        regarding: &ObjectReference,
        kind: Kind,
        reason: &str,
        action: &str,
        note: &str,
        now: Timestamp,
    ) -> Result<Sent, kube::Error> {
        let name = format!(
            "{}.{:016x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            rand::random::<u64>()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(action.into()),
            reason: Some(reason.into()),
            note: Some(note.into()),
            type_: Some(kind.as_str().into()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        Ok(Sent {
            name: name.into_boxed_str(),
            count: 1,
            last: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(at: Timestamp) -> Sent {
        Sent {
            name: "x".into(),
            count: 1,
            last: at,
        }
    }

    #[test]
    fn a_repeat_within_the_window_is_found_and_an_old_one_is_not() {
        let t0 = Timestamp::now();
        let mut r = Recent::default();
        r.remember(1, sent(t0));
        assert!(r.repeat_of(1, t0 + SignedDuration::from_mins(5)).is_some());
        assert!(r.repeat_of(1, t0 + SignedDuration::from_mins(6)).is_none());
        assert!(r.repeat_of(2, t0).is_none());
    }

    #[test]
    fn memory_stays_bounded_and_forgets_the_oldest_first() {
        let t0 = Timestamp::now();
        let mut r = Recent::default();
        for k in 0..(3 * CAPACITY as u64) {
            r.remember(k, sent(t0 + SignedDuration::from_millis(k as i64)));
        }
        assert_eq!(r.len(), CAPACITY);
        assert!(r.order.len() <= 2 * CAPACITY);
        let newest = 3 * CAPACITY as u64 - 1;
        assert!(r.repeat_of(newest, t0).is_some());
        assert!(r.repeat_of(0, t0).is_none());
    }

    #[test]
    fn entries_older_than_the_window_are_dropped_when_new_ones_arrive() {
        let t0 = Timestamp::now();
        let mut r = Recent::default();
        for k in 0..10 {
            r.remember(k, sent(t0));
        }
        r.remember(99, sent(t0 + SignedDuration::from_mins(7)));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_refreshed_key_survives_its_older_queue_entry() {
        let t0 = Timestamp::now();
        let mut r = Recent::default();
        r.remember(1, sent(t0));
        r.remember(1, sent(t0 + SignedDuration::from_mins(5)));
        // The first queue entry expires; the refreshed one keeps the key.
        r.remember(2, sent(t0 + SignedDuration::from_mins(7)));
        assert!(r.repeat_of(1, t0 + SignedDuration::from_mins(8)).is_some());
    }

    #[test]
    fn the_identity_includes_the_note() {
        let o = ObjectReference {
            name: Some("a".into()),
            namespace: Some("n".into()),
            uid: Some("u".into()),
            ..Default::default()
        };
        let a = identity(&o, Kind::Normal, "Issued", "Issue", "serial 1");
        let b = identity(&o, Kind::Normal, "Issued", "Issue", "serial 2");
        assert_ne!(a, b);
        assert_eq!(a, identity(&o, Kind::Normal, "Issued", "Issue", "serial 1"));
    }
}
