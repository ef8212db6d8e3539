//! User-facing subcommands that work on CertificateRequests through your
//! kubeconfig: `status`, `renew`, `probe-now`, and `completion`.
//!
//! The pure part turns what the API server returned into a [`StatusReport`]
//! ([`status_report`]) and renders it ([`render_status_text`]); the `async`
//! entry points only read, patch and print. Exit codes, for every command here:
//! 0 the request is fine (Ready, not failing verification) or the action was
//! done, 1 a request is not Ready, failed verification, was not found or did not
//! finish in time, 2 the command was used wrongly or the cluster could not be
//! reached (including no permission). Nothing here ever prints a Secret's values:
//! `status` reads the issued Secret for its type, key names and owner only.
//!
//! One file per decision: `status.rs` reads a request, its Secret and Events
//! and builds the report (query); `render.rs` turns the report into text;
//! `renew.rs` marks requests for `renew` and `probe-now` and waits for the
//! operator's answer; `completion.rs` prints shell completions. This file holds
//! what they share: exit-code failures and the API connection. The flags live
//! in `crate::cli`.

mod ca;
mod completion;
mod render;
mod renew;
mod status;
#[cfg(test)]
mod tests;

use kube::Client;

pub use ca::ca;
pub use completion::completion;
pub use render::{compact, relative, render_status_text};
pub use renew::{annotation_patch, probe_now, renew};
pub use status::{
    CertificateSummary, ConditionSummary, EventSummary, SecretLookup, SecretSummary, StatusReport,
    is_ready, problems, recent_events, status, status_report,
};

/// The field manager of the CLI's writes (visible in `metadata.managedFields`).
pub const FIELD_MANAGER: &str = "p12-operator-cli";

/// How many Events `status` shows.
pub const MAX_EVENTS: usize = 10;

/// The kind named in Events about a request.
const KIND: &str = "CertificateRequest";

// ---------------------------------------------------------------------------
// Failures and exit codes

/// What stopped a command: the exit code and the one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// Exit 2: the command, the kubeconfig or the connection is at fault.
    Usage(String),
    /// Exit 1: the request is at fault (missing, not ready, timed out).
    Request(String),
}

impl Failure {
    fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Request(_) => 1,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Usage(m) | Failure::Request(m) => m,
        }
    }

    fn report(&self) -> i32 {
        eprintln!("error: {}", self.message());
        self.exit_code()
    }
}

/// An error with its causes, `a: b: c`, without repeating a cause the
/// message already holds.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Sorts an API error into exit 1 (the object) or exit 2 (the cluster, the
/// connection, the permission, a missing CRD).
fn classify(error: kube::Error, what: &str) -> Failure {
    match &error {
        kube::Error::Api(s) if s.code == 401 => Failure::Usage(format!(
            "{what}: the cluster did not accept your credentials ({}); check your kubeconfig",
            s.message
        )),
        kube::Error::Api(s) if s.code == 403 => {
            Failure::Usage(format!("{what}: not allowed: {}", s.message))
        }
        kube::Error::Api(s)
            if s.code == 404 && s.details.as_ref().is_some_and(|d| !d.name.is_empty()) =>
        {
            Failure::Request(format!("{what}: it does not exist"))
        }
        kube::Error::Api(s) if s.code == 404 => Failure::Usage(format!(
            "{what}: the cluster does not serve CertificateRequests (is the p12-operator CRD installed? `p12-operator crd | kubectl apply -f -`)"
        )),
        kube::Error::Api(s) => Failure::Request(format!("{what}: {}", s.message)),
        _ => Failure::Usage(format!(
            "{what}: cannot reach the cluster: {}",
            chain(&error)
        )),
    }
}

async fn connect() -> Result<Client, Failure> {
    Client::try_default().await.map_err(|e| {
        Failure::Usage(format!(
            "failed to configure the Kubernetes client from your kubeconfig: {}",
            chain(&e)
        ))
    })
}
