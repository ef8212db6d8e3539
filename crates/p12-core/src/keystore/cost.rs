//! Bounds what opening a PKCS#12 file may cost, before p12-keystore opens it.
//!
//! p12-keystore derives a key from the password for the MAC, for every
//! encrypted safe and for every shrouded key or secret bag, with parameters the
//! file itself names, and admits up to 1,000,000 iterations each and scrypt up
//! to 1 GiB with p = 16. Whoever can write a file (or a Secret) must not choose
//! what reading it costs, so every parameter set is found and checked first:
//! in the clear bytes, and inside each encrypted safe, which is decrypted here
//! (under parameters already checked) to see the bags it holds.
//!
//! The parameter sets are found by their algorithm identifiers: DER encodes an
//! OID one way only, so every PBES2 or PKCS#12-PBE identifier p12-keystore can
//! act on appears as these exact bytes, wherever it is nested, and its
//! parameters are the element after it, decoded here with the same types
//! p12-keystore decodes them with.

use cbc::cipher::{BlockModeDecrypt, KeyIvInit, block_padding::Pkcs7};
use cms::content_info::ContentInfo;
use cms::encrypted_data::EncryptedData;
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Any, Decode, Encode, Reader, SliceReader};
use p12_keystore::error::Error as P12Error;
use pkcs5::pbes2;
use pkcs12::Pfx;
use pkcs12::kdf::{Pkcs12KeyType, derive_key_utf8};

use super::p12::KeystoreError;
use crate::sensitive::SecretString;

/// Largest PKCS#12 file read: ours are a few KiB; long chains stay far below.
pub const MAX_KEYSTORE_BYTES: usize = 256 * 1024;
/// Most iterations of one PBKDF2 or PKCS#12 key derivation (we write 2,048;
/// OpenSSL 2,048, Java 10,000; p12-keystore's own limit).
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Most iterations of all key derivations of one file together: a MAC, a
/// certificate safe and a key at the per-derivation limit, plus the second
/// decryption of the safe that this check itself costs (about 2 s).
pub const MAX_TOTAL_ITERATIONS: u64 = 4_000_000;
/// Most memory of one scrypt derivation (128·N·r bytes): N = 2^15, r = 8, twice
/// OpenSSL's default.
pub const MAX_SCRYPT_MEMORY: u64 = 32 * 1024 * 1024;
/// Most scrypt lanes (p); OpenSSL and the RFC 7914 examples use 1.
pub const MAX_SCRYPT_PARALLELISM: u16 = 1;
/// Most password-based key derivations one file may ask for.
pub const MAX_DERIVATIONS: usize = 16;

/// pkcs7-data (1.2.840.113549.1.7.1) and pkcs7-encryptedData (…1.7.6).
const DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ENCRYPTED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.6");
const PBES2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.13");
const PBE_SHA_3DES: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.1.3");
const PBE_SHA_RC2_40: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.1.6");

/// The DER of the PBES2 OID, and of the PKCS#12 PBE OIDs without their last arc.
const PBES2_DER: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d,
];
const PKCS12_PBE_DER: [u8; 11] = [
    0x06, 0x0a, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01,
];

type Result<T> = std::result::Result<T, KeystoreError>;

fn too_costly(reason: String) -> KeystoreError {
    KeystoreError::TooCostly(reason)
}

fn malformed(error: impl Into<P12Error>) -> KeystoreError {
    KeystoreError::Malformed(error.into())
}

/// The key derivations found so far.
#[derive(Default)]
struct Budget {
    derivations: usize,
    iterations: u64,
}

impl Budget {
    fn derivation(&mut self) -> Result<()> {
        self.derivations += 1;
        if self.derivations > MAX_DERIVATIONS {
            return Err(too_costly(format!(
                "it asks for more than {MAX_DERIVATIONS} password-based key derivations (the limit)"
            )));
        }
        Ok(())
    }

    /// One PBKDF2 or PKCS#12-KDF derivation of `count` iterations, run `runs` times.
    fn iterations(&mut self, what: &str, count: i64, runs: u64) -> Result<()> {
        self.derivation()?;
        let count = u64::try_from(count).unwrap_or(0);
        if count > u64::from(MAX_ITERATIONS) {
            return Err(too_costly(format!(
                "a {what} key derivation asks for {count} iterations; the limit is {MAX_ITERATIONS}"
            )));
        }
        self.iterations += count * runs;
        if self.iterations > MAX_TOTAL_ITERATIONS {
            return Err(too_costly(format!(
                "its key derivations ask for more than {MAX_TOTAL_ITERATIONS} iterations in all (the limit)"
            )));
        }
        Ok(())
    }

