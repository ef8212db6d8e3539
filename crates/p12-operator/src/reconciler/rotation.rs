//! CA rotation with overlapping trust. Three Secrets in the operator's
//! namespace hold the state, so it survives restarts and needs no other store:
//!
//! - `<ca>`: the CA that issues;
//! - `<ca>-next`: the CA clients are being taught to trust. It is staged by the
//!   operator at `--ca-rotate-at` of an operator-made root's life, by
//!   `p12-operator ca rotate`, or by you (an intermediate of your PKI);
//! - `<ca>-previous`: after the switch, the CA whose certificates are still
//!   out there.
//!
//! Phases: **overlap** (a next CA exists; its root joins every trust bundle,
//! the current CA still issues) → at the switch time (annotation
//! `p12-operator.io/switch-at`, else the next Secret's creation plus
//! `--ca-overlap`) **switch** (the current CA's files move to `-previous`, the
//! next CA's into `<ca>`, `-next` goes: nothing is lost) → leaves of the
//! previous CA are re-issued at the rotation pace → **retire** (no Secret holds
//! a certificate of the previous CA: `-previous` goes, its root leaves the
//! bundle). Only the leader writes; each step is idempotent, so a crash at any
//! point resumes where it stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, Preconditions};

use super::ca::{CaProblem, CaSettings, from_secret};
use crate::bundle::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::pki::{Authorities, CertificateAuthority};

/// When the switch happens, on a staged next CA Secret (RFC 3339).
pub const SWITCH_AT: &str = "p12-operator.io/switch-at";

/// How rotations are started and paced.
#[derive(Clone, Debug)]
pub struct RotationSettings {
    /// Stage a next CA by itself at `rotate_at` of an operator-made root's life.
    pub automatic: bool,
    /// The fraction of the CA's life after which the next CA is staged.
    pub rotate_at: f64,
    /// Time between staging the next CA and switching to it.
    pub overlap: Duration,
}

pub fn next_name(ca: &str) -> String {
    format!("{ca}-next")
}

pub fn previous_name(ca: &str) -> String {
    format!("{ca}-previous")
}

/// The CAs as the Secrets hold them now.
pub struct Loaded {
    pub current: (Arc<CertificateAuthority>, Secret),
    pub next: Option<(Arc<CertificateAuthority>, Secret)>,
    pub previous: Option<(Arc<CertificateAuthority>, Secret)>,
}

impl Loaded {
    /// The issuing CA and the others clients must trust.
    pub fn authorities(&self) -> Authorities {
        let others = self
            .next
            .iter()
            .chain(&self.previous)
            .map(|(ca, _)| ca.clone())
            .filter(|ca| ca.fingerprint() != self.current.0.fingerprint())
            .collect();
        Authorities::new(self.current.0.clone(), others)
    }

    /// When the staged next CA takes over.
    pub fn switch_at(&self, settings: &RotationSettings) -> Option<Timestamp> {
        let (_, secret) = self.next.as_ref()?;
        let planned = secret
            .annotations()
            .get(SWITCH_AT)
            .and_then(|t| t.parse::<Timestamp>().ok())
            .or_else(|| {
                let created = secret.metadata.creation_timestamp.as_ref()?.0;
                Some(created + jiff::SignedDuration::try_from(settings.overlap).ok()?)
            })?;
        // Never after the current CA has expired.
        Some(planned.min(self.current.0.not_after()))
    }
}

/// What a rotation needs done now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Create a next root (an operator-made CA reached `rotate_at`).
    StageNext,
    /// Make the next CA the issuing one.
    Switch,
    /// No certificate of the previous CA is left: drop it.
    Retire,
}

/// The rotation's next step. `previous_done` says that no Secret has held a
/// certificate of the previous CA for an overlap: workloads had as long to
/// reload their new certificates as clients had to learn the new root.
pub fn next_step(
    loaded: &Loaded,
    previous_done: bool,
    settings: &RotationSettings,
    now: Timestamp,
) -> Step {
    if let Some(at) = loaded.switch_at(settings) {
        let same = loaded
            .next
            .as_ref()
            .is_some_and(|(n, _)| n.fingerprint() == loaded.current.0.fingerprint());
        // A previous CA not yet retired blocks a second switch: two rotations
        // never overlap, so clients never need more than two roots.
        let blocked = loaded
            .previous
            .as_ref()
            .is_some_and(|(p, _)| p.fingerprint() != loaded.current.0.fingerprint());
        if same || (now >= at && !blocked) {
            return Step::Switch;
        }
    }
    if let Some((p, _)) = &loaded.previous
        && p.fingerprint() != loaded.current.0.fingerprint()
        && previous_done
    {
        return Step::Retire;
    }
    let ours = loaded
        .current
        .1
        .labels()
        .get(MANAGED_BY_LABEL)
        .map(String::as_str)
        == Some(MANAGED_BY)
        && loaded.current.0.chain().len() == 1;
    if settings.automatic && ours && loaded.next.is_none() && loaded.previous.is_none() {
        let ca = &loaded.current.0;
        let life = ca.not_after().duration_since(ca.not_before());
        let at = ca.not_before() + life.mul_f64(settings.rotate_at.clamp(0.0, 1.0));
        if now >= at {
            return Step::StageNext;
        }
    }
    Step::Nothing
}

