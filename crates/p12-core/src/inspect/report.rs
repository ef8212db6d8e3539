//! What `inspect` reports about a bundle: the certificate, the chain, trusted
//! entries and each check with its verdict. Plain serializable data; uses only
//! serde and jiff.

use jiff::Timestamp;
use serde::Serialize;

/// What `inspect` shows about a bundle.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `file /path/keystore.p12` or `secret shop/web-tls`.
    pub source: String,
    /// Alias of the key entry described (the first one, when there are several).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The leaf certificate of the key entry; absent for a truststore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateReport>,
    /// Whether the entry's private key is the private half of the certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_matches_certificate: Option<bool>,
    /// The key entry's chain, leaf first.
    pub chain: Vec<ChainLink>,
    /// Trusted-certificate entries (of the file itself, and of `truststore.p12` for a Secret).
    pub truststore: Vec<TrustedEntry>,
    /// What was checked; any failed check makes the exit code 1.
    pub checks: Vec<Check>,
    /// Things worth knowing that are not failures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Whether every check passed.
    pub ok: bool,
}

impl Report {
    pub fn exit_code(&self) -> i32 {
        if self.ok { 0 } else { 1 }
    }

    pub(super) fn check(&mut self, name: &str, ok: bool, message: String) {
        self.checks.push(Check {
            name: name.to_owned(),
            ok,
            message,
        });
        self.ok &= ok;
    }
}

/// The leaf certificate.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateReport {
    pub subject: String,
    pub issuer: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub uris: Vec<String>,
    pub email_addresses: Vec<String>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// Whole days until notAfter; negative once expired.
    pub days_left: i64,
    /// Lowercase hex.
    pub serial: String,
    /// SHA-256 of the DER, lowercase hex without colons.
    pub fingerprint_sha256: String,
    /// e.g. `ECDSA P-256`; `unsupported` for key types the operator does not issue.
    pub key_algorithm: String,
    pub is_ca: bool,
}

/// One certificate of the chain.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChainLink {
    pub subject: String,
    pub issuer: String,
    pub not_after: Timestamp,
    pub fingerprint_sha256: String,
}

/// A trusted certificate entry.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrustedEntry {
    /// The file holding it: the inspected file's name, or `truststore.p12`.
    pub store: String,
    pub alias: String,
    pub subject: String,
    pub not_after: Timestamp,
    pub fingerprint_sha256: String,
}

/// One verdict.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// A stable camelCase name, e.g. `keyMatchesCertificate`.
    pub name: String,
    pub ok: bool,
    pub message: String,
}
