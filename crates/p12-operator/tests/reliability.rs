//! Faults and hostile input: crashes at every step of an issuance, a second
//! writer fighting over labels, a poison pill, SIGTERM under load, and requests
//! that try to get more than they may. Each ends with exactly one valid Secret
//! per request, or a clear refusal with nothing written.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use p12_operator::api::CertificateRequest;
use p12_operator::bundle::annotations::PASSWORD_FOR;
use support::{Operator, cluster, eventually, kubectl_apply};

const WAIT: Duration = Duration::from_secs(90);

fn request(ns: &str, name: &str, extra: &str) {
    let yaml = format!(
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {{name: {name}}}\nspec:\n  secretName: {name}-tls\n  dnsNames: [{name}.example]\n{extra}"
    );
    let out = kubectl_apply(&yaml, ns);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn condition(
    client: &Client,
    ns: &str,
    name: &str,
    status: &str,
    reason: Option<&str>,
) -> CertificateRequest {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, &format!("{name} Ready={status} {reason:?}"), || {
        let api = api.clone();
        async move {
            let cr = api.get(name).await.ok()?;
            let c = cr
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")?
                .clone();
            (c.status == status && reason.is_none_or(|r| r == c.reason)).then_some(cr)
        }
    })
    .await
}

/// The Secret holds a key that matches its certificate, which chains to ca.crt.
fn assert_valid_bundle(s: &Secret) {
    let dir = cluster().work_dir.join("bundles").join(format!(
        "{}-{}-{:x}",
        s.namespace().unwrap(),
        s.name_any(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (k, v) in s.data.clone().unwrap() {
        std::fs::write(dir.join(k), v.0).unwrap();
    }
    let p = |f: &str| dir.join(f).display().to_string();
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile", &p("ca.crt"), &p("tls.crt")])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}: {}",
        s.name_any(),
        String::from_utf8_lossy(&verify.stderr)
    );
    let pub_of = |args: &[&str]| Command::new("openssl").args(args).output().unwrap().stdout;
    assert_eq!(
        pub_of(&["pkey", "-in", &p("tls.key"), "-pubout"]),
        pub_of(&["x509", "-in", &p("tls.crt"), "-noout", "-pubkey"]),
        "{}: the key matches the certificate",
        s.name_any()
    );
}

async fn managed_secrets(client: &Client, ns: &str) -> Vec<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=p12-operator"))
        .await
        .unwrap()
        .items
}

#[tokio::test]
async fn a_crash_at_any_step_of_an_issuance_converges_to_one_valid_secret() {
    let client = cluster().client().await.unwrap();
    for point in ["after-keygen", "after-sign", "after-secret-write"] {
        let ns = cluster().namespace(&client, point).await.unwrap();
        let args = ["--watch-namespace", ns.as_str()];
        let crashing = Operator::start_with_env(
            "crash",
            &format!("crash-{point}"),
            &args,
            &[("P12_CRASH_AT", point)],
        );
        request(&ns, "web", "");
        eventually(WAIT, &format!("the operator to crash {point}"), || {
            let exited = crashing.exited();
            async move { exited.then_some(()) }
        })
        .await;
        assert!(
            crashing.logs().contains(&format!("point=\"{point}\""))
                || crashing.logs().contains(point)
        );
        let written_before = Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt("web-tls")
            .await
            .unwrap();
        assert_eq!(
            written_before.is_some(),
            point == "after-secret-write",
            "{point}: what reached the API before the crash"
        );

        let _again = Operator::start_named("crash", &format!("restart-{point}"), &args);
        let cr = condition(&client, &ns, "web", "True", Some("Issued")).await;
        let secrets = managed_secrets(&client, &ns).await;
        assert_eq!(secrets.len(), 1, "{point}: exactly one Secret");
        assert_valid_bundle(&secrets[0]);
        let st = cr.status.unwrap();
        assert_eq!(
            st.revision,
            Some(1),
            "{point}: one certificate in the Secret's history"
        );
        if let Some(before) = written_before {
            assert_eq!(
                st.serial_number.as_ref(),
                before.annotations().get("p12-operator.io/serial"),
                "status derived from the Secret written before the crash, no re-issue"
            );
        }
    }
}

#[tokio::test]
async fn a_second_writer_churning_labels_is_kept_and_causes_no_reissue() {
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "churn").await.unwrap();
    let _op = Operator::start("churn", &["--watch-namespace", &ns]);
    for i in 0..4 {
        request(&ns, &format!("c{i}"), "");
    }
    let mut serials = Vec::new();
    for i in 0..4 {
        serials.push(
            condition(&client, &ns, &format!("c{i}"), "True", None)
                .await
                .status
                .unwrap()
                .serial_number,
        );
    }
    let crs: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let until = Instant::now() + Duration::from_secs(12);
    let mut n = 0u32;
    while Instant::now() < until {
        for i in 0..4 {
            let label = serde_json::json!({"metadata": {"labels": {"chaos": format!("v{n}")}}});
            crs.patch(
                &format!("c{i}"),
                &PatchParams::default(),
                &Patch::Merge(&label),
            )
            .await
            .unwrap();
            let apply = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("c{i}-tls"), "labels": {"chaos": format!("v{n}")}}});
            secrets
                .patch(
                    &format!("c{i}-tls"),
                    &PatchParams::apply("chaos").force(),
                    &Patch::Apply(&apply),
                )
                .await
                .unwrap();
        }
        n += 1;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..4 {
        let cr = condition(&client, &ns, &format!("c{i}"), "True", None).await;
        let st = cr.status.unwrap();
        assert_eq!(
            st.revision,
            Some(1),
            "c{i} was not re-issued under churn ({n} rounds)"
        );
        assert_eq!(st.serial_number, serials[i]);
        let s = secrets.get(&format!("c{i}-tls")).await.unwrap();
        assert_eq!(
            s.labels().get("chaos").map(String::as_str),
            Some(format!("v{}", n - 1).as_str()),
            "the other manager's label is kept"
        );
        assert_eq!(
            s.labels()
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("p12-operator")
        );
        assert_valid_bundle(&s);
    }
}

