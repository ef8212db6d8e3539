//! `p12-operator probe` against real TLS servers on 127.0.0.1: the binary is
//! run as a subprocess, its JSON and exit code checked, and the termination
//! log compared with stdout. No Kubernetes involved.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use p12_operator::pki::{
    CertificateAuthority, CsrSubject, KeyAlgorithm, LeafProfile, PrivateKey, SubjectAltNames,
    Usage, VerifiedCsr, build_csr, fingerprint_sha256, parse_certificate_info, sign,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const NAME: &str = "web.shop.svc";

fn ca_named(name: &str, at: Timestamp) -> CertificateAuthority {
    CertificateAuthority::generate_self_signed(
        KeyAlgorithm::EcdsaP256,
        name,
        Duration::from_secs(365 * 86400),
        at,
    )
    .unwrap()
}

fn ca_at(at: Timestamp) -> CertificateAuthority {
    ca_named("shop CA", at)
}

fn ca() -> CertificateAuthority {
    ca_at(Timestamp::now())
}

/// A key and a leaf for `dns`, signed by `ca` as if issued at `at`.
struct Leaf {
    key: PrivateKey,
    der: Vec<u8>,
}

impl Leaf {
    fn fingerprint(&self) -> String {
        fingerprint_sha256(&self.der)
    }
}

fn issue_at(ca: &CertificateAuthority, dns: &str, at: Timestamp, lifetime: Duration) -> Leaf {
    let profile = LeafProfile {
        subject: CsrSubject::with_common_name(dns),
        sans: SubjectAltNames {
            dns: vec![dns.to_owned()],
            ..Default::default()
        },
        usages: vec![Usage::ServerAuth],
        duration: lifetime,
    };
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr =
        VerifiedCsr::parse_and_verify(&build_csr(&key, &profile.subject, &profile.sans).unwrap())
            .unwrap();
    let der = sign(ca, &csr, &profile, at).unwrap().der;
    Leaf { key, der }
}

fn issue(ca: &CertificateAuthority, dns: &str) -> Leaf {
    issue_at(ca, dns, Timestamp::now(), Duration::from_secs(86400))
}

/// A TLS server on 127.0.0.1 presenting `leaf` followed by its CA; it completes
/// handshakes and then waits for the client to close.
async fn serve(leaf: &Leaf, ca: &CertificateAuthority) -> SocketAddr {
    serve_versions(leaf, ca, rustls::DEFAULT_VERSIONS).await
}

