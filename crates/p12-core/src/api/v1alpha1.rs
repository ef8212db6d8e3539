//! `p12-operator.io/v1alpha1`. Every `///` on these types is user documentation:
//! it becomes the CRD's descriptions and `kubectl explain` text.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A request for a certificate signed by the cluster CA, delivered as a PKCS#12
/// keystore, a truststore and PEM files in a Secret the operator owns, and kept
/// valid (renewed before it expires) for as long as the request exists.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "p12-operator.io",
    version = "v1alpha1",
    kind = "CertificateRequest",
    namespaced,
    shortname = "p12cr",
    category = "p12",
    status = "CertificateRequestStatus",
    doc = "A request for a certificate signed by the cluster CA, delivered as a PKCS#12 keystore, a truststore and PEM files in a Secret, and renewed before it expires. See spec for the fields and status for what the operator did.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the Secret holds a valid certificate for the current spec"
    ),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Verified\")].status",
        description = "Whether every endpoint of the probed Service serves the issued certificate"
    ),
    printcolumn(
        name = "Secret",
        type_ = "string",
        json_path = ".spec.secretName",
        description = "The Secret holding the keystore"
    ),
    printcolumn(
        name = "Not After",
        type_ = "string",
        json_path = ".status.notAfter",
        description = "When the current certificate expires"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[kube(validation = Rule::new("size(self.metadata.name) <= 63").message("metadata.name must be at most 63 characters: it becomes the value of the p12-operator.io/request label on the Secret"))]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.commonName) || size(self.dnsNames) + size(self.ipAddresses) + size(self.uris) + size(self.emailAddresses) > 0").message("give at least one of commonName, dnsNames, ipAddresses, uris or emailAddresses"))]
#[x_kube(validation = Rule::new("size(self.dnsNames) + size(self.ipAddresses) + size(self.uris) + size(self.emailAddresses) <= 100").message("at most 100 subject alternative names (dnsNames, ipAddresses, uris and emailAddresses together)"))]
#[x_kube(validation = Rule::new("!has(self.renewBefore) || duration(self.renewBefore) < duration(self.duration)").message("renewBefore must be shorter than duration"))]
pub struct CertificateRequestSpec {
    /// Name of the Secret, in this namespace, that receives the keystore. The
    /// operator creates and owns it; it never writes into a Secret created by
    /// someone else, and deleting this request deletes the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: String,

    /// Common name (CN) of the certificate subject, at most 64 characters.
    /// Optional when names are given; clients check the names, not the CN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub common_name: Option<String>,

    /// Further fields of the certificate subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Subject>,

    /// DNS names the certificate is valid for, e.g. `web.shop.svc`. Without an
    /// IssuancePolicy only the names of this namespace's own Services are
    /// allowed. A leading `*.` requests a wildcard where a policy allows it.
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(min = 1, max = 253)))]
    pub dns_names: Vec<String>,

    /// IP addresses the certificate is valid for.
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(min = 2, max = 45)))]
    #[x_kube(validation = Rule::new("self.all(ip, isIP(ip))").message("every ipAddresses entry must be an IPv4 or IPv6 address"))]
    pub ip_addresses: Vec<String>,

    /// URIs the certificate names (URI subject alternative names), e.g. SPIFFE IDs.
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(min = 1, max = 1024)))]
    #[x_kube(validation = Rule::new("self.all(u, isURL(u))").message("every uris entry must be an absolute URI"))]
    pub uris: Vec<String>,

    /// Email addresses the certificate names.
    #[serde(default)]
    #[schemars(
        length(max = 100),
        inner(length(min = 3, max = 254), regex(pattern = r"^[^@\s]+@[^@\s]+$"))
    )]
    pub email_addresses: Vec<String>,

    /// What the certificate may be used for. TLS servers need `serverAuth`
    /// (the default), TLS clients (mTLS) `clientAuth`, which needs an
    /// IssuancePolicy that allows it.
    #[serde(default = "default_usages")]
    #[schemars(length(min = 1, max = 12))]
    #[x_kube(validation = Rule::new("self.all(u, self.exists_one(v, v == u))").message("usages must not repeat"))]
    pub usages: Vec<Usage>,

    /// Requested lifetime, as a duration like `2160h` (90 days, the default).
    /// The operator's policy bounds it, and it never outlives the CA.
    #[serde(default = "default_duration")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub duration: String,

    /// How long before expiry the certificate is renewed, e.g. `720h`. Default:
    /// a third of the lifetime. Must be shorter than `duration`. Whatever it
    /// says, a certificate is used for at least a tenth of its lifetime (and at
    /// least 5 minutes) before it is renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub renew_before: Option<String>,

    /// The key pair.
    #[serde(default)]
    pub private_key: PrivateKeySpec,

    /// How the PKCS#12 files are protected.
    #[serde(default)]
    pub keystore: KeystoreSpec,

    /// Labels and annotations copied onto the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,

    /// Verify, with TLS handshakes from inside the cluster, that every endpoint
    /// of a Service serves this certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSpec>,

    /// Restart the named workloads of this namespace after each renewal, as
    /// `kubectl rollout restart` does, so that replicas that read the keystore
    /// only at start serve the new certificate; then wait for the rollout and,
    /// with `probe`, verify every replica. Needs the operator installed with
    /// rollout enabled (chart value `rollout.enabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
}

