//! Private keys: generation, PEM/PKCS#8 import and export, signing.
//!
//! Every key is held and exported as PKCS#8 **v1** (RFC 5208). aws-lc writes
//! Ed25519 keys as PKCS#8 v2 (RFC 5958, with the public key appended), which
//! OpenSSL before 3.5 cannot read; we strip the public key and downgrade.

use std::fmt;

use rcgen::{KeyPair, PublicKeyData, RsaKeySize, SigningKey};
use rustls_pki_types::PrivatePkcs8KeyDer;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::der;
use super::oids;
use super::{PkiError, Result};
use crate::sensitive::{SecretBytes, SecretString};

/// The key types the operator generates and accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
    Ed25519,
}

impl KeyAlgorithm {
    pub const ALL: [KeyAlgorithm; 6] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
        KeyAlgorithm::Ed25519,
    ];

    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096
        )
    }

    /// The rcgen algorithm, which fixes the signature scheme this key signs with:
    /// P-256 → ECDSA-SHA256, P-384 → ECDSA-SHA384, RSA → PKCS#1 v1.5 SHA-256, Ed25519 → Ed25519.
    fn rcgen_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                &rcgen::PKCS_RSA_SHA256
            }
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// The DER AlgorithmIdentifier of signatures made with a key of this type.
    pub(crate) fn signature_algorithm_der(self) -> Vec<u8> {
        match self {
            KeyAlgorithm::EcdsaP256 => der::sequence(&[&der::oid(oids::ECDSA_SHA256)]),
            KeyAlgorithm::EcdsaP384 => der::sequence(&[&der::oid(oids::ECDSA_SHA384)]),
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                der::sequence(&[&der::oid(oids::SHA256_WITH_RSA), &der::null()])
            }
            KeyAlgorithm::Ed25519 => der::sequence(&[&der::oid(oids::ED25519)]),
        }
    }

    /// Identifies the algorithm of a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(spki: &[u8]) -> Result<Self> {
        let (rest, info) =
            SubjectPublicKeyInfo::from_der(spki).map_err(|_| PkiError::UnsupportedKey {
                detail: "unparseable public key".into(),
            })?;
        if !rest.is_empty() {
            return Err(PkiError::UnsupportedKey {
                detail: "trailing data after the public key".into(),
            });
        }
        let algorithm = &info.algorithm.algorithm;
        if oids::is(algorithm, oids::RSA_ENCRYPTION) {
            let key = der::read(&info.subject_public_key.data)
                .and_then(|(seq, _)| der::read_all(seq.content))
                .and_then(|parts| parts.first().map(|m| m.content))
                .ok_or_else(|| PkiError::UnsupportedKey {
                    detail: "malformed RSA public key".into(),
                })?;
            rsa_algorithm_for_bits(bit_length(key))
        } else if oids::is(algorithm, oids::EC_PUBLIC_KEY) {
            let curve = info
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| PkiError::UnsupportedKey {
                    detail: "EC key without a named curve".into(),
                })?;
            if oids::is(&curve, oids::P256) {
                Ok(KeyAlgorithm::EcdsaP256)
            } else if oids::is(&curve, oids::P384) {
                Ok(KeyAlgorithm::EcdsaP384)
            } else {
                Err(PkiError::UnsupportedKey {
                    detail: format!("EC curve {curve}"),
                })
            }
        } else if oids::is(algorithm, oids::ED25519) {
            Ok(KeyAlgorithm::Ed25519)
        } else {
            Err(PkiError::UnsupportedKey {
                detail: format!("public key algorithm {algorithm}"),
            })
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::EcdsaP256 => "ECDSA P-256",
            KeyAlgorithm::EcdsaP384 => "ECDSA P-384",
            KeyAlgorithm::Rsa2048 => "RSA 2048",
            KeyAlgorithm::Rsa3072 => "RSA 3072",
            KeyAlgorithm::Rsa4096 => "RSA 4096",
            KeyAlgorithm::Ed25519 => "Ed25519",
        })
    }
}

fn rsa_algorithm_for_bits(bits: usize) -> Result<KeyAlgorithm> {
    match bits {
        2048 => Ok(KeyAlgorithm::Rsa2048),
        3072 => Ok(KeyAlgorithm::Rsa3072),
        4096 => Ok(KeyAlgorithm::Rsa4096),
        other => Err(PkiError::UnsupportedKey {
            detail: format!("RSA {other} bits; use 2048, 3072 or 4096"),
        }),
    }
}

