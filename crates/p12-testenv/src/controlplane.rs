//! etcd + kube-apiserver + kube-controller-manager on 127.0.0.1, started from the
//! binaries built by `tests/k8s-tools/build.sh`.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::HarnessError;
use super::certs::{self, ClusterCa};
use super::{process, tools};

/// The ClusterIP of the `kubernetes` Service (first address of the Service range).
pub const SERVICE_IP: &str = "10.0.0.1";
/// The Service ClusterIP range.
pub const SERVICE_RANGE: &str = "10.0.0.0/24";

/// How long the control plane may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The controllers kube-controller-manager runs here. No scheduler, nodes or
/// kubelets exist, so node- and scheduling-related controllers stay off; the
/// local pod runner plays the kubelet for the operator's own pods.
const CONTROLLERS: &[&str] = &[
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
];

/// The controllers a control plane with a real node adds: Services get
/// EndpointSlices, the node's not-ready taint is lifted once it is Ready, and
/// workloads other than Deployments, PodDisruptionBudgets and pod garbage
/// collection work as in any cluster.
const NODE_CONTROLLERS: &[&str] = &[
    "endpoints-controller",
    "endpointslice-controller",
    "node-lifecycle-controller",
    "statefulset-controller",
    "daemonset-controller",
    "disruption-controller",
    "pod-garbage-collector-controller",
    "ttl-controller",
];

/// How a control plane is started.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Serve a real node at this address (the machine's own interface): the API
    /// server binds every interface and advertises this address, so pods reach it
    /// through the `kubernetes` Service; Node authorization and NodeRestriction
    /// are on; the node's controllers run. `None`: loopback only, no node.
    pub node_ip: Option<std::net::IpAddr>,
}

struct Proc {
    name: &'static str,
    exe: PathBuf,
    child: Child,
    log: PathBuf,
    args: Vec<String>,
}

/// A running local control plane. Dropping it stops every process; the work
/// folder (logs, certificates, kubeconfig) stays for post-mortems.
pub struct ControlPlane {
    /// Work folder: logs, certificates, kubeconfigs, etcd data.
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    pub port: u16,
    /// Kubeconfig of a cluster admin (group `system:masters`).
    pub kubeconfig: PathBuf,
    /// PEM of the CA that signs the serving and client certificates.
    pub ca_pem: String,
    /// Where etcd, kube-apiserver, kubectl and helm live.
    pub bin: PathBuf,
    /// Time from the first process start to `/readyz` answering ok.
    pub startup: Duration,
    /// etcd's client URL (its JSON gateway serves `/v3/kv/compaction`).
    pub etcd_url: String,
    ca: ClusterCa,
    procs: Mutex<Vec<Proc>>,
}

pub(crate) fn free_port() -> Result<u16, HarnessError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| {
        HarnessError::Start(format!("failed to find a free port on 127.0.0.1: {e}"))
    })?;
    Ok(l.local_addr()
        .map_err(|e| HarnessError::Start(e.to_string()))?
        .port())
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> HarnessError {
    let msg = format!("failed to {what} {}", path.display());
    move |e| HarnessError::Start(format!("{msg}: {e}"))
}

/// Why a process died, from its log: the last error line (klog `E`/`F` lines,
/// or JSON with an error level), else the last lines.
fn why_exited(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let is_error = |l: &&str| {
        l.starts_with('E')
            || l.starts_with('F')
            || l.contains("\"level\":\"fatal\"")
            || l.contains("\"level\":\"panic\"")
    };
    if let Some(line) = text.lines().rev().find(is_error) {
        return line.to_string();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(5)..].join("\n")
}

/// Prepares `target/testenv/<label>`: a previous run's folder of the same label
/// is replaced unless its owner is still alive.
fn work_dir(label: &str) -> Result<PathBuf, HarnessError> {
    let base = tools::target_dir().join("testenv");
    prune_finished_etcd_data(&base);
    let mut dir = base.join(label);
    if owner_alive(&dir) {
        dir = base.join(format!("{label}-{}", std::process::id()));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    std::fs::write(dir.join("pid"), std::process::id().to_string())
        .map_err(io_err("write", &dir))?;
    Ok(dir)
}

/// Whether the process named in `<dir>/pid` is still running.
fn owner_alive(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("pid"))
        .is_ok_and(|pid| pid.trim().parse().is_ok_and(process::alive))
}

