//! Verification probes: decide when a request's Service is probed, run the
//! probe pod, and turn its report into `status.probe` and the `Verified`
//! condition.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::events::Kind as EventType;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use super::{Context, Error, publish, request_key, status};
use crate::api::{CertificateRequest, CertificateRequestStatus, ProbeStatus};
use crate::probe::pod::{self, ProbePod};
use crate::probe::{ProbeReport, ProbeResult, Reason};

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
        }
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

/// One probe of every ready endpoint of a Service, in batches of at most
/// [`pod::MAX_ENDPOINTS`], one probe pod after another.
#[derive(Clone, Debug)]
struct Round {
    service: String,
    /// The issued certificate's fingerprint the endpoints are compared with.
    fingerprint: String,
    requested: Option<String>,
    /// Every ready endpoint when the round began.
    endpoints: Vec<SocketAddr>,
    /// `ProbeState::seq` before the endpoints were read.
    seq: u64,
    /// How many of `endpoints` earlier batches covered.
    done: usize,
    results: Vec<ProbeResult>,
    /// Endpoints of earlier batches that a pod did not report on.
    unreported: usize,
    probed_at: Option<Timestamp>,
    /// The slot (see [`pod::slot_names`]) of the current batch's pod.
    slot: usize,
    /// UID of the current batch's pod, once it was created.
    pod_uid: Option<String>,
    /// When the current batch's pod was created (local clock).
    batch_started: Timestamp,
}

impl Round {
    fn new(
        service: &str,
        fingerprint: &str,
        requested: Option<String>,
        endpoints: Vec<SocketAddr>,
        seq: u64,
        slot: usize,
    ) -> Round {
        Round {
            service: service.to_string(),
            fingerprint: fingerprint.to_string(),
            requested,
            endpoints,
            seq,
            done: 0,
            results: Vec::new(),
            unreported: 0,
            probed_at: None,
            slot,
            pod_uid: None,
            batch_started: Timestamp::now(),
        }
    }

    /// The endpoints of the current batch.
    fn batch(&self) -> &[SocketAddr] {
        let end = (self.done + pod::MAX_ENDPOINTS).min(self.endpoints.len());
        &self.endpoints[self.done.min(end)..end]
    }

    /// Takes the current batch's report, keeping only results for the batch's
    /// endpoints, and moves on to the next batch in the other slot.
    fn record(&mut self, report: ProbeReport) {
        let batch = self.batch().to_vec();
        let mut reported = report.endpoints;
        for addr in &batch {
            let address = addr.to_string();
            match reported.iter().position(|r| r.address == address) {
                Some(i) => self.results.push(reported.swap_remove(i)),
                None => self.unreported += 1,
            }
        }
        self.done += batch.len();
        self.probed_at = Some(report.probed_at);
        self.slot = (self.slot + 1) % pod::SLOTS;
        self.pod_uid = None;
    }

    fn finished(&self) -> bool {
        self.done >= self.endpoints.len()
    }

    /// The whole round as one report: every endpoint's result, and how many
    /// went unreported.
    fn report(&self) -> ProbeReport {
        ProbeReport {
            endpoints: self.results.clone(),
            probed_at: self.probed_at.unwrap_or_else(Timestamp::now),
            omitted_endpoints: self.unreported
                + (self.endpoints.len() - self.done.min(self.endpoints.len())),
        }
    }
}

/// Whether an EndpointSlice port carries a Service port. Ports match by name,
/// as kube-proxy matches them: an unnamed Service port (no name, or `""`)
/// matches the slice's unnamed port, whatever its `targetPort`.
pub fn port_matches(service_port_name: Option<&str>, slice_port_name: Option<&str>) -> bool {
    service_port_name.unwrap_or_default() == slice_port_name.unwrap_or_default()
}

