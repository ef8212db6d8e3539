//! The rollout step: after a renewal, restarts the workloads `spec.rollout`
//! names the way `kubectl rollout restart` does (a pod-template annotation, so
//! the workload's own strategy and PodDisruptionBudgets decide the pace),
//! waits for each rollout to finish, and asks the probe step to verify every
//! replica. One entry, [`step`]; everything it decides is kept in
//! `status.rollout`, so a restarted operator carries on where it stopped.
//!
//! Rules: only workloads of the request's own namespace, each restarted at
//! most once per certificate (the annotation carries its fingerprint), never
//! one that is mid-rollout, never one whose replicas the probe already saw
//! serving the new certificate (hot reload), and a rollout that does not end
//! in time is reported, not retried. Requests without `spec.rollout` cost no
//! API call here.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

use super::context::{MANAGER, request_key};
use super::{Context, Error, publish, status};
use crate::api::{
    CertificateRequest, CertificateRequestStatus, ProbeStatus, RolloutStatus, WorkloadKind,
    WorkloadRef, WorkloadRolloutStatus,
};
use crate::events::Kind as EventType;

/// Pod-template annotation: the fingerprint of the certificate a restart was for.
pub const RESTARTED_FOR: &str = "p12-operator.io/restarted-for";

/// How often a rollout in progress is looked at.
const POLL: Duration = Duration::from_secs(5);
/// How long a rollout waits for the first probe of a new certificate (to learn
/// which replicas reloaded it themselves) before restarting everything.
const PROBE_WAIT: SignedDuration = SignedDuration::from_secs(120);

/// States of one workload, as `status.rollout.workloads[].state` shows them.
mod state {
    pub const PENDING: &str = "Pending";
    pub const WAITING: &str = "Waiting";
    pub const RESTARTED: &str = "Restarted";
    pub const ROLLED_OUT: &str = "RolledOut";
    pub const SKIPPED: &str = "Skipped";
    pub const TIMED_OUT: &str = "TimedOut";
    pub const NOT_FOUND: &str = "NotFound";
}

/// What the rollout step asks of the rest of the pass.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Outcome {
    /// Start no probe round: workloads are rolling.
    pub hold_probe: bool,
    /// When to look again.
    pub next: Option<Duration>,
}

/// The key a rollout is for. Today the issued certificate; a change of the
/// trust bundle (a CA rotation) would join it here, so that one rollout
/// carries both.
fn rollout_key(status: &CertificateRequestStatus) -> Option<String> {
    status.fingerprint_sha256.clone()
}

