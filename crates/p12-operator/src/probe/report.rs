//! What a probe reports: the [`Reason`] and [`ProbeResult`] of one endpoint,
//! the [`ProbeReport`] of a batch, its termination-log encoding (which the
//! operator reads back) and its shape in `status.probe`. Pure; uses only the
//! CRD status types.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use crate::api::v1alpha1::{EndpointResult, ProbeStatus};

/// Kubernetes reads at most this many bytes of a container's termination message.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;

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
    /// Never probed: the operator does not aim probes at this address (not a
    /// Pod of the request's namespace, the API server, loopback, outside the
    /// pod ranges).
    EndpointRefused,
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
            Reason::EndpointRefused => "EndpointRefused",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one endpoint presented, and the verdict on it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    /// `ip:port` probed.
    pub address: String,
    /// The Pod behind the endpoint: filled in by the operator from the
    /// EndpointSlice, never taken from what a probe pod reports.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
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
            pod: self.pod.clone(),
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
    /// The per-probe secret the operator put into the probe pod (`--nonce`):
    /// echoed in the termination message so the operator accepts only reports
    /// of the pods it created. Never printed to stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
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

    /// The report without its nonce, for stdout and logs.
    pub fn without_nonce(&self) -> ProbeReport {
        ProbeReport {
            nonce: None,
            ..self.clone()
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::judge::judge;
    use crate::probe::judge::tests::{handshake, leaf};
    use crate::probe::pod;

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
            nonce: None,
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
            pod: None,
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
            nonce: Some("f".repeat(pod::NONCE_BYTES * 2)),
        };
        let parsed =
            ProbeReport::from_json(&report.termination_message(TERMINATION_MESSAGE_LIMIT)).unwrap();
        assert_eq!(
            (parsed.endpoints.len(), parsed.omitted_endpoints),
            (pod::MAX_ENDPOINTS, 0),
            "no endpoint of a batch is dropped"
        );
        assert_eq!(parsed.nonce, report.nonce, "the nonce always comes back");
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
            nonce: None,
        };
        assert_eq!(report(vec![ok.clone(), ok.clone()]).exit_code(), 0);
        assert_eq!(report(vec![ok.clone(), bad]).exit_code(), 1);
        assert_eq!(report(vec![]).exit_code(), 1);
        assert_eq!(report(vec![ok]).to_status().endpoints.len(), 1);
    }
}
