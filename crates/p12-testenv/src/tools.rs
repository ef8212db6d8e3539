//! Finding (and if needed building) etcd, kube-apiserver, kube-controller-manager,
//! kubectl and helm.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::HarnessError;

pub const TOOLS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
    "helm",
];

/// The repository root (the workspace's Cargo.toml), found at compile time:
/// this crate lives in `crates/p12-testenv`.
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .nth(2)
        .unwrap_or(manifest_dir)
        .to_path_buf()
}

/// Where the project builds things: `CARGO_TARGET_DIR` or `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// What a real node adds to the control plane's tools.
pub const NODE_TOOLS: [&str; 3] = ["kubelet", "kube-scheduler", "kube-proxy"];

/// [`ensure_built`], and the node's tools too.
pub fn ensure_node_tools() -> Result<PathBuf, HarnessError> {
    let bin = target_dir().join("k8s-tools/bin");
    if !NODE_TOOLS.iter().all(|t| is_executable(&bin.join(t))) {
        run_build_script()?;
    }
    for t in NODE_TOOLS {
        if !is_executable(&bin.join(t)) {
            return Err(HarnessError::Build(format!(
                "tests/k8s-tools/build.sh did not produce {t}"
            )));
        }
    }
    ensure_built()
}

/// The folder holding the tools, building them first when one is missing.
///
/// `KUBEBUILDER_ASSETS`, when set, is honoured by the build script (it links
/// those binaries instead of building them).
pub fn ensure_built() -> Result<PathBuf, HarnessError> {
    let bin = target_dir().join("k8s-tools/bin");
    if TOOLS.iter().all(|t| is_executable(&bin.join(t))) {
        return Ok(bin);
    }
    run_build_script()?;
    for t in TOOLS {
        if !is_executable(&bin.join(t)) {
            return Err(HarnessError::Build(format!(
                "tests/k8s-tools/build.sh did not produce {t}"
            )));
        }
    }
    Ok(bin)
}

fn run_build_script() -> Result<(), HarnessError> {
    let script = repo_root().join("tests/k8s-tools/build.sh");
    let status = Command::new("bash")
        .arg(&script)
        .env("CARGO_TARGET_DIR", target_dir())
        .status()
        .map_err(|e| HarnessError::Build(format!("failed to run {}: {e}", script.display())))?;
    if !status.success() {
        return Err(HarnessError::Build(format!(
            "{} failed ({status}); its output above says which tool and why",
            script.display()
        )));
    }
    Ok(())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
