//! A probe round: every admitted endpoint of a Service probed in batches, one
//! probe pod (and NetworkPolicy) per batch in the operator's namespace;
//! launching and removing those pods, and sweeping those whose request is
//! gone. Uses the probe state's bookkeeping, the probe pod spec and the kube
//! client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::ProbeState;
use super::endpoints::{Endpoints, RefusedEndpoint};
use super::verdict::set_verified;
use crate::api::{CertificateRequest, CertificateRequestStatus};
use crate::bundle::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::events::Kind as EventType;
use crate::probe::pod::{self, ProbePod};
use crate::probe::{ProbeReport, ProbeResult, Reason};
use crate::reconciler::{Context, Error, publish, request_key};
use crate::sensitive::SecretString;

/// One probe of every ready endpoint of a Service, in batches of at most
/// [`pod::MAX_ENDPOINTS`], one probe pod after another.
#[derive(Clone, Debug)]
pub(super) struct Round {
    pub(super) service: String,
    /// The issued certificate's fingerprint the endpoints are compared with.
    pub(super) fingerprint: String,
    pub(super) requested: Option<String>,
    /// Every admitted endpoint when the round began.
    endpoints: Vec<SocketAddr>,
    /// Endpoints refused when the round began: reported, never probed.
    refused: Vec<ProbeResult>,
    /// The Pod behind each endpoint (`ip:port` → name), as the EndpointSlices said.
    pods: BTreeMap<String, String>,
    /// `ProbeState::seq` before the endpoints were read.
    pub(super) seq: u64,
    /// How many of `endpoints` earlier batches covered.
    done: usize,
    results: Vec<ProbeResult>,
    /// Endpoints of earlier batches that a pod did not report on.
    unreported: usize,
    probed_at: Option<Timestamp>,
    /// The slot (see [`pod::slot_names`]) of the current batch's pod.
    pub(super) slot: usize,
    /// UID of the current batch's pod, once it was created: only that pod's
    /// report counts, never another pod's that took the name.
    pub(super) pod_uid: Option<String>,
    /// The secret the current batch's report must echo (`Debug` redacts it).
    pub(super) nonce: SecretString,
    /// When the current batch's pod was created (local clock).
    pub(super) batch_started: Timestamp,
}

impl Round {
    pub(super) fn new(
        service: &str,
        fingerprint: &str,
        requested: Option<String>,
        endpoints: Endpoints,
        seq: u64,
        slot: usize,
    ) -> Round {
        let pods = endpoints
            .admitted
            .iter()
            .filter_map(|e| Some((e.addr.to_string(), e.pod.clone()?)))
            .collect();
        let refused = endpoints.refused.iter().map(refused_result).collect();
        let endpoints = endpoints.admitted.into_iter().map(|e| e.addr).collect();
        Round {
            service: service.to_string(),
            fingerprint: fingerprint.to_string(),
            requested,
            endpoints,
            refused,
            pods,
            seq,
            done: 0,
            results: Vec::new(),
            unreported: 0,
            probed_at: None,
            slot,
            pod_uid: None,
            nonce: SecretString::default(),
            batch_started: Timestamp::now(),
        }
    }

    /// The endpoints of the current batch.
    pub(super) fn batch(&self) -> &[SocketAddr] {
        let end = (self.done + pod::MAX_ENDPOINTS).min(self.endpoints.len());
        &self.endpoints[self.done.min(end)..end]
    }

    /// Takes the current batch's report, keeping only results for the batch's
    /// endpoints, and moves on to the next batch in the other slot.
    pub(super) fn record(&mut self, report: ProbeReport) {
        let batch = self.batch().to_vec();
        let mut reported = report.endpoints;
        for addr in &batch {
            let address = addr.to_string();
            match reported.iter().position(|r| r.address == address) {
                Some(i) => {
                    let mut result = reported.swap_remove(i);
                    // The name comes from the EndpointSlice, never from the report.
                    result.pod = self.pods.get(&address).cloned();
                    self.results.push(result);
                }
                None => self.unreported += 1,
            }
        }
        self.done += batch.len();
        self.probed_at = Some(report.probed_at);
        self.slot = (self.slot + 1) % pod::SLOTS;
        self.pod_uid = None;
    }

    pub(super) fn finished(&self) -> bool {
        self.done >= self.endpoints.len()
    }

    /// The whole round as one report: every endpoint's result (the refused
    /// ones last), and how many went unreported.
    pub(super) fn report(&self) -> ProbeReport {
        ProbeReport {
            endpoints: [self.results.clone(), self.refused.clone()].concat(),
            probed_at: self.probed_at.unwrap_or_else(Timestamp::now),
            omitted_endpoints: self.unreported
                + (self.endpoints.len() - self.done.min(self.endpoints.len())),
            nonce: None,
        }
    }
}

/// A refused endpoint as a result: what the request's own EndpointSlice said
/// (the address) and why it was not probed; nothing was connected to.
pub(super) fn refused_result(e: &RefusedEndpoint) -> ProbeResult {
    ProbeResult {
        address: e.addr.to_string(),
        pod: None,
        verified: false,
        served_fingerprint_sha256: None,
        matches_issued: None,
        tls_version: None,
        cipher_suite: None,
        handshake_millis: None,
        message: format!("not probed: {}", e.why),
        reason: Reason::EndpointRefused,
        serial: None,
        not_after: None,
        chain_length: 0,
    }
}

