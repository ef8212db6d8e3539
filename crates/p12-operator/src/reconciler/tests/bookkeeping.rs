//! What the context remembers and bounds: Secret references, Events in
//! flight.

use super::*;

#[tokio::test]
async fn references_follow_a_changed_secret_name_and_go_with_the_request() {
    let h = harness();
    let a = request("keystore: {passwordSecretRef: {name: pw, key: password}}\n");
    h.ctx.request_changed(None, &a);
    let mut b = a.clone();
    b.spec.secret_name = "other-tls".into();
    h.ctx.request_changed(Some(&a), &b);
    {
        let refs = h.ctx.refs.lock().unwrap();
        let key = |s: &str| (NS.to_string(), s.to_string());
        assert!(!refs.contains_key(&key("web-tls")), "the old name stays");
        assert_eq!(refs.get(&key("other-tls")), Some(&vec!["web".to_string()]));
        assert_eq!(refs.get(&key("pw")), Some(&vec!["web".to_string()]));
    }
    h.ctx.forget(&b);
    assert!(h.ctx.refs.lock().unwrap().is_empty());
}

#[tokio::test]
async fn events_beyond_the_in_flight_bound_are_dropped_and_counted() {
    let h = harness();
    let cr = request("");
    let held = h
        .ctx
        .events_in_flight
        .clone()
        .acquire_many_owned(EVENTS_IN_FLIGHT as u32)
        .await
        .unwrap();
    publish(
        &h.ctx,
        &cr,
        EventType::Normal,
        "Issued",
        "Issue",
        "note".into(),
    )
    .await;
    assert_eq!(h.ctx.metrics.events_dropped.get(), 1);
    drop(held);
    publish(
        &h.ctx,
        &cr,
        EventType::Normal,
        "Issued",
        "Issue",
        "note".into(),
    )
    .await;
    assert_eq!(h.api.event_reasons().await, vec!["Issued".to_string()]);
    assert_eq!(h.ctx.metrics.events_dropped.get(), 1);
}
