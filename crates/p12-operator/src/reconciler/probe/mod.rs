//! The controller's probe step: decides when a request's Service is probed and
//! keeps what the controller remembers between passes (which request probes
//! which Service, endpoint changes, rounds in progress). One entry, [`step`];
//! [`sweep`] removes probe pods whose request is gone. Probe pods run in the
//! operator's own namespace; their reports count only from the pod the
//! operator created (its uid) and only with that pod's nonce.
//! Uses its children (endpoints, rounds, verdicts), the reconciler's context,
//! and the probe pod, admission and report types of `crate::probe`.

mod endpoints;
mod round;
mod verdict;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use crate::events::Kind as EventType;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::{Context, Error, publish, request_key, status};
use crate::api::{CertificateRequest, CertificateRequestStatus, ProbeStatus};
use crate::probe::ProbeReport;
use crate::probe::admission::{AdmissionRules, IpRange};
use crate::probe::pod;
use round::{Round, delete_leftovers, delete_pod, refused_result, start_batch};
use verdict::{addresses, bounded_status, set_verified};

pub use endpoints::{
    Endpoints, ReadyEndpoint, RefusedEndpoint, endpoints_in, port_matches, ready_endpoints,
};
pub use round::sweep;
pub use verdict::{MAX_STATUS_ENDPOINTS, verdict};

/// On a request: set to any new value to probe now; `p12-operator` tools use it.
pub const PROBE_REQUESTED: &str = "p12-operator.io/probe-requested-at";
/// The signer back-dates notBefore by this much; issuance time is notBefore + this.
const BACKDATE: SignedDuration = SignedDuration::from_secs(60);
const MIN_INTERVAL: Duration = Duration::from_secs(30);

/// How probes are run.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Image of probe pods (the operator's own).
    pub image: String,
    /// Time given to workloads to reload a renewed certificate before probing.
    pub grace: Duration,
    /// Confine each probe pod with a NetworkPolicy to the endpoints it probes.
    pub network_policy: bool,
    /// The operator's own namespace: the only one probe pods run in.
    pub namespace: String,
    /// The cluster's pod address ranges (`--pod-cidr`); empty: unknown.
    pub pod_ranges: Vec<IpRange>,
    /// Addresses of the API server known at start-up (the address the
    /// operator talks to, `KUBERNETES_SERVICE_HOST`).
    pub api_server: Vec<IpAddr>,
}

/// What the probe step needs besides the request.
pub struct ProbeState {
    pub config: ProbeConfig,
    pub pods: Store<Pod>,
    /// (namespace, Service) → requests probing it; no empty sets.
    services: Mutex<HashMap<ServiceKey, HashSet<ObjectRef<CertificateRequest>>>>,
    /// Request → the Service it is listed under in `services`.
    targets: Mutex<HashMap<ObjectRef<CertificateRequest>, ServiceKey>>,
    /// Requests whose Service's endpoints changed, with the `seq` of the
    /// latest change: a probe clears only marks older than its endpoint list.
    changed: Mutex<HashMap<ObjectRef<CertificateRequest>, u64>>,
    /// Counts endpoint changes.
    seq: AtomicU64,
    /// Probe rounds in progress.
    rounds: Mutex<HashMap<ObjectRef<CertificateRequest>, Round>>,
    /// The API server's addresses last read from the `kubernetes` Service.
    api_server: RwLock<Vec<IpAddr>>,
}

type ServiceKey = (String, String);

impl ProbeState {
    pub fn new(config: ProbeConfig, pods: Store<Pod>) -> Self {
        ProbeState {
            config,
            pods,
            services: Mutex::default(),
            targets: Mutex::default(),
            changed: Mutex::default(),
            seq: AtomicU64::new(0),
            rounds: Mutex::default(),
            api_server: RwLock::default(),
        }
    }

    /// What an endpoint is judged by ([`crate::probe::admission::admit_endpoint`]).
    pub fn admission_rules(&self) -> AdmissionRules {
        let mut api_server = self.config.api_server.clone();
        api_server.extend(self.api_server.read().unwrap().iter().copied());
        AdmissionRules {
            pod_ranges: self.config.pod_ranges.clone(),
            api_server,
        }
    }

    /// Remembers the API server's addresses read from the cluster.
    pub fn set_api_server(&self, addresses: Vec<IpAddr>) {
        *self.api_server.write().unwrap() = addresses;
    }