/// Like [`serve`], speaking only the given TLS versions.
async fn serve_versions(
    leaf: &Leaf,
    ca: &CertificateAuthority,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> SocketAddr {
    let chain = vec![
        CertificateDer::from(leaf.der.clone()),
        CertificateDer::from(ca.cert_der().to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        leaf.key.to_pkcs8_der().expose().to_vec(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buffer = [0u8; 256];
                    while matches!(tls.read(&mut buffer).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    address
}

/// A listener that accepts connections and never says a word.
async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    address
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

struct Run {
    code: i32,
    json: Value,
    stdout: String,
    stderr: String,
    termination_log: String,
    elapsed: Duration,
    _dir: tempfile::TempDir,
}

impl Run {
    fn endpoint(&self, index: usize) -> &Value {
        &self.json["endpoints"][index]
    }
}

/// Runs `p12-operator probe --server-name web.shop.svc <args>` with the CA in
/// P12_PROBE_CA_PEM and the termination log in a temporary file.
async fn probe(ca_pem: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let termination_log: PathBuf = dir.path().join("termination-log");
    std::fs::write(&termination_log, b"").unwrap();
    let started = Instant::now();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_p12-operator"))
        .arg("probe")
        .args(["--server-name", NAME])
        .args(args)
        .env("P12_PROBE_CA_PEM", ca_pem)
        .env("P12_TERMINATION_LOG", &termination_log)
        .env_remove("P12_PROBE_EXPECT_FINGERPRINT")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    Run {
        code: output.status.code().unwrap_or(-1),
        json,
        stdout,
        stderr,
        termination_log: std::fs::read_to_string(&termination_log).unwrap(),
        elapsed,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issued_certificate_is_verified_and_matches() {
    let ca = ca();
    let leaf = issue(&ca, NAME);
    let address = serve(&leaf, &ca).await;
    let run = probe(
        &ca.root_pem(),
        &[
            "--endpoint",
            &address.to_string(),
            "--expect-fingerprint",
            &leaf.fingerprint(),
        ],
    )
    .await;

    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    let endpoint = run.endpoint(0);
    assert_eq!(endpoint["address"], address.to_string());
    assert_eq!(endpoint["verified"], true);
    assert_eq!(endpoint["matchesIssued"], true);
    assert_eq!(endpoint["reason"], "Verified");
    assert_eq!(endpoint["servedFingerprintSha256"], leaf.fingerprint());
    assert_eq!(
        endpoint["serial"],
        parse_certificate_info(&leaf.der).unwrap().serial_hex
    );
    assert_eq!(
        endpoint["notAfter"],
        parse_certificate_info(&leaf.der)
            .unwrap()
            .not_after
            .to_string()
    );
    assert_eq!(endpoint["chainLength"], 2);
    assert_eq!(endpoint["tlsVersion"], "TLSv1.3");
    assert!(
        endpoint["cipherSuite"]
            .as_str()
            .unwrap()
            .starts_with("TLS13_"),
        "{endpoint}"
    );
    assert!(
        endpoint["handshakeMillis"].as_i64().unwrap() < 1000,
        "{endpoint}"
    );
    assert!(
        endpoint["message"]
            .as_str()
            .unwrap()
            .starts_with("served the issued certificate"),
        "{endpoint}"
    );
    assert!(
        run.json["probedAt"]
            .as_str()
            .unwrap()
            .parse::<Timestamp>()
            .is_ok()
    );
    assert_eq!(
        run.termination_log,
        run.stdout.trim_end(),
        "the termination log holds the same JSON"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls12_only_server_is_verified_and_reported_as_tls12() {
    let ca = ca();
    let leaf = issue(&ca, NAME);
    let address = serve_versions(&leaf, &ca, &[&rustls::version::TLS12]).await;
    let run = probe(
        &ca.root_pem(),
        &[
            "--endpoint",
            &address.to_string(),
            "--expect-fingerprint",
            &leaf.fingerprint(),
        ],
    )
    .await;

    assert_eq!(run.code, 0, "{}", run.stdout);
    let endpoint = run.endpoint(0);
    assert_eq!(endpoint["reason"], "Verified");
    assert_eq!(endpoint["tlsVersion"], "TLSv1.2");
    assert!(
        endpoint["cipherSuite"]
            .as_str()
            .unwrap()
            .starts_with("TLS_ECDHE_ECDSA_WITH_"),
        "{endpoint}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_but_different_certificate_is_reported_stale() {
    let ca = ca();
    let issued = issue(&ca, NAME);
    let previous = issue(&ca, NAME);
    let address = serve(&previous, &ca).await;
    let run = probe(
        &ca.root_pem(),
        &[
            "--endpoint",
            &address.to_string(),
            "--expect-fingerprint",
            &issued.fingerprint(),
        ],
    )
    .await;

    assert_eq!(run.code, 1, "{}", run.stderr);
    let endpoint = run.endpoint(0);
    assert_eq!(endpoint["reason"], "StaleCertificate");
    assert_eq!(endpoint["verified"], true);
    assert_eq!(endpoint["matchesIssued"], false);
    assert_eq!(endpoint["servedFingerprintSha256"], previous.fingerprint());
    assert_eq!(run.termination_log, run.stdout.trim_end());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_untrusted_yet_fully_reported() {
    let trusted = ca();
    let stranger = ca_named("stranger CA", Timestamp::now());
    // A CA with the trusted CA's very name but another key, as after a botched rotation.
    let impostor = ca();
    let leaf = issue(&stranger, NAME);
    let impostor_leaf = issue(&impostor, NAME);
    let address = serve(&leaf, &stranger).await;
    let impostor_address = serve(&impostor_leaf, &impostor).await;
    let run = probe(
        &trusted.root_pem(),
        &[
            "--endpoint",
            &address.to_string(),
            "--endpoint",
            &impostor_address.to_string(),
        ],
    )
    .await;

    assert_eq!(run.code, 1);
    let endpoint = run.endpoint(0);
    assert_eq!(endpoint["reason"], "UntrustedChain");
    assert_eq!(endpoint["verified"], false);
    assert!(
        endpoint.get("matchesIssued").is_none(),
        "no expectation, no comparison: {endpoint}"
    );
    assert_eq!(
        endpoint["servedFingerprintSha256"],
        leaf.fingerprint(),
        "the chain is recorded despite the failure"
    );
    assert_eq!(endpoint["chainLength"], 2);
    assert_eq!(
        endpoint["tlsVersion"], "TLSv1.3",
        "the handshake went on to report protocol and cipher"
    );
    assert!(endpoint["cipherSuite"].is_string());
    let message = endpoint["message"].as_str().unwrap();
    assert!(
        message.contains("issued by CN=stranger CA")
            && message.ends_with("is not signed by a trusted CA"),
        "{message}"
    );

    let endpoint = run.endpoint(1);
    assert_eq!(endpoint["reason"], "UntrustedChain");
    assert_eq!(
        endpoint["servedFingerprintSha256"],
        impostor_leaf.fingerprint()
    );
    assert!(
        endpoint["message"]
            .as_str()
            .unwrap()
            .contains("another CA of the same name?"),
        "{endpoint}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_a_hostname_mismatch() {
    let ca = ca();
    let leaf = issue(&ca, "other.shop.svc");
    let address = serve(&leaf, &ca).await;
    let run = probe(
        &ca.root_pem(),
        &[
            "--endpoint",
            &address.to_string(),
            "--expect-fingerprint",
            &leaf.fingerprint(),
        ],
    )
    .await;

    assert_eq!(run.code, 1);
    let endpoint = run.endpoint(0);
    assert_eq!(endpoint["reason"], "HostnameMismatch");
    assert_eq!(endpoint["verified"], false);
    assert_eq!(
        endpoint["matchesIssued"], true,
        "it is the issued certificate, for the wrong name"
    );
    let message = endpoint["message"].as_str().unwrap();
    assert!(
        message.contains("does not name web.shop.svc (it names other.shop.svc)"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_not_yet_valid_certificates_are_expired() {
    let now = Timestamp::now();
    let ten_days_ago = now.checked_sub(SignedDuration::from_hours(240)).unwrap();
    let ca = ca_at(ten_days_ago);
    let expired = issue_at(&ca, NAME, ten_days_ago, Duration::from_secs(86400));
    let early = issue_at(
        &ca,
        NAME,
        now.checked_add(SignedDuration::from_hours(240)).unwrap(),
        Duration::from_secs(86400),
    );
    let expired_address = serve(&expired, &ca).await;
    let early_address = serve(&early, &ca).await;
    let run = probe(
        &ca.root_pem(),
        &[
            "--endpoint",
            &expired_address.to_string(),
            "--endpoint",
            &early_address.to_string(),
        ],
    )
    .await;

    assert_eq!(run.code, 1);
    let not_after = parse_certificate_info(&expired.der).unwrap().not_after;
    let endpoint = run.endpoint(0);
    assert_eq!(endpoint["reason"], "Expired");
    assert_eq!(endpoint["verified"], false);
    assert_eq!(endpoint["notAfter"], not_after.to_string());
    assert!(
        endpoint["message"]
            .as_str()
            .unwrap()
            .contains(&format!("expired at {not_after}")),
        "{endpoint}"
    );
    let endpoint = run.endpoint(1);
    assert_eq!(endpoint["reason"], "Expired");
    assert!(
        endpoint["message"]
            .as_str()
            .unwrap()
            .contains("is not valid before"),
        "{endpoint}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_times_out_within_the_handshake_timeout() {
    let ca = ca();
    let address = silent_server().await;
    let run = probe(
        &ca.root_pem(),
        &[
            "--endpoint",
            &address.to_string(),
            "--handshake-timeout",
            "1s",
        ],
    )
    .await;

    assert_eq!(run.code, 1);
    assert!(
        run.elapsed < Duration::from_secs(4),
        "took {:?}",
        run.elapsed
    );
    let endpoint = run.endpoint(0);
    assert_eq!(endpoint["reason"], "Timeout");
    assert_eq!(endpoint["verified"], false);
    assert_eq!(endpoint["chainLength"], 0);
    assert!(
        endpoint["message"].as_str().unwrap().contains("within 1s"),
        "{endpoint}"
    );
    assert_eq!(run.termination_log, run.stdout.trim_end());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_is_reported_in_order_and_a_closed_port_fails_to_connect() {
    let ca = ca();
    let leaf = issue(&ca, NAME);
    let good = serve(&leaf, &ca).await;
    let closed = closed_port().await;
    let run = probe(
        &ca.root_pem(),
        &[
            "--endpoint",
            &closed.to_string(),
            "--endpoint",
            &good.to_string(),
            "--expect-fingerprint",
            &leaf.fingerprint(),
        ],
    )
    .await;

    assert_eq!(run.code, 1, "one endpoint failing fails the probe");
    assert_eq!(run.json["endpoints"].as_array().unwrap().len(), 2);
    let endpoint = run.endpoint(0);
    assert_eq!(endpoint["address"], closed.to_string());
    assert_eq!(endpoint["reason"], "ConnectionFailed");
    assert!(
        endpoint["message"].as_str().unwrap().contains("refused"),
        "{endpoint}"
    );
    assert_eq!(run.endpoint(1)["address"], good.to_string());
    assert_eq!(run.endpoint(1)["reason"], "Verified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_can_come_from_a_file_and_fingerprints_in_openssl_style() {
    let ca = ca();
    let leaf = issue(&ca, NAME);
    let address = serve(&leaf, &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.root_pem()).unwrap();
    let openssl_style: Vec<String> = leaf
        .fingerprint()
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let run = probe(
        "",
        &[
            "--ca-file",
            ca_file.to_str().unwrap(),
            "--endpoint",
            &address.to_string(),
            "--expect-fingerprint",
            &openssl_style.join(":"),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.endpoint(0)["matchesIssued"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_exits_with_two_and_one_clear_line() {
    let ca = ca();
    let run = probe(
        &ca.root_pem(),
        &["--endpoint", "127.0.0.1:1", "--expect-fingerprint", "abc"],
    )
    .await;
    assert_eq!(run.code, 2);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr
            .contains("error: failed to read --expect-fingerprint \"abc\": expected 64 hex digits"),
        "{}",
        run.stderr
    );

    let run = probe("not a certificate", &["--endpoint", "127.0.0.1:1"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("failed to read the CA"),
        "{}",
        run.stderr
    );

    let run = probe(&ca.root_pem(), &["--endpoint", "web:8443"]).await;
    assert_eq!(run.code, 2, "an endpoint must be ip:port: {}", run.stderr);

    let run = probe(&ca.root_pem(), &[]).await;
    assert_eq!(run.code, 2, "at least one endpoint: {}", run.stderr);

    let run = probe(
        &ca.root_pem(),
        &["--endpoint", "127.0.0.1:1", "--handshake-timeout", "10"],
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
}