/// Creates the probe pod (and its NetworkPolicy) for the round's current
/// batch, and keeps the round; returns when to look at the pod.
#[allow(clippy::too_many_arguments)]
pub(super) async fn start_batch(
    cr: &CertificateRequest,
    ctx: &Context,
    state: &ProbeState,
    names: &[String; pod::SLOTS],
    status: &mut CertificateRequestStatus,
    mut round: Round,
    ca_pem: &str,
    timeout: Duration,
    interval: Duration,
) -> Result<Option<Duration>, Error> {
    let issued = round.fingerprint.clone();
    let ns = cr.namespace().unwrap_or_default();
    let pod_ns = state.config.namespace.as_str();
    let oref = request_key(cr);
    let name = &names[round.slot];
    let server_name = format!("{}.{ns}.svc", round.service);
    let batch = round.batch().to_vec();
    round.nonce = SecretString::from(pod::new_nonce());
    let probe_pod = ProbePod {
        request: cr,
        namespace: pod_ns,
        name,
        image: &state.config.image,
        endpoints: &batch,
        server_name: &server_name,
        ca_pem,
        expect_fingerprint: &issued,
        handshake_timeout: timeout,
        nonce: round.nonce.expose(),
    }
    .build();
    ctx.leadership.check()?;
    if state.config.network_policy {
        // The fence goes up before the pod exists.
        let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), pod_ns);
        let mut policy = pod::network_policy(cr, pod_ns, name, &batch);
        let pp = PostParams {
            field_manager: Some(crate::reconciler::MANAGER.into()),
            ..Default::default()
        };
        match policies.create(&pp, &policy).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let live = policies.get(name).await?;
                policy.metadata.resource_version = live.metadata.resource_version;
                policies.replace(name, &pp, &policy).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), pod_ns);
    let created = pods
        .create(
            &PostParams {
                field_manager: Some(crate::reconciler::MANAGER.into()),
                ..Default::default()
            },
            &probe_pod,
        )
        .await;
    match created {
        Ok(p) => {
            tracing::debug!(namespace = %ns, request = %cr.name_any(), pod_namespace = %pod_ns, pod = %name, endpoints = batch.len(), "started probe pod");
            round.pod_uid = p.uid();
            round.batch_started = Timestamp::now();
            state.save_round(&oref, Some(round));
            Ok(Some(pod::deadline(timeout)))
        }
        // The name is still taken by a pod on its way out: try again shortly.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            state.save_round(&oref, Some(round));
            Ok(Some(Duration::from_secs(2)))
        }
        Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => {
            state.save_round(&oref, None);
            let why = format!("failed to create probe pod {name}: {}", e.message);
            if set_verified(cr, status, false, "ProbeFailed", &why) {
                publish(ctx, cr, EventType::Warning, "ProbeFailed", "Probe", why).await;
            }
            Ok(Some(interval))
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes a probe pod and its NetworkPolicy; gone already is fine.
pub(super) async fn delete_pod(
    ctx: &Context,
    state: &ProbeState,
    ns: &str,
    name: &str,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    match pods.delete(name, &DeleteParams::background()).await {
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    if state.config.network_policy {
        let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), ns);
        match policies.delete(name, &DeleteParams::background()).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Deletes the request's probe pods that no round is waiting for.
pub(super) async fn delete_leftovers(
    ctx: &Context,
    state: &ProbeState,
    ns: &str,
    names: &[String; pod::SLOTS],
) -> Result<(), Error> {
    for name in names {
        let leftover = state
            .pods
            .get(&ObjectRef::new(name).within(ns))
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none());
        if leftover {
            ctx.leadership.check()?;
            delete_pod(ctx, state, ns, name).await?;
        }
    }
    Ok(())
}

/// Deletes probe pods (and NetworkPolicies) whose request is gone: deleted,
/// or deleted and created again (another uid). Probe pods live in the
/// operator's namespace, so no ownerReference lets the garbage collector do
/// this. Runs once the request and pod caches are filled, then periodically;
/// only the leader deletes.
pub async fn sweep(ctx: &Context, requests: &Store<CertificateRequest>) -> Result<usize, Error> {
    let Some(state) = &ctx.probe else {
        return Ok(0);
    };
    let pod_ns = state.config.namespace.as_str();
    let wanted = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        pod::request_of(meta).is_some_and(|(ns, name, uid)| {
            requests
                .get(&ObjectRef::new(&name).within(&ns))
                .is_some_and(|cr| cr.uid().as_deref() == Some(uid.as_str()))
        })
    };
    let mut deleted = 0;
    for p in state.pods.state() {
        if p.metadata.deletion_timestamp.is_some() || wanted(&p.metadata) {
            continue;
        }
        ctx.leadership.check()?;
        tracing::info!(pod_namespace = %pod_ns, pod = %p.name_any(), "deleting a probe pod whose request is gone");
        delete_pod(ctx, state, pod_ns, &p.name_any()).await?;
        deleted += 1;
    }
    if state.config.network_policy {
        // A policy is created before its pod: one whose request is gone, or
        // whose pod never came (a crash in between) and is old, is a leftover.
        let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), pod_ns);
        let selector = format!(
            "{}={},{MANAGED_BY_LABEL}={MANAGED_BY}",
            pod::COMPONENT_LABEL,
            pod::COMPONENT
        );
        for np in policies
            .list(&ListParams::default().labels(&selector))
            .await?
        {
            let name = np.name_any();
            let old = np
                .metadata
                .creation_timestamp
                .as_ref()
                .is_some_and(|t| Timestamp::now().duration_since(t.0).as_secs() > 300);
            let pod_exists = state
                .pods
                .get(&ObjectRef::new(&name).within(pod_ns))
                .is_some();
            if np.metadata.deletion_timestamp.is_some()
                || (wanted(&np.metadata) && (pod_exists || !old))
            {
                continue;
            }
            ctx.leadership.check()?;
            tracing::info!(pod_namespace = %pod_ns, policy = %name, "deleting a leftover probe NetworkPolicy");
            match policies.delete(&name, &DeleteParams::background()).await {
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
                Ok(_) => deleted += 1,
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::probe::Reason;
    use crate::reconciler::probe::verdict::tests::{report, result};
    use crate::reconciler::probe::verdict::{bounded_status, verdict};

    /// A probe pod's report on the given endpoints, one of them stale.
    fn batch_report(batch: &[SocketAddr], stale: &str) -> ProbeReport {
        report(
            batch
                .iter()
                .map(|a| {
                    let reason = if a.to_string() == stale {
                        Reason::StaleCertificate
                    } else {
                        Reason::Verified
                    };
                    result(&a.to_string(), reason)
                })
                .collect(),
        )
    }

    pub(crate) fn round_of(n: u8) -> Round {
        let admitted = (1..=n)
            .map(|i| super::super::ReadyEndpoint {
                addr: SocketAddr::from(([10, 0, 0, i], 8443)),
                pod: Some(format!("web-{i}")),
            })
            .collect();
        let endpoints = Endpoints {
            admitted,
            refused: Vec::new(),
        };
        Round::new("web", "ab", None, endpoints, 0, 0)
    }

    #[test]
    fn every_one_of_25_endpoints_is_probed_in_bounded_batches_and_one_stale_fails_the_round() {
        let mut round = round_of(25);
        let stale = "10.0.0.23:8443";
        let mut sizes = Vec::new();
        let mut slots = Vec::new();
        while !round.finished() {
            let batch = round.batch().to_vec();
            sizes.push(batch.len());
            slots.push(round.slot);
            round.record(batch_report(&batch, stale));
        }
        assert_eq!(sizes, [8, 8, 8, 1], "at most MAX_ENDPOINTS per pod");
        assert_eq!(
            slots,
            [0, 1, 0, 1],
            "batches alternate between the two pod names"
        );
        let report = round.report();
        assert_eq!(report.endpoints.len(), 25);
        assert_eq!(report.omitted_endpoints, 0);
        let (ok, reason, message) = verdict(&report);
        assert!(!ok);
        assert_eq!(reason, "StaleCertificate");
        assert!(
            message.starts_with(
                "1 of 25 endpoints fail: 10.0.0.23:8443 (pod web-23): StaleCertificate"
            ),
            "{message}"
        );
        let status = bounded_status(&report);
        assert_eq!(status.endpoints.len(), 25);
        let stale = status
            .endpoints
            .iter()
            .find(|e| e.address == stale)
            .unwrap();
        assert_eq!(
            stale.pod.as_deref(),
            Some("web-23"),
            "the failing replica is named"
        );
    }

    #[test]
    fn a_round_is_verified_only_when_every_endpoint_was_reported_verified() {
        let mut round = round_of(12);
        let batch = round.batch().to_vec();
        round.record(batch_report(&batch, ""));
        assert!(!round.finished());
        let (ok, _, message) = verdict(&round.report());
        assert!(!ok, "an unfinished round is not verified");
        assert!(
            message.contains("4 endpoints were not reported"),
            "{message}"
        );

        // A pod that reports on fewer endpoints than it was given (or on others) does not count them.
        let batch = round.batch().to_vec();
        let mut partial = batch_report(&batch[..1], "");
        partial
            .endpoints
            .push(result("10.9.9.9:1", Reason::Verified));
        round.record(partial);
        assert!(round.finished());
        let report = round.report();
        assert_eq!(report.endpoints.len(), 9);
        let (ok, _, message) = verdict(&report);
        assert!(!ok);
        assert!(
            message.contains("3 endpoints were not reported"),
            "{message}"
        );

        let mut round = round_of(12);
        while !round.finished() {
            let batch = round.batch().to_vec();
            round.record(batch_report(&batch, ""));
        }
        let (ok, _, message) = verdict(&round.report());
        assert!(ok, "{message}");
        assert_eq!(message, "all 12 endpoints serve the issued certificate");
    }
}