    /// Requests to revisit when an EndpointSlice of a Service changes.
    pub fn endpoints_changed(
        &self,
        namespace: &str,
        service: &str,
    ) -> Vec<ObjectRef<CertificateRequest>> {
        let refs: Vec<_> = self
            .services
            .lock()
            .unwrap()
            .get(&(namespace.to_string(), service.to_string()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        if !refs.is_empty() {
            let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
            let mut changed = self.changed.lock().unwrap();
            for r in &refs {
                changed.insert(r.clone(), seq);
            }
        }
        refs
    }

    /// Lists the request under the Service it probes (`None`: under none),
    /// removing it from the one it probed before.
    fn track(&self, request: &ObjectRef<CertificateRequest>, target: Option<ServiceKey>) {
        let mut targets = self.targets.lock().unwrap();
        let old = match &target {
            Some(key) => targets.insert(request.clone(), key.clone()),
            None => targets.remove(request),
        };
        if old.is_some() && old == target {
            return;
        }
        let mut services = self.services.lock().unwrap();
        if let Some(old) = old
            && let Some(set) = services.get_mut(&old)
        {
            set.remove(request);
            if set.is_empty() {
                services.remove(&old);
            }
        }
        if let Some(key) = target {
            services.entry(key).or_default().insert(request.clone());
        }
    }

    /// Drops everything remembered about a request (deleted, or no longer probing).
    pub fn forget(&self, request: &ObjectRef<CertificateRequest>) {
        self.track(request, None);
        self.changed.lock().unwrap().remove(request);
        self.rounds.lock().unwrap().remove(request);
    }

    /// Probes the request's Service as soon as its grace allows (a rollout
    /// just finished), as an endpoint change would.
    pub fn probe_soon(&self, request: &ObjectRef<CertificateRequest>) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.changed.lock().unwrap().insert(request.clone(), seq);
    }

    fn is_changed(&self, request: &ObjectRef<CertificateRequest>) -> bool {
        self.changed.lock().unwrap().contains_key(request)
    }

    /// Clears the request's mark unless it was set after `seq`: a change that
    /// arrived after the endpoints were read still needs a probe.
    fn clear_changed(&self, request: &ObjectRef<CertificateRequest>, seq: u64) {
        let mut changed = self.changed.lock().unwrap();
        if changed.get(request).is_some_and(|s| *s <= seq) {
            changed.remove(request);
        }
    }

    fn round(&self, request: &ObjectRef<CertificateRequest>) -> Option<Round> {
        self.rounds.lock().unwrap().get(request).cloned()
    }

    fn save_round(&self, request: &ObjectRef<CertificateRequest>, round: Option<Round>) {
        let mut rounds = self.rounds.lock().unwrap();
        match round {
            Some(r) => rounds.insert(request.clone(), r),
            None => rounds.remove(request),
        };
    }
}

/// Runs the probe part of a pass. `status` already describes the issued
/// certificate; returns when the next probe is due. With `hold` (a rollout is
/// under way) a round in progress is finished but no new one starts: replicas
/// mid-restart would only be reported stale.
pub async fn step(
    cr: &CertificateRequest,
    ctx: &Context,
    status: &mut CertificateRequestStatus,
    ca_pem: &str,
    hold: bool,
) -> Result<Option<Duration>, Error> {
    let Some(state) = &ctx.probe else {
        return Ok(None);
    };
    let ns = cr.namespace().unwrap_or_default();
    let pod_ns = state.config.namespace.as_str();
    let oref = request_key(cr);
    let names = pod::slot_names(cr);
    let Some(spec) = &cr.spec.probe else {
        state.forget(&oref);
        delete_leftovers(ctx, state, pod_ns, &names).await?;
        status.conditions.retain(|c| c.type_ != status::VERIFIED);
        status.probe = None;
        return Ok(None);
    };
    state.track(&oref, Some((ns.clone(), spec.service.name.clone())));
    let Some(issued) = status.fingerprint_sha256.clone() else {
        return Ok(None);
    };
    let timeout = crate::duration::parse(&spec.timeout)
        .unwrap_or(Duration::from_secs(10))
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    let interval = crate::duration::parse(&spec.interval)
        .unwrap_or(Duration::from_secs(600))
        .max(MIN_INTERVAL);
    let requested = cr.annotations().get(PROBE_REQUESTED).cloned();
    let overdue_after = SignedDuration::try_from(pod::deadline(timeout) + Duration::from_secs(30))
        .unwrap_or_default();

    // A round in progress: collect its current batch, or wait for it.
    let mut round = state.round(&oref);
    if round
        .as_ref()
        .is_some_and(|r| r.fingerprint != issued || r.service != spec.service.name)
    {
        // Renewed or retargeted since the round began: its answers are moot.
        round = None;
        state.save_round(&oref, None);
    }
    if let Some(mut r) = round {
        let Some(uid) = r.pod_uid.clone() else {
            return start_batch(cr, ctx, state, &names, status, r, ca_pem, timeout, interval).await;
        };
        let name = &names[r.slot];
        let cached = state.pods.get(&ObjectRef::new(name).within(pod_ns));
        if let Some(p) = cached
            .as_ref()
            .filter(|p| p.uid().as_deref() != Some(uid.as_str()))
        {
            // Only the pod this round created may answer, never one by its name alone.
            tracing::warn!(namespace = %ns, request = %cr.name_any(), pod_namespace = %pod_ns, pod = %name, uid = %p.uid().unwrap_or_default(), "ignoring a probe pod the operator did not create (another uid)");
        }
        let live = cached.filter(|p| p.uid().as_deref() == Some(uid.as_str()));
        let Some(p) = live else {
            if Timestamp::now().duration_since(r.batch_started) <= overdue_after {
                return Ok(Some(Duration::from_secs(5)));
            }
            // The pod is gone without a result (deleted by someone): start over when due.
            state.save_round(&oref, None);
            return Ok(Some(Duration::from_secs(1)));
        };
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let started = p
            .metadata
            .creation_timestamp
            .clone()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        let overdue = Timestamp::now().duration_since(started) > overdue_after;
        if phase != "Succeeded" && phase != "Failed" && !overdue {
            return Ok(Some(Duration::from_secs(5)));
        }
        let message = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.message.clone())
            .unwrap_or_default();
        let parsed = ProbeReport::from_json(message.trim());
        let forged = parsed
            .as_ref()
            .is_ok_and(|report| report.nonce.as_deref() != Some(r.nonce.expose()));
        if forged {
            // Logged without either nonce: the pod's is as secret as ours.
            tracing::warn!(namespace = %ns, request = %cr.name_any(), pod_namespace = %pod_ns, pod = %name, "ignoring a probe result without this probe's nonce");
        }
        let outcome = match parsed.ok().filter(|_| !forged) {
            Some(report) => {
                for e in &report.endpoints {
                    ctx.metrics
                        .probes
                        .get_or_create(&crate::metrics::ReasonLabels {
                            reason: e.reason.as_str().into(),
                        })
                        .inc();
                }
                ctx.metrics.probe_duration.observe(
                    Timestamp::now()
                        .duration_since(started)
                        .as_secs_f64()
                        .max(0.0),
                );
                r.record(report);
                None
            }
            None if forged => Some((
                "ProbeFailed",
                format!(
                    "probe pod {name} ended with a report the operator cannot trust (it lacks this probe's nonce); it was ignored"
                ),
            )),
            None => {
                let why = p
                    .status
                    .as_ref()
                    .and_then(|s| s.reason.clone())
                    .unwrap_or_else(|| phase.clone());
                let reason = if why == "DeadlineExceeded" || overdue {
                    "Timeout"
                } else {
                    "ProbeFailed"
                };
                Some((
                    reason,
                    format!("probe pod {name} ended without a report ({why})"),
                ))
            }
        };
        ctx.leadership.check()?;
        delete_pod(ctx, state, pod_ns, name).await?;
        if outcome.is_none() && !r.finished() {
            return start_batch(cr, ctx, state, &names, status, r, ca_pem, timeout, interval).await;
        }
        state.save_round(&oref, None);
        let (ok, reason, text, probe_status) = match outcome {
            None => {
                let report = r.report();
                let (ok, reason, mut text) = verdict(&report);
                let probe_status = bounded_status(&report);
                if probe_status.endpoints.len() < report.endpoints.len() {
                    text.push_str(&format!(
                        " (status lists {} of them, failing ones first)",
                        probe_status.endpoints.len()
                    ));
                }
                (ok, reason, text, probe_status)
            }
            Some((reason, text)) => (
                false,
                reason,
                text,
                ProbeStatus {
                    last_probe_time: Some(Time(Timestamp::now())),
                    ..Default::default()
                },
            ),
        };
        status.probe = Some(ProbeStatus {
            issued_fingerprint_sha256: Some(r.fingerprint.clone()),
            requested: r.requested.clone(),
            ..probe_status
        });
        if set_verified(cr, status, ok, reason, &text) {
            let (kind, word) = if ok {
                (EventType::Normal, "verified")
            } else {
                (EventType::Warning, "failed verification")
            };
            tracing::info!(namespace = %ns, request = %cr.name_any(), reason, "probe {word}");
            publish(ctx, cr, kind, reason, "Probe", text).await;
        }
        state.clear_changed(&oref, r.seq);
        if state.is_changed(&oref) {
            // The endpoints changed while this round ran: probe what is there now.
            return Ok(Some(ctx_grace(state).max(Duration::from_secs(1))));
        }
        return Ok(Some(interval));
    }
    // No round here: any probe pod of this request is a leftover (of a
    // previous process, or of a round given up).
    delete_leftovers(ctx, state, pod_ns, &names).await?;
    if hold {
        return Ok(Some(Duration::from_secs(5)));
    }

