//! The cluster CA's life: once certificates were issued from it, a deleted CA
//! Secret is `CAMissing` (never a silent new root, nothing overwritten), a
//! restored one resumes issuance, and `p12-operator ca` shows the CA and makes
//! a new root only when asked.

mod support;

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use p12_operator::api::CertificateRequest;
use support::{Operator, cluster, eventually, http_get, kubectl_apply};

const WAIT: Duration = Duration::from_secs(60);
const CA: &str = "p12-operator-ca";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_p12-operator"))
        .args(args)
        .env("KUBECONFIG", &cluster().kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// The Ready condition once its reason is `reason`: (status, message).
async fn ready_as(client: &Client, ns: &str, name: &str, reason: &str) -> (String, String) {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, &format!("{ns}/{name} Ready as {reason}"), || {
        let api = api.clone();
        async move {
            let cr = api.get(name).await.ok()?;
            let c = cr
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (c.reason == reason).then_some((c.status, c.message))
        }
    })
    .await
}

/// SHA-256 of the CA certificate in the Secret's tls.crt, in hex.
fn ca_fingerprint(secret: &Secret) -> String {
    let pem = &secret.data.as_ref().unwrap()["tls.crt"].0;
    let der = pem::parse(pem).unwrap().into_contents();
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&der))
}

#[tokio::test]
async fn a_deleted_ca_is_missing_not_replaced_and_a_restored_one_resumes() {
    let op = Operator::start("ca-life", &[]);
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "ca-life").await.unwrap();
    let out = kubectl_apply(
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: web}\nspec:\n  secretName: web-tls\n  dnsNames: [web.example.test]\n",
        &ns,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ready_as(&client, &ns, "web", "Issued").await;
    let cas: Api<Secret> = Api::namespaced(client.clone(), &op.namespace);
    let issued: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let ca_secret = cas.get(CA).await.unwrap();
    let fingerprint = ca_fingerprint(&ca_secret);
    let bundle_before = issued.get("web-tls").await.unwrap().data;

    let status = cli(&["ca", "status", "-n", &op.namespace]).await;
    assert_eq!(status.code, 0, "{}{}", status.stdout, status.stderr);
    assert!(
        status.stdout.contains(&fingerprint)
            && status
                .stdout
                .contains("Signed:   1 issued Secrets hold a certificate of this CA"),
        "{}",
        status.stdout
    );

    // The CA Secret goes.
    cas.delete(CA, &DeleteParams::default()).await.unwrap();
    let (ready, message) = ready_as(&client, &ns, "web", "CAMissing").await;
    assert_eq!(ready, "False");
    assert!(
        message.contains("does not create a new root") && message.contains("ca new-root"),
        "{message}"
    );
    // No new root appears, and the issued Secret is left as it was.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        cas.get_opt(CA).await.unwrap().is_none(),
        "no silent new root"
    );
    assert_eq!(issued.get("web-tls").await.unwrap().data, bundle_before);
    let (_, metrics) = http_get(&op.admin_address().await, "/metrics").await;
    assert!(
        metrics.contains("p12_ca_problem{reason=\"CAMissing\"} 1"),
        "the metric says so"
    );
    let status = cli(&["ca", "status", "-n", &op.namespace]).await;
    assert_eq!(status.code, 1, "{}", status.stderr);
    let refused = cli(&["ca", "new-root", "-n", &op.namespace]).await;
    assert_eq!(refused.code, 2, "new-root needs --yes: {}", refused.stderr);
    assert!(cas.get_opt(CA).await.unwrap().is_none());

    // Restored from a backup: issuance resumes with the same certificate.
    let mut restored = ca_secret.clone();
    restored.metadata.resource_version = None;
    restored.metadata.uid = None;
    restored.metadata.creation_timestamp = None;
    restored.metadata.managed_fields = None;
    cas.create(&PostParams::default(), &restored).await.unwrap();
    ready_as(&client, &ns, "web", "Issued").await;
    assert_eq!(
        issued.get("web-tls").await.unwrap().data,
        bundle_before,
        "the same CA: nothing to re-issue"
    );

    // Starting over on purpose: a new root, and the certificate is re-issued from it.
    cas.delete(CA, &DeleteParams::default()).await.unwrap();
    ready_as(&client, &ns, "web", "CAMissing").await;
    let created = cli(&["ca", "new-root", "-n", &op.namespace, "--yes"]).await;
    assert_eq!(created.code, 0, "{}{}", created.stdout, created.stderr);
    let new_root = eventually(WAIT, "the new root in the CA Secret", || {
        let cas = cas.clone();
        async move { cas.get_opt(CA).await.ok().flatten() }
    })
    .await;
    let new_fingerprint = ca_fingerprint(&new_root);
    assert_ne!(new_fingerprint, fingerprint);
    assert!(
        created.stdout.contains(&new_fingerprint),
        "{}",
        created.stdout
    );
    eventually(WAIT, "web-tls re-issued from the new root", || {
        let (issued, root) = (issued.clone(), new_root.clone());
        async move {
            let s = issued.get("web-tls").await.ok()?;
            let ca_crt = &s.data.as_ref()?.get("ca.crt")?.0;
            (ca_crt == &root.data.as_ref()?["tls.crt"].0).then_some(())
        }
    })
    .await;
    assert!(
        new_root
            .labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("p12-operator")
    );

    // A rotation started by hand: the next root is staged and joins the
    // trust bundle of every Secret at once; a second one is refused.
    let rotate = cli(&["ca", "rotate", "-n", &op.namespace, "--overlap", "1h"]).await;
    assert_eq!(rotate.code, 0, "{}{}", rotate.stdout, rotate.stderr);
    let next = cas.get(&format!("{CA}-next")).await.unwrap();
    let next_fingerprint = ca_fingerprint(&next);
    assert!(next.annotations().contains_key("p12-operator.io/switch-at"));
    eventually(WAIT, "web-tls trusting both roots", || {
        let issued = issued.clone();
        async move {
            let s = issued.get("web-tls").await.ok()?;
            let roots = pem::parse_many(&s.data.as_ref()?.get("ca.crt")?.0).ok()?;
            (roots.len() == 2).then_some(())
        }
    })
    .await;
    let status = cli(&["ca", "status", "-n", &op.namespace]).await;
    assert!(
        status
            .stdout
            .contains(&format!("Rotation: next CA {next_fingerprint}")),
        "{}",
        status.stdout
    );
    let again = cli(&["ca", "rotate", "-n", &op.namespace]).await;
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(
        again.stderr.contains("a rotation is under way"),
        "{}",
        again.stderr
    );
}
