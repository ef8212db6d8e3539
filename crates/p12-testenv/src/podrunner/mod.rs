//! The local pod runner: a kubelet stand-in for the operator's own pods.
//!
//! There is no container runtime on the development and CI machines, so this
//! plays the kubelet for exactly one kind of pod: those whose container image is
//! the operator's (`…/p12-operator[:tag]`). It runs the operator binary on the
//! host with the pod's command, args and environment, materialises its volumes
//! (service-account token from the TokenRequest API, Secrets, ConfigMaps,
//! emptyDirs) and bind-mounts them at their paths inside a private mount
//! namespace, runs the process as the pod's `runAsUser`, and writes the pod's
//! status back: Pending → Running → Succeeded/Failed with the exit code and the
//! termination message. It honours `activeDeadlineSeconds`, `restartPolicy` and
//! deletion (SIGTERM, then SIGKILL after the grace period). Every other pod is
//! ignored. A development aid, not a kubelet: no images, no network namespaces,
//! no resource enforcement, no probes, no `kubectl logs` (each container's output
//! is in `<work dir>/pods/<namespace>_<name>/<container>.log`).
//!
//! Two files: this one is the lifecycle (watch pods, start, stop, write status
//! back); `spec.rs` turns a pod's spec into a process to launch (environment,
//! volumes, the command line, the user).

mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::process;

use spec::{Launch, PodError, prepare, setup};

/// What the runner needs to know about the host and the cluster.
#[derive(Clone, Debug)]
pub struct PodRunnerConfig {
    /// The operator binary every matching pod runs.
    pub operator_binary: PathBuf,
    /// Where per-pod folders (volumes, logs, termination messages) go.
    pub work_dir: PathBuf,
    /// `KUBERNETES_SERVICE_HOST` / `_PORT` handed to pods.
    pub api_host: String,
    pub api_port: u16,
    /// The cluster CA published to pods as `ca.crt`.
    pub ca_pem: String,
}

/// True for images the runner plays the kubelet for: repository name
/// `p12-operator`, any registry, tag or digest.
pub fn is_operator_image(image: &str) -> bool {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let repo = last.split(':').next().unwrap_or(last);
    repo == "p12-operator"
}

fn is_ours(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.node_name.is_none()
        && spec
            .containers
            .iter()
            .any(|c| c.image.as_deref().is_some_and(is_operator_image))
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

type Running = Arc<Mutex<HashMap<String, watch::Sender<Option<i64>>>>>;

/// Watches all pods and runs the operator's until the watch ends.
pub async fn run(client: Client, cfg: PodRunnerConfig) {
    let cfg = Arc::new(cfg);
    let running: Running = Arc::default();
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = watcher(pods, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(Event::Apply(pod)) | Ok(Event::InitApply(pod)) => pod,
            Ok(Event::Delete(pod)) => {
                stop_pod(&running, &pod, None);
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "pod watch interrupted");
                continue;
            }
        };
        if !is_ours(&pod) {
            continue;
        }
        if let Some(deleted) = &pod.metadata.deletion_timestamp {
            let _ = deleted;
            let grace = pod.metadata.deletion_grace_period_seconds;
            stop_pod(&running, &pod, grace);
            continue;
        }
        if is_terminal(&pod) {
            continue;
        }
        let uid = pod.uid().unwrap_or_default();
        let mut map = running.lock().unwrap();
        if map.contains_key(&uid) {
            continue;
        }
        let (tx, rx) = watch::channel(None);
        map.insert(uid.clone(), tx);
        drop(map);
        let (client, cfg, running) = (client.clone(), cfg.clone(), running.clone());
        tokio::spawn(async move {
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            if let Err(e) = run_pod(client.clone(), &cfg, pod, rx).await {
                tracing::warn!(namespace = %ns, pod = %name, error = %e, "local pod runner failed a pod");
                let api: Api<Pod> = Api::namespaced(client, &ns);
                let _ = patch_status(&api, &name, failed_status(&e.to_string())).await;
            }
            running.lock().unwrap().remove(&uid);
        });
    }
}

