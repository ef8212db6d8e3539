//! The fuzz harnesses of p12-operator, one function per cargo-fuzz target.
//!
//! Each function feeds one untrusted input to the operator's parsers and checks
//! what must hold for *any* input: no panic, no hang, bounded memory, and a few
//! cheap invariants (a value that parses re-parses to itself, a CA that loads
//! can sign, a plan that is produced is within the policy, …). A violated
//! invariant panics, which libFuzzer records as a crash.
//!
//! The same file is compiled into `crates/p12-operator/tests/fuzz_regressions.rs`
//! (through `#[path]`), so every saved crash and every seed is replayed by plain
//! `cargo test` through exactly these functions. It therefore depends only on
//! `p12_core` and crates that `p12_core` itself depends on.
//!
//! Fixed inputs (a CA, a password, "now") live in `fuzz/seeds/fixtures/` and
//! in the constants below, so that the seeds in `fuzz/seeds/<target>/`, which
//! were generated against them, reach deep into the code.

#![allow(clippy::missing_panics_doc)]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use p12_core::api::{CertificateRequest, CertificateRequestSpec};
use p12_core::bundle;
use p12_core::duration;
use p12_core::inspect;
use p12_core::keystore;
use p12_core::pki::{
    self, CertificateAuthority, CsrSubject, KeyAlgorithm, LeafProfile, Policy, PrivateKey,
    SubjectAltNames, Usage, VerifiedCsr,
};
use p12_core::plan;
use p12_core::sensitive::SecretString;

/// The fuzz targets, by name (`fuzz/fuzz_targets/<name>.rs`, `fuzz/seeds/<name>/`,
/// `fuzz/regressions/<name>/`).
pub const TARGETS: [&str; 8] = [
    "csr",
    "private_key",
    "ca_load",
    "cert_info",
    "keystore",
    "secret",
    "plan",
    "duration",
];

/// Runs the harness of `target` on `data`; `false` for an unknown target.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "csr" => csr(data),
        "private_key" => private_key(data),
        "ca_load" => ca_load(data),
        "cert_info" => cert_info(data),
        "keystore" => keystore(data),
        "secret" => secret(data),
        "plan" => plan(data),
        "duration" => duration(data),
        _ => return false,
    }
    true
}

/// "Now" for every harness: inside the fixture CA's validity (2026-11-29 to 2126-11-05).
pub fn now() -> Timestamp {
    // 2027-01-01T00:00:00Z
    Timestamp::from_second(1_798_761_600).expect("a valid timestamp")
}

/// The password of every keystore seed.
pub const PASSWORD: &str = "fuzz-password";

/// The fixture CA (EC P-256 root made with openssl, see docs/fuzzing.md). Test-only key.
pub const CA_PEM: &str = include_str!("../seeds/fixtures/ca.pem");
pub const CA_KEY_PEM: &str = include_str!("../seeds/fixtures/ca.key.pem");

pub fn fixture_ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        CertificateAuthority::load(CA_PEM.as_bytes(), CA_KEY_PEM.as_bytes(), now())
            .expect("the fixture CA loads")
    })
}

/// The fixture CA as the operator holds it: the only CA, its root the bundle.
pub fn fixture_authorities() -> &'static pki::Authorities {
    static AUTHORITIES: OnceLock<pki::Authorities> = OnceLock::new();
    AUTHORITIES.get_or_init(|| {
        let ca = CertificateAuthority::load(CA_PEM.as_bytes(), CA_KEY_PEM.as_bytes(), now())
            .expect("the fixture CA loads");
        pki::Authorities::single(std::sync::Arc::new(ca))
    })
}

/// One key per algorithm, generated once per process (RSA 4096 takes a second).
pub fn cached_key(algorithm: KeyAlgorithm) -> &'static PrivateKey {
    static KEYS: [OnceLock<PrivateKey>; 6] = [const { OnceLock::new() }; 6];
    let index = KeyAlgorithm::ALL
        .iter()
        .position(|a| *a == algorithm)
        .expect("every algorithm is listed");
    KEYS[index].get_or_init(|| PrivateKey::generate(algorithm).expect("key generation"))
}

/// The plan the `secret` seeds were built for.
pub fn fixture_spec_json() -> &'static str {
    r#"{"secretName":"fuzz-tls","commonName":"fuzz.example","dnsNames":["fuzz.example","*.fuzz.example"],"ipAddresses":["127.0.0.1"],"usages":["serverAuth","clientAuth"],"duration":"2160h"}"#
}

