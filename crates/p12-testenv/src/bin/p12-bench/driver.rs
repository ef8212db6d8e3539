//! The load driver: starts the writer under test as a child process, applies
//! the CRD, creates namespaces, unrelated Secrets and requests, and waits for
//! them. Uses the control plane and the kube client; measures nothing itself.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use p12_core::api::CertificateRequest;
use p12_testenv::{TestCluster, process};
use serde_json::json;

use crate::{Args, OPERATOR_NAMESPACE, RUN_LABEL};

/// What the watch saw, per request (`namespace/name`).
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) ready: HashMap<String, Instant>,
    /// Ready lastTransitionTime − creationTimestamp, whole seconds (server clocks).
    pub(crate) server_latency: HashMap<String, i64>,
    pub(crate) renewed: HashMap<String, Instant>,
}

pub(crate) fn is_ready(cr: &CertificateRequest) -> bool {
    cr.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

pub(crate) fn key_of(cr: &CertificateRequest) -> String {
    format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any())
}

pub(crate) fn request_object(
    args: &Args,
    run_id: &str,
    ns: &str,
    i: usize,
) -> anyhow::Result<CertificateRequest> {
    let name = format!("req-{i:05}");
    let mut private_key = json!({ "algorithm": args.algorithm });
    if let Some(size) = args.size {
        private_key["size"] = json!(size);
    }
    let value = json!({
        "apiVersion": "p12-operator.io/v1alpha1",
        "kind": "CertificateRequest",
        "metadata": { "name": name, "namespace": ns, "labels": { RUN_LABEL: run_id } },
        "spec": {
            "secretName": format!("{name}-tls"),
            "dnsNames": [format!("{name}.{ns}.svc"), format!("{name}.{ns}.svc.cluster.local")],
            "privateKey": private_key,
            "keystore": { "profile": args.profile },
        }
    });
    serde_json::from_value(value).context("building a CertificateRequest")
}

/// The operator binary under test, and whether it is the static musl build the
/// image ships (its own allocator) or a glibc build (glibc malloc, whose
/// memory figures differ).
pub(crate) struct OperatorBinary {
    pub(crate) path: PathBuf,
    /// `Some(true)`: static; `Some(false)`: dynamically linked; `None`: not an
    /// ELF file (a wrapper script, e.g. for heaptrack).
    pub(crate) is_static: Option<bool>,
}

impl OperatorBinary {
    /// `--operator-bin` if given; else the static musl build of the same
    /// profile as this `p12-bench` (what the image ships); else the glibc
    /// `p12-operator` next to this binary.
    pub(crate) fn choose(args: &Args) -> anyhow::Result<OperatorBinary> {
        let here = std::env::current_exe().context("locating p12-bench")?;
        let dir = here.parent().context("p12-bench has no folder")?;
        let path = match &args.operator_bin {
            Some(p) => p.clone(),
            None => {
                // target/<profile>/p12-bench → target/x86_64-unknown-linux-musl/<profile>/
                let musl = dir.parent().zip(dir.file_name()).map(|(target, profile)| {
                    target
                        .join("x86_64-unknown-linux-musl")
                        .join(profile)
                        .join("p12-operator")
                });
                match musl {
                    Some(m) if m.exists() => m,
                    _ => dir.join("p12-operator"),
                }
            }
        };
        if !path.exists() {
            bail!(
                "{} does not exist; build it first (see docs/benchmarks.md, \"Commands\")",
                path.display()
            );
        }
        let is_static = has_interpreter(&path).ok().map(|dynamic| !dynamic);
        Ok(OperatorBinary { path, is_static })
    }

    pub(crate) fn describe(&self) -> String {
        format!("{} ({})", self.path.display(), linking(self.is_static))
    }
}

/// How a binary is linked, in words, from [`OperatorBinary::is_static`]
/// (also as recorded in the JSON report).
pub(crate) fn linking(is_static: Option<bool>) -> &'static str {
    match is_static {
        Some(true) => "static musl build, as in the image",
        Some(false) => {
            "dynamically linked glibc build, NOT the image's binary: glibc malloc, other memory figures"
        }
        None => "not an ELF file: a wrapper, linking unknown",
    }
}

