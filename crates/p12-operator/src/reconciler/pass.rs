//! One pass over one request: plan → CA → converge the Secret → rollout → probe → status,
//! and what its outcome means (requeue, back off, or report a refusal the user
//! must fix). Uses `context`, `secret_write`, `probe` and `record`.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use tracing::Instrument;

use super::context::{Context, request_key};
use super::record::{publish, write_status};
use super::secret_write::converge;
use super::{Error, probe, rollout, status};
use crate::api::CertificateRequest;
use crate::events::Kind as EventType;
use crate::plan;

/// Per-request exponential back-off after `failures` failed passes in a row:
/// 10 s, 20 s, 40 s … up to 5 min.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs((5u64 << failures.min(6)).min(300))
}

/// A failure the user can fix: reported in status and as an Event.
pub(super) struct Refusal {
    pub(super) reason: &'static str,
    pub(super) message: String,
    pub(super) retry: bool,
}

pub(super) fn refuse(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
        retry: true,
    }
}

/// One reconcile pass for one request.
pub async fn reconcile(cr: Arc<CertificateRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    if cr.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if !ctx.secrets_synced() {
        // Until every Secret has been listed once, "not in the index" cannot mean "absent".
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    // Wait for a slot, first come first served; a draining process stops waiting.
    let gate = ctx.clone();
    let mut draining = gate.draining.subscribe();
    let _slot = tokio::select! {
        slot = gate.passes.acquire() => slot.map_err(|e| Error::Task(e.to_string()))?,
        _ = draining.wait_for(|d| *d) => return Ok(Action::requeue(Duration::from_secs(1))),
    };
    let span = tracing::info_span!("reconcile", namespace = %cr.namespace().unwrap_or_default(), request = %cr.name_any());
    let metrics = ctx.metrics.clone();
    metrics.reconciles.inc();
    metrics.in_flight.inc();
    let started = std::time::Instant::now();
    // A panic in one request's pass must not take the controller down with it.
    // Boxed: the waiting part of this future stays small while thousands wait.
    let result = std::panic::AssertUnwindSafe(Box::pin(reconcile_inner(cr, ctx).instrument(span)))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Panicked(what))
        });
    metrics.in_flight.dec();
    metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(cr: Arc<CertificateRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    crate::faults::panic_point(&cr.name_any());
    let oref = request_key(cr.as_ref());

    let outcome = async {
        let plan = match plan::plan(&cr, &ctx.policy) {
            Ok(p) => p,
            Err(e) => {
                return Ok(Err(Refusal {
                    reason: e.reason,
                    message: e.message,
                    retry: false,
                }));
            }
        };
        // Policy before anything else: a refused request costs no key and no call.
        match ctx.admission.check(&cr, &plan) {
            super::Verdict::Admitted => {}
            super::Verdict::NotSynced => {
                return Ok(Ok(Action::requeue(Duration::from_millis(500))));
            }
            super::Verdict::Refused(r) => {
                return Ok(Err(Refusal {
                    reason: crate::admission::Refusal::REASON,
                    message: r.message,
                    retry: false,
                }));
            }
        }
        let ca = match ctx.ca() {
            Ok(ca) => ca,
            Err(p) => return Ok(Err(refuse(p.reason, p.message))),
        };
        // Names the CA's chain may not certify are refused before any key exists;
        // a change of CA revisits every request.
        if let Err(v) = ca.current().check_leaf(&plan.leaf) {
            return Ok(Err(Refusal {
                reason: v.reason(),
                message: v.to_string(),
                retry: false,
            }));
        }
        // A pass that failed before reads the Secret first instead of trusting
        // the index: a foreign Secret is then found before any key is made.
        let force_get = ctx.failures(&oref) > 0;
        let converged = match converge(&cr, &ctx, &plan, &ca, force_get).await {
            // The Secret changed under us (or the index lagged): once more,
            // from what is really there.
            Err(Error::SecretRaced) => converge(&cr, &ctx, &plan, &ca, true).await,
            other => other,
        };
        match converged? {
            Ok((mut status, renewal)) => {
                let rolling = rollout::step(&cr, &ctx, &mut status).await?;
                let next_probe = probe::step(
                    &cr,
                    &ctx,
                    &mut status,
                    &ca.bundle().pem(),
                    rolling.hold_probe,
                )
                .await?;
                write_status(&ctx, &cr, status).await?;
                let renew_in = requeue_after(renewal);
                let next = next_probe.into_iter().chain(rolling.next).min();
                Ok(Ok(Action::requeue(
                    next.map_or(renew_in, |p| p.min(renew_in)),
                )))
            }
            Err(r) => Ok::<_, Error>(Err(r)),
        }
    }
    .await;
    // Missing permissions are something a person must fix: say so on the request.
    let outcome = match outcome {
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 403 => Err(refuse(
            "Forbidden",
            format!(
                "the operator is not allowed to do what this request needs ({}); check the RBAC rules of its ServiceAccount (docs/install.md lists them)",
                e.message
            ),
        )),
        other => other?,
    };

    match outcome {
        Ok(action) => {
            ctx.failures.lock().unwrap().remove(&oref);
            Ok(action)
        }
        Err(refusal) => {
            ctx.metrics
                .reconcile_failures
                .get_or_create(&crate::metrics::CategoryLabels {
                    category: refusal.reason.to_string(),
                })
                .inc();
            let failures = ctx.failures(&oref) + 1;
            ctx.failures.lock().unwrap().insert(oref, failures);
            report_refusal(&cr, &ctx, &refusal, failures).await?;
            Ok(if refusal.retry {
                Action::requeue(backoff(failures))
            } else {
                Action::await_change()
            })
        }
    }
}

