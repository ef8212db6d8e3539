//! The cluster CA: a generated self-signed root, or a user-supplied CA
//! (typically an intermediate of a company PKI) loaded from PEM.

use std::time::Duration;

use jiff::Timestamp;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use super::csr::{CsrSubject, SubjectAltNames};
use super::keys::{KeyAlgorithm, PrivateKey};
use super::name_constraints::{self, NameConstraintViolation, NameConstraints};
use super::signer::{
    self, BACKDATE, KU_CRL_SIGN, KU_KEY_CERT_SIGN, LeafProfile, Template, add,
    authority_key_identifier, basic_constraints, encode_and_sign, key_identifier, key_usage,
    random_serial, subject_key_identifier, subtract, verify_issued_by, whole_seconds,
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
    /// What signing needs of each certificate of `chain`, in the same order.
    links: Vec<Link>,
    subject_der: Vec<u8>,
    key_identifier: Option<Vec<u8>>,
    not_before: Timestamp,
    not_after: Timestamp,
}

/// One certificate of the chain as checked at load: named in messages, its
/// validity re-checked at every signature, its name constraints applied to every leaf.
#[derive(Debug, Clone)]
struct Link {
    subject: String,
    not_before: Timestamp,
    not_after: Timestamp,
    name_constraints: NameConstraints,
}

/// Why a certificate of the CA bundle cannot serve in the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainProblem {
    #[error("is not valid before {not_before}")]
    NotYetValid { not_before: Timestamp },

    #[error("expired at {not_after}")]
    Expired { not_after: Timestamp },

    #[error("is not a CA (basicConstraints CA:true is missing)")]
    NotACa,

    #[error("has a keyUsage without keyCertSign, so it may not sign certificates")]
    MissingKeyCertSign,

    #[error(
        "allows at most {path_len} CA certificates below it (pathLenConstraint {path_len}), but {below} follow it in the bundle"
    )]
    PathLenExceeded { path_len: u32, below: usize },

    #[error("has nameConstraints that cannot be read: {detail}")]
    InvalidNameConstraints { detail: String },
}

impl ChainProblem {
    /// A stable PascalCase category (see [`PkiError::reason`]).
    pub fn reason(&self) -> &'static str {
        match self {
            ChainProblem::NotYetValid { .. } => "CaNotYetValid",
            ChainProblem::Expired { .. } => "CaExpired",
            ChainProblem::NotACa => "CaCertificateNotCa",
            ChainProblem::MissingKeyCertSign => "CaMissingKeyCertSign",
            ChainProblem::PathLenExceeded { .. } => "CaPathLenExceeded",
            ChainProblem::InvalidNameConstraints { .. } => "CaNameConstraintsInvalid",
        }
    }
}

/// The name a certificate is shown by in messages: its subject, RFC 4514 style.
fn display_subject(cert: &X509Certificate<'_>) -> String {
    let subject = cert.subject().to_string();
    if subject.is_empty() {
        "empty subject".into()
    } else {
        subject
    }
}

