//! A one-node cluster: the local control plane plus containerd + runc, a
//! bridge pod network, kubelet, kube-scheduler and kube-proxy, on this machine.
//!
//! What users run — the operator's image, its probe pods, workloads mounting
//! an issued Secret — runs here as real containers. [`Node::start`] fails with
//! the kubelet's or containerd's own error line when the node cannot come up;
//! there is no fallback. [`Node::teardown`] stops every process, removes every
//! container, mount, link, network namespace and iptables chain the node made,
//! puts the sysctls back and reports anything that still differs from before
//! (see [`host`]). A run that was killed before its teardown is cleaned up by
//! the next [`Node::start`].

pub mod config;
pub mod harness;
pub mod host;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::controlplane::{self, ControlPlane, Options};
use crate::{HarnessError, tools};
use host::HostState;

/// The node's name (and hostname override).
pub const NODE_NAME: &str = "p12-node";
/// How long the node may take to register and become Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Programs the node needs from the machine, and the Debian package of each.
const PREREQUISITES: &[(&str, &str)] = &[
    ("/usr/bin/containerd", "containerd"),
    ("/usr/bin/ctr", "containerd"),
    ("/usr/sbin/runc", "runc"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/lib/cni/host-local", "containernetworking-plugins"),
    ("/usr/sbin/iptables", "iptables"),
    ("/usr/sbin/conntrack", "conntrack"),
];

/// A running one-node cluster.
pub struct Node {
    /// The control plane (its processes include the node's).
    pub cp: ControlPlane,
    /// The node's address: the machine's own interface.
    pub ip: IpAddr,
    /// containerd's socket (for `ctr`).
    pub containerd_socket: PathBuf,
    /// From the first process start to the node being Ready.
    pub startup: Duration,
    /// Image archives imported, and how long each import took.
    pub imports: Vec<(String, Duration)>,
    /// Work folders of earlier runs that were killed before their teardown,
    /// whose leftovers this start removed.
    pub recovered: Vec<PathBuf>,
    before: HostState,
    marker: PathBuf,
    torn_down: AtomicBool,
    /// Held while the node runs: one node per machine (fixed paths, the bridge).
    _lock: std::fs::File,
}

/// Takes the machine-wide node lock, waiting for another node (a second test
/// binary, or the demo) to finish: two nodes would share the bridge, iptables
/// and the kubelet's fixed paths.
fn machine_lock() -> Result<std::fs::File, HarnessError> {
    use std::os::fd::AsRawFd;
    let path = Path::new("/run/lock/p12-testenv-node.lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| start_err(format!("failed to open {}: {e}", path.display())))?;
    // SAFETY: plain syscall on an open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("testenv: another node runs on this machine; waiting for it to stop");
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(start_err(format!(
                "failed to lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(file)
}

fn start_err(msg: impl Into<String>) -> HarnessError {
    HarnessError::Start(msg.into())
}

/// The machine's first global IPv4 address: the kubelet refuses loopback.
fn machine_ip() -> Result<IpAddr, HarnessError> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .map_err(|e| start_err(format!("failed to run `ip addr`: {e}")))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .next()
        .ok_or_else(|| {
            start_err("the machine has no global IPv4 address for the node (ip -4 addr)")
        })
}

/// The last error lines of a component's log: what a failed start shows.
fn log_errors(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with('E')
                || l.starts_with('F')
                || l.contains("level=error")
                || l.contains("level=fatal")
        })
        .collect();
    let pick = if errors.is_empty() {
        text.lines().collect::<Vec<_>>()
    } else {
        errors
    };
    pick[pick.len().saturating_sub(n)..].join("\n")
}

/// The machine-wide record of the node that runs: its owner, its work folder
/// and the host state from before it started. The machine lock allows one node
/// at a time, so one record suffices. A run killed before its teardown (SIGKILL,
/// the end of a session) leaves it behind, and the next start from any checkout
/// puts the host back from it — also when the killed run's checkout, and with it
/// its work folder, is gone. `/run` is emptied at boot, as is most of what a node
/// changes (network namespaces, links, iptables, sysctls).
const RUN_RECORD: &str = "/run/lock/p12-testenv-node.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct RunRecord {
    pid: u32,
    dir: PathBuf,
    before: HostState,
}

/// Puts the host back as the run named in `record` found it, when that run was
/// never torn down. Called with the machine lock held: its owner has exited.
/// Returns the work folder of the run it cleaned up after.
fn clean_leftovers(record: &Path) -> Vec<PathBuf> {
    let Ok(bytes) = std::fs::read(record) else {
        return Vec::new();
    };
    let _ = std::fs::remove_file(record);
    let Ok(run) = serde_json::from_slice::<RunRecord>(&bytes) else {
        eprintln!(
            "testenv: {} could not be read; removed it (the host may hold leftovers of an earlier node run)",
            record.display()
        );
        return Vec::new();
    };
    eprintln!(
        "testenv: cleaning up after an earlier node run that was not torn down (pid {}, {})",
        run.pid,
        run.dir.display()
    );
    run.before.restore(&run.dir);
    vec![run.dir]
}

impl Node {
    /// Starts the control plane and the node in `target/testenv/<label>`, and
    /// imports the image archives `images` (plus the pause image) into containerd.
    pub fn start(label: &str, images: &[PathBuf]) -> Result<Node, HarnessError> {
        for (path, package) in PREREQUISITES {
            if !Path::new(path).exists() {
                return Err(start_err(format!(
                    "the node needs {path}: apt-get install {package} (.ci/run installs it)"
                )));
            }
        }
        let bin = tools::ensure_node_tools()?;
        let lock = machine_lock()?;
        let base = tools::target_dir().join("testenv");
        let recovered = clean_leftovers(Path::new(RUN_RECORD));
        let ip = machine_ip()?;

        let began = Instant::now();
        let before = HostState::capture(&base.join(label));
        let cp = ControlPlane::start_with(label, &Options { node_ip: Some(ip) })?;
        let dir = cp.dir.clone();
        let marker = dir.clone();
        let record = RunRecord {
            pid: std::process::id(),
            dir: dir.clone(),
            before: before.clone(),
        };
        serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(RUN_RECORD, json))
            .map_err(|e| start_err(format!("failed to write {RUN_RECORD}: {e}")))?;
        let mut node = Node {
            containerd_socket: dir.join("containerd/containerd.sock"),
            cp,
            ip,
            startup: Duration::ZERO,
            imports: Vec::new(),
            recovered,
            before,
            marker,
            torn_down: AtomicBool::new(false),
            _lock: lock,
        };
        // From here on a failure tears down what was started.
        match node.start_parts(&bin, images) {
            Ok(()) => {
                node.startup = began.elapsed();
                Ok(node)
            }
            Err(e) => {
                let left = node.teardown();
                if left.is_empty() {
                    Err(e)
                } else {
                    Err(start_err(format!(
                        "{e}\n(and the teardown left: {})",
                        left.join("; ")
                    )))
                }
            }
        }
    }

    fn start_parts(&mut self, bin: &Path, images: &[PathBuf]) -> Result<(), HarnessError> {
        let dir = self.cp.dir.clone();
        let w = |rel: &str, text: String| -> Result<PathBuf, HarnessError> {
            let p = dir.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    start_err(format!("failed to create {}: {e}", parent.display()))
                })?;
            }
            std::fs::write(&p, text)
                .map_err(|e| start_err(format!("failed to write {}: {e}", p.display())))?;
            Ok(p)
        };
        let cni_dir = dir.join("cni/net.d");
        w(
            "cni/net.d/10-p12-testenv.conflist",
            config::cni(&dir, controlplane::SERVICE_RANGE, self.ip),
        )?;
        let containerd_conf = w(
            "containerd/config.toml",
            config::containerd(&dir, &self.containerd_socket, &cni_dir),
        )?;
        self.cp.spawn_exe(
            "containerd",
            Path::new("/usr/bin/containerd"),
            &["--config".into(), containerd_conf.display().to_string()],
        )?;
        self.wait("containerd", Duration::from_secs(30), |n| {
            Ok(n.ctr()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success()))
        })?;

        let mut archives = vec![crate::images::build(&["pause"])?.remove(0)];
        archives.extend(images.iter().cloned());
        for archive in &archives {
            let t = Instant::now();
            let out = self
                .ctr()
                .args(["images", "import"])
                .arg(archive)
                .output()
                .map_err(|e| start_err(format!("failed to run ctr: {e}")))?;
            if !out.status.success() {
                return Err(start_err(format!(
                    "ctr images import {} failed: {}",
                    archive.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let name = archive
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            self.imports.push((name, t.elapsed()));
        }

        let kubelet_kc = self.cp.component_kubeconfig(
            "kubelet.kubeconfig",
            &format!("system:node:{NODE_NAME}"),
            &["system:nodes"],
        )?;
        let proxy_kc =
            self.cp
                .component_kubeconfig("kube-proxy.kubeconfig", "system:kube-proxy", &[])?;
        let sched_kc = self.cp.component_kubeconfig(
            "kube-scheduler.kubeconfig",
            "system:kube-scheduler",
            &[],
        )?;
        let p = |path: &Path| path.display().to_string();
        self.cp.spawn_exe(
            "kube-scheduler",
            &bin.join("kube-scheduler"),
            &[
                format!("--kubeconfig={}", p(&sched_kc)),
                format!("--authentication-kubeconfig={}", p(&sched_kc)),
                format!("--authorization-kubeconfig={}", p(&sched_kc)),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", controlplane::free_port()?),
                "--v=1".into(),
            ],
        )?;
        self.cp.spawn_exe(
            "kube-proxy",
            &bin.join("kube-proxy"),
            &[
                format!("--kubeconfig={}", p(&proxy_kc)),
                format!("--hostname-override={NODE_NAME}"),
                format!("--cluster-cidr={}", config::POD_RANGE),
                "--proxy-mode=iptables".into(),
                // Leave the machine's conntrack settings alone.
                "--conntrack-max-per-core=0".into(),
                "--conntrack-tcp-timeout-established=0".into(),
                "--conntrack-tcp-timeout-close-wait=0".into(),
                "--iptables-localhost-nodeports=false".into(),
                format!(
                    "--healthz-bind-address=127.0.0.1:{}",
                    controlplane::free_port()?
                ),
                format!(
                    "--metrics-bind-address=127.0.0.1:{}",
                    controlplane::free_port()?
                ),
                "--v=1".into(),
            ],
        )?;
        let kubelet_conf = w(
            "kubelet/config.yaml",
            config::kubelet(&config::Kubelet {
                node_ip: self.ip,
                port: controlplane::free_port()?,
                runtime_socket: &self.containerd_socket,
                client_ca: &dir.join("ca.crt"),
            }),
        )?;
        self.cp.spawn_exe(
            "kubelet",
            &bin.join("kubelet"),
            &[
                format!("--config={}", p(&kubelet_conf)),
                format!("--kubeconfig={}", p(&kubelet_kc)),
                format!("--root-dir={}", p(&dir.join("kubelet/root"))),
                format!("--cert-dir={}", p(&dir.join("kubelet/pki"))),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={}", self.ip),
                "--v=1".into(),
            ],
        )?;
        self.wait("the node to become Ready", READY_TIMEOUT, |n| {
            let out = n
                .cp
                .kubectl()
                .args(["get", "node", NODE_NAME, "-o"])
                .arg("jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.taints[*].key}")
                .output()
                .map_err(|e| start_err(format!("failed to run kubectl: {e}")))?;
            Ok(String::from_utf8_lossy(&out.stdout).trim() == "True")
        })
    }

    /// Polls `ready` until it holds, failing early (with the component's own
    /// error line) when one of the node's processes exits.
    fn wait(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Node) -> Result<bool, HarnessError>,
    ) -> Result<(), HarnessError> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            self.cp.check_alive()?;
            if ready(self)? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let mut why = String::new();
        for c in ["kubelet", "containerd", "kube-proxy", "kube-scheduler"] {
            let log = self.cp.dir.join(format!("{c}.log"));
            if log.exists() {
                why.push_str(&format!("\n{c}: {}", log_errors(&log, 3)));
            }
        }
        Err(start_err(format!(
            "timed out after {}s waiting for {what}; last errors:{why}",
            timeout.as_secs()
        )))
    }

    /// How many endpoints kube-proxy routes the Service at `cluster_ip` to on
    /// this node. The API lists a ready endpoint before kube-proxy has synced
    /// it; until then a connection to the Service is refused (no endpoints) or
    /// reaches only the old ones. A test waits for this before it connects.
    pub fn routed_endpoints(&self, cluster_ip: &str) -> usize {
        Command::new("iptables-save")
            .args(["-t", "nat"])
            .output()
            .map(|o| routed_endpoints(&String::from_utf8_lossy(&o.stdout), cluster_ip))
            .unwrap_or(0)
    }

    /// `ctr` talking to the node's containerd, in the kubelet's namespace.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("/usr/bin/ctr");
        cmd.arg("--address")
            .arg(&self.containerd_socket)
            .args(["-n", "k8s.io"]);
        cmd
    }

    /// Stops everything the node started and puts the host back; returns what
    /// still differs from before the node started (empty: left as it was).
    /// Runs once; later calls return nothing.
    pub fn teardown(&self) -> Vec<String> {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return Vec::new();
        }
        // Nothing recreates or schedules pods once these are gone; the kubelet
        // then stops every pod it runs (its CNI teardown removes the veths).
        self.cp.stop_named(
            &["kube-controller-manager", "kube-scheduler"],
            Duration::from_secs(5),
        );
        // The pods' logs live at a fixed path the restore removes, and the
        // kubelet empties them as it deletes the pods: keep them now,
        // with the node's other logs for post-mortems (and scripts/test's
        // scan for key material in every log).
        if Path::new("/var/log/pods").is_dir() && !self.before.paths.contains("/var/log/pods") {
            let _ = Command::new("cp")
                .args(["-r", "/var/log/pods"])
                .arg(self.cp.dir.join("pod-logs"))
                .output();
        }
        let _ = self
            .cp
            .kubectl()
            .args([
                "delete",
                "pods",
                "--all",
                "--all-namespaces",
                "--force",
                "--grace-period=0",
                "--wait=false",
                "--request-timeout=10s",
            ])
            .output();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            let running = self
                .ctr()
                .args(["tasks", "ls", "-q"])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if !running {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.cp
            .stop_named(&["kubelet", "kube-proxy"], Duration::from_secs(10));
        // Whatever the kubelet did not stop in time.
        if let Ok(out) = self.ctr().args(["tasks", "ls", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self
                    .ctr()
                    .args(["tasks", "kill", "-s", "SIGKILL", id])
                    .output();
                let _ = self.ctr().args(["tasks", "delete", "-f", id]).output();
            }
        }
        self.cp.stop();
        self.before.restore(&self.marker);
        let after = HostState::capture(&self.marker);
        let diff = self.before.diff(&after);
        let _ = std::fs::remove_file(RUN_RECORD);
        diff
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for line in self.teardown() {
            eprintln!("testenv: node teardown left: {line}");
        }
    }
}

