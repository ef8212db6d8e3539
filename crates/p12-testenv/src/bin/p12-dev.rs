//! `p12-dev`: the development aid behind the README's demo.
//!
//! `p12-dev demo` starts a one-node cluster on this machine ([`Node`]: the
//! local control plane plus containerd, kubelet, kube-scheduler and
//! kube-proxy), installs the operator from the chart so that it runs as a real
//! pod, applies examples/ and a Java Deployment serving the issued keystore
//! behind Service shop/web, and shows the operator's probe verifying both
//! replicas. It tears the node down at the end — after a failure or a
//! SIGINT/SIGTERM too — and fails when the host is not left as it was.
//!
//! `p12-dev cluster` starts the plain local control plane (no node: the local
//! pod runner runs the operator's pods) and waits.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use p12_testenv::{Node, TestCluster};

#[derive(Parser)]
#[command(
    name = "p12-dev",
    about = "The demo on a one-node cluster, and a local control plane for p12-operator development"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a one-node cluster (containerd, kubelet, kube-proxy), install the
    /// operator with its chart, apply examples/ and a Java Deployment serving
    /// the keystore, show the probe verifying it, then tear everything down.
    Demo {
        /// Keep the node running afterwards, to explore with kubectl, until
        /// Ctrl-C (or SIGTERM); the teardown runs then.
        #[arg(long)]
        keep: bool,
    },
    /// Start the plain local control plane (etcd, kube-apiserver,
    /// kube-controller-manager; no node: the local pod runner runs the
    /// operator's pods) with the CRD, print how to reach it, and wait until
    /// Ctrl-C. For a real node use `p12-dev demo --keep`.
    Cluster,
}

const OPERATOR_NS: &str = "p12-operator";
const WORKLOAD_IMAGE: &str = "localhost/p12-testenv/workload:1";
const REPLICAS: usize = 2;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Demo { keep } => demo(keep),
        Cmd::Cluster => cluster(),
    };
    if let Err(e) = result {
        eprintln!("p12-dev: {e}");
        std::process::exit(1);
    }
}

// --- signals ----------------------------------------------------------------

/// The last SIGINT/SIGTERM/SIGHUP received (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
}

fn set_signal_action(action: libc::sighandler_t) {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only stores to an atomic (async-signal-safe),
        // or SIG_IGN.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = action;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signal, &sa, std::ptr::null_mut());
        }
    }
}

/// From now on SIGINT, SIGTERM and SIGHUP only set a flag that the demo checks:
/// it then stops what it is doing and tears the node down.
fn catch_signals() {
    set_signal_action(on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
}

/// During the teardown: a second Ctrl-C must not cut it short (ignored signals
/// stay ignored in the commands it runs, too).
fn ignore_signals() {
    set_signal_action(libc::SIG_IGN);
}

fn check_signal() -> Result<(), String> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => Ok(()),
        libc::SIGINT => Err("interrupted (SIGINT)".into()),
        libc::SIGTERM => Err("terminated (SIGTERM)".into()),
        s => Err(format!("stopped by signal {s}")),
    }
}

// --- running commands -------------------------------------------------------

fn repo() -> PathBuf {
    p12_testenv::tools::repo_root()
}

/// The host's `p12-operator` binary, next to this one (`cargo build --bins`).
fn operator_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.with_file_name("p12-operator");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing; run `cargo build --bins` first",
            bin.display()
        ))
    }
}

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// What a finished command printed.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to the end, or kills it when a signal arrives.
fn run(mut cmd: Command) -> Result<Output, String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("failed to run {program}: {e}"))?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("failed to wait for {program}: {e}"))?
        {
            break status;
        }
        if let Err(e) = check_signal() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // A Ctrl-C in the terminal reaches the command too: report the signal, not its failure.
    check_signal()?;
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The command for `program` against the node: kubectl and helm with its
/// admin kubeconfig, the host's p12-operator with KUBECONFIG set.
fn command(node: &Node, program: &str) -> Result<Command, String> {
    let mut cmd = match program {
        "kubectl" => node.cp.kubectl(),
        "helm" => node.cp.helm(),
        "p12-operator" => {
            let mut c = Command::new(operator_binary()?);
            c.env("KUBECONFIG", &node.cp.kubeconfig);
            c
        }
        other => Command::new(other),
    };
    cmd.current_dir(repo());
    Ok(cmd)
}