/// Runs the rollout part of a pass. `status` describes the issued certificate
/// and the last probe.
pub(super) async fn step(
    cr: &CertificateRequest,
    ctx: &Context,
    status: &mut CertificateRequestStatus,
) -> Result<Outcome, Error> {
    let Some(spec) = &cr.spec.rollout else {
        status.rollout = None;
        status.conditions.retain(|c| c.type_ != status::ROLLED_OUT);
        return Ok(Outcome::default());
    };
    let Some(key) = rollout_key(status) else {
        return Ok(Outcome::default());
    };
    let generation = cr.metadata.generation;
    if !ctx.rollout {
        let message = format!(
            "the operator may not restart workloads: it runs without --enable-rollout (chart value rollout.enabled=false), so {} will not be restarted after a renewal",
            names(&spec.workloads)
        );
        set_condition(
            ctx,
            cr,
            status,
            false,
            "RolloutDisabled",
            &message,
            generation,
        )
        .await;
        return Ok(Outcome::default());
    }
    let now = Timestamp::now();
    let mut rollout = status.rollout.clone().unwrap_or_default();
    if rollout.fingerprint_sha256.is_none() {
        // The first certificate this request sees with a rollout: workloads
        // that start now read it, so there is nothing to restart yet.
        status.rollout = Some(RolloutStatus {
            fingerprint_sha256: Some(key),
            ..Default::default()
        });
        set_condition(
            ctx,
            cr,
            status,
            true,
            "NoRenewalYet",
            &format!(
                "{} will be restarted after the next renewal",
                names(&spec.workloads)
            ),
            generation,
        )
        .await;
        return Ok(Outcome::default());
    }
    if rollout.fingerprint_sha256.as_deref() != Some(key.as_str()) {
        tracing::info!(namespace = %cr.namespace().unwrap_or_default(), request = %cr.name_any(), "certificate renewed; rolling out");
        rollout = RolloutStatus {
            fingerprint_sha256: Some(key.clone()),
            start_time: Some(Time(now)),
            ..Default::default()
        };
    }
    if rollout.start_time.is_none() {
        // The certificate the workloads started with: nothing to roll.
        return Ok(Outcome::default());
    }
    // Workloads named now (the list may have been edited since the start).
    let mut workloads: Vec<WorkloadRolloutStatus> = spec
        .workloads
        .iter()
        .map(|w| {
            rollout
                .workloads
                .iter()
                .find(|s| s.kind == w.kind.as_str() && s.name == w.name)
                .cloned()
                .unwrap_or_else(|| WorkloadRolloutStatus {
                    kind: w.kind.as_str().into(),
                    name: w.name.clone(),
                    state: state::PENDING.into(),
                    ..Default::default()
                })
        })
        .collect();
    let probed = ctx.probe.is_some() && cr.spec.probe.is_some();

    if rollout.completion_time.is_some() {
        // Done: what the probe after it saw.
        if probed && rollout.verified_time.is_none() {
            record_verification(status, &mut rollout, &mut workloads, &spec.workloads);
        }
        rollout.workloads = workloads;
        status.rollout = Some(rollout);
        return Ok(Outcome::default());
    }

    let started = rollout.start_time.as_ref().map_or(now, |t| t.0);
    let timeout = crate::duration::parse(&spec.timeout)
        .ok()
        .and_then(|d| SignedDuration::try_from(d).ok())
        .unwrap_or(SignedDuration::from_mins(10));
    let overdue = now > started + timeout;
    // The probe of the new certificate tells which replicas already serve it.
    let probe = status
        .probe
        .as_ref()
        .filter(|p| p.issued_fingerprint_sha256.as_deref() == Some(key.as_str()))
        .filter(|p| p.last_probe_time.as_ref().is_some_and(|t| t.0 >= started));
    let wait_for_probe = probed && probe.is_none() && now < started + PROBE_WAIT && !overdue;

    let ns = cr.namespace().unwrap_or_default();
    for (w, spec_w) in workloads.iter_mut().zip(&spec.workloads) {
        let before = w.state.clone();
        match w.state.as_str() {
            state::PENDING | state::WAITING if wait_for_probe => {}
            state::PENDING | state::WAITING => {
                let Some(obj) = get(ctx, &ns, spec_w).await? else {
                    w.state = state::NOT_FOUND.into();
                    w.message = format!("{} {} not found in namespace {ns}", w.kind, w.name);
                    continue;
                };
                let p = Progress::of(spec_w.kind, &obj);
                let serving = probe
                    .map(|p| served_by(spec_w, p, &key))
                    .unwrap_or_default();
                if p.restarted_for.as_deref() == Some(key.as_str()) {
                    // Restarted for this certificate already (by a pass that
                    // ended before recording it): never twice.
                    w.state = state::RESTARTED.into();
                    w.restart_time.get_or_insert(Time(now));
                } else if serving.stale.is_empty()
                    && !serving.current.is_empty()
                    && serving.current.len() as i64 >= p.ready
                {
                    w.state = state::SKIPPED.into();
                    w.message = format!(
                        "not restarted: its {} ready replicas already serve the new certificate ({})",
                        serving.current.len(),
                        serving.current.join(", ")
                    );
                } else if let Some(why) = p.mid_rollout.as_deref().filter(|_| !overdue) {
                    w.state = state::WAITING.into();
                    w.message = format!(
                        "not restarted yet: it is mid-rollout ({why}); restarted once that ends"
                    );
                } else if overdue {
                    w.state = state::TIMED_OUT.into();
                    w.message = format!(
                        "not restarted: it was mid-rollout for the whole timeout ({}); its replicas serve what they served",
                        spec.timeout
                    );
                } else {
                    match restart(ctx, &ns, spec_w, &obj, &key).await? {
                        true => {
                            w.state = state::RESTARTED.into();
                            w.restart_time = Some(Time(now));
                            w.message =
                                format!("restarted for the certificate renewed at {started}");
                        }
                        // Changed since it was read: look again next time.
                        false => {}
                    }
                }
            }
            state::RESTARTED => {
                let Some(obj) = get(ctx, &ns, spec_w).await? else {
                    w.state = state::NOT_FOUND.into();
                    w.message = format!("{} {} was deleted during its rollout", w.kind, w.name);
                    continue;
                };
                let p = Progress::of(spec_w.kind, &obj);
                let restarted = w.restart_time.as_ref().map_or(now, |t| t.0);
                if p.complete && p.restarted_for.as_deref() == Some(key.as_str()) {
                    w.state = state::ROLLED_OUT.into();
                    w.rollout_seconds = Some(now.duration_since(restarted).as_secs().max(0));
                    w.message = format!("rolled out in {}s", w.rollout_seconds.unwrap_or_default());
                } else if overdue || p.failed.is_some() {
                    w.state = state::TIMED_OUT.into();
                    w.message = format!(
                        "rollout did not finish {}: {}; Kubernetes keeps its old replicas serving, the operator does not restart it again for this certificate",
                        p.failed
                            .clone()
                            .unwrap_or_else(|| format!("within {}", spec.timeout)),
                        p.summary
                    );
                } else {
                    w.message = format!("rolling out: {}", p.summary);
                }
            }
            _ => {}
        }
        if w.state != before {
            announce(ctx, cr, w).await;
        }
    }

    let in_progress = workloads
        .iter()
        .any(|w| [state::PENDING, state::WAITING, state::RESTARTED].contains(&w.state.as_str()));
    let restarted_any = workloads
        .iter()
        .any(|w| w.restart_time.is_some() || w.state == state::RESTARTED);
    let (ok, reason, message) = if in_progress {
        let rolling = workloads
            .iter()
            .any(|w| w.state == state::RESTARTED || w.state == state::WAITING);
        (
            false,
            "RollingOut",
            if rolling {
                summary(&workloads)
            } else {
                "waiting for the probe of the new certificate to learn which workloads reload it themselves".to_string()
            },
        )
    } else {
        rollout.completion_time = Some(Time(now));
        let failed = workloads
            .iter()
            .find(|w| w.state == state::TIMED_OUT || w.state == state::NOT_FOUND);
        let mut text = summary(&workloads);
        if !probed {
            text.push_str("; not verified: the request has no spec.probe");
        }
        match failed {
            Some(w) if w.state == state::NOT_FOUND => (false, "WorkloadNotFound", text),
            Some(_) => (false, "RolloutTimedOut", text),
            None => (true, "RolledOut", text),
        }
    };
    let hold_probe = in_progress && !wait_for_probe;
    if !in_progress
        && restarted_any
        && let Some(state) = &ctx.probe
    {
        // Verify what the rollout brought, now rather than at the next interval.
        state.probe_soon(&request_key(cr));
    }
    rollout.workloads = workloads;
    status.rollout = Some(rollout);
    set_condition(ctx, cr, status, ok, reason, &message, generation).await;
    if !ok && !in_progress {
        publish(
            ctx,
            cr,
            EventType::Warning,
            reason,
            "Rollout",
            status::truncate(&message),
        )
        .await;
    } else if ok && !in_progress {
        publish(
            ctx,
            cr,
            EventType::Normal,
            reason,
            "Rollout",
            status::truncate(&message),
        )
        .await;
    }
    Ok(Outcome {
        hold_probe,
        next: in_progress.then_some(POLL),
    })
}

