//! A full automatic CA rotation, time compressed (a 10-minute root rotated at a
//! tenth of its life, 30 s of overlap), with live traffic all the way: a TLS
//! server serving the issued keystore (reloading when its Secret changes), an
//! OpenSSL client trusting the distributed `ca.crt` and a Java client trusting
//! the distributed passwordless `truststore.p12`, both read again before every
//! handshake. Every phase is seen — one root, overlap (two roots), switch,
//! re-issue from the new CA, the old root gone — and no handshake fails.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use p12_operator::api::CertificateRequest;
use p12_operator::keystore::read_keystore;
use p12_operator::sensitive::SecretString;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::{Operator, cluster, eventually, kubectl_apply};

const LABEL: &str = "rotation-test.p12-operator.io/bundle";
const CA: &str = "p12-operator-ca";

fn server_config(secret: &Secret) -> Arc<ServerConfig> {
    let data = secret.data.clone().unwrap();
    let password =
        SecretString::from(String::from_utf8(data["keystore-password"].0.clone()).unwrap());
    let store = read_keystore(&data["keystore.p12"].0, &password).unwrap();
    let entry = store.key_entries.into_iter().next().unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                entry.chain.into_iter().map(CertificateDer::from).collect(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(entry.pkcs8.expose().to_vec())),
            )
            .unwrap(),
    )
}

/// A TLS server on 127.0.0.1 answering every handshake with the current config.
fn serve(config: Arc<Mutex<Arc<ServerConfig>>>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(config.lock().unwrap().clone());
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(stream).await {
                        use tokio::io::AsyncWriteExt;
                        let _ = tls.write_all(b"hello\n").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
    });
    addr
}

/// The workload image's Java program (`connect` mode), compiled once.
fn java_client(dir: &Path) -> PathBuf {
    let src = p12_testenv::tools::repo_root().join("crates/p12-testenv/images/workload");
    let out = dir.join("classes");
    let sources: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "java"))
        .collect();
    let status = Command::new("javac")
        .arg("-d")
        .arg(&out)
        .args(&sources)
        .status()
        .unwrap();
    assert!(status.success(), "javac of the workload program");
    out
}

fn openssl_handshake(port: u16, ca_file: &Path) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost", "-verify_hostname", "localhost"])
        .arg("-CAfile")
        .arg(ca_file)
        .arg("-verify_return_error")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && text.contains("Verify return code: 0 (ok)") {
        Ok(())
    } else {
        Err(format!("{}{}", text, String::from_utf8_lossy(&out.stderr)))
    }
}

fn java_handshake(classes: &Path, port: u16, truststore: &Path, pw: &Path) -> Result<(), String> {
    let out = Command::new("java")
        .arg("-cp")
        .arg(classes)
        .args(["Workload", "connect", "--host", "localhost", "--port"])
        .arg(port.to_string())
        .arg("--truststore")
        .arg(truststore)
        .arg("--truststore-password-file")
        .arg(pw)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// SHA-256 of a PEM certificate's DER (the first block), hex.
fn fingerprint(pem_bytes: &[u8]) -> String {
    let der = pem::parse(pem_bytes).unwrap().into_contents();
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&der))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// One CA, one root.
    Before,
    /// The next CA is staged; clients are given both roots.
    Overlap,
    /// The next CA issues; the server still serves a certificate of the old one.
    Switched,
    /// The server serves a certificate of the new CA; both roots trusted.
    Reissued,
    /// The old root has left the bundle.
    Retired,
}

