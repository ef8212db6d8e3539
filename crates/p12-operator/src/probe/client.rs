//! The TLS probe client: one handshake per endpoint over tokio-rustls, with a
//! verifier that records what the server presented, and the classification of
//! rustls errors into probe [`Reason`]s.
//!
//! The recording verifier asks the real WebPKI verifier for its verdict, keeps
//! it, and lets the handshake go on even when the verdict is negative, so that
//! the chain, protocol and cipher of a failing endpoint are reported too. That
//! is safe because the probe never sends application data: the connection is
//! closed right after the handshake, and only the recorded verdict decides
//! whether the endpoint counts as verified. Handshake signatures are still
//! checked by the real verifier.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore,
    SignatureScheme,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{Finding, Observation, ProbeResult, Reason, judge};

/// Why the probe could not be set up. Messages never carry certificate bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    #[error("failed to use --server-name {0:?}: it is neither a DNS name nor an IP address")]
    InvalidServerName(String),

    #[error(
        "failed to trust CA certificate {index}: it is not a certificate rustls accepts as a trust anchor"
    )]
    InvalidCa {
        index: usize,
        #[source]
        source: rustls::Error,
    },

    #[error("failed to set up the certificate verifier")]
    Verifier(#[source] rustls::client::VerifierBuilderError),

    #[error("failed to set up TLS with the aws-lc-rs provider")]
    Tls(#[source] rustls::Error),
}

/// What to probe against: the name, the trusted CA, the expectation, the timeouts.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    server_name: ServerName<'static>,
    server_name_text: String,
    roots: Arc<RootCertStore>,
    expected_fingerprint: Option<String>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
}

impl ProbeSettings {
    /// `expected_fingerprint` must already be normalised (see [`super::normalize_fingerprint`]).
    pub fn new(
        server_name: &str,
        ca_ders: &[Vec<u8>],
        expected_fingerprint: Option<String>,
        connect_timeout: Duration,
        handshake_timeout: Duration,
    ) -> Result<Self, SetupError> {
        let parsed = ServerName::try_from(server_name.to_owned())
            .map_err(|_| SetupError::InvalidServerName(server_name.to_owned()))?;
        let mut roots = RootCertStore::empty();
        for (index, der) in ca_ders.iter().enumerate() {
            roots
                .add(CertificateDer::from(der.clone()))
                .map_err(|source| SetupError::InvalidCa { index, source })?;
        }
        Ok(Self {
            server_name: parsed,
            server_name_text: server_name.to_owned(),
            roots: Arc::new(roots),
            expected_fingerprint,
            connect_timeout,
            handshake_timeout,
        })
    }

    pub fn server_name(&self) -> &str {
        &self.server_name_text
    }

    pub fn expected_fingerprint(&self) -> Option<&str> {
        self.expected_fingerprint.as_deref()
    }
}

/// Probes endpoints with one set of settings. Cheap to share across tasks.
#[derive(Debug)]
pub struct Prober {
    settings: ProbeSettings,
    provider: Arc<CryptoProvider>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl Prober {
    /// Builds the verifier with the aws-lc-rs provider (never the process default)
    /// and warms the provider up, so the first handshake's time is not aws-lc's set-up.
    pub fn new(settings: ProbeSettings) -> Result<Self, SetupError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let webpki =
            WebPkiServerVerifier::builder_with_provider(settings.roots.clone(), provider.clone())
                .build()
                .map_err(SetupError::Verifier)?;
        let prober = Self {
            settings,
            provider,
            webpki,
        };
        prober
            .config(Arc::new(RecordingVerifier::new(prober.webpki.clone(), "")))
            .map_err(SetupError::Tls)?;
        prober.warm_up();
        Ok(prober)
    }

    pub fn settings(&self) -> &ProbeSettings {
        &self.settings
    }

    /// The first aws-lc operation in a process costs tens of milliseconds of set-up.
    fn warm_up(&self) {
        let mut random = [0u8; 32];
        let _ = self.provider.secure_random.fill(&mut random);
        for group in &self.provider.kx_groups {
            let _ = group.start();
        }
    }

    /// A fresh configuration per connection: the verifier records one handshake,
    /// and no session is resumed, so every probe sees the certificate.
    fn config(&self, verifier: Arc<RecordingVerifier>) -> Result<ClientConfig, rustls::Error> {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }

    /// Probes one endpoint and judges the result.
    pub async fn probe(&self, address: SocketAddr) -> ProbeResult {
        let observation = self.observe(address).await;
        judge(
            observation,
            self.settings.expected_fingerprint(),
            self.settings.server_name(),
        )
    }