fn stop_pod(running: &Running, pod: &Pod, grace: Option<i64>) {
    let uid = pod.uid().unwrap_or_default();
    if let Some(tx) = running.lock().unwrap().get(&uid) {
        let grace = grace
            .or_else(|| {
                pod.spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        let _ = tx.send(Some(grace));
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn failed_status(message: &str) -> serde_json::Value {
    json!({"status": {"phase": "Failed", "reason": "LocalPodRunnerError", "message": message}})
}

async fn patch_status(api: &Api<Pod>, name: &str, status: serde_json::Value) -> kube::Result<Pod> {
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
}

/// The termination message: the file the container wrote, or with
/// `FallbackToLogsOnError` the end of its log when it failed and wrote nothing.
fn termination_message(
    termination_log: &Path,
    log: &Path,
    c: &Container,
    exit_code: i32,
) -> String {
    let mut msg = std::fs::read(termination_log).unwrap_or_default();
    if msg.is_empty()
        && exit_code != 0
        && c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
    {
        let out = std::fs::read(log).unwrap_or_default();
        msg = out[out.len().saturating_sub(2048)..].to_vec();
    }
    msg.truncate(4096);
    String::from_utf8_lossy(&msg).into_owned()
}

enum Outcome {
    Exited(i32),
    DeadlineExceeded,
    Deleted,
}

async fn run_pod(
    client: Client,
    cfg: &PodRunnerConfig,
    pod: Pod,
    mut stop: watch::Receiver<Option<i64>>,
) -> Result<(), PodError> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let spec = pod.spec.clone().unwrap_or_default();
    let restart_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let started = jiff::Timestamp::now();
    let deadline = spec
        .active_deadline_seconds
        .map(|s| Duration::from_secs(s.max(0) as u64));
    let mut restarts = 0;
    let mut last_state = serde_json::Value::Null;
    loop {
        let (launch, c) = prepare(&client, cfg, &pod).await?;
        let image = c.image.clone().unwrap_or_default();
        let Launch {
            cmd,
            log,
            termination_log,
        } = launch;
        let mut child = process::spawn_tied(cmd).map_err(setup("start the operator binary"))?;
        let run_start = now();
        let pod_start = started.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let running = json!({"status": {
            "phase": "Running", "startTime": pod_start, "hostIP": "127.0.0.1",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": pod_start},
                {"type": "Initialized", "status": "True", "lastTransitionTime": pod_start},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": run_start},
                {"type": "Ready", "status": "True", "lastTransitionTime": run_start}],
            "containerStatuses": [{"name": c.name, "image": image, "imageID": "", "ready": true, "started": true,
                "restartCount": restarts, "state": {"running": {"startedAt": run_start}}, "lastState": last_state}]}});
        if let Err(e) = patch_status(&api, &name, running).await {
            tracing::debug!(pod = %name, error = %e, "failed to mark pod running");
        }
        tracing::debug!(namespace = %ns, pod = %name, log = %log.display(), "local pod runner started a pod");

        let pid = child.id();
        let (exit_tx, mut exit_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let code = child.wait().map(|s| {
                use std::os::unix::process::ExitStatusExt;
                s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
            });
            let _ = exit_tx.send(code.unwrap_or(-1));
        });
        let remaining = deadline.map(|d| {
            let elapsed = jiff::Timestamp::now()
                .duration_since(started)
                .as_secs_f64()
                .max(0.0);
            d.saturating_sub(Duration::from_secs_f64(elapsed))
        });
        let grace_default = spec.termination_grace_period_seconds.unwrap_or(30);
        let outcome = tokio::select! {
            code = &mut exit_rx => Outcome::Exited(code.unwrap_or(-1)),
            _ = sleep_opt(remaining) => {
                terminate(pid, grace_default, &mut exit_rx).await;
                Outcome::DeadlineExceeded
            }
            grace = stopped(&mut stop) => {
                let grace = grace.unwrap_or(grace_default);
                terminate(pid, grace, &mut exit_rx).await;
                Outcome::Deleted
            }
        };
        let finished = now();
        match outcome {
            Outcome::Deleted => return Ok(()),
            Outcome::DeadlineExceeded => {
                let status = json!({"status": {"phase": "Failed", "reason": "DeadlineExceeded",
                    "message": "Pod was active on the node longer than the specified deadline",
                    "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": finished}],
                    "containerStatuses": [{"name": c.name, "image": image, "imageID": "", "ready": false,
                        "started": false, "restartCount": restarts, "state": {"terminated": {"exitCode": 137,
                        "reason": "DeadlineExceeded", "startedAt": run_start, "finishedAt": finished}}}]}});
                patch_status(&api, &name, status)
                    .await
                    .map_err(setup("write the pod status"))?;
                return Ok(());
            }
            Outcome::Exited(code) => {
                let message = termination_message(&termination_log, &log, &c, code);
                let terminated = json!({"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                    "message": message, "startedAt": run_start, "finishedAt": finished});
                let restart = match restart_policy.as_str() {
                    "Never" => false,
                    "OnFailure" => code != 0,
                    _ => true,
                };
                if restart {
                    restarts += 1;
                    last_state = json!({"terminated": terminated});
                    let backoff = Duration::from_secs((1u64 << restarts.min(4)).min(10));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => continue,
                        _ = stopped(&mut stop) => return Ok(()),
                    }
                }
                let phase = if code == 0 { "Succeeded" } else { "Failed" };
                let status = json!({"status": {"phase": phase,
                    "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": finished},
                                   {"type": "ContainersReady", "status": "False", "lastTransitionTime": finished}],
                    "containerStatuses": [{"name": c.name, "image": image, "imageID": "", "ready": false,
                        "started": false, "restartCount": restarts, "state": {"terminated": terminated}}]}});
                patch_status(&api, &name, status)
                    .await
                    .map_err(setup("write the pod status"))?;
                return Ok(());
            }
        }
    }
}

