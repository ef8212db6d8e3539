//! What the API server or the cluster refuses: a 422, a failed write, a
//! missing password Secret, no CA, no lease, a CA that loads late.

use super::*;

#[tokio::test]
async fn a_422_from_the_api_server_becomes_invalid_request_without_retry() {
    let h = harness();
    let cr = request("");
    h.api
        .expect(
            "POST",
            &secrets_path(),
            reply(
                422,
                "Invalid",
                "Secret \"web-tls\" is invalid: metadata.labels: Invalid value",
            ),
        )
        .expect("PATCH", &status_path(), status_echo("6"));
    let action = h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let (ready, reason, message) = condition(&h.api.calls()[1], "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "InvalidRequest")
    );
    assert!(
        message.contains("metadata.labels: Invalid value"),
        "{message}"
    );
    assert_eq!(action, Action::await_change());
    assert!(
        h.api
            .event_reasons()
            .await
            .contains(&"InvalidRequest".to_string())
    );
}

#[tokio::test]
async fn a_failed_write_of_a_missing_secret_says_so_in_status() {
    let h = harness();
    let (_, cr) = h.issued().await;
    h.list_secrets(vec![]);
    h.api
        .expect(
            "POST",
            &secrets_path(),
            reply(500, "InternalError", "etcdserver: request timed out"),
        )
        .expect("PATCH", &status_path(), status_echo("30"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let (ready, reason, message) = condition(&h.api.calls()[1], "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "SecretWriteFailed")
    );
    assert!(
        message.contains("etcdserver: request timed out"),
        "{message}"
    );
}

/// The password Secret `pw` with `annotations`, holding `password`.
fn password_secret(annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "pw", "namespace": NS, "resourceVersion": "3",
                        "annotations": annotations},
           "data": {"password": "c2VjcmV0LXBhc3N3b3Jk"}})
}

/// One pass over a request naming Secret `pw`, which the API answers with
/// `answer`: the reason and message it is refused with.
async fn refused_for_password(answer: Answer) -> (String, String, Harness) {
    let h = harness();
    let cr = request("keystore: {passwordSecretRef: {name: pw, key: password}}\n");
    h.api.expect("GET", &secret_path("pw"), answer).expect(
        "PATCH",
        &status_path(),
        status_echo("6"),
    );
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let (ready, reason, message) = condition(&h.api.calls()[1], "Ready");
    assert_eq!(ready, "False");
    (reason, message, h)
}

const NOT_ALLOWED: &str = "keystore.passwordSecretRef names Secret pw: it does not exist or does not allow this request to use it; create it with the annotation p12-operator.io/password-for: web (or \"*\")";

#[tokio::test]
async fn a_missing_password_secret_is_reported_and_nothing_is_issued() {
    let (reason, message, h) =
        refused_for_password(reply(404, "NotFound", "secrets \"pw\" not found")).await;
    assert_eq!(reason, "PasswordSecretNotAllowed");
    assert_eq!(message, NOT_ALLOWED);
    assert_eq!(keys_generated(&h.ctx), 0);
    assert_eq!(
        h.api.event_reasons().await,
        vec!["PasswordSecretNotAllowed".to_string()]
    );
}

#[tokio::test]
async fn a_password_secret_without_consent_looks_exactly_like_a_missing_one() {
    for annotations in [
        json!({}),
        json!({"p12-operator.io/password-for": ""}),
        json!({"p12-operator.io/password-for": "api, web-2"}),
        json!({"p12-operator.io/password-for-web": "*"}),
    ] {
        let (reason, message, h) =
            refused_for_password(object(password_secret(annotations.clone()))).await;
        assert_eq!(reason, "PasswordSecretNotAllowed", "{annotations}");
        assert_eq!(message, NOT_ALLOWED, "{annotations}");
        assert_eq!(keys_generated(&h.ctx), 0, "{annotations}");
    }
}

