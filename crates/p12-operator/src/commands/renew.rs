//! `renew` and `probe-now`: mark the selected requests with an annotation, then
//! (with --wait) poll until the operator has answered. Uses the API, `status`
//! for readiness and `super` for failures.

use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::render::or_dash;
use super::status::{condition, is_ready, reason_and_message};
use super::{FIELD_MANAGER, Failure, classify, connect};
use crate::api::CertificateRequest;
use crate::bundle;
use crate::cli::{ProbeNowArgs, RenewArgs, Selection};
use crate::reconciler::probe::PROBE_REQUESTED;
use crate::reconciler::status::{READY, VERIFIED};

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
