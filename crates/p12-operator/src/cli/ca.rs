//! Flags of `p12-operator ca`: the cluster CA's state, and an explicit new root.
//! Uses only clap, std and p12-core types.

use std::time::Duration;

use p12_core::pki::KeyAlgorithm;

const CA_HELP: &str = "\
Examples:
  p12-operator ca status                      # the CA in p12-operator/p12-operator-ca
  p12-operator ca status -n ops --ca-secret corp-ca
  p12-operator ca rotate --overlap 168h       # a new root, issuing in a week
  p12-operator ca new-root --yes              # only when the CA Secret is missing

Exit codes:
  0  done: the CA is usable (status), the new root was created (new-root) or
     staged (rotate)
  1  the CA is missing or unusable (status), the Secret exists (new-root), or a
     rotation is already under way (rotate)
  2  wrong usage, or the cluster cannot be reached (kubeconfig, network, permission)";

/// `p12-operator ca …`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = CA_HELP)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum CaCommand {
    /// Show the cluster CA: subject, fingerprint, validity, chain, and how many
    /// issued certificates it signed (and how many another CA signed).
    Status(CaTarget),
    /// Create a new self-signed root in the CA Secret when it is missing. The
    /// operator never does this by itself once it has issued certificates: every
    /// client that trusts the old root will not trust certificates of the new one
    /// until it is given the new root.
    NewRoot(NewRootArgs),
    /// Start a rotation now: stage a new self-signed root as <ca>-next. Its
    /// root joins every trust bundle at once; the operator switches to it after
    /// --overlap, re-issues every certificate at its pace, and drops the old
    /// root one overlap after its last certificate was replaced.
    Rotate(RotateArgs),
}

/// Flags of `p12-operator ca rotate`.
#[derive(clap::Args, Debug, Clone)]
pub struct RotateArgs {
    #[command(flatten)]
    pub target: CaTarget,
    /// Time from now until the new root issues.
    #[arg(long, default_value = "720h", value_parser = p12_core::duration::parse)]
    pub overlap: Duration,
    /// Key algorithm: ECDSA-P256, ECDSA-P384, RSA-2048, RSA-3072, RSA-4096 or Ed25519.
    #[arg(long, default_value = "ECDSA-P256", value_parser = super::run::parse_algorithm)]
    pub key_algorithm: KeyAlgorithm,
    /// Lifetime of the new root.
    #[arg(long, default_value = "87600h", value_parser = p12_core::duration::parse)]
    pub duration: Duration,
    /// Common name of the new root.
    #[arg(long, default_value = "p12-operator CA")]
    pub common_name: String,
}

/// Where the CA Secret is.
#[derive(clap::Args, Debug, Clone)]
pub struct CaTarget {
    /// The operator's namespace.
    #[arg(short = 'n', long, default_value = "p12-operator")]
    pub namespace: String,
    /// The CA Secret's name.
    #[arg(long, default_value = "p12-operator-ca")]
    pub ca_secret: String,
}

/// Flags of `p12-operator ca new-root`.
#[derive(clap::Args, Debug, Clone)]
pub struct NewRootArgs {
    #[command(flatten)]
    pub target: CaTarget,
    /// Key algorithm: ECDSA-P256, ECDSA-P384, RSA-2048, RSA-3072, RSA-4096 or Ed25519.
    #[arg(long, default_value = "ECDSA-P256", value_parser = super::run::parse_algorithm)]
    pub key_algorithm: KeyAlgorithm,
    /// Lifetime of the new root.
    #[arg(long, default_value = "87600h", value_parser = p12_core::duration::parse)]
    pub duration: Duration,
    /// Common name of the new root.
    #[arg(long, default_value = "p12-operator CA")]
    pub common_name: String,
    /// Confirm that clients must be given the new root.
    #[arg(long)]
    pub yes: bool,
}