#[tokio::test]
async fn after_consent_the_password_secret_s_problems_are_described() {
    // The owner consented, for this request among others: details may be given.
    let mut secret = password_secret(json!({"p12-operator.io/password-for": " api ,web"}));
    secret["data"] = json!({"other": "eA=="});
    let (reason, message, h) = refused_for_password(object(secret)).await;
    assert_eq!(reason, "PasswordKeyNotFound");
    assert!(
        message.contains("Secret pw has no key \"password\""),
        "{message}"
    );
    assert_eq!(keys_generated(&h.ctx), 0);
}

#[tokio::test]
async fn a_password_secret_consenting_to_any_request_is_used() {
    let h = harness();
    h.list_secrets(vec![]);
    let cr = request("keystore: {passwordSecretRef: {name: pw, key: password}}\n");
    h.api
        .expect(
            "GET",
            &secret_path("pw"),
            object(password_secret(
                json!({"p12-operator.io/password-for": "*"}),
            )),
        )
        .expect("POST", &secrets_path(), echo("7"))
        .expect("PATCH", &status_path(), status_echo("8"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let (ready, _, _) = condition(&h.api.calls()[2], "Ready");
    assert_eq!(ready, "True");
    assert_eq!(keys_generated(&h.ctx), 1);
    assert!(
        h.api.calls()[1].body["data"]
            .get("keystore-password")
            .is_none(),
        "a referenced password is not copied"
    );
}

#[tokio::test]
async fn without_a_ca_requests_report_it_and_touch_no_secret() {
    let h = harness();
    h.ctx.set_ca(Err(CaProblem {
        reason: "CANotFound",
        message: "Secret p12-operator/p12-operator-ca does not exist".into(),
    }));
    let cr = request("");
    h.api.expect("PATCH", &status_path(), status_echo("6"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let (_, reason, _) = condition(&h.api.calls()[0], "Ready");
    assert_eq!(reason, "CANotFound");
}

#[tokio::test]
async fn a_replica_without_the_lease_writes_nothing() {
    let h = harness_with(crate::leader::Leadership::elected());
    h.list_secrets(vec![]);
    let cr = request("");
    let err = h.pass(&cr).await.unwrap_err();
    assert!(matches!(err, Error::NotLeader(_)), "{err}");
    h.api.assert_done();
    assert!(h.api.calls().is_empty(), "{:?}", h.api.calls());
}

#[tokio::test(start_paused = true)]
async fn a_ca_that_cannot_be_read_at_start_up_is_retried_until_it_loads() {
    let api = MockApi::default();
    let h = harness_with(crate::leader::Leadership::always());
    h.ctx.set_ca(Err(CaProblem {
        reason: "CAUnavailable",
        message: "the CA has not been loaded yet".into(),
    }));
    let ca = test_ca();
    let ca_secret = json!({"apiVersion": "v1", "kind": "Secret",
    "metadata": {"name": "p12-operator-ca", "namespace": "p12-operator", "resourceVersion": "7"},
    "data": {
        "tls.crt": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ca.cert_pem()),
        "tls.key": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ca.key_pem().expose()),
    }});
    let path = "/api/v1/namespaces/p12-operator/secrets/p12-operator-ca";
    api.expect(
        "GET",
        path,
        reply(503, "ServiceUnavailable", "the server is starting"),
    )
    .expect(
        "GET",
        path,
        reply(503, "ServiceUnavailable", "the server is starting"),
    )
    .expect("GET", path, object(ca_secret))
    // No rotation under way: neither a next nor a previous CA.
    .expect(
        "GET",
        &format!("{path}-next"),
        reply(
            404,
            "NotFound",
            "secrets \"p12-operator-ca-next\" not found",
        ),
    )
    .expect(
        "GET",
        &format!("{path}-previous"),
        reply(
            404,
            "NotFound",
            "secrets \"p12-operator-ca-previous\" not found",
        ),
    );
    let (_seen_tx, seen_rx) = tokio::sync::watch::channel(None);
    let (all_tx, mut all_rx) = tokio::sync::mpsc::channel(1);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(ca::keep_loaded(
        h.ctx.clone(),
        Api::namespaced(api.client(), "p12-operator"),
        seen_rx,
        all_tx,
        first_tx,
    ));
    first_rx.await.unwrap();
    assert_eq!(h.ctx.ca().unwrap_err().reason, "CAUnavailable");
    assert!(
        h.ctx.health.ca_problem().is_some(),
        "ready while no CA is usable"
    );
    // Retried with back-off, without any watch event: the Secret existed all along.
    tokio::time::timeout(Duration::from_secs(120), all_rx.recv())
        .await
        .expect("the CA loaded and every request was revisited");
    assert_eq!(
        h.ctx.ca().unwrap().current().fingerprint(),
        ca.fingerprint()
    );
    assert!(h.ctx.health.ca_problem().is_none());
    api.assert_done();
    task.abort();
}

/// The operator's CA Secret, and the list of Secrets it issued (metadata only).
const CA_PATH: &str = "/api/v1/namespaces/p12-operator/secrets/p12-operator-ca";

fn issued_list(names: &[&str]) -> Answer {
    let items: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                        "metadata": {"name": n, "namespace": NS}})
        })
        .collect();
    object(
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                  "metadata": {}, "items": items}),
    )
}