#[tokio::test]
async fn a_poison_pill_neither_stops_nor_slows_the_others() {
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "poison").await.unwrap();
    let op = Operator::start_with_env(
        "poison",
        "poison",
        &["--watch-namespace", &ns],
        &[("P12_PANIC_ON", "poison")],
    );
    request(&ns, "poison", "");
    request(
        &ns,
        "broken",
        "  keystore: {passwordSecretRef: {name: nowhere, key: password}}\n",
    );
    let started = Instant::now();
    for i in 0..5 {
        request(&ns, &format!("ok{i}"), "");
    }
    for i in 0..5 {
        condition(&client, &ns, &format!("ok{i}"), "True", None).await;
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "the healthy requests took {took:?}"
    );
    condition(
        &client,
        &ns,
        "broken",
        "False",
        Some("PasswordSecretNotAllowed"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(!op.exited(), "the operator survives the panicking request");
    let panics = op.logs().matches("reconcile panicked").count();
    assert!(
        (1..=5).contains(&panics),
        "the poison pill backs off instead of spinning: {panics} panics in ~20 s"
    );
    let poison = Api::<CertificateRequest>::namespaced(client.clone(), &ns)
        .get("poison")
        .await
        .unwrap();
    assert!(
        Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt("poison-tls")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        poison
            .status
            .is_none_or(|s| s.conditions.iter().all(|c| c.status != "True"))
    );
}

#[tokio::test]
async fn sigterm_under_load_drains_releases_the_lease_and_loses_nothing() {
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "drain").await.unwrap();
    let args = ["--watch-namespace", ns.as_str(), "--leader-elect"];
    let op = Operator::start_named("drain", "drain-1", &args);
    eventually(WAIT, "the lease", || {
        let logs = op.logs();
        async move { logs.contains("acquired the leader lease").then_some(()) }
    })
    .await;
    for i in 0..8 {
        request(
            &ns,
            &format!("rsa{i}"),
            "  privateKey: {algorithm: RSA, size: 4096}\n",
        );
    }
    eventually(WAIT, "issuance to be under way", || {
        let n = op.logs().matches("issued certificate").count();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(op.pid() as i32, libc::SIGTERM) };
    let signalled = Instant::now();
    eventually(
        Duration::from_secs(40),
        "the operator to drain and exit",
        || {
            let exited = op.exited();
            async move { exited.then_some(()) }
        },
    )
    .await;
    assert!(
        signalled.elapsed() < Duration::from_secs(30),
        "drained within the grace period"
    );
    assert!(op.logs().contains("released the leader lease"));
    let _next = Operator::start_named("drain", "drain-2", &args);
    for i in 0..8 {
        let cr = condition(&client, &ns, &format!("rsa{i}"), "True", None).await;
        assert_eq!(cr.status.unwrap().revision, Some(1), "rsa{i} issued once");
    }
    let secrets = managed_secrets(&client, &ns).await;
    assert_eq!(secrets.len(), 8);
    for s in &secrets {
        assert_valid_bundle(s);
    }
}

#[tokio::test]
async fn hostile_requests_are_refused_and_nothing_is_written() {
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "hostile").await.unwrap();
    let _op = Operator::start(
        "hostile",
        &["--watch-namespace", &ns, "--ca-duration", "3h"],
    );

    // CA powers cannot be requested: the schema has no such usage.
    let out = kubectl_apply(
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: ca}\nspec: {secretName: ca-tls, dnsNames: [a.b], usages: [keyCertSign]}\n",
        &ns,
    );
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("Unsupported value: \"keyCertSign\"")
    );

    // A megabyte-sized field never reaches the operator.
    let big = "a".repeat(1 << 20);
    let out = kubectl_apply(
        &format!(
            "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {{name: big}}\nspec: {{secretName: big-tls, commonName: {big}}}\n"
        ),
        &ns,
    );
    assert!(!out.status.success());

    // A lifetime beyond the CA's is cut at the CA's notAfter.
    request(&ns, "long", "  duration: 100h\n");
    let st = condition(&client, &ns, "long", "True", None)
        .await
        .status
        .unwrap();
    let ca = Api::<Secret>::namespaced(client.clone(), "p12-system-hostile")
        .get("p12-operator-ca")
        .await
        .unwrap();
    let ca_pem = String::from_utf8(ca.data.unwrap()["tls.crt"].0.clone()).unwrap();
    let der = pem::parse(ca_pem).unwrap().into_contents();
    let ca_info = p12_operator::pki::parse_certificate_info(&der).unwrap();
    assert_eq!(
        st.not_after.unwrap().0,
        ca_info.not_after,
        "the leaf does not outlive its CA"
    );

    // A target Secret controlled by something else is left alone.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let theirs = Secret {
        metadata: ObjectMeta {
            name: Some("owned-tls".into()),
            owner_references: Some(vec![owner.controller_owner_ref(&()).unwrap()]),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "p12-operator".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "tls.crt".to_string(),
            ByteString(b"theirs".to_vec()),
        )])),
        ..Default::default()
    };
    let before = secrets
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let yaml = "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: owned}\nspec: {secretName: owned-tls, dnsNames: [a.b]}\n";
    assert!(kubectl_apply(yaml, &ns).status.success());
    condition(&client, &ns, "owned", "False", Some("SecretConflict")).await;
    let after = secrets.get("owned-tls").await.unwrap();
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "a Secret controlled by another owner is untouched, even with our label on it"
    );

    // A 900 KiB password (Secrets hold at most 1 MiB) is refused without being echoed.
    let huge = "p".repeat(900 << 10);
    let pw = Secret {
        metadata: ObjectMeta {
            name: Some("huge-pw".into()),
            annotations: Some(BTreeMap::from([(PASSWORD_FOR.into(), "huge".into())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_string(),
            ByteString(huge.into_bytes()),
        )])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &pw).await.unwrap();
    request(
        &ns,
        "huge",
        "  keystore: {passwordSecretRef: {name: huge-pw, key: password}}\n",
    );
    let cr = condition(&client, &ns, "huge", "False", Some("PasswordInvalid")).await;
    let msg = cr
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(msg.len() < 300 && !msg.contains("pppp"), "{msg}");
    assert!(secrets.get_opt("huge-tls").await.unwrap().is_none());
}
