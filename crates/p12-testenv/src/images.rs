//! The container images of the real-node tests, built by `scripts/image`
//! without Docker or a registry into `target/images/<name>.tar` (docker-archive
//! tarballs that `ctr images import` takes).

use std::path::PathBuf;
use std::process::Command;

use crate::{HarnessError, tools};

/// Builds (or finds up to date) the named images — `operator`, `pause`,
/// `workload` — and returns their archives in the same order.
pub fn build(names: &[&str]) -> Result<Vec<PathBuf>, HarnessError> {
    let script = tools::repo_root().join("scripts/image");
    let status = Command::new("bash")
        .arg(&script)
        .args(names)
        .env("CARGO_TARGET_DIR", tools::target_dir())
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| HarnessError::Build(format!("failed to run {}: {e}", script.display())))?;
    if !status.success() {
        return Err(HarnessError::Build(format!(
            "scripts/image {} failed ({status}); its output above says why",
            names.join(" ")
        )));
    }
    names
        .iter()
        .map(|n| {
            let p = tools::target_dir().join("images").join(format!("{n}.tar"));
            if p.is_file() {
                Ok(p)
            } else {
                Err(HarnessError::Build(format!(
                    "scripts/image {n} did not produce {}",
                    p.display()
                )))
            }
        })
        .collect()
}
