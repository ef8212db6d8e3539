//! Running `p12-operator probe`: reads the flags into probe settings, probes
//! every endpoint, prints the report and writes the termination log. Uses the
//! client, the report types and `cli` for the termination-log path.

use std::net::SocketAddr;

use futures::StreamExt;
use jiff::Timestamp;

use super::judge::normalize_fingerprint;
use super::{ProbeReport, ProbeResult, TERMINATION_MESSAGE_LIMIT, client};
use crate::cli::ProbeArgs;

/// How many endpoints are probed at once.
pub const CONCURRENCY: usize = 16;

/// A usage problem: reported on stderr (and in the termination log), exit code 2.
#[derive(Debug)]
struct UsageError(String);

/// Parses the CA certificates from PEM text into DER.
fn parse_ca_pem(text: &[u8], source: &str) -> Result<Vec<Vec<u8>>, UsageError> {
    let blocks = pem::parse_many(text)
        .map_err(|e| UsageError(format!("failed to read the CA from {source}: {e}")))?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(UsageError(format!(
            "failed to read the CA from {source}: no CERTIFICATE block found"
        )));
    }
    Ok(certs)
}

fn settings(args: &ProbeArgs) -> Result<client::ProbeSettings, UsageError> {
    let ca_ders = match (&args.ca_file, &args.ca_pem) {
        (Some(path), _) => {
            let text = std::fs::read(path).map_err(|e| {
                UsageError(format!("failed to read --ca-file {}: {e}", path.display()))
            })?;
            parse_ca_pem(&text, &format!("--ca-file {}", path.display()))?
        }
        (None, Some(text)) => parse_ca_pem(text.as_bytes(), "--ca-pem / P12_PROBE_CA_PEM")?,
        (None, None) => {
            return Err(UsageError("failed to start: give the CA to trust with --ca-file or --ca-pem (P12_PROBE_CA_PEM)".into()));
        }
    };
    let expected_fingerprint = match &args.expect_fingerprint {
        None => None,
        Some(text) if text.trim().is_empty() => None,
        Some(text) => Some(normalize_fingerprint(text).ok_or_else(|| {
            UsageError(format!(
                "failed to read --expect-fingerprint {text:?}: expected 64 hex digits (SHA-256)"
            ))
        })?),
    };
    client::ProbeSettings::new(
        &args.server_name,
        &ca_ders,
        expected_fingerprint,
        args.connect_timeout,
        args.handshake_timeout,
    )
    .map_err(|e| UsageError(e.to_string()))
}

/// Writes the termination message, best effort: the file exists only inside a container.
fn write_termination_log(message: &str) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(crate::cli::termination_log_path())
        .and_then(|mut f| std::io::Write::write_all(&mut f, message.as_bytes()));
}

/// Probes every endpoint (at most [`CONCURRENCY`] at once), keeping their order.
pub async fn probe_all(prober: &client::Prober, endpoints: &[SocketAddr]) -> ProbeReport {
    let endpoints: Vec<ProbeResult> = futures::stream::iter(endpoints.iter().copied())
        .map(|a| prober.probe(a))
        .buffered(CONCURRENCY)
        .collect()
        .await;
    ProbeReport {
        endpoints,
        probed_at: Timestamp::now(),
        omitted_endpoints: 0,
        nonce: None,
    }
}

/// Runs `p12-operator probe`; returns the exit code (0 all verified, 1 otherwise, 2 usage).
pub async fn main(args: ProbeArgs) -> anyhow::Result<i32> {
    let settings = match settings(&args) {
        Ok(settings) => settings,
        Err(UsageError(message)) => {
            eprintln!("error: {message}");
            write_termination_log(&message);
            return Ok(2);
        }
    };
    let prober = client::Prober::new(settings)?;
    let mut report = probe_all(&prober, &args.endpoints).await;
    for endpoint in &report.endpoints {
        tracing::info!(address = %endpoint.address, reason = %endpoint.reason, verified = endpoint.verified, "probed");
    }
    println!("{}", report.to_json());
    // The nonce goes only to the termination message, which the operator reads.
    report.nonce = args.nonce.clone().filter(|n| !n.is_empty());
    write_termination_log(&report.termination_message(TERMINATION_MESSAGE_LIMIT));
    Ok(report.exit_code())
}