    // Is a probe due, and when?
    let now = Timestamp::now();
    let issued_at = status
        .not_before
        .as_ref()
        .map(|t| t.0 + BACKDATE)
        .unwrap_or(now);
    let last = status.probe.clone().unwrap_or_default();
    let last_time = last.last_probe_time.as_ref().map(|t| t.0);
    let after_grace = issued_at + SignedDuration::try_from(ctx_grace(state)).unwrap_or_default();
    let changed = state.is_changed(&oref);
    let due_at = if last.issued_fingerprint_sha256.as_deref() != Some(issued.as_str()) {
        after_grace
    } else if requested.is_some() && last.requested != requested {
        now
    } else {
        match last_time {
            Some(t) => t + SignedDuration::try_from(interval).unwrap_or_default(),
            None => now,
        }
    };
    if !changed && due_at > now {
        return Ok(Some(due_at.duration_since(now).unsigned_abs()));
    }
    if changed && after_grace > now && due_at > now {
        return Ok(Some(after_grace.duration_since(now).unsigned_abs()));
    }

    // Marks set from here on are changes this round may not see.
    let seq = state.seq.load(Ordering::SeqCst);
    let endpoints = match ready_endpoints(
        &ctx.client,
        &ns,
        &spec.service.name,
        spec.service.port,
        &state.admission_rules(),
        &extra_allowed_ranges(cr, ctx),
    )
    .await?
    {
        Ok(e) => e,
        Err(why) => {
            state.clear_changed(&oref, seq);
            status.probe = Some(ProbeStatus {
                last_probe_time: Some(Time(now)),
                issued_fingerprint_sha256: Some(issued),
                requested,
                ..Default::default()
            });
            if set_verified(cr, status, false, "NoEndpoints", &why) {
                publish(ctx, cr, EventType::Warning, "NoEndpoints", "Probe", why).await;
            }
            return Ok(Some(interval));
        }
    };
    // Endpoint churn that leaves a verified set as probed needs no new probe.
    let same_set = endpoints
        .admitted
        .iter()
        .map(|e| e.addr)
        .chain(endpoints.refused.iter().map(|e| e.addr))
        .map(|a| a.to_string())
        .collect::<BTreeSet<_>>()
        == addresses(&last);
    let was_verified =
        status::get(&status.conditions, status::VERIFIED).is_some_and(|c| c.status == "True");
    if changed && same_set && was_verified && due_at > now && !last.endpoints.is_empty() {
        state.clear_changed(&oref, seq);
        return Ok(Some(due_at.duration_since(now).unsigned_abs()));
    }
    if endpoints.is_empty() {
        state.clear_changed(&oref, seq);
        let why = format!(
            "Service {} has no ready endpoints on port {}",
            spec.service.name, spec.service.port
        );
        status.probe = Some(ProbeStatus {
            last_probe_time: Some(Time(now)),
            issued_fingerprint_sha256: Some(issued),
            requested,
            ..Default::default()
        });
        if set_verified(cr, status, false, "NoEndpoints", &why) {
            publish(ctx, cr, EventType::Warning, "NoEndpoints", "Probe", why).await;
        }
        return Ok(Some(interval));
    }
    for _ in &endpoints.refused {
        ctx.metrics
            .probes
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: crate::probe::Reason::EndpointRefused.as_str().into(),
            })
            .inc();
    }
    if endpoints.admitted.is_empty() {
        // Nothing may be probed: report the refusals, start no pod.
        state.clear_changed(&oref, seq);
        let report = ProbeReport {
            endpoints: endpoints.refused.iter().map(refused_result).collect(),
            probed_at: now,
            omitted_endpoints: 0,
            nonce: None,
        };
        let (_, reason, text) = verdict(&report);
        status.probe = Some(ProbeStatus {
            issued_fingerprint_sha256: Some(issued),
            requested,
            ..bounded_status(&report)
        });
        if set_verified(cr, status, false, reason, &text) {
            publish(ctx, cr, EventType::Warning, reason, "Probe", text).await;
        }
        return Ok(Some(interval));
    }
    // A slot whose name is free: a deleted pod may linger a moment.
    let Some(slot) = names
        .iter()
        .position(|n| state.pods.get(&ObjectRef::new(n).within(pod_ns)).is_none())
    else {
        return Ok(Some(Duration::from_secs(2)));
    };
    let round = Round::new(&spec.service.name, &issued, requested, endpoints, seq, slot);
    start_batch(
        cr, ctx, state, &names, status, round, ca_pem, timeout, interval,
    )
    .await
}

