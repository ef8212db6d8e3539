//! Trust distribution on a real control plane: the ConfigMap
//! p12-operator-ca-bundle follows namespace labels, is restored after an edit
//! or a delete, never touches a ConfigMap of that name it did not create, and
//! its truststores open in keytool and OpenSSL (the passwordless one without
//! any password).

mod support;

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use support::{Operator, cluster, eventually};

const WAIT: Duration = Duration::from_secs(60);
const NAME: &str = "p12-operator-ca-bundle";
/// The selector the operator of this binary publishes to.
const LABEL: &str = "trust-test.p12-operator.io/bundle";

fn operator() -> &'static Operator {
    static OP: OnceLock<Operator> = OnceLock::new();
    OP.get_or_init(|| {
        Operator::start(
            "trust",
            &[
                "--trust-bundle-namespace-selector",
                &format!("{LABEL}=true"),
            ],
        )
    })
}

async fn label(client: &Client, ns: &str, value: Option<&str>) {
    let patch = serde_json::json!({"metadata": {"labels": {LABEL: value}}});
    Api::<Namespace>::all(client.clone())
        .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// The CA's root as the operator holds it (its CA Secret's `tls.crt`), DER.
async fn ca_root(client: &Client) -> Vec<u8> {
    let op = operator();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &op.namespace);
    let secret = eventually(WAIT, "the CA Secret", || {
        let secrets = secrets.clone();
        async move { secrets.get_opt("p12-operator-ca").await.ok().flatten() }
    })
    .await;
    let crt = &secret.data.unwrap()["tls.crt"].0;
    pem::parse_many(crt)
        .unwrap()
        .last()
        .unwrap()
        .contents()
        .to_vec()
}

async fn configmap(client: &Client, ns: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(NAME)
        .await
        .unwrap()
}

/// Waits until the namespace holds our ConfigMap with `ca.crt` equal to `pem`.
async fn published(client: &Client, ns: &str, pem: &str) -> ConfigMap {
    eventually(
        WAIT,
        &format!("{NAME} in {ns} holding the CA root"),
        || async {
            configmap(client, ns).await.filter(|cm| {
                cm.data
                    .as_ref()
                    .and_then(|d| d.get("ca.crt"))
                    .map(String::as_str)
                    == Some(pem)
            })
        },
    )
    .await
}

