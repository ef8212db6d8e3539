//! Micro-benchmarks of the operator's CPU work: key generation, CSR, signing,
//! PKCS#12 encode/decode, one full issuance, and one probe handshake.
//!
//! `cargo bench --bench micro` (about 2–3 minutes on 2 cores; RSA dominates).
//! Filter with criterion's usual syntax, e.g. `cargo bench --bench micro -- keygen`.
//! Figures and their interpretation: docs/benchmarks.md.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use jiff::Timestamp;
use p12_operator::keystore::{Profile, build_keystore, build_truststore, read_keystore};
use p12_operator::pki::{
    CertificateAuthority, CsrSubject, KeyAlgorithm, LeafProfile, PrivateKey, SubjectAltNames,
    Usage, VerifiedCsr, build_csr, sign,
};
use p12_operator::probe::client::{ProbeSettings, Prober};
use p12_operator::sensitive::SecretString;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const NAME: &str = "web.shop.svc";

fn ca() -> CertificateAuthority {
    CertificateAuthority::generate_self_signed(
        KeyAlgorithm::EcdsaP256,
        "bench CA",
        Duration::from_secs(365 * 86400),
        Timestamp::now(),
    )
    .expect("CA")
}

fn profile() -> LeafProfile {
    LeafProfile {
        subject: CsrSubject::with_common_name(NAME),
        sans: SubjectAltNames {
            dns: vec![NAME.to_owned(), format!("{NAME}.cluster.local")],
            ..Default::default()
        },
        usages: vec![Usage::ServerAuth, Usage::ClientAuth],
        duration: Duration::from_secs(90 * 86400),
    }
}

fn label(a: KeyAlgorithm) -> &'static str {
    match a {
        KeyAlgorithm::EcdsaP256 => "ECDSA-P256",
        KeyAlgorithm::EcdsaP384 => "ECDSA-P384",
        KeyAlgorithm::Rsa2048 => "RSA-2048",
        KeyAlgorithm::Rsa3072 => "RSA-3072",
        KeyAlgorithm::Rsa4096 => "RSA-4096",
        KeyAlgorithm::Ed25519 => "Ed25519",
    }
}

fn password() -> SecretString {
    SecretString::from("Bench-Password-0123456789xy")
}

/// Key generation: fast algorithms with criterion's defaults, RSA with ten flat samples.
fn keygen(c: &mut Criterion) {
    let mut fast = c.benchmark_group("keygen");
    for a in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
    ] {
        fast.bench_function(BenchmarkId::from_parameter(label(a)), |b| {
            b.iter(|| PrivateKey::generate(black_box(a)).unwrap())
        });
    }
    fast.finish();

    let mut rsa = c.benchmark_group("keygen-rsa");
    rsa.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for a in [
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ] {
        rsa.bench_function(BenchmarkId::from_parameter(label(a)), |b| {
            b.iter(|| PrivateKey::generate(black_box(a)).unwrap())
        });
    }
    rsa.finish();
}

/// CSR build (sign with the leaf key) and parse+verify, per key type (RSA keys
/// generated once up front).
fn csr(c: &mut Criterion) {
    let p = profile();
    let mut g = c.benchmark_group("csr");
    for a in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
    ] {
        let key = PrivateKey::generate(a).unwrap();
        g.bench_function(BenchmarkId::new("build", label(a)), |b| {
            b.iter(|| build_csr(black_box(&key), &p.subject, &p.sans).unwrap())
        });
        let der = build_csr(&key, &p.subject, &p.sans).unwrap();
        g.bench_function(BenchmarkId::new("verify", label(a)), |b| {
            b.iter(|| VerifiedCsr::parse_and_verify(black_box(&der)).unwrap())
        });
    }
    g.finish();
}

/// Signing a leaf with a P-256 CA (the default CA), for a P-256 and an RSA-2048 leaf key.
fn signing(c: &mut Criterion) {
    let ca = ca();
    let p = profile();
    let mut g = c.benchmark_group("sign-leaf");
    for a in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
        let key = PrivateKey::generate(a).unwrap();
        let csr =
            VerifiedCsr::parse_and_verify(&build_csr(&key, &p.subject, &p.sans).unwrap()).unwrap();
        g.bench_function(BenchmarkId::from_parameter(label(a)), |b| {
            b.iter(|| sign(&ca, black_box(&csr), &p, Timestamp::now()).unwrap())
        });
    }
    g.finish();
}

