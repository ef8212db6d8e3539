//! Classifying what went wrong on a probe connection: rustls certificate,
//! handshake and TCP errors become a [`Finding`] (a probe [`Reason`] and a
//! sentence fragment). Pure; uses rustls error types and the report types.

use std::io;

use rustls::CertificateError;
use rustls::pki_types::UnixTime;

use super::{Finding, Reason};

fn timestamp(time: UnixTime) -> String {
    jiff::Timestamp::from_second(i64::try_from(time.as_secs()).unwrap_or(i64::MAX))
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{} s after the epoch", time.as_secs()))
}

/// Classifies the certificate verifier's verdict. The detail continues the
/// sentence "the served certificate (…) …".
pub fn classify_verdict(error: &rustls::Error, server_name: &str) -> Finding {
    use CertificateError as C;
    let rustls::Error::InvalidCertificate(certificate_error) = error else {
        return Finding::new(
            Reason::UntrustedChain,
            format!("failed verification: {error}"),
        );
    };
    match certificate_error {
        C::Expired => Finding::new(Reason::Expired, "has expired"),
        C::ExpiredContext { not_after, .. } => Finding::new(
            Reason::Expired,
            format!("expired at {}", timestamp(*not_after)),
        ),
        C::NotValidYet => Finding::new(Reason::Expired, "is not valid yet"),
        C::NotValidYetContext { not_before, .. } => Finding::new(
            Reason::Expired,
            format!("is not valid before {}", timestamp(*not_before)),
        ),
        C::NotValidForName | C::NotValidForNameContext { .. } => Finding::new(
            Reason::HostnameMismatch,
            format!("does not name {server_name}"),
        ),
        C::UnknownIssuer => Finding::new(Reason::UntrustedChain, "is not signed by a trusted CA"),
        C::BadSignature => Finding::new(
            Reason::UntrustedChain,
            "is not signed by a trusted CA: a signature in its chain does not verify (another CA of the same name?)",
        ),
        #[allow(deprecated)]
        C::UnsupportedSignatureAlgorithm
        | C::UnsupportedSignatureAlgorithmContext { .. }
        | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => Finding::new(
            Reason::UntrustedChain,
            "is signed with an algorithm the probe does not accept (SHA-1 and RSA keys outside 2048–8192 bits are refused)",
        ),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => Finding::new(
            Reason::UntrustedChain,
            "is not valid for server authentication (extended key usage)",
        ),
        C::BadEncoding => Finding::new(Reason::UntrustedChain, "is malformed"),
        C::Revoked => Finding::new(Reason::UntrustedChain, "is revoked"),
        C::UnhandledCriticalExtension => Finding::new(
            Reason::UntrustedChain,
            "has a critical extension the verifier does not understand",
        ),
        other => Finding::new(
            Reason::UntrustedChain,
            format!(
                "failed verification: {}",
                rustls::Error::InvalidCertificate(other.clone())
            ),
        ),
    }
}

/// Classifies an error of the TLS handshake (after the certificate verdict).
pub fn classify_handshake_error(error: &io::Error) -> Finding {
    if let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return classify_tls_error(tls);
    }
    let detail = match error.kind() {
        io::ErrorKind::UnexpectedEof => {
            "the server closed the connection during the TLS handshake".to_owned()
        }
        io::ErrorKind::ConnectionReset => {
            "the server reset the connection during the TLS handshake".to_owned()
        }
        _ => format!("the TLS handshake failed: {error}"),
    };
    Finding::new(Reason::HandshakeFailed, detail)
}

/// Classifies a rustls error that ended the handshake.
pub fn classify_tls_error(error: &rustls::Error) -> Finding {
    use rustls::Error as E;
    let detail = match error {
        E::AlertReceived(alert) => {
            format!("the server aborted the TLS handshake with the alert {alert:?}")
        }
        E::PeerIncompatible(what) => format!(
            "the server offers nothing the probe accepts (TLS 1.2 with AEAD suites or TLS 1.3): {what:?}"
        ),
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => {
            format!(
                "the server's answer is not a TLS handshake (does the port speak TLS?): {error}"
            )
        }
        E::NoCertificatesPresented => "the server presented no certificate".to_owned(),
        // Our verifier accepts every chain, so a certificate error here is the
        // handshake signature: the server does not hold the certificate's key.
        E::InvalidCertificate(_) => format!(
            "the server's handshake signature does not verify with its certificate's key (does it hold the matching private key?): {error}"
        ),
        other => format!("the TLS handshake failed: {other}"),
    };
    Finding::new(Reason::HandshakeFailed, detail)
}

