//! Flags of `p12-operator probe` (what probe pods run): endpoints, the name to
//! verify, the CA to trust, timeouts. Uses only clap, std and p12-core durations.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `p12-operator probe`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProbeArgs {
    /// An endpoint to probe, as `ip:port` (`[ipv6]:port`); repeat for several.
    #[arg(long = "endpoint", value_name = "IP:PORT", required = true)]
    pub endpoints: Vec<SocketAddr>,

    /// The name sent as SNI and verified against the certificate, e.g. `web.shop.svc`.
    #[arg(long, value_name = "NAME")]
    pub server_name: String,

    /// A PEM file with the CA certificate(s) to trust.
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// The CA certificate(s) to trust, as PEM text (probe pods get it through the environment).
    #[arg(
        long,
        value_name = "PEM",
        env = "P12_PROBE_CA_PEM",
        hide_env_values = true
    )]
    pub ca_pem: Option<String>,

    /// SHA-256 fingerprint (hex, colons allowed) of the certificate the endpoints should serve.
    #[arg(long, value_name = "HEX", env = "P12_PROBE_EXPECT_FINGERPRINT")]
    pub expect_fingerprint: Option<String>,

    /// A secret to echo in the termination message, so the operator can tell
    /// its own probe pod's report from a forged one (probe pods get it through
    /// the environment).
    #[arg(
        long,
        value_name = "HEX",
        env = "P12_PROBE_NONCE",
        hide_env_values = true
    )]
    pub nonce: Option<String>,

    /// How long to wait for the TCP connection, e.g. `5s`.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = positive_duration)]
    pub connect_timeout: Duration,

    /// How long to wait for the TLS handshake once connected, e.g. `10s`.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub handshake_timeout: Duration,
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = crate::duration::parse(text)?;
    if duration.is_zero() {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(duration)
}
