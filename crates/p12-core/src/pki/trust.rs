//! The trust bundle: the root certificates clients should trust. Today the
//! current CA's root; during a CA rotation also the next or the previous one.
//! Every place that publishes trust (`ca.crt`, `truststore.p12`, the
//! distribution ConfigMaps) takes it from here, so a bundle of several roots
//! needs no change anywhere else.

use super::{PkiError, Result, fingerprint_sha256};

/// Root certificates (DER) in the order clients should see them, each once.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct TrustBundle {
    roots: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("fingerprints", &self.fingerprints())
            .finish()
    }
}

impl TrustBundle {
    /// A bundle of `roots` (DER), in their order; a repeated certificate is kept
    /// once, where it first appears. Each must parse as an X.509 certificate.
    pub fn new(roots: impl IntoIterator<Item = Vec<u8>>) -> Result<Self> {
        let mut kept: Vec<Vec<u8>> = Vec::new();
        for (index, der) in roots.into_iter().enumerate() {
            if x509_parser::parse_x509_certificate(&der).is_err() {
                return Err(PkiError::InvalidCertificate { index });
            }
            if !kept.contains(&der) {
                kept.push(der);
            }
        }
        Ok(TrustBundle { roots: kept })
    }

    /// The roots (DER), in order.
    pub fn roots(&self) -> &[Vec<u8>] {
        &self.roots
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The roots as concatenated PEM (`ca.crt`), `\n` line endings.
    pub fn pem(&self) -> String {
        self.roots
            .iter()
            .map(|der| super::to_pem("CERTIFICATE", der))
            .collect()
    }

    /// SHA-256 fingerprints of the roots (lowercase hex), in order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.roots
            .iter()
            .map(|der| fingerprint_sha256(der))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, KeyAlgorithm};
    use std::time::Duration;

    fn root(name: &str) -> Vec<u8> {
        CertificateAuthority::generate_self_signed(
            KeyAlgorithm::EcdsaP256,
            name,
            Duration::from_secs(3600),
            jiff::Timestamp::now(),
        )
        .unwrap()
        .root_der()
        .to_vec()
    }

    #[test]
    fn bundle_keeps_the_order_and_each_root_once() {
        let (a, b) = (root("A"), root("B"));
        let bundle = TrustBundle::new([b.clone(), a.clone(), b.clone()]).unwrap();
        assert_eq!(bundle.roots(), &[b.clone(), a.clone()]);
        assert_eq!(
            bundle.fingerprints(),
            vec![fingerprint_sha256(&b), fingerprint_sha256(&a)]
        );
    }

    #[test]
    fn bundle_pem_is_every_root_in_order_and_parses_back_to_the_same_ders() {
        let (a, b) = (root("A"), root("B"));
        let bundle = TrustBundle::new([a.clone(), b.clone()]).unwrap();
        let pem = bundle.pem();
        let blocks = pem::parse_many(pem.as_bytes()).unwrap();
        let ders: Vec<Vec<u8>> = blocks.iter().map(|p| p.contents().to_vec()).collect();
        assert_eq!(ders, vec![a, b]);
        assert!(blocks.iter().all(|p| p.tag() == "CERTIFICATE"));
        assert!(!pem.contains('\r'));
    }

    #[test]
    fn bundle_refuses_bytes_that_are_not_a_certificate_naming_its_position() {
        let error = TrustBundle::new([root("A"), b"not a certificate".to_vec()]).unwrap_err();
        assert_eq!(error.reason(), "InvalidCertificate");
        assert!(error.to_string().contains("certificate 1"), "{error}");
    }
}
