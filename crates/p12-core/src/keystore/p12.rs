//! PKCS#12 encode/decode for `keystore.p12` (key + chain) and `truststore.p12` (CA certificates).
//!
//! Built on p12-keystore, which encrypts the PKCS#8 bytes it is given as they
//! are; we hand it PKCS#8 v1 for every key type so OpenSSL 3.0 reads Ed25519
//! keys too (p12-keystore's own Ed25519 path would be v2).

use std::fmt;
use std::str::FromStr;

use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, Pkcs12ImportPolicy,
    PrivateKeyChain,
};
use sha2::{Digest, Sha256};

use crate::pki::keys::PrivateKey;
use crate::sensitive::{SecretBytes, SecretString};

/// PBKDF2 / PKCS#12-KDF iteration count for encryption and MAC, in both profiles.
/// 2,048 matches cert-manager's Modern2023 and OpenSSL's default; writing a
/// keystore costs about 1 ms, and readers cap at 1,000,000.
pub const ITERATIONS: u32 = 2048;

/// How the PKCS#12 file is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Profile {
    /// PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) for keys and certificates, HMAC-SHA256 MAC.
    /// Opens in OpenSSL 3 without `-legacy` and in Java ≥ 8u301/11.0.12/17.
    #[default]
    Modern2023,
    /// pbeWithSHAAnd3-KeyTripleDES-CBC for keys and certificates, HMAC-SHA1 MAC,
    /// for old Java 8/11 builds that cannot read AES.
    LegacyDES,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Modern2023 => "Modern2023",
            Profile::LegacyDES => "LegacyDES",
        }
    }

    fn algorithms(self) -> (EncryptionAlgorithm, MacAlgorithm) {
        match self {
            Profile::Modern2023 => (
                EncryptionAlgorithm::PbeWithHmacSha256AndAes256,
                MacAlgorithm::HmacSha256,
            ),
            Profile::LegacyDES => (
                EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
                MacAlgorithm::HmacSha1,
            ),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(name: &str) -> std::result::Result<Self, Self::Err> {
        match name {
            "Modern2023" => Ok(Profile::Modern2023),
            "LegacyDES" => Ok(Profile::LegacyDES),
            other => Err(format!(
                "unknown keystore profile {other:?}; expected Modern2023 or LegacyDES"
            )),
        }
    }
}

/// Why a keystore could not be built or opened. Never contains the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    #[error("failed to build the keystore: the password is empty")]
    EmptyPassword,

    #[error(
        "failed to build the keystore: the alias must be non-empty text without characters beyond U+FFFF"
    )]
    InvalidAlias,

    #[error("failed to build the keystore: the private key does not match the certificate")]
    KeyMismatch,

    #[error("failed to build the keystore: certificate {index} does not parse")]
    InvalidCertificate { index: usize },

    #[error("failed to encode the keystore")]
    Encode(#[source] p12_keystore::error::Error),

    #[error("failed to open the keystore: the password is wrong (or the file was altered)")]
    WrongPassword,

    #[error("failed to open the keystore: it is not a PKCS#12 file this operator can read")]
    Malformed(#[source] p12_keystore::error::Error),

    /// What the file asks for and the limit it exceeds (see [`super::cost`]).
    #[error("failed to open the keystore: {0}")]
    TooCostly(String),
}

impl KeystoreError {
    /// A stable PascalCase category, usable as a Kubernetes condition or Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            KeystoreError::EmptyPassword => "KeystorePasswordEmpty",
            KeystoreError::InvalidAlias => "KeystoreAliasInvalid",
            KeystoreError::KeyMismatch => "KeyCertificateMismatch",
            KeystoreError::InvalidCertificate { .. } => "InvalidCertificate",
            KeystoreError::Encode(_) => "KeystoreEncodingFailed",
            KeystoreError::WrongPassword => "KeystoreWrongPassword",
            KeystoreError::Malformed(_) => "KeystoreMalformed",
            KeystoreError::TooCostly(_) => "KeystoreTooCostly",
        }
    }
}

type Result<T> = std::result::Result<T, KeystoreError>;

