//! `IssuancePolicy` (`p12-operator.io/v1alpha1`, cluster-scoped): what the
//! requests of selected namespaces may ask for beyond the built-in default.
//! Every `///` here is user documentation (`kubectl explain issuancepolicy`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{KeyAlgorithm, Usage};

/// Which namespaces the policy applies to, and what it allows their requests.
/// A request is issued when one policy that applies to its namespace (the
/// built-in default included) allows all of it; policies never combine.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "p12-operator.io",
    version = "v1alpha1",
    kind = "IssuancePolicy",
    shortname = "p12pol",
    category = "p12",
    doc = "Allows the CertificateRequests of selected namespaces to ask for more than the built-in default policy (names of their own Services, serverAuth only, at most 90 days): other DNS names, IP addresses, URIs, email addresses, subject fields, usages, key types and lifetimes. A request is issued when any one policy that applies to its namespace allows all of it.",
    printcolumn(
        name = "Namespaces",
        type_ = "string",
        json_path = ".spec.namespaces.names",
        description = "Namespaces selected by name"
    ),
    printcolumn(
        name = "Selector",
        type_ = "string",
        json_path = ".spec.namespaces.selector.matchLabels",
        description = "Namespaces selected by label"
    ),
    printcolumn(
        name = "DNS Names",
        type_ = "string",
        json_path = ".spec.allow.dnsNames",
        description = "DNS name patterns allowed besides the namespace's own Services"
    ),
    printcolumn(
        name = "Usages",
        type_ = "string",
        json_path = ".spec.allow.usages",
        description = "Extended key usages allowed (default serverAuth)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IssuancePolicySpec {
    /// The namespaces whose requests this policy applies to.
    pub namespaces: NamespaceSelection,
    /// What those requests may ask for. Every field left out allows what the
    /// built-in default allows.
    #[serde(default)]
    pub allow: Allowances,
}

/// Namespaces by name, by label, or both (a namespace named or matching the
/// selector is selected).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.names) > 0 || has(self.selector)").message("select namespaces with names, selector or both; an empty selector ({}) selects every namespace"))]
pub struct NamespaceSelection {
    /// Namespace names.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)))]
    pub names: Vec<String>,
    /// A label selector on namespaces. An empty selector (`{}`) selects every
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// What a request may contain. Patterns may use `{namespace}`, replaced by the
/// request's namespace. In DNS name patterns `*` stands for any run of
/// characters within one label (`*.shop.example.com`, `web-*.example.com`) and
/// a leading `**` label for one or more labels (`**.example.com`); a pattern
/// matches wildcard names it covers (`*.shop.example.com` allows the wildcard
/// certificate `*.shop.example.com`). In URI, email and subject patterns `*`
/// stands for any run of characters. DNS names and emails compare without
/// regard to case.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minDuration) || !has(self.maxDuration) || duration(self.minDuration) <= duration(self.maxDuration)").message("minDuration must not be longer than maxDuration"))]
pub struct Allowances {
    /// Allow the names of the namespace's own Services:
    /// `<service>.<namespace>.svc`, `<service>.<namespace>.svc.<cluster domain>`
    /// and the pod forms `<hostname>.<service>.<namespace>.svc[.<cluster domain>]`
    /// (default `true`).
    #[serde(default = "yes")]
    pub service_names: bool,
    /// DNS name patterns allowed besides the Service names, e.g.
    /// `*.shop.example.com` or `{namespace}.internal.example.com`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = Rule::new(r"self.all(p, p.matches('^[A-Za-z0-9*{}_.-]+$'))").message("dnsNames patterns may contain only letters, digits, '-', '_', '.', '*' and {namespace}"))]
    pub dns_names: Vec<String>,
    /// IP ranges (CIDR, e.g. `10.20.0.0/16`, or single addresses) that
    /// `ipAddresses` may name. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 2, max = 49)))]
    #[x_kube(validation = Rule::new("self.all(r, isCIDR(r) || isIP(r))").message("every ipRanges entry must be a CIDR range (10.20.0.0/16) or an address"))]
    pub ip_ranges: Vec<String>,
    /// URI patterns, e.g. `spiffe://cluster.local/ns/{namespace}/sa/*`. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 1024)))]
    pub uris: Vec<String>,
    /// Email address patterns, e.g. `*@shop.example.com`. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 254)))]
    pub email_addresses: Vec<String>,
    /// Common-name patterns. A common name equal to one of the request's DNS
    /// names is always allowed. Default: none besides those.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 64)))]
    pub common_names: Vec<String>,
    /// Patterns for the other subject fields. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<SubjectAllowances>,
    /// Extended key usages allowed (`serverAuth`, `clientAuth`, `codeSigning`,
    /// `emailProtection`, `timeStamping`, `ocspSigning`). Default: `serverAuth`.
    /// Key usages (`digitalSignature`, `keyEncipherment`, …) are always allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 12))]
    pub usages: Option<Vec<Usage>>,
    /// Key types allowed. Default: every type the operator supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub private_keys: Option<Vec<KeyAllowance>>,
    /// Shortest lifetime allowed, e.g. `24h`. Default: the operator's
    /// `--min-duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub min_duration: Option<String>,
    /// Longest lifetime allowed, e.g. `8760h`. Default: `2160h` (90 days). The
    /// operator's `--max-duration` bounds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub max_duration: Option<String>,
    /// Address ranges (CIDR) the probes of these requests may connect to
    /// besides Pods of their own namespace, e.g. VMs behind a Service without
    /// a selector. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 2, max = 49)))]
    #[x_kube(validation = Rule::new("self.all(r, isCIDR(r) || isIP(r))").message("every probeAddressRanges entry must be a CIDR range or an address"))]
    pub probe_address_ranges: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for Allowances {
    /// The built-in default policy.
    fn default() -> Self {
        Self {
            service_names: true,
            dns_names: Vec::new(),
            ip_ranges: Vec::new(),
            uris: Vec::new(),
            email_addresses: Vec::new(),
            common_names: Vec::new(),
            subject: None,
            usages: None,
            private_keys: None,
            min_duration: None,
            max_duration: None,
            probe_address_ranges: Vec::new(),
        }
    }
}

/// Patterns for subject fields besides the common name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectAllowances {
    /// Organizations (O).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub organizations: Vec<String>,
    /// Organizational units (OU).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub organizational_units: Vec<String>,
    /// Country codes (C).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub countries: Vec<String>,
    /// Localities (L).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub localities: Vec<String>,
    /// States or provinces (ST).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub provinces: Vec<String>,
}

/// A key algorithm and, optionally, the sizes allowed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyAllowance {
    /// `ECDSA`, `RSA` or `Ed25519`.
    pub algorithm: KeyAlgorithm,
    /// Sizes in bits (ECDSA 256, 384; RSA 2048, 3072, 4096). Default: every
    /// size of the algorithm.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub sizes: Vec<i32>,
}
