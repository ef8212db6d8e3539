//! Prometheus metrics. Label values are bounded: per-request series carry the
//! request's namespace and name, everything else only fixed vocabularies (error
//! categories, probe reasons, outcomes).
//!
//! The per-request series are not stored: they are read at scrape time from
//! the controller's cache of requests (their status, as the API server has it),
//! like kube-state-metrics does. A deleted request has no series the moment the
//! cache drops it, and holding 10,000 requests costs no metric memory.

use crate::reconciler::status;
use kube::runtime::reflector::Store;
use p12_core::api::CertificateRequest;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::{Arc, OnceLock};

/// The per-request gauges, read from the controller's cache at scrape time.
/// Empty until the controller runs (a standby exports none, as before).
#[derive(Debug, Default)]
struct RequestSeries {
    requests: Arc<OnceLock<Store<CertificateRequest>>>,
}

/// One per-request gauge: its name (after the `p12_` prefix), help, and value
/// for a request (`None`: no series for it).
type Gauged = (
    &'static str,
    &'static str,
    fn(&CertificateRequest) -> Option<i64>,
);

const REQUEST_GAUGES: [Gauged; 4] = [
    (
        "certificate_ready",
        "1 when the request's Secret holds a valid certificate for its spec, else 0.",
        |cr| Some(i64::from(condition(cr, status::READY) == Some(true))),
    ),
    (
        "certificate_verified",
        "1 when every probed endpoint serves the issued certificate, 0 when not; absent without a probe.",
        |cr| condition(cr, status::VERIFIED).map(i64::from),
    ),
    (
        "certificate_not_after_seconds",
        "Expiry of the current certificate (Unix seconds).",
        |cr| Some(cr.status.as_ref()?.not_after.as_ref()?.0.as_second()),
    ),
    (
        "certificate_renewal_seconds",
        "When the current certificate will be renewed (Unix seconds).",
        |cr| Some(cr.status.as_ref()?.renewal_time.as_ref()?.0.as_second()),
    ),
];

/// `Some(status == "True")` for the request's condition of this type.
fn condition(cr: &CertificateRequest, type_: &str) -> Option<bool> {
    status::get(&cr.status.as_ref()?.conditions, type_).map(|c| c.status == "True")
}