/// Classifies an error of the TCP connect.
pub fn classify_connect_error(error: &io::Error) -> Finding {
    let detail = match error.kind() {
        io::ErrorKind::ConnectionRefused => {
            "the connection was refused: nothing listens on the port".to_owned()
        }
        io::ErrorKind::TimedOut => {
            return Finding::new(
                Reason::Timeout,
                format!("the TCP connection timed out: {error}"),
            );
        }
        _ => format!("failed to connect: {error}"),
    };
    Finding::new(Reason::ConnectionFailed, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::AlertDescription;
    use rustls::pki_types::{DnsName, ServerName};
    use std::time::Duration;

    fn certificate_error(error: CertificateError) -> rustls::Error {
        rustls::Error::InvalidCertificate(error)
    }

    #[test]
    fn untrusted_issuers_and_bad_signatures_are_untrusted_chains() {
        for error in [
            CertificateError::UnknownIssuer,
            CertificateError::BadSignature,
            CertificateError::InvalidPurpose,
            CertificateError::BadEncoding,
            CertificateError::ApplicationVerificationFailure,
        ] {
            let finding = classify_verdict(&certificate_error(error.clone()), "web.shop.svc");
            assert_eq!(finding.reason, Reason::UntrustedChain, "{error:?}");
        }
        let finding = classify_verdict(
            &certificate_error(CertificateError::UnknownIssuer),
            "web.shop.svc",
        );
        assert_eq!(finding.detail, "is not signed by a trusted CA");
    }

    #[test]
    fn expired_and_not_yet_valid_certificates_are_expired() {
        let at = |second| UnixTime::since_unix_epoch(Duration::from_secs(second));
        let expired = classify_verdict(
            &certificate_error(CertificateError::ExpiredContext {
                time: at(1_800_000_000),
                not_after: at(1_700_000_000),
            }),
            "web.shop.svc",
        );
        assert_eq!(
            expired,
            Finding::new(Reason::Expired, "expired at 2023-11-14T22:13:20Z")
        );
        let early = classify_verdict(
            &certificate_error(CertificateError::NotValidYetContext {
                time: at(0),
                not_before: at(1_700_000_000),
            }),
            "web.shop.svc",
        );
        assert_eq!(
            early,
            Finding::new(Reason::Expired, "is not valid before 2023-11-14T22:13:20Z")
        );
        assert_eq!(
            classify_verdict(&certificate_error(CertificateError::Expired), "x").reason,
            Reason::Expired
        );
        assert_eq!(
            classify_verdict(&certificate_error(CertificateError::NotValidYet), "x").reason,
            Reason::Expired
        );
    }

    #[test]
    fn a_certificate_for_another_name_is_a_hostname_mismatch() {
        let error = certificate_error(CertificateError::NotValidForNameContext {
            expected: ServerName::DnsName(DnsName::try_from("web.shop.svc").unwrap().to_owned()),
            presented: vec!["DnsName(\"other.shop.svc\")".into()],
        });
        assert_eq!(
            classify_verdict(&error, "web.shop.svc"),
            Finding::new(Reason::HostnameMismatch, "does not name web.shop.svc")
        );
        assert_eq!(
            classify_verdict(
                &certificate_error(CertificateError::NotValidForName),
                "web.shop.svc"
            )
            .reason,
            Reason::HostnameMismatch
        );
    }

    #[test]
    fn handshake_errors_are_handshake_failures_with_a_hint() {
        let wrap = |error: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, error);
        let alert = classify_handshake_error(&wrap(rustls::Error::AlertReceived(
            AlertDescription::HandshakeFailure,
        )));
        assert_eq!(alert.reason, Reason::HandshakeFailed);
        assert!(
            alert.detail.contains("HandshakeFailure"),
            "{}",
            alert.detail
        );
        let incompatible = classify_handshake_error(&wrap(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::NoCipherSuitesInCommon,
        )));
        assert!(
            incompatible
                .detail
                .contains("TLS 1.2 with AEAD suites or TLS 1.3"),
            "{}",
            incompatible.detail
        );
        let not_tls = classify_handshake_error(&wrap(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        )));
        assert!(
            not_tls.detail.contains("does the port speak TLS?"),
            "{}",
            not_tls.detail
        );
        let signature =
            classify_handshake_error(&wrap(certificate_error(CertificateError::BadSignature)));
        assert_eq!(signature.reason, Reason::HandshakeFailed);
        assert!(
            signature.detail.contains("matching private key"),
            "{}",
            signature.detail
        );
        let eof = classify_handshake_error(&io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "tls handshake eof",
        ));
        assert_eq!(
            eof,
            Finding::new(
                Reason::HandshakeFailed,
                "the server closed the connection during the TLS handshake"
            )
        );
    }

    #[test]
    fn refused_connections_fail_and_connect_timeouts_time_out() {
        let refused = classify_connect_error(&io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(refused.reason, Reason::ConnectionFailed);
        assert!(refused.detail.contains("refused"));
        assert_eq!(
            classify_connect_error(&io::Error::from(io::ErrorKind::TimedOut)).reason,
            Reason::Timeout
        );
        assert_eq!(
            classify_connect_error(&io::Error::from(io::ErrorKind::HostUnreachable)).reason,
            Reason::ConnectionFailed
        );
    }
}
