//! The host state a node changes, captured before it starts and put back after.
//!
//! A kubelet, containerd, runc, the bridge CNI plugin and kube-proxy change the
//! machine: sysctls (`vm.overcommit_memory`, `kernel.panic`, `ip_forward`, …),
//! iptables chains, a bridge and veth links, network namespaces, mounts (pod
//! volumes, container root file systems, shm), shim processes that outlive
//! containerd, and folders at fixed paths (`/var/lib/kubelet`, `/var/log/pods`,
//! `/run/containerd`, …). [`HostState::capture`] records all of it (mounts
//! only where a node mounts, so other programs' mounts are left alone); after the
//! node's processes are stopped, [`HostState::restore`] removes what is new and
//! writes back what changed, and [`HostState::diff`] says what still differs —
//! the test that the host is left as it was.
//!
//! The snapshot is also written next to the node's files, so a run that was
//! killed (no teardown) is cleaned up by the next one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Sysctl subtrees the node's parts write to. Per-interface entries are left
/// out (links come and go with pods); the links themselves are compared.
const SYSCTL_TREES: &[&str] = &[
    "kernel",
    "vm",
    "net/core",
    "net/ipv4",
    "net/ipv6/conf/all",
    "net/ipv6/conf/default",
    "net/bridge",
    "net/netfilter",
];

/// Sysctls that change on their own.
const VOLATILE_SYSCTLS: &[&str] = &[
    "kernel/ns_last_pid",
    "kernel/random",
    "kernel/pty/nr",
    "kernel/sched_domain",
    "net/netfilter/nf_conntrack_count",
    "net/ipv4/tcp_fastopen_key",
    "net/ipv4/route/flush",
    "net/ipv4/neigh",
    "net/ipv4/conf",
    "vm/drop_caches",
    "vm/compact_memory",
    "vm/stat_refresh",
];

/// Fixed paths the kubelet, containerd and CNI create whatever their flags say.
pub const FIXED_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni",
    "/var/lib/containerd",
    "/run/containerd",
    "/run/nri",
    "/run/netns",
    "/etc/cni",
    "/opt/cni",
    "/var/run/kubernetes",
];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    pub sysctls: BTreeMap<String, String>,
    pub mounts: BTreeSet<String>,
    pub links: BTreeSet<String>,
    pub netns: BTreeSet<String>,
    pub iptables: String,
    pub ip6tables: String,
    pub nft_tables: BTreeSet<String>,
    pub paths: BTreeSet<String>,
    /// Top-level cgroups (`memory/kubepods`, …) in every hierarchy.
    #[serde(default)]
    pub cgroups: BTreeSet<String>,
    /// Processes (pid and command line) whose command line names `marker`.
    #[serde(skip)]
    pub processes: Vec<String>,
}

impl HostState {
    /// Reads the host state; `marker` (the node's work folder) picks out the
    /// processes that belong to a node.
    pub fn capture(marker: &Path) -> HostState {
        HostState {
            sysctls: sysctls(),
            mounts: mount_points(marker),
            links: lines(Command::new("ip").args(["-o", "link", "show"]))
                .iter()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
                .collect(),
            netns: std::fs::read_dir("/run/netns")
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default(),
            iptables: rules("iptables-save"),
            ip6tables: rules("ip6tables-save"),
            nft_tables: lines(Command::new("nft").args(["list", "tables"]))
                .into_iter()
                .collect(),
            paths: FIXED_PATHS
                .iter()
                .filter(|p| Path::new(p).exists())
                .map(|p| p.to_string())
                .collect(),
            cgroups: top_cgroups(),
            processes: processes_naming(marker),
        }
    }