/// Bit length of a big-endian unsigned integer's magnitude.
fn bit_length(magnitude: &[u8]) -> usize {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    match magnitude.get(skip) {
        Some(first) => (magnitude.len() - skip) * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// A private key with its algorithm. `Debug` never shows the key.
pub struct PrivateKey {
    algorithm: KeyAlgorithm,
    key_pair: KeyPair,
    pkcs8_v1: SecretBytes,
}

impl PrivateKey {
    /// Generates a fresh key. RSA takes from ~0.1 s (2048) to over 1 s (4096):
    /// call it off any async runtime.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self> {
        let failed = |_| PkiError::KeyGeneration { algorithm };
        let key_pair = match algorithm {
            KeyAlgorithm::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
            }
            KeyAlgorithm::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072)
            }
            KeyAlgorithm::Rsa4096 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096)
            }
            _ => KeyPair::generate_for(algorithm.rcgen_algorithm()),
        }
        .map_err(failed)?;
        let generated = SecretBytes::new(key_pair.serialize_der());
        Self::from_pkcs8_der(generated.expose())
    }

    /// Reads a PEM private key: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or
    /// PKCS#1 (`RSA PRIVATE KEY`). Other PEM blocks (e.g. `EC PARAMETERS`) are skipped.
    pub fn from_pem(pem_text: &str) -> Result<Self> {
        let blocks = super::parse_pem_blocks(pem_text.as_bytes())?;
        for block in &blocks {
            let contents = SecretBytes::new(block.contents().to_vec());
            match block.tag() {
                "PRIVATE KEY" => return Self::from_pkcs8_der(contents.expose()),
                "EC PRIVATE KEY" => return Self::from_sec1_der(contents.expose()),
                "RSA PRIVATE KEY" => return Self::from_pkcs1_der(contents.expose()),
                "ENCRYPTED PRIVATE KEY" => {
                    return Err(PkiError::InvalidPrivateKey {
                        reason: "the key is encrypted; supply it unencrypted (openssl pkey -in key.pem)",
                    });
                }
                _ => {}
            }
        }
        Err(PkiError::InvalidPrivateKey {
            reason: "no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block",
        })
    }

    /// Reads a DER PKCS#8 key (v1 or v2).
    pub fn from_pkcs8_der(pkcs8: &[u8]) -> Result<Self> {
        let malformed = PkiError::InvalidPrivateKey {
            reason: "malformed PKCS#8",
        };
        let (outer, rest) = der::read(pkcs8).ok_or(malformed)?;
        let parts = der::read_all(outer.content)
            .filter(|_| rest.is_empty() && outer.tag == der::TAG_SEQUENCE);
        let parts = parts.ok_or(PkiError::InvalidPrivateKey {
            reason: "malformed PKCS#8",
        })?;
        let [version, algorithm_id, private_key, ..] = parts.as_slice() else {
            return Err(PkiError::InvalidPrivateKey {
                reason: "malformed PKCS#8",
            });
        };
        if version.tag != der::TAG_INTEGER
            || !matches!(version.content, [0] | [1])
            || algorithm_id.tag != der::TAG_SEQUENCE
            || private_key.tag != der::TAG_OCTET_STRING
        {
            return Err(PkiError::InvalidPrivateKey {
                reason: "malformed PKCS#8",
            });
        }
        let algorithm = pkcs8_algorithm(algorithm_id.content, private_key.content)?;
        // v1: version 0, the algorithm and the key; attributes and the v2 public key are dropped.
        let v1 = SecretBytes::new(der::sequence(&[
            &der::small_integer(0),
            algorithm_id.raw,
            private_key.raw,
        ]));
        let key_pair = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(v1.expose()),
            algorithm.rcgen_algorithm(),
        )
        .map_err(|_| PkiError::InvalidPrivateKey {
            reason: "the key material is invalid",
        })?;
        Ok(Self {
            algorithm,
            key_pair,
            pkcs8_v1: v1,
        })
    }

    /// Reads a DER SEC1 `ECPrivateKey` by wrapping it into PKCS#8.
    fn from_sec1_der(sec1: &[u8]) -> Result<Self> {
        let malformed = || PkiError::InvalidPrivateKey {
            reason: "malformed EC PRIVATE KEY",
        };
        let (outer, _) = der::read(sec1).ok_or_else(malformed)?;
        let parts = der::read_all(outer.content).ok_or_else(malformed)?;
        let private = parts
            .get(1)
            .filter(|p| p.tag == der::TAG_OCTET_STRING)
            .ok_or_else(malformed)?;
        let named_curve = parts
            .iter()
            .find(|p| p.tag == 0xa0)
            .and_then(|p| der::read(p.content))
            .map(|(oid, _)| oid.raw.to_vec());
        let curve = match named_curve {
            Some(curve) => curve,
            None => match private.content.len() {
                32 => der::oid(oids::P256),
                48 => der::oid(oids::P384),
                _ => {
                    return Err(PkiError::UnsupportedKey {
                        detail: "EC key on an unknown curve".into(),
                    });
                }
            },
        };
        let algorithm_id = der::sequence(&[&der::oid(oids::EC_PUBLIC_KEY), &curve]);
        let wrapped = SecretBytes::new(der::sequence(&[
            &der::small_integer(0),
            &algorithm_id,
            &der::octet_string(outer.raw),
        ]));
        Self::from_pkcs8_der(wrapped.expose())
    }

    /// Reads a DER PKCS#1 `RSAPrivateKey` by wrapping it into PKCS#8.
    fn from_pkcs1_der(pkcs1: &[u8]) -> Result<Self> {
        let (outer, _) = der::read(pkcs1).ok_or(PkiError::InvalidPrivateKey {
            reason: "malformed RSA PRIVATE KEY",
        })?;
        let algorithm_id = der::sequence(&[&der::oid(oids::RSA_ENCRYPTION), &der::null()]);
        let wrapped = SecretBytes::new(der::sequence(&[
            &der::small_integer(0),
            &algorithm_id,
            &der::octet_string(outer.raw),
        ]));
        Self::from_pkcs8_der(wrapped.expose())
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// PKCS#8 v1 DER, readable by OpenSSL 3.0, Java and aws-lc alike.
    pub fn to_pkcs8_der(&self) -> SecretBytes {
        self.pkcs8_v1.clone()
    }

    /// PKCS#8 v1 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn to_pem(&self) -> SecretString {
        SecretString::new(super::to_pem("PRIVATE KEY", self.pkcs8_v1.expose()))
    }

    /// The DER SubjectPublicKeyInfo of the public half.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key_pair.subject_public_key_info()
    }

    /// The rcgen key pair, for code that builds with rcgen directly.
    pub fn key_pair(&self) -> &KeyPair {
        &self.key_pair
    }

    /// Signs `message` with this key's signature scheme (see [`KeyAlgorithm`]).
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.key_pair.sign(message).map_err(|e| PkiError::Signing {
            reason: format!("{} signature failed: {e}", self.algorithm),
        })
    }

    /// Whether this key is the private half of the given SubjectPublicKeyInfo.
    pub fn matches_spki(&self, spki_der: &[u8]) -> bool {
        same_public_key(&self.public_key_der(), spki_der)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Compares two SubjectPublicKeyInfos by algorithm and key bits, ignoring
/// encoding differences such as an absent versus NULL RSA parameter.
pub(crate) fn same_public_key(a: &[u8], b: &[u8]) -> bool {
    match (
        SubjectPublicKeyInfo::from_der(a),
        SubjectPublicKeyInfo::from_der(b),
    ) {
        (Ok((_, a)), Ok((_, b))) => {
            a.algorithm.algorithm == b.algorithm.algorithm
                && a.subject_public_key.data == b.subject_public_key.data
        }
        _ => false,
    }
}

/// Determines the key algorithm from a PKCS#8 AlgorithmIdentifier and key.
fn pkcs8_algorithm(algorithm_id: &[u8], private_key: &[u8]) -> Result<KeyAlgorithm> {
    let malformed = || PkiError::InvalidPrivateKey {
        reason: "malformed PKCS#8 algorithm",
    };
    let parts = der::read_all(algorithm_id).ok_or_else(malformed)?;
    let oid = parts
        .first()
        .filter(|p| p.tag == der::TAG_OID)
        .ok_or_else(malformed)?;
    if oid.raw == der::oid(oids::RSA_ENCRYPTION) {
        // RSAPrivateKey ::= SEQUENCE { version, modulus, ... }
        let modulus = der::read(private_key)
            .and_then(|(seq, _)| der::read_all(seq.content))
            .and_then(|fields| fields.get(1).map(|m| m.content))
            .ok_or(PkiError::InvalidPrivateKey {
                reason: "malformed RSA key",
            })?;
        rsa_algorithm_for_bits(bit_length(modulus))
    } else if oid.raw == der::oid(oids::EC_PUBLIC_KEY) {
        let curve = parts.get(1).map(|p| p.raw);
        if curve == Some(&der::oid(oids::P256)[..]) {
            Ok(KeyAlgorithm::EcdsaP256)
        } else if curve == Some(&der::oid(oids::P384)[..]) {
            Ok(KeyAlgorithm::EcdsaP384)
        } else {
            Err(PkiError::UnsupportedKey {
                detail: "EC key on a curve other than P-256 or P-384".into(),
            })
        }
    } else if oid.raw == der::oid(oids::ED25519) {
        Ok(KeyAlgorithm::Ed25519)
    } else {
        Err(PkiError::UnsupportedKey {
            detail: "private key algorithm is not RSA, ECDSA or Ed25519".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn pkcs8_version(der_bytes: &[u8]) -> u8 {
        let (outer, _) = der::read(der_bytes).unwrap();
        let (version, _) = der::read(outer.content).unwrap();
        version.content[0]
    }

    #[test]
    fn every_generated_key_exports_as_pkcs8_v1_and_reloads_to_the_same_public_key() {
        for algorithm in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::Ed25519,
        ] {
            let key = PrivateKey::generate(algorithm).unwrap();
            assert_eq!(key.algorithm(), algorithm);
            assert_eq!(pkcs8_version(key.to_pkcs8_der().expose()), 0, "{algorithm}");
            let reloaded = PrivateKey::from_pem(key.to_pem().expose()).unwrap();
            assert_eq!(reloaded.algorithm(), algorithm);
            assert_eq!(reloaded.public_key_der(), key.public_key_der());
            assert_eq!(
                KeyAlgorithm::from_spki_der(&key.public_key_der()).unwrap(),
                algorithm
            );
        }
    }

    #[test]
    fn ed25519_pkcs8_v2_input_is_downgraded_to_v1() {
        let v2 = KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_der();
        assert_eq!(
            pkcs8_version(&v2),
            1,
            "aws-lc is expected to emit v2 for Ed25519"
        );
        let key = PrivateKey::from_pkcs8_der(&v2).unwrap();
        assert_eq!(pkcs8_version(key.to_pkcs8_der().expose()), 0);
        assert_eq!(
            key.to_pkcs8_der().len(),
            48,
            "v1 Ed25519 PKCS#8 is 48 bytes"
        );
    }

    #[test]
    fn debug_output_never_contains_the_key() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains(&format!("{:?}", key.to_pkcs8_der().expose())));
        assert_eq!(
            debug,
            "PrivateKey { algorithm: EcdsaP256, key: \"<redacted>\" }"
        );
    }

    #[test]
    fn display_names_read_like_the_docs() {
        assert_eq!(KeyAlgorithm::EcdsaP256.to_string(), "ECDSA P-256");
        assert_eq!(KeyAlgorithm::Rsa4096.to_string(), "RSA 4096");
        assert_eq!(KeyAlgorithm::Ed25519.to_string(), "Ed25519");
    }

    #[test]
    fn garbage_and_encrypted_keys_are_refused_with_a_reason() {
        assert_eq!(
            PrivateKey::from_pem("not pem").unwrap_err().reason(),
            "InvalidPem"
        );
        let garbage = super::super::to_pem("PRIVATE KEY", &[0x30, 0x03, 0x02, 0x01, 0x00]);
        assert_eq!(
            PrivateKey::from_pem(&garbage).unwrap_err().reason(),
            "InvalidPrivateKey"
        );
        let encrypted = super::super::to_pem("ENCRYPTED PRIVATE KEY", &[0x30, 0x00]);
        let error = PrivateKey::from_pem(&encrypted).unwrap_err();
        assert!(error.to_string().contains("encrypted"), "{error}");
    }

    fn openssl(args: &[&str]) -> Vec<u8> {
        let output = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    #[test]
    fn keys_written_by_openssl_in_sec1_pkcs1_and_pkcs8_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        let ec = openssl(&["ecparam", "-name", "secp384r1", "-genkey"]);
        let key = PrivateKey::from_pem(std::str::from_utf8(&ec).unwrap()).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP384);

        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &path("rsa.pem"),
        ]);
        let pkcs1 = openssl(&["rsa", "-in", &path("rsa.pem"), "-traditional"]);
        let pkcs1 = std::str::from_utf8(&pkcs1).unwrap();
        assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"));
        let key = PrivateKey::from_pem(pkcs1).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::Rsa2048);
        let openssl_spki = openssl(&[
            "pkey",
            "-in",
            &path("rsa.pem"),
            "-pubout",
            "-outform",
            "DER",
        ]);
        assert!(key.matches_spki(&openssl_spki));

        let ed = openssl(&["genpkey", "-algorithm", "ED25519"]);
        let key = PrivateKey::from_pem(std::str::from_utf8(&ed).unwrap()).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::Ed25519);
    }

    #[test]
    fn openssl_reads_our_pkcs8_for_every_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        for algorithm in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::Ed25519,
        ] {
            let key = PrivateKey::generate(algorithm).unwrap();
            let path = dir.path().join("key.pem");
            std::fs::write(&path, key.to_pem().expose()).unwrap();
            let spki = openssl(&[
                "pkey",
                "-in",
                path.to_str().unwrap(),
                "-pubout",
                "-outform",
                "DER",
            ]);
            assert!(key.matches_spki(&spki), "{algorithm}");
        }
    }
}