pub fn fixture_plan() -> &'static plan::Plan {
    static PLAN: OnceLock<plan::Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        let spec: CertificateRequestSpec =
            serde_json::from_str(fixture_spec_json()).expect("fixture spec");
        plan::plan(&CertificateRequest::new("fuzz", spec), &Policy::default())
            .expect("fixture plan")
    })
}

/// A leaf profile for signing a CSR: exactly what the CSR asks for, for one day.
fn profile_for(csr: &VerifiedCsr) -> LeafProfile {
    LeafProfile {
        subject: csr.subject().clone(),
        sans: csr.sans().clone(),
        usages: vec![Usage::ServerAuth],
        duration: Duration::from_secs(86_400),
    }
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

// ---------------------------------------------------------------------------
// csr: VerifiedCsr::parse_and_verify (DER) and parse_and_verify_pem (text).

pub fn csr(data: &[u8]) {
    check_csr(VerifiedCsr::parse_and_verify(data), Some(data));
    if let Some(text) = text(data) {
        check_csr(VerifiedCsr::parse_and_verify_pem(text), None);
    }
}

fn check_csr(result: pki::Result<VerifiedCsr>, der: Option<&[u8]>) {
    let Ok(csr) = result else { return };
    if let Some(der) = der {
        assert_eq!(csr.der(), der, "a verified CSR keeps its bytes");
    }
    let again = VerifiedCsr::parse_and_verify(csr.der()).expect("a verified CSR verifies again");
    assert_eq!(again, csr, "re-parsing a CSR gives the same result");
    assert_eq!(
        KeyAlgorithm::from_spki_der(csr.spki_der()).ok(),
        Some(csr.key_algorithm()),
        "the CSR's key algorithm is its SPKI's"
    );
    // A CSR that passes the policy must be signable, and the certificate must read back.
    let profile = profile_for(&csr);
    if Policy::default().check(&profile, &csr).is_ok() {
        let ca = fixture_ca();
        let issued =
            pki::sign(ca, &csr, &profile, now()).expect("a CSR the policy accepts can be signed");
        let info = pki::parse_certificate_info(&issued.der).expect("an issued certificate parses");
        assert_eq!(
            info.sans, profile.sans,
            "the certificate carries the CSR's names"
        );
        assert!(!info.is_ca, "a leaf is never a CA");
        assert!(bundle::issued_by(&issued.der, ca));
    }
}

// ---------------------------------------------------------------------------
// private_key: PrivateKey::from_pem (text containing a PEM block) or from_pkcs8_der.

pub fn private_key(data: &[u8]) {
    let result = match text(data) {
        Some(text) if text.contains("-----BEGIN") => PrivateKey::from_pem(text),
        _ => PrivateKey::from_pkcs8_der(data),
    };
    let Ok(key) = result else { return };
    let algorithm = key.algorithm();
    let spki = key.public_key_der();
    assert_eq!(
        KeyAlgorithm::from_spki_der(&spki).ok(),
        Some(algorithm),
        "the public key has the key's algorithm"
    );
    let reloaded = PrivateKey::from_pem(key.to_pem().expose()).expect("an exported key reloads");
    assert_eq!(reloaded.algorithm(), algorithm);
    assert_eq!(
        reloaded.public_key_der(),
        spki,
        "reloading keeps the public key"
    );
    // The key must actually work: a CSR it signs verifies with its public key.
    let csr = pki::build_csr(
        &key,
        &CsrSubject::with_common_name("fuzz.example"),
        &SubjectAltNames::default(),
    )
    .expect("an accepted key can sign");
    let csr =
        VerifiedCsr::parse_and_verify(&csr).expect("a CSR signed by an accepted key verifies");
    assert!(key.matches_spki(csr.spki_der()));
}

// ---------------------------------------------------------------------------
// ca_load: CertificateAuthority::load(bundle, key, now). The input is the PEM
// bundle, a NUL byte, then the key PEM; without a NUL the fixture key is used.

pub fn split_ca_input(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, CA_KEY_PEM.as_bytes()),
    }
}