fn check_password(password: &SecretString) -> Result<()> {
    if password.is_empty() {
        return Err(KeystoreError::EmptyPassword);
    }
    Ok(())
}

fn certificate(der: &[u8], index: usize) -> Result<Certificate> {
    Certificate::from_der(der).map_err(|_| KeystoreError::InvalidCertificate { index })
}

fn write(store: &KeyStore, password: &SecretString, profile: Profile) -> Result<SecretBytes> {
    let (encryption, mac) = profile.algorithms();
    store
        .writer(password.expose())
        .encryption_algorithm(encryption)
        .encryption_iterations(ITERATIONS)
        .mac_algorithm(mac)
        .mac_iterations(ITERATIONS)
        .write()
        .map(SecretBytes::new)
        .map_err(KeystoreError::Encode)
}

/// Builds `keystore.p12`: one private-key entry under `alias` holding the key
/// (PKCS#8 v1) and the chain leaf, `chain_ders…` (the CA chain, leaf excluded).
pub fn build_keystore(
    key: &PrivateKey,
    leaf_der: &[u8],
    chain_ders: &[Vec<u8>],
    alias: &str,
    password: &SecretString,
    profile: Profile,
) -> Result<SecretBytes> {
    check_password(password)?;
    if alias.is_empty() || alias.chars().any(|c| u32::from(c) > 0xffff) {
        return Err(KeystoreError::InvalidAlias);
    }
    let leaf = certificate(leaf_der, 0)?;
    let matches = crate::pki::key_matches_certificate(key, leaf_der)
        .map_err(|_| KeystoreError::InvalidCertificate { index: 0 })?;
    if !matches {
        return Err(KeystoreError::KeyMismatch);
    }
    let mut certs = vec![leaf];
    for (i, der) in chain_ders.iter().enumerate() {
        certs.push(certificate(der, i + 1)?);
    }
    let pkcs8 = key.to_pkcs8_der();
    let p12_key =
        p12_keystore::PrivateKey::from_der(pkcs8.expose()).map_err(KeystoreError::Encode)?;
    let local_key_id = Sha256::digest(leaf_der)[..20].to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        alias,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, p12_key, certs)),
    );
    write(&store, password, profile)
}

/// The alias of the `index`th trusted certificate: `ca`, `ca-1`, `ca-2`, …
pub fn trusted_alias(index: usize) -> String {
    if index == 0 {
        "ca".to_owned()
    } else {
        format!("ca-{index}")
    }
}

/// Builds `truststore.p12`: each certificate as a trusted-certificate entry
/// (Java sees `trustedCertEntry`), aliased by [`trusted_alias`].
pub fn build_truststore(
    ca_ders: &[Vec<u8>],
    password: &SecretString,
    profile: Profile,
) -> Result<SecretBytes> {
    check_password(password)?;
    let mut store = KeyStore::new();
    for (i, der) in ca_ders.iter().enumerate() {
        store.add_entry(
            &trusted_alias(i),
            KeyStoreEntry::Certificate(certificate(der, i)?),
        );
    }
    write(&store, password, profile)
}

/// A private-key entry read back from a keystore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub alias: String,
    pub pkcs8: SecretBytes,
    /// Leaf first, then its issuers as found in the file.
    pub chain: Vec<Vec<u8>>,
}

impl KeyEntry {
    /// Whether the entry's key is the private half of `cert_der` (compares public keys).
    /// False for keys of types the operator does not handle.
    pub fn matches_certificate(&self, cert_der: &[u8]) -> bool {
        PrivateKey::from_pkcs8_der(self.pkcs8.expose())
            .ok()
            .and_then(|key| crate::pki::key_matches_certificate(&key, cert_der).ok())
            .unwrap_or(false)
    }

    /// Whether the key matches the first certificate of its own chain.
    pub fn key_matches_leaf(&self) -> bool {
        self.chain
            .first()
            .is_some_and(|leaf| self.matches_certificate(leaf))
    }
}

/// What a PKCS#12 file holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedStore {
    pub key_entries: Vec<KeyEntry>,
    /// Trusted certificates: (alias, DER).
    pub trusted: Vec<(String, Vec<u8>)>,
}

