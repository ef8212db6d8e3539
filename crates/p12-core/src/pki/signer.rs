//! Issuing leaf certificates, and reading certificates back.
//!
//! The certificate is built from the *profile* (what policy allowed), never
//! from extensions the CSR asked for; only the CSR's verified public key is
//! taken over, byte for byte. The issuer name is copied verbatim from the CA
//! certificate so chains build in every verifier.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::RngCore;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::ca::CertificateAuthority;
use super::csr::{CsrSubject, SubjectAltNames, VerifiedCsr, extension};
use super::der;
use super::keys::{KeyAlgorithm, PrivateKey, same_public_key};
use super::oids;
use super::{PkiError, Result};

/// Clock skew allowance: certificates are valid from one minute before issuance.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// What a certificate may be used for: key usages and extended key usages,
/// named as in cert-manager but in camelCase (`serverAuth`, `digitalSignature`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Usage {
    ServerAuth,
    ClientAuth,
    CodeSigning,
    EmailProtection,
    TimeStamping,
    OcspSigning,
    DigitalSignature,
    KeyEncipherment,
    KeyAgreement,
    ContentCommitment,
    DataEncipherment,
}

impl Usage {
    pub const ALL: [Usage; 11] = [
        Usage::ServerAuth,
        Usage::ClientAuth,
        Usage::CodeSigning,
        Usage::EmailProtection,
        Usage::TimeStamping,
        Usage::OcspSigning,
        Usage::DigitalSignature,
        Usage::KeyEncipherment,
        Usage::KeyAgreement,
        Usage::ContentCommitment,
        Usage::DataEncipherment,
    ];

    /// The camelCase name used in the API.
    pub fn name(self) -> &'static str {
        match self {
            Usage::ServerAuth => "serverAuth",
            Usage::ClientAuth => "clientAuth",
            Usage::CodeSigning => "codeSigning",
            Usage::EmailProtection => "emailProtection",
            Usage::TimeStamping => "timeStamping",
            Usage::OcspSigning => "ocspSigning",
            Usage::DigitalSignature => "digitalSignature",
            Usage::KeyEncipherment => "keyEncipherment",
            Usage::KeyAgreement => "keyAgreement",
            Usage::ContentCommitment => "contentCommitment",
            Usage::DataEncipherment => "dataEncipherment",
        }
    }

    /// Whether this is an extended key usage (what the certificate is for:
    /// `serverAuth`, `clientAuth`, …) rather than a key usage bit.
    pub fn is_extended(self) -> bool {
        self.extended_key_usage().is_some()
    }

    /// The extended-key-usage OID, for the usages that are EKUs.
    fn extended_key_usage(self) -> Option<&'static [u64]> {
        match self {
            Usage::ServerAuth => Some(oids::KP_SERVER_AUTH),
            Usage::ClientAuth => Some(oids::KP_CLIENT_AUTH),
            Usage::CodeSigning => Some(oids::KP_CODE_SIGNING),
            Usage::EmailProtection => Some(oids::KP_EMAIL_PROTECTION),
            Usage::TimeStamping => Some(oids::KP_TIME_STAMPING),
            Usage::OcspSigning => Some(oids::KP_OCSP_SIGNING),
            _ => None,
        }
    }

    /// The keyUsage bit (RFC 5280 §4.2.1.3, most significant bit first), for key usages.
    fn key_usage_bit(self) -> Option<u16> {
        match self {
            Usage::DigitalSignature => Some(KU_DIGITAL_SIGNATURE),
            Usage::ContentCommitment => Some(0x4000),
            Usage::KeyEncipherment => Some(KU_KEY_ENCIPHERMENT),
            Usage::DataEncipherment => Some(0x1000),
            Usage::KeyAgreement => Some(0x0800),
            _ => None,
        }
    }

    /// Whether a key of `algorithm` can meaningfully carry this usage: encipherment
    /// needs RSA, key agreement needs ECDH-capable (ECDSA) keys.
    pub fn fits_key(self, algorithm: KeyAlgorithm) -> bool {
        match self {
            Usage::KeyEncipherment | Usage::DataEncipherment => algorithm.is_rsa(),
            Usage::KeyAgreement => {
                matches!(algorithm, KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384)
            }
            _ => true,
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for an unknown usage name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown usage {0:?}; expected one of serverAuth, clientAuth, codeSigning, emailProtection, timeStamping, ocspSigning, digitalSignature, keyEncipherment, keyAgreement, contentCommitment, dataEncipherment"
)]
pub struct UnknownUsage(pub String);