    /// Everything in `after` that differs from `self` (the state before), one
    /// line each; empty when the host is as it was.
    pub fn diff(&self, after: &HostState) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &self.sysctls {
            match after.sysctls.get(k) {
                Some(now) if now != v => out.push(format!("sysctl {k}: was {v}, now {now}")),
                _ => {}
            }
        }
        let sets: [(&str, &BTreeSet<String>, &BTreeSet<String>); 6] = [
            ("cgroup", &self.cgroups, &after.cgroups),
            ("mount", &self.mounts, &after.mounts),
            ("link", &self.links, &after.links),
            ("network namespace", &self.netns, &after.netns),
            ("nft table", &self.nft_tables, &after.nft_tables),
            ("path", &self.paths, &after.paths),
        ];
        for (what, before, now) in sets {
            // Only what is new: the restore removes nothing that existed before,
            // so what disappeared was another program's doing (a build's chroot).
            for x in now.difference(before) {
                out.push(format!("{what} left behind: {x}"));
            }
        }
        for (table, before, now) in [
            ("iptables", &self.iptables, &after.iptables),
            ("ip6tables", &self.ip6tables, &after.ip6tables),
        ] {
            if before != now {
                let b: BTreeSet<&str> = before.lines().collect();
                let n: BTreeSet<&str> = now.lines().collect();
                for l in n.difference(&b) {
                    out.push(format!("{table} rule left behind: {l}"));
                }
                for l in b.difference(&n) {
                    out.push(format!("{table} rule gone: {l}"));
                }
            }
        }
        for p in &after.processes {
            out.push(format!("process left running: {p}"));
        }
        out
    }

    /// Puts the host back as `self` (the state before) had it: kills processes
    /// naming `marker`, unmounts new mounts (deepest first), deletes new network
    /// namespaces and links, restores iptables and sysctls, deletes new nft
    /// tables and new fixed paths. Best effort: what it cannot undo shows in [`diff`].
    pub fn restore(&self, marker: &Path) {
        kill_processes_naming(marker);
        let now = HostState::capture(marker);
        // Containers whose shim is gone (a killed run) still run in the
        // kubelet's cgroups: kill them, then remove the cgroups.
        for cg in now.cgroups.difference(&self.cgroups) {
            remove_cgroup_tree(&Path::new(CGROUP_ROOT).join(cg));
        }
        let mut new_mounts: Vec<&String> = now.mounts.difference(&self.mounts).collect();
        new_mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in new_mounts {
            unmount(m);
        }
        for ns in now.netns.difference(&self.netns) {
            let p = format!("/run/netns/{ns}");
            unmount(&p);
            let _ = std::fs::remove_file(&p);
        }
        for link in now.links.difference(&self.links) {
            let _ = Command::new("ip").args(["link", "delete", link]).output();
        }
        for (table, saved, cmd) in [
            ("iptables", &self.iptables, "iptables-restore"),
            ("ip6tables", &self.ip6tables, "ip6tables-restore"),
        ] {
            let current = if table == "iptables" {
                &now.iptables
            } else {
                &now.ip6tables
            };
            if current != saved {
                restore_rules(cmd, saved, current);
            }
        }
        for t in now.nft_tables.difference(&self.nft_tables) {
            // "table ip kube-proxy" → nft delete table ip kube-proxy
            let words: Vec<&str> = t.split_whitespace().collect();
            if words.len() == 3 {
                let _ = Command::new("nft")
                    .args(["delete", "table", words[1], words[2]])
                    .output();
            }
        }
        for (k, v) in &self.sysctls {
            if now.sysctls.get(k).is_some_and(|n| n != v) {
                let _ = std::fs::write(Path::new("/proc/sys").join(k), v);
            }
        }
        for p in now.paths.difference(&self.paths) {
            // Mounts below were undone above; a busy leftover shows in the diff.
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// `hierarchy/child` for every child cgroup at the top of every hierarchy
/// (cgroup v1 controllers, the named systemd one, the unified v2 one).
fn top_cgroups() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(hierarchies) = std::fs::read_dir(CGROUP_ROOT) else {
        return out;
    };
    for h in hierarchies.filter_map(|e| e.ok()) {
        let Ok(children) = std::fs::read_dir(h.path()) else {
            continue;
        };
        for c in children.filter_map(|e| e.ok()) {
            if c.file_type().is_ok_and(|t| t.is_dir()) {
                out.insert(format!(
                    "{}/{}",
                    h.file_name().to_string_lossy(),
                    c.file_name().to_string_lossy()
                ));
            }
        }
    }
    out
}

/// Kills every process in a cgroup tree and removes its cgroups, deepest first.
fn remove_cgroup_tree(top: &Path) {
    let mut dirs = Vec::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        dirs.push(d);
    }
    for _ in 0..50 {
        let mut alive = false;
        for d in &dirs {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                alive = true;
                // SAFETY: plain syscall.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if !alive {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = std::fs::remove_dir(&d);
    }
}

fn lines(cmd: &mut Command) -> Vec<String> {
    cmd.output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `iptables-save` without comments and packet counters.
fn rules(cmd: &str) -> String {
    let mut out = String::new();
    for l in lines(&mut Command::new(cmd)) {
        if l.starts_with('#') {
            continue;
        }
        let l = match l.find(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l.as_str(),
        };
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Restores the tables that differ: each table the node touched is replaced by
/// its saved content, or flushed and emptied of its own chains when it was not
/// in the saved state at all.
fn restore_rules(cmd: &str, saved: &str, current: &str) {
    use std::io::Write;
    let tables = |text: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix('*'))
            .map(str::to_string)
            .collect()
    };
    let mut input = saved.to_string();
    for t in tables(current).difference(&tables(saved)) {
        // An empty table: every built-in chain flushed, every user chain deleted.
        input.push_str(&format!("*{t}\nCOMMIT\n"));
    }
    if let Ok(mut child) = Command::new(cmd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes());
        }
        let _ = child.wait();
    }
}

