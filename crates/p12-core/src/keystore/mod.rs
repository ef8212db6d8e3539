//! PKCS#12 keystores and truststores.

pub mod cost;
pub mod p12;

pub use p12::{
    ITERATIONS, KeyEntry, KeystoreError, ParsedStore, Profile, build_keystore, build_truststore,
    read_keystore,
};