impl FromStr for Usage {
    type Err = UnknownUsage;

    fn from_str(name: &str) -> std::result::Result<Self, Self::Err> {
        Usage::ALL
            .into_iter()
            .find(|u| u.name() == name)
            .ok_or_else(|| UnknownUsage(name.to_owned()))
    }
}

pub(crate) const KU_DIGITAL_SIGNATURE: u16 = 0x8000;
pub(crate) const KU_KEY_ENCIPHERMENT: u16 = 0x2000;
pub(crate) const KU_KEY_CERT_SIGN: u16 = 0x0400;
pub(crate) const KU_CRL_SIGN: u16 = 0x0200;

/// What the issued leaf certificate says: decided by the request and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafProfile {
    pub subject: CsrSubject,
    pub sans: SubjectAltNames,
    pub usages: Vec<Usage>,
    pub duration: Duration,
}

/// A freshly signed certificate and the facts recorded in status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub der: Vec<u8>,
    pub pem: String,
    /// Lowercase hex, no separators, no leading zero bytes.
    pub serial_hex: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// SHA-256 of the DER, lowercase hex without separators (see [`fingerprint_sha256`]).
    pub fingerprint_sha256: String,
}

/// SHA-256 over the DER certificate as lowercase hex without colons, e.g. `9f86d0…`.
/// (`openssl x509 -fingerprint -sha256` prints the same digest uppercase with colons.)
pub fn fingerprint_sha256(der_bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(der_bytes))
}

/// RFC 7093 method 1: the leftmost 160 bits of SHA-256 over the subjectPublicKey bits.
pub(crate) fn key_identifier(spki_der: &[u8]) -> Vec<u8> {
    let key_bits = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map(|(_, spki)| spki.subject_public_key.data.to_vec())
        .unwrap_or_else(|_| spki_der.to_vec());
    Sha256::digest(key_bits)[..20].to_vec()
}

/// A random positive 128-bit-long serial (126 bits of entropy) from the thread CSPRNG.
/// The top bits are fixed to `01` so the DER INTEGER is always 16 bytes and positive.
pub(crate) fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    rand::rng().fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x3f) | 0x40;
    serial
}

pub(crate) fn whole_seconds(at: Timestamp) -> Timestamp {
    Timestamp::from_second(at.as_second()).unwrap_or(at)
}

