//! A CertificateRequest becomes a signed PKCS#12 bundle in a Secret, checked with
//! real consumers (OpenSSL, keytool, a Java TLS server), and is kept valid.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use p12_operator::api::CertificateRequest;
use p12_operator::bundle::annotations::PASSWORD_FOR;
use support::{cluster, eventually, kubectl_apply, operator, run_with_password};

const WAIT: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> (Client, String) {
    operator();
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, prefix).await.unwrap();
    (client, ns)
}

fn apply(ns: &str, yaml: &str) {
    let out = kubectl_apply(yaml, ns);
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn condition(cr: &CertificateRequest, type_: &str) -> Option<(String, String, String)> {
    let st = cr.status.as_ref()?;
    let c = st.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the request is Ready for its current generation.
async fn ready(client: &Client, ns: &str, name: &str) -> CertificateRequest {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, &format!("{ns}/{name} to be Ready"), || {
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
            (c.status == "True" && c.observed_generation == cr.metadata.generation).then_some(cr)
        }
    })
    .await
}

/// Waits until the request's Ready condition is False with `reason`; returns the message.
async fn refused(client: &Client, ns: &str, name: &str, reason: &str) -> String {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    eventually(
        WAIT,
        &format!("{ns}/{name} to be refused with {reason}"),
        || {
            let api = api.clone();
            async move {
                let cr = api.get(name).await.ok()?;
                let (status, r, message) = condition(&cr, "Ready")?;
                (status == "False" && r == reason).then_some(message)
            }
        },
    )
    .await
}

async fn secret(client: &Client, ns: &str, name: &str) -> Secret {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

fn data(s: &Secret, key: &str) -> Vec<u8> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .unwrap_or_else(|| panic!("Secret has no {key}"))
}

fn password_of(s: &Secret) -> String {
    String::from_utf8(data(s, "keystore-password")).unwrap()
}

