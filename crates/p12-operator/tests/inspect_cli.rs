//! `p12-operator inspect --file`: the binary run on keystores built with the
//! project's own pki and keystore modules. No Kubernetes involved.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use base64::Engine;
use jiff::{SignedDuration, Timestamp};
use p12_operator::keystore::{Profile, build_keystore, build_truststore};
use p12_operator::pki::{
    CertificateAuthority, CsrSubject, KeyAlgorithm, LeafProfile, PrivateKey, SubjectAltNames,
    Usage, VerifiedCsr, build_csr, fingerprint_sha256, sign,
};
use p12_operator::sensitive::SecretString;
use serde_json::Value;

const PASSWORD: &str = "Tr0ub4dor&3-inspect";

struct Bundle {
    ca: CertificateAuthority,
    key: PrivateKey,
    leaf: Vec<u8>,
    dir: tempfile::TempDir,
}

impl Bundle {
    fn keystore_path(&self) -> std::path::PathBuf {
        self.dir.path().join("keystore.p12")
    }

    /// Every form in which the key could leak: PEM, base64 of the DER, hex of the DER.
    fn secrets(&self) -> Vec<String> {
        let der = self.key.to_pkcs8_der();
        let pem = self.key.to_pem();
        let pem_body: String = pem
            .expose()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        vec![
            PASSWORD.to_owned(),
            pem_body[..40].to_owned(),
            base64::engine::general_purpose::STANDARD.encode(der.expose())[..40].to_owned(),
            hex::encode(der.expose())[..40].to_owned(),
            "PRIVATE KEY".to_owned(),
        ]
    }
}

