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

/// What one round saw, to tell the phase.
struct Seen {
    /// The CA Secret's CA is still the first one.
    first_issues: bool,
    /// `<ca>-next` exists.
    next: bool,
    /// `<ca>-previous` exists.
    previous: bool,
    /// The server serves a certificate of the first CA.
    served_by_first: bool,
    /// The first CA's root is in the distributed bundle, and how many roots it has.
    first_root_trusted: bool,
    roots: usize,
}

/// A namespace with a request for `localhost`, a server serving its Secret
/// (reloading on change), and clients using the distributed trust.
struct Rig {
    ns: String,
    ca_secrets: Api<Secret>,
    configmaps: Api<ConfigMap>,
    requests: Api<CertificateRequest>,
    first_ca: String,
    first_root: String,
    port: u16,
    served_by_first: Arc<Mutex<bool>>,
    dir: tempfile::TempDir,
    classes: PathBuf,
}

impl Rig {
    async fn start(client: &Client, op: &Operator, ns: String) -> Rig {
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
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let ca_secrets: Api<Secret> = Api::namespaced(client.clone(), &op.namespace);
        let first = eventually(Duration::from_secs(60), "web-tls issued", || {
            let secrets = secrets.clone();
            async move { secrets.get_opt("web-tls").await.ok().flatten() }
        })
        .await;
        let ca_crt = ca_secrets.get(CA).await.unwrap().data.unwrap()["tls.crt"]
            .0
            .clone();
        let first_ca = fingerprint(&ca_crt);
        let first_root = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            pem::parse_many(&ca_crt).unwrap().last().unwrap().contents(),
        ));
        // The workload: serves what the Secret holds, reloading when it changes.
        let config = Arc::new(Mutex::new(server_config(&first)));
        let port = serve(config.clone()).port();
        let served_by_first = Arc::new(Mutex::new(true));
        {
            let (secrets, first_ca, served) =
                (secrets.clone(), first_ca.clone(), served_by_first.clone());
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
                        *served.lock().unwrap() =
                            s.annotations().get("p12-operator.io/ca-fingerprint-sha256")
                                == Some(&first_ca);
                    }
                }
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let classes = java_client(dir.path());
        std::fs::write(dir.path().join("password"), "not-needed").unwrap();
        Rig {
            configmaps: Api::namespaced(client.clone(), &ns),
            requests: Api::namespaced(client.clone(), &ns),
            ns,
            ca_secrets,
            first_ca,
            first_root,
            port,
            served_by_first,
            dir,
            classes,
        }
    }

    /// Handshakes with both clients until `phase_of` says `Retired` (twice
    /// for Java); returns the handshakes per phase, failing on any failure.
    async fn run(&self, phase_of: impl Fn(&Seen) -> Option<Phase>) -> BTreeMap<Phase, (u32, u32)> {
        let (ca_file, ts_file, pw_file) = (
            self.dir.path().join("ca.crt"),
            self.dir.path().join("truststore.p12"),
            self.dir.path().join("password"),
        );
        let mut seen: BTreeMap<Phase, (u32, u32)> = BTreeMap::new();
        let mut failures = Vec::new();
        let started = Instant::now();
        let mut round = 0u32;
        let mut phase = Phase::Before;
        while phase != Phase::Retired || seen.get(&Phase::Retired).map_or(0, |c| c.1) < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "the rotation did not finish in 4 minutes in {}; phases seen: {seen:?}",
                self.ns
            );
            round += 1;
            let ca = &self.ca_secrets;
            let current = fingerprint(&ca.get(CA).await.unwrap().data.unwrap()["tls.crt"].0);
            let next = ca.get_opt(&format!("{CA}-next")).await.unwrap().is_some();
            let previous = ca
                .get_opt(&format!("{CA}-previous"))
                .await
                .unwrap()
                .is_some();
            let Some(bundle) = self
                .configmaps
                .get_opt("p12-operator-ca-bundle")
                .await
                .unwrap()
            else {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            };
            let roots: Vec<String> = bundle
                .annotations()
                .get("p12-operator.io/trust-bundle-roots")
                .map(|r| r.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            let now = Seen {
                first_issues: current == self.first_ca,
                next,
                previous,
                served_by_first: *self.served_by_first.lock().unwrap(),
                first_root_trusted: roots.contains(&self.first_root),
                roots: roots.len(),
            };
            phase = phase.max(phase_of(&now).unwrap_or(phase));
            // The clients: the distributed trust, read again before each handshake.
            std::fs::write(&ca_file, bundle.data.as_ref().unwrap()["ca.crt"].as_bytes()).unwrap();
            std::fs::write(
                &ts_file,
                &bundle.binary_data.as_ref().unwrap()["truststore.p12"].0,
            )
            .unwrap();
            match openssl_handshake(self.port, &ca_file) {
                Ok(()) => seen.entry(phase).or_default().0 += 1,
                Err(e) => failures.push(format!("{phase:?}, OpenSSL: {e}")),
            }
            if round % 3 == 0 || phase != Phase::Overlap {
                match java_handshake(&self.classes, self.port, &ts_file, &pw_file) {
                    Ok(()) => seen.entry(phase).or_default().1 += 1,
                    Err(e) => failures.push(format!("{phase:?}, Java: {e}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "{}: rotation done in {:.0?}; handshakes (OpenSSL, Java) per phase: {seen:?}",
            self.ns,
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
        let cr = self.requests.get("web").await.unwrap();
        let ready = cr
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True", "{}", ready.message);
        seen
    }
}

/// A namespace for the operator of one test, and the namespace it watches.
async fn namespaces(client: &Client, label: &str) -> String {
    let system = format!("p12-system-{label}");
    let ns =
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": system}});
    let _ = Api::<Namespace>::all(client.clone())
        .create(&Default::default(), &serde_json::from_value(ns).unwrap())
        .await;
    cluster().namespace(client, label).await.unwrap()
}

#[tokio::test]
async fn an_automatic_rotation_keeps_every_handshake_working_through_every_phase() {
    let client: Client = cluster().client().await.unwrap();
    let ns = namespaces(&client, "rotation").await;
    let op = Operator::start(
        "rotation",
        &[
            "--watch-namespace",
            &ns,
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
    let rig = Rig::start(&client, &op, ns).await;
    // (With a root this short-lived, the next rotation may start right after
    // the first ends: the phases follow the first root.)
    rig.run(
        |s| match (s.first_issues, s.first_root_trusted, s.served_by_first) {
            (true, true, _) if s.roots == 1 => Some(Phase::Before),
            (true, true, _) => Some(Phase::Overlap),
            (false, true, true) => Some(Phase::Switched),
            (false, true, false) => Some(Phase::Reissued),
            (false, false, false) => Some(Phase::Retired),
            _ => None,
        },
    )
    .await;
    let final_ca = fingerprint(&rig.ca_secrets.get(CA).await.unwrap().data.unwrap()["tls.crt"].0);
    assert_ne!(final_ca, rig.first_ca, "a new root issues");
}

/// A CA certificate that may sign certificates, valid for a day around now.
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
    let now = time_now();
    params.not_before = now - ::time::Duration::hours(1);
    params.not_after = now + ::time::Duration::days(1);
    params
}

fn time_now() -> ::time::OffsetDateTime {
    ::time::OffsetDateTime::now_utc()
}

/// A Secret holding a CA: `tls.crt` (the CA, then the root) and `tls.key`.
fn ca_secret(name: &str, crt: String, key: String, switch_at: Option<String>) -> Secret {
    let mut data = BTreeMap::new();
    data.insert(
        "tls.crt".to_string(),
        k8s_openapi::ByteString(crt.into_bytes()),
    );
    data.insert(
        "tls.key".to_string(),
        k8s_openapi::ByteString(key.into_bytes()),
    );
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            annotations: switch_at.map(|t| [("p12-operator.io/switch-at".to_string(), t)].into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_staged_intermediate_of_your_own_pki_takes_over_without_a_failed_handshake() {
    let client: Client = cluster().client().await.unwrap();
    let ns = namespaces(&client, "intermediate").await;
    // Your PKI: one root, the intermediate the operator issues from today and
    // the one that takes over.
    let root_key = rcgen::KeyPair::generate().unwrap();
    let root_params = ca_params("Corp Root", Some(1));
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = rcgen::Issuer::new(root_params, root_key);
    let intermediate = |cn: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = ca_params(cn, Some(0)).signed_by(&key, &issuer).unwrap();
        (format!("{}{}", cert.pem(), root.pem()), key.serialize_pem())
    };
    let (today_crt, today_key) = intermediate("Corp Issuing CA 1");
    let (next_crt, next_key) = intermediate("Corp Issuing CA 2");
    let system = format!("p12-system-intermediate");
    let cas: Api<Secret> = Api::namespaced(client.clone(), &system);
    cas.create(
        &Default::default(),
        &ca_secret(CA, today_crt, today_key, None),
    )
    .await
    .unwrap();
    let op = Operator::start(
        "intermediate",
        &[
            "--watch-namespace",
            &ns,
            "--ca-create=false",
            "--ca-overlap",
            "20s",
            "--ca-rewrites-per-second",
            "50",
            "--trust-bundle-namespace-selector",
            &format!("{LABEL}=true"),
        ],
    );
    let rig = Rig::start(&client, &op, ns).await;
    // Staged by you a few seconds into the traffic, switching 20 seconds later.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let switch_at = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(20)).to_string();
        cas.create(
            &Default::default(),
            &ca_secret(&format!("{CA}-next"), next_crt, next_key, Some(switch_at)),
        )
        .await
        .unwrap();
    });
    // One root throughout: the bundle never changes, the issuing CA does.
    rig.run(|s| {
        assert_eq!(s.roots, 1, "the same root all along");
        match (s.first_issues, s.next, s.previous, s.served_by_first) {
            (true, false, false, _) => Some(Phase::Before),
            (true, true, _, _) => Some(Phase::Overlap),
            (false, _, _, true) => Some(Phase::Switched),
            (false, _, true, false) => Some(Phase::Reissued),
            (false, false, false, false) => Some(Phase::Retired),
            _ => None,
        }
    })
    .await;
    let now_issuing = rig.ca_secrets.get(CA).await.unwrap();
    let crt = String::from_utf8(now_issuing.data.unwrap()["tls.crt"].0.clone()).unwrap();
    let first = pem::parse_many(&crt).unwrap();
    let cn = p12_operator::pki::parse_certificate_info(first[0].contents())
        .unwrap()
        .subject;
    assert!(cn.contains("Corp Issuing CA 2"), "{cn}");
}