/// Writes the Secret's files to a fresh folder for the command-line consumers.
fn unpack(s: &Secret) -> PathBuf {
    let dir = cluster().control_plane().dir.join("bundles").join(format!(
        "{}-{}-{:06x}",
        s.namespace().unwrap(),
        s.name_any(),
        rand::random::<u32>() & 0xffffff
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (k, v) in s.data.clone().unwrap_or_default() {
        std::fs::write(dir.join(k), v.0).unwrap();
    }
    dir
}

fn p(dir: &Path, f: &str) -> String {
    dir.join(f).display().to_string()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Opens the keystore with `openssl pkcs12` (no `-legacy`) and checks it holds
/// one private key and `certs` certificates.
fn assert_openssl_opens(dir: &Path, password: &str, certs: usize) {
    let out = run_with_password(
        "openssl",
        &[
            "pkcs12",
            "-in",
            &p(dir, "keystore.p12"),
            "-passin",
            "env:P12_PASS",
            "-nodes",
        ],
        password,
    );
    let t = text(&out).replace(password, "<password>");
    assert!(
        out.status.success(),
        "openssl pkcs12 failed in {}: {}",
        dir.display(),
        t.lines().last().unwrap_or("")
    );
    assert_eq!(
        t.matches("-----BEGIN PRIVATE KEY-----").count(),
        1,
        "one key in {}",
        dir.display()
    );
    assert_eq!(
        t.matches("-----BEGIN CERTIFICATE-----").count(),
        certs,
        "certificates in {}",
        dir.display()
    );
    let wrong = run_with_password(
        "openssl",
        &[
            "pkcs12",
            "-in",
            &p(dir, "keystore.p12"),
            "-passin",
            "env:P12_PASS",
            "-nodes",
        ],
        "not-the-password",
    );
    assert!(
        !wrong.status.success(),
        "a wrong password must not open {}",
        dir.display()
    );
}

fn assert_keytool_lists(dir: &Path, password: &str, chain: usize) {
    let ks = run_with_password(
        "keytool",
        &[
            "-list",
            "-v",
            "-storetype",
            "PKCS12",
            "-keystore",
            &p(dir, "keystore.p12"),
            "-storepass:env",
            "P12_PASS",
        ],
        password,
    );
    let t = text(&ks);
    assert!(
        ks.status.success() && t.contains("PrivateKeyEntry"),
        "keytool keystore {}: {}",
        dir.display(),
        t.replace(password, "<password>")
    );
    assert!(
        t.contains(&format!("Certificate chain length: {chain}")),
        "chain length {chain} in {}",
        dir.display()
    );
    let ts = run_with_password(
        "keytool",
        &[
            "-list",
            "-v",
            "-storetype",
            "PKCS12",
            "-keystore",
            &p(dir, "truststore.p12"),
            "-storepass:env",
            "P12_PASS",
        ],
        password,
    );
    let t = text(&ts);
    assert!(
        ts.status.success() && t.contains("trustedCertEntry"),
        "keytool truststore {}",
        dir.display()
    );
}

fn assert_leaf_verifies(dir: &Path, names: &[&str], usages: &[&str]) {
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", &p(dir, "ca.crt"), &p(dir, "tls.crt")])
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl verify: {}", text(&out));
    let out = Command::new("openssl")
        .args([
            "x509",
            "-in",
            &p(dir, "tls.crt"),
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage,basicConstraints",
        ])
        .output()
        .unwrap();
    let t = text(&out);
    for n in names {
        assert!(t.contains(&format!("DNS:{n}")), "SAN {n} missing: {t}");
    }
    for u in usages {
        assert!(t.contains(u), "usage {u} missing: {t}");
    }
    assert!(t.contains("CA:FALSE"), "leaf must be CA:FALSE: {t}");
}

const CASES: [(&str, &str, &str); 12] = [
    ("ec256", "{algorithm: ECDSA, size: 256}", "Modern2023"),
    ("ec384", "{algorithm: ECDSA, size: 384}", "Modern2023"),
    ("rsa2048", "{algorithm: RSA, size: 2048}", "Modern2023"),
    ("rsa3072", "{algorithm: RSA, size: 3072}", "Modern2023"),
    ("rsa4096", "{algorithm: RSA, size: 4096}", "Modern2023"),
    ("ed25519", "{algorithm: Ed25519}", "Modern2023"),
    ("ec256-des", "{algorithm: ECDSA, size: 256}", "LegacyDES"),
    ("ec384-des", "{algorithm: ECDSA, size: 384}", "LegacyDES"),
    ("rsa2048-des", "{algorithm: RSA, size: 2048}", "LegacyDES"),
    ("rsa3072-des", "{algorithm: RSA, size: 3072}", "LegacyDES"),
    ("rsa4096-des", "{algorithm: RSA, size: 4096}", "LegacyDES"),
    ("ed25519-des", "{algorithm: Ed25519}", "LegacyDES"),
];

#[tokio::test]
async fn every_key_algorithm_and_profile_yields_a_bundle_that_openssl_keytool_and_java_accept() {
    let (client, ns) = setup("algs").await;
    for (name, key, profile) in CASES {
        apply(
            &ns,
            &format!(
                "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {{name: {name}}}\nspec:\n  secretName: {name}-tls\n  commonName: {name}\n  dnsNames: [localhost, {name}.{ns}.svc]\n  usages: [serverAuth, clientAuth]\n  privateKey: {key}\n  keystore: {{profile: {profile}}}\n"
            ),
        );
    }
    let mut bundles = Vec::new();
    for (name, _, profile) in CASES {
        let cr = ready(&client, &ns, name).await;
        let s = secret(&client, &ns, &format!("{name}-tls")).await;
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        let owner = &s.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("CertificateRequest", name, Some(true))
        );
        let st = cr.status.clone().unwrap();
        let annotations = s.annotations();
        assert_eq!(
            annotations.get("p12-operator.io/serial"),
            st.serial_number.as_ref()
        );
        assert_eq!(
            annotations.get("p12-operator.io/fingerprint-sha256"),
            st.fingerprint_sha256.as_ref()
        );
        assert_eq!(
            annotations
                .get("p12-operator.io/keystore-profile")
                .map(String::as_str),
            Some(profile)
        );
        assert_eq!(st.revision, Some(1));
        let dir = unpack(&s);
        let password = password_of(&s);
        assert!(
            password.len() >= 22,
            "generated passwords carry at least 128 bits"
        );
        assert_openssl_opens(&dir, &password, 2);
        assert_keytool_lists(&dir, &password, 2);
        assert_leaf_verifies(
            &dir,
            &["localhost", &format!("{name}.{ns}.svc")],
            &[
                "TLS Web Server Authentication",
                "TLS Web Client Authentication",
            ],
        );
        bundles.push((dir, password));
    }
    java_serves_each_keystore_to_a_client_that_trusts_only_ca_crt(&bundles);
}

/// Serves every keystore from one JVM (tests/java/TlsServer.java) and connects
/// with `openssl s_client` trusting only ca.crt and checking the host name.
fn java_serves_each_keystore_to_a_client_that_trusts_only_ca_crt(bundles: &[(PathBuf, String)]) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java/TlsServer.java");
    let mut cmd = Command::new("java");
    cmd.arg(&source);
    for (dir, password) in bundles {
        let pw_file = dir.join("password");
        std::fs::write(&pw_file, password).unwrap();
        cmd.arg(p(dir, "keystore.p12"))
            .arg(format!("@file:{}", pw_file.display()))
            .arg(p(dir, "port"));
    }
    let mut server = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for (dir, _) in bundles {
        let port = (0..600)
            .find_map(|_| {
                let t = std::fs::read_to_string(dir.join("port"))
                    .ok()
                    .filter(|t| !t.is_empty());
                if t.is_none() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                t
            })
            .unwrap_or_else(|| panic!("Java server did not start for {}", dir.display()));
        let port: u16 = port
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("Java could not serve {}: {port}", dir.display()));
        let mut client = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-CAfile",
                &p(dir, "ca.crt"),
            ])
            .args([
                "-servername",
                "localhost",
                "-verify_hostname",
                "localhost",
                "-verify_return_error",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = client.stdin.take();
        let out = {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut client.stdout.take().unwrap(), &mut s).unwrap();
            s
        };
        drop(stdin);
        let ok = client.wait().unwrap().success();
        assert!(
            ok && out.contains("Verify return code: 0 (ok)"),
            "handshake with Java for {}: {}",
            dir.display(),
            out.lines()
                .filter(|l| l.contains("Verify"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test]
async fn renewal_happens_at_renewal_time_and_rotation_follows_the_policy() {
    let (client, ns) = setup("renew").await;
    for (name, policy) in [("always", "Always"), ("never", "Never")] {
        apply(
            &ns,
            &format!(
                "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {{name: {name}}}\nspec:\n  secretName: {name}-tls\n  dnsNames: [{name}.example]\n  duration: 40s\n  renewBefore: 30s\n  privateKey: {{rotationPolicy: {policy}}}\n"
            ),
        );
    }
    let mut firsts = Vec::new();
    for name in ["always", "never"] {
        let first = ready(&client, &ns, name).await.status.unwrap();
        assert_eq!(first.revision, Some(1));
        let key = data(
            &secret(&client, &ns, &format!("{name}-tls")).await,
            "tls.key",
        );
        firsts.push((name, first, key));
    }
    for (name, first_status, first_key) in firsts {
        let renewal_time = first_status.renewal_time.clone().unwrap().0;
        let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
        let second = eventually(
            Duration::from_secs(40),
            &format!("{name} to be renewed"),
            || {
                let api = api.clone();
                async move {
                    api.get(name)
                        .await
                        .ok()
                        .filter(|cr| cr.status.as_ref().and_then(|s| s.revision) == Some(2))
                }
            },
        )
        .await;
        let st = second.status.clone().unwrap();
        assert_ne!(
            st.serial_number, first_status.serial_number,
            "renewal issues a new serial"
        );
        // The signer back-dates notBefore by one minute; the issuance moment is notBefore + 60 s.
        let issued_at = st.not_before.clone().unwrap().0 + jiff::SignedDuration::from_secs(60);
        let late = issued_at.duration_since(renewal_time).as_secs_f64();
        assert!(
            (-1.0..4.0).contains(&late),
            "renewed {late:.1}s after renewalTime {renewal_time}"
        );
        let second_key = data(
            &secret(&client, &ns, &format!("{name}-tls")).await,
            "tls.key",
        );
        if name == "always" {
            assert_ne!(
                first_key, second_key,
                "rotationPolicy Always makes a new key"
            );
        } else {
            assert_eq!(first_key, second_key, "rotationPolicy Never keeps the key");
        }
    }
}

#[tokio::test]
async fn a_deleted_or_tampered_secret_is_restored() {
    let (client, ns) = setup("restore").await;
    apply(
        &ns,
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: web}\nspec: {secretName: web-tls, dnsNames: [web.example]}\n",
    );
    let first = ready(&client, &ns, "web").await.status.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    // A damaged keystore is rebuilt around the same certificate.
    let patch = serde_json::json!({"data": {"keystore.p12": "AAAA"}});
    secrets
        .patch("web-tls", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let fixed = eventually(WAIT, "the keystore to be rebuilt", || {
        let secrets = secrets.clone();
        async move {
            secrets
                .get("web-tls")
                .await
                .ok()
                .filter(|s| data(s, "keystore.p12") != b"\0\0\0")
        }
    })
    .await;
    assert_openssl_opens(&unpack(&fixed), &password_of(&fixed), 2);
    assert_eq!(
        fixed.annotations().get("p12-operator.io/serial"),
        first.serial_number.as_ref(),
        "no re-issue for a damaged keystore"
    );

    // A certificate that is not ours is replaced by a new issuance.
    let patch = serde_json::json!({"data": {"tls.crt": "bm90IGEgY2VydGlmaWNhdGU="}});
    secrets
        .patch("web-tls", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let reissued = eventually(WAIT, "the certificate to be re-issued", || {
        let secrets = secrets.clone();
        async move {
            secrets
                .get("web-tls")
                .await
                .ok()
                .filter(|s| data(s, "tls.crt").starts_with(b"-----BEGIN"))
        }
    })
    .await;
    assert_ne!(
        reissued.annotations().get("p12-operator.io/serial"),
        first.serial_number.as_ref()
    );

    // A deleted Secret comes back.
    secrets
        .delete("web-tls", &DeleteParams::default())
        .await
        .unwrap();
    let back = eventually(WAIT, "the Secret to come back", || {
        let secrets = secrets.clone();
        async move { secrets.get_opt("web-tls").await.ok().flatten() }
    })
    .await;
    assert_openssl_opens(&unpack(&back), &password_of(&back), 2);
}

#[tokio::test]
async fn a_password_or_profile_change_re_encrypts_without_a_new_serial() {
    let (client, ns) = setup("password").await;
    let pw: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let pw_secret = |value: &str| Secret {
        metadata: ObjectMeta {
            name: Some("web-pw".into()),
            annotations: Some(BTreeMap::from([(PASSWORD_FOR.into(), "web".into())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    pw.create(&PostParams::default(), &pw_secret("first-Passw0rd"))
        .await
        .unwrap();
    apply(
        &ns,
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: web}\nspec:\n  secretName: web-tls\n  dnsNames: [web.example]\n  keystore: {passwordSecretRef: {name: web-pw, key: password}}\n",
    );
    let serial = ready(&client, &ns, "web")
        .await
        .status
        .unwrap()
        .serial_number;
    let s = secret(&client, &ns, "web-tls").await;
    assert!(
        s.data.as_ref().unwrap().get("keystore-password").is_none(),
        "a referenced password is not copied into the Secret"
    );
    assert_openssl_opens(&unpack(&s), "first-Passw0rd", 2);

    pw.replace(
        "web-pw",
        &PostParams::default(),
        &Secret {
            metadata: ObjectMeta {
                resource_version: pw.get("web-pw").await.unwrap().resource_version(),
                ..pw_secret("second-Passw0rd").metadata
            },
            ..pw_secret("second-Passw0rd")
        },
    )
    .await
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let s = eventually(WAIT, "the keystore to open with the new password", || {
        let secrets = secrets.clone();
        async move {
            let s = secrets.get("web-tls").await.ok()?;
            let dir = unpack(&s);
            let out = run_with_password(
                "openssl",
                &[
                    "pkcs12",
                    "-in",
                    &p(&dir, "keystore.p12"),
                    "-passin",
                    "env:P12_PASS",
                    "-nodes",
                ],
                "second-Passw0rd",
            );
            out.status.success().then_some(s)
        }
    })
    .await;
    assert_eq!(
        s.annotations().get("p12-operator.io/serial"),
        serial.as_ref(),
        "re-encryption keeps the certificate"
    );

    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"spec": {"keystore": {"profile": "LegacyDES"}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    ready(&client, &ns, "web").await;
    let s = secret(&client, &ns, "web-tls").await;
    assert_eq!(
        s.annotations()
            .get("p12-operator.io/keystore-profile")
            .map(String::as_str),
        Some("LegacyDES")
    );
    assert_eq!(
        s.annotations().get("p12-operator.io/serial"),
        serial.as_ref()
    );
    let dir = unpack(&s);
    let info = run_with_password(
        "openssl",
        &[
            "pkcs12",
            "-in",
            &p(&dir, "keystore.p12"),
            "-passin",
            "env:P12_PASS",
            "-info",
            "-nokeys",
            "-noout",
        ],
        "second-Passw0rd",
    );
    assert!(
        text(&info).contains("pbeWithSHA1And3-KeyTripleDES-CBC"),
        "LegacyDES keystore: {}",
        text(&info)
    );

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "Reencrypted"),
        "events: {reasons:?}"
    );
}

#[tokio::test]
async fn a_foreign_or_shared_secret_is_never_written() {
    let (client, ns) = setup("conflict").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("taken".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "tls.crt".to_string(),
            ByteString(b"precious".to_vec()),
        )])),
        ..Default::default()
    };
    let before = secrets
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    apply(
        &ns,
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: thief}\nspec: {secretName: taken, dnsNames: [a.example]}\n",
    );
    let msg = refused(&client, &ns, "thief", "SecretConflict").await;
    assert!(
        msg.contains("taken") && msg.contains("secretName"),
        "message says what to do: {msg}"
    );
    let after = secrets.get("taken").await.unwrap();
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "the foreign Secret was not touched"
    );
    assert_eq!(after.data, before.data);

    apply(
        &ns,
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: first}\nspec: {secretName: shared, dnsNames: [a.example]}\n",
    );
    ready(&client, &ns, "first").await;
    apply(
        &ns,
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: second}\nspec: {secretName: shared, dnsNames: [b.example]}\n",
    );
    refused(&client, &ns, "second", "SecretConflict").await;
    let shared = secrets.get("shared").await.unwrap();
    assert_eq!(shared.owner_references().len(), 1);
    assert_eq!(shared.owner_references()[0].name, "first");
    assert_eq!(
        shared
            .annotations()
            .get("p12-operator.io/request")
            .map(String::as_str),
        Some("first")
    );
}

