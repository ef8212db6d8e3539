//! Issuing, and leaving alone: a first issuance, an unchanged request, a
//! relabelled Secret, a Secret deleted during a watch gap.

use super::*;

#[tokio::test]
async fn a_first_issuance_creates_the_secret_and_writes_status_once() {
    let h = harness();
    let (secret, _) = h.issued().await;
    for key in bundle::OWNED_KEYS {
        assert!(secret["data"][key].is_string(), "{key} missing");
    }
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], UID);
    assert_eq!(
        secret["metadata"]["labels"][bundle::MANAGED_BY_LABEL],
        "p12-operator"
    );
    assert_eq!(keys_generated(&h.ctx), 1);
    assert!(h.api.event_reasons().await.contains(&"Issued".to_string()));
}

#[tokio::test]
async fn an_unchanged_request_and_secret_cost_no_api_call() {
    let h = harness();
    let (_, cr) = h.issued().await;
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    assert!(h.api.calls().is_empty(), "{:?}", h.api.calls());
}

#[tokio::test]
async fn a_secret_that_lost_our_label_is_relabelled_in_place() {
    let h = harness();
    let (mut secret, cr) = h.issued().await;
    // Someone removes the managed-by label; the ownerReference stays.
    secret["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove(bundle::MANAGED_BY_LABEL);
    secret["metadata"]["resourceVersion"] = json!("12");
    h.secret_event(&secret);
    h.api
        .expect("GET", &secret_path("web-tls"), object(secret.clone()))
        .expect("PUT", &secret_path("web-tls"), echo("13"));
    h.pass(&cr).await.expect("repaired");
    h.api.assert_done();
    let put = &h.api.calls()[1].body;
    assert_eq!(
        put["metadata"]["labels"][bundle::MANAGED_BY_LABEL],
        "p12-operator"
    );
    assert_eq!(
        put["metadata"]["resourceVersion"], "12",
        "replace without precondition"
    );
    // Same certificate: repaired, not re-issued.
    assert_eq!(put["data"], secret["data"]);
    assert_eq!(keys_generated(&h.ctx), 1);
}

#[tokio::test]
async fn a_secret_deleted_during_a_watch_gap_is_recreated_after_the_relist() {
    let mut h = harness();
    let (_, cr) = h.issued().await;
    // The watch broke; the Secret was deleted meanwhile; the re-list lacks it.
    h.list_secrets(vec![]);
    let revisit = h.revisit.try_recv().expect("the request is revisited");
    assert_eq!(revisit, request_key(&cr));
    h.api.expect("POST", &secrets_path(), echo("20")).expect(
        "PATCH",
        &status_path(),
        status_echo("21"),
    );
    h.pass(&cr).await.expect("recreated");
    h.api.assert_done();
    assert_eq!(keys_generated(&h.ctx), 2);
}