/// Opens a PKCS#12 file. A wrong password is reported as [`KeystoreError::WrongPassword`];
/// a file whose key derivations would cost more than the limits of [`super::cost`]
/// as [`KeystoreError::TooCostly`], before any of them runs.
pub fn read_keystore(bytes: &[u8], password: &SecretString) -> Result<ParsedStore> {
    use p12_keystore::error::Error as P12Error;
    super::cost::check_cost(bytes, password)?;
    let store = KeyStore::from_pkcs12(bytes, password.expose(), Pkcs12ImportPolicy::Relaxed)
        .map_err(|e| match e {
            // The MAC is checked first; without a MAC, a wrong password shows as bad padding.
            P12Error::MacError(_) | P12Error::UnpadError => KeystoreError::WrongPassword,
            other => KeystoreError::Malformed(other),
        })?;
    let mut parsed = ParsedStore::default();
    for (alias, entry) in store.entries() {
        match entry {
            KeyStoreEntry::PrivateKeyChain(chain) => parsed.key_entries.push(KeyEntry {
                alias: alias.clone(),
                pkcs8: SecretBytes::new(chain.key().as_der().to_vec()),
                chain: chain.certs().iter().map(|c| c.as_der().to_vec()).collect(),
            }),
            KeyStoreEntry::Certificate(cert) => {
                parsed.trusted.push((alias.clone(), cert.as_der().to_vec()))
            }
            KeyStoreEntry::Secret(_) => {}
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::keys::KeyAlgorithm;
    use crate::pki::{
        CertificateAuthority, CsrSubject, LeafProfile, SubjectAltNames, Usage, VerifiedCsr,
    };
    use std::process::Command;
    use std::time::Duration;

    struct Issued {
        ca: CertificateAuthority,
        key: PrivateKey,
        leaf: Vec<u8>,
    }

    fn issue(algorithm: KeyAlgorithm) -> Issued {
        let now = jiff::Timestamp::now();
        let ca = CertificateAuthority::generate_self_signed(
            KeyAlgorithm::EcdsaP256,
            "CA",
            Duration::from_secs(86400),
            now,
        )
        .unwrap();
        let profile = LeafProfile {
            subject: CsrSubject::with_common_name("localhost"),
            sans: SubjectAltNames {
                dns: vec!["localhost".into()],
                ..Default::default()
            },
            usages: vec![Usage::ServerAuth],
            duration: Duration::from_secs(3600),
        };
        let key = PrivateKey::generate(algorithm).unwrap();
        let csr = crate::pki::build_csr(&key, &profile.subject, &profile.sans).unwrap();
        let csr = VerifiedCsr::parse_and_verify(&csr).unwrap();
        let leaf = crate::pki::sign(&ca, &csr, &profile, now).unwrap().der;
        Issued { ca, key, leaf }
    }

    fn password() -> SecretString {
        SecretString::from("s3cret-Pa55")
    }

    #[test]
    fn keystore_round_trips_key_and_full_chain_in_both_profiles() {
        for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519] {
            let issued = issue(algorithm);
            for profile in [Profile::Modern2023, Profile::LegacyDES] {
                let bytes = build_keystore(
                    &issued.key,
                    &issued.leaf,
                    issued.ca.chain(),
                    "web",
                    &password(),
                    profile,
                )
                .unwrap();
                let store = read_keystore(bytes.expose(), &password()).unwrap();
                assert_eq!(store.key_entries.len(), 1);
                let entry = &store.key_entries[0];
                assert_eq!(entry.alias, "web");
                assert_eq!(
                    entry.pkcs8,
                    issued.key.to_pkcs8_der(),
                    "{algorithm} {profile}: the key bytes are ours (v1)"
                );
                assert_eq!(
                    entry.chain,
                    vec![issued.leaf.clone(), issued.ca.cert_der().to_vec()]
                );
                assert!(entry.key_matches_leaf());
                assert!(!entry.matches_certificate(issued.ca.cert_der()));
                assert!(store.trusted.is_empty());
            }
        }
    }

    #[test]
    fn wrong_password_is_reported_distinctly() {
        let issued = issue(KeyAlgorithm::EcdsaP256);
        for profile in [Profile::Modern2023, Profile::LegacyDES] {
            let bytes = build_keystore(&issued.key, &issued.leaf, &[], "web", &password(), profile)
                .unwrap();
            let error = read_keystore(bytes.expose(), &SecretString::from("wrong")).unwrap_err();
            assert_eq!(error.reason(), "KeystoreWrongPassword", "{profile}");
            assert!(!error.to_string().contains("s3cret"));
        }
        let error = read_keystore(b"\x30\x03\x02\x01\x03", &password()).unwrap_err();
        assert_eq!(error.reason(), "KeystoreMalformed");
    }

    #[test]
    fn truststore_holds_trusted_entries_named_ca_ca_1() {
        let a = issue(KeyAlgorithm::EcdsaP256);
        let b = issue(KeyAlgorithm::EcdsaP256);
        let cas = vec![a.ca.cert_der().to_vec(), b.ca.cert_der().to_vec()];
        let bytes = build_truststore(&cas, &password(), Profile::Modern2023).unwrap();
        let store = read_keystore(bytes.expose(), &password()).unwrap();
        assert!(store.key_entries.is_empty());
        assert_eq!(
            store.trusted,
            vec![
                ("ca".to_owned(), cas[0].clone()),
                ("ca-1".to_owned(), cas[1].clone())
            ]
        );
    }

    #[test]
    fn empty_password_mismatched_key_and_bad_alias_are_refused() {
        let issued = issue(KeyAlgorithm::EcdsaP256);
        let empty = SecretString::from("");
        let error = build_keystore(
            &issued.key,
            &issued.leaf,
            &[],
            "web",
            &empty,
            Profile::Modern2023,
        )
        .unwrap_err();
        assert_eq!(error.reason(), "KeystorePasswordEmpty");
        assert_eq!(
            build_truststore(&[], &empty, Profile::Modern2023)
                .unwrap_err()
                .reason(),
            "KeystorePasswordEmpty"
        );
        let other = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let error = build_keystore(
            &other,
            &issued.leaf,
            &[],
            "web",
            &password(),
            Profile::Modern2023,
        )
        .unwrap_err();
        assert_eq!(error.reason(), "KeyCertificateMismatch");
        let error = build_keystore(
            &issued.key,
            &issued.leaf,
            &[],
            "",
            &password(),
            Profile::Modern2023,
        )
        .unwrap_err();
        assert_eq!(error.reason(), "KeystoreAliasInvalid");
    }

    #[test]
    fn profiles_use_the_documented_algorithms_according_to_openssl() {
        let issued = issue(KeyAlgorithm::Ed25519);
        let dir = tempfile::tempdir().unwrap();
        for (profile, expected) in [
            (
                Profile::Modern2023,
                [
                    "MAC: sha256, Iteration 2048",
                    "PBES2, PBKDF2, AES-256-CBC, Iteration 2048, PRF hmacWithSHA256",
                ],
            ),
            (
                Profile::LegacyDES,
                [
                    "MAC: sha1, Iteration 2048",
                    "pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2048",
                ],
            ),
        ] {
            let bytes = build_keystore(
                &issued.key,
                &issued.leaf,
                issued.ca.chain(),
                "web",
                &password(),
                profile,
            )
            .unwrap();
            let path = dir.path().join("keystore.p12");
            std::fs::write(&path, bytes.expose()).unwrap();
            let output = Command::new("openssl")
                .args([
                    "pkcs12",
                    "-info",
                    "-nodes",
                    "-passin",
                    "env:P12_PASS",
                    "-in",
                ])
                .arg(&path)
                .env("P12_PASS", password().expose())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{profile}: {stderr}");
            for line in expected {
                assert!(
                    stderr.contains(line),
                    "{profile}: expected {line:?} in {stderr}"
                );
            }
            assert!(
                stdout.contains("-----BEGIN PRIVATE KEY-----"),
                "{profile}: OpenSSL 3.0 read the Ed25519 key"
            );
        }
    }
}