/// No strict mode: a CA that loads but cannot issue (the two findings in
/// `fuzz/regressions/ca_load/`) is refused by `load` itself, and
/// crates/p12-operator/tests/fuzz_regressions.rs asserts that refusal.
pub fn ca_load(data: &[u8]) {
    let (bundle_pem, key_pem) = split_ca_input(data);
    let Ok(ca) = CertificateAuthority::load(bundle_pem, key_pem, now()) else {
        return;
    };
    assert!(!ca.chain().is_empty());
    assert!(ca.not_before() <= ca.not_after() || ca.check_valid_at(now()).is_err());
    let reloaded = CertificateAuthority::load(
        ca.chain_pem().as_bytes(),
        ca.key_pem().expose().as_bytes(),
        now(),
    )
    .expect("a loaded CA reloads from its own PEM");
    assert_eq!(reloaded.fingerprint(), ca.fingerprint());
    assert_eq!(reloaded.chain(), ca.chain());
    // A CA that loads must sign a well-formed request.
    let key = cached_key(KeyAlgorithm::EcdsaP256);
    let subject = CsrSubject::with_common_name("fuzz.example");
    let sans = SubjectAltNames {
        dns: vec!["fuzz.example".into()],
        ..SubjectAltNames::default()
    };
    let csr = VerifiedCsr::parse_and_verify(&pki::build_csr(key, &subject, &sans).unwrap())
        .expect("our CSR verifies");
    let profile = profile_for(&csr);
    let issued = match pki::sign(&ca, &csr, &profile, now()) {
        Ok(issued) => issued,
        Err(e) => panic!("a loaded CA can sign: {e:?}"),
    };
    assert!(
        bundle::issued_by(&issued.der, &ca),
        "the leaf verifies under the CA"
    );
    pki::parse_certificate_info(&issued.der).expect("the leaf parses");
}

// ---------------------------------------------------------------------------
// cert_info: parse_certificate_info and the other readers of one DER certificate.

pub fn cert_info(data: &[u8]) {
    let info = pki::parse_certificate_info(data);
    let facts = bundle::CertFacts::of(data);
    assert_eq!(info.is_ok(), facts.is_some());
    if let Ok(info) = &info {
        assert_eq!(info.fingerprint_sha256, pki::fingerprint_sha256(data));
        assert_eq!(info.fingerprint_sha256.len(), 64);
    }
    let _ = KeyAlgorithm::from_spki_der(data);
    let _ = pki::key_matches_certificate(cached_key(KeyAlgorithm::EcdsaP256), data);
    let _ = bundle::issued_by(data, fixture_ca());
}

// ---------------------------------------------------------------------------
// keystore: keystore::read_keystore and inspect::inspect_p12 (+ both renderings).

pub fn keystore(data: &[u8]) {
    let password = SecretString::from(PASSWORD);
    if let Ok(store) = keystore::read_keystore(data, &password) {
        for entry in &store.key_entries {
            let _ = entry.key_matches_leaf();
        }
    }
    if let Ok(report) = inspect::inspect_p12("fuzz.p12", data, &password, now()) {
        let text = inspect::render_text(&report);
        let json = serde_json::to_string(&report).expect("a report serializes");
        assert!(
            !text.contains(PASSWORD) && !json.contains(PASSWORD),
            "the password leaked"
        );
        assert_eq!(report.ok, report.checks.iter().all(|c| c.ok));
    }
}

// ---------------------------------------------------------------------------
// secret: the data and annotations of a Secret, read by bundle::Existing::read,
// judged by bundle::assess against the fixture plan and CA, and described by
// inspect::inspect_secret.
//
// Input: records of [tag: u8][length: u16 little-endian][value]; a short last
// record takes what is left. Tags (mod 10): 0–5 the data keys of
// bundle::OWNED_KEYS, 6–8 the fingerprint, spec-hash and keystore-profile
// annotations, 9 a foreign data key.

pub struct SecretInput {
    pub data: BTreeMap<String, ByteString>,
    pub annotations: BTreeMap<String, String>,
}

pub fn decode_secret(mut input: &[u8]) -> SecretInput {
    let mut data = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    while let Some((&tag, rest)) = input.split_first() {
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
            _ => (rest.len(), &rest[rest.len()..]),
        };
        let len = len.min(rest.len());
        let (value, rest) = rest.split_at(len);
        input = rest;
        match tag % 10 {
            t @ 0..=5 => {
                data.insert(
                    bundle::OWNED_KEYS[usize::from(t)].to_owned(),
                    ByteString(value.to_vec()),
                );
            }
            t @ 6..=8 => {
                let key = [
                    bundle::annotations::FINGERPRINT,
                    bundle::annotations::SPEC_HASH,
                    bundle::annotations::PROFILE,
                ][usize::from(t - 6)];
                annotations.insert(key.to_owned(), String::from_utf8_lossy(value).into_owned());
            }
            _ => {
                data.insert("extra".to_owned(), ByteString(value.to_vec()));
            }
        }
    }
    SecretInput { data, annotations }
}