fn default_usages() -> Vec<Usage> {
    vec![Usage::ServerAuth]
}

fn default_duration() -> String {
    "2160h".into()
}

/// Distinguished-name fields of the certificate subject besides the common name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// Organizations (O).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(min = 1, max = 64)))]
    pub organizations: Vec<String>,
    /// Organizational units (OU).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(min = 1, max = 64)))]
    pub organizational_units: Vec<String>,
    /// Two-letter country codes (C).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(regex(pattern = r"^[A-Z]{2}$")))]
    pub countries: Vec<String>,
    /// Localities (L).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(min = 1, max = 128)))]
    pub localities: Vec<String>,
    /// States or provinces (ST).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(min = 1, max = 128)))]
    pub provinces: Vec<String>,
}

/// A purpose the certificate is valid for (key usage or extended key usage).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Usage {
    /// TLS server authentication (extended key usage).
    ServerAuth,
    /// TLS client authentication (extended key usage).
    ClientAuth,
    /// Code signing (extended key usage).
    CodeSigning,
    /// S/MIME email protection (extended key usage).
    EmailProtection,
    /// Time stamping (extended key usage).
    TimeStamping,
    /// OCSP response signing (extended key usage).
    OcspSigning,
    /// Digital signatures (key usage; always set).
    DigitalSignature,
    /// Key encipherment (key usage; RSA keys only).
    KeyEncipherment,
    /// Key agreement (key usage; ECDSA keys only).
    KeyAgreement,
    /// Non-repudiation / content commitment (key usage).
    ContentCommitment,
    /// Data encipherment (key usage; RSA keys only).
    DataEncipherment,
}

/// The certificate's key pair.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.size) || (self.algorithm == 'ECDSA' && self.size in [256, 384]) || (self.algorithm == 'RSA' && self.size in [2048, 3072, 4096])").message("size must be 256 or 384 for ECDSA, 2048, 3072 or 4096 for RSA, and absent for Ed25519"))]
pub struct PrivateKeySpec {
    /// `ECDSA` (default), `RSA` or `Ed25519`. Ed25519 keystores need a recent
    /// consumer (OpenSSL 3, Java 15+) and are not accepted by most TLS clients of
    /// older Java versions.
    #[serde(default)]
    pub algorithm: KeyAlgorithm,
    /// Key size in bits: ECDSA 256 (default) or 384; RSA 2048 (default), 3072 or 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i32>,
    /// `Always` (default) generates a new key at every issuance; `Never` keeps
    /// the key in the Secret across renewals.
    #[serde(default)]
    pub rotation_policy: RotationPolicy,
}