/// Removes `etcd-data` from the environments under `base` whose owner has
/// exited. Each holds about 125 MB (etcd preallocates its WAL) that nothing reads
/// again; a suite leaves twenty of them. The logs stay, for the suite's scan for
/// secret material and for reading after a failure.
fn prune_finished_etcd_data(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let data = dir.join("etcd-data");
        if data.is_dir() && !owner_alive(&dir) {
            let _ = std::fs::remove_dir_all(&data);
        }
    }
}

impl ControlPlane {
    /// Starts a fresh control plane whose files live in `target/testenv/<label>`.
    pub fn start(label: &str) -> Result<Self, HarnessError> {
        Self::start_with(label, &Options::default())
    }

    /// Starts a fresh control plane as `options` say.
    pub fn start_with(label: &str, options: &Options) -> Result<Self, HarnessError> {
        let bin = tools::ensure_built()?;
        let dir = work_dir(label)?;
        let began = Instant::now();

        let ca = ClusterCa::generate()
            .map_err(|e| HarnessError::Start(format!("failed to create the cluster CA: {e}")))?;
        let cert_err =
            |e: rcgen::Error| HarnessError::Start(format!("failed to create certificates: {e}"));
        let mut serving_ips = vec![SERVICE_IP.parse().unwrap()];
        serving_ips.extend(options.node_ip);
        let serving = ca.serving(&serving_ips).map_err(cert_err)?;
        let admin = ca
            .client("p12-test-admin", &["system:masters"])
            .map_err(cert_err)?;
        let kcm = ca
            .client("system:kube-controller-manager", &["system:masters"])
            .map_err(cert_err)?;
        let (sa_key, sa_pub) = certs::service_account_key().map_err(cert_err)?;
        let write = |name: &str, data: &str| -> Result<PathBuf, HarnessError> {
            let p = dir.join(name);
            certs::write_private(&p, data.as_bytes()).map_err(io_err("write", &p))?;
            Ok(p)
        };
        let ca_file = write("ca.crt", &ca.cert_pem)?;
        let serving_crt = write("apiserver.crt", &serving.cert_pem)?;
        let serving_key = write("apiserver.key", &serving.key_pem)?;
        let sa_key_file = write("sa.key", &sa_key)?;
        let sa_pub_file = write("sa.pub", &sa_pub)?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let port = free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let kubeconfig = dir.join("admin.kubeconfig");
        certs::write_kubeconfig(&kubeconfig, &server, &ca.cert_pem, &admin, "admin")
            .map_err(io_err("write", &kubeconfig))?;
        let kcm_kubeconfig = dir.join("kube-controller-manager.kubeconfig");
        certs::write_kubeconfig(
            &kcm_kubeconfig,
            &server,
            &ca.cert_pem,
            &kcm,
            "kube-controller-manager",
        )
        .map_err(io_err("write", &kcm_kubeconfig))?;

        let cp = ControlPlane {
            dir: dir.clone(),
            server,
            port,
            kubeconfig,
            ca_pem: ca.cert_pem.clone(),
            bin: bin.clone(),
            startup: Duration::ZERO,
            etcd_url: format!("http://127.0.0.1:{etcd_port}"),
            ca,
            procs: Mutex::new(Vec::new()),
        };

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        cp.spawn(
            "etcd",
            &[
                "--data-dir".into(),
                dir.join("etcd-data").display().to_string(),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?;

        let p = |path: &Path| path.display().to_string();
        let mut api_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", p(&dir.join("apiserver-certs"))),
            format!("--tls-cert-file={}", p(&serving_crt)),
            format!("--tls-private-key-file={}", p(&serving_key)),
            format!("--client-ca-file={}", p(&ca_file)),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p(&sa_pub_file)),
            format!("--service-account-signing-key-file={}", p(&sa_key_file)),
            format!("--service-cluster-ip-range={SERVICE_RANGE}"),
            "--allow-privileged=false".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        match options.node_ip {
            None => api_args.extend([
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                "--authorization-mode=RBAC".into(),
                // The endpoint reconciler refuses loopback addresses; nothing here
                // needs the `kubernetes` Service to have endpoints.
                "--endpoint-reconciler-type=none".into(),
            ]),
            Some(ip) => {
                // Pods reach the API server through the `kubernetes` Service, whose
                // endpoint is the advertised address: bind every interface (client
                // certificates or tokens only; nothing anonymous is authorized).
                let kubelet_client = cp
                    .ca
                    .client("kube-apiserver-kubelet-client", &["system:masters"])
                    .map_err(cert_err)?;
                let kc_crt = write("kubelet-client.crt", &kubelet_client.cert_pem)?;
                let kc_key = write("kubelet-client.key", &kubelet_client.key_pem)?;
                api_args.extend([
                    "--bind-address=0.0.0.0".into(),
                    format!("--advertise-address={ip}"),
                    "--authorization-mode=Node,RBAC".into(),
                    "--enable-admission-plugins=NodeRestriction".into(),
                    format!("--kubelet-client-certificate={}", p(&kc_crt)),
                    format!("--kubelet-client-key={}", p(&kc_key)),
                    "--kubelet-preferred-address-types=InternalIP".into(),
                ]);
            }
        }
        cp.spawn("kube-apiserver", &api_args)?;
        cp.wait_ready(began)?;

        let mut controllers = CONTROLLERS.to_vec();
        if options.node_ip.is_some() {
            controllers.extend(NODE_CONTROLLERS);
        }
        let controllers = controllers.join(",");
        cp.spawn(
            "kube-controller-manager",
            &[
                format!("--kubeconfig={}", p(&kcm_kubeconfig)),
                format!("--controllers={controllers}"),
                format!("--service-account-private-key-file={}", p(&sa_key_file)),
                format!("--root-ca-file={}", p(&ca_file)),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=false".into(),
                "--secure-port=0".into(),
                "--v=1".into(),
            ],
        )?;
        let mut cp = cp;
        cp.startup = began.elapsed();
        Ok(cp)
    }

    fn spawn(&self, name: &'static str, args: &[String]) -> Result<(), HarnessError> {
        self.spawn_exe(name, &self.bin.join(name), args)
    }

    /// Starts `exe` as a process of this cluster (logs in `<dir>/<name>.log`,
    /// stopped with the rest, newest first).
    pub(crate) fn spawn_exe(
        &self,
        name: &'static str,
        exe: &Path,
        args: &[String],
    ) -> Result<(), HarnessError> {
        let log = self.dir.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_err("create", &log))?;
        let err = out.try_clone().map_err(io_err("open", &log))?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .current_dir(&self.dir);
        let child = process::spawn_tied(cmd)
            .map_err(|e| HarnessError::Start(format!("failed to start {}: {e}", exe.display())))?;
        self.procs.lock().unwrap().push(Proc {
            name,
            exe: exe.to_path_buf(),
            child,
            log,
            args: args.to_vec(),
        });
        Ok(())
    }