fn ctx_grace(state: &ProbeState) -> Duration {
    state.config.grace
}

/// The API server's addresses as the cluster publishes them: the cluster IPs
/// of the `kubernetes` Service in `default` and the addresses of its
/// EndpointSlice (also named `kubernetes`). Best effort: what cannot be read
/// (no permission, an outage) is left out.
pub async fn read_api_server_addresses(client: &kube::Client) -> Vec<IpAddr> {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::Api;
    let mut out = Vec::new();
    match Api::<Service>::namespaced(client.clone(), "default")
        .get_opt("kubernetes")
        .await
    {
        Ok(svc) => out.extend(
            svc.and_then(|s| s.spec)
                .and_then(|s| s.cluster_ips)
                .into_iter()
                .flatten()
                .filter_map(|ip| ip.parse::<IpAddr>().ok()),
        ),
        Err(e) => tracing::debug!(error = %e, "failed to read the kubernetes Service"),
    }
    match Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .get_opt("kubernetes")
        .await
    {
        Ok(slice) => out.extend(
            slice
                .into_iter()
                .flat_map(|s| s.endpoints)
                .flat_map(|e| e.addresses)
                .filter_map(|ip| ip.parse::<IpAddr>().ok()),
        ),
        Err(e) => tracing::debug!(error = %e, "failed to read the kubernetes EndpointSlice"),
    }
    out
}

