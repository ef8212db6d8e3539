//! Shared helpers for the integration tests: the one control plane per test
//! binary, fresh namespaces, waiting for conditions.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use p12_testenv::TestCluster;

/// The control plane of this test binary, with the local pod runner running the
/// `p12-operator` binary cargo built for these tests.
pub fn cluster() -> &'static TestCluster {
    let c = TestCluster::shared();
    c.start_pod_runner(Path::new(env!("CARGO_BIN_EXE_p12-operator")));
    c
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

use p12_testenv::process;

/// Installs the committed CRDs with `kubectl apply` and waits until they are
/// served; unless [`keep_the_default_policy`] was called, also an
/// IssuancePolicy that allows every request in every namespace, so that tests
/// about something else may ask for any name.
pub fn install_crd() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let cp = cluster().control_plane();
        for plural in p12_operator::api::CRDS {
            let crd =
                p12_testenv::tools::repo_root().join(format!("crds/p12-operator.io_{plural}.yaml"));
            let out = cp
                .kubectl()
                .args(["apply", "--server-side", "-f"])
                .arg(&crd)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "CRD apply failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = cp
                .kubectl()
                .args([
                    "wait",
                    "--for=condition=Established",
                    "--timeout=30s",
                    &format!("crd/{plural}.p12-operator.io"),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "CRD not established: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if !STRICT.load(std::sync::atomic::Ordering::SeqCst) {
            let out = kubectl_apply(ALLOW_EVERYTHING, "default");
            assert!(
                out.status.success(),
                "allow-everything policy: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

static STRICT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs no allow-everything policy in this test binary: requests meet the
/// built-in default policy and the IssuancePolicies the tests create. Call it
/// before anything installs the CRDs.
pub fn keep_the_default_policy() {
    STRICT.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// An IssuancePolicy allowing whatever the operator's own bounds allow.
pub const ALLOW_EVERYTHING: &str = r#"apiVersion: p12-operator.io/v1alpha1
kind: IssuancePolicy
metadata:
  name: tests-allow-everything
spec:
  namespaces: {selector: {}}
  allow:
    dnsNames: ['**']
    ipRanges: [0.0.0.0/0, '::/0']
    uris: ['*']
    emailAddresses: ['*']
    commonNames: ['*']
    subject: {organizations: ['*'], organizationalUnits: ['*'], countries: ['*'], localities: ['*'], provinces: ['*']}
    usages: [serverAuth, clientAuth, codeSigning, emailProtection, timeStamping, ocspSigning]
    maxDuration: 87600h
"#;

/// An operator process (`p12-operator run`) on the host, talking to the local
/// control plane as cluster admin. Its stderr goes to `log`.
pub struct Operator {
    pub child: Mutex<Child>,
    pub log: PathBuf,
    /// The operator's namespace (holds the CA Secret).
    pub namespace: String,
}

impl Operator {
    pub fn start(label: &str, extra_args: &[&str]) -> Operator {
        Self::start_named(label, label, extra_args)
    }

    /// Like `start`, with the operator namespace from `label` and the log file from `log_label`
    /// (several replicas share a namespace and lease).
    pub fn start_named(label: &str, log_label: &str, extra_args: &[&str]) -> Operator {
        Self::start_with_env(label, log_label, extra_args, &[])
    }

    /// Like `start_named`, with extra environment variables (e.g. `P12_CRASH_AT`).
    pub fn start_with_env(
        label: &str,
        log_label: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        install_crd();
        let cp = cluster().control_plane();
        let namespace = format!("p12-system-{label}");
        let out = cp
            .kubectl()
            .args(["create", "namespace", &namespace])
            .output()
            .unwrap();
        assert!(
            out.status.success() || String::from_utf8_lossy(&out.stderr).contains("AlreadyExists"),
            "creating {namespace}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = cp.dir.join(format!("operator-{log_label}.log"));
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_p12-operator"));
        cmd.args([
            "--log-level",
            "trace",
            "run",
            "--namespace",
            &namespace,
            "--min-duration",
            "30s",
        ])
        .args(["--admin-bind-address", "127.0.0.1:0"])
        .args(extra_args)
        .envs(env.iter().copied())
        .env("KUBECONFIG", &cp.kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap(),
        )
        .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        let child = process::spawn_tied(cmd).expect("the operator starts");
        Operator {
            child: Mutex::new(child),
            log,
            namespace,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// The admin address the operator logged (it listens on 127.0.0.1:0 in tests).
    pub async fn admin_address(&self) -> String {
        eventually(
            Duration::from_secs(30),
            "the operator's admin address in its log",
            || {
                let logs = self.logs();
                async move {
                    let line = logs
                        .lines()
                        .find(|l| l.contains("admin endpoints listening"))?;
                    let at = line.find("addr=")? + 5;
                    Some(line[at..].split_whitespace().next()?.to_string())
                }
            },
        )
        .await
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// CPU seconds the operator has used (user + system), from /proc.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // Fields 14 and 15 of /proc/pid/stat (utime, stime), counted after the comm field.
        (ticks(11) + ticks(12)) / 100.0
    }

    pub fn exited(&self) -> bool {
        self.child
            .lock()
            .unwrap()
            .try_wait()
            .ok()
            .flatten()
            .is_some()
    }

    pub fn stop(&self) {
        process::stop(&mut self.child.lock().unwrap(), Duration::from_secs(10));
    }
}

/// The operator shared by the tests of one binary.
pub fn operator() -> &'static Operator {
    static OP: OnceLock<Operator> = OnceLock::new();
    OP.get_or_init(|| Operator::start("shared", &[]))
}

/// `kubectl apply -f -` of `yaml` into `namespace`.
pub fn kubectl_apply(yaml: &str, namespace: &str) -> Output {
    use std::io::Write;
    let mut child = cluster()
        .control_plane()
        .kubectl()
        .args(["apply", "-n", namespace, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs a command with `P12_PASS` set to `password` (never on the command line).
pub fn run_with_password(program: &str, args: &[&str], password: &str) -> Output {
    Command::new(program)
        .args(args)
        .env("P12_PASS", password)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not be started: {e}"))
}

/// A plain HTTP GET on loopback; returns (status code, body).
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}