    /// Fails when one of the processes has exited, naming it and quoting its log.
    pub fn check_alive(&self) -> Result<(), HarnessError> {
        let mut procs = self.procs.lock().unwrap();
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(HarnessError::Start(format!(
                    "{} exited ({status}): {} (log: {})",
                    p.name,
                    why_exited(&p.log),
                    p.log.display()
                )));
            }
        }
        Ok(())
    }

    fn wait_ready(&self, began: Instant) -> Result<(), HarnessError> {
        let mut last = String::new();
        while began.elapsed() < READY_TIMEOUT {
            self.check_alive()?;
            let out = self
                .kubectl()
                .args(["get", "--raw", "/readyz", "--request-timeout=2s"])
                .output()
                .map_err(|e| HarnessError::Start(format!("failed to run kubectl: {e}")))?;
            if out.status.success() {
                return Ok(());
            }
            last = String::from_utf8_lossy(&out.stderr).trim().to_string();
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(HarnessError::Start(format!(
            "kube-apiserver did not become ready within {}s (last answer: {last}); logs in {}",
            READY_TIMEOUT.as_secs(),
            self.dir.display()
        )))
    }

    /// `kubectl` with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST");
        cmd
    }

    /// `helm` with the admin kubeconfig and its caches inside the work folder.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("helm"));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        cmd
    }

    /// Writes a kubeconfig for a user authenticated by a client certificate
    /// (user from CN, groups from O) — a real, restricted identity for RBAC tests.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf, HarnessError> {
        let cert = self.ca.client(user, groups).map_err(|e| {
            HarnessError::Start(format!("failed to create a client certificate: {e}"))
        })?;
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = self.dir.join(format!("user-{safe}.kubeconfig"));
        certs::write_kubeconfig(&path, &self.server, &self.ca_pem, &cert, user)
            .map_err(io_err("write", &path))?;
        Ok(path)
    }

    /// Stops one component (`kube-apiserver`, `etcd`, …), waits `pause`, and
    /// starts it again with the same flags and port, waiting for `/readyz`.
    pub fn restart(&self, name: &str, pause: Duration) -> Result<(), HarnessError> {
        let (name, exe, args) = {
            let mut procs = self.procs.lock().unwrap();
            let i = procs
                .iter()
                .position(|p| p.name == name)
                .ok_or_else(|| HarnessError::Start(format!("no process named {name}")))?;
            let mut p = procs.remove(i);
            process::stop(&mut p.child, Duration::from_secs(10));
            (p.name, p.exe, p.args)
        };
        std::thread::sleep(pause);
        self.spawn_exe(name, &exe, &args)?;
        self.wait_ready(Instant::now())
    }

    /// Stops the named processes (newest first) and waits for them; the others run on.
    pub(crate) fn stop_named(&self, names: &[&str], grace: Duration) {
        let mut procs = self.procs.lock().unwrap();
        let mut i = procs.len();
        while i > 0 {
            i -= 1;
            if names.contains(&procs[i].name) {
                let mut p = procs.remove(i);
                process::stop(&mut p.child, grace);
            }
        }
    }

    /// Writes `<dir>/<file>` for a client-certificate identity (user from CN,
    /// groups from O) talking to `server` (loopback by default).
    pub(crate) fn component_kubeconfig(
        &self,
        file: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<PathBuf, HarnessError> {
        let cert = self.ca.client(user, groups).map_err(|e| {
            HarnessError::Start(format!("failed to create a client certificate: {e}"))
        })?;
        let path = self.dir.join(file);
        certs::write_kubeconfig(&path, &self.server, &self.ca_pem, &cert, user)
            .map_err(io_err("write", &path))?;
        Ok(path)
    }

    /// Stops every process (newest first) and waits for them.
    pub fn stop(&self) {
        let mut procs = self.procs.lock().unwrap();
        while let Some(mut p) = procs.pop() {
            process::stop(&mut p.child, Duration::from_secs(5));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(base: &Path, name: &str, pid: &str) -> PathBuf {
        let dir = base.join(name);
        std::fs::create_dir_all(dir.join("etcd-data/member/wal")).unwrap();
        std::fs::write(dir.join("etcd-data/member/wal/0.wal"), b"wal").unwrap();
        std::fs::write(dir.join("etcd.log"), b"log").unwrap();
        std::fs::write(dir.join("pid"), pid).unwrap();
        dir
    }

    #[test]
    fn only_finished_environments_lose_their_etcd_data_and_keep_their_logs() {
        let base = std::env::temp_dir().join(format!("p12-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let running = env(&base, "running", &std::process::id().to_string());
        // Above any pid_max, so no process has it.
        let finished = env(&base, "finished", &i32::MAX.to_string());
        let unreadable = env(&base, "garbled", "not a pid");

        prune_finished_etcd_data(&base);

        assert!(running.join("etcd-data/member/wal/0.wal").exists());
        for dir in [&finished, &unreadable] {
            assert!(
                !dir.join("etcd-data").exists(),
                "{} kept its data",
                dir.display()
            );
            assert!(
                dir.join("etcd.log").exists(),
                "{} lost its log",
                dir.display()
            );
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