/// A keystore for web.shop.svc signed by a fresh CA at `at`, written to a temporary file.
fn bundle_at(at: Timestamp, lifetime: Duration) -> Bundle {
    let ca = CertificateAuthority::generate_self_signed(
        KeyAlgorithm::EcdsaP384,
        "shop CA",
        Duration::from_secs(3650 * 86400),
        at,
    )
    .unwrap();
    let profile = LeafProfile {
        subject: CsrSubject {
            organizations: vec!["Shop Inc".into()],
            ..CsrSubject::with_common_name("web.shop.svc")
        },
        sans: SubjectAltNames {
            dns: vec!["web.shop.svc".into(), "web.shop.svc.cluster.local".into()],
            ..Default::default()
        },
        usages: vec![Usage::ServerAuth],
        duration: lifetime,
    };
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr =
        VerifiedCsr::parse_and_verify(&build_csr(&key, &profile.subject, &profile.sans).unwrap())
            .unwrap();
    let leaf = sign(&ca, &csr, &profile, at).unwrap().der;
    let bytes = build_keystore(
        &key,
        &leaf,
        ca.chain(),
        "web",
        &SecretString::from(PASSWORD),
        Profile::Modern2023,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keystore.p12"), bytes.expose()).unwrap();
    Bundle { ca, key, leaf, dir }
}

fn bundle() -> Bundle {
    bundle_at(Timestamp::now(), Duration::from_secs(90 * 86400))
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn inspect(args: &[&str], password: Option<&str>) -> Run {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_p12-operator"));
    command
        .arg("inspect")
        .args(args)
        .env_remove("P12_PASSWORD")
        .env("KUBECONFIG", "/nonexistent");
    if let Some(password) = password {
        command.env("P12_PASSWORD", password);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn assert_no_secrets(bundle: &Bundle, run: &Run) {
    for secret in bundle.secrets() {
        assert!(
            !run.stdout.contains(&secret),
            "stdout leaks {secret:?}:\n{}",
            run.stdout
        );
        assert!(
            !run.stderr.contains(&secret),
            "stderr leaks {secret:?}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn json_output_describes_subject_names_fingerprint_chain_and_key_match() {
    let bundle = bundle();
    let run = inspect(
        &["--file", path(&bundle.keystore_path()), "-o", "json"],
        Some(PASSWORD),
    );

    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let cert = &report["certificate"];
    assert_eq!(cert["subject"], "O=Shop Inc, CN=web.shop.svc");
    assert_eq!(cert["issuer"], "CN=shop CA");
    assert_eq!(
        cert["dnsNames"],
        serde_json::json!(["web.shop.svc", "web.shop.svc.cluster.local"])
    );
    assert_eq!(cert["fingerprintSha256"], fingerprint_sha256(&bundle.leaf));
    assert_eq!(cert["keyAlgorithm"], "ECDSA P-256");
    let days_left = cert["daysLeft"].as_i64().unwrap();
    assert!(
        (89..=90).contains(&days_left),
        "90 days, less the moments since issuance: {days_left}"
    );
    assert_eq!(report["alias"], "web");
    assert_eq!(report["keyMatchesCertificate"], true);
    assert_eq!(report["ok"], true);
    let chain = report["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1]["subject"], "CN=shop CA");
    assert_eq!(chain[1]["fingerprintSha256"], bundle.ca.fingerprint());
    assert_no_secrets(&bundle, &run);
}

#[test]
fn text_output_is_for_people_and_reads_the_password_from_a_file() {
    let bundle = bundle();
    let password_file = bundle.dir.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let run = inspect(
        &[
            "--file",
            path(&bundle.keystore_path()),
            "--password-file",
            path(&password_file),
        ],
        Some("not-this-one"),
    );

    assert_eq!(run.code, 0, "{}", run.stderr);
    for line in [
        "Subject:           O=Shop Inc, CN=web.shop.svc".to_owned(),
        "DNS names:         web.shop.svc, web.shop.svc.cluster.local".to_owned(),
        format!("SHA-256:           {}", fingerprint_sha256(&bundle.leaf)),
        "Key matches cert:  yes".to_owned(),
        "Chain (2):".to_owned(),
        "Result:            ok".to_owned(),
    ] {
        assert!(
            run.stdout.contains(&line),
            "expected {line:?} in:\n{}",
            run.stdout
        );
    }
    assert_no_secrets(&bundle, &run);
}

#[test]
fn a_wrong_password_exits_with_one_and_names_the_problem_not_the_password() {
    let bundle = bundle();
    let guess = "my-guessed-Passw0rd";
    let run = inspect(
        &["--file", path(&bundle.keystore_path()), "-o", "json"],
        Some(guess),
    );

    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr.trim_end().lines().last().unwrap(),
        format!(
            "error: failed to open {}: wrong password (or the file was altered)",
            bundle.keystore_path().display()
        )
    );
    assert!(!run.stderr.contains(guess));
    assert_no_secrets(&bundle, &run);
}

#[test]
fn an_expired_certificate_is_reported_and_exits_with_one() {
    let issued_at = Timestamp::now()
        .checked_sub(SignedDuration::from_hours(72))
        .unwrap();
    let bundle = bundle_at(issued_at, Duration::from_secs(86400));
    let run = inspect(
        &["--file", path(&bundle.keystore_path()), "-o", "json"],
        Some(PASSWORD),
    );

    assert_eq!(run.code, 1, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert!(report["certificate"]["daysLeft"].as_i64().unwrap() < 0);
    let failed: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["name"], "certificateValid");
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("the certificate expired at"),
        "{failed:?}"
    );
}

#[test]
fn a_truststore_lists_its_trusted_certificates() {
    let bundle = bundle();
    let truststore = bundle.dir.path().join("truststore.p12");
    let bytes = build_truststore(
        &[bundle.ca.root_der().to_vec()],
        &SecretString::from(PASSWORD),
        Profile::LegacyDES,
    )
    .unwrap();
    std::fs::write(&truststore, bytes.expose()).unwrap();
    let run = inspect(&["--file", path(&truststore), "-o", "json"], Some(PASSWORD));

    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(report.get("certificate").is_none());
    let trusted = report["truststore"].as_array().unwrap();
    assert_eq!(trusted.len(), 1);
    assert_eq!(trusted[0]["alias"], "ca");
    assert_eq!(trusted[0]["subject"], "CN=shop CA");
    assert_eq!(trusted[0]["fingerprintSha256"], bundle.ca.fingerprint());
}

#[test]
fn usage_errors_exit_with_two() {
    let bundle = bundle();
    let keystore = bundle.keystore_path();

    let run = inspect(&["--file", path(&keystore)], None);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("no password given (use --password-file or set P12_PASSWORD)"),
        "{}",
        run.stderr
    );

    let run = inspect(&["--file", "/nonexistent/keystore.p12"], Some(PASSWORD));
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("error: failed to read /nonexistent/keystore.p12"),
        "{}",
        run.stderr
    );

    let run = inspect(
        &["--file", path(&keystore), "--secret", "web-tls"],
        Some(PASSWORD),
    );
    assert_eq!(
        run.code, 2,
        "--file and --secret exclude each other: {}",
        run.stderr
    );

    let run = inspect(&[], Some(PASSWORD));
    assert_eq!(run.code, 2, "a source is required: {}", run.stderr);

    let run = inspect(&["--file", path(&keystore), "--password", PASSWORD], None);
    assert_eq!(run.code, 2, "there is no --password flag: {}", run.stderr);
}

#[test]
fn a_hostile_keystore_is_refused_before_decoding_with_the_limit_named() {
    let hostile = p12_testenv::tools::repo_root()
        .join("fuzz/regressions/keystore/pbkdf2-2pow31-inside-encrypted-safe.p12");
    let run = inspect(&["--file", path(&hostile)], Some("fuzz-password"));

    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr.trim_end().lines().last().unwrap(),
        format!(
            "error: failed to open {}: refused before decoding, a PBKDF2 key derivation asks for 2147483648 iterations; the limit is 1000000",
            hostile.display()
        )
    );
    assert!(!run.stderr.contains("fuzz-password"));
}
