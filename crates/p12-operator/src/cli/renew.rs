//! Flags of `p12-operator renew`: which requests, whether and how long to wait.
//! Uses only clap, std and p12-core durations.

use std::time::Duration;

use super::Selection;

const RENEW_HELP: &str = "\
Sets the annotation p12-operator.io/renew-requested-at on each request to the
current time (RFC 3339); the operator then issues a new certificate (new
serial, revision + 1) whether or not the current one is due for renewal.

Examples:
  p12-operator renew web -n shop               # one request
  p12-operator renew web api -n shop --wait     # two, and wait until both are re-issued
  p12-operator renew -l app=shop -n shop        # those labelled app=shop
  p12-operator renew --all -n shop              # every request in namespace shop
  p12-operator renew --all -A --wait --timeout 5m

Exit codes:
  0  every request was marked (and, with --wait, re-issued and Ready)
  1  a request was not found, nothing matched, or --wait ran out of time or the
     request is not Ready after the new revision
  2  wrong usage, or the cluster cannot be reached (kubeconfig, network, permission)";

/// Flags of `p12-operator renew`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = RENEW_HELP)]
pub struct RenewArgs {
    #[command(flatten)]
    pub selection: Selection,

    /// Wait until each request's status.revision has increased and it is Ready again.
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits, for all requests together, e.g. `90s` or `5m`.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = p12_core::duration::parse)]
    pub timeout: Duration,
}
