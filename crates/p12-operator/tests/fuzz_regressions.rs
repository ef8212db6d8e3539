//! Replays the fuzzers' inputs through the very harness functions the fuzz
//! targets run (`fuzz/src/lib.rs`), under plain `cargo test`:
//!
//! - every file of `fuzz/regressions/<target>/`: inputs that once crashed, hung
//!   or blew up memory, kept so the bug stays fixed;
//! - every file of `fuzz/seeds/<target>/`: the valid starting inputs, so a
//!   harness that no longer accepts them is noticed without cargo-fuzz.
//!
//! Inputs that still trigger an open bug are listed in [`KNOWN_BUGS`]; the
//! generic replay skips them and an `#[ignore]`d test per bug replays each.
//! Fixing the bug means: delete its entry, delete the `#[ignore]`.
//!
//! `cargo test --test fuzz_regressions -- --ignored regenerate_seeds` rewrites
//! the generated seeds (see docs/fuzzing.md).

#[path = "../../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Inputs under `fuzz/regressions/` that reproduce a bug not fixed yet: (target, file).
const KNOWN_BUGS: &[(&str, &str)] = &[];

/// A generous bound for one input in a debug build; a hang is far beyond it.
const PER_INPUT: Duration = Duration::from_secs(20);

fn fuzz_dir() -> PathBuf {
    p12_testenv::tools::repo_root().join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay_file(target: &str, path: &Path) {
    let data = std::fs::read(path).unwrap();
    let started = Instant::now();
    assert!(harness::run(target, &data), "unknown target {target}");
    let took = started.elapsed();
    assert!(
        took < PER_INPUT,
        "{} took {took:?} (limit {PER_INPUT:?})",
        path.display()
    );
}

/// Replays regressions and seeds of `target`, except known open bugs; returns how many.
fn replay(target: &str) -> usize {
    let mut count = 0;
    for kind in ["regressions", "seeds"] {
        for path in files(&fuzz_dir().join(kind).join(target)) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if KNOWN_BUGS.contains(&(target, name.as_str())) {
                continue;
            }
            replay_file(target, &path);
            count += 1;
        }
    }
    count
}

#[test]
fn every_target_has_a_harness_a_fuzz_target_and_seeds() {
    for target in harness::TARGETS {
        assert!(
            fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{target}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{target}.rs"
        );
        assert!(
            !files(&fuzz_dir().join("seeds").join(target)).is_empty(),
            "fuzz/seeds/{target}/ is empty"
        );
    }
    for (target, file) in KNOWN_BUGS {
        assert!(
            fuzz_dir()
                .join("regressions")
                .join(target)
                .join(file)
                .is_file(),
            "known bug input {target}/{file} is missing"
        );
    }
}

#[test]
fn csr() {
    assert!(replay("csr") > 0);
}

#[test]
fn private_key() {
    assert!(replay("private_key") > 0);
}

#[test]
fn ca_load() {
    assert!(replay("ca_load") > 0);
}

#[test]
fn cert_info() {
    assert!(replay("cert_info") > 0);
}

#[test]
fn keystore() {
    assert!(replay("keystore") > 0);
}

#[test]
fn secret() {
    assert!(replay("secret") > 0);
}

#[test]
fn plan() {
    assert!(replay("plan") > 0);
}

#[test]
fn duration() {
    assert!(replay("duration") > 0);
}

/// Opens a regression keystore as `inspect` and the harness do; it must be
/// refused as too costly, with the limit in the message.
fn keystore_refusal(file: &str) -> String {
    let path = fuzz_dir().join("regressions/keystore").join(file);
    let error = p12_operator::keystore::read_keystore(
        &std::fs::read(path).unwrap(),
        &p12_operator::sensitive::SecretString::from(harness::PASSWORD),
    )
    .unwrap_err();
    assert_eq!(error.reason(), "KeystoreTooCostly", "{file}: {error}");
    error.to_string()
}

