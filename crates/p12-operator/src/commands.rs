//! User-facing subcommands that work on CertificateRequests through your
//! kubeconfig: `status`, `renew`, `probe-now`, and `completion`.
//!
//! The pure part turns what the API server returned into a [`StatusReport`]
//! ([`status_report`]) and renders it ([`render_status_text`]); the `async`
//! entry points only read, patch and print. Exit codes, for every command here:
//! 0 the request is fine (Ready, not failing verification) or the action was
//! done, 1 a request is not Ready, failed verification, was not found or did not
//! finish in time, 2 the command was used wrongly or the cluster could not be
//! reached (including no permission). Nothing here ever prints a Secret's values:
//! `status` reads the issued Secret for its type, key names and owner only.

use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::api::{CertificateRequest, CertificateRequestSpec, ProbeStatus};
use crate::bundle;
use crate::inspect::OutputFormat;
use crate::reconciler::probe::PROBE_REQUESTED;
use crate::reconciler::status::{READY, VERIFIED};

/// The field manager of the CLI's writes (visible in `metadata.managedFields`).
pub const FIELD_MANAGER: &str = "p12-operator-cli";

/// How many Events `status` shows.
pub const MAX_EVENTS: usize = 10;

/// The kind named in Events about a request.
const KIND: &str = "CertificateRequest";

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

const COMPLETION_HELP: &str = "\
Installing the script:
  bash        p12-operator completion bash > /etc/bash_completion.d/p12-operator
              (or, for one user: p12-operator completion bash > ~/.local/share/bash-completion/completions/p12-operator)
  zsh         p12-operator completion zsh > \"${fpath[1]}/_p12-operator\"   (then start a new shell)
  fish        p12-operator completion fish > ~/.config/fish/completions/p12-operator.fish
  powershell  p12-operator completion powershell | Out-String | Invoke-Expression   (add to $PROFILE)
  elvish      p12-operator completion elvish >> ~/.config/elvish/rc.elv

For the current bash session only:
  source <(p12-operator completion bash)";

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
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::duration::parse)]
    pub timeout: Duration,
}

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
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::duration::parse)]
    pub timeout: Duration,
}

/// Flags of `p12-operator completion`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = COMPLETION_HELP)]
pub struct CompletionArgs {
    /// The shell to print a completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Runs `p12-operator completion`: prints the completion script on stdout.
pub fn completion(args: CompletionArgs) -> anyhow::Result<i32> {
    use clap::CommandFactory;
    let mut command = crate::cli::Cli::command();
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    // A closed pipe (`| head`) is not an error worth a panic.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::anyhow!(
            "failed to write the completion script: {e}"
        )),
        _ => Ok(0),
    }
}

// ---------------------------------------------------------------------------
// Failures and exit codes

/// What stopped a command: the exit code and the one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// Exit 2: the command, the kubeconfig or the connection is at fault.
    Usage(String),
    /// Exit 1: the request is at fault (missing, not ready, timed out).
    Request(String),
}

impl Failure {
    fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Request(_) => 1,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Usage(m) | Failure::Request(m) => m,
        }
    }

    fn report(&self) -> i32 {
        eprintln!("error: {}", self.message());
        self.exit_code()
    }
}

/// An error with its causes, `a: b: c`, without repeating a cause the
/// message already holds.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Sorts an API error into exit 1 (the object) or exit 2 (the cluster, the
/// connection, the permission, a missing CRD).
fn classify(error: kube::Error, what: &str) -> Failure {
    match &error {
        kube::Error::Api(s) if s.code == 401 => Failure::Usage(format!(
            "{what}: the cluster did not accept your credentials ({}); check your kubeconfig",
            s.message
        )),
        kube::Error::Api(s) if s.code == 403 => {
            Failure::Usage(format!("{what}: not allowed: {}", s.message))
        }
        kube::Error::Api(s)
            if s.code == 404 && s.details.as_ref().is_some_and(|d| !d.name.is_empty()) =>
        {
            Failure::Request(format!("{what}: it does not exist"))
        }
        kube::Error::Api(s) if s.code == 404 => Failure::Usage(format!(
            "{what}: the cluster does not serve CertificateRequests (is the p12-operator CRD installed? `p12-operator crd | kubectl apply -f -`)"
        )),
        kube::Error::Api(s) => Failure::Request(format!("{what}: {}", s.message)),
        _ => Failure::Usage(format!(
            "{what}: cannot reach the cluster: {}",
            chain(&error)
        )),
    }
}

async fn connect() -> Result<Client, Failure> {
    Client::try_default().await.map_err(|e| {
        Failure::Usage(format!(
            "failed to configure the Kubernetes client from your kubeconfig: {}",
            chain(&e)
        ))
    })
}

// ---------------------------------------------------------------------------
// status: the report

/// What `status` shows about a request.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Ready=True for the current generation.
    pub ready: bool,
    /// The Verified condition; absent when the request was never probed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// `ready` and `verified` is not false: the exit code is 0.
    pub ok: bool,
    /// Why `ok` is false, one sentence each.
    pub problems: Vec<String>,
    /// The request's spec as stored (references only; it holds no secret values).
    pub spec: CertificateRequestSpec,
    pub conditions: Vec<ConditionSummary>,
    pub certificate: CertificateSummary,
    pub secret: SecretSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeStatus>,
    /// Recent Events about the request, newest last.
    pub events: Vec<EventSummary>,
    /// Things worth knowing that do not change the exit code.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl StatusReport {
    pub fn exit_code(&self) -> i32 {
        if self.ok { 0 } else { 1 }
    }
}

