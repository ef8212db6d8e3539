//! The cluster CA: a user-supplied intermediate, an unusable CA, and a CA change.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use p12_operator::api::CertificateRequest;
use support::{Operator, cluster, eventually, http_get, kubectl_apply, run_with_password};

const WAIT: Duration = Duration::from_secs(60);

/// Makes a root CA and an intermediate with the openssl CLI, as a company PKI would.
/// Returns (root PEM, intermediate PEM, intermediate key PEM).
fn company_pki(dir: &std::path::Path) -> (String, String, String) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(dir.join("ext.cnf"), "[v3_int]\nbasicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "root.key",
        "-out",
        "root.pem",
        "-days",
        "30",
        "-subj",
        "/CN=Company Root",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "int.key",
        "-out",
        "int.csr",
        "-subj",
        "/CN=Company Kubernetes Intermediate",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "int.csr",
        "-CA",
        "root.pem",
        "-CAkey",
        "root.key",
        "-CAcreateserial",
        "-out",
        "int.pem",
        "-days",
        "20",
        "-extfile",
        "ext.cnf",
        "-extensions",
        "v3_int",
    ]);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    (read("root.pem"), read("int.pem"), read("int.key"))
}

fn tls_secret(name: &str, crt: &str, key: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_string(), ByteString(crt.as_bytes().to_vec())),
            ("tls.key".to_string(), ByteString(key.as_bytes().to_vec())),
        ])),
        ..Default::default()
    }
}

/// A namespace for an operator of its own (holding `ca`) plus a namespace it watches.
async fn operator_with_ca(client: &Client, label: &str, ca: Option<Secret>) -> (Operator, String) {
    let system = format!("p12-system-{label}");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(system.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    if let Some(ca) = ca {
        Api::<Secret>::namespaced(client.clone(), &system)
            .create(&PostParams::default(), &ca)
            .await
            .unwrap();
    }
    let watched = cluster().namespace(client, label).await.unwrap();
    let op = Operator::start(label, &["--watch-namespace", &watched]);
    (op, watched)
}

async fn condition(
    client: &Client,
    ns: &str,
    name: &str,
    status: &str,
    reason: &str,
) -> CertificateRequest {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, &format!("{name} Ready={status} ({reason})"), || {
        let api = api.clone();
        async move {
            let cr = api.get(name).await.ok()?;
            let c = cr
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")?;
            (c.status == status && c.reason == reason).then_some(cr.clone())
        }
    })
    .await
}

