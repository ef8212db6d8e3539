//! `p12-operator probe`: what probe pods run — a TLS handshake with each
//! endpoint, judged against the cluster CA and the issued certificate.
//!
//! The pure part lives here: the [`ProbeResult`] of one endpoint, the
//! [`judge`] that turns what the client saw ([`Observation`]) into a result,
//! and the [`ProbeReport`] printed on stdout and written (shortened to fit) to
//! the termination log, where the operator reads it back. The network part is
//! in [`client`].

pub mod client;
pub mod pod;

use std::net::SocketAddr;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use crate::api::v1alpha1::{EndpointResult, ProbeStatus};
use crate::cli::ProbeArgs;
use crate::pki::{CertInfo, fingerprint_sha256, parse_certificate_info};

/// Kubernetes reads at most this many bytes of a container's termination message.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;

/// How many endpoints are probed at once.
pub const CONCURRENCY: usize = 16;

/// Why an endpoint passed or failed: a stable PascalCase word.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The chain verified, the certificate was valid and named the server, and
    /// (when an expectation was given) it was the issued certificate.
    Verified,
    /// The certificate verified but is not the one expected: typically a
    /// workload still serving the previous certificate after a renewal.
    StaleCertificate,
    /// The chain does not lead to the trusted CA (or is otherwise unacceptable).
    UntrustedChain,
    /// The certificate does not name the server name.
    HostnameMismatch,
    /// The certificate has expired or is not valid yet.
    Expired,
    /// The TLS handshake did not complete.
    HandshakeFailed,
    /// No TCP connection or no completed handshake within the timeout.
    Timeout,
    /// The TCP connection was refused or could not be made.
    ConnectionFailed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Verified => "Verified",
            Reason::StaleCertificate => "StaleCertificate",
            Reason::UntrustedChain => "UntrustedChain",
            Reason::HostnameMismatch => "HostnameMismatch",
            Reason::Expired => "Expired",
            Reason::HandshakeFailed => "HandshakeFailed",
            Reason::Timeout => "Timeout",
            Reason::ConnectionFailed => "ConnectionFailed",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified problem: the reason and a sentence fragment saying what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub reason: Reason,
    pub detail: String,
}

impl Finding {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// What one endpoint presented, and the verdict on it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    /// `ip:port` probed.
    pub address: String,
    /// The chain verified against the trusted CA, was valid now and named the server.
    pub verified: bool,
    /// SHA-256 of the served leaf certificate (lowercase hex, no colons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_fingerprint_sha256: Option<String>,
    /// Whether the served certificate is the expected one; absent without `--expect-fingerprint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches_issued: Option<bool>,
    /// Negotiated protocol, e.g. `TLSv1.3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    /// Negotiated cipher suite, e.g. `TLS13_AES_128_GCM_SHA256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher_suite: Option<String>,
    /// Duration of the TLS handshake (after the TCP connection), when it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_millis: Option<i64>,
    /// What was seen, in a sentence.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub reason: Reason,
    /// Serial of the served leaf (lowercase hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// notAfter of the served leaf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
    /// How many certificates the server presented (0 when none arrived).
    pub chain_length: usize,
}

impl ProbeResult {
    /// The shape recorded in the CertificateRequest's `status.probe.endpoints`.
    pub fn to_endpoint_result(&self) -> EndpointResult {
        EndpointResult {
            address: self.address.clone(),
            verified: self.verified,
            served_fingerprint_sha256: self.served_fingerprint_sha256.clone(),
            matches_issued: self.matches_issued.unwrap_or(false),
            reason: self.reason.as_str().to_string(),
            tls_version: self.tls_version.clone(),
            cipher_suite: self.cipher_suite.clone(),
            handshake_millis: self.handshake_millis,
            // The status field explains failures only.
            message: if self.reason == Reason::Verified {
                String::new()
            } else {
                self.message.clone()
            },
        }
    }
}

