//! Unit tests of the pure parts of the commands: the status report, its text,
//! Event selection, spans, the annotation patch and the exit codes of API errors.

use super::*;
use crate::api::{CertificateRequest, CertificateRequestSpec, EndpointResult, ProbeStatus};
use crate::bundle;
use crate::reconciler::status::{READY, VERIFIED};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, EventSeries, ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, MicroTime, ObjectMeta, OwnerReference, Time,
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
        "PasswordSecretNotAllowed",
        "keystore.passwordSecretRef names Secret pw",
        1,
    );
    let report = status_report(&cr, SecretLookup::Missing, &[], None);
    assert_eq!(
        report.problems,
        ["not Ready: PasswordSecretNotAllowed: keystore.passwordSecretRef names Secret pw"]
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
            pod: Some("web-7d9f-x2x".into()),
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
        text.contains(
            "10.0.0.7:8443  web-7d9f-x2x  yes       Verified  yes             TLSv1_3  12ms"
        ),
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