fn apply_request(ns: &str, name: &str) {
    let out = kubectl_apply(
        &format!(
            "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {{name: {name}}}\nspec: {{secretName: {name}-tls, dnsNames: [{name}.example]}}\n"
        ),
        ns,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_supplied_intermediate_ca_puts_the_whole_chain_into_every_bundle() {
    let client = cluster().client().await.unwrap();
    let dir = cluster().work_dir.join("company-pki");
    let (root, int, int_key) = company_pki(&dir);
    let ca = tls_secret("p12-operator-ca", &format!("{int}{root}"), &int_key);
    let (_op, ns) = operator_with_ca(&client, "intermediate", Some(ca)).await;
    apply_request(&ns, "web");
    condition(&client, &ns, "web", "True", "Issued").await;

    let s = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("web-tls")
        .await
        .unwrap();
    let data = s.data.clone().unwrap();
    let get = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    assert_eq!(
        get("ca.crt").trim(),
        root.trim(),
        "ca.crt is the root clients should trust"
    );
    let tls = get("tls.crt");
    assert_eq!(
        tls.matches("BEGIN CERTIFICATE").count(),
        2,
        "tls.crt holds the leaf and the intermediate"
    );
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    for (k, v) in &data {
        std::fs::write(bundle.join(k), &v.0).unwrap();
    }
    let p = |f: &str| bundle.join(f).display().to_string();
    let out = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            &p("ca.crt"),
            "-untrusted",
            &p("tls.crt"),
            &p("tls.crt"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let password = get("keystore-password");
    let kt = run_with_password(
        "keytool",
        &[
            "-list",
            "-v",
            "-storetype",
            "PKCS12",
            "-keystore",
            &p("keystore.p12"),
            "-storepass:env",
            "P12_PASS",
        ],
        &password,
    );
    assert!(
        String::from_utf8_lossy(&kt.stdout).contains("Certificate chain length: 3"),
        "keystore holds leaf, intermediate and root"
    );
}

#[tokio::test]
async fn an_unusable_ca_stops_issuance_is_never_overwritten_and_a_fixed_ca_resumes_it() {
    let client = cluster().client().await.unwrap();
    let broken = tls_secret(
        "p12-operator-ca",
        "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n",
        "garbage",
    );
    let (op, ns) = operator_with_ca(&client, "broken", Some(broken)).await;
    apply_request(&ns, "web");
    let cr = condition(&client, &ns, "web", "False", "CAInvalid").await;
    let msg = cr
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(
        msg.contains("p12-system-broken/p12-operator-ca"),
        "the message names the CA Secret: {msg}"
    );
    assert!(
        Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt("web-tls")
            .await
            .unwrap()
            .is_none()
    );
    let cas: Api<Secret> = Api::namespaced(client.clone(), &op.namespace);
    let before = cas.get("p12-operator-ca").await.unwrap();
    assert_eq!(
        before.data.as_ref().unwrap()["tls.key"].0,
        b"garbage",
        "the broken CA Secret is left as it was"
    );

    // A key that does not match the certificate is refused too.
    let (root, _int, int_key) = company_pki(&cluster().work_dir.join("mismatch-pki"));
    let mut mismatched = before.clone();
    mismatched.metadata.managed_fields = None;
    mismatched.data = tls_secret("x", &root, &int_key).data;
    cas.replace("p12-operator-ca", &PostParams::default(), &mismatched)
        .await
        .unwrap();
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "the CA problem to be a key mismatch", || {
        let api = api.clone();
        async move {
            let cr = api.get("web").await.ok()?;
            let c = cr
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (c.reason == "CAInvalid" && c.message.contains("does not match")).then_some(())
        }
    })
    .await;

    // Fixed: issuance resumes without restarting the operator.
    let dir = cluster().work_dir.join("fixed-pki");
    let (root, _, _) = company_pki(&dir);
    let root_key = std::fs::read_to_string(dir.join("root.key")).unwrap();
    let mut fixed = cas.get("p12-operator-ca").await.unwrap();
    fixed.metadata.managed_fields = None;
    fixed.data = tls_secret("x", &root, &root_key).data;
    cas.replace("p12-operator-ca", &PostParams::default(), &fixed)
        .await
        .unwrap();
    let cr = condition(&client, &ns, "web", "True", "Issued").await;
    let serial = cr.status.unwrap().serial_number;

    // A different CA re-issues every certificate under it.
    let dir = cluster().work_dir.join("rotated-pki");
    let (root2, _, _) = company_pki(&dir);
    let root2_key = std::fs::read_to_string(dir.join("root.key")).unwrap();
    let mut rotated = cas.get("p12-operator-ca").await.unwrap();
    rotated.metadata.managed_fields = None;
    rotated.data = tls_secret("x", &root2, &root2_key).data;
    cas.replace("p12-operator-ca", &PostParams::default(), &rotated)
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let s = eventually(WAIT, "re-issuance under the new CA", || {
        let secrets = secrets.clone();
        let root2 = root2.clone();
        async move {
            secrets
                .get("web-tls")
                .await
                .ok()
                .filter(|s| s.data.as_ref().unwrap()["ca.crt"].0 == root2.as_bytes())
        }
    })
    .await;
    assert_ne!(
        s.annotations().get("p12-operator.io/serial"),
        serial.as_ref(),
        "a new certificate under the new CA"
    );
}

#[tokio::test]
async fn a_missing_ca_is_created_as_a_self_signed_root_once() {
    let client = cluster().client().await.unwrap();
    let (op, ns) = operator_with_ca(&client, "fresh", None).await;
    apply_request(&ns, "web");
    condition(&client, &ns, "web", "True", "Issued").await;
    let ca = Api::<Secret>::namespaced(client.clone(), &op.namespace)
        .get("p12-operator-ca")
        .await
        .unwrap();
    assert_eq!(
        ca.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("p12-operator")
    );
    let crt = String::from_utf8(ca.data.as_ref().unwrap()["tls.crt"].0.clone()).unwrap();
    let dir = cluster().work_dir.join("fresh-ca");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), &crt).unwrap();
    let out = Command::new("openssl")
        .args([
            "x509",
            "-in",
            &dir.join("ca.pem").display().to_string(),
            "-noout",
            "-ext",
            "basicConstraints",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("CA:TRUE"));
    // A restart finds and keeps it.
    op.stop();
    let op2 = Operator::start("fresh", &["--watch-namespace", &ns]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = Api::<Secret>::namespaced(client.clone(), &op2.namespace)
        .get("p12-operator-ca")
        .await
        .unwrap();
    assert_eq!(
        again.resource_version(),
        ca.resource_version(),
        "the CA is created once and then reused"
    );
}

/// A CA certificate valid from 2020 to 2099 that may sign certificates.
fn ca_params(cn: &str, path_len: Option<u8>) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.is_ca = rcgen::IsCa::Ca(match path_len {
        Some(n) => rcgen::BasicConstraints::Constrained(n),
        None => rcgen::BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    params
}

/// A chain built root first from `specs`; returns `tls.crt` (the last, the
/// operator's CA, first) and the operator CA's key.
fn chain(specs: Vec<rcgen::CertificateParams>) -> (String, String) {
    let mut issuer: Option<rcgen::Issuer<'static, rcgen::KeyPair>> = None;
    let mut pems = Vec::new();
    let mut key_pem = String::new();
    for params in specs {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = match &issuer {
            None => params.self_signed(&key).unwrap(),
            Some(issuer) => params.signed_by(&key, issuer).unwrap(),
        };
        pems.push(cert.pem());
        key_pem = key.serialize_pem();
        issuer = Some(rcgen::Issuer::new(params, key));
    }
    pems.reverse();
    (pems.concat(), key_pem)
}

fn apply_request_for(ns: &str, name: &str, dns: &str) {
    let out = kubectl_apply(
        &format!(
            "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {{name: {name}}}\nspec: {{secretName: {name}-tls, dnsNames: [{dns}]}}\n"
        ),
        ns,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the request's Ready condition has `reason` and a message
/// containing `text`; returns the message.
async fn ready_message(client: &Client, ns: &str, name: &str, reason: &str, text: &str) -> String {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, &format!("{name}: {reason} with {text:?}"), || {
        let api = api.clone();
        async move {
            let cr = api.get(name).await.ok()?;
            let c = cr
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (c.status == "False" && c.reason == reason && c.message.contains(text))
                .then_some(c.message)
        }
    })
    .await
}

#[tokio::test]
async fn hostile_ca_chains_are_refused_naming_the_certificate_and_its_problem() {
    let client = cluster().client().await.unwrap();
    let mut expired_root = ca_params("Corp Root", None);
    expired_root.not_after = rcgen::date_time_ymd(2025, 1, 1);
    let (crt, key) = chain(vec![expired_root, ca_params("Corp Issuing CA", Some(0))]);
    let (op, ns) = operator_with_ca(
        &client,
        "hostile",
        Some(tls_secret("p12-operator-ca", &crt, &key)),
    )
    .await;
    apply_request(&ns, "web");
    let message = ready_message(
        &client,
        &ns,
        "web",
        "CAInvalid",
        "certificate 2 of the CA bundle (CN=Corp Root) expired at 2025-01-01T00:00:00Z",
    )
    .await;
    assert!(
        message.contains("p12-system-hostile/p12-operator-ca"),
        "the message names the CA Secret: {message}"
    );

    let cas: Api<Secret> = Api::namespaced(client.clone(), &op.namespace);
    let replace = |crt: String, key: String| {
        let cas = cas.clone();
        async move {
            let mut secret = cas.get("p12-operator-ca").await.unwrap();
            secret.metadata.managed_fields = None;
            secret.data = tls_secret("x", &crt, &key).data;
            cas.replace("p12-operator-ca", &PostParams::default(), &secret)
                .await
                .unwrap();
        }
    };

    // A root that allows no CA below it, above an intermediate and our CA.
    let (crt, key) = chain(vec![
        ca_params("Corp Root", Some(0)),
        ca_params("Corp Policy CA", None),
        ca_params("Corp Issuing CA", Some(0)),
    ]);
    replace(crt, key).await;
    ready_message(
        &client,
        &ns,
        "web",
        "CAInvalid",
        "certificate 3 of the CA bundle (CN=Corp Root) allows at most 0 CA certificates below it (pathLenConstraint 0), but 2 follow it",
    )
    .await;

    // An issuer that is no CA at all.
    let mut not_a_ca = ca_params("Corp Web Server", None);
    not_a_ca.is_ca = rcgen::IsCa::ExplicitNoCa;
    let (crt, key) = chain(vec![
        ca_params("Corp Root", None),
        not_a_ca,
        ca_params("Corp Issuing CA", Some(0)),
    ]);
    replace(crt, key).await;
    ready_message(
        &client,
        &ns,
        "web",
        "CAInvalid",
        "certificate 2 of the CA bundle (CN=Corp Web Server) is not a CA",
    )
    .await;

    assert!(
        Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt("web-tls")
            .await
            .unwrap()
            .is_none(),
        "nothing is issued under a hostile chain"
    );
}

#[tokio::test]
async fn a_name_constrained_ca_issues_names_inside_its_constraints_and_refuses_others() {
    let client = cluster().client().await.unwrap();
    let mut root = ca_params("Corp Root", Some(1));
    root.name_constraints = Some(rcgen::NameConstraints {
        permitted_subtrees: vec![rcgen::GeneralSubtree::DnsName(".corp.example.com".into())],
        excluded_subtrees: vec![],
    });
    let mut issuing = ca_params("Corp Issuing CA", Some(0));
    issuing.not_after = rcgen::date_time_ymd(2098, 1, 1);
    let (crt, key) = chain(vec![root, issuing]);
    let (op, ns) = operator_with_ca(
        &client,
        "constrained",
        Some(tls_secret("p12-operator-ca", &crt, &key)),
    )
    .await;
    apply_request_for(&ns, "web", "web.corp.example.com");
    apply_request_for(&ns, "evil", "evil.com");
    condition(&client, &ns, "web", "True", "Issued").await;
    let message = ready_message(&client, &ns, "evil", "PolicyViolation", "evil.com").await;
    assert_eq!(
        message,
        "dnsNames[0] \"evil.com\" is outside the name constraints of CA certificate 2 (CN=Corp Root): permitted dNSName .corp.example.com"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        secrets.get_opt("evil-tls").await.unwrap().is_none(),
        "no Secret for a name the CA may not certify"
    );
    let (_, metrics) = http_get(&op.admin_address().await, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "p12_keys_generated_total 1"),
        "one key, for web only: the refusal comes before any key is generated\n{metrics}"
    );

    // What was issued verifies under the constrained root with OpenSSL.
    let data = secrets.get("web-tls").await.unwrap().data.unwrap();
    let dir = cluster().work_dir.join("constrained-pki");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.crt"), &data["ca.crt"].0).unwrap();
    std::fs::write(dir.join("tls.crt"), &data["tls.crt"].0).unwrap();
    let out = Command::new("openssl")
        .current_dir(&dir)
        .args([
            "verify",
            "-CAfile",
            "ca.crt",
            "-untrusted",
            "tls.crt",
            "tls.crt",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