/// The document `probe` prints: one result per endpoint, in the order given.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    pub endpoints: Vec<ProbeResult>,
    pub probed_at: Timestamp,
    /// Endpoints left out of the termination message to fit its size limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted_endpoints: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl ProbeReport {
    /// Whether every endpoint passed (verified and, when expected, the issued certificate).
    pub fn all_verified(&self) -> bool {
        !self.endpoints.is_empty() && self.endpoints.iter().all(|e| e.reason == Reason::Verified)
    }

    /// The process exit code: 0 when every endpoint passed, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.all_verified() { 0 } else { 1 }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// Reads a report back, e.g. from a probe pod's termination message.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The JSON for the termination log, at most `limit` bytes: the full report
    /// if it fits, else without the per-endpoint messages, else with as many
    /// endpoints as fit and `omittedEndpoints` counting the rest.
    pub fn termination_message(&self, limit: usize) -> String {
        let full = self.to_json();
        if full.len() <= limit {
            return full;
        }
        let mut short = self.clone();
        for endpoint in &mut short.endpoints {
            endpoint.message.clear();
        }
        loop {
            let json = short.to_json();
            if json.len() <= limit || short.endpoints.is_empty() {
                return json;
            }
            short.endpoints.pop();
            short.omitted_endpoints += 1;
        }
    }

    /// The shape recorded in the CertificateRequest's `status.probe`.
    pub fn to_status(&self) -> ProbeStatus {
        ProbeStatus {
            last_probe_time: Some(Time(self.probed_at)),
            endpoints: self
                .endpoints
                .iter()
                .map(ProbeResult::to_endpoint_result)
                .collect(),
            ..ProbeStatus::default()
        }
    }
}

/// What the client saw on one connection, before it is judged.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub address: String,
    /// The certificates the server presented (DER), leaf first; empty when none arrived.
    pub chain: Vec<Vec<u8>>,
    /// The verifier's verdict on the chain; `None` when no certificate arrived.
    pub verdict: Option<Result<(), Finding>>,
    /// Why the connection or the handshake did not complete, when it did not.
    pub failure: Option<Finding>,
    pub tls_version: Option<String>,
    pub cipher_suite: Option<String>,
    pub handshake_millis: Option<i64>,
}

/// Normalises a fingerprint as people paste it (`AB:CD:…` or `abcd…`) to
/// lowercase hex without colons; `None` unless it is 32 bytes of hex.
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let hex: String = text
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(16)]
}