impl Default for PrivateKeySpec {
    fn default() -> Self {
        Self {
            algorithm: KeyAlgorithm::default(),
            size: None,
            rotation_policy: RotationPolicy::default(),
        }
    }
}

/// Key algorithm.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum KeyAlgorithm {
    /// Elliptic-curve ECDSA on P-256 or P-384.
    #[default]
    #[serde(rename = "ECDSA")]
    Ecdsa,
    /// RSA with PKCS#1 v1.5 signatures.
    #[serde(rename = "RSA")]
    Rsa,
    /// Edwards-curve Ed25519.
    Ed25519,
}

/// Whether renewals reuse the key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RotationPolicy {
    /// A new key pair at every issuance.
    #[default]
    Always,
    /// Keep the key pair already in the Secret.
    Never,
}

/// How `keystore.p12` and `truststore.p12` are protected.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeystoreSpec {
    /// A key of a Secret in this namespace that holds the password. The Secret
    /// must consent with the annotation `p12-operator.io/password-for`: `*` (any
    /// request in the namespace) or a comma-separated list of request names;
    /// otherwise (or when it does not exist) the request is refused with
    /// `PasswordSecretNotAllowed`. When absent, the operator generates a random
    /// password and stores it in the Secret under `keystore-password`. Changing
    /// the password, or its Secret's value, re-encrypts the keystores without
    /// re-issuing the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// `Modern2023` (default: AES-256-CBC, PBKDF2-HMAC-SHA256, SHA-256 MAC;
    /// OpenSSL 3, Java 8u301+/11.0.12+/17) or `LegacyDES` (3DES, SHA-1 MAC; for
    /// old consumers; `openssl pkcs12` needs `-legacy` to read it).
    #[serde(default)]
    pub profile: KeystoreProfile,
    /// Alias (friendly name) of the key entry in `keystore.p12`. Default: the
    /// name of this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub alias: Option<String>,
}

/// A key of a Secret in the request's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (same namespace as the request).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// PKCS#12 encryption profile.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum KeystoreProfile {
    /// PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC, HMAC-SHA256 MAC.
    #[default]
    Modern2023,
    /// pbeWithSHAAnd3-KeyTripleDES-CBC with a SHA-1 MAC, for old Java.
    #[serde(rename = "LegacyDES")]
    LegacyDes,
}

/// Metadata copied onto the Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Labels added to the Secret: valid Kubernetes label keys and values
    /// (values at most 63 characters), at most 64 of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 63}))]
    #[x_kube(validation = Rule::new(r"self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))").message("every secretTemplate.labels key must be a valid label key: an optional DNS-subdomain prefix and '/', then 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))]
    #[x_kube(validation = Rule::new(r"self.all(k, self[k].matches('^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$'))").message("every secretTemplate.labels value must be a valid label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret. Keys under `p12-operator.io/` are the
    /// operator's own and cannot be set here. At most 64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new(r"self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))").message("every secretTemplate.annotations key must be a valid annotation key: an optional DNS-subdomain prefix and '/', then 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('p12-operator.io/'))").message("annotations under p12-operator.io/ are reserved for the operator"))]
    pub annotations: BTreeMap<String, String>,
}

/// Which Service to verify and how often.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// The Service, in this namespace, whose ready endpoints are probed.
    pub service: ProbeService,
    /// Time between probes, e.g. `10m` (default). At least `30s`.
    #[serde(default = "default_probe_interval")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub interval: String,
    /// Deadline of one handshake, e.g. `10s` (default).
    #[serde(default = "default_probe_timeout")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub timeout: String,
}

fn default_probe_interval() -> String {
    "10m".into()
}

fn default_probe_timeout() -> String {
    "10s".into()
}