/// One status condition.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionSummary {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The current certificate, as the request's status describes it.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSummary {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Timestamp>,
}

/// The issued Secret: never its values.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretSummary {
    pub name: String,
    /// Absent when the Secret could not be read (see `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Names of the data keys present.
    pub keys: Vec<String>,
    /// Whether an ownerReference points at this request (by uid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owned_by_request: Option<bool>,
    /// The Secret's `p12-operator.io/serial` annotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The Secret's `p12-operator.io/revision` annotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One Event about the request.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventSummary {
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
    /// How often it happened (1 unless the recorder folded repeats into a series).
    pub count: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
}

/// What reading the issued Secret gave.
#[derive(Debug, Clone)]
pub enum SecretLookup {
    Found(Box<Secret>),
    Missing,
    /// It could not be read, e.g. not allowed; the message says why.
    Unreadable(String),
}

fn condition_summary(c: &Condition) -> ConditionSummary {
    ConditionSummary {
        type_: c.type_.clone(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_transition_time: c.last_transition_time.0,
        observed_generation: c.observed_generation,
    }
}

fn secret_summary(name: &str, lookup: SecretLookup, uid: Option<&str>) -> SecretSummary {
    let mut summary = SecretSummary {
        name: name.to_owned(),
        ..Default::default()
    };
    match lookup {
        SecretLookup::Missing => summary.exists = Some(false),
        SecretLookup::Unreadable(why) => summary.error = Some(why),
        SecretLookup::Found(secret) => {
            summary.exists = Some(true);
            summary.type_ = secret.type_.clone();
            // Key names only: the values are dropped here, unread.
            let mut keys: Vec<String> = secret
                .data
                .as_ref()
                .map(|d| d.keys().cloned().collect())
                .unwrap_or_default();
            keys.extend(
                secret
                    .string_data
                    .as_ref()
                    .map(|d| d.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default(),
            );
            keys.sort();
            keys.dedup();
            summary.keys = keys;
            summary.owned_by_request = Some(uid.is_some_and(|uid| {
                secret
                    .metadata
                    .owner_references
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|o| o.uid == uid && o.kind == KIND)
            }));
            let annotations = secret.metadata.annotations.unwrap_or_default();
            summary.serial = annotations.get(bundle::annotations::SERIAL).cloned();
            summary.revision = annotations.get(bundle::annotations::REVISION).cloned();
        }
    }
    summary
}

/// When an Event last happened, by the most precise field its writer filled.
fn event_time(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0)
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The request's Events (of this incarnation, when the uid is known), newest
/// last, at most [`MAX_EVENTS`].
pub fn recent_events(events: &[Event], uid: Option<&str>) -> Vec<EventSummary> {
    let mut picked: Vec<(Option<Timestamp>, EventSummary)> = events
        .iter()
        .filter(|e| match (uid, e.involved_object.uid.as_deref()) {
            (Some(want), Some(got)) => want == got,
            _ => true,
        })
        .map(|e| {
            let count = e
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .unwrap_or(1)
                .max(1);
            let source = e
                .reporting_component
                .clone()
                .filter(|s| !s.is_empty())
                .or_else(|| e.source.as_ref().and_then(|s| s.component.clone()))
                .unwrap_or_default();
            let at = event_time(e);
            (
                at,
                EventSummary {
                    type_: e.type_.clone().unwrap_or_default(),
                    reason: e.reason.clone().unwrap_or_default(),
                    message: e.message.clone().unwrap_or_default(),
                    count,
                    last_seen: at,
                    source,
                },
            )
        })
        .collect();
    picked.sort_by_key(|(at, _)| *at);
    let skip = picked.len().saturating_sub(MAX_EVENTS);
    picked.into_iter().skip(skip).map(|(_, e)| e).collect()
}

fn condition<'a>(cr: &'a CertificateRequest, type_: &str) -> Option<&'a Condition> {
    cr.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Ready=True and about the current generation.
pub fn is_ready(cr: &CertificateRequest) -> bool {
    condition(cr, READY).is_some_and(|c| {
        c.status == "True"
            && (c.observed_generation.is_none()
                || cr.metadata.generation.is_none()
                || c.observed_generation == cr.metadata.generation)
    })
}

fn reason_and_message(c: &Condition) -> String {
    match (c.reason.is_empty(), c.message.is_empty()) {
        (true, true) => "no reason given".into(),
        (false, true) => c.reason.clone(),
        (true, false) => c.message.clone(),
        (false, false) => format!("{}: {}", c.reason, c.message),
    }
}

/// Why a request is not fine, one sentence each; empty when it is.
pub fn problems(cr: &CertificateRequest) -> Vec<String> {
    let mut problems = Vec::new();
    match condition(cr, READY) {
        None => problems.push(
            "the operator has not reported on this request yet (no Ready condition); is it running?"
                .to_owned(),
        ),
        Some(c) if c.status != "True" => {
            problems.push(format!("not Ready: {}", reason_and_message(c)))
        }
        Some(c) if !is_ready(cr) => problems.push(format!(
            "Ready describes generation {}, but the spec is at generation {}: the operator has not caught up yet",
            c.observed_generation.unwrap_or_default(),
            cr.metadata.generation.unwrap_or_default()
        )),
        Some(_) => {}
    }
    if let Some(c) = condition(cr, VERIFIED).filter(|c| c.status == "False") {
        problems.push(format!("verification failed: {}", reason_and_message(c)));
    }
    problems
}

