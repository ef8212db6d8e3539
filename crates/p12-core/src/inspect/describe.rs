//! Bytes in, a [`Report`] out: opens the keystore with the password, describes
//! its key entry, chain and trusted entries, and for a Secret checks that every
//! other key agrees with the keystore. Uses the keystore and PKI modules; never
//! keeps or prints the key or the password.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::InspectError;
use super::report::{CertificateReport, ChainLink, Report, TrustedEntry};
use crate::bundle;
use crate::keystore::{KeyEntry, KeystoreError, ParsedStore, read_keystore};
use crate::pki::{
    CertInfo, PrivateKey, fingerprint_sha256, key_matches_certificate, parse_certificate_info,
};
use crate::sensitive::SecretString;

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