/// Resolves when the pod is deleted, with the grace period to give it.
async fn stopped(stop: &mut watch::Receiver<Option<i64>>) -> Option<i64> {
    match stop.wait_for(|g| g.is_some()).await {
        Ok(grace) => *grace,
        Err(_) => None,
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM to the pod's process group, SIGKILL after `grace` seconds.
async fn terminate(pid: u32, grace: i64, exited: &mut tokio::sync::oneshot::Receiver<i32>) {
    process::signal_group(pid, libc::SIGTERM);
    let grace = Duration::from_secs(grace.max(0) as u64);
    if tokio::time::timeout(grace, &mut *exited).await.is_err() {
        process::signal_group(pid, libc::SIGKILL);
        let _ = exited.await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::spec::expand;
    use super::*;

    #[test]
    fn operator_images_are_recognised_with_any_registry_tag_or_digest() {
        assert!(is_operator_image("p12-operator"));
        assert!(is_operator_image("p12-operator:0.1.0"));
        assert!(is_operator_image("ghcr.io/acme/p12-operator:latest"));
        assert!(is_operator_image(
            "registry:5000/x/p12-operator@sha256:abcd"
        ));
        assert!(!is_operator_image("nginx:1.27"));
        assert!(!is_operator_image("ghcr.io/acme/p12-operator-probe:1"));
        assert!(!is_operator_image("p12-operator/nginx"));
    }

    #[test]
    fn variable_references_expand_like_the_kubelet() {
        let env: BTreeMap<String, String> = [("NS".to_string(), "shop".to_string())].into();
        assert_eq!(expand("--namespace=$(NS)", &env), "--namespace=shop");
        assert_eq!(expand("$$(NS) $(MISSING)", &env), "$(NS) $(MISSING)");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }
}
