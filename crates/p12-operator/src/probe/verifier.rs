//! The recording verifier: a `ServerCertVerifier` that keeps what the server
//! presented and the real WebPKI verifier's verdict. Uses rustls and the
//! error classification.
//!
//! The recording verifier asks the real WebPKI verifier for its verdict, keeps
//! it, and lets the handshake go on even when the verdict is negative, so that
//! the chain, protocol and cipher of a failing endpoint are reported too. That
//! is safe because the probe never sends application data: the connection is
//! closed right after the handshake, and only the recorded verdict decides
//! whether the endpoint counts as verified. Handshake signatures are still
//! checked by the real verifier.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::Finding;
use super::classify::classify_verdict;

/// What the server presented, and the real verifier's verdict on it.
#[derive(Debug)]
pub(super) struct Presented {
    pub(super) chain: Vec<Vec<u8>>,
    pub(super) verdict: Result<(), Finding>,
}

/// A `ServerCertVerifier` that records the chain and the WebPKI verdict and
/// then lets the handshake continue (see the module documentation).
#[derive(Debug)]
pub(super) struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    server_name: String,
    presented: Mutex<Option<Presented>>,
}

impl RecordingVerifier {
    pub(super) fn new(inner: Arc<WebPkiServerVerifier>, server_name: &str) -> Self {
        Self {
            inner,
            server_name: server_name.to_owned(),
            presented: Mutex::new(None),
        }
    }

    pub(super) fn take(&self) -> Option<Presented> {
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