fn sysctls() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let root = Path::new("/proc/sys");
    let mut stack: Vec<PathBuf> = SYSCTL_TREES.iter().map(|t| root.join(t)).collect();
    while let Some(p) = stack.pop() {
        let rel = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        if VOLATILE_SYSCTLS.iter().any(|v| rel.starts_with(v)) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(d) = std::fs::read_dir(&p) {
                stack.extend(d.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        } else {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o200 == 0 {
                continue;
            }
            if let Ok(v) = std::fs::read_to_string(&p) {
                out.insert(rel, v.trim_end().to_string());
            }
        }
    }
    out
}

/// Mount points from `/proc/self/mountinfo` (octal escapes decoded) under the
/// places a node mounts: its work folder (containerd's state, the kubelet's
/// pod volumes) and the fixed paths. Other programs' mounts (a build's chroot)
/// are none of the node's business: never compared, never unmounted.
fn mount_points(marker: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let ours = |m: &str| {
        Path::new(m).starts_with(marker) || FIXED_PATHS.iter().any(|p| Path::new(m).starts_with(p))
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|m| ours(m))
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| c.is_ascii_digit()) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unmount(path: &str) {
    let Ok(c) = std::ffi::CString::new(path) else {
        return;
    };
    // SAFETY: plain syscall on a NUL-terminated path.
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
}

/// `pid: command line` of every process whose command line contains `marker`
/// (containerd's shims name its socket and state folder, which live under it).
pub fn processes_naming(marker: &Path) -> Vec<String> {
    let marker = marker.to_string_lossy().into_owned();
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&marker) {
            out.push(format!("{pid}: {}", cmdline.trim_end()));
        }
    }
    out
}

fn kill_processes_naming(marker: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = processes_naming(marker);
        if procs.is_empty() || Instant::now() > deadline {
            return;
        }
        for p in procs {
            if let Some(pid) = p.split(':').next().and_then(|s| s.parse::<i32>().ok()) {
                // SAFETY: plain syscall.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_what_changed() {
        let mut before = HostState::default();
        before
            .sysctls
            .insert("vm/overcommit_memory".into(), "0".into());
        before.iptables = "*filter\n:INPUT ACCEPT\nCOMMIT\n".into();
        let mut after = before.clone();
        assert!(before.diff(&after).is_empty());
        after
            .sysctls
            .insert("vm/overcommit_memory".into(), "1".into());
        after.links.insert("p12br0".into());
        after.iptables = "*filter\n:INPUT ACCEPT\n:KUBE-FIREWALL - \nCOMMIT\n".into();
        after
            .processes
            .push("42: containerd-shim-runc-v2 -address x".into());
        let d = before.diff(&after);
        assert!(
            d.contains(&"sysctl vm/overcommit_memory: was 0, now 1".to_string()),
            "{d:?}"
        );
        assert!(d.contains(&"link left behind: p12br0".to_string()), "{d:?}");
        assert!(d.iter().any(|l| l.contains("KUBE-FIREWALL")), "{d:?}");
        assert!(
            d.iter().any(|l| l.starts_with("process left running: 42")),
            "{d:?}"
        );
        assert_eq!(d.len(), 4, "{d:?}");
    }

    #[test]
    fn a_new_cgroup_tree_with_a_process_in_it_is_removed() {
        let top = Path::new(CGROUP_ROOT).join("pids/p12-testenv-unit");
        let leaf = top.join("pod/container");
        if std::fs::create_dir_all(&leaf).is_err() {
            eprintln!("skipped: cannot create cgroups here (not root?)");
            return;
        }
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        std::fs::write(leaf.join("cgroup.procs"), child.id().to_string()).unwrap();
        remove_cgroup_tree(&top);
        let _ = child.wait();
        assert!(!top.exists(), "{} is still there", top.display());
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn two_captures_of_a_quiet_host_agree() {
        // The volatile sysctls are left out; anything else that moves on its own
        // would make the teardown check fail for no reason.
        let a = HostState::capture(Path::new("/nonexistent-marker"));
        let b = HostState::capture(Path::new("/nonexistent-marker"));
        let d: Vec<String> = a
            .diff(&b)
            .into_iter()
            .filter(|l| l.starts_with("sysctl"))
            .collect();
        assert!(d.is_empty(), "{d:?}");
        assert!(!a.sysctls.is_empty());
    }
}