fn sha256_colon_hex(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[tokio::test]
async fn a_labelled_namespace_gets_the_bundle_restored_after_edit_and_delete_and_removed_when_unlabelled()
 {
    let client = cluster().client().await.unwrap();
    operator();
    let root_pem = to_pem(&ca_root(&client).await);
    let ns = cluster().namespace(&client, "trust").await.unwrap();
    let other = cluster().namespace(&client, "untrusted").await.unwrap();

    label(&client, &ns, Some("true")).await;
    let cm = published(&client, &ns, &root_pem).await;
    assert_eq!(
        cm.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("p12-operator")
    );
    let binary = cm.binary_data.as_ref().unwrap();
    assert!(
        binary.contains_key("truststore.p12") && binary.contains_key("truststore-changeit.p12")
    );
    assert!(
        configmap(&client, &other).await.is_none(),
        "a namespace without the label gets nothing"
    );

    // Edited: restored.
    let api = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let edit = serde_json::json!({"data": {"ca.crt": "not a certificate\n", "extra": "x"}});
    api.patch(NAME, &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    let restored = eventually(WAIT, "the edited ConfigMap restored", || async {
        configmap(&client, &ns).await.filter(|cm| {
            let data = cm.data.clone().unwrap_or_default();
            data.get("ca.crt") == Some(&root_pem) && !data.contains_key("extra")
        })
    })
    .await;
    assert_eq!(restored.binary_data, cm.binary_data, "binaryData as before");

    // Deleted: created again.
    api.delete(NAME, &Default::default()).await.unwrap();
    let again = published(&client, &ns, &root_pem).await;
    assert_ne!(again.uid(), cm.uid(), "a new ConfigMap");

    // Unlabelled: removed.
    label(&client, &ns, None).await;
    eventually(
        WAIT,
        "the ConfigMap removed from the unlabelled namespace",
        || async { configmap(&client, &ns).await.is_none().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_configmap_of_that_name_the_operator_did_not_create_is_never_touched() {
    let client = cluster().client().await.unwrap();
    operator();
    let root_pem = to_pem(&ca_root(&client).await);
    let ns = cluster().namespace(&client, "foreign").await.unwrap();
    let api = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let foreign = api
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some(NAME.into()),
                    ..Default::default()
                },
                data: Some([("ca.crt".to_string(), "my own bundle\n".to_string())].into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    label(&client, &ns, Some("true")).await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    eventually(
        WAIT,
        "a TrustBundleConflict Event on the foreign ConfigMap",
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("TrustBundleConflict")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(NAME)
                })
                .map(|_| ())
        },
    )
    .await;
    // A labelled namespace next to it is served meanwhile: the operator is not stuck.
    let served = cluster().namespace(&client, "served").await.unwrap();
    label(&client, &served, Some("true")).await;
    published(&client, &served, &root_pem).await;
    let now = configmap(&client, &ns).await.unwrap();
    assert_eq!(
        now.resource_version(),
        foreign.resource_version(),
        "not written"
    );

    // Unlabelled: still there, untouched.
    label(&client, &ns, None).await;
    label(&client, &served, None).await;
    eventually(
        WAIT,
        "our ConfigMap removed from the other namespace",
        || async { configmap(&client, &served).await.is_none().then_some(()) },
    )
    .await;
    let now = configmap(&client, &ns)
        .await
        .expect("the foreign ConfigMap stays");
    assert_eq!(
        now.resource_version(),
        foreign.resource_version(),
        "not written"
    );
}

#[tokio::test]
async fn the_distributed_truststores_open_in_keytool_and_openssl_and_hold_the_ca_root() {
    let client = cluster().client().await.unwrap();
    operator();
    let root = ca_root(&client).await;
    let fingerprint = sha256_colon_hex(&root);
    let ns = cluster().namespace(&client, "truststore").await.unwrap();
    label(&client, &ns, Some("true")).await;
    let cm = published(&client, &ns, &to_pem(&root)).await;
    let binary = cm.binary_data.unwrap();
    let dir = cluster().work_dir.join(format!("trust-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let passwordless = dir.join("truststore.p12");
    let changeit = dir.join("truststore-changeit.p12");
    std::fs::write(&passwordless, &binary["truststore.p12"].0).unwrap();
    std::fs::write(&changeit, &binary["truststore-changeit.p12"].0).unwrap();

    // keytool, no password at all (stdin closed, nothing typed) and an empty one.
    for password in [None, Some("")] {
        let mut cmd = Command::new("keytool");
        cmd.args(["-list", "-v", "-storetype", "PKCS12", "-keystore"])
            .arg(&passwordless)
            .stdin(Stdio::null());
        if let Some(p) = password {
            cmd.args(["-storepass", p]);
        }
        let out = cmd.output().expect("keytool runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "keytool {password:?}: {stdout}");
        assert!(stdout.contains("Alias name: ca\n"), "{stdout}");
        assert!(stdout.contains("Entry type: trustedCertEntry"), "{stdout}");
        assert!(stdout.contains(&fingerprint), "{fingerprint} in {stdout}");
    }
    // OpenSSL, empty password.
    let out = Command::new("openssl")
        .args(["pkcs12", "-nokeys", "-passin", "pass:", "-in"])
        .arg(&passwordless)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ders: Vec<Vec<u8>> = pem::parse_many(&out.stdout)
        .unwrap()
        .iter()
        .map(|p| p.contents().to_vec())
        .collect();
    assert_eq!(ders, vec![root.clone()]);

    // The password-protected alternative: changeit, in both tools.
    let out = Command::new("keytool")
        .args([
            "-list",
            "-v",
            "-storetype",
            "PKCS12",
            "-storepass",
            "changeit",
            "-keystore",
        ])
        .arg(&changeit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("trustedCertEntry") && stdout.contains(&fingerprint),
        "{stdout}"
    );
    let out = Command::new("openssl")
        .args(["pkcs12", "-nokeys", "-passin", "pass:changeit", "-in"])
        .arg(&changeit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ders: Vec<Vec<u8>> = pem::parse_many(&out.stdout)
        .unwrap()
        .iter()
        .map(|p| p.contents().to_vec())
        .collect();
    assert_eq!(ders, vec![root]);
    let out = Command::new("openssl")
        .args(["pkcs12", "-nokeys", "-passin", "pass:wrong", "-in"])
        .arg(&changeit)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the changeit store needs its password"
    );
}
