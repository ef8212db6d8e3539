//! Flags of `p12-operator probe-now`: which requests, whether and how long to
//! wait. Uses only clap, std and p12-core durations.

use std::time::Duration;

use super::Selection;

const PROBE_NOW_HELP: &str = "\
Sets the annotation p12-operator.io/probe-requested-at on each request to the
current time (RFC 3339); the operator then runs a verification probe of the
request's spec.probe Service at once instead of at the next interval. Requests
without spec.probe are reported and skipped. (`p12-operator probe` is a
different command: it is what the probe pods themselves run.)

Examples:
  p12-operator probe-now web -n shop
  p12-operator probe-now web -n shop --wait     # and report the verdict
  p12-operator probe-now -l app=shop -A --wait

Exit codes:
  0  every request was marked (and, with --wait, probed and Verified=True)
  1  a request was not found, has no spec.probe, nothing matched, or --wait ran
     out of time or the probe did not verify
  2  wrong usage, or the cluster cannot be reached (kubeconfig, network, permission)";

/// Flags of `p12-operator probe-now`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = PROBE_NOW_HELP)]
pub struct ProbeNowArgs {
    #[command(flatten)]
    pub selection: Selection,

    /// Wait until each request has been probed (a new status.probe answering this
    /// request) and report the verdict.
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits, for all requests together, e.g. `90s` or `5m`.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = p12_core::duration::parse)]
    pub timeout: Duration,
}
