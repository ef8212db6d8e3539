//! A truststore that opens without a password: trusted certificates in a
//! PKCS#12 file with no MAC and no encryption, the form Java writes with
//! `keystore.pkcs12.certProtectionAlgorithm=NONE` and
//! `keystore.pkcs12.macAlgorithm=NONE`.
//!
//! Java 18+ loads it with no password or an empty one, as
//! `javax.net.ssl.trustStore` without `trustStorePassword` (measured on Java
//! 17 too); OpenSSL 3 reads it with `-passin pass:` (it warns that the MAC is
//! absent). Certificates
//! are public, so a password on a truststore protects nothing; it only makes
//! every reader configure one. p12-keystore writes neither form, so the few
//! structures are encoded here (RFC 7292).

use crate::pki::der::{self, TAG_OCTET_STRING};
use crate::pki::trust::TrustBundle;

use super::p12::{KeystoreError, trusted_alias};

/// pkcs7-data, the unencrypted content type.
const DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 1];
/// pkcs-12 certBag.
const CERT_BAG: &[u64] = &[1, 2, 840, 113549, 1, 12, 10, 1, 3];
/// x509Certificate, the certificate type inside a certBag.
const X509_CERTIFICATE: &[u64] = &[1, 2, 840, 113549, 1, 9, 22, 1];
/// friendlyName: the alias Java and OpenSSL show.
const FRIENDLY_NAME: &[u64] = &[1, 2, 840, 113549, 1, 9, 20];
/// Oracle's trusted-key-usage attribute: without it Java skips a certificate
/// bag (it is what makes a `trustedCertEntry`).
const JAVA_TRUSTED_KEY_USAGE: &[u64] = &[2, 16, 840, 1, 113894, 746875, 1, 1];
/// anyExtendedKeyUsage: trusted for every purpose, as keytool writes it.
const ANY_EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37, 0];

const TAG_BMP_STRING: u8 = 0x1e;

/// Builds the passwordless `truststore.p12` of `bundle`: one trusted-certificate
/// entry per root, aliased `ca`, `ca-1`, … in the bundle's order. The output
/// depends on the bundle only, so the same bundle always gives the same bytes.
pub fn build_passwordless_truststore(bundle: &TrustBundle) -> Vec<u8> {
    let bags: Vec<Vec<u8>> = bundle
        .roots()
        .iter()
        .enumerate()
        .map(|(i, root)| trusted_certificate_bag(root, &trusted_alias(i)))
        .collect();
    let bag_refs: Vec<&[u8]> = bags.iter().map(Vec::as_slice).collect();
    let safe_contents = der::sequence(&bag_refs);
    let authenticated_safe = der::sequence(&[&data_content_info(&safe_contents)]);
    der::sequence(&[
        &der::small_integer(3),
        &data_content_info(&authenticated_safe),
    ])
}

/// `ContentInfo { pkcs7-data, [0] EXPLICIT OCTET STRING }`.
fn data_content_info(content: &[u8]) -> Vec<u8> {
    der::sequence(&[
        &der::oid(DATA),
        &der::context_constructed(0, &der::tlv(TAG_OCTET_STRING, content)),
    ])
}

fn trusted_certificate_bag(cert_der: &[u8], alias: &str) -> Vec<u8> {
    let cert_bag = der::sequence(&[
        &der::oid(X509_CERTIFICATE),
        &der::context_constructed(0, &der::tlv(TAG_OCTET_STRING, cert_der)),
    ]);
    let bmp: Vec<u8> = alias.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let friendly_name = der::sequence(&[
        &der::oid(FRIENDLY_NAME),
        &der::set(&[&der::tlv(TAG_BMP_STRING, &bmp)]),
    ]);
    let trusted = der::sequence(&[
        &der::oid(JAVA_TRUSTED_KEY_USAGE),
        &der::set(&[&der::oid(ANY_EXTENDED_KEY_USAGE)]),
    ]);
    // DER orders the members of a SET OF by their encodings.
    let mut attributes = [friendly_name, trusted];
    attributes.sort();
    der::sequence(&[
        &der::oid(CERT_BAG),
        &der::context_constructed(0, &cert_bag),
        &der::set(&[&attributes[0], &attributes[1]]),
    ])
}