/// Builds the report from what the API server returned. Pure.
pub fn status_report(
    cr: &CertificateRequest,
    secret: SecretLookup,
    events: &[Event],
    events_error: Option<String>,
) -> StatusReport {
    let status = cr.status.clone().unwrap_or_default();
    let uid = cr.metadata.uid.as_deref();
    let problems = problems(cr);
    let mut notes = Vec::new();
    let secret = secret_summary(&cr.spec.secret_name, secret, uid);
    if let Some(why) = &secret.error {
        notes.push(format!("the Secret could not be read: {why}"));
    }
    if secret.exists == Some(true) && secret.owned_by_request == Some(false) {
        notes.push(format!(
            "Secret {} is not owned by this request: the operator will not write into it",
            secret.name
        ));
    }
    if let (Some(annotated), Some(current)) = (&secret.serial, &status.serial_number)
        && !annotated.eq_ignore_ascii_case(current)
    {
        notes.push(format!(
            "the Secret holds serial {annotated}, the status names {current}: a change is in progress"
        ));
    }
    if let Some(why) = events_error {
        notes.push(format!("Events could not be read: {why}"));
    }
    let verified = condition(cr, VERIFIED).map(|c| c.status == "True");
    StatusReport {
        namespace: cr.namespace().unwrap_or_default(),
        name: cr.name_any(),
        generation: cr.metadata.generation,
        ready: is_ready(cr),
        verified,
        ok: problems.is_empty(),
        problems,
        spec: cr.spec.clone(),
        conditions: status.conditions.iter().map(condition_summary).collect(),
        certificate: CertificateSummary {
            serial_number: status.serial_number.clone(),
            fingerprint_sha256: status.fingerprint_sha256.clone(),
            revision: status.revision,
            not_before: status.not_before.as_ref().map(|t| t.0),
            not_after: status.not_after.as_ref().map(|t| t.0),
            renewal_time: status.renewal_time.as_ref().map(|t| t.0),
            failed_attempts: status.failed_attempts.filter(|n| *n > 0),
            last_failure_time: status.last_failure_time.as_ref().map(|t| t.0),
        },
        secret,
        probe: status.probe.clone(),
        events: recent_events(events, uid),
        notes,
    }
}

// ---------------------------------------------------------------------------
// status: text

/// `90s`, `5m`, `3h20m`, `89d23h`: a span as people read it.
pub fn compact(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    if s < 120 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{m}m")
    } else if s < 2 * 86_400 {
        let h = s / 3600;
        if m == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{m}m")
        }
    } else if h == 0 {
        format!("{d}d")
    } else {
        format!("{d}d{h}h")
    }
}

/// `5m ago` or `in 89d23h`.
pub fn relative(now: Timestamp, then: Timestamp) -> String {
    let delta = then.as_second() - now.as_second();
    if delta >= 0 {
        format!("in {}", compact(delta))
    } else {
        format!("{} ago", compact(delta))
    }
}

fn age(now: Timestamp, then: Timestamp) -> String {
    compact((now.as_second() - then.as_second()).max(0))
}

fn or_dash(value: Option<&str>) -> &str {
    value.filter(|v| !v.is_empty()).unwrap_or("-")
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

fn when(now: Timestamp, t: Option<Timestamp>) -> String {
    match t {
        Some(t) => format!("{t} ({})", relative(now, t)),
        None => "-".to_owned(),
    }
}

/// Columns padded to their widest cell, two spaces apart, indented by two; the
/// last column is not padded.
fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut text = String::from(" ");
        for (i, cell) in cells.iter().enumerate() {
            text.push(' ');
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 1));
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn usage_name(u: &crate::api::Usage) -> String {
    serde_json::to_value(u)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{u:?}"))
}