/// keystore.p12 / truststore.p12 encode per profile, and keystore decode.
fn keystores(c: &mut Criterion) {
    let ca = ca();
    let p = profile();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr =
        VerifiedCsr::parse_and_verify(&build_csr(&key, &p.subject, &p.sans).unwrap()).unwrap();
    let leaf = sign(&ca, &csr, &p, Timestamp::now()).unwrap().der;
    let pw = password();
    let chain = ca.chain().to_vec();
    let root = vec![ca.root_der().to_vec()];
    let mut g = c.benchmark_group("pkcs12");
    for profile in [Profile::Modern2023, Profile::LegacyDES] {
        g.bench_function(BenchmarkId::new("keystore-encode", profile.name()), |b| {
            b.iter(|| build_keystore(&key, black_box(&leaf), &chain, "web", &pw, profile).unwrap())
        });
        g.bench_function(BenchmarkId::new("truststore-encode", profile.name()), |b| {
            b.iter(|| build_truststore(black_box(&root), &pw, profile).unwrap())
        });
        let bytes = build_keystore(&key, &leaf, &chain, "web", &pw, profile).unwrap();
        g.bench_function(BenchmarkId::new("keystore-decode", profile.name()), |b| {
            b.iter(|| read_keystore(black_box(bytes.expose()), &pw).unwrap())
        });
    }
    g.finish();
}

/// Everything the operator computes for one P-256 Modern2023 issuance: key,
/// CSR, verify, sign, keystore, truststore. Its inverse is the CPU-bound
/// issuance rate per core.
fn full_issuance(c: &mut Criterion) {
    let ca = ca();
    let p = profile();
    let pw = password();
    let chain = ca.chain().to_vec();
    let root = vec![ca.root_der().to_vec()];
    let mut g = c.benchmark_group("issuance");
    for profile in [Profile::Modern2023, Profile::LegacyDES] {
        g.bench_function(BenchmarkId::new("ECDSA-P256", profile.name()), |b| {
            b.iter(|| {
                let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
                let csr =
                    VerifiedCsr::parse_and_verify(&build_csr(&key, &p.subject, &p.sans).unwrap())
                        .unwrap();
                let leaf = sign(&ca, &csr, &p, Timestamp::now()).unwrap().der;
                let ks = build_keystore(&key, &leaf, &chain, "web", &pw, profile).unwrap();
                let ts = build_truststore(&root, &pw, profile).unwrap();
                (ks, ts)
            })
        });
    }
    g.finish();
}

/// A TLS server on 127.0.0.1 that presents `leaf` + CA and then waits for the
/// client to close.
async fn serve(key: &PrivateKey, leaf: &[u8], ca: &CertificateAuthority) -> SocketAddr {
    let chain = vec![
        CertificateDer::from(leaf.to_vec()),
        CertificateDer::from(ca.cert_der().to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        key.to_pkcs8_der().expose().to_vec(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
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

/// One probe (TCP connect + TLS 1.3 handshake + verification + close) against
/// an in-process rustls server on loopback. Client and server share the
/// runtime, so the figure includes both sides' CPU.
fn handshake(c: &mut Criterion) {
    let ca = ca();
    let p = profile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("probe-handshake");
    for a in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
        let key = PrivateKey::generate(a).unwrap();
        let csr =
            VerifiedCsr::parse_and_verify(&build_csr(&key, &p.subject, &p.sans).unwrap()).unwrap();
        let leaf = sign(&ca, &csr, &p, Timestamp::now()).unwrap().der;
        let address = rt.block_on(serve(&key, &leaf, &ca));
        let settings = ProbeSettings::new(
            NAME,
            &[ca.root_der().to_vec()],
            Some(p12_operator::pki::fingerprint_sha256(&leaf)),
            Duration::from_secs(2),
            Duration::from_secs(5),
        )
        .unwrap();
        let prober = Prober::new(settings).unwrap();
        // Warm up (aws-lc set-up, first connection) and check the probe really verifies.
        for _ in 0..3 {
            let result = rt.block_on(prober.probe(address));
            assert!(
                result.verified && result.matches_issued == Some(true),
                "{result:?}"
            );
        }
        g.bench_function(BenchmarkId::from_parameter(label(a)), |b| {
            b.iter(|| rt.block_on(prober.probe(address)))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = keygen, csr, signing, keystores, full_issuance, handshake
}
criterion_main!(benches);