    /// Connects, shakes hands and records what was seen; never takes longer than
    /// the connect timeout plus the handshake timeout (plus a short close).
    pub async fn observe(&self, address: SocketAddr) -> Observation {
        let mut observation = Observation {
            address: address.to_string(),
            ..Observation::default()
        };
        let settings = &self.settings;
        let tcp = match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(address))
            .await
        {
            Err(_) => {
                observation.failure = Some(Finding::new(
                    Reason::Timeout,
                    format!(
                        "no TCP connection within {}",
                        go_duration(settings.connect_timeout)
                    ),
                ));
                return observation;
            }
            Ok(Err(error)) => {
                observation.failure = Some(classify_connect_error(&error));
                return observation;
            }
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);

        let verifier = Arc::new(RecordingVerifier::new(
            self.webpki.clone(),
            settings.server_name(),
        ));
        let config = match self.config(verifier.clone()) {
            Ok(config) => config,
            Err(error) => {
                observation.failure = Some(Finding::new(
                    Reason::HandshakeFailed,
                    format!("failed to set up TLS: {error}"),
                ));
                return observation;
            }
        };
        let connector = TlsConnector::from(Arc::new(config));
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            settings.handshake_timeout,
            connector.connect(settings.server_name.clone(), tcp),
        )
        .await;
        let elapsed = started.elapsed();
        if let Some(presented) = verifier.take() {
            observation.chain = presented.chain;
            observation.verdict = Some(presented.verdict);
        }
        match outcome {
            Err(_) => {
                let what = if observation.verdict.is_some() {
                    "the server presented a certificate but did not complete the TLS handshake"
                } else {
                    "the server accepted the TCP connection but did not answer the TLS handshake"
                };
                let within = go_duration(settings.handshake_timeout);
                observation.failure = Some(Finding::new(
                    Reason::Timeout,
                    format!("{what} within {within}"),
                ));
            }
            Ok(Err(error)) => observation.failure = Some(classify_handshake_error(&error)),
            Ok(Ok(mut stream)) => {
                let (_, connection) = stream.get_ref();
                observation.tls_version = connection.protocol_version().map(protocol_name);
                observation.cipher_suite = connection.negotiated_cipher_suite().map(|suite| {
                    let suite = suite.suite();
                    suite
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("{suite:?}"))
                });
                observation.handshake_millis =
                    Some(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX));
                // close_notify, best effort: the probe has nothing to say.
                let _ = tokio::time::timeout(Duration::from_millis(500), stream.shutdown()).await;
            }
        }
        observation
    }
}

/// `1s`, `1m30s`, or `250ms` below a second.
fn go_duration(duration: Duration) -> String {
    if duration.as_secs() == 0 || duration.subsec_millis() != 0 && duration.as_secs() < 60 {
        format!("{}ms", duration.as_millis())
    } else {
        crate::duration::format(duration)
    }
}

fn protocol_name(version: ProtocolVersion) -> String {
    match version {
        ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
        ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
        other => format!("{other:?}"),
    }
}

/// What the server presented, and the real verifier's verdict on it.
#[derive(Debug)]
struct Presented {
    chain: Vec<Vec<u8>>,
    verdict: Result<(), Finding>,
}

/// A `ServerCertVerifier` that records the chain and the WebPKI verdict and
/// then lets the handshake continue (see the module documentation).
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    server_name: String,
    presented: Mutex<Option<Presented>>,
}

impl RecordingVerifier {
    fn new(inner: Arc<WebPkiServerVerifier>, server_name: &str) -> Self {
        Self {
            inner,
            server_name: server_name.to_owned(),
            presented: Mutex::new(None),
        }
    }

    fn take(&self) -> Option<Presented> {
        self.presented
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map(|_| ())
            .map_err(|error| classify_verdict(&error, &self.server_name));
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|der| der.as_ref().to_vec())
            .collect();
        *self
            .presented
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Presented { chain, verdict });
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

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
    use rustls::pki_types::DnsName;

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

    #[test]
    fn settings_refuse_bad_server_names_and_non_certificates() {
        let error = ProbeSettings::new(
            "not a name!",
            &[],
            None,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            error.to_string().starts_with("failed to use --server-name"),
            "{error}"
        );
        let error = ProbeSettings::new(
            "web.shop.svc",
            &[b"junk".to_vec()],
            None,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            matches!(error, SetupError::InvalidCa { index: 0, .. }),
            "{error}"
        );
        assert!(
            ProbeSettings::new(
                "10.0.0.7",
                &[],
                None,
                Duration::from_secs(1),
                Duration::from_secs(1)
            )
            .is_ok()
        );
    }
}