/// A 175-byte keystore without a MAC whose one encrypted safe names scrypt with
/// N = 2^20, r = 8, p = 16: p12-keystore's limits (memory ≤ 1 GiB, p ≤ 16) admit
/// it, so `read_keystore` allocated 1 GiB and ran 16 scrypt lanes (~40 s of CPU)
/// before any password check. Refused by `keystore::cost::check_cost`.
#[test]
fn regression_keystore_scrypt_is_refused() {
    let message = keystore_refusal("scrypt-1gib-p16-no-mac.p12");
    assert!(
        message.contains("1024 MiB of memory (N = 1048576, r = 8); the limit is 32 MiB"),
        "{message}"
    );
}

/// The same scrypt parameters one level down, where a scan of the clear bytes
/// cannot see them: a PKCS#8 shrouded key bag inside a safe that is itself
/// encrypted (PBES2, PBKDF2-HMAC-SHA256 2048 iterations, AES-256-CBC) under the
/// keystore's password. Whoever can write the Secret can read its
/// `keystore-password`, so `inspect --secret` took 1 GiB and ~40 s of CPU.
/// `check_cost` decrypts the safe (its own parameters checked first) and finds them.
#[test]
fn regression_keystore_scrypt_inside_an_encrypted_safe_is_refused() {
    let message = keystore_refusal("scrypt-inside-encrypted-safe.p12");
    assert!(message.contains("the limit is 32 MiB"), "{message}");
}

/// A shrouded key bag asking for 2^31 PBKDF2 iterations, inside a safe encrypted
/// as above (2048 iterations, password `fuzz-password`), no MAC; 335 bytes,
/// written by hand (DER) with AES from Python's `cryptography`. Refused by name
/// of the limit, before any derivation of that count runs.
#[test]
fn regression_keystore_pbkdf2_2pow31_inside_an_encrypted_safe_is_refused() {
    let message = keystore_refusal("pbkdf2-2pow31-inside-encrypted-safe.p12");
    assert!(
        message.contains(
            "a PBKDF2 key derivation asks for 2147483648 iterations; the limit is 1000000"
        ),
        "{message}"
    );
}

/// What `CertificateAuthority::load` reports for a CA that loads but cannot issue.
const CA_LOAD_REFUSAL: &str = "SigningFailed";

/// Loads a regression CA input as the `ca_load` harness splits it; it must be refused.
fn ca_load_refusal(file: &str) -> p12_operator::pki::PkiError {
    let data = std::fs::read(fuzz_dir().join("regressions/ca_load").join(file)).unwrap();
    let (bundle, key) = harness::split_ca_input(&data);
    match p12_operator::pki::CertificateAuthority::load(bundle, key, harness::now()) {
        Ok(_) => panic!("{file}: the CA loaded, but it cannot issue"),
        Err(error) => error,
    }
}

/// The fixture CA certificate with its EC curve OID changed from P-256
/// (1.2.840.10045.3.1.7) to 1.2.840.10045.1.97.7, a curve that does not exist
/// (a two-byte edit the fuzzer made; the public point and the key are untouched). `keys::same_public_key`
/// compares only the algorithm OID and the key bits, so `CertificateAuthority::load`
/// accepted it, and every `pki::sign` then failed with SigningFailed ("the signature
/// does not verify with the CA key") instead of the load failing with a clear reason.
#[test]
fn regression_ca_load_refuses_a_certificate_for_another_curve() {
    let error = ca_load_refusal("cert-names-unknown-curve.txt");
    assert_eq!(error.reason(), CA_LOAD_REFUSAL, "{error}");
}

/// Found by the fuzzer from the OpenSSL intermediate seed: the intermediate's
/// subject holds an AttributeTypeAndValue whose value (tag 0x2c, length 52)
/// overruns its 10-byte SEQUENCE. x509-parser still parses the CA certificate, so
/// `CertificateAuthority::load` accepted it; the subject is copied verbatim into
/// every leaf as its issuer, and then the leaf does not parse: every `pki::sign`
/// failed with SigningFailed ("the issued certificate does not parse").
#[test]
fn regression_ca_load_refuses_a_subject_no_leaf_can_carry() {
    let error = ca_load_refusal("subject-with-overlong-attribute.txt");
    assert_eq!(error.reason(), CA_LOAD_REFUSAL, "{error}");
}