fn problem(settings: &CaSettings, what: &str, e: impl std::fmt::Display) -> CaProblem {
    CaProblem {
        reason: "CAUnavailable",
        message: format!(
            "failed to {what} through the API server at {}: {e}",
            settings.api_server
        ),
    }
}

/// Reads the next and previous CA Secrets, when they exist, beside `current`.
pub async fn load(
    api: &Api<Secret>,
    settings: &CaSettings,
    current: (CertificateAuthority, Secret),
) -> Result<Loaded, CaProblem> {
    let read = |name: String| {
        let api = api.clone();
        async move {
            let Some(secret) = api
                .get_opt(&name)
                .await
                .map_err(|e| problem(settings, &format!("read Secret {name}"), e))?
            else {
                return Ok(None);
            };
            let role = CaSettings {
                secret_name: name,
                ..settings.clone()
            };
            let ca = from_secret(&secret, &role)?;
            Ok::<_, CaProblem>(Some((Arc::new(ca), secret)))
        }
    };
    let next = read(next_name(&settings.secret_name)).await?;
    let previous = read(previous_name(&settings.secret_name)).await?;
    Ok(Loaded {
        current: (Arc::new(current.0), current.1),
        next,
        previous,
    })
}

fn labelled(name: &str, data: BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

fn params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGED_BY.into()),
        ..Default::default()
    }
}

/// The CA files of a Secret: what moves between the three names.
fn ca_files(secret: &Secret) -> BTreeMap<String, ByteString> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| matches!(k.as_str(), "tls.crt" | "tls.key" | "ca.crt"))
        .collect()
}

/// Creates a new self-signed root as `<ca>-next`, to switch to after the overlap.
pub async fn stage_next(
    api: &Api<Secret>,
    settings: &CaSettings,
    overlap: Duration,
    now: Timestamp,
) -> Result<CertificateAuthority, CaProblem> {
    let s = settings.clone();
    let ca = tokio::task::spawn_blocking(move || {
        CertificateAuthority::generate_self_signed(s.algorithm, &s.common_name, s.validity, now)
    })
    .await
    .map_err(|e| problem(settings, "generate the next CA", e))?
    .map_err(|e| problem(settings, "generate the next CA", e))?;
    let name = next_name(&settings.secret_name);
    let mut data = BTreeMap::new();
    data.insert("tls.crt".into(), ByteString(ca.cert_pem().into_bytes()));
    data.insert(
        "tls.key".into(),
        ByteString(ca.key_pem().expose().as_bytes().to_vec()),
    );
    data.insert("ca.crt".into(), ByteString(ca.root_pem().into_bytes()));
    let mut secret = labelled(&name, data);
    let switch_at = now + jiff::SignedDuration::try_from(overlap).unwrap_or_default();
    secret.metadata.annotations = Some([(SWITCH_AT.to_string(), switch_at.to_string())].into());
    match api.create(&params(), &secret).await {
        Ok(_) => Ok(ca),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(ca),
        Err(e) => Err(problem(settings, &format!("create Secret {name}"), e)),
    }
}

/// Makes the next CA the issuing one. In three idempotent writes: the current
/// CA's files into `-previous` (kept until its certificates are gone), the
/// next CA's into `<ca>` (with the current resourceVersion as precondition),
/// then `-next` deleted (with its uid as precondition).
pub async fn switch(
    api: &Api<Secret>,
    settings: &CaSettings,
    loaded: &Loaded,
) -> Result<(), CaProblem> {
    let Some((next, next_secret)) = &loaded.next else {
        return Ok(());
    };
    let (current, current_secret) = &loaded.current;
    let previous = previous_name(&settings.secret_name);
    if next.fingerprint() != current.fingerprint() {
        match &loaded.previous {
            Some((p, _)) if p.fingerprint() == current.fingerprint() => {}
            Some(_) => return Ok(()), // blocked; next_step never gets here
            None => {
                let secret = labelled(&previous, ca_files(current_secret));
                match api.create(&params(), &secret).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => {
                        return Err(problem(settings, &format!("create Secret {previous}"), e));
                    }
                }
            }
        }
        let mut promoted = current_secret.clone();
        promoted.metadata.managed_fields = None;
        promoted.data = Some(ca_files(next_secret));
        api.replace(&settings.secret_name, &params(), &promoted)
            .await
            .map_err(|e| {
                problem(
                    settings,
                    &format!("write the next CA into Secret {}", settings.secret_name),
                    e,
                )
            })?;
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: next_secret.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&next_name(&settings.secret_name), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(problem(settings, "delete the staged next CA Secret", e)),
    }
}

