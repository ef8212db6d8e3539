//! Describes a PKCS#12 bundle from its bytes or a Secret's data — never the key or the password.
//!
//! The pure part of `p12-operator inspect` (and a fuzz target): bytes and a
//! password in, a [`Report`] out ([`inspect_p12`], [`inspect_secret`]), and its
//! rendering for people ([`render_text`]). Reading files, Secrets and the
//! environment is the operator's `inspect` module.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;
use serde::Serialize;

use crate::bundle;
use crate::keystore::{KeyEntry, KeystoreError, ParsedStore, read_keystore};
use crate::pki::{
    CertInfo, PrivateKey, fingerprint_sha256, key_matches_certificate, parse_certificate_info,
};
use crate::sensitive::SecretString;
/// Why a bundle could not be described. Messages never contain the password or key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    #[error("failed to open {name}: wrong password (or the file was altered)")]
    WrongPassword { name: String },

    #[error("failed to open {name}: it is not a PKCS#12 file this tool can read")]
    Malformed { name: String },

    /// A hostile or absurd file, refused before any key derivation runs.
    #[error("failed to open {name}: refused before decoding, {reason}")]
    TooCostly { name: String, reason: String },

    #[error(
        "failed to inspect {name}: it holds neither a private-key entry nor a trusted certificate"
    )]
    Empty { name: String },

    #[error("failed to inspect {name}: its certificate does not parse")]
    InvalidCertificate { name: String },

    #[error("failed to inspect {secret}: it has no {key}")]
    MissingKey { secret: String, key: &'static str },

    #[error(
        "failed to open {name}: no password given (use --password-file or set P12_PASSWORD; the Secret has no keystore-password)"
    )]
    NoPassword { name: String },
}

impl InspectError {
    /// 2 when the user must change the command, 1 when the bundle is at fault.
    pub fn exit_code(&self) -> i32 {
        match self {
            InspectError::NoPassword { .. } => 2,
            _ => 1,
        }
    }
}

