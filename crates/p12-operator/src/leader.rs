//! Leader election with a coordination.k8s.io Lease. Only the holder runs the
//! controller. A standby judges the lease by when it saw it change, on its own
//! monotonic clock, never by the holder's timestamps (clocks differ between
//! machines). Every write first checks that the lease is still ours by the
//! local monotonic clock, so a replica that was frozen or cut off writes
//! nothing once its renew deadline has passed, even before it notices it lost
//! the lease.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

/// Lease timing, as client-go's defaults.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub identity: String,
    /// How long others wait after the last renewal before taking over.
    pub lease_duration: Duration,
    /// How long the holder keeps writing without a successful renewal.
    pub renew_deadline: Duration,
    /// Time between attempts.
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(name: &str, identity: &str) -> Self {
        LeaseConfig {
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether this process may write now.
#[derive(Clone)]
pub struct Leadership {
    valid_until: Arc<Mutex<Option<Instant>>>,
    elected: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("not the leader: the lease was not renewed in time")]
pub struct NotLeader;

impl Leadership {
    /// No election: always allowed to write.
    pub fn always() -> Self {
        Leadership {
            valid_until: Arc::new(Mutex::new(None)),
            elected: false,
        }
    }

    /// Elected, but not (yet) holding the lease.
    pub fn elected() -> Self {
        Leadership {
            valid_until: Arc::new(Mutex::new(None)),
            elected: true,
        }
    }

    pub fn is_leader(&self) -> bool {
        !self.elected
            || self
                .valid_until
                .lock()
                .unwrap()
                .is_some_and(|t| Instant::now() < t)
    }

    pub fn check(&self) -> Result<(), NotLeader> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(NotLeader)
        }
    }

    fn extend(&self, until: Instant) {
        *self.valid_until.lock().unwrap() = Some(until);
    }

    fn revoke(&self) {
        *self.valid_until.lock().unwrap() = Some(Instant::now() - Duration::from_secs(1));
    }
}

/// The lease as this process last saw it, and when it saw it change, by its
/// own monotonic clock. As in client-go, expiry is judged only from that
/// instant: the holder's `renewTime` comes from another machine's wall clock,
/// and comparing it with ours would let a standby whose clock runs ahead take
/// over from a live leader (or one whose clock lags wait far too long).
#[derive(Debug, Default)]
struct Observed {
    last: Option<(ObservedRecord, Instant)>,
}

#[derive(Debug, PartialEq)]
struct ObservedRecord {
    resource_version: Option<String>,
    spec: Option<LeaseSpec>,
}

impl Observed {
    /// Records a read or a successful write of the lease at `now`; the clock
    /// restarts only when the record differs from the last one seen.
    fn observe(&mut self, lease: &Lease, now: Instant) {
        let record = ObservedRecord {
            resource_version: lease.metadata.resource_version.clone(),
            spec: lease.spec.clone(),
        };
        if self.last.as_ref().map(|(r, _)| r) != Some(&record) {
            self.last = Some((record, now));
        }
    }

    /// When the lease last observed runs out unless it changes again: the
    /// record's own duration after the moment this process saw it change.
    fn expires_at(&self, default: Duration) -> Option<Instant> {
        let (record, seen) = self.last.as_ref()?;
        let secs = record
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .map_or(default, |s| Duration::from_secs(s.max(0) as u64));
        Some(*seen + secs)
    }
}

/// What one acquire-or-renew attempt should do, decided without I/O.
#[derive(Debug)]
enum Step {
    Create(Lease),
    Replace(Lease),
    Wait,
}

/// Decides on `current` (the lease just read, if any). `now` is the monotonic
/// instant of the read and judges expiry; `wall` is written as our own
/// `renewTime`/`acquireTime` for humans and tools, never compared.
fn next_step(
    observed: &mut Observed,
    current: Option<Lease>,
    cfg: &LeaseConfig,
    now: Instant,
    wall: Timestamp,
) -> Step {
    let stamp = MicroTime(wall);
    let mine = |acquire: Option<MicroTime>, transitions: Option<i32>| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.lease_duration.as_secs() as i32),
        acquire_time: acquire,
        renew_time: Some(stamp.clone()),
        lease_transitions: transitions,
        ..Default::default()
    };
    let Some(mut lease) = current else {
        return Step::Create(Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                ..Default::default()
            },
            spec: Some(mine(Some(stamp.clone()), Some(0))),
        });
    };
    observed.observe(&lease, now);
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = observed
        .expires_at(cfg.lease_duration)
        .is_none_or(|t| t <= now);
    let new_spec = if holder == cfg.identity {
        mine(spec.acquire_time.clone(), spec.lease_transitions)
    } else if holder.is_empty() || expired {
        mine(
            Some(stamp.clone()),
            Some(spec.lease_transitions.unwrap_or(0) + 1),
        )
    } else {
        return Step::Wait;
    };
    lease.spec = Some(new_spec);
    lease.metadata.managed_fields = None;
    Step::Replace(lease)
}