/// After the rollout: when the probe that followed it saw every endpoint serve
/// the certificate, the time; else which pods of each workload did not.
fn record_verification(
    status: &CertificateRequestStatus,
    rollout: &mut RolloutStatus,
    workloads: &mut [WorkloadRolloutStatus],
    refs: &[WorkloadRef],
) {
    let Some(done) = rollout.completion_time.as_ref().map(|t| t.0) else {
        return;
    };
    let key = rollout.fingerprint_sha256.clone().unwrap_or_default();
    let Some(probe) = status
        .probe
        .as_ref()
        .filter(|p| p.issued_fingerprint_sha256.as_deref() == Some(key.as_str()))
        .filter(|p| p.last_probe_time.as_ref().is_some_and(|t| t.0 >= done))
    else {
        return;
    };
    let verified =
        status::get(&status.conditions, status::VERIFIED).is_some_and(|c| c.status == "True");
    if verified {
        rollout.verified_time = probe.last_probe_time.clone();
    }
    for (w, r) in workloads.iter_mut().zip(refs) {
        w.stale_pods = served_by(r, probe, &key).stale;
    }
}

/// Pods of a workload among the probed endpoints, by whether they serve `key`.
#[derive(Default)]
struct Serving {
    current: Vec<String>,
    stale: Vec<String>,
}

