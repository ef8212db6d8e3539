//! Interop: what the pure core issues, opened and used by real tools — the
//! OpenSSL 3 CLI, Java's keytool and a JSSE TLS server — without Kubernetes.
//!
//! One fixture (built once, shared by the tests) covers every key algorithm ×
//! both keystore profiles with a self-signed root of the same algorithm, plus
//! root → intermediate → leaf with the CA chain made by the openssl CLI.
//!
//! Findings pinned by these tests (OpenSSL 3.0.x, OpenJDK 17):
//! - Modern2023 and LegacyDES both open with `openssl pkcs12` *without*
//!   `-legacy`: 3DES and SHA-1 are in OpenSSL 3's default provider (only RC2/RC4 need it).
//! - Ed25519 keys open in OpenSSL 3.0 because we write PKCS#8 v1.
//! - JSSE in Java 17 serves Ed25519 certificates too (EdDSA in TLS since JDK 15).
//!
//! Passwords and keys are never printed; tool stderr is scrubbed of the password.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use p12_operator::keystore::{self, Profile};
use p12_operator::pki::{
    CertificateAuthority, CsrSubject, IssuedCertificate, KeyAlgorithm, LeafProfile, Policy,
    PrivateKey, SubjectAltNames, Usage, VerifiedCsr, build_csr, fingerprint_sha256,
    key_matches_certificate, sign,
};
use p12_operator::sensitive::SecretString;
use rand::Rng;

const ALIAS: &str = "server";

/// One keystore under test and everything needed to check it.
struct Case {
    name: String,
    dir: PathBuf,
    profile: Profile,
    algorithm: KeyAlgorithm,
    issued: IssuedCertificate,
    /// Certificates expected in the keystore entry: leaf, then the CA chain.
    chain_pems: Vec<String>,
    /// Intermediate certificates clients do not trust but need (PEM file), if any.
    untrusted: Option<PathBuf>,
}

impl Case {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

struct Fixture {
    password: SecretString,
    cases: Vec<Case>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn build_fixture() -> Fixture {
    // Under target/tmp rather than /tmp: a static is never dropped, so clean up from the last run instead.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("p12-interop");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let password: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    let password = SecretString::from(password);
    let now = jiff::Timestamp::now();
    let mut cases = Vec::new();

    for algorithm in KeyAlgorithm::ALL {
        let ca = CertificateAuthority::generate_self_signed(
            algorithm,
            &format!("interop {algorithm} CA"),
            Duration::from_secs(30 * 86400),
            now,
        )
        .unwrap();
        add_cases(
            &mut cases,
            &base,
            &password,
            &ca,
            algorithm,
            &slug(algorithm),
            None,
        );
    }

    let dir = base.join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    make_openssl_intermediate(&dir);
    let mut bundle = std::fs::read(dir.join("int.pem")).unwrap();
    bundle.extend(std::fs::read(dir.join("root.pem")).unwrap());
    let ca = CertificateAuthority::load(
        &bundle,
        &std::fs::read(dir.join("int.key")).unwrap(),
        jiff::Timestamp::now(),
    )
    .unwrap();
    assert_eq!(ca.chain().len(), 2);
    add_cases(
        &mut cases,
        &base,
        &password,
        &ca,
        KeyAlgorithm::EcdsaP384,
        "intermediate-ecdsa-p384",
        Some(dir.join("int.pem")),
    );

    Fixture { password, cases }
}

fn slug(algorithm: KeyAlgorithm) -> String {
    algorithm.to_string().to_lowercase().replace([' ', '-'], "")
}

/// Issues one leaf for `localhost`/127.0.0.1 and writes its keystore and truststore in both profiles.
fn add_cases(
    cases: &mut Vec<Case>,
    base: &Path,
    password: &SecretString,
    ca: &CertificateAuthority,
    algorithm: KeyAlgorithm,
    label: &str,
    untrusted: Option<PathBuf>,
) {
    let now = jiff::Timestamp::now();
    let profile = LeafProfile {
        subject: CsrSubject::with_common_name("localhost"),
        sans: SubjectAltNames {
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse::<IpAddr>().unwrap()],
            ..SubjectAltNames::default()
        },
        usages: vec![Usage::ServerAuth, Usage::ClientAuth],
        duration: Duration::from_secs(7 * 86400),
    };
    let key = PrivateKey::generate(algorithm).unwrap();
    let csr =
        VerifiedCsr::parse_and_verify(&build_csr(&key, &profile.subject, &profile.sans).unwrap())
            .unwrap();
    Policy::default().check(&profile, &csr).unwrap();
    let issued = sign(ca, &csr, &profile, now).unwrap();