/// Checks what makes `cert` (at `index` of the chain, the CA's own at 0) fit to
/// sign the certificate below it: CA flag, keyCertSign, pathLenConstraint
/// against `below` (the non-self-issued CA certificates under it), and reads
/// its name constraints. Validity is checked separately, at load and at every signature.
fn link_of(index: usize, cert: &X509Certificate<'_>, below: usize) -> Result<Link> {
    let subject = display_subject(cert);
    let refuse = |problem: ChainProblem| PkiError::CaChainInvalid {
        position: index + 1,
        subject: subject.clone(),
        problem,
    };
    let constraints = match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => bc.value,
        Ok(_) => return Err(refuse(ChainProblem::NotACa)),
        Err(_) => return Err(PkiError::InvalidCertificate { index }),
    };
    match cert.key_usage() {
        Ok(Some(usage)) if !usage.value.key_cert_sign() => {
            return Err(refuse(ChainProblem::MissingKeyCertSign));
        }
        Err(_) => return Err(PkiError::InvalidCertificate { index }),
        _ => {}
    }
    if let Some(path_len) = constraints.path_len_constraint
        && below > path_len as usize
    {
        return Err(refuse(ChainProblem::PathLenExceeded { path_len, below }));
    }
    let name_constraints = match cert.name_constraints() {
        Ok(Some(nc)) => NameConstraints::from_x509(
            nc.value.permitted_subtrees.as_deref(),
            nc.value.excluded_subtrees.as_deref(),
        )
        .map_err(|detail| refuse(ChainProblem::InvalidNameConstraints { detail }))?,
        Ok(None) => NameConstraints::default(),
        Err(_) => {
            return Err(refuse(ChainProblem::InvalidNameConstraints {
                detail: "the extension does not parse".into(),
            }));
        }
    };
    Ok(Link {
        not_before: super::asn1_time(&cert.validity().not_before),
        not_after: super::asn1_time(&cert.validity().not_after),
        subject,
        name_constraints,
    })
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
            links: vec![Link {
                subject: format!("CN={common_name}"),
                not_before,
                not_after,
                name_constraints: NameConstraints::default(),
            }],
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

        let certs: Vec<X509Certificate<'_>> = chain
            .iter()
            .enumerate()
            .map(|(index, der)| {
                X509Certificate::from_der(der)
                    .map(|(_, cert)| cert)
                    .map_err(|_| PkiError::InvalidCertificate { index })
            })
            .collect::<Result<_>>()?;
        let cert = &certs[0];
        if !key.matches_spki(cert.public_key().raw) {
            return Err(PkiError::KeyCertificateMismatch);
        }
        for index in 0..chain.len().saturating_sub(1) {
            verify_issued_by(&chain[index], &chain[index + 1]).map_err(|_| {
                PkiError::CaChainBroken {
                    index,
                    next: index + 1,
                }
            })?;
        }
        // Every certificate of the chain must be able to sign the one below it
        // (RFC 5280 §6.1.4): a verifier refuses our leaves otherwise, however
        // good the CA's own certificate is.
        let mut links = Vec::with_capacity(certs.len());
        let mut below = 0;
        for (index, cert) in certs.iter().enumerate() {
            links.push(link_of(index, cert, below)?);
            // pathLenConstraint counts the CA certificates that follow, except
            // self-issued ones (RFC 5280 §4.2.1.9).
            if cert.subject().as_raw() != cert.issuer().as_raw() {
                below += 1;
            }
        }
        let key_identifier = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        let ca = Self {
            subject_der: cert.subject().as_raw().to_vec(),
            not_before: links[0].not_before,
            not_after: links[0].not_after,
            links,
            key_identifier,
            key,
            chain: chain.clone(),
        };
        ca.check_valid_at(now)?;
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
        // Unconstrained: the test name need not fit the CA's name constraints.
        let leaf = signer::sign_unconstrained(self, &csr, &profile, now)
            .map_err(|e| unusable(e.to_string()))?;
        verify_issued_by(&leaf.der, &self.chain[0])
            .map_err(|_| unusable("its signature does not verify".into()))?;
        Ok(())
    }

    /// Fails unless `now` lies within the validity of every certificate of the
    /// chain, naming the first that is not. A notBefore up to [`BACKDATE`] in the
    /// future is tolerated as clock skew (a CA minted a moment ago elsewhere).
    pub fn check_valid_at(&self, now: Timestamp) -> Result<()> {
        for (index, link) in self.links.iter().enumerate() {
            let problem = if add(now, BACKDATE) < link.not_before {
                ChainProblem::NotYetValid {
                    not_before: link.not_before,
                }
            } else if now >= link.not_after {
                ChainProblem::Expired {
                    not_after: link.not_after,
                }
            } else {
                continue;
            };
            return Err(PkiError::CaChainInvalid {
                position: index + 1,
                subject: link.subject.clone(),
                problem,
            });
        }
        Ok(())
    }

    /// Checks a request's names against the name constraints of every
    /// certificate of the chain (RFC 5280 §4.2.1.10): dNSName, iPAddress,
    /// rfc822Name and URI host subtrees, permitted and excluded; a commonName
    /// that reads as a host name counts as a dNSName. Cheap: run it before any key exists.
    pub fn check_names(
        &self,
        sans: &SubjectAltNames,
        common_name: Option<&str>,
    ) -> Result<(), NameConstraintViolation> {
        name_constraints::check(&self.constraints(), sans, common_name, None)
    }

    /// [`Self::check_names`] plus the directoryName subtrees, which constrain
    /// the whole subject: everything a leaf of `profile` would name.
    pub fn check_leaf(&self, profile: &LeafProfile) -> Result<(), NameConstraintViolation> {
        name_constraints::check(
            &self.constraints(),
            &profile.sans,
            profile.subject.common_name.as_deref(),
            Some(&profile.subject),
        )
    }

    fn constraints(&self) -> Vec<(&str, &NameConstraints)> {
        self.links
            .iter()
            .map(|link| (link.subject.as_str(), &link.name_constraints))
            .collect()
    }

    /// When the first certificate of the chain expires: no leaf may outlive it,
    /// for a chain with an expired issuer no longer verifies.
    pub fn chain_not_after(&self) -> Timestamp {
        self.links
            .iter()
            .map(|link| link.not_after)
            .min()
            .unwrap_or(self.not_after)
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

    /// A CA chain made with rcgen, root first in `specs`; returns the bundle
    /// (the CA's own certificate first, as the operator reads it) and the CA's key.
    fn rcgen_chain(specs: Vec<rcgen::CertificateParams>) -> (String, String) {
        let (bundle, key, _) = rcgen_chain_and_issuer(specs);
        (bundle, key)
    }

    /// [`rcgen_chain`], plus the CA as an rcgen issuer, to sign leaves the
    /// operator would refuse to.
    fn rcgen_chain_and_issuer(
        specs: Vec<rcgen::CertificateParams>,
    ) -> (String, String, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let mut issuer: Option<rcgen::Issuer<'static, rcgen::KeyPair>> = None;
        let mut pems = Vec::new();
        let mut key_pem = String::new();
        for params in specs {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = match &issuer {
                None => params.self_signed(&key).unwrap(),
                Some(issuer) => params.signed_by(&key, issuer).unwrap(),
            };
            pems.push(cert.pem());
            key_pem = key.serialize_pem();
            issuer = Some(rcgen::Issuer::new(params, key));
        }
        pems.reverse();
        (
            pems.concat(),
            key_pem,
            issuer.expect("at least one certificate"),
        )
    }

    /// A CA certificate valid from 2020 to 2099 with keyCertSign, named `cn`.
    fn ca_params(cn: &str, path_len: Option<u8>) -> rcgen::CertificateParams {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(match path_len {
            Some(n) => rcgen::BasicConstraints::Constrained(n),
            None => rcgen::BasicConstraints::Unconstrained,
        });
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        params
    }

    fn load(bundle: &str, key: &str) -> Result<CertificateAuthority> {
        CertificateAuthority::load(bundle.as_bytes(), key.as_bytes(), now())
    }

    fn leaf_profile(dns: &[&str]) -> crate::pki::LeafProfile {
        crate::pki::LeafProfile {
            subject: CsrSubject::default(),
            sans: SubjectAltNames {
                dns: dns.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            usages: vec![crate::pki::Usage::ServerAuth],
            duration: Duration::from_secs(86400),
        }
    }

    fn issue(
        ca: &CertificateAuthority,
        profile: &crate::pki::LeafProfile,
    ) -> Result<crate::pki::IssuedCertificate> {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = crate::pki::build_csr(&key, &profile.subject, &profile.sans).unwrap();
        let csr = crate::pki::VerifiedCsr::parse_and_verify(&csr).unwrap();
        crate::pki::sign(ca, &csr, profile, now())
    }

    #[test]
    fn an_expired_issuer_is_refused_naming_its_position_subject_and_expiry() {
        let mut root = ca_params("Corp Root", None);
        root.not_after = rcgen::date_time_ymd(2025, 1, 1);
        let (bundle, key) = rcgen_chain(vec![root, ca_params("Corp Issuing CA", Some(0))]);
        let error = load(&bundle, &key).unwrap_err();
        assert_eq!(error.reason(), "CaExpired");
        assert_eq!(
            error.to_string(),
            "failed to use the CA: certificate 2 of the CA bundle (CN=Corp Root) expired at 2025-01-01T00:00:00Z"
        );
    }

    #[test]
    fn an_issuer_not_yet_valid_is_refused() {
        let mut root = ca_params("Corp Root", None);
        root.not_before = rcgen::date_time_ymd(2098, 1, 1);
        let (bundle, key) = rcgen_chain(vec![root, ca_params("Corp Issuing CA", Some(0))]);
        let error = load(&bundle, &key).unwrap_err();
        assert_eq!(error.reason(), "CaNotYetValid");
        assert!(
            error
                .to_string()
                .contains("certificate 2 of the CA bundle (CN=Corp Root) is not valid before 2098-01-01T00:00:00Z"),
            "{error}"
        );
    }

    #[test]
    fn an_issuer_that_is_not_a_ca_is_refused() {
        let mut middle = ca_params("Corp Team Cert", None);
        middle.is_ca = rcgen::IsCa::ExplicitNoCa;
        let (bundle, key) = rcgen_chain(vec![
            ca_params("Corp Root", None),
            middle,
            ca_params("Corp Issuing CA", Some(0)),
        ]);
        let error = load(&bundle, &key).unwrap_err();
        assert_eq!(error.reason(), "CaCertificateNotCa");
        assert_eq!(
            error.to_string(),
            "failed to use the CA: certificate 2 of the CA bundle (CN=Corp Team Cert) is not a CA (basicConstraints CA:true is missing)"
        );
    }

    #[test]
    fn an_issuer_whose_key_usage_lacks_key_cert_sign_is_refused() {
        let mut root = ca_params("Corp Root", None);
        root.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let (bundle, key) = rcgen_chain(vec![root, ca_params("Corp Issuing CA", Some(0))]);
        let error = load(&bundle, &key).unwrap_err();
        assert_eq!(error.reason(), "CaMissingKeyCertSign");
        assert!(
            error.to_string().contains(
                "certificate 2 of the CA bundle (CN=Corp Root) has a keyUsage without keyCertSign"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_root_with_path_length_zero_refuses_an_intermediate_between_it_and_the_ca() {
        let (bundle, key) = rcgen_chain(vec![
            ca_params("Corp Root", Some(0)),
            ca_params("Corp Policy CA", None),
            ca_params("Corp Issuing CA", Some(0)),
        ]);
        let error = load(&bundle, &key).unwrap_err();
        assert_eq!(error.reason(), "CaPathLenExceeded");
        assert_eq!(
            error.to_string(),
            "failed to use the CA: certificate 3 of the CA bundle (CN=Corp Root) allows at most 0 CA certificates below it (pathLenConstraint 0), but 2 follow it in the bundle"
        );
    }

    /// pathLenConstraint counts the CA certificates below, the operator's own
    /// CA included: root → intermediate → our CA needs pathLen ≥ 2 on the root,
    /// and OpenSSL draws the line at the same place for the leaves we sign.
    #[test]
    fn path_length_is_counted_as_openssl_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        for (root_path_len, accepted) in [(1, false), (2, true)] {
            let (bundle, key, issuer) = rcgen_chain_and_issuer(vec![
                ca_params("Corp Root", Some(root_path_len)),
                ca_params("Corp Policy CA", Some(1)),
                ca_params("Corp Issuing CA", Some(0)),
            ]);
            assert_eq!(
                load(&bundle, &key).is_ok(),
                accepted,
                "root pathLen {root_path_len}"
            );
            // The same chain, unchecked, with a leaf: does OpenSSL agree?
            let blocks = crate::pki::parse_pem_blocks(bundle.as_bytes()).unwrap();
            let ders: Vec<Vec<u8>> = blocks.into_iter().map(|b| b.into_contents()).collect();
            let leaf_key = rcgen::KeyPair::generate().unwrap();
            let mut leaf = rcgen::CertificateParams::new(vec!["web.example".to_string()]).unwrap();
            leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
            leaf.not_after = rcgen::date_time_ymd(2090, 1, 1);
            let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
            std::fs::write(dir.path().join("leaf.pem"), leaf.pem()).unwrap();
            std::fs::write(
                dir.path().join("untrusted.pem"),
                crate::pki::to_pem("CERTIFICATE", &ders[0])
                    + &crate::pki::to_pem("CERTIFICATE", &ders[1]),
            )
            .unwrap();
            std::fs::write(
                dir.path().join("root.pem"),
                crate::pki::to_pem("CERTIFICATE", &ders[2]),
            )
            .unwrap();
            let verified = Command::new("openssl")
                .current_dir(dir.path())
                .args([
                    "verify",
                    "-CAfile",
                    "root.pem",
                    "-untrusted",
                    "untrusted.pem",
                    "leaf.pem",
                ])
                .output()
                .unwrap();
            assert_eq!(
                verified.status.success(),
                accepted,
                "root pathLen {root_path_len}: {}",
                String::from_utf8_lossy(&verified.stdout)
            );
        }
    }

    #[test]
    fn a_leaf_never_outlives_an_issuer_that_expires_before_the_ca() {
        let mut root = ca_params("Corp Root", None);
        root.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let (bundle, key) = rcgen_chain(vec![root, ca_params("Corp Issuing CA", Some(0))]);
        let ca = load(&bundle, &key).unwrap();
        assert_eq!(
            ca.not_after(),
            "2099-01-01T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        let mut profile = leaf_profile(&["web.example"]);
        profile.duration = Duration::from_secs(40 * 365 * 86400);
        let issued = issue(&ca, &profile).unwrap();
        assert_eq!(
            issued.not_after,
            "2030-01-01T00:00:00Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn dns_name_constraints_of_an_issuer_are_kept_and_refuse_names_outside_them() {
        let mut root = ca_params("Corp Root", None);
        root.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: vec![rcgen::GeneralSubtree::DnsName("corp.example.com".into())],
            excluded_subtrees: vec![rcgen::GeneralSubtree::DnsName(
                "secret.corp.example.com".into(),
            )],
        });
        let (bundle, key) = rcgen_chain(vec![root, ca_params("Corp Issuing CA", Some(0))]);
        // The self-test leaf at load carries a name outside them: load still works.
        let ca = load(&bundle, &key).unwrap();
        let sans = |dns: &[&str]| SubjectAltNames {
            dns: dns.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        ca.check_names(&sans(&["web.corp.example.com", "corp.example.com"]), None)
            .unwrap();
        let error = ca.check_names(&sans(&["evil.com"]), None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "dnsNames[0] \"evil.com\" is outside the name constraints of CA certificate 2 (CN=Corp Root): permitted dNSName corp.example.com"
        );
        let error = ca
            .check_names(&sans(&["a.secret.corp.example.com"]), None)
            .unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("excluded dNSName secret.corp.example.com"),
            "{error}"
        );
        // The signer refuses them too, whoever forgets to ask first.
        let error = issue(&ca, &leaf_profile(&["evil.com"])).unwrap_err();
        assert_eq!(error.reason(), "PolicyViolation");
        assert!(
            error.to_string().contains("dnsNames[0] \"evil.com\""),
            "{error}"
        );
    }

    /// An OpenSSL-made intermediate constrained in all four forms: what the
    /// operator lets through, OpenSSL verifies; each form refuses what lies outside.
    #[test]
    fn name_constraints_in_every_form_agree_with_openssl() {
        let dir = tempfile::tempdir().unwrap();
        openssl_intermediate(dir.path());
        std::fs::write(
            dir.path().join("nc.ext"),
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n\
             nameConstraints=critical,permitted;DNS:.corp.example.com,permitted;IP:10.0.0.0/255.0.0.0,\
             permitted;email:.corp.example.com,permitted;URI:.corp.example.com,\
             excluded;DNS:secret.corp.example.com,excluded;IP:10.9.0.0/255.255.0.0,\
             excluded;email:ceo@mail.corp.example.com,excluded;URI:legacy.corp.example.com\n",
        )
        .unwrap();
        openssl(
            dir.path(),
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
                "nc.pem",
                "-days",
                "20",
                "-extfile",
                "nc.ext",
            ],
        );
        let mut bundle = read(dir.path(), "nc.pem");
        bundle.extend(read(dir.path(), "root.pem"));
        let ca = CertificateAuthority::load(&bundle, &read(dir.path(), "int.key"), now()).unwrap();

        let allowed = SubjectAltNames {
            dns: vec!["web.corp.example.com".into()],
            ips: vec!["10.1.2.3".parse().unwrap()],
            emails: vec!["dev@mail.corp.example.com".into()],
            uris: vec!["https://web.corp.example.com/api".into()],
        };
        ca.check_names(&allowed, Some("web.corp.example.com"))
            .unwrap();
        let mut profile = leaf_profile(&[]);
        profile.sans = allowed.clone();
        let issued = issue(&ca, &profile).unwrap();
        std::fs::write(dir.path().join("leaf.pem"), &issued.pem).unwrap();
        let verify = openssl(
            dir.path(),
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "nc.pem",
                "leaf.pem",
            ],
        );
        assert!(verify.contains("leaf.pem: OK"), "{verify}");

        let outside = |edit: &dyn Fn(&mut SubjectAltNames)| {
            let mut sans = allowed.clone();
            edit(&mut sans);
            ca.check_names(&sans, None).unwrap_err()
        };
        type Edit<'a> = &'a dyn Fn(&mut SubjectAltNames);
        let cases: [(Edit<'_>, &str, &str); 8] = [
            (
                &|s| s.dns[0] = "corp.example.com".into(),
                "dnsNames[0]",
                "permitted dNSName .corp.example.com",
            ),
            (
                &|s| s.dns[0] = "x.secret.corp.example.com".into(),
                "dnsNames[0]",
                "excluded dNSName secret.corp.example.com",
            ),
            (
                &|s| s.ips[0] = "192.168.1.1".parse().unwrap(),
                "ipAddresses[0]",
                "permitted iPAddress 10.0.0.0/8",
            ),
            (
                &|s| s.ips[0] = "10.9.8.7".parse().unwrap(),
                "ipAddresses[0]",
                "excluded iPAddress 10.9.0.0/16",
            ),
            (
                &|s| s.emails[0] = "dev@gmail.com".into(),
                "emailAddresses[0]",
                "permitted rfc822Name .corp.example.com",
            ),
            (
                &|s| s.emails[0] = "ceo@mail.corp.example.com".into(),
                "emailAddresses[0]",
                "excluded rfc822Name ceo@mail.corp.example.com",
            ),
            (
                &|s| s.uris[0] = "https://evil.com/".into(),
                "uris[0]",
                "permitted uniformResourceIdentifier .corp.example.com",
            ),
            (
                &|s| s.uris[0] = "https://legacy.corp.example.com/".into(),
                "uris[0]",
                "excluded uniformResourceIdentifier legacy.corp.example.com",
            ),
        ];
        for (edit, field, constraint) in cases {
            let error = outside(edit);
            assert_eq!(
                (error.field.as_str(), error.constraint.as_str()),
                (field, constraint)
            );
            assert_eq!(error.position, 1);
            assert_eq!(
                error.subject,
                "C=DE, O=Example Corp, OU=PKI, CN=Example Issuing CA"
            );
        }
        let error = ca
            .check_names(&SubjectAltNames::default(), Some("evil.com"))
            .unwrap_err();
        assert_eq!(error.field, "commonName");
    }
}