fn served_by(w: &WorkloadRef, probe: &ProbeStatus, key: &str) -> Serving {
    let mut out = Serving::default();
    for e in &probe.endpoints {
        let Some(pod) = e.pod.as_deref().filter(|p| pod_of(w, p)) else {
            continue;
        };
        let serves = e.verified
            && e.served_fingerprint_sha256
                .as_deref()
                .is_some_and(|f| same_fingerprint(f, key));
        if serves {
            out.current.push(pod.to_string());
        } else {
            out.stale.push(pod.to_string());
        }
    }
    out
}

fn same_fingerprint(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.replace(':', "").to_ascii_lowercase();
    norm(a) == norm(b)
}

/// The characters Kubernetes uses for generated name suffixes and pod-template hashes.
const NAME_ALPHABET: &str = "bcdfghjklmnpqrstvwxz2456789";

/// Whether a pod is one of the workload's replicas, judged by the names its
/// controller gives them: `<statefulset>-<ordinal>`, `<daemonset>-<5 chars>`,
/// `<deployment>-<pod-template-hash>-<5 chars>`. The operator reads no Pod
/// (it has no pod verb outside its own namespace); a pod it misjudges can only
/// cost a restart, or show as stale in the probe that follows.
pub(super) fn pod_of(w: &WorkloadRef, pod: &str) -> bool {
    let Some(rest) = pod
        .strip_prefix(w.name.as_str())
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    let generated = |s: &str, min: usize, max: usize| {
        (min..=max).contains(&s.len()) && s.chars().all(|c| NAME_ALPHABET.contains(c))
    };
    match w.kind {
        WorkloadKind::StatefulSet => !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()),
        WorkloadKind::DaemonSet => generated(rest, 5, 5),
        WorkloadKind::Deployment => rest
            .split_once('-')
            .is_some_and(|(hash, suffix)| generated(hash, 1, 10) && generated(suffix, 5, 5)),
    }
}

fn resource(kind: WorkloadKind) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", kind.as_str()))
}

/// The workload, from the request's own namespace only; `None` if it does not exist.
async fn get(ctx: &Context, ns: &str, w: &WorkloadRef) -> Result<Option<DynamicObject>, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &resource(w.kind));
    Ok(api.get_opt(&w.name).await?)
}

/// Sets the pod-template annotation, with the resourceVersion read as a
/// precondition (a workload that changed since is looked at again next pass).
/// False on a conflict.
async fn restart(
    ctx: &Context,
    ns: &str,
    w: &WorkloadRef,
    obj: &DynamicObject,
    key: &str,
) -> Result<bool, Error> {
    ctx.leadership.check()?;
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &resource(w.kind));
    let patch = json!({
        "metadata": {"resourceVersion": obj.resource_version()},
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_FOR: key}}}},
    });
    match api
        .patch(
            &w.name,
            &PatchParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A workload's rollout as its status tells it.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Progress {
    /// Why it is mid-rollout, if it is: its last change is not on every replica yet.
    pub mid_rollout: Option<String>,
    /// Every replica runs the current template and is available.
    pub complete: bool,
    /// The controller gave up (a Deployment's progress deadline).
    pub failed: Option<String>,
    /// Ready replicas.
    pub ready: i64,
    /// The fingerprint in the pod template's restart annotation.
    pub restarted_for: Option<String>,
    /// Counts, for messages.
    pub summary: String,
}