    let mut chain_pems = vec![issued.pem.clone()];
    chain_pems.extend(ca.chain().iter().map(|der| pem_of(der)));

    for keystore_profile in [Profile::Modern2023, Profile::LegacyDES] {
        let name = format!("{label}-{keystore_profile}");
        let dir = base.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let keystore = keystore::build_keystore(
            &key,
            &issued.der,
            ca.chain(),
            ALIAS,
            password,
            keystore_profile,
        )
        .unwrap();
        let truststore =
            keystore::build_truststore(&[ca.root_der().to_vec()], password, keystore_profile)
                .unwrap();
        std::fs::write(dir.join("keystore.p12"), keystore.expose()).unwrap();
        std::fs::write(dir.join("truststore.p12"), truststore.expose()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.root_pem()).unwrap();
        std::fs::write(dir.join("leaf.pem"), &issued.pem).unwrap();
        cases.push(Case {
            name,
            dir,
            profile: keystore_profile,
            algorithm,
            issued: issued.clone(),
            chain_pems: chain_pems.clone(),
            untrusted: untrusted.clone(),
        });
    }
}

fn pem_of(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Root (RSA 3072) → intermediate (ECDSA P-256), made the way a company PKI would.
fn make_openssl_intermediate(dir: &Path) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:3072",
        "-nodes",
        "-keyout",
        "root.key",
        "-out",
        "root.pem",
        "-days",
        "60",
        "-subj",
        "/C=DE/O=Interop Corp/OU=PKI/CN=Interop Root CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-new",
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
        "/C=DE/O=Interop Corp/OU=PKI/CN=Interop Issuing CA",
    ]);
    std::fs::write(
        dir.join("int.ext"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
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
        "40",
        "-extfile",
        "int.ext",
    ]);
}

/// Runs a tool with the password in `P12_PASS` (never on the command line).
fn run_with_password(program: &str, args: &[&str], password: &str) -> Output {
    Command::new(program)
        .args(args)
        .env("P12_PASS", password)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not be started: {e}"))
}

fn scrubbed(bytes: &[u8], password: &SecretString) -> String {
    String::from_utf8_lossy(bytes).replace(password.expose(), "<password>")
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The text between the first `-----BEGIN {label}-----` and its END line, inclusive.
fn pem_block<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = text[start..].find(&end)? + start + end.len();
    Some(&text[start..stop])
}

