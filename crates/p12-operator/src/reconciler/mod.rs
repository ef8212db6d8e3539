//! The controller: watches CertificateRequests and the Secrets they own, and
//! makes each Secret hold a valid bundle for its request.
//!
//! One pass: plan the request → find the CA → read the password → compare the
//! Secret with the plan → issue, re-encrypt or do nothing → write the Secret in
//! one call → write status in one call. Every pass is safe to repeat.
//!
//! Each file decides one thing: `context` what a pass may know (caches, Secret
//! references), `pass` one pass over a request and its outcome, `secret_write`
//! the Secret, `issue` the key and certificate, `record` status, Events and
//! metrics, `run` the watches and the controller loop; `trust` keeps the
//! trust-bundle ConfigMaps of the selected namespaces; `rollout` restarts the
//! workloads a request names after a renewal.

mod admission;
pub mod ca;
mod context;
mod issue;
mod pace;
mod pass;
pub mod probe;
mod record;
mod rollout;
pub mod rotation;
mod run;
pub mod secret_index;
mod secret_write;
pub mod status;
#[cfg(test)]
mod tests;
pub mod trust;

use crate::pki;

pub use admission::{Admission, Verdict};
pub use context::{Context, ContextSettings};
pub(crate) use context::{MANAGER, request_key};
pub use pass::{error_policy, reconcile};
pub(crate) use record::publish;
pub use run::run;

/// Errors a pass can end with; the category is the Event reason and the metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to call the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("failed to run the issuance task: {0}")]
    Task(String),
    #[error("failed to build the keystore: {0}")]
    Keystore(#[from] crate::keystore::KeystoreError),
    #[error("failed to issue the certificate: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("{0}")]
    NotLeader(#[from] crate::leader::NotLeader),
    #[error("the Secret changed while it was being written")]
    SecretRaced,
    #[error("reconcile panicked: {0}")]
    Panicked(String),
}

impl Error {
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeError",
            Error::Task(_) => "TaskFailed",
            Error::Keystore(_) => "KeystoreFailed",
            Error::Pki(_) => "IssuanceFailed",
            Error::NotLeader(_) => "NotLeader",
            Error::SecretRaced => "SecretRaced",
            Error::Panicked(_) => "Panicked",
        }
    }
}