    fn pbes2(&mut self, params: &pbes2::Parameters) -> Result<()> {
        match &params.kdf {
            pbes2::Kdf::Pbkdf2(p) => self.iterations("PBKDF2", i64::from(p.iteration_count), 1),
            pbes2::Kdf::Scrypt(s) => {
                self.derivation()?;
                let memory = 128u128 * u128::from(s.cost_parameter) * u128::from(s.block_size);
                if memory > u128::from(MAX_SCRYPT_MEMORY) {
                    return Err(too_costly(format!(
                        "a scrypt key derivation asks for {} MiB of memory (N = {}, r = {}); the limit is {} MiB",
                        memory >> 20,
                        s.cost_parameter,
                        s.block_size,
                        MAX_SCRYPT_MEMORY >> 20
                    )));
                }
                if s.parallelization > MAX_SCRYPT_PARALLELISM {
                    return Err(too_costly(format!(
                        "a scrypt key derivation asks for p = {}; the limit is {MAX_SCRYPT_PARALLELISM}",
                        s.parallelization
                    )));
                }
                Ok(())
            }
            // A KDF newer than this code: its cost is unknown, so it is not run.
            _ => Err(malformed(P12Error::UnsupportedEncryptionScheme)),
        }
    }

    /// Checks every PBES2 and PKCS#12-PBE parameter set in `bytes`. Bytes after
    /// an OID that do not decode as its parameters are no parameter set
    /// p12-keystore could use either (it decodes them the same way).
    fn scan(&mut self, bytes: &[u8]) -> Result<()> {
        for at in 0..bytes.len() {
            let rest = &bytes[at..];
            if let Some(after) = rest.strip_prefix(&PBES2_DER) {
                if let Some(params) = first_element(after)
                    .and_then(|any| any.to_der().ok())
                    .and_then(|der| pbes2::Parameters::from_der(&der).ok())
                {
                    self.pbes2(&params)?;
                }
            } else if let Some([_last_arc, after @ ..]) = rest.strip_prefix(&PKCS12_PBE_DER) {
                if let Some((_, iterations)) = pkcs12_pbe_params(after) {
                    // The key and the IV are derived separately.
                    self.iterations("PKCS#12", i64::from(iterations), 2)?;
                }
            }
        }
        Ok(())
    }
}

fn first_element(bytes: &[u8]) -> Option<Any> {
    Any::decode(&mut SliceReader::new(bytes).ok()?).ok()
}

/// `SEQUENCE { salt OCTET STRING, iterations INTEGER }` at the front of
/// `bytes`, read as p12-keystore reads it.
fn pkcs12_pbe_params(bytes: &[u8]) -> Option<(Vec<u8>, i32)> {
    let mut reader = SliceReader::new(bytes).ok()?;
    reader
        .sequence(|r| {
            let salt = OctetString::decode(r)?.as_bytes().to_vec();
            let iterations: i32 = r.decode()?;
            Ok::<_, der::Error>((salt, iterations))
        })
        .ok()
}

/// Refuses a file whose decoding could cost more than the limits above, before
/// any of it is decoded by p12-keystore. Decrypts the encrypted safes to look
/// inside: a wrong password is reported as such.
pub(super) fn check_cost(bytes: &[u8], password: &SecretString) -> Result<()> {
    if bytes.len() > MAX_KEYSTORE_BYTES {
        return Err(too_costly(format!(
            "the file has {} bytes; the limit is {MAX_KEYSTORE_BYTES} (256 KiB)",
            bytes.len()
        )));
    }
    let mut budget = Budget::default();
    // Everything not inside an encrypted safe: those safes' own parameters,
    // shrouded keys in plain safes, secret bags.
    budget.scan(bytes)?;
    let pfx = Pfx::from_der(bytes).map_err(malformed)?;
    if let Some(mac) = &pfx.mac_data {
        budget.iterations("MAC", i64::from(mac.iterations), 1)?;
    }
    if pfx.auth_safe.content_type != DATA {
        return Ok(()); // p12-keystore refuses it before decrypting anything
    }
    let auth_safe = OctetString::from_der(&pfx.auth_safe.content.to_der().map_err(malformed)?)
        .map_err(malformed)?;
    let safes = Vec::<ContentInfo>::from_der(auth_safe.as_bytes()).map_err(malformed)?;
    for safe in safes {
        if safe.content_type != ENCRYPTED_DATA {
            continue; // in the clear: scanned above
        }
        let encrypted = EncryptedData::from_der(&safe.content.to_der().map_err(malformed)?)
            .map_err(malformed)?;
        let info = &encrypted.enc_content_info;
        let Some(ciphertext) = &info.encrypted_content else {
            continue;
        };
        let plain = decrypt(
            &info.content_enc_alg.oid,
            info.content_enc_alg.parameters.as_ref(),
            ciphertext.as_bytes(),
            password,
            &mut budget,
        )?;
        budget.scan(&plain)?;
    }
    Ok(())
}