/// `CN=web.shop.svc, serial 4a…, issued by CN=CA`: how messages name a certificate.
fn describe(info: Option<&CertInfo>, fingerprint: Option<&str>) -> String {
    match (info, fingerprint) {
        (Some(info), _) => format!(
            "({}, issued by {}, serial {})",
            or_dash(&info.subject),
            or_dash(&info.issuer),
            info.serial_hex
        ),
        (None, Some(fp)) => format!("(unparseable, SHA-256 {}…)", short(fp)),
        (None, None) => String::new(),
    }
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

fn names_of(info: &CertInfo) -> String {
    let names: Vec<String> = info
        .sans
        .dns
        .iter()
        .cloned()
        .chain(info.sans.ips.iter().map(|ip| ip.to_string()))
        .collect();
    if names.is_empty() {
        "no DNS or IP names".to_owned()
    } else {
        names.join(", ")
    }
}

/// Turns an observation into the endpoint's result. A certificate problem is
/// reported ahead of a later handshake failure, and a handshake failure ahead
/// of a fingerprint mismatch; `expected` is a normalised fingerprint.
pub fn judge(observation: Observation, expected: Option<&str>, server_name: &str) -> ProbeResult {
    let leaf = observation.chain.first();
    let fingerprint = leaf.map(|der| fingerprint_sha256(der));
    let info = leaf.and_then(|der| parse_certificate_info(der).ok());
    let matches_issued = expected.map(|e| fingerprint.as_deref() == Some(e));
    let certificate = describe(info.as_ref(), fingerprint.as_deref());

    let (reason, message) = match (&observation.verdict, &observation.failure) {
        (Some(Err(problem)), failure) => {
            let mut message = format!("the served certificate {certificate} {}", problem.detail);
            if problem.reason == Reason::HostnameMismatch
                && let Some(info) = &info
            {
                message.push_str(&format!(" (it names {})", names_of(info)));
            }
            if let Some(failure) = failure {
                message.push_str(&format!("; then {}", failure.detail));
            }
            (problem.reason, message)
        }
        (_, Some(failure)) => {
            let mut message = failure.detail.clone();
            if let (Some(Ok(())), Some(fp)) = (&observation.verdict, &fingerprint) {
                message.push_str(&format!(
                    " (after presenting a certificate that verifies, SHA-256 {}…)",
                    short(fp)
                ));
            }
            (failure.reason, message)
        }
        (None, None) => (
            Reason::HandshakeFailed,
            "the handshake ended without the server presenting a certificate".to_owned(),
        ),
        (Some(Ok(())), None) => match (matches_issued, expected) {
            (Some(false), Some(expected)) => (
                Reason::StaleCertificate,
                format!(
                    "the served certificate {certificate} verifies, but its SHA-256 {}… is not the issued {}…: the workload still serves another certificate",
                    short(fingerprint.as_deref().unwrap_or_default()),
                    short(expected)
                ),
            ),
            _ => {
                let until = info
                    .as_ref()
                    .map(|i| format!(", valid until {}", i.not_after))
                    .unwrap_or_default();
                let what = if matches_issued == Some(true) {
                    "the issued certificate"
                } else {
                    "a certificate"
                };
                (
                    Reason::Verified,
                    format!(
                        "served {what} {certificate} that verifies for {server_name}{until}, over {}",
                        observation.tls_version.as_deref().unwrap_or("TLS")
                    ),
                )
            }
        },
    };

    ProbeResult {
        address: observation.address,
        verified: matches!(observation.verdict, Some(Ok(()))) && observation.failure.is_none(),
        served_fingerprint_sha256: fingerprint,
        matches_issued,
        tls_version: observation.tls_version,
        cipher_suite: observation.cipher_suite,
        handshake_millis: observation.handshake_millis,
        message,
        reason,
        serial: info.as_ref().map(|i| i.serial_hex.clone()),
        not_after: info.as_ref().map(|i| i.not_after),
        chain_length: observation.chain.len(),
    }
}

/// A usage problem: reported on stderr (and in the termination log), exit code 2.
#[derive(Debug)]
struct UsageError(String);

/// Parses the CA certificates from PEM text into DER.
fn parse_ca_pem(text: &[u8], source: &str) -> Result<Vec<Vec<u8>>, UsageError> {
    let blocks = pem::parse_many(text)
        .map_err(|e| UsageError(format!("failed to read the CA from {source}: {e}")))?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(UsageError(format!(
            "failed to read the CA from {source}: no CERTIFICATE block found"
        )));
    }
    Ok(certs)
}

fn settings(args: &ProbeArgs) -> Result<client::ProbeSettings, UsageError> {
    let ca_ders = match (&args.ca_file, &args.ca_pem) {
        (Some(path), _) => {
            let text = std::fs::read(path).map_err(|e| {
                UsageError(format!("failed to read --ca-file {}: {e}", path.display()))
            })?;
            parse_ca_pem(&text, &format!("--ca-file {}", path.display()))?
        }
        (None, Some(text)) => parse_ca_pem(text.as_bytes(), "--ca-pem / P12_PROBE_CA_PEM")?,
        (None, None) => {
            return Err(UsageError("failed to start: give the CA to trust with --ca-file or --ca-pem (P12_PROBE_CA_PEM)".into()));
        }
    };
    let expected_fingerprint = match &args.expect_fingerprint {
        None => None,
        Some(text) if text.trim().is_empty() => None,
        Some(text) => Some(normalize_fingerprint(text).ok_or_else(|| {
            UsageError(format!(
                "failed to read --expect-fingerprint {text:?}: expected 64 hex digits (SHA-256)"
            ))
        })?),
    };
    client::ProbeSettings::new(
        &args.server_name,
        &ca_ders,
        expected_fingerprint,
        args.connect_timeout,
        args.handshake_timeout,
    )
    .map_err(|e| UsageError(e.to_string()))
}

