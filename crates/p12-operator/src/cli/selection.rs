//! Which CertificateRequests `renew` and `probe-now` act on: names, `--all` or a
//! label selector, in one namespace or all. Uses only clap.

/// Which requests `renew` and `probe-now` act on.
#[derive(clap::Args, Debug, Clone)]
#[command(group = clap::ArgGroup::new("target").required(true).multiple(false).args(["names", "all", "selector"]))]
pub struct Selection {
    /// Names of CertificateRequests (in the namespace of -n).
    #[arg(value_name = "NAME", conflicts_with = "all_namespaces")]
    pub names: Vec<String>,

    /// Every CertificateRequest in the namespace (with -A: in every namespace).
    #[arg(long)]
    pub all: bool,

    /// Only the CertificateRequests whose labels match, e.g. `app=shop` or `tier in (web,api)`.
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// The namespace (default: the kubeconfig context's namespace).
    #[arg(
        long,
        short = 'n',
        value_name = "NS",
        conflicts_with = "all_namespaces"
    )]
    pub namespace: Option<String>,

    /// Every namespace; with --all or -l only.
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
}
