//! Flags of `p12-operator run`: what the controller is told at start-up. Uses
//! only clap and p12-core types (key algorithms, durations), never the controller.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use p12_core::duration;
use p12_core::pki::KeyAlgorithm;

/// Flags of `p12-operator run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The operator's own namespace, where the CA Secret lives.
    #[arg(long, env = "POD_NAMESPACE", default_value = "p12-operator")]
    pub namespace: String,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "P12_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Name of the CA Secret (tls.crt, tls.key, optional ca.crt) in --namespace.
    #[arg(long, default_value = "p12-operator-ca")]
    pub ca_secret: String,
    /// Create a self-signed root CA when the CA Secret does not exist.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ca_create: bool,
    /// Key algorithm of a created CA: ECDSA-P256, ECDSA-P384, RSA-2048, RSA-3072, RSA-4096 or Ed25519.
    #[arg(long, default_value = "ECDSA-P256", value_parser = parse_algorithm)]
    pub ca_key_algorithm: KeyAlgorithm,
    /// Lifetime of a created CA.
    #[arg(long, default_value = "87600h", value_parser = duration::parse)]
    pub ca_duration: Duration,
    /// Common name of a created CA.
    #[arg(long, default_value = "p12-operator CA")]
    pub ca_common_name: String,
    /// Rotate an operator-made root by itself: stage the next root at
    /// --ca-rotate-at of its life, switch after --ca-overlap.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ca_rotate: bool,
    /// The fraction of an operator-made root's life after which the next root
    /// is staged (its root joins every trust bundle).
    #[arg(long, default_value_t = 2.0 / 3.0, value_parser = parse_fraction)]
    pub ca_rotate_at: f64,
    /// Time between staging the next CA and issuing from it: long enough for
    /// every Secret and trust ConfigMap to carry the new root and for
    /// workloads to reload their trust.
    #[arg(long, default_value = "720h", value_parser = duration::parse)]
    pub ca_overlap: Duration,
    /// During a CA rotation, Secrets rewritten with the new trust bundle (or
    /// re-issued from the new CA) per second, after a burst of 20.
    #[arg(long, default_value_t = 20.0)]
    pub ca_rewrites_per_second: f64,
    /// Shortest certificate lifetime a request may ask for (policy).
    #[arg(long, default_value = "1h", value_parser = duration::parse)]
    pub min_duration: Duration,
    /// Longest certificate lifetime a request may ask for (policy).
    #[arg(long, default_value = "9528h", value_parser = duration::parse)]
    pub max_duration: Duration,
    /// Refuse wildcard DNS names, whatever an IssuancePolicy allows.
    #[arg(long)]
    pub deny_wildcards: bool,
    /// Refuse IP address SANs, whatever an IssuancePolicy allows.
    #[arg(long)]
    pub deny_ip_sans: bool,
    /// Apply the built-in default policy to every namespace: the names of the
    /// namespace's own Services, serverAuth, at most 90 days. With `false`,
    /// only IssuancePolicies admit requests.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub default_policy: bool,
    /// Allow `<service>.<namespace>.svc` names without the Service existing
    /// (and do not watch Services).
    #[arg(long)]
    pub allow_unknown_services: bool,
    /// The cluster's DNS domain, for `<service>.<namespace>.svc.<domain>` names.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Requests reconciled at once (API-bound; crypto is limited to one task per core separately).
    #[arg(long, default_value_t = 32)]
    pub concurrency: u16,
    /// Image of probe pods: the operator's own image.
    #[arg(long, env = "P12_OPERATOR_IMAGE", default_value = concat!("ghcr.io/p12-operator/p12-operator:", env!("CARGO_PKG_VERSION")))]
    pub probe_image: String,
    /// Time workloads get to reload a renewed certificate before it is probed.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    pub probe_grace: Duration,
    /// Never run probe pods (requests with spec.probe are issued, not verified).
    #[arg(long)]
    pub disable_probes: bool,
    /// Give each probe pod a NetworkPolicy allowing egress only to the endpoints it probes.
    #[arg(long)]
    pub probe_network_policy: bool,
    /// The cluster's pod address ranges, as CIDRs (repeat, or separate with
    /// commas): probes refuse endpoints outside them. Unset: unknown, not checked.
    #[arg(long = "pod-cidr", value_name = "CIDR", value_delimiter = ',', value_parser = parse_range)]
    pub pod_cidrs: Vec<crate::probe::admission::IpRange>,
    /// Restart the workloads a request names in spec.rollout after each
    /// renewal (needs get and patch on apps Deployments, StatefulSets and
    /// DaemonSets). Without it such requests report RolledOut=False, RolloutDisabled.
    #[arg(long)]
    pub enable_rollout: bool,
    /// Address of the admin endpoints (/metrics, /livez, /readyz); port 0 picks one.
    #[arg(long, env = "P12_ADMIN_BIND_ADDRESS", default_value = "0.0.0.0:8080")]
    pub admin_bind_address: std::net::SocketAddr,
    /// Run only while holding the Lease --lease-name in --namespace (for several replicas).
    #[arg(long)]
    pub leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "p12-operator")]
    pub lease_name: String,
    /// Publish the trust bundle as ConfigMap p12-operator-ca-bundle (ca.crt,
    /// truststore.p12 without a password, truststore-changeit.p12) in every
    /// namespace this label selector selects: `key=value[,key=value]`, or a
    /// LabelSelector as JSON (`{"matchExpressions":[…]}`). Unset: publish nowhere.
    #[arg(long, value_name = "SELECTOR", value_parser = parse_selector)]
    pub trust_bundle_namespace_selector: Option<LabelSelector>,
}