/// Address ranges the request's namespace may probe beyond Pods of its own
/// (passed to [`crate::probe::admission::admit_endpoint`] as `extra_allowed`).
/// The `probeAddressRanges` of the IssuancePolicies that apply to the
/// request's namespace.
fn extra_allowed_ranges(cr: &CertificateRequest, ctx: &Context) -> Vec<IpRange> {
    ctx.admission
        .probe_ranges(&cr.namespace().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::round::tests::round_of;
    use super::*;

    fn state() -> ProbeState {
        ProbeState::new(
            ProbeConfig {
                image: "p12-operator".into(),
                grace: Duration::from_secs(10),
                network_policy: false,
                namespace: "p12-system".into(),
                pod_ranges: Vec::new(),
                api_server: Vec::new(),
            },
            kube::runtime::reflector::store::<Pod>().0,
        )
    }

    fn key(name: &str) -> ObjectRef<CertificateRequest> {
        ObjectRef::new(name).within("shop")
    }

    #[test]
    fn an_endpoint_change_during_a_probe_survives_its_collection() {
        let state = state();
        let web = key("web");
        state.track(&web, Some(("shop".into(), "web".into())));
        assert_eq!(state.endpoints_changed("shop", "web"), vec![web.clone()]);
        // A probe reads the endpoints: the change so far is what it sees.
        let seq = state.seq.load(Ordering::SeqCst);
        state.clear_changed(&web, seq);
        assert!(!state.is_changed(&web));

        let seq = state.seq.load(Ordering::SeqCst);
        state.endpoints_changed("shop", "web"); // a rollout, while the pod runs
        state.clear_changed(&web, seq);
        assert!(
            state.is_changed(&web),
            "a change after the endpoints were read needs another probe"
        );
    }

    #[test]
    fn a_request_is_listed_under_its_current_service_only_and_forgotten_on_deletion() {
        let state = state();
        let (web, api) = (key("web"), key("api"));
        state.track(&web, Some(("shop".into(), "old".into())));
        state.track(&api, Some(("shop".into(), "old".into())));
        state.track(&web, Some(("shop".into(), "new".into())));
        assert_eq!(state.endpoints_changed("shop", "old"), vec![api.clone()]);
        assert_eq!(state.endpoints_changed("shop", "new"), vec![web.clone()]);

        // api drops spec.probe; web is deleted mid-round.
        state.forget(&api);
        state.save_round(&web, Some(round_of(3)));
        state.forget(&web);
        assert!(state.endpoints_changed("shop", "old").is_empty());
        assert!(state.endpoints_changed("shop", "new").is_empty());
        assert!(
            state.services.lock().unwrap().is_empty(),
            "no empty sets kept"
        );
        assert!(state.targets.lock().unwrap().is_empty());
        assert!(state.changed.lock().unwrap().is_empty());
        assert!(state.rounds.lock().unwrap().is_empty());
    }
}
