//! Judging one endpoint: turns what the client saw ([`Observation`]) into its
//! [`ProbeResult`], naming the certificate in the message. Pure; uses the
//! report types and certificate parsing from the core.

use crate::pki::{CertInfo, fingerprint_sha256, parse_certificate_info};

use super::report::{ProbeResult, Reason};

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
        pod: None,
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::pki::{
        CertificateAuthority, CsrSubject, KeyAlgorithm, LeafProfile, PrivateKey, SubjectAltNames,
        Usage,
    };
    use jiff::Timestamp;
    use std::time::Duration;

    pub(crate) fn leaf() -> Vec<u8> {
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

    pub(crate) fn handshake(chain: Vec<Vec<u8>>, verdict: Result<(), Finding>) -> Observation {
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
}