#[tokio::test]
async fn an_automatic_rotation_keeps_every_handshake_working_through_every_phase() {
    let op = Operator::start(
        "rotation",
        &[
            "--ca-duration",
            "10m",
            "--ca-rotate-at",
            "0.1",
            "--ca-overlap",
            "30s",
            "--ca-rewrites-per-second",
            "50",
            "--trust-bundle-namespace-selector",
            &format!("{LABEL}=true"),
        ],
    );
    let client: Client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "rotation").await.unwrap();
    let patch = serde_json::json!({"metadata": {"labels": {LABEL: "true"}}});
    Api::<Namespace>::all(client.clone())
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let out = kubectl_apply(
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: web}\nspec:\n  secretName: web-tls\n  dnsNames: [localhost]\n",
        &ns,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let ca_secrets: Api<Secret> = Api::namespaced(client.clone(), &op.namespace);
    let first = eventually(Duration::from_secs(60), "web-tls issued", || {
        let secrets = secrets.clone();
        async move { secrets.get_opt("web-tls").await.ok().flatten() }
    })
    .await;
    let old_ca = fingerprint(&ca_secrets.get(CA).await.unwrap().data.unwrap()["tls.crt"].0);

    // The workload: serves what the Secret holds, reloading when it changes.
    let config = Arc::new(Mutex::new(server_config(&first)));
    let port = serve(config.clone()).port();
    let served_by_old = Arc::new(Mutex::new(true));
    {
        let (secrets, config, old_ca, served_by_old) = (
            secrets.clone(),
            config.clone(),
            old_ca.clone(),
            served_by_old.clone(),
        );
        let mut version = first.resource_version();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let Ok(s) = secrets.get("web-tls").await else {
                    continue;
                };
                if s.resource_version() != version {
                    version = s.resource_version();
                    *config.lock().unwrap() = server_config(&s);
                    // Which CA signed what is served now, as the operator annotates it.
                    let by_old = s.annotations().get("p12-operator.io/ca-fingerprint-sha256")
                        == Some(&old_ca);
                    *served_by_old.lock().unwrap() = by_old;
                }
            }
        });
    }

    let dir = tempfile::tempdir().unwrap();
    let classes = java_client(dir.path());
    let (ca_file, ts_file, pw_file) = (
        dir.path().join("ca.crt"),
        dir.path().join("truststore.p12"),
        dir.path().join("password"),
    );
    std::fs::write(&pw_file, "not-needed").unwrap();
    let mut seen: BTreeMap<Phase, (u32, u32)> = BTreeMap::new();
    let mut failures = Vec::new();
    let started = Instant::now();
    let mut round = 0u32;
    let mut phase = Phase::Before;
    while phase != Phase::Retired || seen.get(&Phase::Retired).map_or(0, |c| c.1) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the rotation did not finish in 4 minutes; phases seen: {seen:?}"
        );
        round += 1;
        // The phase, from the CA Secret, the distributed bundle and what the
        // server serves. (With a root this short-lived, the next rotation may
        // start right after the first one ends: phases follow the first root.)
        let current = fingerprint(&ca_secrets.get(CA).await.unwrap().data.unwrap()["tls.crt"].0);
        let Some(bundle) = configmaps.get_opt("p12-operator-ca-bundle").await.unwrap() else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let roots: Vec<String> = bundle
            .annotations()
            .get("p12-operator.io/trust-bundle-roots")
            .map(|r| r.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        let old_trusted = roots.contains(&old_ca);
        let by_old = *served_by_old.lock().unwrap();
        phase = phase.max(
            match (current == old_ca, old_trusted, by_old, roots.len()) {
                (true, true, _, 1) => Phase::Before,
                (true, true, _, _) => Phase::Overlap,
                (false, true, true, _) => Phase::Switched,
                (false, true, false, _) => Phase::Reissued,
                (false, false, false, _) => Phase::Retired,
                _ => phase,
            },
        );
        // The clients: the distributed trust, read again before each handshake.
        std::fs::write(&ca_file, bundle.data.as_ref().unwrap()["ca.crt"].as_bytes()).unwrap();
        std::fs::write(
            &ts_file,
            &bundle.binary_data.as_ref().unwrap()["truststore.p12"].0,
        )
        .unwrap();
        let entry = seen.entry(phase).or_default();
        match openssl_handshake(port, &ca_file) {
            Ok(()) => entry.0 += 1,
            Err(e) => failures.push(format!("{phase:?}, OpenSSL: {e}")),
        }
        if round % 3 == 0 || phase != Phase::Overlap {
            match java_handshake(&classes, port, &ts_file, &pw_file) {
                Ok(()) => seen.entry(phase).or_default().1 += 1,
                Err(e) => failures.push(format!("{phase:?}, Java: {e}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "rotation done in {:.0?}; handshakes (OpenSSL, Java) per phase: {seen:?}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} handshakes failed: {failures:#?}",
        failures.len()
    );
    for p in [
        Phase::Before,
        Phase::Overlap,
        Phase::Reissued,
        Phase::Retired,
    ] {
        let (o, j) = seen.get(&p).copied().unwrap_or_default();
        assert!(o + j > 0, "no handshake in phase {p:?}: {seen:?}");
    }
    let cr = requests.get("web").await.unwrap();
    let ready = cr
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True", "{}", ready.message);
    let final_ca = fingerprint(&ca_secrets.get(CA).await.unwrap().data.unwrap()["tls.crt"].0);
    assert_ne!(final_ca, old_ca, "a new root issues");
}