/// The report for people. `now` makes the relative times.
pub fn render_status_text(report: &StatusReport, now: Timestamp) -> String {
    let mut out = String::new();
    let spec = &report.spec;
    let _ = writeln!(
        out,
        "CertificateRequest:  {}/{}",
        report.namespace, report.name
    );
    let ready = if report.ready {
        "yes".to_owned()
    } else {
        "NO".to_owned()
    };
    let verified = match report.verified {
        None => "not probed",
        Some(true) => "yes",
        Some(false) => "NO",
    };
    let _ = writeln!(out, "Ready:               {ready}");
    let _ = writeln!(out, "Verified:            {verified}");

    let _ = writeln!(out, "Spec:");
    let _ = writeln!(out, "  Secret:            {}", spec.secret_name);
    let _ = writeln!(
        out,
        "  Common name:       {}",
        or_dash(spec.common_name.as_deref())
    );
    let _ = writeln!(out, "  DNS names:         {}", list(&spec.dns_names));
    let _ = writeln!(out, "  IP addresses:      {}", list(&spec.ip_addresses));
    if !spec.uris.is_empty() {
        let _ = writeln!(out, "  URIs:              {}", list(&spec.uris));
    }
    if !spec.email_addresses.is_empty() {
        let _ = writeln!(out, "  Email addresses:   {}", list(&spec.email_addresses));
    }
    let usages: Vec<String> = spec.usages.iter().map(usage_name).collect();
    let _ = writeln!(out, "  Usages:            {}", list(&usages));
    let key = &spec.private_key;
    let algorithm = serde_json::to_value(key.algorithm)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let size = match (key.size, key.algorithm) {
        (Some(s), _) => format!(" {s}"),
        (None, crate::api::KeyAlgorithm::Ecdsa) => " 256".to_owned(),
        (None, crate::api::KeyAlgorithm::Rsa) => " 2048".to_owned(),
        (None, crate::api::KeyAlgorithm::Ed25519) => String::new(),
    };
    let _ = writeln!(
        out,
        "  Key:               {algorithm}{size}, rotation {:?}",
        key.rotation_policy
    );
    let profile = serde_json::to_value(spec.keystore.profile)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let alias = spec.keystore.alias.as_deref().unwrap_or(&report.name);
    let password = match &spec.keystore.password_secret_ref {
        Some(r) => format!("from Secret {} key {}", r.name, r.key),
        None => "generated (key keystore-password)".to_owned(),
    };
    let _ = writeln!(out, "  Keystore:          {profile}, alias {alias}");
    let _ = writeln!(out, "  Password:          {password}");
    let renew_before = spec
        .renew_before
        .clone()
        .unwrap_or_else(|| "a third of the lifetime".to_owned());
    let _ = writeln!(
        out,
        "  Duration:          {}, renew before {renew_before}",
        spec.duration
    );
    if let Some(probe) = &spec.probe {
        let _ = writeln!(
            out,
            "  Probe:             Service {} port {}, every {}",
            probe.service.name, probe.service.port, probe.interval
        );
    }

    let _ = writeln!(out, "Conditions:");
    if report.conditions.is_empty() {
        let _ = writeln!(out, "  (none yet)");
    } else {
        let rows: Vec<Vec<String>> = report
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    or_dash(Some(&c.reason)).to_owned(),
                    age(now, c.last_transition_time),
                    c.message.clone(),
                ]
            })
            .collect();
        table(
            &mut out,
            &["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"],
            &rows,
        );
    }

    let cert = &report.certificate;
    let _ = writeln!(out, "Certificate:");
    let _ = writeln!(
        out,
        "  Serial:            {}",
        or_dash(cert.serial_number.as_deref())
    );
    let _ = writeln!(
        out,
        "  SHA-256:           {}",
        or_dash(cert.fingerprint_sha256.as_deref())
    );
    let _ = writeln!(
        out,
        "  Revision:          {}",
        cert.revision
            .map_or_else(|| "-".to_owned(), |r| r.to_string())
    );
    let _ = writeln!(out, "  Not before:        {}", when(now, cert.not_before));
    let _ = writeln!(out, "  Not after:         {}", when(now, cert.not_after));
    let _ = writeln!(out, "  Renewal time:      {}", when(now, cert.renewal_time));
    if let Some(n) = cert.failed_attempts {
        let _ = writeln!(
            out,
            "  Failed attempts:   {n} (last {})",
            when(now, cert.last_failure_time)
        );
    }

    let secret = &report.secret;
    let _ = writeln!(out, "Secret {}:", secret.name);
    match secret.exists {
        None => {
            let _ = writeln!(
                out,
                "  Exists:            unknown ({})",
                or_dash(secret.error.as_deref())
            );
        }
        Some(false) => {
            let _ = writeln!(out, "  Exists:            NO");
        }
        Some(true) => {
            let _ = writeln!(out, "  Exists:            yes");
            let _ = writeln!(
                out,
                "  Type:              {}",
                or_dash(secret.type_.as_deref())
            );
            let _ = writeln!(out, "  Keys:              {}", list(&secret.keys));
            let owned = match secret.owned_by_request {
                Some(true) => "yes",
                _ => "NO",
            };
            let _ = writeln!(out, "  Owned by request:  {owned}");
        }
    }

    if report.probe.is_some() || spec.probe.is_some() {
        let _ = writeln!(out, "Probe:");
        match &report.probe {
            None => {
                let _ = writeln!(out, "  (not probed yet)");
            }
            Some(probe) => {
                let _ = writeln!(
                    out,
                    "  Last probe:        {}",
                    when(now, probe.last_probe_time.as_ref().map(|t| t.0))
                );
                if probe.endpoints.is_empty() {
                    let _ = writeln!(out, "  (no endpoints)");
                } else {
                    let rows: Vec<Vec<String>> = probe
                        .endpoints
                        .iter()
                        .map(|e| {
                            vec![
                                e.address.clone(),
                                if e.verified { "yes" } else { "NO" }.to_owned(),
                                or_dash(Some(&e.reason)).to_owned(),
                                if e.matches_issued { "yes" } else { "NO" }.to_owned(),
                                or_dash(e.tls_version.as_deref()).to_owned(),
                                e.handshake_millis
                                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms}ms")),
                                e.message.clone(),
                            ]
                        })
                        .collect();
                    table(
                        &mut out,
                        &[
                            "ADDRESS",
                            "VERIFIED",
                            "REASON",
                            "MATCHES-ISSUED",
                            "TLS",
                            "HANDSHAKE",
                            "MESSAGE",
                        ],
                        &rows,
                    );
                }
            }
        }
    }

    let _ = writeln!(out, "Events (newest last):");
    if report.events.is_empty() {
        let _ = writeln!(out, "  (none)");
    } else {
        let rows: Vec<Vec<String>> = report
            .events
            .iter()
            .map(|e| {
                let seen = e.last_seen.map_or_else(|| "-".to_owned(), |t| age(now, t));
                let seen = if e.count > 1 {
                    format!("{seen} (x{})", e.count)
                } else {
                    seen
                };
                vec![seen, e.type_.clone(), e.reason.clone(), e.message.clone()]
            })
            .collect();
        table(&mut out, &["AGE", "TYPE", "REASON", "MESSAGE"], &rows);
    }
    for note in &report.notes {
        let _ = writeln!(out, "Note: {note}");
    }
    if report.problems.is_empty() {
        let _ = writeln!(out, "Result:              ok");
    } else {
        for problem in &report.problems {
            let _ = writeln!(out, "Result:              {problem}");
        }
    }
    out
}