// ---------------------------------------------------------------------------
// Seed generation: `cargo test --test fuzz_regressions -- --ignored regenerate_seeds`.

mod seeds {
    use super::harness;
    use p12_operator::api::{CertificateRequest, CertificateRequestSpec};
    use p12_operator::bundle;
    use p12_operator::keystore::{self, Profile};
    use p12_operator::pki::{self, CsrSubject, KeyAlgorithm, PrivateKey, SubjectAltNames};
    use p12_operator::sensitive::SecretString;
    use std::path::Path;
    use std::process::Command;

    fn write(target: &str, name: &str, bytes: &[u8]) {
        let dir = super::fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let output = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn pem_der(pem_text: &[u8]) -> Vec<u8> {
        pem::parse(pem_text).unwrap().into_contents()
    }

    #[test]
    #[ignore = "writes fuzz/seeds/; run by hand"]
    fn regenerate_seeds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ca = harness::fixture_ca();
        let now = harness::now();
        let password = SecretString::from(harness::PASSWORD);

        // csr: ours for every algorithm (DER and PEM), one from openssl with many fields.
        let subject = CsrSubject {
            common_name: Some("web.shop.svc".into()),
            organizations: vec!["Shop Inc".into()],
            organizational_units: vec!["Payments".into(), "Platform".into()],
            countries: vec!["DE".into()],
            localities: vec!["Berlin".into()],
            provinces: vec!["Berlin".into()],
        };
        let sans = SubjectAltNames {
            dns: vec!["web.shop.svc".into(), "*.web.shop.svc".into()],
            ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            uris: vec!["spiffe://cluster.local/ns/shop/sa/web".into()],
            emails: vec!["ops@example.com".into()],
        };
        for (name, algorithm) in [
            ("p256", KeyAlgorithm::EcdsaP256),
            ("p384", KeyAlgorithm::EcdsaP384),
            ("rsa2048", KeyAlgorithm::Rsa2048),
            ("ed25519", KeyAlgorithm::Ed25519),
        ] {
            let key = harness::cached_key(algorithm);
            let der = pki::build_csr(key, &subject, &sans).unwrap();
            write("csr", &format!("{name}.der"), &der);
            if algorithm == KeyAlgorithm::EcdsaP256 {
                let pem_text = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.clone()));
                write("csr", "p256.pem", pem_text.as_bytes());
            }
            // private_key: PKCS#8 DER and PEM of each.
            write(
                "private_key",
                &format!("{name}.pk8.der"),
                key.to_pkcs8_der().expose(),
            );
            write(
                "private_key",
                &format!("{name}.pem"),
                key.to_pem().expose().as_bytes(),
            );
        }
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-nodes",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-keyout",
                "ossl.key",
                "-out",
                "ossl.csr",
                "-subj",
                "/C=DE/ST=Berlin/L=Berlin/O=Shop Inc/OU=Payments/CN=web.shop.svc",
                "-addext",
                "subjectAltName=DNS:web.shop.svc,IP:10.0.0.7,email:ops@example.com,URI:spiffe://x/y",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-addext",
                "keyUsage=critical,digitalSignature",
                "-addext",
                "subjectKeyIdentifier=hash",
            ],
        );
        write(
            "csr",
            "openssl-p256.pem",
            &std::fs::read(dir.join("ossl.csr")).unwrap(),
        );
        // private_key: the openssl formats SEC1 (with EC PARAMETERS) and PKCS#1.
        openssl(
            dir,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-out",
                "sec1.pem",
            ],
        );
        write(
            "private_key",
            "openssl-sec1-with-params.pem",
            &std::fs::read(dir.join("sec1.pem")).unwrap(),
        );
        openssl(dir, &["genrsa", "-traditional", "-out", "rsa1.pem", "2048"]);
        write(
            "private_key",
            "openssl-pkcs1.pem",
            &std::fs::read(dir.join("rsa1.pem")).unwrap(),
        );

        // ca_load: the fixture CA with its key (NUL-separated), an openssl
        // intermediate (P-384) + root (RSA) bundle with the intermediate's key.
        let mut input = harness::CA_PEM.as_bytes().to_vec();
        input.push(0);
        input.extend_from_slice(harness::CA_KEY_PEM.as_bytes());
        write("ca_load", "fixture-root.txt", &input);
        write(
            "ca_load",
            "fixture-root-cert-only.pem",
            harness::CA_PEM.as_bytes(),
        );
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "root.key",
                "-out",
                "root.pem",
                "-days",
                "36500",
                "-subj",
                "/C=DE/O=Example Corp/OU=PKI/OU=Roots/CN=Example Root CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-nodes",
                "-keyout",
                "int.key",
                "-out",
                "int.csr",
                "-subj",
                "/C=DE/O=Example Corp/OU=PKI/CN=Example Issuing CA",
            ],
        );
        std::fs::write(
            dir.join("int.ext"),
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
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
                "36000",
                "-extfile",
                "int.ext",
            ],
        );
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
        let mut input = read("int.pem");
        input.extend(read("root.pem"));
        input.push(0);
        input.extend(read("int.key"));
        write("ca_load", "openssl-intermediate-and-root.txt", &input);

        // cert_info: DER certificates (fixture root, openssl root and intermediate, an issued leaf).
        write("cert_info", "fixture-root.der", ca.cert_der());
        write(
            "cert_info",
            "openssl-rsa-root.der",
            &pem_der(&read("root.pem")),
        );
        write(
            "cert_info",
            "openssl-p384-intermediate.der",
            &pem_der(&read("int.pem")),
        );

        // An issued bundle for the fixture plan: leaf, keystores, Secret.
        let plan = harness::fixture_plan();
        let key = harness::cached_key(plan.key_algorithm);
        let csr = pki::build_csr(key, &plan.leaf.subject, &plan.leaf.sans).unwrap();
        let csr = pki::VerifiedCsr::parse_and_verify(&csr).unwrap();
        let issued = pki::sign(ca, &csr, &plan.leaf, now).unwrap();
        write("cert_info", "leaf.der", &issued.der);

        // keystore: both profiles, keystore and truststore; one made by openssl.
        for profile in [Profile::Modern2023, Profile::LegacyDES] {
            let ks =
                keystore::build_keystore(key, &issued.der, ca.chain(), "fuzz", &password, profile)
                    .unwrap();
            write("keystore", &format!("keystore-{profile}.p12"), ks.expose());
            let ts =
                keystore::build_truststore(&[ca.root_der().to_vec()], &password, profile).unwrap();
            write(
                "keystore",
                &format!("truststore-{profile}.p12"),
                ts.expose(),
            );
        }
        std::fs::write(dir.join("leaf.pem"), &issued.pem).unwrap();
        std::fs::write(dir.join("leaf.key"), key.to_pem().expose()).unwrap();
        std::fs::write(dir.join("ca.pem"), harness::CA_PEM).unwrap();
        openssl(
            dir,
            &[
                "pkcs12",
                "-export",
                "-in",
                "leaf.pem",
                "-inkey",
                "leaf.key",
                "-certfile",
                "ca.pem",
                "-name",
                "openssl",
                "-passout",
                &format!("pass:{}", harness::PASSWORD),
                "-out",
                "openssl.p12",
            ],
        );
        write("keystore", "openssl-default.p12", &read("openssl.p12"));

        // secret: the Secret the operator would write, and a damaged variant.
        let material = bundle::Material {
            key: PrivateKey::from_pem(key.to_pem().expose()).unwrap(),
            leaf_der: issued.der.clone(),
        };
        let data = bundle::build_data(
            &material,
            harness::fixture_authorities(),
            plan,
            &password,
            true,
        )
        .unwrap();
        let facts = bundle::CertFacts::of(&issued.der).unwrap();
        let annotations = bundle::secret_annotations("fuzz/fuzz", plan, &facts, ca, 1, None);
        let input = harness::SecretInput {
            data: data.clone(),
            annotations,
        };
        assert_eq!(
            bundle::assess(
                &input.data,
                &input.annotations,
                &bundle::Existing::read(&input.data),
                plan,
                harness::fixture_authorities(),
                &password,
                false,
                false,
                now
            ),
            bundle::Verdict::Current,
            "the seed Secret is current"
        );
        write("secret", "current.bin", &harness::encode_secret(&input));
        let mut pem_only = input.data.clone();
        pem_only.remove(bundle::KEYSTORE);
        pem_only.remove(bundle::TRUSTSTORE);
        write(
            "secret",
            "pem-only.bin",
            &harness::encode_secret(&harness::SecretInput {
                data: pem_only,
                annotations: input.annotations.clone(),
            }),
        );

        // plan: the fixture spec, a full spec, an RSA one with a password Secret.
        write(
            "plan",
            "fixture.json",
            harness::fixture_spec_json().as_bytes(),
        );
        write(
            "plan",
            "full.json",
            br#"{"secretName":"web-tls","commonName":"web.shop.svc","subject":{"organizations":["Shop Inc"],"organizationalUnits":["Payments"],"countries":["DE"],"localities":["Berlin"],"provinces":["Berlin"]},"dnsNames":["web.shop.svc","*.web.shop.svc"],"ipAddresses":["10.0.0.7","::1"],"uris":["spiffe://cluster.local/ns/shop/sa/web"],"emailAddresses":["ops@example.com"],"usages":["serverAuth","clientAuth","digitalSignature","keyAgreement"],"duration":"720h","renewBefore":"240h","privateKey":{"algorithm":"ECDSA","size":384,"rotationPolicy":"Never"},"keystore":{"profile":"LegacyDES","alias":"web"}}"#,
        );
        write(
            "plan",
            "rsa.json",
            br#"{"secretName":"api-tls","dnsNames":["api.example.com"],"usages":["serverAuth","keyEncipherment","dataEncipherment"],"duration":"1h30m","privateKey":{"algorithm":"RSA","size":4096},"keystore":{"passwordSecretRef":{"name":"pw","key":"password"}}}"#,
        );
        write(
            "plan",
            "ed25519.json",
            br#"{"secretName":"e","commonName":"ed","usages":["clientAuth"],"duration":"24h","privateKey":{"algorithm":"Ed25519"}}"#,
        );
        let spec: CertificateRequestSpec =
            serde_json::from_str(harness::fixture_spec_json()).unwrap();
        let _ = CertificateRequest::new("fuzz", spec);

        // duration
        for (name, text) in [
            ("go", "1h30m"),
            ("fraction", "1.5h"),
            ("micro", "250ms10us5µs7ns"),
            ("days", "2160h"),
        ] {
            write("duration", &format!("{name}.txt"), text.as_bytes());
        }
    }
}