#[tokio::test]
async fn password_problems_are_reported_and_nothing_is_written_until_fixed() {
    let (client, ns) = setup("pwbad").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cr = |name: &str, key: &str| {
        format!(
            "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {{name: {name}}}\nspec:\n  secretName: {name}-tls\n  dnsNames: [a.example]\n  keystore: {{passwordSecretRef: {{name: {name}-pw, key: {key}}}}}\n"
        )
    };
    let pw = |name: &str, key: &str, value: &[u8], consent: Option<&str>| Secret {
        metadata: ObjectMeta {
            name: Some(format!("{name}-pw")),
            annotations: consent
                .map(|c| BTreeMap::from([(PASSWORD_FOR.to_string(), c.to_string())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(value.to_vec()),
        )])),
        ..Default::default()
    };
    // Missing, present without consent, present with consent for another
    // request: one refusal, one message, nothing learnt about the Secret.
    let not_allowed = |name: &str| {
        format!(
            "keystore.passwordSecretRef names Secret {name}-pw: it does not exist or does not allow this request to use it; create it with the annotation p12-operator.io/password-for: {name} (or \"*\")"
        )
    };
    secrets
        .create(
            &PostParams::default(),
            &pw("unasked", "password", b"db-Passw0rd", None),
        )
        .await
        .unwrap();
    secrets
        .create(
            &PostParams::default(),
            &pw("other", "password", b"x", Some("unasked, other-app")),
        )
        .await
        .unwrap();
    for name in ["missing", "unasked", "other"] {
        apply(&ns, &cr(name, "password"));
        let msg = refused(&client, &ns, name, "PasswordSecretNotAllowed").await;
        assert_eq!(msg, not_allowed(name));
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let selector = format!("involvedObject.name={name}");
        eventually(
            WAIT,
            &format!("{name}: an Event with the same message"),
            || {
                let (events, selector, msg) = (events.clone(), selector.clone(), msg.clone());
                async move {
                    let list = events
                        .list(&ListParams::default().fields(&selector))
                        .await
                        .ok()?;
                    list.items
                        .iter()
                        .any(|e| {
                            e.reason.as_deref() == Some("PasswordSecretNotAllowed")
                                && e.message.as_deref() == Some(msg.as_str())
                        })
                        .then_some(())
                }
            },
        )
        .await;
    }

    // After consent the Secret's owner agreed: its problems are described.
    secrets
        .create(
            &PostParams::default(),
            &pw("nokey", "other", b"x", Some("*")),
        )
        .await
        .unwrap();
    apply(&ns, &cr("nokey", "password"));
    refused(&client, &ns, "nokey", "PasswordKeyNotFound").await;
    secrets
        .create(
            &PostParams::default(),
            &pw("empty", "password", b"", Some("empty")),
        )
        .await
        .unwrap();
    apply(&ns, &cr("empty", "password"));
    refused(&client, &ns, "empty", "PasswordEmpty").await;
    secrets
        .create(
            &PostParams::default(),
            &pw(
                "binary",
                "password",
                &[0xff, 0xfe, 0x00],
                Some(" a , binary "),
            ),
        )
        .await
        .unwrap();
    apply(&ns, &cr("binary", "password"));
    refused(&client, &ns, "binary", "PasswordInvalid").await;
    // No key was generated for a refused request: nothing was written.
    for name in ["missing", "unasked", "other", "nokey", "empty", "binary"] {
        assert!(
            secrets
                .get_opt(&format!("{name}-tls"))
                .await
                .unwrap()
                .is_none(),
            "{name}: nothing written"
        );
    }

    // Consent given later (the annotation added) is noticed without waiting
    // for a back-off, as is the missing Secret created with consent.
    secrets
        .patch(
            "unasked-pw",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {PASSWORD_FOR: "unasked"}}}),
            ),
        )
        .await
        .unwrap();
    ready(&client, &ns, "unasked").await;
    secrets
        .create(
            &PostParams::default(),
            &pw("missing", "password", b"now-it-exists", Some("*")),
        )
        .await
        .unwrap();
    ready(&client, &ns, "missing").await;
    // Consent for others is still no consent.
    let msg = refused(&client, &ns, "other", "PasswordSecretNotAllowed").await;
    assert_eq!(msg, not_allowed("other"));
    assert!(secrets.get_opt("other-tls").await.unwrap().is_none());

    // The reference cannot leave the namespace: the schema has no such field.
    let out = kubectl_apply(
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: escape}\nspec:\n  secretName: escape-tls\n  dnsNames: [a.example]\n  keystore: {passwordSecretRef: {name: pw, key: password, namespace: kube-system}}\n",
        &ns,
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unknown field \"spec.keystore.passwordSecretRef.namespace\""),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn invalid_and_oversized_requests_are_refused_with_a_reason() {
    let (client, ns) = setup("invalid").await;
    let rejected = |spec: &str| {
        let out = kubectl_apply(
            &format!(
                "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {{name: bad}}\nspec: {spec}\n"
            ),
            &ns,
        );
        assert!(!out.status.success(), "accepted: {spec}");
        text(&out)
    };
    assert!(rejected("{secretName: s}").contains("give at least one of commonName, dnsNames"));
    let many: Vec<String> = (0..101).map(|i| format!("n{i}.example")).collect();
    assert!(
        rejected(&format!(
            "{{secretName: s, dnsNames: [{}]}}",
            many.join(", ")
        ))
        .contains("must have at most 100 items")
    );
    assert!(
        rejected(&format!(
            "{{secretName: s, dnsNames: [{}]}}",
            "a".repeat(300)
        ))
        .contains("Too long")
    );
    assert!(
        rejected("{secretName: s, ipAddresses: ['999.1.1.1']}")
            .contains("every ipAddresses entry must be an IPv4 or IPv6 address")
    );
    assert!(
        rejected("{secretName: s, dnsNames: [a.b], duration: 10h, renewBefore: 20h}")
            .contains("renewBefore must be shorter than duration")
    );
    assert!(
        rejected("{secretName: s, dnsNames: [a.b], privateKey: {algorithm: RSA, size: 1024}}")
            .contains("size must be 256 or 384 for ECDSA")
    );
    assert!(
        rejected(&format!(
            "{{secretName: s, commonName: {}}}",
            "c".repeat(65)
        ))
        .contains("Too long")
    );
    assert!(rejected("{secretName: 'Not_A_Name', dnsNames: [a.b]}").contains("spec.secretName"));
    // What would make the API server refuse the Secret is refused up front.
    let long_name = kubectl_apply(
        &format!(
            "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {{name: {}}}\nspec: {{secretName: s, dnsNames: [a.b]}}\n",
            "n".repeat(64)
        ),
        &ns,
    );
    assert!(
        !long_name.status.success(),
        "a 64-character name was accepted"
    );
    assert!(
        text(&long_name).contains("metadata.name must be at most 63 characters"),
        "{}",
        text(&long_name)
    );
    assert!(
        rejected("{secretName: s, dnsNames: [a.b], secretTemplate: {labels: {'bad key!': x}}}")
            .contains("must be a valid label key")
    );
    assert!(
        rejected("{secretName: s, dnsNames: [a.b], secretTemplate: {labels: {team: 'two words'}}}")
            .contains("must be a valid label value")
    );
    assert!(
        rejected(&format!(
            "{{secretName: s, dnsNames: [a.b], secretTemplate: {{labels: {{team: {}}}}}}}",
            "v".repeat(64)
        ))
        .contains("Too long")
    );
    let fine = kubectl_apply(
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: labelled}\nspec: {secretName: labelled-tls, dnsNames: [a.b], secretTemplate: {labels: {'example.com/team': shop, empty: ''}, annotations: {'example.com/note': 'any text at all'}}}\n",
        &ns,
    );
    assert!(fine.status.success(), "{}", text(&fine));

    // What only the operator can judge: a status reason and an Event, nothing written.
    apply(
        &ns,
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: dots}\nspec: {secretName: dots-tls, dnsNames: ['bad..name']}\n",
    );
    let msg = refused(&client, &ns, "dots", "InvalidRequest").await;
    assert!(msg.contains("dnsNames[0]"), "{msg}");
    apply(
        &ns,
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: forever}\nspec: {secretName: forever-tls, dnsNames: [a.b], duration: 100000h}\n",
    );
    refused(&client, &ns, "forever", "PolicyViolation").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(secrets.get_opt("dots-tls").await.unwrap().is_none());
    assert!(secrets.get_opt("forever-tls").await.unwrap().is_none());
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let ev = events.list(&ListParams::default()).await.unwrap().items;
    assert!(
        ev.iter()
            .any(|e| e.reason.as_deref() == Some("InvalidRequest")
                && e.type_.as_deref() == Some("Warning"))
    );
}