impl Collector for RequestSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(store) = self.requests.get() else {
            return Ok(());
        };
        let mut requests = store.state();
        // Stable output, without a copy of any name.
        fn key(cr: &CertificateRequest) -> (Option<&str>, Option<&str>) {
            (
                cr.metadata.namespace.as_deref(),
                cr.metadata.name.as_deref(),
            )
        }
        requests.sort_unstable_by(|a, b| key(a).cmp(&key(b)));
        for (name, help, value) in REQUEST_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for cr in &requests {
                if let Some(v) = value(cr) {
                    let labels = [
                        (
                            "namespace",
                            cr.metadata.namespace.as_deref().unwrap_or_default(),
                        ),
                        ("name", cr.metadata.name.as_deref().unwrap_or_default()),
                    ];
                    ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `issue`, `renew` or `reencrypt`.
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric the operator exports, under the `p12_` prefix.
pub struct Metrics {
    pub registry: Registry,
    /// The controller's cache, once it runs (see [`Metrics::attach_requests`]).
    requests: Arc<OnceLock<Store<CertificateRequest>>>,
    pub reconciles: Counter,
    pub reconcile_failures: Family<CategoryLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub in_flight: Gauge,
    pub issuance_duration: Family<ActionLabels, Histogram, fn() -> Histogram>,
    pub probes: Family<ReasonLabels, Counter>,
    pub probe_duration: Histogram,
    pub leader: Gauge,
    pub events_dropped: Counter,
    pub keys_generated: Counter,
    /// 1 for the reason no CA is usable, 0 for the reasons that no longer hold.
    pub ca_problem: Family<ReasonLabels, Gauge>,
    /// Secrets still holding a certificate of the previous CA (CA rotation).
    pub ca_previous_leaves: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("p12");
        let m = Metrics {
            requests: Arc::default(),
            reconciles: Counter::default(),
            reconcile_failures: Family::default(),
            reconcile_duration: duration_buckets(),
            in_flight: Gauge::default(),
            issuance_duration: Family::new_with_constructor(duration_buckets),
            probes: Family::default(),
            probe_duration: Histogram::new(exponential_buckets(0.25, 2.0, 10)),
            leader: Gauge::default(),
            events_dropped: Counter::default(),
            keys_generated: Counter::default(),
            ca_problem: Family::default(),
            ca_previous_leaves: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register_collector(Box::new(RequestSeries {
            requests: m.requests.clone(),
        }));
        registry.register("reconciles", "Reconcile passes run", m.reconciles.clone());
        registry.register(
            "ca_previous_leaves",
            "During a CA rotation, issued Secrets that still hold a certificate of the previous CA",
            m.ca_previous_leaves.clone(),
        );
        registry.register(
            "ca_problem",
            "1 while no CA is usable, labelled with why (CAMissing, CAInvalid, CANotFound, CAUnavailable); 0 once that reason no longer holds",
            m.ca_problem.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed reconcile passes and refused requests, by error category",
            m.reconcile_failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile pass",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "reconciles_in_flight",
            "Reconcile passes running now (the work queue's busy part)",
            m.in_flight.clone(),
        );
        registry.register(
            "issuance_duration_seconds",
            "Key generation to Secret written, by action",
            m.issuance_duration.clone(),
        );
        registry.register(
            "probes",
            "Probe verdicts per endpoint, by reason",
            m.probes.clone(),
        );
        registry.register(
            "probe_duration_seconds",
            "Probe pod creation to recorded result",
            m.probe_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease (always 1 without leader election)",
            m.leader.clone(),
        );
        registry.register(
            "events_dropped",
            "Events not sent because too many were already being sent (the API server is slow or down)",
            m.events_dropped.clone(),
        );
        registry.register(
            "keys_generated",
            "Private keys generated for certificates (none for a request refused before issuance)",
            m.keys_generated.clone(),
        );
        Metrics { registry, ..m }
    }

    /// From now on, `/metrics` has a series per request of this cache (the
    /// controller's). Called once, when the controller starts.
    pub fn attach_requests(&self, requests: Store<CertificateRequest>) {
        let _ = self.requests.set(requests);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};

    fn request(ns: &str, name: &str, status: serde_json::Value) -> CertificateRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "p12-operator.io/v1alpha1",
            "kind": "CertificateRequest",
            "metadata": { "name": name, "namespace": ns, "uid": format!("uid-{name}") },
            "spec": { "secretName": format!("{name}-tls"), "dnsNames": ["web.shop.svc"] },
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn per_request_series_follow_the_cache() {
        let m = Metrics::new();
        m.reconcile_failures
            .get_or_create(&CategoryLabels {
                category: "KubeError".into(),
            })
            .inc();
        // Before the controller runs (a standby), no per-request series.
        assert!(!m.encode().contains("p12_certificate_ready{"));

        let (reader, mut writer) = reflector::store::<CertificateRequest>();
        m.attach_requests(reader);
        let issued = request(
            "shop",
            "web",
            serde_json::json!({
                "conditions": [
                    { "type": "Ready", "status": "True", "reason": "Issued", "message": "",
                      "lastTransitionTime": "2026-11-30T10:00:00Z" },
                    { "type": "Verified", "status": "False", "reason": "StaleCertificate", "message": "",
                      "lastTransitionTime": "2026-11-30T10:00:00Z" },
                ],
                "notAfter": "2027-01-01T00:00:00Z",
                "renewalTime": "2026-12-01T00:00:00Z",
            }),
        );
        let new = request("shop", "api", serde_json::json!({}));
        writer.apply_watcher_event(&watcher::Event::Apply(issued.clone()));
        writer.apply_watcher_event(&watcher::Event::Apply(new));
        let text = m.encode();
        for line in [
            "p12_certificate_ready{namespace=\"shop\",name=\"web\"} 1",
            "p12_certificate_verified{namespace=\"shop\",name=\"web\"} 0",
            "p12_certificate_not_after_seconds{namespace=\"shop\",name=\"web\"} 1798761600",
            "p12_certificate_renewal_seconds{namespace=\"shop\",name=\"web\"} 1796083200",
            // Not issued yet: not ready, and no other series.
            "p12_certificate_ready{namespace=\"shop\",name=\"api\"} 0",
            "p12_reconcile_failures_total{category=\"KubeError\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(!text.contains("p12_certificate_verified{namespace=\"shop\",name=\"api\"}"));
        assert!(
            !text.contains("p12_certificate_not_after_seconds{namespace=\"shop\",name=\"api\"}")
        );
        // One HELP/TYPE block per gauge, its samples together (the text format).
        assert_eq!(
            text.matches("# TYPE p12_certificate_ready gauge").count(),
            1
        );

        writer.apply_watcher_event(&watcher::Event::Delete(issued));
        let text = m.encode();
        assert!(!text.contains("name=\"web\""), "{text}");
        assert!(text.contains("name=\"api\""), "{text}");
    }
}