impl Progress {
    pub(super) fn of(kind: WorkloadKind, obj: &DynamicObject) -> Progress {
        let spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
        let st = obj.data.get("status").cloned().unwrap_or(Value::Null);
        let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
        let generation = obj.metadata.generation.unwrap_or(0);
        let observed = n(&st, "observedGeneration");
        let restarted_for = spec
            .pointer("/template/metadata/annotations")
            .and_then(|a| a.get(RESTARTED_FOR))
            .and_then(Value::as_str)
            .map(String::from);
        let unseen = (observed < generation)
            .then(|| "its controller has not seen its last change yet".to_string());
        let mut p = Progress {
            restarted_for,
            ..Default::default()
        };
        match kind {
            WorkloadKind::Deployment => {
                let want = spec.get("replicas").and_then(Value::as_i64).unwrap_or(1);
                let (total, updated, available) = (
                    n(&st, "replicas"),
                    n(&st, "updatedReplicas"),
                    n(&st, "availableReplicas"),
                );
                p.ready = n(&st, "readyReplicas");
                p.summary = format!(
                    "{updated} of {want} replicas updated, {available} available, {} old pending termination",
                    (total - updated).max(0)
                );
                let paused = spec.get("paused").and_then(Value::as_bool) == Some(true);
                p.mid_rollout = unseen.or_else(|| {
                    if paused {
                        Some("it is paused".into())
                    } else if updated < want || total > updated {
                        Some(p.summary.clone())
                    } else {
                        None
                    }
                });
                p.complete = observed >= generation
                    && updated >= want
                    && total <= updated
                    && available >= updated;
                let deadline = st
                    .get("conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded"
                    });
                if deadline && observed >= generation {
                    p.failed = Some("within its progressDeadlineSeconds".into());
                }
            }
            WorkloadKind::StatefulSet => {
                let want = spec.get("replicas").and_then(Value::as_i64).unwrap_or(1);
                let (updated, ready) = (n(&st, "updatedReplicas"), n(&st, "readyReplicas"));
                p.ready = ready;
                let revisions_differ = st.get("currentRevision") != st.get("updateRevision");
                p.summary = format!("{updated} of {want} replicas updated, {ready} ready");
                p.mid_rollout = unseen
                    .or_else(|| (updated < want || revisions_differ).then(|| p.summary.clone()));
                p.complete =
                    observed >= generation && updated >= want && ready >= want && !revisions_differ;
                if spec.pointer("/updateStrategy/type").and_then(Value::as_str) == Some("OnDelete")
                {
                    p.summary.push_str(
                        " (updateStrategy OnDelete: its pods are replaced only when deleted)",
                    );
                }
            }
            WorkloadKind::DaemonSet => {
                let want = n(&st, "desiredNumberScheduled");
                let (updated, available) =
                    (n(&st, "updatedNumberScheduled"), n(&st, "numberAvailable"));
                p.ready = n(&st, "numberReady");
                p.summary = format!("{updated} of {want} pods updated, {available} available");
                p.mid_rollout = unseen.or_else(|| (updated < want).then(|| p.summary.clone()));
                p.complete = observed >= generation && updated >= want && available >= want;
            }
        }
        p
    }
}