#[tokio::test]
async fn a_ca_secret_deleted_after_issuance_is_ca_missing_and_no_new_root_is_made() {
    let api = MockApi::default();
    let h = harness_with(crate::leader::Leadership::always());
    api.expect(
        "GET",
        CA_PATH,
        reply(404, "NotFound", "secrets \"p12-operator-ca\" not found"),
    )
    .expect("GET", "/api/v1/secrets", issued_list(&["web-tls"]));
    let problem = ca::ensure(
        &Api::namespaced(api.client(), "p12-operator"),
        &h.ctx.ca_settings,
    )
    .await
    .expect_err("no CA");
    api.assert_done();
    assert_eq!(problem.reason, "CAMissing");
    for part in [
        "Secret p12-operator/p12-operator-ca is missing",
        "Secret shop/web-tls holds one",
        "does not create a new root",
        "p12-operator ca new-root -n p12-operator",
    ] {
        assert!(
            problem.message.contains(part),
            "{part:?} in {}",
            problem.message
        );
    }
    // A request then reports it, and nothing is written but its status.
    h.list_secrets(vec![]);
    h.ctx.set_ca(Err(problem));
    h.api.expect("PATCH", &status_path(), status_echo("6"));
    h.pass(&request("")).await.unwrap();
    h.api.assert_done();
    let (ready, reason, _) = condition(&h.api.calls()[0], "Ready");
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "CAMissing"));
    assert!(
        h.api
            .event_reasons()
            .await
            .contains(&"CAMissing".to_string())
    );
}

#[tokio::test]
async fn on_a_first_start_with_nothing_issued_the_root_is_created() {
    let api = MockApi::default();
    let h = harness_with(crate::leader::Leadership::always());
    api.expect(
        "GET",
        CA_PATH,
        reply(404, "NotFound", "secrets \"p12-operator-ca\" not found"),
    )
    .expect("GET", "/api/v1/secrets", issued_list(&[]))
    .expect("POST", "/api/v1/namespaces/p12-operator/secrets", echo("3"));
    let (ca, secret) = ca::ensure(
        &Api::namespaced(api.client(), "p12-operator"),
        &h.ctx.ca_settings,
    )
    .await
    .expect("a new root");
    api.assert_done();
    assert_eq!(secret.metadata.resource_version.as_deref(), Some("3"));
    let created = &api.calls()[2].body;
    assert_eq!(
        created["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "p12-operator"
    );
    assert!(ca.chain().len() == 1, "a self-signed root");
}
