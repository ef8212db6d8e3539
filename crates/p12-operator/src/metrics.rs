//! Prometheus metrics. Label values are bounded: per-request series carry the
//! request's namespace and name (removed when the request goes away), everything
//! else only fixed vocabularies (error categories, probe reasons, outcomes).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub namespace: String,
    pub name: String,
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
    pub ready: Family<RequestLabels, Gauge>,
    pub verified: Family<RequestLabels, Gauge>,
    pub not_after: Family<RequestLabels, Gauge<f64, AtomicU64>>,
    pub renewal_time: Family<RequestLabels, Gauge<f64, AtomicU64>>,
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
            ready: Family::default(),
            verified: Family::default(),
            not_after: Family::default(),
            renewal_time: Family::default(),
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
        registry.register(
            "certificate_ready",
            "1 when the request's Secret holds a valid certificate for its spec, else 0",
            m.ready.clone(),
        );
        registry.register("certificate_verified", "1 when every probed endpoint serves the issued certificate, 0 when not; absent without a probe", m.verified.clone());
        registry.register(
            "certificate_not_after_seconds",
            "Expiry of the current certificate (Unix seconds)",
            m.not_after.clone(),
        );
        registry.register(
            "certificate_renewal_seconds",
            "When the current certificate will be renewed (Unix seconds)",
            m.renewal_time.clone(),
        );
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

    pub fn labels(namespace: &str, name: &str) -> RequestLabels {
        RequestLabels {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Drops every series of a request that no longer exists.
    pub fn forget(&self, namespace: &str, name: &str) {
        let l = Self::labels(namespace, name);
        self.ready.remove(&l);
        self.verified.remove(&l);
        self.not_after.remove(&l);
        self.renewal_time.remove(&l);
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

    #[test]
    fn per_request_series_appear_and_are_forgotten() {
        let m = Metrics::new();
        m.ready
            .get_or_create(&Metrics::labels("shop", "web"))
            .set(1);
        m.reconcile_failures
            .get_or_create(&CategoryLabels {
                category: "KubeError".into(),
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains("p12_certificate_ready{namespace=\"shop\",name=\"web\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("p12_reconcile_failures_total{category=\"KubeError\"} 1"),
            "{text}"
        );
        m.forget("shop", "web");
        assert!(!m.encode().contains("name=\"web\""));
    }
}