fn open(name: &str, bytes: &[u8], password: &SecretString) -> Result<ParsedStore, InspectError> {
    read_keystore(bytes, password).map_err(|e| match e {
        KeystoreError::WrongPassword => InspectError::WrongPassword {
            name: name.to_owned(),
        },
        KeystoreError::TooCostly(reason) => InspectError::TooCostly {
            name: name.to_owned(),
            reason,
        },
        _ => InspectError::Malformed {
            name: name.to_owned(),
        },
    })
}

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

    fn check(&mut self, name: &str, ok: bool, message: String) {
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

fn days_between(now: Timestamp, then: Timestamp) -> i64 {
    (then.as_second() - now.as_second()).div_euclid(86_400)
}

fn certificate_report(info: &CertInfo, now: Timestamp) -> CertificateReport {
    CertificateReport {
        subject: info.subject.clone(),
        issuer: info.issuer.clone(),
        dns_names: info.sans.dns.clone(),
        ip_addresses: info.sans.ips.iter().map(ToString::to_string).collect(),
        uris: info.sans.uris.clone(),
        email_addresses: info.sans.emails.clone(),
        not_before: info.not_before,
        not_after: info.not_after,
        days_left: days_between(now, info.not_after),
        serial: info.serial_hex.clone(),
        fingerprint_sha256: info.fingerprint_sha256.clone(),
        key_algorithm: info
            .key_algorithm
            .map_or_else(|| "unsupported".to_owned(), |a| a.to_string()),
        is_ca: info.is_ca,
    }
}

fn trusted_entries(store_name: &str, store: &ParsedStore) -> Vec<TrustedEntry> {
    store
        .trusted
        .iter()
        .map(|(alias, der)| {
            let info = parse_certificate_info(der).ok();
            TrustedEntry {
                store: store_name.to_owned(),
                alias: alias.clone(),
                subject: info
                    .as_ref()
                    .map_or_else(|| "(unparseable)".to_owned(), |i| i.subject.clone()),
                not_after: info.as_ref().map_or(Timestamp::UNIX_EPOCH, |i| i.not_after),
                fingerprint_sha256: fingerprint_sha256(der),
            }
        })
        .collect()
}

fn validity_message(what: &str, info: &CertInfo, now: Timestamp) -> (bool, String) {
    if now < info.not_before {
        (
            false,
            format!("{what} is not valid before {}", info.not_before),
        )
    } else if now >= info.not_after {
        (
            false,
            format!(
                "{what} expired at {} ({} days ago)",
                info.not_after,
                -days_between(now, info.not_after)
            ),
        )
    } else {
        (
            true,
            format!(
                "{what} is valid until {} ({} days left)",
                info.not_after,
                days_between(now, info.not_after)
            ),
        )
    }
}

/// Describes the first key entry: certificate, chain, key match, validity.
fn describe_key_entry(
    report: &mut Report,
    name: &str,
    entry: &KeyEntry,
    now: Timestamp,
) -> Result<(), InspectError> {
    let invalid = || InspectError::InvalidCertificate {
        name: name.to_owned(),
    };
    let leaf = entry.chain.first().ok_or_else(invalid)?;
    let info = parse_certificate_info(leaf).map_err(|_| invalid())?;
    report.alias = Some(entry.alias.clone());
    report.certificate = Some(certificate_report(&info, now));

    let matches = entry.key_matches_leaf();
    report.key_matches_certificate = Some(matches);
    report.check(
        "keyMatchesCertificate",
        matches,
        if matches {
            "the private key matches the certificate".to_owned()
        } else {
            "the private key does not match the certificate".to_owned()
        },
    );
    let (valid, message) = validity_message("the certificate", &info, now);
    report.check("certificateValid", valid, message);

    let infos: Vec<Option<CertInfo>> = entry
        .chain
        .iter()
        .map(|der| parse_certificate_info(der).ok())
        .collect();
    report.chain = entry
        .chain
        .iter()
        .zip(&infos)
        .map(|(der, info)| ChainLink {
            subject: info
                .as_ref()
                .map_or_else(|| "(unparseable)".to_owned(), |i| i.subject.clone()),
            issuer: info.as_ref().map_or_else(String::new, |i| i.issuer.clone()),
            not_after: info.as_ref().map_or(Timestamp::UNIX_EPOCH, |i| i.not_after),
            fingerprint_sha256: fingerprint_sha256(der),
        })
        .collect();
    let mut chain_problems = Vec::new();
    for (index, pair) in entry.chain.windows(2).enumerate() {
        if crate::pki::signer::verify_issued_by(&pair[0], &pair[1]).is_err() {
            chain_problems.push(format!(
                "certificate {index} is not signed by certificate {}",
                index + 1
            ));
        }
    }
    for (index, info) in infos.iter().enumerate().skip(1) {
        match info {
            None => chain_problems.push(format!("certificate {index} does not parse")),
            Some(info) => {
                let (valid, message) = validity_message(
                    &format!("certificate {index} ({})", info.subject),
                    info,
                    now,
                );
                if !valid {
                    chain_problems.push(message);
                }
            }
        }
    }
    if chain_problems.is_empty() {
        let message = if entry.chain.len() == 1 {
            "the chain holds the leaf only (no CA certificate)".to_owned()
        } else {
            format!(
                "each of the {} certificates is signed by the next, and all are valid now",
                entry.chain.len()
            )
        };
        report.check("chain", true, message);
    } else {
        report.check("chain", false, chain_problems.join("; "));
    }
    Ok(())
}

fn empty_report(source: String) -> Report {
    Report {
        source,
        alias: None,
        certificate: None,
        key_matches_certificate: None,
        chain: Vec::new(),
        truststore: Vec::new(),
        checks: Vec::new(),
        notes: Vec::new(),
        ok: true,
    }
}

/// Describes a PKCS#12 file: its first key entry (certificate, chain, whether
/// the key matches) and its trusted entries. `name` is used in messages.
pub fn inspect_p12(
    name: &str,
    bytes: &[u8],
    password: &SecretString,
    now: Timestamp,
) -> Result<Report, InspectError> {
    let store = open(name, bytes, password)?;
    let mut report = empty_report(format!("file {name}"));
    describe_store(&mut report, name, &store, now)?;
    Ok(report)
}

fn describe_store(
    report: &mut Report,
    name: &str,
    store: &ParsedStore,
    now: Timestamp,
) -> Result<(), InspectError> {
    if store.key_entries.is_empty() && store.trusted.is_empty() {
        return Err(InspectError::Empty {
            name: name.to_owned(),
        });
    }
    if let Some(entry) = store.key_entries.first() {
        describe_key_entry(report, name, entry, now)?;
    }
    if store.key_entries.len() > 1 {
        let aliases: Vec<&str> = store.key_entries.iter().map(|e| e.alias.as_str()).collect();
        report.notes.push(format!(
            "{name} holds {} key entries ({}); only the first is described",
            aliases.len(),
            aliases.join(", ")
        ));
    }
    report.truststore.extend(trusted_entries(name, store));
    Ok(())
}

fn first_pem_certificate(bytes: &[u8]) -> Option<Vec<u8>> {
    pem::parse_many(bytes)
        .ok()?
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
}

/// Describes a Secret written by the operator: `keystore.p12` as [`inspect_p12`]
/// does, plus whether `truststore.p12`, `tls.crt`, `tls.key`, `ca.crt` and the
/// fingerprint annotation agree with it. `secret` is `namespace/name`.
pub fn inspect_secret(
    secret: &str,
    data: &BTreeMap<String, Vec<u8>>,
    annotations: &BTreeMap<String, String>,
    password: Option<&SecretString>,
    now: Timestamp,
) -> Result<Report, InspectError> {
    let keystore = data
        .get(bundle::KEYSTORE)
        .ok_or_else(|| InspectError::MissingKey {
            secret: secret.to_owned(),
            key: bundle::KEYSTORE,
        })?;
    let password = password.ok_or_else(|| InspectError::NoPassword {
        name: bundle::KEYSTORE.to_owned(),
    })?;
    let store = open(bundle::KEYSTORE, keystore, password)?;
    let mut report = empty_report(format!("secret {secret}"));
    describe_store(&mut report, bundle::KEYSTORE, &store, now)?;
    let Some(entry) = store.key_entries.first() else {
        report.check(
            "keystore",
            false,
            format!("{} holds no private-key entry", bundle::KEYSTORE),
        );
        return Ok(report);
    };
    let leaf = entry.chain.first().cloned().unwrap_or_default();
    let root = entry.chain.last().cloned().unwrap_or_default();

    match data
        .get(bundle::TLS_CRT)
        .map(|pem| first_pem_certificate(pem))
    {
        None => report.check("tlsCrt", false, format!("{} is missing", bundle::TLS_CRT)),
        Some(None) => report.check(
            "tlsCrt",
            false,
            format!("{} holds no PEM certificate", bundle::TLS_CRT),
        ),
        Some(Some(der)) if der == leaf => report.check(
            "tlsCrt",
            true,
            format!("{} holds the keystore's certificate", bundle::TLS_CRT),
        ),
        Some(Some(der)) => report.check(
            "tlsCrt",
            false,
            format!(
                "{} holds another certificate (SHA-256 {}) than {}",
                bundle::TLS_CRT,
                fingerprint_sha256(&der),
                bundle::KEYSTORE
            ),
        ),
    }

    if let Some(key_pem) = data.get(bundle::TLS_KEY) {
        let matches = std::str::from_utf8(key_pem)
            .ok()
            .and_then(|text| PrivateKey::from_pem(text).ok())
            .and_then(|key| key_matches_certificate(&key, &leaf).ok())
            .unwrap_or(false);
        let message = if matches {
            format!("{} holds the certificate's private key", bundle::TLS_KEY)
        } else {
            format!(
                "{} does not hold the certificate's private key",
                bundle::TLS_KEY
            )
        };
        report.check("tlsKey", matches, message);
    }

    let ca_crt = data
        .get(bundle::CA_CRT)
        .and_then(|pem| first_pem_certificate(pem));
    match &ca_crt {
        None => report.check(
            "caCrt",
            false,
            format!("{} is missing or holds no PEM certificate", bundle::CA_CRT),
        ),
        Some(der) if *der == root => report.check(
            "caCrt",
            true,
            format!("{} is the root of the keystore's chain", bundle::CA_CRT),
        ),
        Some(der) => report.check(
            "caCrt",
            false,
            format!(
                "{} (SHA-256 {}) is not the root of the keystore's chain",
                bundle::CA_CRT,
                fingerprint_sha256(der)
            ),
        ),
    }

    match data.get(bundle::TRUSTSTORE) {
        None => report.check(
            "truststore",
            false,
            format!("{} is missing", bundle::TRUSTSTORE),
        ),
        Some(bytes) => match open(bundle::TRUSTSTORE, bytes, password) {
            Err(error) => report.check("truststore", false, error.to_string()),
            Ok(truststore) => {
                let trusted: Vec<&Vec<u8>> =
                    truststore.trusted.iter().map(|(_, der)| der).collect();
                report
                    .truststore
                    .extend(trusted_entries(bundle::TRUSTSTORE, &truststore));
                let holds_ca = ca_crt.as_ref().is_some_and(|ca| trusted.contains(&ca));
                let message = if holds_ca {
                    format!("{} trusts {}", bundle::TRUSTSTORE, bundle::CA_CRT)
                } else {
                    format!(
                        "{} does not hold the certificate in {}",
                        bundle::TRUSTSTORE,
                        bundle::CA_CRT
                    )
                };
                report.check("truststore", holds_ca, message);
            }
        },
    }

    if let Some(annotated) = annotations.get(bundle::annotations::FINGERPRINT) {
        let actual = fingerprint_sha256(&leaf);
        let ok = annotated.eq_ignore_ascii_case(&actual);
        let message = if ok {
            "the fingerprint annotation matches the certificate".to_owned()
        } else {
            format!("the fingerprint annotation says {annotated}, the certificate is {actual}")
        };
        report.check("fingerprintAnnotation", ok, message);
    }
    Ok(report)
}

/// Which password opens a Secret's keystore: `--password-file` first, then the
/// Secret's own `keystore-password`, then P12_PASSWORD.
pub fn choose_password(
    from_file: Option<SecretString>,
    from_secret: Option<SecretString>,
    from_env: Option<SecretString>,
) -> Option<SecretString> {
    from_file.or(from_secret).or(from_env)
}

/// Password file contents without one trailing newline (`\n` or `\r\n`).
pub fn password_from_file_bytes(bytes: Vec<u8>) -> Option<SecretString> {
    let text = SecretString::new(String::from_utf8(bytes).ok()?);
    let trimmed = text
        .expose()
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t));
    Some(match trimmed {
        Some(t) => SecretString::from(t),
        None => text,
    })
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "NO" }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