/// Runs a command, echoing it like a shell would, and prints its output.
fn show(node: &Node, program: &str, args: &[&str]) -> Result<String, String> {
    println!("$ {program} {}", args.join(" "));
    let mut cmd = command(node, program)?;
    cmd.args(args);
    let out = run(cmd)?;
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed ({})",
            args.join(" "),
            out.status
        ));
    }
    Ok(out.stdout)
}

/// `kubectl args…` without echo; its stdout, or the error it printed.
fn kubectl(node: &Node, args: &[&str]) -> Result<String, String> {
    let mut cmd = node.cp.kubectl();
    cmd.args(args);
    let out = run(cmd)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "`kubectl {}` failed: {}",
            args.join(" "),
            out.stderr.trim()
        ))
    }
}

/// Polls `check` every 500 ms until it returns `Some`; fails after `timeout`
/// with `what` and the last thing it saw.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Result<T, String>, String>,
) -> Result<T, String> {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < timeout {
        check_signal()?;
        match check()? {
            Ok(v) => return Ok(v),
            Err(seen) => last = seen,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!(
        "timed out after {}s waiting for {what} (last seen: {last})",
        timeout.as_secs()
    ))
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|p| Path::new(&p).join(program).is_file())
    })
}

// --- the demo ---------------------------------------------------------------

