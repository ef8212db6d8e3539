//! Whose Secret it is: a foreign Secret, and 409s on creating or replacing
//! our own.

use super::*;

#[tokio::test]
async fn a_foreign_secret_is_refused_and_retries_generate_no_key() {
    let h = harness();
    let cr = request("");
    let foreign = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "web-tls", "namespace": NS, "resourceVersion": "3"},
        "data": {"tls.crt": "Zm9yZWlnbg=="}});
    h.api
        .expect(
            "POST",
            &secrets_path(),
            reply(409, "AlreadyExists", "secrets \"web-tls\" already exists"),
        )
        .expect("GET", &secret_path("web-tls"), object(foreign.clone()))
        .expect("PATCH", &status_path(), status_echo("6"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    let (ready, reason, _) = condition(&h.api.calls()[2], "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "SecretConflict")
    );
    let keys_after_first = keys_generated(&h.ctx);

    // The retry looks before it issues: no key, no POST.
    h.api.0.lock().unwrap().calls.clear();
    h.api
        .expect("GET", &secret_path("web-tls"), object(foreign));
    let action = h.pass(&cr).await.unwrap();
    h.api.assert_done();
    assert_eq!(keys_generated(&h.ctx), keys_after_first);
    assert_ne!(
        action,
        Action::await_change(),
        "a conflict is retried with back-off"
    );
}

#[tokio::test]
async fn a_409_on_creating_our_own_secret_is_resolved_in_the_same_pass() {
    let h = harness();
    let (secret, cr) = h.issued().await;
    // A new process: the index has not seen the Secret (it lagged), the request has no status yet.
    let h2 = harness();
    let mut fresh = cr.clone();
    fresh.status = None;
    h2.api
        .expect(
            "POST",
            &secrets_path(),
            reply(409, "AlreadyExists", "already exists"),
        )
        .expect("GET", &secret_path("web-tls"), object(secret.clone()))
        .expect("GET", &secret_path("web-tls"), object(secret.clone()))
        .expect("PATCH", &status_path(), status_echo("12"));
    h2.pass(&fresh).await.expect("no error: the Secret is ours");
    h2.api.assert_done();
    let (ready, _, _) = condition(&h2.api.calls()[3], "Ready");
    assert_eq!(ready, "True");
    drop(h);
}

#[tokio::test]
async fn a_409_on_replacing_our_secret_reads_it_again_and_retries() {
    let h = harness();
    let (mut secret, cr) = h.issued().await;
    // Someone edits a managed key; our replace then races another writer.
    secret["data"]["tls.crt"] = json!("ZWRpdGVk");
    secret["metadata"]["resourceVersion"] = json!("12");
    h.secret_event(&secret);
    let mut newer = secret.clone();
    newer["metadata"]["resourceVersion"] = json!("13");
    h.api
        .expect("GET", &secret_path("web-tls"), object(secret.clone()))
        .expect(
            "PUT",
            &secret_path("web-tls"),
            reply(409, "Conflict", "the object has been modified"),
        )
        .expect("GET", &secret_path("web-tls"), object(newer))
        .expect("PUT", &secret_path("web-tls"), echo("14"))
        .expect("PATCH", &status_path(), status_echo("15"));
    h.pass(&cr).await.expect("repaired after the conflict");
    h.api.assert_done();
    let calls = h.api.calls();
    assert_eq!(calls[3].body["metadata"]["resourceVersion"], "13");
}
