//! Policy: a refused request costs no key and writes nothing but its status;
//! a policy withdrawn from an issued request keeps its certificate, says so,
//! and does not renew it.

use super::*;

fn policy(name: &str, yaml: &str) -> crate::api::IssuancePolicy {
    crate::api::IssuancePolicy::new(name, serde_saphyr::from_str(yaml).unwrap())
}

#[tokio::test]
async fn a_name_of_another_namespace_is_refused_before_any_key_and_nothing_is_written() {
    let h = harness();
    let mut cr = request("");
    cr.spec.dns_names = vec!["payments.team-b.svc".into()];
    h.api.expect("PATCH", &status_path(), status_echo("6"));
    let action = h.pass(&cr).await.unwrap();
    h.api.assert_done();
    assert_eq!(action, Action::await_change());
    assert_eq!(keys_generated(&h.ctx), 0);
    let (ready, reason, message) = condition(&h.api.calls()[0], "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "PolicyViolation")
    );
    assert!(
        message.contains(r#"dnsNames[0] "payments.team-b.svc" is not allowed"#)
            && message.contains("the built-in default policy"),
        "{message}"
    );
    assert!(
        h.api
            .event_reasons()
            .await
            .contains(&"PolicyViolation".to_string())
    );
    // The same refusal again writes nothing: no status, no Event.
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
}

#[tokio::test]
async fn a_policy_admits_what_the_default_refuses() {
    let h = harness();
    let mut cr = request("usages: [serverAuth, clientAuth]\n");
    cr.spec.dns_names.push("api.shop.example.com".into());
    h.api.expect("PATCH", &status_path(), status_echo("6"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    assert!(
        h.ctx.admission.observe_policy(&watcher::Event::Apply(policy(
            "shop",
            "namespaces: {names: [shop]}\nallow: {dnsNames: ['*.shop.example.com'], usages: [serverAuth, clientAuth]}\n",
        )))
    );
    // After a refusal a pass reads the Secret before trusting the index.
    h.api
        .expect(
            "GET",
            &secret_path("web-tls"),
            reply(404, "NotFound", "secrets \"web-tls\" not found"),
        )
        .expect("POST", &secrets_path(), echo("10"))
        .expect("PATCH", &status_path(), status_echo("11"));
    h.pass(&cr).await.unwrap();
    h.api.assert_done();
    assert_eq!(keys_generated(&h.ctx), 1);
    let (ready, reason, _) = condition(&h.api.calls()[3], "Ready");
    assert_eq!((ready.as_str(), reason.as_str()), ("True", "Issued"));
}

#[tokio::test]
async fn a_withdrawn_policy_keeps_the_issued_certificate_and_stops_renewal() {
    let h = harness();
    let (_, issued) = h.issued().await;
    // The request's Service is deleted: its name is no longer the namespace's to claim.
    h.ctx
        .admission
        .observe_service(&watcher::Event::Delete(PartialObjectMeta {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some(NS.into()),
                ..Default::default()
            },
            ..Default::default()
        }));
    h.api.expect("PATCH", &status_path(), status_echo("12"));
    let action = h.pass(&issued).await.unwrap();
    h.api.assert_done();
    assert_eq!(action, Action::await_change(), "no renewal is scheduled");
    let call = &h.api.calls()[0];
    let (ready, reason, message) = condition(call, "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "PolicyViolation")
    );
    assert!(
        message.contains("there is no Service web in namespace shop")
            && message.contains("stays in Secret web-tls until it expires at")
            && message.contains("is not renewed"),
        "{message}"
    );
    let (issued_status, issued_reason, _) = condition(call, "Issued");
    assert_eq!(
        (issued_status.as_str(), issued_reason.as_str()),
        ("True", "Issued"),
        "the certificate is still there"
    );
    assert_eq!(
        keys_generated(&h.ctx),
        1,
        "only the first issuance made a key"
    );
}