/// Whether an ELF file asks for a program interpreter (`PT_INTERP`), i.e. is
/// dynamically linked. Static and static-pie binaries have none.
fn has_interpreter(path: &std::path::Path) -> anyhow::Result<bool> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let mut head = [0u8; 64];
    f.read_exact(&mut head)?;
    if &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let phoff = u64::from_le_bytes(head[0x20..0x28].try_into()?);
    let phentsize = u16::from_le_bytes(head[0x36..0x38].try_into()?) as usize;
    let phnum = u16::from_le_bytes(head[0x38..0x3a].try_into()?) as usize;
    let mut table = vec![0u8; phentsize * phnum];
    f.seek(SeekFrom::Start(phoff))?;
    f.read_exact(&mut table)?;
    const PT_INTERP: u32 = 3;
    Ok(table
        .chunks_exact(phentsize.max(4))
        .any(|ph| u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == PT_INTERP))
}

/// The writer under test: the operator or the null writer, as a child process.
pub(crate) struct Writer {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
    pub(crate) pid: u32,
}

impl Writer {
    /// `env`: extra environment for the writer (churn mode's allocator helper).
    pub(crate) fn start(
        args: &Args,
        cluster: &TestCluster,
        operator: Option<&OperatorBinary>,
        env: &[(String, String)],
    ) -> anyhow::Result<Writer> {
        let cp = cluster.control_plane();
        let here = std::env::current_exe().context("locating p12-bench")?;
        let (mut cmd, log) = if args.null_writer {
            let mut cmd = Command::new(&here);
            cmd.arg("--serve-null-writer")
                .args(["--algorithm", &args.algorithm])
                .args(["--profile", &args.profile])
                .args(["--null-concurrency", &args.null_concurrency.to_string()]);
            if let Some(size) = args.size {
                cmd.args(["--size", &size.to_string()]);
            }
            (cmd, cp.dir.join("null-writer.log"))
        } else {
            let operator = operator.context("no operator binary chosen")?;
            let mut cmd = Command::new(&operator.path);
            cmd.args([
                "--log-level",
                "info",
                "run",
                "--namespace",
                OPERATOR_NAMESPACE,
            ]);
            // Admin endpoints on a free loopback port (not 0.0.0.0:8080, which
            // another run on the machine may hold); `admin_addr` finds it.
            if !args
                .operator_args
                .iter()
                .any(|a| a.starts_with("--admin-bind-address"))
            {
                cmd.args(["--admin-bind-address", "127.0.0.1:0"]);
            }
            cmd.args(&args.operator_args);
            (cmd, cp.dir.join("operator.log"))
        };
        let file = std::fs::File::create(&log)?;
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.env("KUBECONFIG", &cp.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("P12_LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = process::spawn_tied(cmd).context("starting the writer")?;
        let pid = child.id();
        Ok(Writer { child, log, pid })
    }

    /// Waits for the line that says the writer is watching.
    pub(crate) fn wait_started(&mut self, null: bool) -> anyhow::Result<()> {
        let marker = if null {
            "null writer ready"
        } else {
            "starting controller"
        };
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("the writer exited ({status}); see {}", self.log.display());
            }
            if std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .contains(marker)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the writer did not start within 60 s; see {}",
            self.log.display()
        )
    }

    /// The operator's admin address (`/metrics`), from the line it logs when
    /// it listens.
    pub(crate) fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        let line = log
            .lines()
            .find(|l| l.contains("admin endpoints listening"))?;
        let at = line.find("addr=")? + "addr=".len();
        let addr = line[at..].split_whitespace().next()?.trim_matches('"');
        let addr: std::net::SocketAddr = addr.parse().ok()?;
        if addr.ip().is_unspecified() {
            return Some(std::net::SocketAddr::from(([127, 0, 0, 1], addr.port())));
        }
        Some(addr)
    }

    pub(crate) fn alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("the writer exited ({status}); see {}", self.log.display());
        }
        Ok(())
    }
}