/// The report for people.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Source:            {}", report.source);
    if let Some(alias) = &report.alias {
        let _ = writeln!(out, "Alias:             {alias}");
    }
    if let Some(cert) = &report.certificate {
        let _ = writeln!(out, "Subject:           {}", cert.subject);
        let _ = writeln!(out, "Issuer:            {}", cert.issuer);
        let _ = writeln!(out, "DNS names:         {}", list(&cert.dns_names));
        let _ = writeln!(out, "IP addresses:      {}", list(&cert.ip_addresses));
        if !cert.uris.is_empty() {
            let _ = writeln!(out, "URIs:              {}", list(&cert.uris));
        }
        if !cert.email_addresses.is_empty() {
            let _ = writeln!(out, "Email addresses:   {}", list(&cert.email_addresses));
        }
        let _ = writeln!(out, "Not before:        {}", cert.not_before);
        let left = if cert.days_left >= 0 {
            format!("{} days left", cert.days_left)
        } else {
            format!("expired {} days ago", -cert.days_left)
        };
        let _ = writeln!(out, "Not after:         {} ({left})", cert.not_after);
        let _ = writeln!(out, "Serial:            {}", cert.serial);
        let _ = writeln!(out, "SHA-256:           {}", cert.fingerprint_sha256);
        let _ = writeln!(out, "Key algorithm:     {}", cert.key_algorithm);
    }
    if let Some(matches) = report.key_matches_certificate {
        let _ = writeln!(out, "Key matches cert:  {}", yes_no(matches));
    }
    if !report.chain.is_empty() {
        let _ = writeln!(out, "Chain ({}):", report.chain.len());
        for (index, link) in report.chain.iter().enumerate() {
            let _ = writeln!(out, "  {index}  {}", link.subject);
            let _ = writeln!(
                out,
                "     issued by {}, expires {}",
                link.issuer, link.not_after
            );
        }
    }
    if !report.truststore.is_empty() {
        let _ = writeln!(out, "Trusted certificates ({}):", report.truststore.len());
        for entry in &report.truststore {
            let _ = writeln!(
                out,
                "  {} {}: {}, expires {}",
                entry.store, entry.alias, entry.subject, entry.not_after
            );
            let _ = writeln!(out, "     SHA-256 {}", entry.fingerprint_sha256);
        }
    }
    if !report.checks.is_empty() {
        let _ = writeln!(out, "Checks:");
        for check in &report.checks {
            let _ = writeln!(
                out,
                "  {:<5} {}",
                if check.ok { "ok" } else { "FAIL" },
                check.message
            );
        }
    }
    for note in &report.notes {
        let _ = writeln!(out, "Note: {note}");
    }
    let _ = writeln!(
        out,
        "Result:            {}",
        if report.ok { "ok" } else { "problems found" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::{Profile, build_keystore, build_truststore};
    use crate::pki::{
        CertificateAuthority, CsrSubject, KeyAlgorithm, LeafProfile, SubjectAltNames, Usage,
        VerifiedCsr,
    };
    use std::time::Duration;

    struct Bundle {
        ca: CertificateAuthority,
        key: PrivateKey,
        leaf: Vec<u8>,
    }

    fn now() -> Timestamp {
        "2026-11-29T12:00:00Z".parse().unwrap()
    }

    fn issue(at: Timestamp, duration: Duration) -> Bundle {
        let ca = CertificateAuthority::generate_self_signed(
            KeyAlgorithm::EcdsaP256,
            "p12-operator CA",
            Duration::from_secs(3650 * 86400),
            at,
        )
        .unwrap();
        let profile = LeafProfile {
            subject: CsrSubject::with_common_name("web.shop.svc"),
            sans: SubjectAltNames {
                dns: vec!["web.shop.svc".into(), "web.shop.svc.cluster.local".into()],
                ips: vec!["10.0.0.7".parse().unwrap()],
                ..Default::default()
            },
            usages: vec![Usage::ServerAuth],
            duration,
        };
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = crate::pki::build_csr(&key, &profile.subject, &profile.sans).unwrap();
        let csr = VerifiedCsr::parse_and_verify(&csr).unwrap();
        let leaf = crate::pki::sign(&ca, &csr, &profile, at).unwrap().der;
        Bundle { ca, key, leaf }
    }

    fn password() -> SecretString {
        SecretString::from("Pa55-w0rd-for-tests")
    }

    fn certificate_pem(der: &[u8]) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
    }

    fn keystore(bundle: &Bundle, key: &PrivateKey) -> Vec<u8> {
        build_keystore(
            key,
            &bundle.leaf,
            bundle.ca.chain(),
            "web",
            &password(),
            Profile::Modern2023,
        )
        .unwrap()
        .expose()
        .to_vec()
    }

    /// A keystore whose key is not the certificate's: build_keystore refuses
    /// to write one, so it is assembled with p12-keystore directly.
    fn mismatched_keystore(bundle: &Bundle) -> Vec<u8> {
        use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKeyChain};
        let other = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let key = p12_keystore::PrivateKey::from_der(other.to_pkcs8_der().expose()).unwrap();
        let certs = vec![Certificate::from_der(&bundle.leaf).unwrap()];
        let mut store = KeyStore::new();
        store.add_entry(
            "web",
            KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(vec![1; 20], key, certs)),
        );
        store.writer(password().expose()).write().unwrap()
    }

    fn secret_data(bundle: &Bundle) -> BTreeMap<String, Vec<u8>> {
        let mut data = BTreeMap::new();
        data.insert(bundle::KEYSTORE.to_owned(), keystore(bundle, &bundle.key));
        data.insert(
            bundle::TRUSTSTORE.to_owned(),
            build_truststore(
                &[bundle.ca.root_der().to_vec()],
                &password(),
                Profile::Modern2023,
            )
            .unwrap()
            .expose()
            .to_vec(),
        );
        data.insert(
            bundle::TLS_CRT.to_owned(),
            certificate_pem(&bundle.leaf).into_bytes(),
        );
        data.insert(
            bundle::TLS_KEY.to_owned(),
            bundle.key.to_pem().expose().as_bytes().to_vec(),
        );
        data.insert(bundle::CA_CRT.to_owned(), bundle.ca.root_pem().into_bytes());
        data.insert(
            bundle::PASSWORD.to_owned(),
            password().expose().as_bytes().to_vec(),
        );
        data
    }

    #[test]
    fn a_keystore_is_described_with_subject_names_chain_and_key_match() {
        let bundle = issue(now(), Duration::from_secs(90 * 86400));
        let report = inspect_p12(
            "keystore.p12",
            &keystore(&bundle, &bundle.key),
            &password(),
            now(),
        )
        .unwrap();
        let cert = report.certificate.as_ref().unwrap();
        assert_eq!(cert.subject, "CN=web.shop.svc");
        assert_eq!(cert.issuer, "CN=p12-operator CA");
        assert_eq!(
            cert.dns_names,
            ["web.shop.svc", "web.shop.svc.cluster.local"]
        );
        assert_eq!(cert.ip_addresses, ["10.0.0.7"]);
        assert_eq!(cert.days_left, 90);
        assert_eq!(cert.fingerprint_sha256, fingerprint_sha256(&bundle.leaf));
        assert_eq!(cert.key_algorithm, "ECDSA P-256");
        assert_eq!(report.alias.as_deref(), Some("web"));
        assert_eq!(report.key_matches_certificate, Some(true));
        assert_eq!(report.chain.len(), 2);
        assert_eq!(report.chain[1].subject, "CN=p12-operator CA");
        assert!(report.ok, "{:?}", report.checks);
        assert_eq!(report.exit_code(), 0);
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_fails() {
        let bundle = issue(now(), Duration::from_secs(86400));
        let report = inspect_p12(
            "keystore.p12",
            &mismatched_keystore(&bundle),
            &password(),
            now(),
        )
        .unwrap();
        assert_eq!(report.key_matches_certificate, Some(false));
        let check = report
            .checks
            .iter()
            .find(|c| c.name == "keyMatchesCertificate")
            .unwrap();
        assert_eq!(
            check.message,
            "the private key does not match the certificate"
        );
        assert_eq!(report.exit_code(), 1);
    }

    #[test]
    fn an_expired_certificate_fails_the_validity_check() {
        let issued_at: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let bundle = issue(issued_at, Duration::from_secs(86400));
        let report = inspect_p12(
            "keystore.p12",
            &keystore(&bundle, &bundle.key),
            &password(),
            now(),
        )
        .unwrap();
        let check = report
            .checks
            .iter()
            .find(|c| c.name == "certificateValid")
            .unwrap();
        assert!(!check.ok);
        assert!(
            check
                .message
                .starts_with("the certificate expired at 2026-01-02T00:00:00Z"),
            "{}",
            check.message
        );
        assert!(report.certificate.as_ref().unwrap().days_left < 0);
        assert_eq!(report.exit_code(), 1);
    }

    #[test]
    fn a_wrong_password_is_named_without_echoing_any_password() {
        let bundle = issue(now(), Duration::from_secs(86400));
        let error = inspect_p12(
            "keystore.p12",
            &keystore(&bundle, &bundle.key),
            &SecretString::from("guess"),
            now(),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "failed to open keystore.p12: wrong password (or the file was altered)"
        );
        assert_eq!(error.exit_code(), 1);
        let error = inspect_p12("x.p12", b"not a keystore", &password(), now()).unwrap_err();
        assert!(matches!(error, InspectError::Malformed { .. }), "{error}");
    }

    #[test]
    fn a_consistent_secret_passes_every_check() {
        let bundle = issue(now(), Duration::from_secs(86400));
        let mut annotations = BTreeMap::new();
        annotations.insert(
            bundle::annotations::FINGERPRINT.to_owned(),
            fingerprint_sha256(&bundle.leaf),
        );
        let report = inspect_secret(
            "shop/web-tls",
            &secret_data(&bundle),
            &annotations,
            Some(&password()),
            now(),
        )
        .unwrap();
        let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "keyMatchesCertificate",
                "certificateValid",
                "chain",
                "tlsCrt",
                "tlsKey",
                "caCrt",
                "truststore",
                "fingerprintAnnotation"
            ]
        );
        assert!(report.ok, "{:?}", report.checks);
        assert_eq!(report.source, "secret shop/web-tls");
        assert_eq!(report.truststore.len(), 1);
        assert_eq!(report.truststore[0].store, "truststore.p12");
        assert_eq!(report.truststore[0].subject, "CN=p12-operator CA");
    }

    #[test]
    fn a_secret_whose_pem_files_drifted_from_the_keystore_fails() {
        let bundle = issue(now(), Duration::from_secs(86400));
        let other = issue(now(), Duration::from_secs(86400));
        let mut data = secret_data(&bundle);
        data.insert(
            bundle::TLS_CRT.to_owned(),
            certificate_pem(&other.leaf).into_bytes(),
        );
        data.insert(
            bundle::TLS_KEY.to_owned(),
            other.key.to_pem().expose().as_bytes().to_vec(),
        );
        data.insert(bundle::CA_CRT.to_owned(), other.ca.root_pem().into_bytes());
        let report = inspect_secret(
            "shop/web-tls",
            &data,
            &BTreeMap::new(),
            Some(&password()),
            now(),
        )
        .unwrap();
        let failed: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(failed, ["tlsCrt", "tlsKey", "caCrt", "truststore"]);
        assert_eq!(report.exit_code(), 1);
    }

    #[test]
    fn a_secret_without_a_password_is_a_usage_error() {
        let bundle = issue(now(), Duration::from_secs(86400));
        let error = inspect_secret(
            "shop/web-tls",
            &secret_data(&bundle),
            &BTreeMap::new(),
            None,
            now(),
        )
        .unwrap_err();
        assert_eq!(error.exit_code(), 2);
        let error = inspect_secret(
            "shop/web-tls",
            &BTreeMap::new(),
            &BTreeMap::new(),
            Some(&password()),
            now(),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "failed to inspect shop/web-tls: it has no keystore.p12"
        );
    }

    #[test]
    fn the_password_file_wins_then_the_secret_then_the_environment() {
        let pick = |f: Option<&str>, s: Option<&str>, e: Option<&str>| {
            choose_password(
                f.map(SecretString::from),
                s.map(SecretString::from),
                e.map(SecretString::from),
            )
            .map(|p| p.expose().to_owned())
        };
        assert_eq!(
            pick(Some("file"), Some("secret"), Some("env")).as_deref(),
            Some("file")
        );
        assert_eq!(
            pick(None, Some("secret"), Some("env")).as_deref(),
            Some("secret")
        );
        assert_eq!(pick(None, None, Some("env")).as_deref(), Some("env"));
        assert_eq!(pick(None, None, None), None);
        let trimmed = |bytes: &[u8]| {
            password_from_file_bytes(bytes.to_vec())
                .unwrap()
                .expose()
                .to_owned()
        };
        assert_eq!(trimmed(b"secret\n"), "secret");
        assert_eq!(trimmed(b"secret\r\n"), "secret");
        assert_eq!(trimmed(b"secret"), "secret");
        assert_eq!(trimmed(b"two\n\n"), "two\n");
        assert!(password_from_file_bytes(vec![0xff, 0xfe]).is_none());
    }

    #[test]
    fn text_output_shows_the_facts_and_never_the_key_or_password() {
        let bundle = issue(now(), Duration::from_secs(86400));
        let report = inspect_secret(
            "shop/web-tls",
            &secret_data(&bundle),
            &BTreeMap::new(),
            Some(&password()),
            now(),
        )
        .unwrap();
        let text = render_text(&report);
        let json = serde_json::to_string(&report).unwrap();
        for output in [&text, &json] {
            assert!(
                output.contains(&fingerprint_sha256(&bundle.leaf)),
                "{output}"
            );
            assert!(!output.contains(password().expose()));
            assert!(!output.contains("PRIVATE KEY"));
        }
        assert!(
            text.contains("DNS names:         web.shop.svc, web.shop.svc.cluster.local"),
            "{text}"
        );
        assert!(text.contains("Key matches cert:  yes"), "{text}");
        assert!(text.contains("Result:            ok"), "{text}");
    }
}
