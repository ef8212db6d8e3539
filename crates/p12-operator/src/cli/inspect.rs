//! Flags of `p12-operator inspect`: which bundle (a file or a Secret), where its
//! password comes from, the output format. Uses only clap and std.

use std::path::PathBuf;

use super::OutputFormat;

/// Flags of `p12-operator inspect`.
#[derive(clap::Args, Debug, Clone)]
pub struct InspectArgs {
    /// A PKCS#12 file (.p12) to describe.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "secret",
        required_unless_present = "secret"
    )]
    pub file: Option<PathBuf>,

    /// A Secret written by the operator, read through your kubeconfig.
    #[arg(long, value_name = "NAME")]
    pub secret: Option<String>,

    /// The Secret's namespace (default: the kubeconfig context's namespace).
    #[arg(long, short = 'n', value_name = "NS", requires = "secret")]
    pub namespace: Option<String>,

    /// A file holding the keystore password (one trailing newline is ignored).
    /// Without it the password is the Secret's `keystore-password`, else the
    /// P12_PASSWORD environment variable. There is deliberately no --password
    /// flag: it would land in shell history and the process list.
    #[arg(long, value_name = "PATH")]
    pub password_file: Option<PathBuf>,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}