/// Which workloads to restart after a renewal, and how long a rollout may take.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Deployments, StatefulSets and DaemonSets of this namespace that mount
    /// the Secret. Only these are ever touched; workloads of other namespaces
    /// cannot be named. A workload whose replicas already serve the new
    /// certificate (hot reload, seen by the probe) is not restarted.
    #[schemars(length(min = 1, max = 20))]
    #[x_kube(validation = Rule::new("self.all(w, self.exists_one(v, v.kind == w.kind && v.name == w.name))").message("rollout.workloads must not repeat"))]
    pub workloads: Vec<WorkloadRef>,
    /// How long the rollout of all workloads may take, e.g. `10m` (default),
    /// from the renewal. A rollout not finished by then is reported
    /// (`RolledOut=False`, an Event naming the workload) and left to
    /// Kubernetes: its old replicas keep serving, nothing is retried.
    #[serde(default = "default_rollout_timeout")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub timeout: String,
}

fn default_rollout_timeout() -> String {
    "10m".into()
}

/// A workload in the request's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// `Deployment`, `StatefulSet` or `DaemonSet` (group `apps`).
    pub kind: WorkloadKind,
    /// Name of the workload, in the request's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// A kind of workload the operator can restart.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

/// A Service port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeService {
    /// Name of the Service.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Port number of the Service.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestStatus {
    /// `Ready`: the Secret holds a valid certificate for the current spec.
    /// `Issued`: the last issuance attempt's outcome. `Verified`: the probe's verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Start of the current certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    /// End of the current certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When the operator will renew the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// Serial number of the current certificate, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// SHA-256 fingerprint of the current certificate, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint_sha256: Option<String>,
    /// How many certificates have been issued for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Consecutive failed issuance attempts; resets on success. Drives the back-off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<i32>,
    /// When the last issuance attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// The latest probe results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeStatus>,
    /// The latest rollout after a renewal (with `spec.rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// The latest rollout: issued, rolled out, verified, with times.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The certificate this rollout brought to the workloads (SHA-256 fingerprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint_sha256: Option<String>,
    /// When the certificate was issued and the rollout began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When every workload had rolled out, been skipped or given up on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// When the probe after the rollout found every endpoint serving this certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_time: Option<Time>,
    /// One entry per workload of `spec.rollout`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadRolloutStatus>,
}

/// What happened to one workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRolloutStatus {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    /// Name of the workload.
    pub name: String,
    /// `Pending` (waiting for the probe to tell whether it needs a restart),
    /// `Waiting` (mid-rollout already; restarted once that ends), `Restarted`
    /// (rolling), `RolledOut`, `Skipped` (its replicas already serve the new
    /// certificate), `TimedOut`, `NotFound`.
    pub state: String,
    /// When the operator restarted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_time: Option<Time>,
    /// Seconds from the restart until every replica was updated and available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_seconds: Option<i64>,
    /// Pods of this workload that the probe after the rollout found serving
    /// another certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale_pods: Vec<String>,
    /// What the operator saw, in a sentence.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The latest probe of the Service's endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeStatus {
    /// When the probe ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// One entry per ready endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointResult>,
    /// The fingerprint of the issued certificate the endpoints were compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_fingerprint_sha256: Option<String>,
    /// The `p12-operator.io/probe-requested-at` annotation value this probe answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
}

/// What one endpoint presented.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointResult {
    /// `ip:port` probed.
    pub address: String,
    /// The Pod behind the endpoint, as its EndpointSlice names it (`targetRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The chain verified against the cluster CA, was valid and named the Service.
    pub verified: bool,
    /// SHA-256 fingerprint of the certificate the endpoint served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_fingerprint_sha256: Option<String>,
    /// The served certificate is the one currently issued.
    pub matches_issued: bool,
    /// `Verified`, or why not: `StaleCertificate`, `UntrustedChain`,
    /// `HostnameMismatch`, `Expired`, `HandshakeFailed`, `Timeout`, `ConnectionFailed`,
    /// or `EndpointRefused` (not probed: not a Pod of this namespace, or an
    /// address probes may not reach).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Negotiated TLS version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    /// Negotiated cipher suite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher_suite: Option<String>,
    /// Handshake duration in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_millis: Option<i64>,
    /// Why the endpoint failed, when it did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
