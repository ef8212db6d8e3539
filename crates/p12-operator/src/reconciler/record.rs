//! What a pass tells the outside: the status patch (once, only when changed),
//! Events (bounded, never holding up a write) and per-request metrics. Uses
//! `context`; decides nothing about the Secret.

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::context::{Context, MANAGER, request_key};
use super::{Error, status};
use crate::api::{CertificateRequest, CertificateRequestStatus};
use crate::events::Kind as EventType;

/// Events sent at once (client-go's broadcaster queues 1,000 and drops the rest).
pub(super) const EVENTS_IN_FLIGHT: usize = 1024;

pub(crate) async fn publish(
    ctx: &Context,
    cr: &CertificateRequest,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    if !ctx.leadership.is_leader() {
        return;
    }
    // Events are for people; they must not hold up the Secret or status
    // writes, nor pile up without bound while the API server is slow.
    let Ok(permit) = ctx.events_in_flight.clone().try_acquire_owned() else {
        ctx.metrics.events_dropped.inc();
        tracing::debug!(reason, "dropped an event: too many are being sent");
        return;
    };
    let note = status::truncate(&note);
    let (reason, action) = (reason.to_string(), action.to_string());
    let (recorder, reference) = (ctx.recorder.clone(), cr.object_ref(&()));
    tokio::spawn(async move {
        if let Err(e) = recorder
            .publish(&reference, type_, &reason, &action, &note)
            .await
        {
            tracing::warn!(error = %e, "failed to publish an event");
        }
        drop(permit);
    });
}

pub(super) async fn write_status(
    ctx: &Context,
    cr: &CertificateRequest,
    status: CertificateRequestStatus,
) -> Result<(), Error> {
    if ctx.current_status(cr).as_ref() == Some(&status) {
        return Ok(());
    }
    ctx.leadership.check()?;
    let api: Api<CertificateRequest> =
        Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "p12-operator.io/v1alpha1",
        "kind": "CertificateRequest",
        "status": status,
    });
    let written = api
        .patch_status(
            &cr.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
    if let Some(version) = written
        .resource_version()
        .and_then(|v| v.parse::<u64>().ok())
    {
        ctx.written
            .lock()
            .unwrap()
            .insert(request_key(cr), (version, status));
    }
    Ok(())
}