fn requeue_after(t: Timestamp) -> Duration {
    let secs = t.duration_since(Timestamp::now()).as_secs_f64().max(1.0);
    // Tokio timers handle long sleeps; cap so a changed clock is noticed daily.
    Duration::from_secs_f64(secs.min(86_400.0))
}

async fn report_refusal(
    cr: &CertificateRequest,
    ctx: &Context,
    r: &Refusal,
    failures: u32,
) -> Result<(), Error> {
    let mut status = ctx.current_status(cr).unwrap_or_default();
    let previous = status::get(&status.conditions, status::READY)
        .map(|c| (c.reason.clone(), c.message.clone()));
    // A policy that stops allowing an issued request does not take its
    // certificate away: it stays until it expires, and is not renewed.
    let still_valid = status
        .not_after
        .as_ref()
        .filter(|t| t.0 > Timestamp::now())
        .filter(|_| {
            r.reason == crate::admission::Refusal::REASON
                && status::get(&status.conditions, status::ISSUED)
                    .is_some_and(|c| c.status == "True")
        });
    let message = match still_valid {
        Some(until) => status::truncate(&format!(
            "{}. The certificate issued before stays in Secret {} until it expires at {}, and is not renewed while no policy allows the request",
            r.message.trim_end_matches('.'),
            cr.spec.secret_name,
            until.0
        )),
        None => status::truncate(&r.message),
    };
    let generation = cr.metadata.generation;
    status::set(
        &mut status.conditions,
        status::READY,
        false,
        r.reason,
        &message,
        generation,
    );
    if still_valid.is_none() {
        status::set(
            &mut status.conditions,
            status::ISSUED,
            false,
            r.reason,
            &message,
            generation,
        );
    }
    status.failed_attempts = Some(failures as i32);
    status.last_failure_time = Some(Time(Timestamp::now()));
    let changed = previous != Some((r.reason.to_string(), message.clone()));
    if changed {
        tracing::warn!(namespace = %cr.namespace().unwrap_or_default(), request = %cr.name_any(), reason = r.reason, message = %message, "request refused");
        publish(ctx, cr, EventType::Warning, r.reason, "Issue", message).await;
        write_status(ctx, cr, status).await?;
    }
    Ok(())
}

/// Transient errors: back off per request, exponentially.
pub fn error_policy(cr: Arc<CertificateRequest>, err: &Error, ctx: Arc<Context>) -> Action {
    let oref = request_key(cr.as_ref());
    if matches!(err, Error::NotLeader(_)) {
        return Action::await_change();
    }
    ctx.metrics
        .reconcile_failures
        .get_or_create(&crate::metrics::CategoryLabels {
            category: err.category().into(),
        })
        .inc();
    let failures = ctx.failures(&oref) + 1;
    ctx.failures.lock().unwrap().insert(oref, failures);
    tracing::warn!(namespace = %cr.namespace().unwrap_or_default(), request = %cr.name_any(), category = err.category(), error = %err, "reconcile failed");
    Action::requeue(backoff(failures))
}