/// Drops the previous CA once none of its certificates is left.
pub async fn retire(
    api: &Api<Secret>,
    settings: &CaSettings,
    loaded: &Loaded,
) -> Result<(), CaProblem> {
    let Some((_, secret)) = &loaded.previous else {
        return Ok(());
    };
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.uid(),
            resource_version: secret.resource_version(),
        }),
        ..Default::default()
    };
    match api.delete(&previous_name(&settings.secret_name), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(problem(settings, "delete the previous CA Secret", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::KeyAlgorithm;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ca(at: Timestamp, life: Duration) -> Arc<CertificateAuthority> {
        Arc::new(
            CertificateAuthority::generate_self_signed(KeyAlgorithm::EcdsaP256, "CA", life, at)
                .unwrap(),
        )
    }

    fn secret(ours: bool, created: Timestamp, switch_at: Option<Timestamp>) -> Secret {
        let mut s = Secret::default();
        if ours {
            s.metadata.labels = Some([(MANAGED_BY_LABEL.into(), MANAGED_BY.into())].into());
        }
        s.metadata.creation_timestamp = Some(Time(created));
        if let Some(t) = switch_at {
            s.metadata.annotations = Some([(SWITCH_AT.into(), t.to_string())].into());
        }
        s
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn settings() -> RotationSettings {
        RotationSettings {
            automatic: true,
            rotate_at: 2.0 / 3.0,
            overlap: HOUR,
        }
    }

    #[test]
    fn an_operator_made_root_is_rotated_at_two_thirds_of_its_life_and_a_supplied_one_never() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let current = ca(t0, 30 * HOUR);
        let loaded = |ours| Loaded {
            current: (current.clone(), secret(ours, t0, None)),
            next: None,
            previous: None,
        };
        // notBefore is back-dated a minute: two thirds of the life is at about 20 h.
        let before = t0 + jiff::SignedDuration::from_hours(19);
        let after = t0 + jiff::SignedDuration::from_hours(21);
        assert_eq!(
            next_step(&loaded(true), false, &settings(), before),
            Step::Nothing
        );
        assert_eq!(
            next_step(&loaded(true), false, &settings(), after),
            Step::StageNext
        );
        assert_eq!(
            next_step(&loaded(false), false, &settings(), after),
            Step::Nothing,
            "a CA you supplied is rotated by you (stage <ca>-next)"
        );
        let manual = RotationSettings {
            automatic: false,
            ..settings()
        };
        assert_eq!(
            next_step(&loaded(true), false, &manual, after),
            Step::Nothing
        );
    }

    #[test]
    fn the_switch_waits_for_its_time_and_for_the_last_rotation_to_retire() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let (old, current, next) = (ca(t0, 30 * HOUR), ca(t0, 30 * HOUR), ca(t0, 30 * HOUR));
        let staged = t0 + jiff::SignedDuration::from_hours(20);
        let loaded = |previous: Option<Arc<CertificateAuthority>>| Loaded {
            current: (current.clone(), secret(true, t0, None)),
            next: Some((next.clone(), secret(true, staged, None))),
            previous: previous.map(|p| (p, secret(true, t0, None))),
        };
        let hours = |h| staged + jiff::SignedDuration::from_hours(h);
        assert_eq!(loaded(None).switch_at(&settings()), Some(hours(1)));
        assert_eq!(
            next_step(&loaded(None), false, &settings(), staged),
            Step::Nothing
        );
        assert_eq!(
            next_step(&loaded(None), false, &settings(), hours(2)),
            Step::Switch
        );
        // An unretired previous CA blocks the next switch, until its leaves are gone.
        assert_eq!(
            next_step(&loaded(Some(old.clone())), false, &settings(), hours(2)),
            Step::Nothing
        );
        assert_eq!(
            next_step(&loaded(Some(old)), true, &settings(), hours(2)),
            Step::Retire
        );
        // A half-done switch (the next CA already issues) is finished at once.
        let half = Loaded {
            current: (next.clone(), secret(true, t0, None)),
            next: Some((next.clone(), secret(true, staged, None))),
            previous: Some((current.clone(), secret(true, t0, None))),
        };
        assert_eq!(next_step(&half, false, &settings(), staged), Step::Switch);
        // An explicit switch time wins over creation + overlap, but never after expiry.
        let pinned = Loaded {
            current: (current.clone(), secret(true, t0, None)),
            next: Some((next.clone(), secret(false, staged, Some(hours(500))))),
            previous: None,
        };
        assert_eq!(pinned.switch_at(&settings()), Some(current.not_after()));
    }

    #[test]
    fn the_bundle_holds_every_ca_of_the_rotation_once() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let (current, next) = (ca(t0, 30 * HOUR), ca(t0, 30 * HOUR));
        let loaded = Loaded {
            current: (current.clone(), secret(true, t0, None)),
            next: Some((next.clone(), secret(true, t0, None))),
            previous: Some((current.clone(), secret(true, t0, None))),
        };
        let a = loaded.authorities();
        assert_eq!(
            a.others().len(),
            1,
            "the previous CA equal to the current is not repeated"
        );
        assert_eq!(a.bundle().roots().len(), 2);
    }
}