pub(crate) fn add(at: Timestamp, duration: Duration) -> Timestamp {
    SignedDuration::try_from(duration)
        .ok()
        .and_then(|d| at.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

pub(crate) fn subtract(at: Timestamp, duration: Duration) -> Timestamp {
    SignedDuration::try_from(duration)
        .ok()
        .and_then(|d| at.checked_sub(d).ok())
        .unwrap_or(Timestamp::MIN)
}

/// The parts of a TBSCertificate that vary between the certificates we issue.
pub(crate) struct Template<'a> {
    pub serial: [u8; 16],
    pub issuer_der: &'a [u8],
    pub subject_der: &'a [u8],
    pub spki_der: &'a [u8],
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub extensions: Vec<Vec<u8>>,
}

/// Encodes the certificate and signs it with `signer`.
pub(crate) fn encode_and_sign(template: &Template<'_>, signer: &PrivateKey) -> Result<Vec<u8>> {
    let signature_algorithm = signer.algorithm().signature_algorithm_der();
    let extensions: Vec<&[u8]> = template.extensions.iter().map(Vec::as_slice).collect();
    let tbs = der::sequence(&[
        &der::context_constructed(0, &der::small_integer(2)),
        &der::unsigned_integer(&template.serial),
        &signature_algorithm,
        template.issuer_der,
        &der::sequence(&[
            &der::time(template.not_before),
            &der::time(template.not_after),
        ]),
        template.subject_der,
        template.spki_der,
        &der::context_constructed(3, &der::sequence(&extensions)),
    ]);
    let signature = signer.sign(&tbs)?;
    Ok(der::sequence(&[
        &tbs,
        &signature_algorithm,
        &der::bit_string(&signature),
    ]))
}

pub(crate) fn basic_constraints(ca: bool, path_len: Option<u8>) -> Vec<u8> {
    let value = match (ca, path_len) {
        (false, _) => der::sequence(&[]),
        (true, None) => der::sequence(&[&der::boolean(true)]),
        (true, Some(len)) => der::sequence(&[&der::boolean(true), &der::small_integer(len.into())]),
    };
    extension(oids::BASIC_CONSTRAINTS, true, &value)
}

pub(crate) fn key_usage(bits: u16) -> Vec<u8> {
    extension(oids::KEY_USAGE, true, &der::named_bits(bits))
}

pub(crate) fn subject_key_identifier(id: &[u8]) -> Vec<u8> {
    extension(oids::SUBJECT_KEY_IDENTIFIER, false, &der::octet_string(id))
}

pub(crate) fn authority_key_identifier(id: &[u8]) -> Vec<u8> {
    extension(
        oids::AUTHORITY_KEY_IDENTIFIER,
        false,
        &der::sequence(&[&der::context_primitive(0, id)]),
    )
}

/// Signs the CSR's public key as a leaf certificate shaped by `profile`.
///
/// Validity runs from `now` minus [`BACKDATE`] to `now + profile.duration`,
/// cut at the earliest notAfter of the CA's chain. Policy checks are the
/// caller's job ([`super::policy::Policy::check`]); this function enforces only
/// what would make a broken certificate: a chain not valid now, or names its
/// name constraints forbid ([`CertificateAuthority::check_leaf`]).
pub fn sign(
    ca: &CertificateAuthority,
    csr: &VerifiedCsr,
    profile: &LeafProfile,
    now: Timestamp,
) -> Result<IssuedCertificate> {
    ca.check_leaf(profile)?;
    sign_unconstrained(ca, csr, profile, now)
}

/// [`sign`] without the name-constraint check, for the CA's own self-test.
pub(crate) fn sign_unconstrained(
    ca: &CertificateAuthority,
    csr: &VerifiedCsr,
    profile: &LeafProfile,
    now: Timestamp,
) -> Result<IssuedCertificate> {
    let now = whole_seconds(now);
    ca.check_valid_at(now)?;
    if profile.duration.is_zero() {
        return Err(PkiError::Signing {
            reason: "the duration must be positive".into(),
        });
    }
    let not_before = subtract(now, BACKDATE);
    let not_after = whole_seconds(add(now, profile.duration).min(ca.chain_not_after()));

    let key_algorithm = csr.key_algorithm();
    let mut key_usage_bits = KU_DIGITAL_SIGNATURE;
    if key_algorithm.is_rsa() {
        key_usage_bits |= KU_KEY_ENCIPHERMENT;
    }
    for usage in &profile.usages {
        if let Some(bit) = usage
            .key_usage_bit()
            .filter(|_| usage.fits_key(key_algorithm))
        {
            key_usage_bits |= bit;
        }
    }
    let mut ekus: Vec<&[u64]> = Vec::new();
    for eku in profile.usages.iter().filter_map(|u| u.extended_key_usage()) {
        if !ekus.contains(&eku) {
            ekus.push(eku);
        }
    }

    let mut extensions = vec![basic_constraints(false, None), key_usage(key_usage_bits)];
    if !ekus.is_empty() {
        let oids: Vec<Vec<u8>> = ekus.iter().map(|arcs| der::oid(arcs)).collect();
        let parts: Vec<&[u8]> = oids.iter().map(Vec::as_slice).collect();
        extensions.push(extension(
            oids::EXTENDED_KEY_USAGE,
            false,
            &der::sequence(&parts),
        ));
    }
    if !profile.sans.is_empty() {
        // With an empty subject the SAN carries the identity and must be critical (RFC 5280 §4.2.1.6).
        extensions.push(extension(
            oids::SUBJECT_ALT_NAME,
            profile.subject.is_empty(),
            &profile.sans.to_der(),
        ));
    }
    extensions.push(subject_key_identifier(&key_identifier(csr.spki_der())));
    if let Some(ca_key_id) = ca.key_identifier() {
        extensions.push(authority_key_identifier(ca_key_id));
    }

    let subject_der = profile.subject.to_der();
    let template = Template {
        serial: random_serial(),
        issuer_der: ca.subject_der(),
        subject_der: &subject_der,
        spki_der: csr.spki_der(),
        not_before,
        not_after,
        extensions,
    };
    let der_bytes = encode_and_sign(&template, ca.key())?;
    verify_issued_by(&der_bytes, ca.cert_der())?;

    Ok(IssuedCertificate {
        pem: super::to_pem("CERTIFICATE", &der_bytes),
        serial_hex: hex::encode(trim_leading_zeros(&template.serial)),
        not_before,
        not_after,
        fingerprint_sha256: fingerprint_sha256(&der_bytes),
        der: der_bytes,
    })
}

/// Checks that `cert` names `issuer` as its issuer and carries its valid signature.
pub(crate) fn verify_issued_by(cert_der: &[u8], issuer_der: &[u8]) -> Result<()> {
    let broken = |reason: &str| PkiError::Signing {
        reason: reason.to_owned(),
    };
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|_| broken("the issued certificate does not parse"))?;
    let (_, issuer) = X509Certificate::from_der(issuer_der)
        .map_err(|_| broken("the CA certificate does not parse"))?;
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(broken("the issuer name does not match the CA subject"));
    }
    cert.verify_signature(Some(issuer.public_key()))
        .map_err(|_| broken("the signature does not verify with the CA key"))
}

