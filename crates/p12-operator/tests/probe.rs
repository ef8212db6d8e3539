//! Verification probes against real TLS servers (Rust and Java) that load the
//! issued keystore, behind Services whose EndpointSlices point at test hosts in
//! a network namespace. Probe pods run through the local pod runner.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams};
use kube::{Client, ResourceExt};
use p12_operator::api::CertificateRequest;
use p12_operator::keystore::read_keystore;
use p12_operator::sensitive::SecretString;
use p12_testenv::netns::TestNet;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::{Operator, cluster, eventually, kubectl_apply};

const WAIT: Duration = Duration::from_secs(90);

/// The CA this test binary's operator uses: made here so the tests can also
/// sign an expired certificate under it.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
}

fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "probe test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(10);
        params.not_after = now + time::Duration::days(30);
        let cert = params.self_signed(&key).unwrap();
        let ca_secret = Secret {
            metadata: ObjectMeta {
                name: Some("p12-operator-ca".into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_string(), ByteString(cert.pem().into_bytes())),
                (
                    "tls.key".to_string(),
                    ByteString(key.serialize_pem().into_bytes()),
                ),
            ])),
            ..Default::default()
        };
        let cp = cluster().control_plane();
        let out = cp
            .kubectl()
            .args(["create", "namespace", "p12-system-probe"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = cp.dir.join("probe-ca.json");
        std::fs::write(&path, serde_json::to_vec(&ca_secret).unwrap()).unwrap();
        let out = cp
            .kubectl()
            .args(["create", "-n", "p12-system-probe", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestCa {
            issuer: Issuer::new(params, key),
        }
    })
}

fn operator() -> &'static Operator {
    static OP: OnceLock<Operator> = OnceLock::new();
    OP.get_or_init(|| {
        test_ca();
        Operator::start("probe", &["--probe-grace", "4s", "--probe-network-policy"])
    })
}

fn net() -> &'static TestNet {
    static NET: OnceLock<TestNet> = OnceLock::new();
    NET.get_or_init(|| {
        TestNet::create(0).expect("a test network namespace (needs root and iproute2)")
    })
}

/// A namespace that enforces the `restricted` Pod Security Standard.
async fn restricted_namespace(client: &Client, prefix: &str) -> String {
    let ns = cluster().namespace(client, prefix).await.unwrap();
    let patch = serde_json::json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    Api::<Namespace>::all(client.clone())
        .patch(&ns, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    ns
}

/// A TLS server whose certificate can be swapped, as a workload that reloads.
#[derive(Clone)]
struct RustServer {
    config: Arc<Mutex<Arc<ServerConfig>>>,
}

fn server_config(key_pkcs8: Vec<u8>, chain: Vec<Vec<u8>>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = chain.into_iter().map(CertificateDer::from).collect();
    Arc::new(
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                certs,
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8)),
            )
            .unwrap(),
    )
}

/// Loads `keystore.p12` from the Secret with its `keystore-password`, as a Rust workload would.
fn config_from_secret(s: &Secret) -> Arc<ServerConfig> {
    let data = s.data.clone().unwrap();
    let password =
        SecretString::from(String::from_utf8(data["keystore-password"].0.clone()).unwrap());
    let store = read_keystore(&data["keystore.p12"].0, &password).unwrap();
    let entry = store.key_entries.into_iter().next().unwrap();
    server_config(entry.pkcs8.expose().to_vec(), entry.chain)
}

impl RustServer {
    fn start(addr: SocketAddr, config: Arc<ServerConfig>) -> RustServer {
        let listener = net().bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let server = RustServer {
            config: Arc::new(Mutex::new(config)),
        };
        let shared = server.config.clone();
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
                    let acceptor = tokio_rustls::TlsAcceptor::from(shared.lock().unwrap().clone());
                    tokio::spawn(async move {
                        if let Ok(mut tls) = acceptor.accept(stream).await {
                            use tokio::io::AsyncWriteExt;
                            let _ = tls.write_all(b"hello from rust\n").await;
                            let _ = tls.shutdown().await;
                        }
                    });
                }
            });
        });
        server
    }

    fn reload(&self, config: Arc<ServerConfig>) {
        *self.config.lock().unwrap() = config;
    }
}

