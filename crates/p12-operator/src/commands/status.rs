//! `status`, the query: reads a request, its Secret (type, key names and owner,
//! never the values) and its Events, and builds the [`StatusReport`] from them
//! (pure: [`status_report`]). Uses the API types, `super` for failures and
//! `render` for the text.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::render::render_status_text;
use super::{Failure, KIND, MAX_EVENTS, classify, connect};
use crate::api::{CertificateRequest, CertificateRequestSpec, ProbeStatus, RolloutStatus};
use crate::bundle;
use crate::cli::{OutputFormat, StatusArgs};
use crate::reconciler::status::{READY, VERIFIED};

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
    /// The last rotation with `spec.rollout`: issued, rolled out, verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
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

pub(super) fn condition<'a>(cr: &'a CertificateRequest, type_: &str) -> Option<&'a Condition> {
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

pub(super) fn reason_and_message(c: &Condition) -> String {
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
        rollout: status.rollout.clone(),
        events: recent_events(events, uid),
        notes,
    }
}

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