// ---------------------------------------------------------------------------
// status: I/O

async fn read_status(name: &str, namespace: Option<&str>) -> Result<StatusReport, Failure> {
    let client = connect().await?;
    let namespace = namespace.map_or_else(|| client.default_namespace().to_owned(), str::to_owned);
    let what = format!("CertificateRequest {namespace}/{name}");
    let requests: Api<CertificateRequest> = Api::namespaced(client.clone(), &namespace);
    let cr = requests.get(name).await.map_err(|e| classify(e, &what))?;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = match secrets.get_opt(&cr.spec.secret_name).await {
        Ok(Some(secret)) => SecretLookup::Found(Box::new(secret)),
        Ok(None) => SecretLookup::Missing,
        Err(kube::Error::Api(s)) => SecretLookup::Unreadable(s.message.clone()),
        Err(e) => {
            return Err(classify(
                e,
                &format!("Secret {namespace}/{}", cr.spec.secret_name),
            ));
        }
    };

    let events_api: Api<Event> = Api::namespaced(client, &namespace);
    let fields = format!("involvedObject.kind={KIND},involvedObject.name={name}");
    let (events, events_error) = match events_api
        .list(&ListParams::default().fields(&fields))
        .await
    {
        Ok(list) => (list.items, None),
        Err(kube::Error::Api(s)) => (Vec::new(), Some(s.message.clone())),
        Err(e) => return Err(classify(e, &format!("Events of {what}"))),
    };
    Ok(status_report(&cr, secret, &events, events_error))
}

/// Runs `p12-operator status`; returns the exit code (0 fine, 1 not fine or
/// not found, 2 usage or cluster unreachable).
pub async fn status(args: StatusArgs) -> anyhow::Result<i32> {
    match read_status(&args.name, args.namespace.as_deref()).await {
        Ok(report) => {
            match args.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                OutputFormat::Text => print!("{}", render_status_text(&report, Timestamp::now())),
            }
            Ok(report.exit_code())
        }
        Err(failure) => Ok(failure.report()),
    }
}

// ---------------------------------------------------------------------------
// renew and probe-now

/// What `renew` and `probe-now` ask of the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Renew,
    Probe,
}

impl Action {
    fn annotation(self) -> &'static str {
        match self {
            Action::Renew => bundle::annotations::RENEW_REQUESTED,
            Action::Probe => PROBE_REQUESTED,
        }
    }
}

/// The merge patch that sets `annotation` to `value`.
pub fn annotation_patch(annotation: &str, value: &str) -> serde_json::Value {
    serde_json::json!({ "metadata": { "annotations": { annotation: value } } })
}

/// The requests a selection names: found ones, and names that were not found.
async fn select(
    client: &Client,
    selection: &Selection,
) -> Result<(Vec<CertificateRequest>, Vec<String>), Failure> {
    let namespace = selection
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    if !selection.names.is_empty() {
        let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &namespace);
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for name in &selection.names {
            let what = format!("CertificateRequest {namespace}/{name}");
            match api.get(name).await {
                Ok(cr) => found.push(cr),
                Err(e) => match classify(e, &what) {
                    Failure::Request(message) => missing.push(message),
                    usage => return Err(usage),
                },
            }
        }
        return Ok((found, missing));
    }
    let api: Api<CertificateRequest> = if selection.all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &namespace)
    };
    let mut params = ListParams::default();
    if let Some(selector) = &selection.selector {
        params = params.labels(selector);
    }
    let where_ = if selection.all_namespaces {
        "in any namespace".to_owned()
    } else {
        format!("in namespace {namespace}")
    };
    let list = api.list(&params).await.map_err(|e| {
        match classify(e, &format!("listing CertificateRequests {where_}")) {
            // A bad selector is the user's to fix.
            Failure::Request(m) => Failure::Usage(m),
            usage => usage,
        }
    })?;
    let mut items = list.items;
    items.sort_by_key(|cr| (cr.namespace(), cr.name_any()));
    if items.is_empty() {
        let matching = selection
            .selector
            .as_deref()
            .map(|s| format!(" match -l {s}"))
            .unwrap_or_default();
        return Ok((
            Vec::new(),
            vec![format!("no CertificateRequests{matching} {where_}")],
        ));
    }
    Ok((items, Vec::new()))
}