/// A socket that accepts connections and never says a word.
fn silent_server(addr: SocketAddr) {
    let listener = net().bind(addr).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
}

/// The Java workload: tests/java/TlsEndpoint.java inside the network namespace.
struct JavaServer(Child);

impl JavaServer {
    fn start(dir: &PathBuf, s: &Secret, ip: IpAddr, port: u16) -> JavaServer {
        std::fs::create_dir_all(dir).unwrap();
        let data = s.data.clone().unwrap();
        std::fs::write(dir.join("keystore.p12"), &data["keystore.p12"].0).unwrap();
        std::fs::write(dir.join("password"), &data["keystore-password"].0).unwrap();
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/java/TlsEndpoint.java");
        let child = net()
            .command("java")
            .arg(source)
            .arg(dir.join("keystore.p12"))
            .arg(dir.join("password"))
            .arg(ip.to_string())
            .arg(port.to_string())
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("java.log")).unwrap())
            .spawn()
            .unwrap();
        for _ in 0..300 {
            if ready.exists() {
                return JavaServer(child);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the Java TLS server did not start; see {}",
            dir.join("java.log").display()
        );
    }
}

impl Drop for JavaServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Service without a selector and an EndpointSlice pointing at `ips`:`target`,
/// each named as a Pod of `ns` (as the EndpointSlice controller names them).
fn service(ns: &str, name: &str, ips: &[IpAddr], target: u16) {
    let addresses: Vec<String> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("{{addresses: [\"{ip}\"], conditions: {{ready: true}}, targetRef: {{kind: Pod, namespace: {ns}, name: {name}-{i}}}}}"))
        .collect();
    let endpoints = if ips.is_empty() {
        String::from("[]")
    } else {
        format!("[{}]", addresses.join(", "))
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{name: https, port: 443, targetPort: {target}}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: https, port: {target}, protocol: TCP}}]\nendpoints: {endpoints}\n"
    );
    let out = kubectl_apply(&yaml, ns);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn request(ns: &str, name: &str, service: &str) {
    let yaml = format!(
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {{name: {name}}}\nspec:\n  secretName: {name}-tls\n  dnsNames: [{service}.{ns}.svc]\n  probe: {{service: {{name: {service}, port: 443}}, timeout: 2s}}\n"
    );
    let out = kubectl_apply(&yaml, ns);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first object with the probe label, working for a request of `ns`, that
/// a watch of the operator's namespace sees, from now on.
fn first_seen<K>(api: Api<K>, ns: &str) -> tokio::sync::oneshot::Receiver<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let selector = probe_selector(ns);
    tokio::spawn(async move {
        let cfg = kube::runtime::watcher::Config::default().labels(&selector);
        let mut stream = kube::runtime::watcher(api, cfg).applied_objects().boxed();
        while let Some(item) = stream.next().await {
            if let Ok(obj) = item {
                let _ = tx.send(obj);
                return;
            }
        }
    });
    rx
}

/// The label selector of the probe pods working for requests of `ns`.
fn probe_selector(ns: &str) -> String {
    format!("app.kubernetes.io/component=probe,p12-operator.io/request-namespace={ns}")
}

/// Probe pods run in the operator's namespace, never in the request's.
fn probe_pods(client: &Client) -> Api<Pod> {
    Api::namespaced(client.clone(), &operator().namespace)
}

/// Waits until no probe pod works for a request of `ns` any more.
async fn no_probe_pods_left(client: &Client, ns: &str) {
    let pods = probe_pods(client);
    let lp = ListParams::default().labels(&probe_selector(ns));
    eventually(WAIT, "probe pods to be deleted", || {
        let (pods, lp) = (pods.clone(), lp.clone());
        async move { pods.list(&lp).await.ok()?.items.is_empty().then_some(()) }
    })
    .await;
    let in_request_ns = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/component=probe"))
        .await
        .unwrap();
    assert!(
        in_request_ns.items.is_empty(),
        "no probe pod in the request's namespace"
    );
}

async fn ready_secret(client: &Client, ns: &str, name: &str) -> Secret {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, &format!("{name} Ready"), || {
        let api = api.clone();
        async move {
            let cr = api.get(name).await.ok()?;
            cr.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        }
    })
    .await;
    Api::<Secret>::namespaced(client.clone(), ns)
        .get(&format!("{name}-tls"))
        .await
        .unwrap()
}