fn trim_leading_zeros(bytes: &[u8]) -> &[u8] {
    let skip = bytes
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(bytes.len().saturating_sub(1));
    &bytes[skip..]
}

/// Whether `key` is the private half of the certificate's public key.
pub fn key_matches_certificate(key: &PrivateKey, cert_der: &[u8]) -> Result<bool> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|_| PkiError::InvalidCertificate { index: 0 })?;
    Ok(same_public_key(
        &key.public_key_der(),
        cert.public_key().raw,
    ))
}

/// What `inspect` shows about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// RFC 4514-style, e.g. `CN=web.shop.svc, O=Shop Inc`.
    pub subject: String,
    pub issuer: String,
    /// Lowercase hex, no separators.
    pub serial_hex: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub sans: SubjectAltNames,
    pub is_ca: bool,
    /// `None` for key types the operator does not issue.
    pub key_algorithm: Option<KeyAlgorithm>,
    pub fingerprint_sha256: String,
}

pub fn parse_certificate_info(cert_der: &[u8]) -> Result<CertInfo> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|_| PkiError::InvalidCertificate { index: 0 })?;
    let sans = match cert.subject_alternative_name() {
        Ok(Some(san)) => SubjectAltNames::from_general_names(&san.value.general_names).0,
        _ => SubjectAltNames::default(),
    };
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial_hex: hex::encode(trim_leading_zeros(cert.raw_serial())),
        not_before: super::asn1_time(&cert.validity().not_before),
        not_after: super::asn1_time(&cert.validity().not_after),
        sans,
        is_ca: cert.is_ca(),
        key_algorithm: KeyAlgorithm::from_spki_der(cert.public_key().raw).ok(),
        fingerprint_sha256: fingerprint_sha256(cert_der),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::csr::build_csr;
    use std::process::Command;

    fn now() -> Timestamp {
        "2026-11-29T12:00:00Z".parse().unwrap()
    }

    fn profile() -> LeafProfile {
        LeafProfile {
            subject: CsrSubject::with_common_name("web.shop.svc"),
            sans: SubjectAltNames {
                dns: vec!["web.shop.svc".into(), "localhost".into()],
                ips: vec!["127.0.0.1".parse().unwrap()],
                ..SubjectAltNames::default()
            },
            usages: vec![Usage::ServerAuth, Usage::ClientAuth],
            duration: Duration::from_secs(90 * 24 * 3600),
        }
    }

    fn request(algorithm: KeyAlgorithm, profile: &LeafProfile) -> (PrivateKey, VerifiedCsr) {
        let key = PrivateKey::generate(algorithm).unwrap();
        let csr = build_csr(&key, &profile.subject, &profile.sans).unwrap();
        (key, VerifiedCsr::parse_and_verify(&csr).unwrap())
    }

    fn ca(algorithm: KeyAlgorithm) -> CertificateAuthority {
        CertificateAuthority::generate_self_signed(
            algorithm,
            "test CA",
            Duration::from_secs(3650 * 86400),
            now(),
        )
        .unwrap()
    }

    #[test]
    fn signed_leaf_verifies_against_ca() {
        for (ca_algorithm, leaf_algorithm) in [
            (KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384),
            (KeyAlgorithm::EcdsaP384, KeyAlgorithm::Ed25519),
            (KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256),
            (KeyAlgorithm::Rsa2048, KeyAlgorithm::EcdsaP256),
        ] {
            let ca = ca(ca_algorithm);
            let (key, csr) = request(leaf_algorithm, &profile());
            let issued = sign(&ca, &csr, &profile(), now()).unwrap();
            verify_issued_by(&issued.der, ca.cert_der()).unwrap();
            assert!(key_matches_certificate(&key, &issued.der).unwrap());
            let info = parse_certificate_info(&issued.der).unwrap();
            assert_eq!(info.subject, "CN=web.shop.svc");
            assert_eq!(info.issuer, "CN=test CA");
            assert_eq!(info.sans, profile().sans);
            assert!(!info.is_ca);
            assert_eq!(info.key_algorithm, Some(leaf_algorithm));
            assert_eq!(info.serial_hex, issued.serial_hex);
            assert_eq!(info.fingerprint_sha256, issued.fingerprint_sha256);
        }
    }

    #[test]
    fn validity_is_backdated_a_minute_and_lasts_the_requested_duration() {
        let ca = ca(KeyAlgorithm::EcdsaP256);
        let (_, csr) = request(KeyAlgorithm::EcdsaP256, &profile());
        let issued = sign(&ca, &csr, &profile(), now()).unwrap();
        assert_eq!(
            issued.not_before,
            "2026-11-29T11:59:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            issued.not_after,
            "2027-02-27T12:00:00Z".parse::<Timestamp>().unwrap()
        );
        let info = parse_certificate_info(&issued.der).unwrap();
        assert_eq!(
            (info.not_before, info.not_after),
            (issued.not_before, issued.not_after)
        );
    }

    #[test]
    fn validity_never_outlasts_the_ca() {
        let short_ca = CertificateAuthority::generate_self_signed(
            KeyAlgorithm::EcdsaP256,
            "short",
            Duration::from_secs(86400),
            now(),
        )
        .unwrap();
        let (_, csr) = request(KeyAlgorithm::EcdsaP256, &profile());
        let issued = sign(&short_ca, &csr, &profile(), now()).unwrap();
        assert_eq!(issued.not_after, short_ca.not_after());
    }

    #[test]
    fn serials_are_random_positive_and_sixteen_bytes() {
        let ca = ca(KeyAlgorithm::EcdsaP256);
        let (_, csr) = request(KeyAlgorithm::EcdsaP256, &profile());
        let a = sign(&ca, &csr, &profile(), now()).unwrap();
        let b = sign(&ca, &csr, &profile(), now()).unwrap();
        assert_ne!(
            a.serial_hex, b.serial_hex,
            "same key, same second, different serial"
        );
        assert_ne!(a.fingerprint_sha256, b.fingerprint_sha256);
        for serial in [&a.serial_hex, &b.serial_hex] {
            assert_eq!(serial.len(), 32);
            assert!(u8::from_str_radix(&serial[..2], 16).unwrap() < 0x80);
            assert_eq!(serial, &serial.to_lowercase());
        }
    }

    #[test]
    fn signing_with_an_expired_ca_fails() {
        let ca = ca(KeyAlgorithm::EcdsaP256);
        let (_, csr) = request(KeyAlgorithm::EcdsaP256, &profile());
        let later = add(ca.not_after(), Duration::from_secs(1));
        assert_eq!(
            sign(&ca, &csr, &profile(), later).unwrap_err().reason(),
            "CaExpired"
        );
    }

    #[test]
    fn extensions_come_from_the_profile_and_openssl_agrees() {
        let ca = ca(KeyAlgorithm::EcdsaP256);
        let mut rsa_profile = profile();
        rsa_profile.usages = vec![Usage::ServerAuth, Usage::KeyAgreement];
        let (_, csr) = request(KeyAlgorithm::Rsa2048, &rsa_profile);
        let issued = sign(&ca, &csr, &rsa_profile, now()).unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("leaf.pem"), &issued.pem).unwrap();
        let text = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(dir.path().join("leaf.pem"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("CA:FALSE"), "{text}");
        // RSA gets keyEncipherment; keyAgreement does not fit an RSA key and is left out.
        assert!(
            text.contains("Digital Signature, Key Encipherment\n"),
            "{text}"
        );
        assert!(text.contains("TLS Web Server Authentication\n"), "{text}");
        assert!(
            text.contains("DNS:web.shop.svc, DNS:localhost, IP Address:127.0.0.1"),
            "{text}"
        );
        assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
        assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");

        let fingerprint = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(dir.path().join("leaf.pem"))
            .output()
            .unwrap();
        let fingerprint = String::from_utf8_lossy(&fingerprint.stdout)
            .to_lowercase()
            .replace(':', "");
        assert!(
            fingerprint.trim().ends_with(&issued.fingerprint_sha256),
            "{fingerprint}"
        );
    }

    #[test]
    fn usage_names_round_trip() {
        for usage in Usage::ALL {
            assert_eq!(usage.name().parse::<Usage>().unwrap(), usage);
        }
        assert!("server auth".parse::<Usage>().is_err());
    }
}
