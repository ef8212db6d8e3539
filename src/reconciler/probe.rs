//! Verification probes: decide when a request's Service is probed, run the
//! probe pod, and turn its report into `status.probe` and the `Verified`
//! condition.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
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
use crate::probe::{ProbeReport, Reason};

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
    /// (namespace, Service) → requests probing it.
    services: Mutex<HashMap<(String, String), HashSet<ObjectRef<CertificateRequest>>>>,
    /// Requests whose Service's endpoints changed since their last probe.
    changed: Mutex<HashSet<ObjectRef<CertificateRequest>>>,
}

impl ProbeState {
    pub fn new(config: ProbeConfig, pods: Store<Pod>) -> Self {
        ProbeState {
            config,
            pods,
            services: Mutex::default(),
            changed: Mutex::default(),
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
        self.changed.lock().unwrap().extend(refs.iter().cloned());
        refs
    }
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
    let mut out = BTreeSet::new();
    for slice in slices.items {
        let Some(target) = slice
            .ports
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.name == sp.name)
            .and_then(|p| p.port)
        else {
            continue;
        };
        for ep in slice.endpoints {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for addr in ep.addresses {
                if let Ok(ip) = addr.parse::<IpAddr>() {
                    out.insert(SocketAddr::new(ip, target as u16));
                }
            }
        }
    }
    Ok(Ok(out.into_iter().collect()))
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
    let Some(spec) = &cr.spec.probe else {
        status.conditions.retain(|c| c.type_ != status::VERIFIED);
        status.probe = None;
        return Ok(None);
    };
    state
        .services
        .lock()
        .unwrap()
        .entry((ns.clone(), spec.service.name.clone()))
        .or_default()
        .insert(oref.clone());
    let Some(issued) = status.fingerprint_sha256.clone() else {
        return Ok(None);
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let name = pod::pod_name(cr);
    let timeout = crate::duration::parse(&spec.timeout)
        .unwrap_or(Duration::from_secs(10))
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    let interval = crate::duration::parse(&spec.interval)
        .unwrap_or(Duration::from_secs(600))
        .max(MIN_INTERVAL);
    let requested = cr.annotations().get(PROBE_REQUESTED).cloned();

    // A probe in flight: collect its result, or wait for it.
    if let Some(p) = state.pods.get(&ObjectRef::new(&name).within(&ns)) {
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
        let overdue = Timestamp::now().duration_since(started)
            > SignedDuration::try_from(pod::deadline(timeout) + Duration::from_secs(30))
                .unwrap_or_default();
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
        let expected = p
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.env.as_ref())
            .and_then(|env| {
                env.iter()
                    .find(|e| e.name == "P12_PROBE_EXPECT_FINGERPRINT")
            })
            .and_then(|e| e.value.clone());
        let (ok, reason, text, probe_status) = match ProbeReport::from_json(message.trim()) {
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
                let (ok, reason, text) = verdict(&report);
                (ok, reason, text, report.to_status())
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
                (
                    false,
                    reason,
                    format!("probe pod {name} ended without a report ({why})"),
                    ProbeStatus {
                        last_probe_time: Some(Time(Timestamp::now())),
                        ..Default::default()
                    },
                )
            }
        };
        status.probe = Some(ProbeStatus {
            issued_fingerprint_sha256: expected,
            requested: requested.clone(),
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
        state.changed.lock().unwrap().remove(&oref);
        ctx.leadership.check()?;
        match pods.delete(&name, &DeleteParams::background()).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        if state.config.network_policy {
            let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &ns);
            match policies.delete(&name, &DeleteParams::background()).await {
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
        }
        return Ok(Some(interval));
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
    let changed = state.changed.lock().unwrap().contains(&oref);
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

    let endpoints =
        match ready_endpoints(&ctx.client, &ns, &spec.service.name, spec.service.port).await? {
            Ok(e) => e,
            Err(why) => {
                state.changed.lock().unwrap().remove(&oref);
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
    // Endpoint churn that leaves the set as probed needs no new probe.
    let same_set = endpoints
        .iter()
        .map(|e| e.to_string())
        .collect::<BTreeSet<_>>()
        == addresses(&last);
    if changed && same_set && due_at > now && !last.endpoints.is_empty() {
        state.changed.lock().unwrap().remove(&oref);
        return Ok(Some(due_at.duration_since(now).unsigned_abs()));
    }
    if endpoints.is_empty() {
        state.changed.lock().unwrap().remove(&oref);
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
    let server_name = format!("{}.{ns}.svc", spec.service.name);
    let chosen: Vec<SocketAddr> = endpoints.into_iter().take(pod::MAX_ENDPOINTS).collect();
    let probe_pod = ProbePod {
        request: cr,
        image: &state.config.image,
        endpoints: &chosen,
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
        let mut policy = pod::network_policy(cr, &chosen);
        let pp = PostParams {
            field_manager: Some(super::MANAGER.into()),
            ..Default::default()
        };
        match policies.create(&pp, &policy).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let live = policies.get(&name).await?;
                policy.metadata.resource_version = live.metadata.resource_version;
                policies.replace(&name, &pp, &policy).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    match pods
        .create(
            &PostParams {
                field_manager: Some(super::MANAGER.into()),
                ..Default::default()
            },
            &probe_pod,
        )
        .await
    {
        Ok(_) => {
            tracing::debug!(namespace = %ns, request = %cr.name_any(), endpoints = chosen.len(), "started probe pod")
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => {
            let why = format!("failed to create probe pod {name}: {}", e.message);
            if set_verified(cr, status, false, "ProbeFailed", &why) {
                publish(ctx, cr, EventType::Warning, "ProbeFailed", "Probe", why).await;
            }
            return Ok(Some(interval));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Some(pod::deadline(timeout)))
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