/// Waits for the Verified condition to have `status` and `reason`.
async fn verified(
    client: &Client,
    ns: &str,
    name: &str,
    status: &str,
    reason: &str,
) -> CertificateRequest {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    eventually(
        WAIT,
        &format!("{name} Verified={status} ({reason})"),
        || {
            let api = api.clone();
            async move {
                let cr = api.get(name).await.ok()?;
                let ok = cr
                    .status
                    .as_ref()?
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Verified" && c.status == status && c.reason == reason);
                ok.then_some(cr)
            }
        },
    )
    .await
}

#[tokio::test]
async fn rust_and_java_servers_are_verified_and_a_stale_one_is_caught_per_endpoint() {
    operator();
    let client = cluster().client().await.unwrap();
    let ns = restricted_namespace(&client, "verify").await;
    request(&ns, "web", "web");
    let first = ready_secret(&client, &ns, "web").await;
    let (rust_ip, java_ip) = (net().add_host().unwrap(), net().add_host().unwrap());
    let rust = RustServer::start(
        SocketAddr::new(rust_ip.into(), 8443),
        config_from_secret(&first),
    );
    let java_dir = cluster().work_dir.join(format!("java-{ns}"));
    let java = JavaServer::start(&java_dir, &first, java_ip.into(), 8443);
    // A probe pod can live for well under a second: watch, from before the
    // Service exists, for the first probe pod and its NetworkPolicy.
    let first_pod = first_seen(probe_pods(&client), &ns);
    let first_policy = first_seen(
        Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(
            client.clone(),
            &operator().namespace,
        ),
        &ns,
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // let both watches list first
    service(&ns, "web", &[rust_ip.into(), java_ip.into()], 8443);

    // Catch a probe pod while it exists, to check how it is built.
    let probe_pod = tokio::time::timeout(WAIT, first_pod)
        .await
        .expect("a probe pod within the wait")
        .unwrap();
    let policy = tokio::time::timeout(WAIT, first_policy)
        .await
        .expect("a probe NetworkPolicy within the wait")
        .unwrap();
    let spec = probe_pod.spec.clone().unwrap();
    let c = &spec.containers[0];
    let sc = c.security_context.clone().unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert!(spec.active_deadline_seconds.is_some());
    assert_eq!(
        spec.security_context
            .clone()
            .unwrap()
            .seccomp_profile
            .unwrap()
            .type_,
        "RuntimeDefault"
    );
    assert_eq!(
        (
            sc.run_as_non_root,
            sc.read_only_root_filesystem,
            sc.allow_privilege_escalation
        ),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(
        sc.capabilities.unwrap().drop.unwrap(),
        vec!["ALL".to_string()]
    );
    assert!(
        c.resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap()
            .contains_key("memory")
    );
    // In the operator's namespace, labelled with its request (no ownerReference
    // can cross namespaces).
    assert_eq!(
        probe_pod.namespace().as_deref(),
        Some(operator().namespace.as_str())
    );
    let request_uid = Api::<CertificateRequest>::namespaced(client.clone(), &ns)
        .get("web")
        .await
        .unwrap()
        .uid()
        .unwrap();
    assert_eq!(
        probe_pod.labels()["p12-operator.io/request-uid"],
        request_uid
    );
    assert_eq!(
        probe_pod.annotations()["p12-operator.io/request"],
        format!("{ns}/web")
    );
    // Its NetworkPolicy lets it reach the probed endpoints and nothing else.
    let pspec = policy.spec.unwrap();
    assert_eq!(
        pspec.pod_selector.unwrap().match_labels.unwrap()["p12-operator.io/probe-pod"],
        probe_pod.name_any()
    );
    assert_eq!(
        pspec.policy_types.unwrap(),
        vec!["Ingress".to_string(), "Egress".to_string()]
    );
    assert!(pspec.ingress.unwrap_or_default().is_empty(), "no ingress");
    let mut allowed: Vec<String> = pspec
        .egress
        .unwrap()
        .iter()
        .map(|r| {
            let cidr = r.to.as_ref().unwrap()[0]
                .ip_block
                .as_ref()
                .unwrap()
                .cidr
                .clone();
            let port = r.ports.as_ref().unwrap()[0].port.clone().unwrap();
            format!("{cidr}:{port:?}")
        })
        .collect();
    allowed.sort();
    let mut expected = vec![
        format!("{rust_ip}/32:Int(8443)"),
        format!("{java_ip}/32:Int(8443)"),
    ];
    expected.sort();
    assert_eq!(allowed, expected, "egress only to the probed endpoints");

    let cr = verified(&client, &ns, "web", "True", "Verified").await;
    let st = cr.status.unwrap();
    let issued = st.fingerprint_sha256.clone().unwrap();
    let probe = st.probe.unwrap();
    assert_eq!(probe.endpoints.len(), 2);
    for e in &probe.endpoints {
        assert!(e.verified && e.matches_issued, "{e:?}");
        assert_eq!(
            e.served_fingerprint_sha256.as_deref(),
            Some(issued.as_str())
        );
        assert!(
            e.tls_version.is_some() && e.cipher_suite.is_some() && e.handshake_millis.is_some()
        );
    }
    no_probe_pods_left(&client, &ns).await;

    // Renew; the Rust server reloads at once, the Java one keeps the old certificate.
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"metadata": {"annotations": {"p12-operator.io/renew-requested-at": "now"}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let old_fp = first.annotations()["p12-operator.io/fingerprint-sha256"].clone();
    let renewed = eventually(WAIT, "the renewed Secret", || {
        let secrets = secrets.clone();
        let old_fp = old_fp.clone();
        async move {
            secrets
                .get("web-tls")
                .await
                .ok()
                .filter(|s| s.annotations()["p12-operator.io/fingerprint-sha256"] != old_fp)
        }
    })
    .await;
    rust.reload(config_from_secret(&renewed));
    let cr = verified(&client, &ns, "web", "False", "StaleCertificate").await;
    let cond = cr
        .status
        .clone()
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Verified")
        .unwrap();
    assert!(
        cond.message.contains(&java_ip.to_string()) && !cond.message.contains(&rust_ip.to_string()),
        "only the Java endpoint is stale: {}",
        cond.message
    );
    let eps = cr.status.unwrap().probe.unwrap().endpoints;
    let java_ep = eps
        .iter()
        .find(|e| e.address.starts_with(&java_ip.to_string()))
        .unwrap();
    assert_eq!(
        (java_ep.reason.as_str(), java_ep.matches_issued),
        ("StaleCertificate", false)
    );
    assert_eq!(
        java_ep.served_fingerprint_sha256.as_deref(),
        Some(old_fp.as_str())
    );

    // The Java workload reloads (restarts with the new keystore); a probe on request confirms it.
    drop(java);
    let _java = JavaServer::start(&java_dir, &renewed, java_ip.into(), 8443);
    let patch = serde_json::json!({"metadata": {"annotations": {"p12-operator.io/probe-requested-at": "after-java-reload"}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    verified(&client, &ns, "web", "True", "Verified").await;
}

#[tokio::test]
async fn each_failure_is_named_for_what_the_endpoint_did() {
    operator();
    let client = cluster().client().await.unwrap();
    let ns = restricted_namespace(&client, "failures").await;
    for name in ["other-ca", "wrong-san", "expired", "silent", "empty"] {
        request(&ns, name, name);
    }
    let wrong_san_secret = ready_secret(&client, &ns, "other-ca").await;
    for name in ["wrong-san", "expired", "silent", "empty"] {
        ready_secret(&client, &ns, name).await;
    }

    // A certificate for the right name from a CA nobody trusts.
    let rogue_key = KeyPair::generate().unwrap();
    let mut rogue = CertificateParams::default();
    rogue
        .distinguished_name
        .push(DnType::CommonName, "rogue CA");
    rogue.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    rogue.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let rogue_issuer = Issuer::new(rogue, rogue_key);
    let leaf = |san: String, issuer: &Issuer<'static, KeyPair>, past: bool| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::DnsName(san.try_into().unwrap())];
        p.use_authority_key_identifier_extension = true;
        if past {
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::days(5);
            p.not_after = now - time::Duration::days(1);
        }
        let cert = p.signed_by(&key, issuer).unwrap();
        server_config(key.serialize_der(), vec![cert.der().to_vec()])
    };
    let ips: Vec<IpAddr> = (0..4).map(|_| net().add_host().unwrap().into()).collect();
    RustServer::start(
        SocketAddr::new(ips[0], 8443),
        leaf(format!("other-ca.{ns}.svc"), &rogue_issuer, false),
    );
    // A certificate from the right CA for another name (the other-ca request's).
    RustServer::start(
        SocketAddr::new(ips[1], 8443),
        config_from_secret(&wrong_san_secret),
    );
    RustServer::start(
        SocketAddr::new(ips[2], 8443),
        leaf(format!("expired.{ns}.svc"), &test_ca().issuer, true),
    );
    silent_server(SocketAddr::new(ips[3], 8443));
    service(&ns, "other-ca", &[ips[0]], 8443);
    service(&ns, "wrong-san", &[ips[1]], 8443);
    service(&ns, "expired", &[ips[2]], 8443);
    service(&ns, "silent", &[ips[3]], 8443);
    service(&ns, "empty", &[], 8443);

    for (name, reason) in [
        ("other-ca", "UntrustedChain"),
        ("wrong-san", "HostnameMismatch"),
        ("expired", "Expired"),
        ("silent", "Timeout"),
        ("empty", "NoEndpoints"),
    ] {
        let cr = verified(&client, &ns, name, "False", reason).await;
        let msg = cr
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Verified")
            .unwrap()
            .message;
        if name != "empty" {
            assert!(
                msg.contains(&format!(":8443 (pod {name}-0): {reason}")),
                "{name}: the message names the endpoint: {msg}"
            );
        }
    }

    // Failed probe pods are removed too: none pile up.
    no_probe_pods_left(&client, &ns).await;
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    for reason in [
        "UntrustedChain",
        "HostnameMismatch",
        "Expired",
        "Timeout",
        "NoEndpoints",
    ] {
        assert!(
            events
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some(reason)),
            "an Event for {reason}"
        );
    }
}

/// A TLS server config for `san` signed by `issuer`.
fn signed_config(san: String, issuer: &Issuer<'static, KeyPair>) -> Arc<ServerConfig> {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::DnsName(san.try_into().unwrap())];
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(&key, issuer).unwrap();
    server_config(key.serialize_der(), vec![cert.der().to_vec()])
}

fn verified_condition(cr: &CertificateRequest) -> String {
    cr.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Verified")
        .unwrap()
        .message
        .clone()
}

#[tokio::test]
async fn every_one_of_25_endpoints_is_probed_and_one_stale_endpoint_fails_verification() {
    operator();
    let client = cluster().client().await.unwrap();
    let ns = restricted_namespace(&client, "many").await;
    request(&ns, "many", "many");
    let secret = ready_secret(&client, &ns, "many").await;
    let issued = config_from_secret(&secret);
    let ips: Vec<IpAddr> = (0..25).map(|_| net().add_host().unwrap().into()).collect();
    for ip in &ips[..24] {
        RustServer::start(SocketAddr::new(*ip, 8443), issued.clone());
    }
    // The last address sorts last, beyond the first pod's batch: it serves a
    // certificate the CA signed for the right name, but not the issued one.
    let stale = RustServer::start(
        SocketAddr::new(ips[24], 8443),
        signed_config(format!("many.{ns}.svc"), &test_ca().issuer),
    );
    service(&ns, "many", &ips, 8443);

    let cr = verified(&client, &ns, "many", "False", "StaleCertificate").await;
    let message = verified_condition(&cr);
    assert!(
        message.starts_with(&format!(
            "1 of 25 endpoints fail: {}:8443 (pod many-24): StaleCertificate",
            ips[24]
        )),
        "{message}"
    );
    let endpoints = cr.status.unwrap().probe.unwrap().endpoints;
    assert_eq!(endpoints.len(), 25, "status lists every endpoint");
    assert_eq!(
        endpoints
            .iter()
            .filter(|e| e.verified && e.matches_issued)
            .count(),
        24
    );

    // The stale workload reloads; a probe on request verifies all 25.
    stale.reload(issued);
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"metadata": {"annotations": {"p12-operator.io/probe-requested-at": "after-reload"}}});
    api.patch("many", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let cr = verified(&client, &ns, "many", "True", "Verified").await;
    assert_eq!(
        verified_condition(&cr),
        "all 25 endpoints serve the issued certificate"
    );
    let probe = cr.status.unwrap().probe.unwrap();
    assert_eq!(probe.endpoints.len(), 25);
    assert!(
        probe
            .endpoints
            .iter()
            .all(|e| e.verified && e.matches_issued)
    );
}

#[tokio::test]
async fn a_service_whose_only_port_is_unnamed_is_probed() {
    operator();
    let client = cluster().client().await.unwrap();
    let ns = restricted_namespace(&client, "unnamed").await;
    request(&ns, "plain", "plain");
    let secret = ready_secret(&client, &ns, "plain").await;
    let ip: IpAddr = net().add_host().unwrap().into();
    RustServer::start(SocketAddr::new(ip, 8443), config_from_secret(&secret));
    // The most common shape: `port: 443, targetPort: 8443`, no port name; the
    // EndpointSlice's port has no name either.
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: plain}}\nspec: {{ports: [{{port: 443, targetPort: 8443}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: plain-1, labels: {{kubernetes.io/service-name: plain}}}}\naddressType: IPv4\nports: [{{port: 8443, protocol: TCP}}]\nendpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}, targetRef: {{kind: Pod, name: plain-0}}}}]\n"
    );
    let out = kubectl_apply(&yaml, &ns);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cr = verified(&client, &ns, "plain", "True", "Verified").await;
    assert_eq!(
        verified_condition(&cr),
        "all 1 endpoints serve the issued certificate"
    );
}