/// The `KUBE-SEP-` jumps of the `KUBE-SVC-` chains that kube-proxy's
/// `KUBE-SERVICES` sends `cluster_ip` to, in `iptables-save -t nat` output.
fn routed_endpoints(nat: &str, cluster_ip: &str) -> usize {
    let dest = format!(" -d {cluster_ip}/32 ");
    let chains: std::collections::BTreeSet<&str> = nat
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SERVICES ") && l.contains(&dest))
        .filter_map(|l| l.rsplit(" -j ").next())
        .map(str::trim)
        .filter(|c| c.starts_with("KUBE-SVC-"))
        .collect();
    nat.lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some("-A")
                && words.next().is_some_and(|c| chains.contains(c))
                && l.contains(" -j KUBE-SEP-")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::routed_endpoints;

    const NAT: &str = r#"*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAAA - [0:0]
:KUBE-SVC-BBBB - [0:0]
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "shop/web:https cluster IP" -m tcp --dport 8443 -j KUBE-SVC-AAAA
-A KUBE-SERVICES -d 10.96.0.11/32 -p tcp -m comment --comment "shop/api:https cluster IP" -m tcp --dport 8443 -j KUBE-SVC-BBBB
-A KUBE-SVC-AAAA ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "shop/web:https cluster IP" -m tcp --dport 8443 -j KUBE-MARK-MASQ
-A KUBE-SVC-AAAA -m comment --comment "shop/web:https -> 10.244.0.5:8443" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-ONE
-A KUBE-SVC-AAAA -m comment --comment "shop/web:https -> 10.244.0.6:8443" -j KUBE-SEP-TWO
-A KUBE-SVC-BBBB -m comment --comment "shop/api:https -> 10.244.0.7:8443" -j KUBE-SEP-THREE
COMMIT
"#;

    #[test]
    fn endpoints_routed_are_counted_per_cluster_ip() {
        assert_eq!(routed_endpoints(NAT, "10.96.0.10"), 2);
        assert_eq!(routed_endpoints(NAT, "10.96.0.11"), 1);
        // Not a prefix match: 10.96.0.1 is another address.
        assert_eq!(routed_endpoints(NAT, "10.96.0.1"), 0);
        assert_eq!(routed_endpoints("", "10.96.0.10"), 0);
    }
}