#[tokio::test]
async fn deleting_the_request_deletes_its_secret() {
    let (client, ns) = setup("gc").await;
    apply(
        &ns,
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: web}\nspec: {secretName: web-tls, dnsNames: [web.example]}\n",
    );
    ready(&client, &ns, "web").await;
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
    api.delete("web", &DeleteParams::background())
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "the Secret to be garbage-collected", || {
        let secrets = secrets.clone();
        async move { matches!(secrets.get_opt("web-tls").await, Ok(None)).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn keys_and_passwords_never_appear_in_logs_events_or_status() {
    let (client, ns) = setup("hygiene").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let pw = Secret {
        metadata: ObjectMeta {
            name: Some("pw".into()),
            annotations: Some(BTreeMap::from([(PASSWORD_FOR.into(), "ref".into())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_string(),
            ByteString(b"Hygiene-Check-Passw0rd".to_vec()),
        )])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &pw).await.unwrap();
    apply(
        &ns,
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: gen}\nspec: {secretName: gen-tls, dnsNames: [a.example]}\n",
    );
    apply(
        &ns,
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: ref}\nspec: {secretName: ref-tls, dnsNames: [a.example], keystore: {passwordSecretRef: {name: pw, key: password}}}\n",
    );
    ready(&client, &ns, "gen").await;
    ready(&client, &ns, "ref").await;

    let mut needles: Vec<String> = vec!["Hygiene-Check-Passw0rd".into()];
    for name in ["gen-tls", "ref-tls"] {
        let s = secret(&client, &ns, name).await;
        if let Some(p) = s.data.as_ref().unwrap().get("keystore-password") {
            needles.push(String::from_utf8(p.0.clone()).unwrap());
        }
        let key_pem = String::from_utf8(data(&s, "tls.key")).unwrap();
        let body: String = key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        needles.push(body[..40].to_string());
        use base64::Engine;
        let ks = base64::engine::general_purpose::STANDARD.encode(data(&s, "keystore.p12"));
        needles.push(ks[..40].to_string());
        needles.push(
            base64::engine::general_purpose::STANDARD.encode(key_pem.as_bytes())[..40].to_string(),
        );
    }
    let log = operator().logs();
    assert!(
        log.contains("issued certificate"),
        "the operator logs at trace level"
    );
    let events = serde_json::to_string(
        &Api::<Event>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items,
    )
    .unwrap();
    let status = serde_json::to_string(
        &Api::<CertificateRequest>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|c| c.status.clone())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for (i, needle) in needles.iter().enumerate() {
        assert!(
            !log.contains(needle.as_str()),
            "secret #{i} found in the operator log {}",
            operator().log.display()
        );
        assert!(
            !events.contains(needle.as_str()),
            "secret #{i} found in Events"
        );
        assert!(
            !status.contains(needle.as_str()),
            "secret #{i} found in status"
        );
    }
}