/// Reads the lease and takes or renews it when [`next_step`] says so.
struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Observed,
}

impl Elector {
    /// One attempt. Ok(true) when we hold the lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> kube::Result<bool> {
        let wall = Timestamp::now();
        let current = self.api.get_opt(&self.cfg.name).await?;
        let step = next_step(&mut self.observed, current, &self.cfg, Instant::now(), wall);
        // The replace carries the resourceVersion just read: a concurrent
        // writer makes it fail with 409 instead of being overwritten.
        let written = match step {
            Step::Wait => return Ok(false),
            Step::Create(lease) => self.api.create(&PostParams::default(), &lease).await,
            Step::Replace(lease) => {
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                self.observed.observe(&lease, Instant::now());
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// How long a standby sleeps before its next attempt: the retry period,
    /// or less when the lease it watches runs out sooner.
    fn standby_wait(&self) -> Duration {
        let retry = self.cfg.retry_period;
        match self.observed.expires_at(self.cfg.lease_duration) {
            Some(t) => match t.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => retry.min(left + Duration::from_millis(20)),
                _ => retry,
            },
            None => retry,
        }
    }
}

/// Waits until this process holds the lease, then keeps renewing it in the
/// background. `on_lost` runs once when leadership ends: a renewal was not
/// made in time, another replica took the lease, or the renewal task failed.
pub async fn acquire(
    api: Api<Lease>,
    cfg: LeaseConfig,
    leadership: &Leadership,
    on_lost: impl FnOnce() + Send + 'static,
) {
    let mut elector = Elector {
        api,
        cfg,
        observed: Observed::default(),
    };
    loop {
        let attempt = Instant::now();
        match elector.try_acquire_or_renew().await {
            Ok(true) => {
                leadership.extend(attempt + elector.cfg.renew_deadline);
                tracing::info!(lease = %elector.cfg.name, identity = %elector.cfg.identity, "acquired the leader lease");
                break;
            }
            Ok(false) => {
                tracing::debug!(lease = %elector.cfg.name, "another replica holds the leader lease")
            }
            Err(e) => {
                tracing::warn!(lease = %elector.cfg.name, error = %e, "failed to read or take the leader lease")
            }
        }
        tokio::time::sleep(elector.standby_wait()).await;
    }
    let l = leadership.clone();
    let name = elector.cfg.name.clone();
    let renewal = tokio::spawn(renew(elector, l.clone()));
    // A renewal task that panics must not leave a leader that silently stops
    // renewing: step down exactly as when the lease is lost.
    tokio::spawn(async move {
        if let Err(e) = renewal.await {
            l.revoke();
            tracing::error!(lease = %name, error = %e, "the leader lease renewal task failed; stepping down");
        }
        on_lost();
    });
}

/// Renews until leadership ends; returns when it has.
async fn renew(mut elector: Elector, l: Leadership) {
    let name = elector.cfg.name.clone();
    loop {
        tokio::time::sleep(elector.cfg.retry_period).await;
        let attempt = Instant::now();
        match elector.try_acquire_or_renew().await {
            Ok(true) if l.is_leader() => l.extend(attempt + elector.cfg.renew_deadline),
            Ok(true) => {
                // We slept past our deadline (e.g. frozen) but nobody took over:
                // still step down, writes may already have been refused mid-pass.
                l.revoke();
                tracing::error!(lease = %name, "renewed the leader lease too late; stepping down");
                return;
            }
            Ok(false) => {
                l.revoke();
                tracing::error!(lease = %name, "lost the leader lease to another replica; stepping down");
                return;
            }
            Err(e) if l.is_leader() => {
                tracing::warn!(lease = %name, error = %e, "failed to renew the leader lease; retrying")
            }
            Err(e) => {
                tracing::error!(lease = %name, error = %e, "could not renew the leader lease before the deadline; stepping down");
                return;
            }
        }
    }
}

/// Gives the lease up so a standby takes over at once (clean shutdown).
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
        return;
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    lease.metadata.managed_fields = None;
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %cfg.name, "released the leader lease"),
        Err(e) => {
            tracing::warn!(lease = %cfg.name, error = %e, "failed to release the leader lease")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    /// An in-memory API server for one Lease: replaces succeed only with the
    /// current resourceVersion, as on a real one.
    #[derive(Default)]
    struct FakeLeaseApi {
        lease: Option<Lease>,
        version: u64,
    }

    impl FakeLeaseApi {
        fn attempt(
            &mut self,
            observed: &mut Observed,
            cfg: &LeaseConfig,
            now: Instant,
            wall: Timestamp,
        ) -> bool {
            let (mut lease, create) = match next_step(observed, self.lease.clone(), cfg, now, wall)
            {
                Step::Wait => return false,
                Step::Create(l) => (l, true),
                Step::Replace(l) => (l, false),
            };
            let current = self
                .lease
                .as_ref()
                .and_then(|l| l.metadata.resource_version.clone());
            if create == current.is_some() || lease.metadata.resource_version != current {
                return false;
            }
            self.version += 1;
            lease.metadata.resource_version = Some(self.version.to_string());
            observed.observe(&lease, now);
            self.lease = Some(lease);
            true
        }

        fn holder(&self) -> Option<String> {
            self.lease.as_ref()?.spec.as_ref()?.holder_identity.clone()
        }
    }

    /// A leader renews every 2 s from t=0 until it dies at t=60 s; a standby
    /// whose wall clock is `skew` ahead of the leader's tries every 2 s
    /// (at odd seconds). Returns when the standby took the lease, if it did
    /// within two minutes.
    fn standby_takeover(skew: SignedDuration) -> Option<Duration> {
        let t0 = Instant::now();
        let w0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let (leader, standby) = (
            LeaseConfig::new("p12-operator", "a"),
            LeaseConfig::new("p12-operator", "b"),
        );
        let (mut seen_by_leader, mut seen_by_standby) = (Observed::default(), Observed::default());
        let mut api = FakeLeaseApi::default();
        for s in 0..120u64 {
            let now = t0 + Duration::from_secs(s);
            let wall = w0 + SignedDuration::from_secs(s as i64);
            if s % 2 == 0 && s < 60 {
                api.attempt(&mut seen_by_leader, &leader, now, wall);
            } else if s % 2 == 1 && api.attempt(&mut seen_by_standby, &standby, now, wall + skew) {
                assert_eq!(api.holder().as_deref(), Some("b"));
                return Some(Duration::from_secs(s));
            }
        }
        None
    }

    #[test]
    fn a_standby_with_a_skewed_wall_clock_waits_a_lease_duration_after_the_last_renewal_it_saw() {
        for skew in [
            SignedDuration::ZERO,
            SignedDuration::from_secs(5),
            SignedDuration::from_hours(1),
            SignedDuration::from_hours(-1),
        ] {
            let took = standby_takeover(skew);
            // The last renewal was at t=58 s, seen by the standby at 59 s: it
            // may take over 15 s (the lease duration) later, at its next try.
            assert_eq!(
                took,
                Some(Duration::from_secs(75)),
                "standby with its wall clock {skew:#} off took the lease at {took:?}"
            );
        }
    }

    #[test]
    fn a_released_lease_is_taken_at_once_and_a_fresh_standby_waits_a_full_lease_duration() {
        let t0 = Instant::now();
        let wall: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let (a, b) = (LeaseConfig::new("l", "a"), LeaseConfig::new("l", "b"));
        let mut api = FakeLeaseApi::default();
        assert!(api.attempt(&mut Observed::default(), &a, t0, wall));

        // A standby started after the holder died cannot know when the last
        // renewal happened: it counts the lease duration from its first read.
        let mut fresh = Observed::default();
        let later = t0 + Duration::from_secs(3600);
        assert!(!api.attempt(&mut fresh, &b, later, wall));
        assert!(!api.attempt(&mut fresh, &b, later + Duration::from_secs(14), wall));
        assert!(api.attempt(&mut fresh, &b, later + Duration::from_secs(15), wall));
        assert_eq!(api.holder().as_deref(), Some("b"));

        // Released (no holder): taken on the next attempt.
        let spec = api.lease.as_mut().unwrap().spec.as_mut().unwrap();
        spec.holder_identity = None;
        let mut other = Observed::default();
        assert!(api.attempt(&mut other, &a, later + Duration::from_secs(16), wall));
        assert_eq!(api.holder().as_deref(), Some("a"));
        assert_eq!(
            api.lease
                .as_ref()
                .unwrap()
                .spec
                .as_ref()
                .unwrap()
                .lease_transitions,
            Some(2)
        );
    }

    #[test]
    fn writes_stop_when_the_renew_deadline_passes() {
        let l = Leadership::elected();
        l.extend(Instant::now() + Duration::from_millis(50));
        assert!(l.check().is_ok());
        std::thread::sleep(Duration::from_millis(80));
        assert!(l.check().is_err());
        assert!(Leadership::always().check().is_ok());
    }
}