#[tokio::test]
async fn hostile_endpoints_are_refused_with_a_reason_and_only_the_pod_of_the_namespace_is_probed() {
    operator();
    let client = cluster().client().await.unwrap();
    let ns = restricted_namespace(&client, "hostile").await;
    request(&ns, "web", "web");
    let secret = ready_secret(&client, &ns, "web").await;
    let good: IpAddr = net().add_host().unwrap().into();
    RustServer::start(SocketAddr::new(good, 8443), config_from_secret(&secret));
    // A TLS server that would verify, had its entry not been forged.
    let unnamed: IpAddr = net().add_host().unwrap().into();
    RustServer::start(SocketAddr::new(unnamed, 8443), config_from_secret(&secret));
    let api_server =
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), "default")
            .get("kubernetes")
            .await
            .unwrap()
            .spec
            .unwrap()
            .cluster_ip
            .unwrap();
    let pod = |ip: &str, pod_ns: &str| {
        format!(
            "{{addresses: [\"{ip}\"], conditions: {{ready: true}}, targetRef: {{kind: Pod, namespace: {pod_ns}, name: web-0}}}}"
        )
    };
    let entries = [
        pod(&good.to_string(), &ns),
        pod(&api_server, &ns),
        format!("{{addresses: [\"{unnamed}\"], conditions: {{ready: true}}}}"),
        pod("10.213.255.254", "kube-system"),
    ];
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{ports: [{{name: https, port: 443, targetPort: 8443}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: https, port: 8443, protocol: TCP}}]\nendpoints: [{}]\n",
        entries.join(", ")
    );
    let out = kubectl_apply(&yaml, &ns);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cr = verified(&client, &ns, "web", "False", "EndpointRefused").await;
    let endpoints = cr.status.unwrap().probe.unwrap().endpoints;
    // (The API server itself rejects loopback and link-local addresses in an
    // EndpointSlice; the operator refuses them too, see the unit tests.)
    assert_eq!(endpoints.len(), 4, "{endpoints:?}");
    let find = |ip: &str| {
        endpoints
            .iter()
            .find(|e| e.address == format!("{ip}:8443"))
            .unwrap_or_else(|| panic!("{ip} in {endpoints:?}"))
    };
    let probed = find(&good.to_string());
    assert!(probed.verified && probed.matches_issued, "{probed:?}");
    for (ip, why) in [
        (api_server.as_str(), "API server"),
        (&unnamed.to_string(), "no targetRef to a Pod"),
        ("10.213.255.254", "another namespace"),
    ] {
        let e = find(ip);
        assert_eq!(e.reason, "EndpointRefused", "{e:?}");
        assert!(e.message.contains(why), "{ip}: {}", e.message);
        assert!(
            e.served_fingerprint_sha256.is_none() && e.tls_version.is_none(),
            "a refused endpoint is never connected to: {e:?}"
        );
    }
    no_probe_pods_left(&client, &ns).await;
}