/// Writes the termination message, best effort: the file exists only inside a container.
fn write_termination_log(message: &str) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(crate::cli::termination_log_path())
        .and_then(|mut f| std::io::Write::write_all(&mut f, message.as_bytes()));
}

/// Probes every endpoint (at most [`CONCURRENCY`] at once), keeping their order.
pub async fn probe_all(prober: &client::Prober, endpoints: &[SocketAddr]) -> ProbeReport {
    let endpoints: Vec<ProbeResult> = futures::stream::iter(endpoints.iter().copied())
        .map(|a| prober.probe(a))
        .buffered(CONCURRENCY)
        .collect()
        .await;
    ProbeReport {
        endpoints,
        probed_at: Timestamp::now(),
        omitted_endpoints: 0,
    }
}

/// Runs `p12-operator probe`; returns the exit code (0 all verified, 1 otherwise, 2 usage).
pub async fn main(args: ProbeArgs) -> anyhow::Result<i32> {
    let settings = match settings(&args) {
        Ok(settings) => settings,
        Err(UsageError(message)) => {
            eprintln!("error: {message}");
            write_termination_log(&message);
            return Ok(2);
        }
    };
    let prober = client::Prober::new(settings)?;
    let report = probe_all(&prober, &args.endpoints).await;
    for endpoint in &report.endpoints {
        tracing::info!(address = %endpoint.address, reason = %endpoint.reason, verified = endpoint.verified, "probed");
    }
    println!("{}", report.to_json());
    write_termination_log(&report.termination_message(TERMINATION_MESSAGE_LIMIT));
    Ok(report.exit_code())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::{
        CertificateAuthority, CsrSubject, KeyAlgorithm, LeafProfile, PrivateKey, SubjectAltNames,
        Usage,
    };

    fn leaf() -> Vec<u8> {
        let now = Timestamp::now();
        let ca = CertificateAuthority::generate_self_signed(
            KeyAlgorithm::EcdsaP256,
            "CA",
            Duration::from_secs(86400),
            now,
        )
        .unwrap();
        let profile = LeafProfile {
            subject: CsrSubject::with_common_name("web.shop.svc"),
            sans: SubjectAltNames {
                dns: vec!["web.shop.svc".into()],
                ..Default::default()
            },
            usages: vec![Usage::ServerAuth],
            duration: Duration::from_secs(3600),
        };
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = crate::pki::build_csr(&key, &profile.subject, &profile.sans).unwrap();
        let csr = crate::pki::VerifiedCsr::parse_and_verify(&csr).unwrap();
        crate::pki::sign(&ca, &csr, &profile, now).unwrap().der
    }

    fn handshake(chain: Vec<Vec<u8>>, verdict: Result<(), Finding>) -> Observation {
        Observation {
            address: "10.0.0.7:8443".into(),
            chain,
            verdict: Some(verdict),
            failure: None,
            tls_version: Some("TLSv1.3".into()),
            cipher_suite: Some("TLS13_AES_128_GCM_SHA256".into()),
            handshake_millis: Some(3),
        }
    }

    #[test]
    fn the_issued_certificate_served_and_verified_is_verified() {
        let der = leaf();
        let fingerprint = fingerprint_sha256(&der);
        let result = judge(
            handshake(vec![der.clone()], Ok(())),
            Some(&fingerprint),
            "web.shop.svc",
        );
        assert_eq!(result.reason, Reason::Verified);
        assert!(result.verified);
        assert_eq!(result.matches_issued, Some(true));
        assert_eq!(
            result.served_fingerprint_sha256.as_deref(),
            Some(fingerprint.as_str())
        );
        assert_eq!(
            result.serial,
            Some(parse_certificate_info(&der).unwrap().serial_hex)
        );
        assert_eq!(result.chain_length, 1);
        assert!(
            result
                .message
                .starts_with("served the issued certificate (CN=web.shop.svc"),
            "{}",
            result.message
        );
        let status = result.to_endpoint_result();
        assert!(status.verified && status.matches_issued);
        assert_eq!(status.message, "", "status explains failures only");
    }

    #[test]
    fn another_verified_certificate_is_stale_and_without_expectation_is_verified() {
        let der = leaf();
        let other = "ab".repeat(32);
        let result = judge(
            handshake(vec![der.clone()], Ok(())),
            Some(&other),
            "web.shop.svc",
        );
        assert_eq!(
            (result.reason, result.verified, result.matches_issued),
            (Reason::StaleCertificate, true, Some(false))
        );
        assert!(
            result
                .message
                .contains("is not the issued abababababababab…"),
            "{}",
            result.message
        );
        let result = judge(handshake(vec![der], Ok(())), None, "web.shop.svc");
        assert_eq!(
            (result.reason, result.matches_issued),
            (Reason::Verified, None)
        );
    }

    #[test]
    fn a_certificate_problem_wins_over_a_later_handshake_failure_and_keeps_the_fingerprint() {
        let der = leaf();
        let mut observation = handshake(
            vec![der.clone()],
            Err(Finding::new(
                Reason::UntrustedChain,
                "is not signed by a trusted CA",
            )),
        );
        observation.failure = Some(Finding::new(
            Reason::HandshakeFailed,
            "the server reset the connection",
        ));
        let result = judge(observation, Some(&fingerprint_sha256(&der)), "web.shop.svc");
        assert_eq!(result.reason, Reason::UntrustedChain);
        assert!(!result.verified);
        assert_eq!(
            result.matches_issued,
            Some(true),
            "the fingerprint is still compared"
        );
        assert!(
            result
                .message
                .ends_with("is not signed by a trusted CA; then the server reset the connection"),
            "{}",
            result.message
        );
    }

    #[test]
    fn a_verified_chain_followed_by_a_failed_handshake_is_not_verified() {
        let mut observation = handshake(vec![leaf()], Ok(()));
        observation.failure = Some(Finding::new(
            Reason::HandshakeFailed,
            "the server's handshake signature does not verify",
        ));
        let result = judge(observation, None, "web.shop.svc");
        assert_eq!(
            (result.reason, result.verified),
            (Reason::HandshakeFailed, false)
        );
    }

    #[test]
    fn a_timeout_before_any_certificate_reports_no_fingerprint() {
        let observation = Observation {
            address: "10.0.0.7:8443".into(),
            failure: Some(Finding::new(
                Reason::Timeout,
                "no handshake answered within 1s",
            )),
            ..Observation::default()
        };
        let result = judge(observation, Some(&"ab".repeat(32)), "web.shop.svc");
        assert_eq!(result.reason, Reason::Timeout);
        assert_eq!(result.served_fingerprint_sha256, None);
        assert_eq!(result.matches_issued, Some(false));
        assert_eq!(result.chain_length, 0);
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["reason"], "Timeout");
        assert!(json.get("servedFingerprintSha256").is_none());
    }

    #[test]
    fn fingerprints_are_accepted_with_colons_and_in_uppercase() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(normalize_fingerprint(hex).as_deref(), Some(hex));
        let openssl_style = hex
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(normalize_fingerprint(&openssl_style).as_deref(), Some(hex));
        assert_eq!(normalize_fingerprint("abc"), None);
        assert_eq!(normalize_fingerprint(&"zz".repeat(32)), None);
    }

    #[test]
    fn the_termination_message_drops_messages_first_then_endpoints_to_fit() {
        let der = leaf();
        let one = judge(handshake(vec![der], Ok(())), None, "web.shop.svc");
        let report = |n: usize| ProbeReport {
            endpoints: (0..n)
                .map(|i| ProbeResult {
                    address: format!("10.0.0.{i}:8443"),
                    ..one.clone()
                })
                .collect(),
            probed_at: Timestamp::now(),
            omitted_endpoints: 0,
        };
        let small = report(1);
        assert_eq!(
            small.termination_message(TERMINATION_MESSAGE_LIMIT),
            small.to_json()
        );

        let fits_without_messages = report(9);
        assert!(fits_without_messages.to_json().len() > TERMINATION_MESSAGE_LIMIT);
        let text = fits_without_messages.termination_message(TERMINATION_MESSAGE_LIMIT);
        assert!(text.len() <= TERMINATION_MESSAGE_LIMIT);
        let parsed = ProbeReport::from_json(&text).unwrap();
        assert_eq!(parsed.endpoints.len(), 9);
        assert!(
            parsed
                .endpoints
                .iter()
                .all(|e| e.message.is_empty() && e.served_fingerprint_sha256.is_some())
        );

        let large = report(40);
        let text = large.termination_message(TERMINATION_MESSAGE_LIMIT);
        assert!(text.len() <= TERMINATION_MESSAGE_LIMIT);
        let parsed = ProbeReport::from_json(&text).unwrap();
        assert_eq!(parsed.endpoints.len() + parsed.omitted_endpoints, 40);
        assert_eq!(
            parsed.endpoints[0].address, "10.0.0.0:8443",
            "the first endpoints are kept"
        );
    }

    #[test]
    fn a_full_batch_of_the_largest_results_fits_the_termination_message() {
        let longest = ProbeResult {
            address: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".into(),
            verified: false,
            served_fingerprint_sha256: Some("f".repeat(64)),
            matches_issued: Some(false),
            tls_version: Some("TLSv1.2".into()),
            cipher_suite: Some("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256".into()),
            // The handshake timeout is at most 60 s.
            handshake_millis: Some(60_000),
            message: "m".repeat(500),
            reason: Reason::HostnameMismatch,
            serial: Some("7f".repeat(20)),
            not_after: Some("9999-01-01T23:59:59.999999999Z".parse().unwrap()),
            chain_length: 99,
        };
        let report = ProbeReport {
            endpoints: vec![longest; pod::MAX_ENDPOINTS],
            probed_at: "9999-01-01T23:59:59.999999999Z".parse().unwrap(),
            omitted_endpoints: 0,
        };
        let parsed =
            ProbeReport::from_json(&report.termination_message(TERMINATION_MESSAGE_LIMIT)).unwrap();
        assert_eq!(
            (parsed.endpoints.len(), parsed.omitted_endpoints),
            (pod::MAX_ENDPOINTS, 0),
            "no endpoint of a batch is dropped"
        );
    }

    #[test]
    fn exit_code_is_zero_only_when_every_endpoint_is_verified() {
        let ok = judge(handshake(vec![leaf()], Ok(())), None, "web.shop.svc");
        let bad = ProbeResult {
            reason: Reason::Timeout,
            verified: false,
            ..ok.clone()
        };
        let report = |endpoints| ProbeReport {
            endpoints,
            probed_at: Timestamp::now(),
            omitted_endpoints: 0,
        };
        assert_eq!(report(vec![ok.clone(), ok.clone()]).exit_code(), 0);
        assert_eq!(report(vec![ok.clone(), bad]).exit_code(), 1);
        assert_eq!(report(vec![]).exit_code(), 1);
        assert_eq!(report(vec![ok]).to_status().endpoints.len(), 1);
    }
}
