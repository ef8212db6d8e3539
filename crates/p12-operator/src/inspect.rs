//! `p12-operator inspect`: describes a PKCS#12 bundle from a file or a Secret — never the key or the password.
//!
//! The pure part, bytes and a password to a [`Report`], is `p12_core::inspect`
//! (re-exported here); this module only reads the file or the Secret, picks the
//! password and prints. Exit codes: 0 the bundle is sound, 1 it has a problem
//! (wrong password, key mismatch, expired, inconsistent Secret, not found), 2 the
//! command was used wrongly.

use std::collections::BTreeMap;

use jiff::Timestamp;

pub use p12_core::inspect::*;

use crate::bundle;
use crate::cli::{InspectArgs, OutputFormat};
use crate::sensitive::SecretString;

/// The environment variable read for the password when no `--password-file` is given.
pub const PASSWORD_ENV: &str = "P12_PASSWORD";

/// A problem with the command itself: exit code 2.
struct Usage(String);

fn read_password_file(path: &std::path::Path) -> Result<SecretString, Usage> {
    let bytes = std::fs::read(path).map_err(|e| {
        Usage(format!(
            "failed to read --password-file {}: {e}",
            path.display()
        ))
    })?;
    password_from_file_bytes(bytes).ok_or_else(|| {
        Usage(format!(
            "failed to read --password-file {}: it is not UTF-8 text",
            path.display()
        ))
    })
}

fn password_from_env() -> Result<Option<SecretString>, Usage> {
    match std::env::var_os(PASSWORD_ENV) {
        None => Ok(None),
        Some(value) => value
            .into_string()
            .map(|text| Some(SecretString::new(text)))
            .map_err(|_| {
                Usage(format!(
                    "failed to read {PASSWORD_ENV}: it is not UTF-8 text"
                ))
            }),
    }
}

/// What `main` ran into: the exit code and the one-line message.
enum Failure {
    Usage(String),
    Bundle(String),
}

impl From<Usage> for Failure {
    fn from(Usage(message): Usage) -> Self {
        Failure::Usage(message)
    }
}

impl From<InspectError> for Failure {
    fn from(error: InspectError) -> Self {
        match error.exit_code() {
            2 => Failure::Usage(error.to_string()),
            _ => Failure::Bundle(error.to_string()),
        }
    }
}

async fn read_secret(
    name: &str,
    namespace: Option<&str>,
) -> Result<(String, BTreeMap<String, Vec<u8>>, BTreeMap<String, String>), Failure> {
    use k8s_openapi::api::core::v1::Secret;
    let client = kube::Client::try_default().await.map_err(|e| {
        Failure::Usage(format!(
            "failed to configure the Kubernetes client from your kubeconfig: {e}"
        ))
    })?;
    let namespace = namespace.map_or_else(|| client.default_namespace().to_owned(), str::to_owned);
    let qualified = format!("{namespace}/{name}");
    let api: kube::Api<Secret> = kube::Api::namespaced(client, &namespace);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| Failure::Bundle(format!("failed to read Secret {qualified}: {e}")))?
        .ok_or_else(|| {
            Failure::Bundle(format!(
                "failed to read Secret {qualified}: it does not exist"
            ))
        })?;
    let data = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let annotations = secret.metadata.annotations.unwrap_or_default();
    Ok((qualified, data, annotations))
}

async fn build_report(args: &InspectArgs, now: Timestamp) -> Result<Report, Failure> {
    let from_file = args
        .password_file
        .as_deref()
        .map(read_password_file)
        .transpose()?;
    if let Some(path) = &args.file {
        let name = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|e| Usage(format!("failed to read {name}: {e}")))?;
        let password = match from_file {
            Some(password) => password,
            None => password_from_env()?.ok_or_else(|| {
                Usage(format!("failed to open {name}: no password given (use --password-file or set {PASSWORD_ENV})"))
            })?,
        };
        return Ok(inspect_p12(&name, &bytes, &password, now)?);
    }
    let Some(secret_name) = &args.secret else {
        return Err(Failure::Usage(
            "failed to start: give --file PATH or --secret NAME".into(),
        ));
    };
    let (qualified, data, annotations) =
        read_secret(secret_name, args.namespace.as_deref()).await?;
    let from_secret = data
        .get(bundle::PASSWORD)
        .and_then(|bytes| String::from_utf8(bytes.clone()).ok())
        .filter(|text| !text.is_empty())
        .map(SecretString::new);
    let password = choose_password(from_file, from_secret, password_from_env()?);
    Ok(inspect_secret(
        &qualified,
        &data,
        &annotations,
        password.as_ref(),
        now,
    )?)
}

/// Runs `p12-operator inspect`; returns the exit code (0 sound, 1 bundle problem, 2 usage).
pub async fn main(args: InspectArgs) -> anyhow::Result<i32> {
    match build_report(&args, Timestamp::now()).await {
        Ok(report) => {
            match args.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                OutputFormat::Text => print!("{}", render_text(&report)),
            }
            Ok(report.exit_code())
        }
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            Ok(2)
        }
        Err(Failure::Bundle(message)) => {
            eprintln!("error: {message}");
            Ok(1)
        }
    }
}
