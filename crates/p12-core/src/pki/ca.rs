//! The cluster CA: a generated self-signed root, or a user-supplied CA
//! (typically an intermediate of a company PKI) loaded from PEM.

use std::time::Duration;

use jiff::Timestamp;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use super::csr::CsrSubject;
use super::keys::{KeyAlgorithm, PrivateKey};
use super::signer::{
    self, BACKDATE, KU_CRL_SIGN, KU_KEY_CERT_SIGN, Template, add, authority_key_identifier,
    basic_constraints, encode_and_sign, key_identifier, key_usage, random_serial,
    subject_key_identifier, subtract, verify_issued_by, whole_seconds,
};
use super::{PkiError, Result};
use crate::sensitive::SecretString;

/// A CA able to sign leaves, with the chain up to the certificate clients trust.
///
/// `chain[0]` is the CA's own certificate, followed by its issuers in order.
/// The last one is the *root* handed to clients (`ca.crt`, truststore). For a
/// user-supplied intermediate whose bundle stops short of a self-signed root,
/// the topmost certificate given is treated as that root: clients that trust
/// it verify our leaves, because verifiers accept any trusted anchor.
pub struct CertificateAuthority {
    key: PrivateKey,
    chain: Vec<Vec<u8>>,
    subject_der: Vec<u8>,
    key_identifier: Option<Vec<u8>>,
    not_before: Timestamp,
    not_after: Timestamp,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("key", &self.key)
            .field("chain_len", &self.chain.len())
            .field("fingerprint", &self.fingerprint())
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl CertificateAuthority {
    /// Creates a self-signed root: CA:true with pathLenConstraint 0 (it signs leaves
    /// only), keyUsage keyCertSign + cRLSign, and subject/authority key identifiers.
    pub fn generate_self_signed(
        algorithm: KeyAlgorithm,
        common_name: &str,
        validity: Duration,
        now: Timestamp,
    ) -> Result<Self> {
        let now = whole_seconds(now);
        let key = PrivateKey::generate(algorithm)?;
        let spki = key.public_key_der();
        let key_id = key_identifier(&spki);
        let subject_der = CsrSubject::with_common_name(common_name).to_der();
        let not_before = subtract(now, BACKDATE);
        let not_after = whole_seconds(add(now, validity));
        let template = Template {
            serial: random_serial(),
            issuer_der: &subject_der,
            subject_der: &subject_der,
            spki_der: &spki,
            not_before,
            not_after,
            extensions: vec![
                basic_constraints(true, Some(0)),
                key_usage(KU_KEY_CERT_SIGN | KU_CRL_SIGN),
                subject_key_identifier(&key_id),
                authority_key_identifier(&key_id),
            ],
        };
        let cert = encode_and_sign(&template, &key)?;
        Ok(Self {
            key,
            chain: vec![cert],
            subject_der,
            key_identifier: Some(key_id),
            not_before,
            not_after,
        })
    }

    /// Loads a CA from its PEM certificate bundle (the CA certificate first, then
    /// optionally its issuers up to the root) and its PEM private key.
    pub fn load(cert_pem_bundle: &[u8], key_pem: &[u8], now: Timestamp) -> Result<Self> {
        let blocks = super::parse_pem_blocks(cert_pem_bundle)?;
        let mut chain = Vec::with_capacity(blocks.len());
        for block in blocks {
            if block.tag() != "CERTIFICATE" {
                return Err(PkiError::InvalidPem {
                    reason: format!(
                        "expected only CERTIFICATE blocks in the CA bundle, found {}",
                        block.tag()
                    ),
                });
            }
            chain.push(block.into_contents());
        }
        for (index, der_bytes) in chain.iter().enumerate() {
            if !matches!(X509Certificate::from_der(der_bytes), Ok(([], _))) {
                return Err(PkiError::InvalidCertificate { index });
            }
        }
        let key_text = std::str::from_utf8(key_pem).map_err(|_| PkiError::InvalidPem {
            reason: "the key is not text".into(),
        })?;
        let key = PrivateKey::from_pem(key_text)?;

        let (_, cert) = X509Certificate::from_der(&chain[0])
            .map_err(|_| PkiError::InvalidCertificate { index: 0 })?;
        if !key.matches_spki(cert.public_key().raw) {
            return Err(PkiError::KeyCertificateMismatch);
        }
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(PkiError::NotACa);
        }
        match cert.key_usage() {
            Ok(Some(usage)) if !usage.value.key_cert_sign() => {
                return Err(PkiError::CaMissingKeyCertSign);
            }
            Err(_) => return Err(PkiError::InvalidCertificate { index: 0 }),
            _ => {}
        }
        let key_identifier = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        let ca = Self {
            subject_der: cert.subject().as_raw().to_vec(),
            not_before: super::asn1_time(&cert.validity().not_before),
            not_after: super::asn1_time(&cert.validity().not_after),
            key_identifier,
            key,
            chain: chain.clone(),
        };
        ca.check_valid_at(now)?;
        for index in 0..chain.len().saturating_sub(1) {
            verify_issued_by(&chain[index], &chain[index + 1]).map_err(|_| {
                PkiError::CaChainBroken {
                    index,
                    next: index + 1,
                }
            })?;
        }
        ca.trial_signature(now)?;
        Ok(ca)
    }