#[test]
fn every_keystore_opens_in_openssl_without_legacy_and_holds_the_key_and_full_chain() {
    let fixture = fixture();
    for case in &fixture.cases {
        let keystore = case.path("keystore.p12");
        let output = run_with_password(
            "openssl",
            &[
                "pkcs12",
                "-in",
                path_str(&keystore),
                "-passin",
                "env:P12_PASS",
                "-nodes",
                "-info",
            ],
            fixture.password.expose(),
        );
        assert!(
            output.status.success(),
            "{}: openssl pkcs12 failed: {}",
            case.name,
            scrubbed(&output.stderr, &fixture.password)
        );
        let info = scrubbed(&output.stderr, &fixture.password);
        let expected_mac = match case.profile {
            Profile::Modern2023 => "MAC: sha256, Iteration 2048",
            Profile::LegacyDES => "MAC: sha1, Iteration 2048",
        };
        assert!(
            info.contains(expected_mac),
            "{}: expected {expected_mac:?} in {info}",
            case.name
        );
        // stdout holds the private key: inspect it, never print it.
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            stdout.matches("-----BEGIN PRIVATE KEY-----").count(),
            1,
            "{}: one PKCS#8 key",
            case.name
        );
        let key_pem = pem_block(&stdout, "PRIVATE KEY").unwrap();
        let key = PrivateKey::from_pem(key_pem).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(key.algorithm(), case.algorithm, "{}", case.name);
        assert!(
            key_matches_certificate(&key, &case.issued.der).unwrap(),
            "{}: key matches the leaf",
            case.name
        );
        assert_eq!(
            stdout.matches("-----BEGIN CERTIFICATE-----").count(),
            case.chain_pems.len(),
            "{}: leaf plus the full CA chain",
            case.name
        );
        for cert in &case.chain_pems {
            assert!(
                stdout.contains(cert.trim()),
                "{}: a chain certificate is missing",
                case.name
            );
        }
        assert!(
            stdout.contains(&format!("friendlyName: {ALIAS}")),
            "{}: the alias is the friendly name",
            case.name
        );

        let truststore = case.path("truststore.p12");
        let output = run_with_password(
            "openssl",
            &[
                "pkcs12",
                "-in",
                path_str(&truststore),
                "-passin",
                "env:P12_PASS",
                "-nokeys",
            ],
            fixture.password.expose(),
        );
        assert!(
            output.status.success(),
            "{}: {}",
            case.name,
            scrubbed(&output.stderr, &fixture.password)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let root = std::fs::read_to_string(case.path("ca.pem")).unwrap();
        assert_eq!(
            stdout.matches("-----BEGIN CERTIFICATE-----").count(),
            1,
            "{}",
            case.name
        );
        assert!(
            stdout.contains(root.trim()),
            "{}: the truststore holds the root",
            case.name
        );
        assert!(!stdout.contains("PRIVATE KEY"), "{}", case.name);
    }
}

#[test]
fn a_wrong_password_is_refused_by_openssl() {
    let fixture = fixture();
    for case in &fixture.cases {
        for file in ["keystore.p12", "truststore.p12"] {
            let output = run_with_password(
                "openssl",
                &[
                    "pkcs12",
                    "-in",
                    path_str(&case.path(file)),
                    "-passin",
                    "env:P12_PASS",
                    "-nodes",
                ],
                "not-the-password",
            );
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !output.status.success(),
                "{}/{file}: opened with a wrong password",
                case.name
            );
            assert!(
                stderr.contains("Mac verify error"),
                "{}/{file}: {stderr}",
                case.name
            );
            assert!(!String::from_utf8_lossy(&output.stdout).contains("PRIVATE KEY"));
        }
    }
}

