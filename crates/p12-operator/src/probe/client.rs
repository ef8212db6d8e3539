//! The TLS probe client: one handshake per endpoint over tokio-rustls, with a
//! verifier that records what the server presented (see `verifier`), judged
//! into a [`ProbeResult`]. Uses the recording verifier, the error
//! classification ([`super::classify`]) and the judge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::classify::{classify_connect_error, classify_handshake_error};
use super::verifier::RecordingVerifier;
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

#[cfg(test)]
mod tests {
    use super::*;

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