pub(crate) async fn apply_crd(cluster: &TestCluster) -> anyhow::Result<()> {
    let cp = cluster.control_plane();
    let crds = p12_testenv::tools::repo_root().join("crds");
    let out = cp
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(&crds)
        .output()?;
    if !out.status.success() {
        bail!("CRD apply failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = cp
        .kubectl()
        .args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/certificaterequests.p12-operator.io",
            "crd/issuancepolicies.p12-operator.io",
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "CRD not established: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The requests name Services that are never created: a policy allows
    // their names, so every pass also pays for policy evaluation.
    let mut apply = cp
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        apply.stdin.as_mut().expect("piped stdin"),
        BENCH_POLICY.as_bytes(),
    )?;
    let out = apply.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "IssuancePolicy apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Allows every benchmark request: the Service names of its own namespace,
/// whether or not the Service exists.
const BENCH_POLICY: &str = r#"apiVersion: p12-operator.io/v1alpha1
kind: IssuancePolicy
metadata: {name: bench}
spec:
  namespaces: {selector: {}}
  allow:
    dnsNames: ['*.{namespace}.svc', '*.{namespace}.svc.cluster.local']
"#;

pub(crate) async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(anyhow!("creating namespace {name}: {e}")),
    }
}

pub(crate) async fn create_unrelated(
    client: &Client,
    namespaces: &[String],
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let began = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let ns = namespaces[i % namespaces.len()].clone();
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            async move {
                let mut data = vec![0u8; 10 * 1024];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
                let s = Secret {
                    metadata: ObjectMeta {
                        name: Some(format!("unrelated-{i:05}")),
                        labels: Some([("app".to_string(), "unrelated".to_string())].into()),
                        ..Default::default()
                    },
                    data: Some([("blob".to_string(), ByteString(data))].into()),
                    type_: Some("Opaque".into()),
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &s).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                    Err(e) => Err(anyhow!("creating unrelated Secret {i}: {e}")),
                }
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(began.elapsed())
}

/// Waits until `done()` reaches `n`, failing early when the writer dies.
pub(crate) async fn wait_for(
    writer: &mut Writer,
    n: usize,
    timeout: Duration,
    what: &str,
    done: impl Fn() -> usize,
) -> anyhow::Result<()> {
    let began = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let count = done();
        if count >= n {
            return Ok(());
        }
        writer.alive()?;
        if began.elapsed() > timeout {
            bail!(
                "timed out after {}s: {count}/{n} {what}; writer log: {}",
                timeout.as_secs(),
                writer.log.display()
            );
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  … {count}/{n} {what} after {:.0}s",
                began.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) struct Wave {
    pub(crate) began: Instant,
    pub(crate) sent: HashMap<String, Instant>,
    pub(crate) last_send: Instant,
}

#[cfg(test)]
mod tests {
    use super::has_interpreter;

    /// A 64-bit little-endian ELF header followed by program headers of the
    /// given types (56 bytes each).
    fn elf(types: &[u32]) -> tempfile::NamedTempFile {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // 64-bit
        b[5] = 1; // little-endian
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut ph = [0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            b.extend_from_slice(&ph);
        }
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b).unwrap();
        f
    }

    #[test]
    fn a_program_interpreter_marks_a_dynamic_binary() {
        // PT_PHDR, PT_INTERP, PT_LOAD: what a glibc executable starts with.
        assert!(has_interpreter(elf(&[6, 3, 1]).path()).unwrap());
        // PT_LOAD, PT_DYNAMIC, PT_TLS: a static-pie musl binary has no PT_INTERP.
        assert!(!has_interpreter(elf(&[1, 2, 7]).path()).unwrap());
        // This test binary is linked against glibc.
        assert!(has_interpreter(&std::env::current_exe().unwrap()).unwrap());
        let not_elf = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(not_elf.path(), [0u8; 64]).unwrap();
        assert!(has_interpreter(not_elf.path()).is_err());
    }
}
