//! `p12-dev`: the development aid behind the README's demo. It starts the local
//! control plane (etcd, kube-apiserver, kube-controller-manager built from Go
//! modules), the local pod runner, and the operator, then applies the examples.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use p12_testenv::{TestCluster, process};

#[derive(Parser)]
#[command(
    name = "p12-dev",
    about = "Local control plane and demo for p12-operator development"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the local control plane, run the operator, apply examples/ and show the result.
    Demo {
        /// Keep everything running afterwards (until Ctrl-C) to explore with kubectl.
        #[arg(long)]
        keep: bool,
    },
    /// Start the local control plane with the pod runner and the CRD, print how to reach it, and wait.
    Cluster,
}

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

fn repo() -> PathBuf {
    p12_testenv::tools::repo_root()
}

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

/// Runs a command, echoing it like a shell would, and prints its output.
fn show(cluster: &TestCluster, program: &str, args: &[&str]) -> Result<String, String> {
    println!("$ {program} {}", args.join(" "));
    let mut cmd = match program {
        "kubectl" => cluster.control_plane().kubectl(),
        "p12-operator" => {
            let mut c = Command::new(operator_binary()?);
            c.env("KUBECONFIG", &cluster.kubeconfig);
            c
        }
        other => Command::new(other),
    };
    let out = cmd
        .args(args)
        .current_dir(repo())
        .output()
        .map_err(|e| format!("failed to run {program}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed ({})",
            args.join(" "),
            out.status
        ));
    }
    Ok(text)
}

fn start(label: &str) -> Result<TestCluster, String> {
    step("Starting the local control plane (etcd, kube-apiserver, kube-controller-manager)");
    let began = Instant::now();
    let cluster = TestCluster::start(label).map_err(|e| e.to_string())?;
    let cp = cluster.control_plane();
    println!(
        "ready in {:.1}s at {} (work folder {})",
        began.elapsed().as_secs_f64(),
        cp.server,
        cp.dir.display()
    );
    cluster.start_pod_runner(&operator_binary()?);
    show(
        &cluster,
        "kubectl",
        &[
            "apply",
            "--server-side",
            "-f",
            "crds/p12-operator.io_certificaterequests.yaml",
        ],
    )?;
    show(
        &cluster,
        "kubectl",
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/certificaterequests.p12-operator.io",
        ],
    )?;
    Ok(cluster)
}

fn demo(keep: bool) -> Result<(), String> {
    let cluster = start("demo")?;
    let cp = cluster.control_plane();

    step("Running the operator (p12-operator run)");
    show(
        &cluster,
        "kubectl",
        &["create", "namespace", "p12-operator"],
    )?;
    let log = cp.dir.join("operator.log");
    let mut cmd = Command::new(operator_binary()?);
    cmd.args([
        "run",
        "--namespace",
        "p12-operator",
        "--probe-grace",
        "2s",
        "--admin-bind-address",
        "127.0.0.1:0",
    ])
    .env("KUBECONFIG", &cluster.kubeconfig)
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&log).map_err(|e| e.to_string())?)
    .stderr(
        std::fs::File::options()
            .append(true)
            .open(&log)
            .map_err(|e| e.to_string())?,
    );
    let mut operator =
        process::spawn_tied(cmd).map_err(|e| format!("failed to start the operator: {e}"))?;
    println!("operator log: {}", log.display());

    step("Applying the examples");
    show(
        &cluster,
        "kubectl",
        &["apply", "-f", "examples/namespace.yaml"],
    )?;
    show(&cluster, "kubectl", &["apply", "-f", "examples/"])?;
    let began = Instant::now();
    show(
        &cluster,
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
    println!(
        "all requests Ready {:.1}s after applying",
        began.elapsed().as_secs_f64()
    );

    step("What the operator made");
    show(&cluster, "kubectl", &["get", "p12cr", "-n", "shop"])?;
    show(
        &cluster,
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
        &cluster,
        "kubectl",
        &["describe", "secret", "web-tls", "-n", "shop"],
    )?;
    if has_subcommand("inspect") {
        step("Inspecting the bundle (never prints the key)");
        show(
            &cluster,
            "p12-operator",
            &["inspect", "--secret", "web-tls", "--namespace", "shop"],
        )?;
    }
    step("Reading keystore.p12 with OpenSSL and Java keytool");
    let secret_dir = cp.dir.join("demo-bundle");
    std::fs::create_dir_all(&secret_dir).map_err(|e| e.to_string())?;
    for key in ["keystore.p12", "keystore-password", "ca.crt", "tls.crt"] {
        let out = cp
            .kubectl()
            .args([
                "get",
                "secret",
                "web-tls",
                "-n",
                "shop",
                "-o",
                &format!("jsonpath={{.data.{}}}", key.replace('.', "\\.")),
            ])
            .output()
            .map_err(|e| e.to_string())?;
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(out.stdout.trim_ascii())
            .map_err(|e| e.to_string())?;
        std::fs::write(secret_dir.join(key), bytes).map_err(|e| e.to_string())?;
    }
    let ks = secret_dir.join("keystore.p12").display().to_string();
    let pw = format!("file:{}", secret_dir.join("keystore-password").display());
    show(
        &cluster,
        "openssl",
        &[
            "pkcs12", "-in", &ks, "-passin", &pw, "-info", "-nokeys", "-noout",
        ],
    )?;
    show(
        &cluster,
        "openssl",
        &[
            "verify",
            "-CAfile",
            &secret_dir.join("ca.crt").display().to_string(),
            &secret_dir.join("tls.crt").display().to_string(),
        ],
    )?;
    if which("keytool") {
        let pw_text = std::fs::read_to_string(secret_dir.join("keystore-password"))
            .map_err(|e| e.to_string())?;
        println!("$ keytool -list -storetype PKCS12 -keystore {ks} -storepass:env P12_PASS");
        let out = Command::new("keytool")
            .args([
                "-list",
                "-storetype",
                "PKCS12",
                "-keystore",
                &ks,
                "-storepass:env",
                "P12_PASS",
            ])
            .env("P12_PASS", pw_text)
            .output()
            .map_err(|e| e.to_string())?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }

    if which("java") {
        serve_and_verify(&cluster, &secret_dir)?;
    }

    step("Done");
    if keep {
        println!(
            "The cluster keeps running until Ctrl-C. In another shell:\n  export KUBECONFIG={}\n  {}/kubectl get p12cr -A",
            cluster.kubeconfig.display(),
            cp.bin.display()
        );
        wait_forever(&mut operator);
    }
    process::stop(&mut operator, Duration::from_secs(10));
    Ok(())
}

