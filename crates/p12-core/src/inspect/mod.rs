//! Describes a PKCS#12 bundle from its bytes or a Secret's data — never the key or the password.
//!
//! The pure part of `p12-operator inspect` (and a fuzz target): bytes and a
//! password in, a [`Report`] out ([`inspect_p12`], [`inspect_secret`]), and its
//! rendering for people ([`render_text`]). Reading files, Secrets and the
//! environment is the operator's `inspect` module.
//!
//! One file per step: `report.rs` is what a report holds, `describe.rs` turns
//! bytes (a file or a Secret's data) into a report and picks the password,
//! `render.rs` lays it out for people. This file holds the errors. Uses only
//! p12-core's keystore, PKI, bundle and redacting types: no I/O.

mod describe;
mod render;
mod report;
#[cfg(test)]
mod tests;

pub use describe::{choose_password, inspect_p12, inspect_secret, password_from_file_bytes};
pub use render::render_text;
pub use report::{CertificateReport, ChainLink, Check, Report, TrustedEntry};

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