#[test]
fn every_leaf_verifies_with_openssl_against_the_trusted_root_only() {
    let fixture = fixture();
    for case in &fixture.cases {
        let ca = case.path("ca.pem");
        let leaf = case.path("leaf.pem");
        let mut args = vec!["verify", "-x509_strict", "-CAfile", path_str(&ca)];
        if let Some(untrusted) = &case.untrusted {
            args.extend(["-untrusted", path_str(untrusted)]);
        }
        args.extend([
            "-purpose",
            "sslserver",
            "-verify_hostname",
            "localhost",
            "-verify_ip",
            "127.0.0.1",
        ]);
        args.push(path_str(&leaf));
        let output = Command::new("openssl").args(&args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.trim().ends_with(": OK"),
            "{}: {stdout}{}",
            case.name,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn keytool_lists_the_private_key_entry_with_its_full_chain_and_the_trusted_ca() {
    let fixture = fixture();
    for case in &fixture.cases {
        let list = |file: &str| {
            let output = run_with_password(
                "keytool",
                &[
                    "-list",
                    "-v",
                    "-storetype",
                    "PKCS12",
                    "-keystore",
                    path_str(&case.path(file)),
                    "-storepass:env",
                    "P12_PASS",
                ],
                fixture.password.expose(),
            );
            let stdout = scrubbed(&output.stdout, &fixture.password);
            assert!(
                output.status.success(),
                "{}/{file}: keytool failed: {stdout}",
                case.name
            );
            stdout
        };
        let keystore = list("keystore.p12");
        assert!(
            keystore.contains("Your keystore contains 1 entry"),
            "{}: {keystore}",
            case.name
        );
        assert!(
            keystore.contains(&format!("Alias name: {ALIAS}")),
            "{}: {keystore}",
            case.name
        );
        assert!(
            keystore.contains("Entry type: PrivateKeyEntry"),
            "{}: {keystore}",
            case.name
        );
        let chain_line = format!("Certificate chain length: {}", case.chain_pems.len());
        assert!(
            keystore.contains(&chain_line),
            "{}: expected {chain_line:?} in {keystore}",
            case.name
        );

        let truststore = list("truststore.p12");
        assert!(
            truststore.contains("Alias name: ca"),
            "{}: {truststore}",
            case.name
        );
        assert!(
            truststore.contains("Entry type: trustedCertEntry"),
            "{}: {truststore}",
            case.name
        );
    }
}

/// Kills the Java server if a test fails before it exits by itself.
struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port_file: &Path, deadline: Instant) -> Result<u16, String> {
    loop {
        if let Ok(text) = std::fs::read_to_string(port_file) {
            return text
                .trim()
                .parse::<u16>()
                .map_err(|_| text.trim().to_owned());
        }
        if Instant::now() > deadline {
            return Err("timed out waiting for the Java server's port".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects with `openssl s_client` trusting only the root, and returns its stdout.
fn s_client(case: &Case, port: u16) -> (bool, String) {
    let connect = format!("127.0.0.1:{port}");
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &connect,
            "-CAfile",
            path_str(&case.path("ca.pem")),
        ])
        .args([
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
            "-verify_return_error",
            "-showcerts",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Keep stdin open until the server has sent its line and closed, so the greeting is read.
    let stdin = child.stdin.take();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    (status.success(), stdout)
}

#[test]
fn java_serves_every_keystore_and_openssl_s_client_verifies_the_issued_certificate() {
    let fixture = fixture();
    let java_source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java/TlsServer.java");
    let mut args = vec![java_source.into_os_string().into_string().unwrap()];
    for case in &fixture.cases {
        args.push(path_str(&case.path("keystore.p12")).to_owned());
        args.push(fixture.password.expose().to_owned());
        args.push(path_str(&case.path("port")).to_owned());
    }
    let server = Command::new("java")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut server = ServerGuard(server.expect("java runs"));

    let deadline = Instant::now() + Duration::from_secs(180);
    let mut failures = Vec::new();
    for case in &fixture.cases {
        let port = match wait_for_port(&case.path("port"), deadline) {
            Ok(port) => port,
            Err(reason) => {
                failures.push(format!("{}: Java could not serve it: {reason}", case.name));
                continue;
            }
        };
        let (ok, stdout) = s_client(case, port);
        if !ok || !stdout.contains("Verify return code: 0 (ok)") {
            failures.push(format!(
                "{}: s_client did not verify the server: {stdout}",
                case.name
            ));
            continue;
        }
        let served =
            pem_block(&stdout, "CERTIFICATE").expect("s_client shows the served certificate");
        let served = pem::parse(served).unwrap();
        assert_eq!(
            fingerprint_sha256(served.contents()),
            case.issued.fingerprint_sha256,
            "{}: Java served the certificate we issued",
            case.name
        );
        assert_eq!(
            stdout.matches("-----BEGIN CERTIFICATE-----").count(),
            case.chain_pems.len(),
            "{}: Java sent the full chain",
            case.name
        );
        assert!(
            stdout.contains("hello from TlsServer"),
            "{}: application data flowed",
            case.name
        );
    }

    let status = server.0.wait().unwrap();
    let mut log = String::new();
    server
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let log = log.replace(fixture.password.expose(), "<password>");
    assert!(
        failures.is_empty(),
        "handshake failures:\n{}\nJava server log:\n{log}",
        failures.join("\n")
    );
    assert!(status.success(), "Java server log:\n{log}");
    assert_eq!(
        log.lines().filter(|l| l.starts_with("OK ")).count(),
        fixture.cases.len(),
        "{log}"
    );
    eprintln!("Java server log:\n{log}");
}