/// A Java TLS service that loads keystore.p12, behind Service shop/web, and the
/// operator's probe confirming it serves the issued certificate.
fn serve_and_verify(cluster: &TestCluster, bundle: &Path) -> Result<(), String> {
    use p12_testenv::netns::TestNet;
    step("Serving keystore.p12 from a Java TLS server behind Service shop/web");
    let net = TestNet::create(9).map_err(|e| e.to_string())?;
    let ip = net.add_host().map_err(|e| e.to_string())?;
    let ready = bundle.join("java-ready");
    let _ = std::fs::remove_file(&ready);
    let source = repo().join("crates/p12-operator/tests/java/TlsEndpoint.java");
    let mut java = net
        .command("java")
        .arg(&source)
        .arg(bundle.join("keystore.p12"))
        .arg(bundle.join("keystore-password"))
        .arg(ip.to_string())
        .arg("8443")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(bundle.join("java.log")).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("failed to start java: {e}"))?;
    let began = Instant::now();
    while !ready.exists() {
        if began.elapsed() > Duration::from_secs(60) {
            let _ = java.kill();
            return Err(format!(
                "the Java server did not start; see {}",
                bundle.join("java.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "java crates/p12-operator/tests/java/TlsEndpoint.java keystore.p12 … listening on {ip}:8443 (a test host in network namespace {})",
        net.name
    );
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec: {{ports: [{{name: https, port: 443, targetPort: 8443}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: https, port: 8443, protocol: TCP}}]\nendpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}]\n"
    );
    let file = bundle.join("web-service.yaml");
    std::fs::write(&file, manifest).map_err(|e| e.to_string())?;
    show(
        cluster,
        "kubectl",
        &["apply", "-f", &file.display().to_string()],
    )?;
    let result = show(
        cluster,
        "kubectl",
        &[
            "wait",
            "-n",
            "shop",
            "--for=condition=Verified",
            "p12cr/web",
            "--timeout=90s",
        ],
    );
    show(cluster, "kubectl", &["get", "p12cr", "-n", "shop"])?;
    show(
        cluster,
        "kubectl",
        &[
            "get",
            "p12cr",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.probe}",
        ],
    )?;
    println!();
    let _ = java.kill();
    let _ = java.wait();
    result.map(|_| ())
}

fn cluster() -> Result<(), String> {
    let cluster = start("dev-cluster")?;
    println!(
        "\nThe local control plane runs until Ctrl-C.\n  export KUBECONFIG={}\n  export PATH={}:$PATH\nRun the operator against it with `cargo run -- run --namespace p12-operator` (after `kubectl create namespace p12-operator`).",
        cluster.kubeconfig.display(),
        cluster.control_plane().bin.display()
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn wait_forever(operator: &mut std::process::Child) {
    loop {
        if let Ok(Some(status)) = operator.try_wait() {
            println!("the operator exited ({status})");
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn has_subcommand(name: &str) -> bool {
    operator_binary()
        .ok()
        .and_then(|b| Command::new(b).args([name, "--help"]).output().ok())
        .is_some_and(|o| o.status.success())
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|p| Path::new(&p).join(program).is_file())
    })
}
