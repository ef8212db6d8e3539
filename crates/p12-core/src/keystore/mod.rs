//! PKCS#12 keystores and truststores.

pub mod cost;
pub mod p12;
pub mod passwordless;

pub use p12::{
    ITERATIONS, KeyEntry, KeystoreError, ParsedStore, Profile, build_keystore, build_truststore,
    read_keystore,
};
pub use passwordless::{build_passwordless_truststore, read_passwordless_truststore};