fn qualified(cr: &CertificateRequest) -> String {
    format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any())
}

fn short(serial: Option<&str>) -> String {
    or_dash(serial).to_owned()
}

/// One request's outcome: the line to print and whether it is a failure.
struct Outcome {
    line: String,
    failed: bool,
}

impl Outcome {
    fn ok(line: String) -> Self {
        Outcome {
            line,
            failed: false,
        }
    }
    fn failed(line: String) -> Self {
        Outcome { line, failed: true }
    }
}

fn ready_reason(cr: &CertificateRequest) -> String {
    match condition(cr, READY) {
        None => "no Ready condition yet".to_owned(),
        Some(c) => format!("Ready={} {}", c.status, reason_and_message(c)),
    }
}

/// Polls until the operator has answered `token` on `cr`, or `deadline`.
async fn wait_for(
    api: Api<CertificateRequest>,
    action: Action,
    before: CertificateRequest,
    token: String,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Outcome {
    let name = before.name_any();
    let who = qualified(&before);
    let old_revision = before.status.as_ref().and_then(|s| s.revision).unwrap_or(0);
    let old_serial = before.status.as_ref().and_then(|s| s.serial_number.clone());
    let mut last = before;
    loop {
        match api.get(&name).await {
            Ok(cr) => {
                let status = cr.status.clone().unwrap_or_default();
                match action {
                    Action::Renew => {
                        if status.revision.unwrap_or(0) > old_revision && is_ready(&cr) {
                            return Outcome::ok(format!(
                                "{who}: renewed: revision {old_revision} -> {}, serial {} -> {}",
                                status.revision.unwrap_or(0),
                                short(old_serial.as_deref()),
                                short(status.serial_number.as_deref())
                            ));
                        }
                    }
                    Action::Probe => {
                        let probe = status.probe.clone().unwrap_or_default();
                        if probe.requested.as_deref() == Some(token.as_str())
                            && probe.last_probe_time.is_some()
                        {
                            let endpoints = probe.endpoints.len();
                            let verified = probe.endpoints.iter().filter(|e| e.verified).count();
                            return match condition(&cr, VERIFIED) {
                                Some(c) if c.status == "True" => Outcome::ok(format!(
                                    "{who}: verified: {verified}/{endpoints} endpoints serve the issued certificate"
                                )),
                                Some(c) => Outcome::failed(format!(
                                    "{who}: probed, not verified ({verified}/{endpoints} endpoints): {}",
                                    reason_and_message(c)
                                )),
                                None => Outcome::failed(format!(
                                    "{who}: probed, but no Verified condition was set"
                                )),
                            };
                        }
                    }
                }
                last = cr;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Outcome::failed(format!("{who}: it was deleted while waiting"));
            }
            Err(_) => {} // transient; try again until the deadline
        }
        if tokio::time::Instant::now() >= deadline {
            let what = match action {
                Action::Renew => "re-issued",
                Action::Probe => "probed",
            };
            return Outcome::failed(format!(
                "{who}: not {what} within {} ({})",
                crate::duration::format(timeout),
                ready_reason(&last)
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn act(
    action: Action,
    selection: &Selection,
    wait: bool,
    timeout: Duration,
) -> Result<Vec<Outcome>, Failure> {
    let client = connect().await?;
    let (requests, missing) = select(&client, selection).await?;
    let mut outcomes: Vec<Outcome> = missing.into_iter().map(Outcome::failed).collect();
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut waits = Vec::new();
    for cr in requests {
        let who = qualified(&cr);
        if action == Action::Probe && cr.spec.probe.is_none() {
            outcomes.push(Outcome::failed(format!(
                "{who}: has no spec.probe, so there is nothing to probe"
            )));
            continue;
        }
        let api: Api<CertificateRequest> =
            Api::namespaced(client.clone(), &cr.namespace().unwrap_or_default());
        // Nanosecond precision: two requests in a row still differ.
        let token = Timestamp::now().to_string();
        let patched = match api
            .patch(
                &cr.name_any(),
                &params,
                &Patch::Merge(annotation_patch(action.annotation(), &token)),
            )
            .await
        {
            Ok(patched) => patched,
            Err(e) => match classify(e, &who) {
                Failure::Request(m) => {
                    outcomes.push(Outcome::failed(m));
                    continue;
                }
                usage => return Err(usage),
            },
        };
        if wait {
            waits.push(wait_for(api, action, patched, token, deadline, timeout));
            continue;
        }
        let status = patched.status.clone().unwrap_or_default();
        outcomes.push(Outcome::ok(match action {
            Action::Renew => format!(
                "{who}: renewal requested (current revision {}, serial {})",
                status
                    .revision
                    .map_or_else(|| "-".to_owned(), |r| r.to_string()),
                short(status.serial_number.as_deref())
            ),
            Action::Probe => format!("{who}: probe requested"),
        }));
    }
    outcomes.extend(futures::future::join_all(waits).await);
    Ok(outcomes)
}

async fn run_action(
    action: Action,
    selection: &Selection,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<i32> {
    match act(action, selection, wait, timeout).await {
        Ok(outcomes) => {
            let mut code = 0;
            for outcome in outcomes {
                if outcome.failed {
                    eprintln!("error: {}", outcome.line);
                    code = 1;
                } else {
                    println!("{}", outcome.line);
                }
            }
            Ok(code)
        }
        Err(failure) => Ok(failure.report()),
    }
}

/// Runs `p12-operator renew`; returns the exit code.
pub async fn renew(args: RenewArgs) -> anyhow::Result<i32> {
    run_action(Action::Renew, &args.selection, args.wait, args.timeout).await
}

/// Runs `p12-operator probe-now`; returns the exit code.
pub async fn probe_now(args: ProbeNowArgs) -> anyhow::Result<i32> {
    run_action(Action::Probe, &args.selection, args.wait, args.timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::EndpointResult;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{EventSeries, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        MicroTime, ObjectMeta, OwnerReference, Time,
    };
    use std::collections::BTreeMap;

    fn now() -> Timestamp {
        "2026-11-29T12:00:00Z".parse().unwrap()
    }

    fn at(text: &str) -> Time {
        Time(text.parse().unwrap())
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(generation),
            last_transition_time: at("2026-11-29T11:55:00Z"),
        }
    }

    fn request() -> CertificateRequest {
        let spec: CertificateRequestSpec = serde_json::from_value(serde_json::json!({
            "secretName": "web-tls",
            "dnsNames": ["web.shop.svc"],
            "probe": {"service": {"name": "web", "port": 8443}},
        }))
        .unwrap();
        let mut cr = CertificateRequest::new("web", spec);
        cr.metadata.namespace = Some("shop".into());
        cr.metadata.uid = Some("uid-1".into());
        cr.metadata.generation = Some(1);
        cr.status = Some(crate::api::CertificateRequestStatus {
            conditions: vec![
                cond(READY, "True", "Issued", "certificate 0a1b is valid", 1),
                cond("Issued", "True", "Issued", "issued 0a1b", 1),
            ],
            not_before: Some(at("2026-11-29T11:54:00Z")),
            not_after: Some(at("2027-02-27T11:54:00Z")),
            renewal_time: Some(at("2027-01-28T11:54:00Z")),
            serial_number: Some("0a1b".into()),
            fingerprint_sha256: Some("ff00".into()),
            revision: Some(1),
            ..Default::default()
        });
        cr
    }

    fn secret(owner_uid: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("web-tls".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "p12-operator.io/v1alpha1".into(),
                    kind: KIND.into(),
                    name: "web".into(),
                    uid: owner_uid.into(),
                    ..Default::default()
                }]),
                annotations: Some(BTreeMap::from([(
                    bundle::annotations::SERIAL.to_owned(),
                    "0a1b".to_owned(),
                )])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                (
                    bundle::PASSWORD.to_owned(),
                    ByteString(b"hunter2-very-secret".to_vec()),
                ),
                (bundle::KEYSTORE.to_owned(), ByteString(b"binary".to_vec())),
                (
                    bundle::TLS_KEY.to_owned(),
                    ByteString(b"-----BEGIN PRIVATE KEY-----".to_vec()),
                ),
            ])),
            ..Default::default()
        }
    }

    fn event(reason: &str, uid: &str, seconds_ago: i64, series: Option<i32>) -> Event {
        let t = now() - jiff::SignedDuration::from_secs(seconds_ago);
        Event {
            involved_object: ObjectReference {
                kind: Some(KIND.into()),
                name: Some("web".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            type_: Some("Normal".into()),
            reason: Some(reason.into()),
            message: Some(format!("{reason} happened")),
            event_time: Some(MicroTime(t)),
            series: series.map(|count| EventSeries {
                count: Some(count),
                last_observed_time: Some(MicroTime(t)),
            }),
            reporting_component: Some("p12-operator".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_ready_request_is_ok_and_its_secret_is_described_without_values() {
        let cr = request();
        let report = status_report(
            &cr,
            SecretLookup::Found(Box::new(secret("uid-1"))),
            &[],
            None,
        );
        assert!(report.ready && report.ok, "{:?}", report.problems);
        assert_eq!(report.exit_code(), 0);
        assert_eq!(report.verified, None);
        assert_eq!(report.secret.exists, Some(true));
        assert_eq!(report.secret.owned_by_request, Some(true));
        assert_eq!(
            report.secret.keys,
            ["keystore-password", "keystore.p12", "tls.key"]
        );
        let text = render_status_text(&report, now());
        let json = serde_json::to_string(&report).unwrap();
        for output in [&text, &json] {
            assert!(!output.contains("hunter2"), "{output}");
            assert!(!output.contains("PRIVATE KEY"), "{output}");
        }
        assert!(text.contains("Serial:            0a1b"), "{text}");
        assert!(
            text.contains("Not after:         2027-02-27T11:54:00Z (in 89d23h)"),
            "{text}"
        );
        assert!(text.contains("Owned by request:  yes"), "{text}");
        assert!(text.contains("Result:              ok"), "{text}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["certificate"]["serialNumber"], "0a1b");
        assert_eq!(value["spec"]["secretName"], "web-tls");
        assert_eq!(value["conditions"][0]["type"], "Ready");
    }

    #[test]
    fn not_ready_stale_and_failed_verification_are_problems() {
        let mut cr = request();
        cr.status.as_mut().unwrap().conditions[0] = cond(
            READY,
            "False",
            "PasswordSecretNotFound",
            "keystore.passwordSecretRef names Secret pw",
            1,
        );
        let report = status_report(&cr, SecretLookup::Missing, &[], None);
        assert_eq!(
            report.problems,
            ["not Ready: PasswordSecretNotFound: keystore.passwordSecretRef names Secret pw"]
        );
        assert_eq!(report.exit_code(), 1);
        assert!(render_status_text(&report, now()).contains("Exists:            NO"));

        let mut cr = request();
        cr.metadata.generation = Some(2);
        assert!(!is_ready(&cr));
        assert!(problems(&cr)[0].starts_with("Ready describes generation 1"));

        let mut cr = request();
        cr.status.as_mut().unwrap().conditions.push(cond(
            VERIFIED,
            "False",
            "StaleCertificate",
            "1 of 2 endpoints serve an old certificate",
            1,
        ));
        let report = status_report(
            &cr,
            SecretLookup::Found(Box::new(secret("uid-1"))),
            &[],
            None,
        );
        assert!(report.ready);
        assert_eq!(report.verified, Some(false));
        assert_eq!(
            report.problems,
            ["verification failed: StaleCertificate: 1 of 2 endpoints serve an old certificate"]
        );
    }

    #[test]
    fn a_secret_owned_by_someone_else_is_noted() {
        let report = status_report(
            &request(),
            SecretLookup::Found(Box::new(secret("other"))),
            &[],
            None,
        );
        assert_eq!(report.secret.owned_by_request, Some(false));
        assert!(report.notes[0].contains("not owned by this request"));
        let report = status_report(
            &request(),
            SecretLookup::Unreadable("secrets \"web-tls\" is forbidden".into()),
            &[],
            None,
        );
        assert_eq!(report.secret.exists, None);
        assert!(
            report.ok,
            "an unreadable Secret does not change the verdict"
        );
    }

    #[test]
    fn events_are_this_incarnations_newest_last_and_at_most_ten() {
        let mut events: Vec<Event> = (0..14)
            .map(|i| event(&format!("R{i}"), "uid-1", 1000 - i * 10, None))
            .collect();
        events.push(event("Old", "uid-0", 1, None));
        events.push(event("Repeated", "uid-1", 0, Some(3)));
        events.reverse();
        let picked = recent_events(&events, Some("uid-1"));
        let reasons: Vec<&str> = picked.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "R5", "R6", "R7", "R8", "R9", "R10", "R11", "R12", "R13", "Repeated"
            ]
        );
        assert_eq!(picked.last().unwrap().count, 3);
        let mut report = status_report(&request(), SecretLookup::Missing, &[], None);
        report.events = picked;
        let text = render_status_text(&report, now());
        assert!(text.contains("0s (x3)  Normal  Repeated"), "{text}");
    }

    #[test]
    fn probe_results_are_tabulated() {
        let mut cr = request();
        cr.status.as_mut().unwrap().probe = Some(ProbeStatus {
            last_probe_time: Some(at("2026-11-29T11:58:00Z")),
            endpoints: vec![EndpointResult {
                address: "10.0.0.7:8443".into(),
                verified: true,
                matches_issued: true,
                reason: "Verified".into(),
                tls_version: Some("TLSv1_3".into()),
                handshake_millis: Some(12),
                ..Default::default()
            }],
            ..Default::default()
        });
        let text = render_status_text(&status_report(&cr, SecretLookup::Missing, &[], None), now());
        assert!(
            text.contains("Last probe:        2026-11-29T11:58:00Z (2m ago)"),
            "{text}"
        );
        assert!(
            text.contains("10.0.0.7:8443  yes       Verified  yes             TLSv1_3  12ms"),
            "{text}"
        );
    }

    #[test]
    fn spans_read_like_kubectl_ages() {
        assert_eq!(compact(5), "5s");
        assert_eq!(compact(119), "119s");
        assert_eq!(compact(600), "10m");
        assert_eq!(compact(3600 * 5 + 60 * 3), "5h3m");
        assert_eq!(compact(86_400 * 3), "3d");
        assert_eq!(compact(86_400 * 90 - 3600), "89d23h");
        assert_eq!(
            relative(now(), now() - jiff::SignedDuration::from_secs(300)),
            "5m ago"
        );
    }

    #[test]
    fn the_patch_sets_only_the_annotation() {
        assert_eq!(
            annotation_patch(bundle::annotations::RENEW_REQUESTED, "2026-11-29T12:00:00Z"),
            serde_json::json!({"metadata": {"annotations": {"p12-operator.io/renew-requested-at": "2026-11-29T12:00:00Z"}}})
        );
    }

    #[test]
    fn api_errors_sort_into_exit_codes() {
        let api = |code: u16, name: &str| {
            kube::Error::Api(Box::new(
                serde_json::from_value(serde_json::json!({
                    "code": code, "message": "m", "details": {"name": name}
                }))
                .unwrap(),
            ))
        };
        assert_eq!(classify(api(404, "web"), "x").exit_code(), 1);
        assert_eq!(
            classify(api(404, "web"), "CertificateRequest shop/web"),
            Failure::Request("CertificateRequest shop/web: it does not exist".into())
        );
        assert_eq!(classify(api(404, ""), "x").exit_code(), 2);
        assert_eq!(classify(api(403, "web"), "x").exit_code(), 2);
        assert_eq!(classify(api(422, "web"), "x").exit_code(), 1);
    }
}
