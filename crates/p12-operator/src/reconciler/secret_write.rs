//! The Secret: whose it is, whether it still serves the plan, what it should
//! hold, and the one write that makes it so, with the API server's answers
//! mapped to retry, race or refusal. Uses `context`, `issue`, `record` and the
//! core's `bundle` and `plan`.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::context::{Context, MANAGER, request_key};
use super::issue::{IssueError, issue, referenced_password};
use super::pass::{Refusal, refuse};
use super::record::publish;
use super::{Error, status};
use crate::api::{CertificateRequest, CertificateRequestStatus, RotationPolicy};
use crate::bundle::{self, Existing, Material, Verdict, annotations as ann};
use crate::events::Kind as EventType;
use crate::pki::Authorities;
use crate::plan::{self, PasswordSource, Plan};
use crate::sensitive::SecretString;

/// What was last checked for a request, so an unchanged Secret is not re-read.
/// One is kept per request for as long as it exists, so it is kept small: the
/// inputs the Secret was built from are folded into one digest.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Checked {
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

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
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

/// Makes the Secret serve the plan; returns the status describing it and the renewal time.
pub(super) async fn converge(
    cr: &CertificateRequest,
    ctx: &Context,
    plan: &Plan,
    ca: &Arc<Authorities>,
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
            match referenced_password(&ctx.client, &ns, &cr.name_any(), name, key).await? {
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
        (Verdict::Reissue("Missing"), false)
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
        let judge = move |reissue_rotated| {
            bundle::assess(
                &d,
                &a,
                &existing2,
                &plan2,
                &c,
                &p,
                renew_requested,
                reissue_rotated,
                now,
            )
        };
        tokio::task::spawn_blocking(move || {
            // After a CA switch, leaves of the previous CA are re-issued (and
            // after a bundle change, Secrets rewritten) at the rotation pace,
            // not all at once: without a turn, the Secret stays as it is.
            match judge(true) {
                v @ (Verdict::Reissue("CARotated") | Verdict::Reencrypt("CABundleStale")) => {
                    (v, true)
                }
                v => (v, false),
            }
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    };
    let (verdict, paced) = verdict;
    let (verdict, deferred) = match paced.then(|| ctx.rotation_pace.turn(&oref)) {
        Some(Err(wait)) => (Verdict::Current, Some(wait)),
        _ => (verdict, None),
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
                tracing::debug!(namespace = %cr.namespace().unwrap_or_default(), request = %cr.name_any(), algorithm = ?plan.key_algorithm, "generating a key pair");
            }
            let (plan2, ca2) = (plan.clone(), ca.current().clone());
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
    let issuer = ca
        .issuer_of(&material.leaf_der)
        .unwrap_or(ca.current())
        .clone();
    let annotations = bundle::secret_annotations(
        &cr.name_any(),
        plan,
        &facts,
        &issuer,
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
    // New files carry the issuing CA's MAC; unchanged ones keep the MAC they
    // were verified with (perhaps the previous CA's), so a switch writes nothing.
    let mac = match (&work, live_annotations.get(ann::KEYSTORE_MAC)) {
        (Work::Nothing, Some(live_mac)) => live_mac.clone(),
        _ => bundle::keystore_mac(ca.current(), &new_data, plan, &password),
    };
    annotations.insert(ann::KEYSTORE_MAC.into(), mac);
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
    // A Secret whose turn in a rotation has not come is looked at again soon.
    let recheck = match deferred {
        Some(wait) => {
            renewal.min(Timestamp::now() + jiff::SignedDuration::try_from(wait).unwrap_or_default())
        }
        None => renewal,
    };
    ctx.checked.lock().unwrap().insert(
        oref.clone(),
        Checked {
            secret_version: written.resource_version().unwrap_or_default().into(),
            inputs: inputs_digest(plan, &ca.fingerprint(), (!generated).then_some(&password)),
            renew_token: renew_token.as_deref().map(Into::into),
            renewal_time: recheck,
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
    Ok(Ok((status, recheck)))
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
