//! Flags of `p12-operator status`: which request, the output format. Uses only clap.

use super::OutputFormat;

const STATUS_HELP: &str = "\
Examples:
  p12-operator status web                  # request `web` in your context's namespace
  p12-operator status web -n shop -o json  # for scripts, e.g. | jq -r .certificate.serialNumber
  p12-operator status web -n shop >/dev/null && echo ready

Exit codes:
  0  Ready=True for the current spec, and Verified is not False
  1  not Ready (or not yet), verification failed, or the request does not exist
  2  wrong usage, or the cluster cannot be reached (kubeconfig, network, permission)

Never prints Secret values: only the Secret's type, key names and owner.";

/// Flags of `p12-operator status`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = STATUS_HELP)]
pub struct StatusArgs {
    /// Name of the CertificateRequest.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Its namespace (default: the kubeconfig context's namespace).
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}