/// Decrypts an encrypted safe as p12-keystore would, after checking (and
/// counting: this is a second derivation) its parameters.
fn decrypt(
    oid: &ObjectIdentifier,
    params: Option<&Any>,
    ciphertext: &[u8],
    password: &SecretString,
    budget: &mut Budget,
) -> Result<Vec<u8>> {
    let params = params
        .ok_or_else(|| malformed(P12Error::InvalidParameters))?
        .to_der()
        .map_err(malformed)?;
    match *oid {
        PBES2 => {
            let params = pbes2::Parameters::from_der(&params).map_err(malformed)?;
            budget.pbes2(&params)?;
            params
                .decrypt(password.expose().as_bytes(), ciphertext)
                .map_err(|_| KeystoreError::WrongPassword)
        }
        PBE_SHA_3DES | PBE_SHA_RC2_40 => {
            let (salt, iterations) =
                pkcs12_pbe_params(&params).ok_or_else(|| malformed(P12Error::InvalidParameters))?;
            budget.iterations("PKCS#12", i64::from(iterations), 2)?;
            let derive = |kind, len| {
                derive_key_utf8::<sha1::Sha1>(password.expose(), &salt, kind, iterations, len)
                    .map_err(malformed)
            };
            let iv = derive(Pkcs12KeyType::Iv, 8)?;
            let plain = if *oid == PBE_SHA_3DES {
                let key = derive(Pkcs12KeyType::EncryptionKey, 24)?;
                cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
                    .map_err(|_| malformed(P12Error::InvalidLength))?
                    .decrypt_padded_vec::<Pkcs7>(ciphertext)
            } else {
                let key = derive(Pkcs12KeyType::EncryptionKey, 5)?;
                cbc::Decryptor::<rc2::Rc2>::new_from_slices(&key, &iv)
                    .map_err(|_| malformed(P12Error::InvalidLength))?
                    .decrypt_padded_vec::<Pkcs7>(ciphertext)
            };
            plain.map_err(|_| KeystoreError::WrongPassword)
        }
        _ => Err(malformed(P12Error::UnsupportedEncryptionScheme)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn derivations_are_refused_beyond_the_total_and_the_count() {
        let mut budget = Budget::default();
        for _ in 0..4 {
            budget.iterations("PBKDF2", 1_000_000, 1).unwrap();
        }
        let error = budget.iterations("PBKDF2", 1, 1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "failed to open the keystore: its key derivations ask for more than 4000000 iterations in all (the limit)"
        );
        let mut budget = Budget::default();
        for _ in 0..16 {
            budget.iterations("MAC", 1, 1).unwrap();
        }
        let error = budget.iterations("MAC", 1, 1).unwrap_err();
        assert_eq!(error.reason(), "KeystoreTooCostly");
        assert!(error.to_string().contains("more than 16"), "{error}");
    }

    /// `openssl pkcs12 -export` of a fresh key and self-signed certificate, with `args`.
    fn openssl_p12(args: &[&str]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let output = Command::new("openssl")
                .current_dir(dir.path())
                .args(args)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-subj",
            "/CN=cost",
            "-days",
            "1",
        ]);
        let mut export = vec![
            "pkcs12", "-export", "-in", "c.pem", "-inkey", "k.pem", "-passout", "pass:pw", "-out",
            "out.p12",
        ];
        export.extend_from_slice(args);
        run(&export);
        std::fs::read(dir.path().join("out.p12")).unwrap()
    }

    #[test]
    fn an_openssl_legacy_keystore_with_an_rc2_safe_opens() {
        // -legacy: certificates in an RC2-40 encrypted safe, the key in 3DES.
        let bytes = openssl_p12(&["-legacy"]);
        let store = super::super::read_keystore(&bytes, &SecretString::from("pw")).unwrap();
        assert_eq!(store.key_entries.len(), 1);
        let error = super::super::read_keystore(&bytes, &SecretString::from("wrong")).unwrap_err();
        assert_eq!(error.reason(), "KeystoreWrongPassword");
    }

    #[test]
    fn one_iteration_over_the_limit_is_refused_by_name() {
        let bytes = openssl_p12(&["-iter", "1000001", "-nomac"]);
        let error = check_cost(&bytes, &SecretString::from("pw")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "failed to open the keystore: a PBKDF2 key derivation asks for 1000001 iterations; the limit is 1000000"
        );
    }
}