/// How long each part took, for the summary.
#[derive(Default)]
struct Timings(Vec<(&'static str, Duration)>);

impl Timings {
    fn add(&mut self, what: &'static str, since: Instant) {
        self.0.push((what, since.elapsed()));
    }
}

fn demo(keep: bool) -> Result<(), String> {
    catch_signals();
    let began = Instant::now();
    let mut timings = Timings::default();

    step("Building the container images (scripts/image operator workload)");
    println!(
        "operator: static musl release build of p12-operator (minutes the first time); workload: Debian + JRE + a Java TLS server"
    );
    let t = Instant::now();
    let images = p12_testenv::images::build(&["operator", "workload"]).map_err(|e| {
        check_signal()
            .err()
            .unwrap_or_else(|| format!("{e} (scripts/image operator workload rebuilds them)"))
    })?;
    for image in &images {
        println!("{}", image.display());
    }
    timings.add("images built or found up to date", t);
    check_signal()?;

    step(
        "Starting a one-node cluster: etcd, kube-apiserver, kube-controller-manager, containerd, kubelet, kube-scheduler, kube-proxy",
    );
    let t = Instant::now();
    let node = match Node::start("demo", &images) {
        Ok(node) => node,
        Err(e) => {
            print_log_paths(&p12_testenv::tools::target_dir().join("testenv/demo"));
            return Err(format!(
                "{e} (the node was torn down; its logs are listed above)"
            ));
        }
    };
    timings.add("node started, images imported", t);
    println!(
        "node {} Ready in {} at {} (API server {}; work folder {})",
        p12_testenv::node::NODE_NAME,
        secs(node.startup),
        node.ip,
        node.cp.server,
        node.cp.dir.display()
    );
    println!(
        "images imported into containerd: {}",
        node.imports
            .iter()
            .map(|(n, d)| format!("{n} {}", secs(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let result = check_signal().and_then(|()| show_everything(&node, keep, &mut timings));
    if let Err(e) = &result {
        eprintln!("\np12-dev: the demo failed: {e}");
        save_diagnostics(&node);
        print_log_paths(&node.cp.dir);
    }

    step("Tearing down the node");
    ignore_signals();
    println!("(Ctrl-C is ignored until the host is restored)");
    let t = Instant::now();
    let left = node.teardown();
    timings.add("teardown", t);
    if left.is_empty() {
        println!(
            "torn down in {}: every process, container, mount, link, network namespace and iptables chain of the node is gone and the sysctls are restored — the host is as it was",
            secs(t.elapsed())
        );
    } else {
        println!(
            "torn down in {}, but the host still differs from before:",
            secs(t.elapsed())
        );
        for line in &left {
            println!("  {line}");
        }
    }
    print_timings(&timings, began);
    result?;
    if !left.is_empty() {
        return Err(format!(
            "the teardown left {} thing(s) on the host (listed above); remove them by hand (ip link del, umount, iptables -F/-X) and report it",
            left.len()
        ));
    }
    Ok(())
}

fn print_timings(timings: &Timings, began: Instant) {
    step("Timings");
    for (what, d) in &timings.0 {
        println!("  {:<44} {:>7}", what, secs(*d));
    }
    println!("  {:<44} {:>7}", "total", secs(began.elapsed()));
}

/// Everything between the node coming up and its teardown.
fn show_everything(node: &Node, keep: bool, timings: &mut Timings) -> Result<(), String> {
    show(node, "kubectl", &["get", "nodes", "-o", "wide"])?;

    install_operator(node, timings)?;
    apply_examples(node, timings)?;
    read_bundle(node)?;
    serve_from_java(node, timings)?;
    look_at(node)?;

    if keep {
        step("Running until Ctrl-C (or SIGTERM); the node is torn down then");
        explore_hints(node, true)?;
        let mut last_check = Instant::now();
        loop {
            if check_signal().is_err() {
                println!("\nsignal received");
                return Ok(());
            }
            if last_check.elapsed() > Duration::from_secs(2) {
                node.cp
                    .check_alive()
                    .map_err(|e| format!("a node component stopped while kept: {e}"))?;
                last_check = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    explore_hints(node, false)
}

fn install_operator(node: &Node, timings: &mut Timings) -> Result<(), String> {
    step(
        "Installing the operator from its chart (it runs as a pod; the image is already on the node)",
    );
    let t = Instant::now();
    show(node, "kubectl", &["create", "namespace", OPERATOR_NS])?;
    show(
        node,
        "kubectl",
        &[
            "label",
            "namespace",
            OPERATOR_NS,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
    )?;
    show(
        node,
        "helm",
        &[
            "install",
            "p12-operator",
            "charts/p12-operator",
            "-n",
            OPERATOR_NS,
            "--create-namespace",
            "--set",
            "image.pullPolicy=Never",
            "--wait",
            "--timeout",
            "180s",
        ],
    )?;
    timings.add("helm install --wait (operator pod Ready)", t);
    show(
        node,
        "kubectl",
        &["get", "pods", "-n", OPERATOR_NS, "-o", "wide"],
    )?;
    Ok(())
}

fn apply_examples(node: &Node, timings: &mut Timings) -> Result<(), String> {
    step("Applying the examples (namespace shop under the restricted Pod Security Standard)");
    let t = Instant::now();
    show(node, "kubectl", &["apply", "-f", "examples/namespace.yaml"])?;
    show(
        node,
        "kubectl",
        &[
            "label",
            "namespace",
            "shop",
            "pod-security.kubernetes.io/enforce=restricted",
        ],
    )?;
    show(node, "kubectl", &["apply", "-f", "examples/"])?;
    show(
        node,
        "kubectl",
        &[
            "wait",
            "-n",
            "shop",
            "--for=condition=Ready",
            "p12cr",
            "--all",
            "--timeout=90s",
        ],
    )?;
    println!("all requests Ready {} after applying", secs(t.elapsed()));
    timings.add("examples applied to all requests Ready", t);

    step("What the operator made");
    show(node, "kubectl", &["get", "p12cr", "-n", "shop"])?;
    show(
        node,
        "kubectl",
        &[
            "get",
            "secrets",
            "-n",
            "shop",
            "-l",
            "app.kubernetes.io/managed-by=p12-operator",
        ],
    )?;
    show(
        node,
        "kubectl",
        &["describe", "secret", "web-tls", "-n", "shop"],
    )?;
    step("Inspecting the bundle (never prints the key)");
    show(
        node,
        "p12-operator",
        &["inspect", "--secret", "web-tls", "--namespace", "shop"],
    )?;
    Ok(())
}

/// Secret shop/web-tls copied to the work folder and read with OpenSSL and keytool.
fn read_bundle(node: &Node) -> Result<(), String> {
    use base64::Engine;
    step("Reading keystore.p12 with OpenSSL and Java keytool");
    let dir = node.cp.dir.join("demo-bundle");
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
    for key in ["keystore.p12", "keystore-password", "ca.crt", "tls.crt"] {
        let data = kubectl(
            node,
            &[
                "get",
                "secret",
                "web-tls",
                "-n",
                "shop",
                "-o",
                &format!("jsonpath={{.data.{}}}", key.replace('.', "\\.")),
            ],
        )?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| format!("Secret web-tls has no valid base64 {key}: {e}"))?;
        let path = dir.join(key);
        std::fs::write(&path, bytes)
            .map_err(|e| format!("failed to write {}: {e}", path.display()))?;
    }
    println!("copied to {}", dir.display());
    let ks = dir.join("keystore.p12").display().to_string();
    let pw = format!("file:{}", dir.join("keystore-password").display());
    show(
        node,
        "openssl",
        &[
            "pkcs12", "-in", &ks, "-passin", &pw, "-info", "-nokeys", "-noout",
        ],
    )?;
    show(
        node,
        "openssl",
        &[
            "verify",
            "-CAfile",
            &dir.join("ca.crt").display().to_string(),
            &dir.join("tls.crt").display().to_string(),
        ],
    )?;
    if which("keytool") {
        let password = std::fs::read_to_string(dir.join("keystore-password"))
            .map_err(|e| format!("failed to read the keystore password: {e}"))?;
        println!("$ keytool -list -storetype PKCS12 -keystore {ks} -storepass:env P12_PASS");
        let mut cmd = Command::new("keytool");
        cmd.args([
            "-list",
            "-storetype",
            "PKCS12",
            "-keystore",
            &ks,
            "-storepass:env",
            "P12_PASS",
        ])
        .env("P12_PASS", password);
        let out = run(cmd)?;
        print!("{}", out.stdout);
        if !out.status.success() {
            return Err(format!(
                "keytool could not read keystore.p12 ({}): {}",
                out.status,
                out.stderr.trim()
            ));
        }
    } else {
        println!("(keytool is not on PATH: skipped; the Java pods below read the keystore)");
    }
    Ok(())
}

/// The Java Deployment serving web-tls behind Service shop/web (443 → 8443),
/// under the restricted Pod Security Standard.
fn web_manifest() -> String {
    format!(
        "# Written by p12-dev demo: 2 Java replicas serving the keystore of Secret web-tls.
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{app: web}}
  ports: [{{name: https, port: 443, targetPort: https}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  replicas: {REPLICAS}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        seccompProfile: {{type: RuntimeDefault}}
      containers:
      - name: web
        image: {WORKLOAD_IMAGE}
        imagePullPolicy: Never
        args: [serve, --keystore, /etc/tls/keystore.p12, --password-file, /etc/tls/keystore-password, --port, \"8443\"]
        ports: [{{name: https, containerPort: 8443}}]
        readinessProbe:
          tcpSocket: {{port: https}}
          periodSeconds: 1
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {{drop: [ALL]}}
        resources:
          requests: {{cpu: 50m, memory: 128Mi}}
          limits: {{memory: 256Mi}}
        volumeMounts:
        - {{name: tls, mountPath: /etc/tls, readOnly: true}}
        - {{name: tmp, mountPath: /tmp}}
      volumes:
      - name: tls
        secret: {{secretName: web-tls}}
      - name: tmp
        emptyDir: {{}}
"
    )
}

/// Request web's probe status, parsed.
struct Probe {
    verified: (String, String, String),
    issued: String,
    endpoints: Vec<serde_json::Value>,
    json: serde_json::Value,
}

fn probe_status(node: &Node) -> Result<Probe, String> {
    let text = kubectl(node, &["get", "p12cr", "web", "-n", "shop", "-o", "json"])?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("kubectl printed no JSON for p12cr web: {e}"))?;
    let status = &json["status"];
    let verified = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Verified")
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
        .unwrap_or_default();
    Ok(Probe {
        verified,
        issued: status["fingerprintSha256"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        endpoints: status["probe"]["endpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        json: status["probe"].clone(),
    })
}

fn serve_from_java(node: &Node, timings: &mut Timings) -> Result<(), String> {
    step(&format!(
        "Serving keystore.p12 from {REPLICAS} Java pods (workload image) behind Service shop/web, port 443 → 8443"
    ));
    let t = Instant::now();
    let file = node.cp.dir.join("web-deployment.yaml");
    std::fs::write(&file, web_manifest())
        .map_err(|e| format!("failed to write {}: {e}", file.display()))?;
    println!("{}", web_manifest().trim_end());
    show(
        node,
        "kubectl",
        &["apply", "-f", &file.display().to_string()],
    )?;
    show(
        node,
        "kubectl",
        &[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            "shop",
            "--timeout=180s",
        ],
    )?;
    timings.add("Java Deployment rolled out", t);
    show(
        node,
        "kubectl",
        &["logs", "-n", "shop", "-l", "app=web", "--prefix"],
    )?;

    step("The operator's probe pods connect to both replicas over the pod network");
    let t = Instant::now();
    // At once, instead of at the request's 10 minute interval.
    show(node, "p12-operator", &["probe-now", "web", "-n", "shop"])?;
    let probe = wait_for(
        &format!("p12cr shop/web Verified=True with {REPLICAS} verified endpoints"),
        Duration::from_secs(180),
        || {
            let p = probe_status(node)?;
            let verified = p.endpoints.iter().filter(|e| e["verified"] == true).count();
            if p.verified.0 == "True" && verified == REPLICAS && p.endpoints.len() == REPLICAS {
                Ok(Ok(p))
            } else {
                Ok(Err(format!(
                    "Verified={} {}: {} ({verified} of {} endpoints verified)",
                    p.verified.0,
                    p.verified.1,
                    p.verified.2,
                    p.endpoints.len()
                )))
            }
        },
    )?;
    timings.add("probe to Verified=True", t);
    println!(
        "Verified=True {} after the probe was requested: {}",
        secs(t.elapsed()),
        probe.verified.2
    );
    Ok(())
}

/// What a person should look at.
fn look_at(node: &Node) -> Result<(), String> {
    step("What runs on the node");
    show(node, "kubectl", &["get", "pods", "-A", "-o", "wide"])?;
    show(
        node,
        "kubectl",
        &["get", "service,endpointslices", "-n", "shop"],
    )?;
    show(node, "kubectl", &["get", "p12cr", "-A"])?;

    step("Request shop/web's probe status: every endpoint serves the issued certificate");
    println!("$ kubectl get p12cr web -n shop -o jsonpath='{{.status.probe}}'   (formatted)");
    let p = probe_status(node)?;
    println!(
        "requested {}, last probe {}",
        p.json["requested"].as_str().unwrap_or("-"),
        p.json["lastProbeTime"].as_str().unwrap_or("-")
    );
    println!("issued certificate  sha256 {}", p.issued);
    println!(
        "{:<20} {:<8} {:<8} {:<8} {:<6} SERVED SHA-256",
        "ENDPOINT", "VERIFIED", "MATCHES", "TLS", "MS"
    );
    for e in &p.endpoints {
        let s = |k: &str| match &e[k] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            v => v.to_string(),
        };
        println!(
            "{:<20} {:<8} {:<8} {:<8} {:<6} {}",
            s("address"),
            s("verified"),
            s("matchesIssued"),
            s("tlsVersion"),
            s("handshakeMillis"),
            s("servedFingerprintSha256")
        );
    }
    println!(
        "Verified={} ({}): {}",
        p.verified.0, p.verified.1, p.verified.2
    );
    step("The Java servers saw the probe pod's TLS handshakes");
    println!("$ kubectl logs -n shop -l app=web --prefix | grep TLSv");
    let logs = kubectl(node, &["logs", "-n", "shop", "-l", "app=web", "--prefix"])?;
    for line in logs.lines().filter(|l| l.contains(" TLSv")) {
        println!("{line}");
    }
    Ok(())
}

fn explore_hints(node: &Node, running: bool) -> Result<(), String> {
    let kc = node.cp.kubeconfig.display().to_string();
    let kubectl = node.cp.bin.join("kubectl").display().to_string();
    let operator = operator_binary()?.display().to_string();
    let env = format!("KUBECONFIG={kc}");
    if running {
        println!("The node keeps running. In another shell, explore it with:");
    } else {
        println!(
            "\nWith `scripts/demo --keep` the node keeps running until Ctrl-C; explore it with:"
        );
    }
    for (what, line) in [
        ("the pods", format!("{env} {kubectl} get pods -A -o wide")),
        ("the requests", format!("{env} {kubectl} get p12cr -A")),
        (
            "web's status",
            format!("{env} {kubectl} get p12cr web -n shop -o yaml"),
        ),
        (
            "the operator's log",
            format!("{env} {kubectl} logs -n {OPERATOR_NS} deploy/p12-operator"),
        ),
        (
            "the Java servers' log",
            format!("{env} {kubectl} logs -n shop -l app=web --prefix"),
        ),
        (
            "probe again now",
            format!("{env} {operator} probe-now web -n shop --wait"),
        ),
        (
            "renew; the next probe reports StaleCertificate",
            format!("{env} {operator} renew web -n shop"),
        ),
        (
            "…until the pods reload it",
            format!("{env} {kubectl} rollout restart deployment/web -n shop"),
        ),
    ] {
        println!("  # {what}\n  {line}");
    }
    Ok(())
}

/// Before the teardown of a failed demo: what the pods said, for later.
fn save_diagnostics(node: &Node) {
    let save = |name: &str, args: &[&str]| {
        let mut cmd = node.cp.kubectl();
        cmd.args(args).arg("--request-timeout=10s");
        if let Ok(out) = cmd.output() {
            let _ = std::fs::write(
                node.cp.dir.join(name),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
        }
    };
    save(
        "operator-pod.log",
        &[
            "logs",
            "-n",
            OPERATOR_NS,
            "-l",
            "app.kubernetes.io/name=p12-operator",
            "--tail=-1",
        ],
    );
    save(
        "web-pods.log",
        &[
            "logs",
            "-n",
            "shop",
            "-l",
            "app=web",
            "--prefix",
            "--tail=-1",
        ],
    );
    save("events.log", &["get", "events", "-A", "-o", "wide"]);
    save("pods.log", &["get", "pods", "-A", "-o", "wide"]);
}

fn print_log_paths(dir: &Path) {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    if logs.is_empty() {
        eprintln!("no component logs in {}", dir.display());
        return;
    }
    eprintln!("logs (the components', and what the pods said):");
    for log in logs {
        eprintln!("  {}", log.display());
    }
}

// --- p12-dev cluster --------------------------------------------------------

fn cluster() -> Result<(), String> {
    println!(
        "\x1b[1m==> Starting the local control plane (etcd, kube-apiserver, kube-controller-manager)\x1b[0m"
    );
    let began = Instant::now();
    let cluster = TestCluster::start("dev-cluster").map_err(|e| e.to_string())?;
    let cp = cluster.control_plane();
    println!(
        "ready in {} at {} (work folder {})",
        secs(began.elapsed()),
        cp.server,
        cp.dir.display()
    );
    cluster.start_pod_runner(&operator_binary()?);
    for args in [
        &["apply", "--server-side", "-f", "crds/"][..],
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/certificaterequests.p12-operator.io",
            "crd/issuancepolicies.p12-operator.io",
        ][..],
    ] {
        println!("$ kubectl {}", args.join(" "));
        let out = cp
            .kubectl()
            .args(args)
            .current_dir(repo())
            .output()
            .map_err(|e| format!("failed to run kubectl: {e}"))?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Err(format!(
                "`kubectl {}` failed ({}); the control plane's logs are in {}",
                args.join(" "),
                out.status,
                cp.dir.display()
            ));
        }
    }
    println!(
        "\nThe local control plane runs until Ctrl-C (no node: the local pod runner runs the operator's pods; `p12-dev demo --keep` gives a real node).\n  export KUBECONFIG={}\n  export PATH={}:$PATH\nRun the operator against it with `cargo run -- run --namespace p12-operator` (after `kubectl create namespace p12-operator`).",
        cluster.kubeconfig.display(),
        cp.bin.display()
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