/// The inverse of [`decode_secret`], used to write seeds.
pub fn encode_secret(input: &SecretInput) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |tag: u8, value: &[u8]| {
        let len = u16::try_from(value.len()).expect("a value under 64 KiB");
        out.push(tag);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(value);
    };
    for (key, value) in &input.data {
        let tag = bundle::OWNED_KEYS
            .iter()
            .position(|k| k == key)
            .map_or(9, |i| i as u8);
        push(tag, &value.0);
    }
    for (key, value) in &input.annotations {
        let tag = match key.as_str() {
            k if k == bundle::annotations::FINGERPRINT => 6,
            k if k == bundle::annotations::SPEC_HASH => 7,
            k if k == bundle::annotations::PROFILE => 8,
            _ => continue,
        };
        push(tag, value.as_bytes());
    }
    out
}

pub fn secret(input: &[u8]) {
    let SecretInput { data, annotations } = decode_secret(input);
    let password = SecretString::from(PASSWORD);
    let existing = bundle::Existing::read(&data);
    let _ = bundle::assess(
        &data,
        &annotations,
        &existing,
        fixture_plan(),
        fixture_authorities(),
        &password,
        false,
        false,
        now(),
    );
    let _ = bundle::profile_of(&annotations);
    let plain: BTreeMap<String, Vec<u8>> =
        data.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
    // The password as `inspect --secret` would pick it: the Secret's own, else ours.
    let password = existing.stored_password.unwrap_or(password);
    if let Ok(report) =
        inspect::inspect_secret("fuzz/secret", &plain, &annotations, Some(&password), now())
    {
        let _ = inspect::render_text(&report);
        assert_eq!(report.ok, report.checks.iter().all(|c| c.ok));
    }
}

// ---------------------------------------------------------------------------
// plan: JSON → CertificateRequestSpec → plan::plan, under two policies.
//
// It also checks the promise of plan::plan that "a plan is always signable": a
// CSR for the plan passes the signing-time policy and is signed.

pub fn restrictive_policy() -> Policy {
    Policy {
        min_duration: Duration::from_secs(600),
        max_duration: Duration::from_secs(30 * 86_400),
        allow_wildcard_dns: false,
        allow_ip_sans: false,
        max_sans: 3,
        max_name_len: 40,
    }
}

pub fn plan(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<CertificateRequestSpec>(data) else {
        return;
    };
    let request = CertificateRequest::new("fuzz", spec);
    for policy in [Policy::default(), restrictive_policy()] {
        check_plan(&request, &policy);
    }
}

pub fn check_plan(request: &CertificateRequest, policy: &Policy) {
    let Ok(p) = plan::plan(request, policy) else {
        return;
    };
    assert_eq!(
        plan::plan(request, policy).ok().as_ref(),
        Some(&p),
        "plan is deterministic"
    );
    let leaf = &p.leaf;
    assert!(
        leaf.sans.len() <= policy.max_sans,
        "more names than the policy allows"
    );
    assert!(
        !(leaf.sans.is_empty() && leaf.subject.common_name.is_none()),
        "a plan names something"
    );
    assert!(
        policy.min_duration <= leaf.duration && leaf.duration <= policy.max_duration,
        "the lifetime is within the policy"
    );
    if let Some(renew) = p.renew_before {
        assert!(!renew.is_zero() && renew < leaf.duration);
    }
    assert!(!leaf.usages.is_empty());
    assert!(leaf.usages.iter().all(|u| u.fits_key(p.key_algorithm)));
    assert!(policy.allow_ip_sans || leaf.sans.ips.is_empty());
    assert_eq!(p.spec_hash.len(), 24);
    let key = cached_key(p.key_algorithm);
    let csr = pki::build_csr(key, &leaf.subject, &leaf.sans).expect("a CSR for the plan");
    let csr = VerifiedCsr::parse_and_verify(&csr).expect("the plan's CSR verifies");
    // The reconciler checks at signing time with these bounds
    // (reconciler::SigningPolicy::default_for_signing).
    let signing = Policy {
        min_duration: leaf.duration,
        max_duration: leaf.duration,
        allow_wildcard_dns: true,
        allow_ip_sans: true,
        ..Policy::default()
    };
    if let Err(violation) = signing.check(leaf, &csr) {
        panic!("plan accepted what the signing policy refuses: {violation}");
    }
    let issued = pki::sign(fixture_ca(), &csr, leaf, now()).expect("a planned certificate signs");
    let renewal = plan::renewal_time(&p, issued.not_before, issued.not_after);
    assert!(renewal <= issued.not_after);
}

// ---------------------------------------------------------------------------
// duration: duration::parse and duration::format.

pub fn duration(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(d) = duration::parse(text) else { return };
    assert!(d.as_secs() <= 1_000_000_000_000, "parse caps durations");
    let formatted = duration::format(d);
    assert_eq!(
        duration::parse(&formatted),
        Ok(Duration::from_secs(d.as_secs())),
        "format({d:?}) = {formatted:?} parses back to the whole seconds"
    );
}