/// The ready endpoints (`ip:port`, sorted) of the Service port named
/// `port_name` in a Service's EndpointSlices. An endpoint without a ready
/// condition counts as ready, as Kubernetes documents.
pub fn endpoints_in(port_name: Option<&str>, slices: &[EndpointSlice]) -> Vec<SocketAddr> {
    let mut out = BTreeSet::new();
    for slice in slices {
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| port_matches(port_name, p.name.as_deref()))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in &slice.endpoints {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for addr in &ep.addresses {
                if let Ok(ip) = addr.parse::<IpAddr>() {
                    out.insert(SocketAddr::new(ip, target));
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The ready endpoints (`ip:port`) of a Service port, from its EndpointSlices.
pub async fn ready_endpoints(
    client: &Client,
    ns: &str,
    service: &str,
    port: i32,
) -> Result<Result<Vec<SocketAddr>, String>, Error> {
    let Some(svc) = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(service)
        .await?
    else {
        return Ok(Err(format!(
            "Service {service} does not exist in namespace {ns}"
        )));
    };
    let ports = svc.spec.and_then(|s| s.ports).unwrap_or_default();
    let Some(sp) = ports.iter().find(|p| p.port == port) else {
        return Ok(Err(format!("Service {service} has no port {port}")));
    };
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await?;
    Ok(Ok(endpoints_in(sp.name.as_deref(), &slices.items)))
}

fn addresses(s: &ProbeStatus) -> BTreeSet<String> {
    s.endpoints.iter().map(|e| e.address.clone()).collect()
}

/// The Verified condition for a report: True when every endpoint verified and
/// serves the issued certificate, else the most serious reason and the failing
/// endpoints named.
pub fn verdict(report: &ProbeReport) -> (bool, &'static str, String) {
    if report.endpoints.is_empty() {
        return (
            false,
            "NoEndpoints",
            "the probe reported no endpoints".into(),
        );
    }
    let failing: Vec<_> = report
        .endpoints
        .iter()
        .filter(|e| e.reason != Reason::Verified)
        .collect();
    if failing.is_empty() && report.omitted_endpoints == 0 {
        return (
            true,
            "Verified",
            format!(
                "all {} endpoints serve the issued certificate",
                report.endpoints.len()
            ),
        );
    }
    const ORDER: [Reason; 7] = [
        Reason::UntrustedChain,
        Reason::Expired,
        Reason::HostnameMismatch,
        Reason::StaleCertificate,
        Reason::HandshakeFailed,
        Reason::Timeout,
        Reason::ConnectionFailed,
    ];
    let worst = ORDER
        .iter()
        .find(|r| failing.iter().any(|e| e.reason == **r))
        .copied()
        .unwrap_or(Reason::HandshakeFailed);
    let mut parts: Vec<String> = failing
        .iter()
        .map(|e| format!("{}: {} ({})", e.address, e.reason, e.message))
        .collect();
    if report.omitted_endpoints > 0 {
        parts.push(format!(
            "{} endpoints were not reported",
            report.omitted_endpoints
        ));
    }
    (
        false,
        worst.as_str(),
        format!(
            "{} of {} endpoints fail: {}",
            failing.len(),
            report.endpoints.len(),
            parts.join("; ")
        ),
    )
}

fn set_verified(
    cr: &CertificateRequest,
    status: &mut CertificateRequestStatus,
    ok: bool,
    reason: &str,
    message: &str,
) -> bool {
    let before = status::get(&status.conditions, status::VERIFIED)
        .map(|c| (c.status.clone(), c.reason.clone()));
    status::set(
        &mut status.conditions,
        status::VERIFIED,
        ok,
        reason,
        &status::truncate(message),
        cr.metadata.generation,
    );
    before
        != Some((
            if ok { "True" } else { "False" }.to_string(),
            reason.to_string(),
        ))
}

/// `status.probe.endpoints` lists at most this many endpoints, failing ones
/// first, so a Service with thousands of endpoints cannot outgrow the object.
pub const MAX_STATUS_ENDPOINTS: usize = 200;

/// The round's result in `status.probe`, bounded by [`MAX_STATUS_ENDPOINTS`].
fn bounded_status(report: &ProbeReport) -> ProbeStatus {
    let mut status = report.to_status();
    if status.endpoints.len() > MAX_STATUS_ENDPOINTS {
        // Stable: each group keeps the endpoints' order.
        status
            .endpoints
            .sort_by_key(|e| e.reason == Reason::Verified.as_str());
        status.endpoints.truncate(MAX_STATUS_ENDPOINTS);
    }
    status
}

/// Runs the probe part of a pass. `status` already describes the issued
/// certificate; returns when the next probe is due.
pub async fn step(
    cr: &CertificateRequest,
    ctx: &Context,
    status: &mut CertificateRequestStatus,
    ca_pem: &str,
) -> Result<Option<Duration>, Error> {
    let Some(state) = &ctx.probe else {
        return Ok(None);
    };
    let ns = cr.namespace().unwrap_or_default();
    let oref = request_key(cr);
    let names = pod::slot_names(cr);
    let Some(spec) = &cr.spec.probe else {
        state.forget(&oref);
        delete_leftovers(ctx, state, &ns, &names).await?;
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
        let live = state
            .pods
            .get(&ObjectRef::new(name).within(&ns))
            .filter(|p| p.uid().as_deref() == Some(uid.as_str()));
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
        let outcome = match ProbeReport::from_json(message.trim()) {
            Ok(report) => {
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
            Err(_) => {
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
        delete_pod(ctx, state, &ns, name).await?;
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
    delete_leftovers(ctx, state, &ns, &names).await?;

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
    let endpoints =
        match ready_endpoints(&ctx.client, &ns, &spec.service.name, spec.service.port).await? {
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
        .iter()
        .map(|e| e.to_string())
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
    // A slot whose name is free: a deleted pod may linger a moment.
    let Some(slot) = names
        .iter()
        .position(|n| state.pods.get(&ObjectRef::new(n).within(&ns)).is_none())
    else {
        return Ok(Some(Duration::from_secs(2)));
    };
    let round = Round::new(&spec.service.name, &issued, requested, endpoints, seq, slot);
    start_batch(
        cr, ctx, state, &names, status, round, ca_pem, timeout, interval,
    )
    .await
}

/// Creates the probe pod (and its NetworkPolicy) for the round's current
/// batch, and keeps the round; returns when to look at the pod.
#[allow(clippy::too_many_arguments)]
async fn start_batch(
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
    let oref = request_key(cr);
    let name = &names[round.slot];
    let server_name = format!("{}.{ns}.svc", round.service);
    let batch = round.batch().to_vec();
    let probe_pod = ProbePod {
        request: cr,
        name,
        image: &state.config.image,
        endpoints: &batch,
        server_name: &server_name,
        ca_pem,
        expect_fingerprint: &issued,
        handshake_timeout: timeout,
    }
    .build();
    ctx.leadership.check()?;
    if state.config.network_policy {
        // The fence goes up before the pod exists.
        let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        let mut policy = pod::network_policy(cr, name, &batch);
        let pp = PostParams {
            field_manager: Some(super::MANAGER.into()),
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
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let created = pods
        .create(
            &PostParams {
                field_manager: Some(super::MANAGER.into()),
                ..Default::default()
            },
            &probe_pod,
        )
        .await;
    match created {
        Ok(p) => {
            tracing::debug!(namespace = %ns, request = %cr.name_any(), pod = %name, endpoints = batch.len(), "started probe pod");
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
async fn delete_pod(ctx: &Context, state: &ProbeState, ns: &str, name: &str) -> Result<(), Error> {
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
async fn delete_leftovers(
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

fn ctx_grace(state: &ProbeState) -> Duration {
    state.config.grace
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProbeResult;

    fn result(address: &str, reason: Reason) -> ProbeResult {
        serde_json::from_value(serde_json::json!({
            "address": address, "verified": reason == Reason::Verified, "reason": reason,
            "message": format!("{reason} seen"), "chainLength": 2
        }))
        .unwrap()
    }

    fn report(results: Vec<ProbeResult>) -> ProbeReport {
        ProbeReport {
            endpoints: results,
            probed_at: Timestamp::now(),
            omitted_endpoints: 0,
        }
    }

    #[test]
    fn every_endpoint_verified_makes_verified_true() {
        let (ok, reason, _) = verdict(&report(vec![
            result("10.0.0.1:443", Reason::Verified),
            result("10.0.0.2:443", Reason::Verified),
        ]));
        assert!(ok);
        assert_eq!(reason, "Verified");
    }

    #[test]
    fn one_stale_endpoint_is_named_and_the_others_are_not() {
        let (ok, reason, message) = verdict(&report(vec![
            result("10.0.0.1:443", Reason::Verified),
            result("10.0.0.2:443", Reason::StaleCertificate),
        ]));
        assert!(!ok);
        assert_eq!(reason, "StaleCertificate");
        assert!(
            message.contains("10.0.0.2:443") && !message.contains("10.0.0.1:443"),
            "{message}"
        );
        assert!(message.starts_with("1 of 2 endpoints fail"), "{message}");
    }

    fn slice(
        port_name: Option<&str>,
        port: i32,
        ips: &[&str],
        ready: Option<bool>,
    ) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1"},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": ips.iter().map(|ip| serde_json::json!({
                "addresses": [ip], "conditions": {"ready": ready}
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn an_unnamed_service_port_matches_the_slices_unnamed_port() {
        assert!(port_matches(None, Some("")));
        assert!(port_matches(None, None));
        assert!(port_matches(Some(""), None));
        assert!(port_matches(Some("https"), Some("https")));
        assert!(!port_matches(None, Some("https")));
        assert!(!port_matches(Some("https"), Some("")));
        // The API server stores an unnamed slice port as `""` or leaves the name out.
        for name in [Some(""), None] {
            let slices = [slice(name, 8443, &["10.0.0.1", "10.0.0.2"], Some(true))];
            assert_eq!(
                endpoints_in(None, &slices),
                addrs(&["10.0.0.1:8443", "10.0.0.2:8443"])
            );
        }
    }

    #[test]
    fn a_named_port_takes_each_slices_own_target_port_and_skips_unready_endpoints() {
        // A named targetPort may resolve to different numbers per pod, hence per slice.
        let slices = [
            slice(Some("https"), 8443, &["10.0.0.1"], Some(true)),
            slice(Some("https"), 9443, &["10.0.0.2"], None),
            slice(Some("https"), 8443, &["10.0.0.3"], Some(false)),
            slice(Some("metrics"), 9090, &["10.0.0.4"], Some(true)),
        ];
        assert_eq!(
            endpoints_in(Some("https"), &slices),
            addrs(&["10.0.0.1:8443", "10.0.0.2:9443"])
        );
        assert!(endpoints_in(None, &slices).is_empty());
    }

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

    fn round_of(n: u8) -> Round {
        let endpoints = (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 8443)))
            .collect();
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
            message.starts_with("1 of 25 endpoints fail: 10.0.0.23:8443"),
            "{message}"
        );
        assert_eq!(bounded_status(&report).endpoints.len(), 25);
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

    #[test]
    fn a_large_status_keeps_the_failing_endpoints() {
        let results = (0..MAX_STATUS_ENDPOINTS + 50)
            .map(|i| {
                let reason = if i == MAX_STATUS_ENDPOINTS + 40 {
                    Reason::Timeout
                } else {
                    Reason::Verified
                };
                result(&format!("10.0.{}.{}:443", i / 250, i % 250), reason)
            })
            .collect();
        let status = bounded_status(&report(results));
        assert_eq!(status.endpoints.len(), MAX_STATUS_ENDPOINTS);
        assert_eq!(status.endpoints[0].reason, "Timeout");
    }

    fn state() -> ProbeState {
        ProbeState::new(
            ProbeConfig {
                image: "p12-operator".into(),
                grace: Duration::from_secs(10),
                network_policy: false,
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

    #[test]
    fn the_most_serious_reason_wins() {
        let (_, reason, _) = verdict(&report(vec![
            result("a:1", Reason::Timeout),
            result("b:1", Reason::UntrustedChain),
            result("c:1", Reason::StaleCertificate),
        ]));
        assert_eq!(reason, "UntrustedChain");
    }
}