/// A label selector: JSON (a LabelSelector object) or `key=value` pairs.
fn parse_selector(s: &str) -> Result<LabelSelector, String> {
    let s = s.trim();
    if s.starts_with('{') {
        return serde_json::from_str(s).map_err(|e| format!("not a LabelSelector: {e}"));
    }
    let mut labels = std::collections::BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once("==")
            .or_else(|| pair.split_once('='))
            .ok_or_else(|| {
                format!(
                    "{pair:?} is not key=value; for other operators give a LabelSelector as JSON"
                )
            })?;
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || key.ends_with('!') {
            return Err(format!(
                "{pair:?} is not key=value; for other operators give a LabelSelector as JSON"
            ));
        }
        labels.insert(key.to_string(), value.to_string());
    }
    if labels.is_empty() {
        return Err(
            "an empty selector would select every namespace; give {} as JSON to mean that".into(),
        );
    }
    Ok(LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    })
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|f| (0.05..=0.95).contains(f))
        .ok_or_else(|| format!("{s:?} is not a fraction between 0.05 and 0.95, e.g. 0.667"))
}

fn parse_range(s: &str) -> Result<crate::probe::admission::IpRange, String> {
    s.parse()
}

pub(crate) fn parse_algorithm(s: &str) -> Result<KeyAlgorithm, String> {
    Ok(match s.to_ascii_uppercase().as_str() {
        "ECDSA-P256" | "ECDSA" => KeyAlgorithm::EcdsaP256,
        "ECDSA-P384" => KeyAlgorithm::EcdsaP384,
        "RSA-2048" | "RSA" => KeyAlgorithm::Rsa2048,
        "RSA-3072" => KeyAlgorithm::Rsa3072,
        "RSA-4096" => KeyAlgorithm::Rsa4096,
        "ED25519" => KeyAlgorithm::Ed25519,
        _ => {
            return Err(format!(
                "unknown algorithm {s:?}; use ECDSA-P256, ECDSA-P384, RSA-2048, RSA-3072, RSA-4096 or Ed25519"
            ));
        }
    })
}
