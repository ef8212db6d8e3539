//! Key pairs, CSRs, signing policy, the CA.
//!
//! Pure functions over bytes and structs: no I/O, no Kubernetes. The flow is
//! [`keys::PrivateKey::generate`] → [`csr::build_csr`] →
//! [`csr::VerifiedCsr::parse_and_verify`] → [`policy::Policy::check`] →
//! [`signer::sign`] with a [`ca::CertificateAuthority`].

pub mod authorities;
pub mod ca;
pub mod csr;
pub(crate) mod der;
pub mod keys;
mod name_constraints;
pub mod policy;
pub mod signer;
pub mod trust;

pub use authorities::Authorities;
pub use ca::{CertificateAuthority, ChainProblem};
pub use csr::{CsrSubject, SubjectAltNames, VerifiedCsr, build_csr};
pub use keys::{KeyAlgorithm, PrivateKey};
pub use name_constraints::NameConstraintViolation;
pub use policy::{Policy, PolicyViolation};
pub use signer::{
    CertInfo, IssuedCertificate, LeafProfile, Usage, fingerprint_sha256, key_matches_certificate,
    parse_certificate_info, sign,
};
pub use trust::TrustBundle;

/// Why a PKI operation failed. Messages never contain key material or passwords.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    #[error("failed to generate a {algorithm} key")]
    KeyGeneration { algorithm: KeyAlgorithm },

    #[error("failed to read the private key: {reason}")]
    InvalidPrivateKey { reason: &'static str },

    #[error("failed to use the key: unsupported key algorithm ({detail})")]
    UnsupportedKey { detail: String },

    #[error("failed to read PEM: {reason}")]
    InvalidPem { reason: String },

    #[error("failed to parse the certificate signing request")]
    InvalidCsr,

    #[error(
        "failed to verify the certificate signing request: its signature does not match its public key"
    )]
    CsrSignatureInvalid,

    #[error("failed to parse certificate {index} of the bundle")]
    InvalidCertificate { index: usize },

    #[error("failed to load the CA: the private key does not match the CA certificate")]
    KeyCertificateMismatch,

    /// One certificate of the CA bundle (1-based `position`: the CA's own is 1,
    /// its issuer 2, …) cannot serve in the chain.
    #[error("failed to use the CA: certificate {position} of the CA bundle ({subject}) {problem}")]
    CaChainInvalid {
        position: usize,
        subject: String,
        problem: ChainProblem,
    },

    #[error(
        "failed to load the CA: certificate {} of the CA bundle is not issued by certificate {}", .index + 1, .next + 1
    )]
    CaChainBroken { index: usize, next: usize },

    #[error("failed to sign: {reason}")]
    Signing { reason: String },

    #[error("failed to issue: {0}")]
    Policy(#[from] PolicyViolation),

    #[error("failed to issue: {0}")]
    NameConstraint(#[from] NameConstraintViolation),
}

impl PkiError {
    /// A stable PascalCase category, usable as a Kubernetes condition or Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            PkiError::KeyGeneration { .. } => "KeyGenerationFailed",
            PkiError::InvalidPrivateKey { .. } => "InvalidPrivateKey",
            PkiError::UnsupportedKey { .. } => "UnsupportedKeyAlgorithm",
            PkiError::InvalidPem { .. } => "InvalidPem",
            PkiError::InvalidCsr => "InvalidCsr",
            PkiError::CsrSignatureInvalid => "CsrSignatureInvalid",
            PkiError::InvalidCertificate { .. } => "InvalidCertificate",
            PkiError::KeyCertificateMismatch => "KeyCertificateMismatch",
            PkiError::CaChainInvalid { problem, .. } => problem.reason(),
            PkiError::CaChainBroken { .. } => "CaChainBroken",
            PkiError::Signing { .. } => "SigningFailed",
            PkiError::Policy(_) => "PolicyViolation",
            PkiError::NameConstraint(v) => v.reason(),
        }
    }
}

pub type Result<T, E = PkiError> = std::result::Result<T, E>;

/// Object identifiers used across the PKI modules.
pub(crate) mod oids {
    pub const RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
    pub const SHA256_WITH_RSA: &[u64] = &[1, 2, 840, 113549, 1, 1, 11];
    pub const EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
    pub const P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
    pub const P384: &[u64] = &[1, 3, 132, 0, 34];
    pub const ECDSA_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
    pub const ECDSA_SHA384: &[u64] = &[1, 2, 840, 10045, 4, 3, 3];
    pub const ED25519: &[u64] = &[1, 3, 101, 112];

    pub const COMMON_NAME: &[u64] = &[2, 5, 4, 3];
    pub const COUNTRY: &[u64] = &[2, 5, 4, 6];
    pub const LOCALITY: &[u64] = &[2, 5, 4, 7];
    pub const PROVINCE: &[u64] = &[2, 5, 4, 8];
    pub const ORGANIZATION: &[u64] = &[2, 5, 4, 10];
    pub const ORGANIZATIONAL_UNIT: &[u64] = &[2, 5, 4, 11];

    pub const SUBJECT_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 14];
    pub const KEY_USAGE: &[u64] = &[2, 5, 29, 15];
    pub const SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];
    pub const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
    pub const AUTHORITY_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 35];
    pub const EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
    pub const EXTENSION_REQUEST: &[u64] = &[1, 2, 840, 113549, 1, 9, 14];

    pub const KP_SERVER_AUTH: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 1];
    pub const KP_CLIENT_AUTH: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 2];
    pub const KP_CODE_SIGNING: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 3];
    pub const KP_EMAIL_PROTECTION: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 4];
    pub const KP_TIME_STAMPING: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 8];
    pub const KP_OCSP_SIGNING: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 9];

    /// Whether an x509-parser OID equals one of ours.
    pub fn is(oid: &x509_parser::oid_registry::Oid<'_>, arcs: &[u64]) -> bool {
        oid.iter().is_some_and(|it| it.eq(arcs.iter().copied()))
    }
}

/// Parses PEM text into its blocks, mapping errors to [`PkiError::InvalidPem`].
pub(crate) fn parse_pem_blocks(text: &[u8]) -> Result<Vec<pem::Pem>> {
    let blocks = pem::parse_many(text).map_err(|e| PkiError::InvalidPem {
        reason: e.to_string(),
    })?;
    if blocks.is_empty() {
        return Err(PkiError::InvalidPem {
            reason: "no PEM block found".into(),
        });
    }
    Ok(blocks)
}

/// Encodes DER as PEM with `\n` line endings.
pub(crate) fn to_pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Converts an ASN.1 time from x509-parser to a jiff timestamp.
pub(crate) fn asn1_time(t: &x509_parser::time::ASN1Time) -> jiff::Timestamp {
    jiff::Timestamp::from_second(t.timestamp()).unwrap_or(jiff::Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reasons_are_pascal_case_and_messages_start_lowercase() {
        let errors = [
            PkiError::InvalidCsr,
            PkiError::CaChainInvalid {
                position: 2,
                subject: "CN=Corp Root".into(),
                problem: ChainProblem::NotACa,
            },
            PkiError::KeyCertificateMismatch,
            PkiError::CaChainBroken { index: 0, next: 1 },
            PkiError::InvalidPrivateKey {
                reason: "not PKCS#8",
            },
        ];
        for error in errors {
            let reason = error.reason();
            assert!(
                reason.chars().next().unwrap().is_ascii_uppercase(),
                "{reason}"
            );
            assert!(
                reason.chars().all(|c| c.is_ascii_alphanumeric()),
                "{reason}"
            );
            assert!(error.to_string().starts_with("failed to "), "{error}");
        }
    }
}
