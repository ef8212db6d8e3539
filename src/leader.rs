//! Leader election with a coordination.k8s.io Lease. Only the holder runs the
//! controller; every write first checks that the lease is still ours by the
//! local clock, so a replica that was frozen or cut off writes nothing once its
//! renew deadline has passed, even before it notices it lost the lease.

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

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
        return true;
    };
    let secs = spec.lease_duration_seconds.unwrap_or(15) as i64;
    renewed + jiff::SignedDuration::from_secs(secs) < now
}

/// One attempt to acquire or renew. Ok(true) when we hold the lease afterwards.
async fn try_acquire_or_renew(api: &Api<Lease>, cfg: &LeaseConfig) -> kube::Result<bool> {
    let now = MicroTime(Timestamp::now());
    let mine = |acquire: Option<MicroTime>, transitions: Option<i32>| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.lease_duration.as_secs() as i32),
        acquire_time: acquire,
        renew_time: Some(now.clone()),
        lease_transitions: transitions,
        ..Default::default()
    };
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                ..Default::default()
            },
            spec: Some(mine(Some(now.clone()), Some(0))),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let new_spec = if holder == cfg.identity {
        mine(spec.acquire_time.clone(), spec.lease_transitions)
    } else if holder.is_empty() || expired(&spec, now.0) {
        mine(
            Some(now.clone()),
            Some(spec.lease_transitions.unwrap_or(0) + 1),
        )
    } else {
        return Ok(false);
    };
    lease.spec = Some(new_spec);
    lease.metadata.managed_fields = None;
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until this process holds the lease, then keeps renewing it in the
/// background. `on_lost` runs once if a renewal cannot be made in time.
pub async fn acquire(
    api: Api<Lease>,
    cfg: LeaseConfig,
    leadership: &Leadership,
    on_lost: impl FnOnce() + Send + 'static,
) {
    loop {
        let attempt = Instant::now();
        match try_acquire_or_renew(&api, &cfg).await {
            Ok(true) => {
                leadership.extend(attempt + cfg.renew_deadline);
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "acquired the leader lease");
                break;
            }
            Ok(false) => {
                tracing::debug!(lease = %cfg.name, "another replica holds the leader lease")
            }
            Err(e) => {
                tracing::warn!(lease = %cfg.name, error = %e, "failed to read or take the leader lease")
            }
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
    let l = leadership.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(cfg.retry_period).await;
            let attempt = Instant::now();
            match try_acquire_or_renew(&api, &cfg).await {
                Ok(true) if l.is_leader() => l.extend(attempt + cfg.renew_deadline),
                Ok(true) => {
                    // We slept past our deadline (e.g. frozen) but nobody took over:
                    // still step down, writes may already have been refused mid-pass.
                    l.revoke();
                    tracing::error!(lease = %cfg.name, "renewed the leader lease too late; stepping down");
                    on_lost();
                    return;
                }
                Ok(false) => {
                    l.revoke();
                    tracing::error!(lease = %cfg.name, "lost the leader lease to another replica; stepping down");
                    on_lost();
                    return;
                }
                Err(e) if l.is_leader() => {
                    tracing::warn!(lease = %cfg.name, error = %e, "failed to renew the leader lease; retrying")
                }
                Err(e) => {
                    tracing::error!(lease = %cfg.name, error = %e, "could not renew the leader lease before the deadline; stepping down");
                    on_lost();
                    return;
                }
            }
        }
    });
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

    #[test]
    fn a_lease_is_expired_after_its_duration_since_the_last_renewal() {
        let now: Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        let spec = |renewed: &str| LeaseSpec {
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        assert!(expired(&spec("2026-01-01T00:00:10Z"), now));
        assert!(!expired(&spec("2026-01-01T00:00:20Z"), now));
        assert!(expired(&LeaseSpec::default(), now));
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
