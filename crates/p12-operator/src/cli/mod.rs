//! Command-line interface: the subcommands and their flags, one file per
//! subcommand. Only clap argument types live here; they may use std, clap and
//! p12-core types, never the controller, probes, commands or inspect, which all
//! depend on this module instead.

mod ca;
mod completion;
mod crd;
mod inspect;
mod probe;
mod probe_now;
mod renew;
mod run;
mod selection;
mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use ca::{CaArgs, CaCommand, CaTarget, NewRootArgs, RotateArgs};
pub use completion::CompletionArgs;
pub use crd::CrdArgs;
pub use inspect::InspectArgs;
pub use probe::ProbeArgs;
pub use probe_now::ProbeNowArgs;
pub use renew::RenewArgs;
pub use run::RunArgs;
pub use selection::Selection;
pub use status::StatusArgs;

/// Issues PKCS#12 keystores from CertificateRequests and verifies, over real
/// TLS, that workloads serve what was issued.
#[derive(Parser, Debug)]
#[command(name = "p12-operator", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: `text` or `json`.
    #[arg(long, global = true, env = "P12_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Log filter, e.g. `info` or `p12_operator=debug,kube=info` (RUST_LOG syntax).
    #[arg(long, global = true, env = "P12_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML (both, or the one named).
    Crd(CrdArgs),
    /// Probe TLS endpoints and report, as JSON, what each one served (what probe pods run).
    Probe(ProbeArgs),
    /// Describe a PKCS#12 bundle from a file or a Secret: subject, names, validity, chain, fingerprint — never the key.
    Inspect(InspectArgs),
    /// Summarise a CertificateRequest: spec, conditions, certificate, Secret (never its values), probe results and recent Events.
    Status(StatusArgs),
    /// Force a re-issue of CertificateRequests now (sets p12-operator.io/renew-requested-at).
    Renew(RenewArgs),
    /// Ask the operator to probe a request's Service now (sets p12-operator.io/probe-requested-at).
    ProbeNow(ProbeNowArgs),
    /// The cluster CA: `ca status`, and `ca new-root` when its Secret is missing.
    Ca(CaArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    Completion(CompletionArgs),
}

/// How the report is printed.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// For scripts.
    Json,
}

/// Where fatal errors are written for Kubernetes to show as the container's
/// termination message (`kubectl describe pod`).
pub fn termination_log_path() -> PathBuf {
    std::env::var_os("P12_TERMINATION_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/dev/termination-log".into())
}