    /// Signs and verifies a throwaway leaf, so a CA whose key and certificate
    /// disagree in a way the comparison above cannot see (another curve, a
    /// subject no leaf can carry) is refused at load time, not at every issuance.
    fn trial_signature(&self, now: Timestamp) -> Result<()> {
        use super::{CsrSubject, LeafProfile, SubjectAltNames, Usage, VerifiedCsr};
        let unusable = |why: String| PkiError::Signing {
            reason: format!("the CA cannot sign a test certificate: {why}"),
        };
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
        let sans = SubjectAltNames {
            dns: vec!["ca-self-test.invalid".into()],
            ..Default::default()
        };
        let csr_der = super::build_csr(&key, &CsrSubject::default(), &sans)?;
        let csr = VerifiedCsr::parse_and_verify(&csr_der)?;
        let profile = LeafProfile {
            subject: CsrSubject::default(),
            sans,
            usages: vec![Usage::ServerAuth],
            duration: std::time::Duration::from_secs(60),
        };
        let leaf = super::sign(self, &csr, &profile, now).map_err(|e| unusable(e.to_string()))?;
        verify_issued_by(&leaf.der, &self.chain[0])
            .map_err(|_| unusable("its signature does not verify".into()))?;
        Ok(())
    }

    /// Fails unless `now` lies within the CA certificate's validity. A notBefore up to
    /// [`BACKDATE`] in the future is tolerated as clock skew (a CA minted a moment ago elsewhere).
    pub fn check_valid_at(&self, now: Timestamp) -> Result<()> {
        if add(now, BACKDATE) < self.not_before {
            return Err(PkiError::CaNotYetValid {
                not_before: self.not_before,
            });
        }
        if now >= self.not_after {
            return Err(PkiError::CaExpired {
                not_after: self.not_after,
            });
        }
        Ok(())
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.key.algorithm()
    }

    pub(crate) fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// The CA private key as PKCS#8 v1 PEM, for storing the CA in its Secret.
    pub fn key_pem(&self) -> SecretString {
        self.key.to_pem()
    }