/// Whether `bytes` is exactly the passwordless truststore of `bundle`.
pub fn is_passwordless_truststore_of(bytes: &[u8], bundle: &TrustBundle) -> bool {
    bytes == build_passwordless_truststore(bundle).as_slice()
}

/// Opens a passwordless truststore and returns its trusted certificates
/// (alias, DER), for checks and `inspect`.
pub fn read_passwordless_truststore(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, KeystoreError> {
    let store = super::read_keystore(bytes, &crate::sensitive::SecretString::from(""))?;
    Ok(store.trusted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, KeyAlgorithm, fingerprint_sha256};
    use std::process::Command;
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

    fn two_roots() -> (TrustBundle, Vec<Vec<u8>>) {
        let roots = vec![root("Current root"), root("Next root")];
        (TrustBundle::new(roots.clone()).unwrap(), roots)
    }

    #[test]
    fn passwordless_truststore_has_no_mac_and_only_unencrypted_trusted_certificate_bags() {
        let (bundle, _) = two_roots();
        let bytes = build_passwordless_truststore(&bundle);
        let (pfx, rest) = der::read(&bytes).unwrap();
        assert!(rest.is_empty());
        let parts = der::read_all(pfx.content).unwrap();
        assert_eq!(parts.len(), 2, "version and authSafe, no macData");
        assert_eq!(parts[0].content, [3]);
        // Every content type in the file is pkcs7-data: nothing is encrypted.
        let data_oid = der::oid(DATA);
        let encrypted_oid = der::oid(&[1, 2, 840, 113549, 1, 7, 6]);
        assert_eq!(
            bytes
                .windows(data_oid.len())
                .filter(|w| *w == data_oid.as_slice())
                .count(),
            2
        );
        assert!(
            !bytes
                .windows(encrypted_oid.len())
                .any(|w| w == encrypted_oid.as_slice())
        );
    }

    #[test]
    fn passwordless_truststore_reads_back_as_trusted_entries_ca_and_ca_1() {
        let (bundle, roots) = two_roots();
        let bytes = build_passwordless_truststore(&bundle);
        let trusted = read_passwordless_truststore(&bytes).unwrap();
        assert_eq!(
            trusted,
            vec![
                ("ca".to_owned(), roots[0].clone()),
                ("ca-1".to_owned(), roots[1].clone())
            ]
        );
        assert!(is_passwordless_truststore_of(&bytes, &bundle));
        let other = TrustBundle::new([roots[1].clone()]).unwrap();
        assert!(!is_passwordless_truststore_of(&bytes, &other));
    }

    #[test]
    fn passwordless_truststore_opens_in_openssl_with_an_empty_password() {
        let (bundle, roots) = two_roots();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truststore.p12");
        std::fs::write(&path, build_passwordless_truststore(&bundle)).unwrap();
        let output = Command::new("openssl")
            .args(["pkcs12", "-nokeys", "-passin", "pass:", "-in"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(stderr.contains("MAC is absent"), "{stderr}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let ders: Vec<Vec<u8>> = pem::parse_many(stdout.as_bytes())
            .unwrap()
            .iter()
            .map(|p| p.contents().to_vec())
            .collect();
        assert_eq!(ders, roots);
        assert!(stdout.contains("friendlyName: ca-1"), "{stdout}");
    }

    #[test]
    fn passwordless_truststore_lists_as_trusted_cert_entries_in_keytool_without_a_password() {
        let (bundle, roots) = two_roots();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truststore.p12");
        std::fs::write(&path, build_passwordless_truststore(&bundle)).unwrap();
        let output = Command::new("keytool")
            .args(["-list", "-v", "-storetype", "PKCS12", "-keystore"])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("keytool runs (CI installs a JDK)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        assert!(
            stdout.contains("Your keystore contains 2 entries"),
            "{stdout}"
        );
        assert_eq!(stdout.matches("trustedCertEntry").count(), 2, "{stdout}");
        for root in &roots {
            let colon_hex = fingerprint_sha256(root)
                .to_uppercase()
                .as_bytes()
                .chunks(2)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join(":");
            assert!(stdout.contains(&colon_hex), "{colon_hex} in {stdout}");
        }
    }
}
