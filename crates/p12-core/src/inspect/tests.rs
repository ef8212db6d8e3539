//! Unit tests of describing and rendering bundles: right and wrong passwords,
//! key mismatches, expiry, Secrets whose keys disagree, and no secret in any output.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::*;
use crate::bundle;
use crate::keystore::{Profile, build_keystore, build_truststore};
use crate::pki::{
    CertificateAuthority, CsrSubject, KeyAlgorithm, LeafProfile, SubjectAltNames, Usage,
    VerifiedCsr,
};
use crate::pki::{PrivateKey, fingerprint_sha256};
use crate::sensitive::SecretString;
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