    pub(crate) fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }

    /// The CA's subjectKeyIdentifier, echoed as authorityKeyIdentifier in leaves.
    /// `None` when a supplied CA certificate has none (then leaves carry no AKI).
    pub(crate) fn key_identifier(&self) -> Option<&[u8]> {
        self.key_identifier.as_deref()
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.chain[0]
    }

    pub fn cert_pem(&self) -> String {
        super::to_pem("CERTIFICATE", &self.chain[0])
    }

    /// The CA certificate followed by its issuers (DER), as placed after the leaf in keystores.
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The CA certificate followed by its issuers, as concatenated PEM.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|der| super::to_pem("CERTIFICATE", der))
            .collect()
    }

    /// The certificate clients should trust: the last of the chain.
    pub fn root_der(&self) -> &[u8] {
        self.chain
            .last()
            .expect("a CA always has its own certificate")
    }

    pub fn root_pem(&self) -> String {
        super::to_pem("CERTIFICATE", self.root_der())
    }

    pub fn not_before(&self) -> Timestamp {
        self.not_before
    }

    pub fn not_after(&self) -> Timestamp {
        self.not_after
    }

    /// SHA-256 fingerprint of the CA certificate (lowercase hex, see [`signer::fingerprint_sha256`]).
    pub fn fingerprint(&self) -> String {
        signer::fingerprint_sha256(&self.chain[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn now() -> Timestamp {
        Timestamp::now()
    }

    fn openssl(dir: &Path, args: &[&str]) -> String {
        let output = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn read(dir: &Path, name: &str) -> Vec<u8> {
        std::fs::read(dir.join(name)).unwrap()
    }

    #[test]
    fn generated_root_is_a_ca_that_openssl_accepts_and_that_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate_self_signed(
            KeyAlgorithm::EcdsaP256,
            "p12-operator CA",
            Duration::from_secs(3650 * 86400),
            now(),
        )
        .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        let text = openssl(dir.path(), &["x509", "-in", "ca.pem", "-noout", "-text"]);
        assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
        let verify = openssl(dir.path(), &["verify", "-CAfile", "ca.pem", "ca.pem"]);
        assert!(verify.contains("ca.pem: OK"), "{verify}");

        let reloaded =
            CertificateAuthority::load(ca.cert_pem().as_bytes(), ca.key_pem().as_bytes(), now())
                .unwrap();
        assert_eq!(reloaded.fingerprint(), ca.fingerprint());
        assert_eq!(reloaded.root_der(), ca.cert_der());
        assert_eq!(reloaded.key_identifier(), ca.key_identifier());
        assert_eq!(reloaded.algorithm(), KeyAlgorithm::EcdsaP256);
    }

    #[test]
    fn loading_with_the_wrong_key_is_refused() {
        let ca = CertificateAuthority::generate_self_signed(
            KeyAlgorithm::Ed25519,
            "a",
            Duration::from_secs(86400),
            now(),
        )
        .unwrap();
        let other = PrivateKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let error =
            CertificateAuthority::load(ca.cert_pem().as_bytes(), other.to_pem().as_bytes(), now())
                .unwrap_err();
        assert_eq!(error.reason(), "KeyCertificateMismatch");
    }

    #[test]
    fn malformed_pem_and_certificates_are_refused_distinctly() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let error =
            CertificateAuthority::load(b"garbage", key.to_pem().as_bytes(), now()).unwrap_err();
        assert_eq!(error.reason(), "InvalidPem");
        let bad_cert = crate::pki::to_pem("CERTIFICATE", b"\x30\x00");
        let error = CertificateAuthority::load(bad_cert.as_bytes(), key.to_pem().as_bytes(), now())
            .unwrap_err();
        assert_eq!(error.reason(), "InvalidCertificate");
    }

    #[test]
    fn an_expired_or_future_ca_is_refused() {
        let ca = CertificateAuthority::generate_self_signed(
            KeyAlgorithm::EcdsaP256,
            "a",
            Duration::from_secs(3600),
            now(),
        )
        .unwrap();
        let later = add(now(), Duration::from_secs(7200));
        let error =
            CertificateAuthority::load(ca.cert_pem().as_bytes(), ca.key_pem().as_bytes(), later)
                .unwrap_err();
        assert_eq!(error.reason(), "CaExpired");
        let earlier = subtract(now(), Duration::from_secs(7200));
        let error =
            CertificateAuthority::load(ca.cert_pem().as_bytes(), ca.key_pem().as_bytes(), earlier)
                .unwrap_err();
        assert_eq!(error.reason(), "CaNotYetValid");
    }

    #[test]
    fn a_leaf_certificate_is_not_accepted_as_ca() {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "2",
                "-subj",
                "/CN=leaf",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
            ],
        );
        let error = CertificateAuthority::load(
            &read(dir.path(), "cert.pem"),
            &read(dir.path(), "key.pem"),
            now(),
        )
        .unwrap_err();
        assert_eq!(error.reason(), "CaCertificateNotCa");
    }

    #[test]
    fn a_ca_without_key_cert_sign_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "2",
                "-subj",
                "/CN=odd",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,digitalSignature",
            ],
        );
        let error = CertificateAuthority::load(
            &read(dir.path(), "cert.pem"),
            &read(dir.path(), "key.pem"),
            now(),
        )
        .unwrap_err();
        assert_eq!(error.reason(), "CaMissingKeyCertSign");
    }

    /// Builds root → intermediate with the openssl CLI, the way a company PKI would.
    fn openssl_intermediate(dir: &Path) {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "root.key",
                "-out",
                "root.pem",
                "-days",
                "30",
                "-subj",
                "/C=DE/O=Example Corp/OU=PKI/OU=Roots/CN=Example Root CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-nodes",
                "-keyout",
                "int.key",
                "-out",
                "int.csr",
                "-subj",
                "/C=DE/O=Example Corp/OU=PKI/CN=Example Issuing CA",
            ],
        );
        std::fs::write(
            dir.join("int.ext"),
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "int.csr",
                "-CA",
                "root.pem",
                "-CAkey",
                "root.key",
                "-CAcreateserial",
                "-out",
                "int.pem",
                "-days",
                "20",
                "-extfile",
                "int.ext",
            ],
        );
    }

    #[test]
    fn an_openssl_intermediate_with_its_root_loads_and_signs_leaves_openssl_verifies() {
        let dir = tempfile::tempdir().unwrap();
        openssl_intermediate(dir.path());
        let mut bundle = read(dir.path(), "int.pem");
        bundle.extend(read(dir.path(), "root.pem"));
        let ca = CertificateAuthority::load(&bundle, &read(dir.path(), "int.key"), now()).unwrap();
        assert_eq!(ca.chain().len(), 2);
        assert_eq!(ca.algorithm(), KeyAlgorithm::EcdsaP384);
        assert_eq!(ca.root_pem().as_bytes(), read(dir.path(), "root.pem"));

        let profile = crate::pki::LeafProfile {
            subject: CsrSubject::with_common_name("svc"),
            sans: crate::pki::SubjectAltNames {
                dns: vec!["svc.example".into()],
                ..Default::default()
            },
            usages: vec![crate::pki::Usage::ServerAuth],
            duration: Duration::from_secs(86400),
        };
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = crate::pki::build_csr(&key, &profile.subject, &profile.sans).unwrap();
        let csr = crate::pki::VerifiedCsr::parse_and_verify(&csr).unwrap();
        let issued = crate::pki::sign(&ca, &csr, &profile, now()).unwrap();
        std::fs::write(dir.path().join("leaf.pem"), &issued.pem).unwrap();
        let verify = openssl(
            dir.path(),
            &[
                "verify",
                "-x509_strict",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "int.pem",
                "-purpose",
                "sslserver",
                "leaf.pem",
            ],
        );
        assert!(verify.contains("leaf.pem: OK"), "{verify}");
    }

    #[test]
    fn a_bundle_in_the_wrong_order_is_a_broken_chain() {
        let dir = tempfile::tempdir().unwrap();
        openssl_intermediate(dir.path());
        let mut bundle = read(dir.path(), "int.pem");
        bundle.extend(read(dir.path(), "int.pem"));
        let error =
            CertificateAuthority::load(&bundle, &read(dir.path(), "int.key"), now()).unwrap_err();
        assert_eq!(error.reason(), "CaChainBroken");
    }
}