// ---------------------------------------------------------------------------
// scripts/fuzz must not report a fuzz run that did not happen as a pass. Run on
// a copy of the script, with a fake `cargo` first on PATH that plays cargo-fuzz
// (no build, no fuzzing; FAKE_* select its behaviour).

mod script {
    use std::process::Command;

    const FAKE_CARGO: &str = r#"#!/usr/bin/env bash
case "$1" in
  install) echo "error: no network (fake)" >&2; exit 101 ;;
  fuzz) ;;
  *) echo "fake cargo: unexpected $*" >&2; exit 3 ;;
esac
if [ -n "${FAKE_NO_CARGO_FUZZ:-}" ]; then echo "error: no such command: fuzz" >&2; exit 101; fi
case "$2" in
  --version) echo "cargo-fuzz 0.0.0-fake" ;;
  list) for t in ${FAKE_TARGETS:-}; do echo "$t"; done ;;
  build)
    if [ -n "${FAKE_ASAN_FAILS:-}" ] && [[ " $* " == *" --sanitizer address "* ]]; then
      echo "error: asan (fake)" >&2; exit 1
    fi ;;
  run) echo "stat::number_of_executed_units: ${FAKE_RUNS:-1000}" ;;
  *) exit 3 ;;
esac
"#;

    struct Run {
        code: i32,
        stderr: String,
        stdout: String,
    }

    /// Runs a copy of scripts/fuzz (so its logs stay out of the repository) with `env`.
    fn fuzz(env: &[(&str, &str)], args: &[&str]) -> Run {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = p12_testenv::tools::repo_root();
        std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
        std::fs::create_dir_all(dir.path().join("fuzz/seeds")).unwrap();
        std::fs::copy(root.join("scripts/fuzz"), dir.path().join("scripts/fuzz")).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("cargo"), FAKE_CARGO).unwrap();
        std::fs::set_permissions(bin.join("cargo"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let path = format!("{}:/usr/bin:/bin", bin.display());
        let mut command = Command::new("bash");
        command
            .arg(dir.path().join("scripts/fuzz"))
            .args(args)
            .env_clear()
            .env("PATH", path)
            .env("HOME", dir.path());
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        }
    }

    #[test]
    fn under_ci_a_missing_cargo_fuzz_fails_the_run_and_outside_ci_warns() {
        let run = fuzz(&[("FAKE_NO_CARGO_FUZZ", "1"), ("CI", "true")], &["1"]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            run.stderr
                .contains("fuzz: FAILED — cargo-fuzz could not be installed"),
            "{}",
            run.stderr
        );
        let run = fuzz(&[("FAKE_NO_CARGO_FUZZ", "1")], &["1"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(
            run.stderr.contains("WARNING: SKIPPED, NOTHING WAS FUZZED"),
            "{}",
            run.stderr
        );
    }

    #[test]
    fn under_ci_a_failed_asan_build_fails_the_run_and_outside_ci_falls_back_loudly() {
        let env = [("FAKE_TARGETS", "a b"), ("FAKE_ASAN_FAILS", "1")];
        let run = fuzz(&[env[0], env[1], ("CI", "true")], &["1"]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            run.stderr.contains("the address sanitizer build failed"),
            "{}",
            run.stderr
        );
        let run = fuzz(&env, &["1"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stderr.contains("WITHOUT A SANITIZER"), "{}", run.stderr);
        assert!(
            run.stdout
                .contains("no crashes, hangs or memory blow-ups in 2 targets (sanitizer=none)"),
            "{}",
            run.stdout
        );
    }

    #[test]
    fn no_target_to_run_fails_instead_of_reporting_no_crashes() {
        for ci in ["true", ""] {
            let run = fuzz(&[("CI", ci)], &["1"]);
            assert_eq!(run.code, 1, "CI={ci}: {}", run.stderr);
            assert!(
                run.stderr.contains("no fuzz target found"),
                "{}",
                run.stderr
            );
            assert!(!run.stdout.contains("no crashes"), "{}", run.stdout);
        }
        let run = fuzz(&[("FAKE_TARGETS", "a b")], &["1", "nonesuch"]);
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(
            run.stderr.contains("no fuzz target named 'nonesuch'"),
            "{}",
            run.stderr
        );
    }

    #[test]
    fn a_target_that_executed_no_input_fails_the_run() {
        let run = fuzz(&[("FAKE_TARGETS", "a b"), ("FAKE_RUNS", "0")], &["1"]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains("a executed no input"), "{}", run.stderr);
        assert!(!run.stdout.contains("no crashes"), "{}", run.stdout);
    }

    #[test]
    fn a_run_of_every_target_passes() {
        let run = fuzz(&[("FAKE_TARGETS", "a b"), ("CI", "true")], &["1"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(
            run.stdout
                .contains("no crashes, hangs or memory blow-ups in 2 targets (sanitizer=address)"),
            "{}",
            run.stdout
        );
    }
}