/// `Deployment web, StatefulSet db`.
fn names(workloads: &[WorkloadRef]) -> String {
    workloads
        .iter()
        .map(|w| format!("{} {}", w.kind.as_str(), w.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One clause per workload: `Deployment web: rolled out in 12s`.
fn summary(workloads: &[WorkloadRolloutStatus]) -> String {
    status::truncate(
        &workloads
            .iter()
            .map(|w| {
                let what = if w.message.is_empty() {
                    w.state.to_lowercase()
                } else {
                    w.message.clone()
                };
                format!("{} {}: {what}", w.kind, w.name)
            })
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// An Event when a workload changes state in a way someone may want to know.
async fn announce(ctx: &Context, cr: &CertificateRequest, w: &WorkloadRolloutStatus) {
    let (kind, reason) = match w.state.as_str() {
        state::RESTARTED => (EventType::Normal, "WorkloadRestarted"),
        state::SKIPPED => (EventType::Normal, "WorkloadSkipped"),
        state::ROLLED_OUT => (EventType::Normal, "WorkloadRolledOut"),
        state::WAITING => (EventType::Warning, "WorkloadBusy"),
        state::TIMED_OUT => (EventType::Warning, "RolloutTimedOut"),
        state::NOT_FOUND => (EventType::Warning, "WorkloadNotFound"),
        _ => return,
    };
    tracing::info!(namespace = %cr.namespace().unwrap_or_default(), request = %cr.name_any(), kind = %w.kind, workload = %w.name, state = %w.state, "{}", w.message);
    publish(
        ctx,
        cr,
        kind,
        reason,
        "Rollout",
        status::truncate(&format!("{} {}: {}", w.kind, w.name, w.message)),
    )
    .await;
}

/// Sets `RolledOut`; a change of reason is logged.
async fn set_condition(
    _ctx: &Context,
    cr: &CertificateRequest,
    status: &mut CertificateRequestStatus,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let before = status::get(&status.conditions, status::ROLLED_OUT).map(|c| c.reason.clone());
    if before.as_deref() != Some(reason) {
        tracing::info!(namespace = %cr.namespace().unwrap_or_default(), request = %cr.name_any(), reason, "{message}");
    }
    status::set(
        &mut status.conditions,
        status::ROLLED_OUT,
        ok,
        reason,
        &status::truncate(message),
        generation,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(kind: WorkloadKind, name: &str) -> WorkloadRef {
        WorkloadRef {
            kind,
            name: name.into(),
        }
    }

    #[test]
    fn pods_are_attributed_by_the_names_their_controllers_give_them() {
        let web = w(WorkloadKind::Deployment, "web");
        assert!(pod_of(&web, "web-5d8c7b9f4-x2x7z"));
        assert!(
            !pod_of(&web, "web-api-5d8c7b9f4-x2x7z"),
            "another Deployment"
        );
        assert!(!pod_of(&web, "web-x2x7z"), "a DaemonSet's pod");
        assert!(!pod_of(&web, "webapp-5d8c7b9f4-x2x7z"));
        let db = w(WorkloadKind::StatefulSet, "db");
        assert!(pod_of(&db, "db-0") && pod_of(&db, "db-12"));
        assert!(!pod_of(&db, "db-x") && !pod_of(&db, "db-"));
        let agent = w(WorkloadKind::DaemonSet, "agent");
        assert!(pod_of(&agent, "agent-b7x2k"));
        assert!(!pod_of(&agent, "agent-5d8c7b9f4-x2x7z"));
    }

    fn deployment(spec: Value, status: Value, generation: i64) -> DynamicObject {
        let mut o = DynamicObject::new("web", &resource(WorkloadKind::Deployment));
        o.metadata.generation = Some(generation);
        o.data = json!({"spec": spec, "status": status});
        o
    }

    #[test]
    fn a_deployment_is_mid_rollout_until_every_replica_runs_its_template() {
        let spec = json!({"replicas": 3});
        let done = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3,
                          "readyReplicas": 3, "availableReplicas": 3});
        let p = Progress::of(WorkloadKind::Deployment, &deployment(spec.clone(), done, 2));
        assert!(
            p.complete && p.mid_rollout.is_none() && p.ready == 3,
            "{p:?}"
        );

        let rolling = json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1,
                             "readyReplicas": 3, "availableReplicas": 3});
        let p = Progress::of(
            WorkloadKind::Deployment,
            &deployment(spec.clone(), rolling, 2),
        );
        assert!(!p.complete);
        assert_eq!(
            p.mid_rollout.as_deref(),
            Some("1 of 3 replicas updated, 3 available, 3 old pending termination")
        );

        let unseen = json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3,
                            "availableReplicas": 3});
        let p = Progress::of(WorkloadKind::Deployment, &deployment(spec, unseen, 2));
        assert!(!p.complete && p.mid_rollout.is_some());
    }
}
