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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, ServiceAccount, Volume};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::process;

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

/// Why a pod cannot run here; becomes the pod's status message.
#[derive(Debug, thiserror::Error)]
enum PodError {
    #[error("local pod runner: {0}")]
    Unsupported(String),
    #[error("local pod runner: failed to {0}")]
    Setup(String),
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> PodError + '_ {
    move |e| PodError::Setup(format!("{what}: {e}"))
}

/// Expands `$(VAR)` references the way the kubelet does (`$$` escapes).
fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("$(") {
            match t.find(')') {
                Some(end) if env.contains_key(&t[..end]) => {
                    out.push_str(&env[&t[..end]]);
                    rest = &t[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = &tail[1..];
                }
            }
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

async fn container_env(
    client: &Client,
    pod: &Pod,
    c: &Container,
    cfg: &PodRunnerConfig,
) -> Result<BTreeMap<String, String>, PodError> {
    let ns = pod.namespace().unwrap_or_default();
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
    );
    env.insert("HOSTNAME".to_string(), pod.name_any());
    env.insert("KUBERNETES_SERVICE_HOST".to_string(), cfg.api_host.clone());
    env.insert(
        "KUBERNETES_SERVICE_PORT".to_string(),
        cfg.api_port.to_string(),
    );
    env.insert(
        "KUBERNETES_SERVICE_PORT_HTTPS".to_string(),
        cfg.api_port.to_string(),
    );
    if !c.env_from.as_deref().unwrap_or_default().is_empty() {
        return Err(PodError::Unsupported("envFrom is not supported".into()));
    }
    for var in c.env.as_deref().unwrap_or_default() {
        let value = if let Some(v) = &var.value {
            expand(v, &env)
        } else if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                match f.field_path.as_str() {
                    "metadata.name" => pod.name_any(),
                    "metadata.namespace" => ns.clone(),
                    "metadata.uid" => pod.uid().unwrap_or_default(),
                    "spec.serviceAccountName" => pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_default(),
                    "spec.nodeName" => "local-pod-runner".into(),
                    "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
                    other => {
                        return Err(PodError::Unsupported(format!(
                            "env fieldRef {other} is not supported"
                        )));
                    }
                }
            } else if let Some(r) = &from.secret_key_ref {
                let secret = Api::<Secret>::namespaced(client.clone(), &ns)
                    .get_opt(&r.name)
                    .await;
                let secret = secret.map_err(setup("read a Secret for env"))?;
                match secret
                    .and_then(|s| s.data)
                    .and_then(|d| d.get(&r.key).cloned())
                {
                    Some(b) => String::from_utf8_lossy(&b.0).into_owned(),
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(PodError::Setup(format!(
                            "find key {} of Secret {}",
                            r.key, r.name
                        )));
                    }
                }
            } else if let Some(r) = &from.config_map_key_ref {
                let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                    .get_opt(&r.name)
                    .await;
                let cm = cm.map_err(setup("read a ConfigMap for env"))?;
                match cm.and_then(|c| c.data).and_then(|d| d.get(&r.key).cloned()) {
                    Some(v) => v,
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(PodError::Setup(format!(
                            "find key {} of ConfigMap {}",
                            r.key, r.name
                        )));
                    }
                }
            } else {
                return Err(PodError::Unsupported(format!(
                    "env {} uses an unsupported valueFrom",
                    var.name
                )));
            }
        } else {
            String::new()
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env)
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> Result<(), PodError> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(setup("create a volume folder"))?;
    }
    std::fs::write(&path, data).map_err(setup("write a volume file"))
}

/// Fills `dir` with what the volume holds, as the kubelet would.
async fn materialise(client: &Client, pod: &Pod, vol: &Volume, dir: &Path) -> Result<(), PodError> {
    let ns = pod.namespace().unwrap_or_default();
    std::fs::create_dir_all(dir).map_err(setup("create a volume folder"))?;
    if vol.empty_dir.is_some() {
        return Ok(());
    }
    if let Some(s) = &vol.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let secret = Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt(&name)
            .await;
        match secret.map_err(setup("read a Secret volume"))? {
            Some(secret) => {
                for (k, v) in secret.data.unwrap_or_default() {
                    write_file(dir, &k, &v.0)?;
                }
            }
            None if s.optional == Some(true) => {}
            None => {
                return Err(PodError::Setup(format!(
                    "find Secret {name} for volume {}",
                    vol.name
                )));
            }
        }
        return Ok(());
    }
    if let Some(c) = &vol.config_map {
        let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get_opt(&c.name)
            .await;
        match cm.map_err(setup("read a ConfigMap volume"))? {
            Some(cm) => {
                for (k, v) in cm.data.unwrap_or_default() {
                    write_file(dir, &k, v.as_bytes())?;
                }
            }
            None if c.optional == Some(true) => {}
            None => {
                return Err(PodError::Setup(format!(
                    "find ConfigMap {} for volume {}",
                    c.name, vol.name
                )));
            }
        }
        return Ok(());
    }
    if let Some(p) = &vol.projected {
        for source in p.sources.as_deref().unwrap_or_default() {
            if let Some(t) = &source.service_account_token {
                let token =
                    request_token(client, pod, t.audience.clone(), t.expiration_seconds).await?;
                write_file(dir, &t.path, token.as_bytes())?;
            } else if let Some(c) = &source.config_map {
                let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                    .get(&c.name)
                    .await;
                let data = cm
                    .map_err(setup("read a projected ConfigMap"))?
                    .data
                    .unwrap_or_default();
                for item in c.items.as_deref().unwrap_or_default() {
                    let v = data.get(&item.key).cloned().unwrap_or_default();
                    write_file(dir, &item.path, v.as_bytes())?;
                }
            } else if let Some(d) = &source.downward_api {
                for item in d.items.as_deref().unwrap_or_default() {
                    let v = match item.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.namespace") => ns.clone(),
                        Some("metadata.name") => pod.name_any(),
                        other => {
                            return Err(PodError::Unsupported(format!(
                                "downwardAPI field {other:?}"
                            )));
                        }
                    };
                    write_file(dir, &item.path, v.as_bytes())?;
                }
            } else {
                return Err(PodError::Unsupported(format!(
                    "projected volume {} has an unsupported source",
                    vol.name
                )));
            }
        }
        return Ok(());
    }
    Err(PodError::Unsupported(format!(
        "volume {} has a type the runner cannot provide",
        vol.name
    )))
}

/// A bound service-account token, exactly what a kubelet would mount.
async fn request_token(
    client: &Client,
    pod: &Pod,
    audience: Option<String>,
    expiration: Option<i64>,
) -> Result<String, PodError> {
    let ns = pod.namespace().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            expiration_seconds: Some(expiration.unwrap_or(3607)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let resp: TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &req)
        .await
        .map_err(setup("request a service-account token"))?;
    resp.status
        .map(|s| s.token)
        .ok_or_else(|| PodError::Setup("get a token: empty TokenRequest status".into()))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

struct Launch {
    cmd: Command,
    log: PathBuf,
    termination_log: PathBuf,
}

async fn prepare(
    client: &Client,
    cfg: &PodRunnerConfig,
    pod: &Pod,
) -> Result<(Launch, Container), PodError> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| PodError::Unsupported("pod has no spec".into()))?;
    if !spec
        .init_containers
        .as_deref()
        .unwrap_or_default()
        .is_empty()
        || spec.containers.len() != 1
    {
        return Err(PodError::Unsupported(
            "only pods with exactly one container and no init containers run here".into(),
        ));
    }
    let c = spec.containers[0].clone();
    let env = container_env(client, pod, &c, cfg).await?;
    let command: Vec<String> = c
        .command
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|s| expand(s, &env))
        .collect();
    let args: Vec<String> = c
        .args
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|s| expand(s, &env))
        .collect();
    if let Some(first) = command.first() {
        if Path::new(first).file_name().and_then(|n| n.to_str()) != Some("p12-operator") {
            return Err(PodError::Unsupported(format!(
                "command {first:?} is not the p12-operator binary"
            )));
        }
    }
    let mut argv = vec![cfg.operator_binary.display().to_string()];
    argv.extend(command.into_iter().skip(1));
    argv.extend(args);

    let ns = pod.namespace().unwrap_or_default();
    let dir = cfg
        .work_dir
        .join("pods")
        .join(format!("{ns}_{}", pod.name_any()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(setup("create the pod folder"))?;
    let log = dir.join(format!("{}.log", c.name));
    let termination_log = dir.join("termination-log");
    std::fs::write(&termination_log, b"").map_err(setup("create the termination log"))?;

    // The shell that runs inside the private mount namespace: mount, drop privileges, exec.
    let mut script = String::from("set -e\n");
    let mut mount_at = |src: &Path, dst: &str, ro: bool, file: bool| {
        let dst = shell_quote(dst);
        if file {
            script.push_str(&format!(
                "mkdir -p \"$(dirname {dst})\"; [ -e {dst} ] || : > {dst}\n"
            ));
        } else {
            script.push_str(&format!("mkdir -p {dst}\n"));
        }
        script.push_str(&format!(
            "mount --bind {} {dst}\n",
            shell_quote(&src.display().to_string())
        ));
        if ro {
            script.push_str(&format!("mount -o remount,bind,ro {dst}\n"));
        }
    };
    let tm_path = c
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    mount_at(&termination_log, &tm_path, false, true);
    for vm in c.volume_mounts.as_deref().unwrap_or_default() {
        if vm.sub_path.is_some() || vm.sub_path_expr.is_some() {
            return Err(PodError::Unsupported(
                "subPath mounts are not supported".into(),
            ));
        }
        let vol = spec
            .volumes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|v| v.name == vm.name)
            .ok_or_else(|| PodError::Setup(format!("find volume {}", vm.name)))?;
        let vdir = dir.join("volumes").join(&vol.name);
        materialise(client, pod, vol, &vdir).await?;
        mount_at(&vdir, &vm.mount_path, vm.read_only == Some(true), false);
    }

    let sc = c.security_context.as_ref();
    let psc = spec.security_context.as_ref();
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| psc.and_then(|s| s.run_as_user));
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| psc.and_then(|s| s.run_as_group))
        .or(uid);
    let run_as_non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| psc.and_then(|s| s.run_as_non_root));
    if run_as_non_root == Some(true) && uid.is_none_or(|u| u == 0) {
        return Err(PodError::Unsupported(
            "runAsNonRoot is set but no non-zero runAsUser is given".into(),
        ));
    }
    if let Some(uid) = uid {
        // The process must be able to read what was mounted for it.
        chown_tree(&dir, uid as u32, gid.unwrap_or(uid) as u32);
        script.push_str(&format!(
            "exec setpriv --reuid={uid} --regid={} --clear-groups --no-new-privs -- \"$@\"\n",
            gid.unwrap_or(uid)
        ));
    } else {
        script.push_str("exec \"$@\"\n");
    }

    let out = std::fs::File::create(&log).map_err(setup("create the container log"))?;
    let err = out.try_clone().map_err(setup("open the container log"))?;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        &script,
        "sh",
    ])
    .args(&argv)
    .env_clear()
    .envs(&env)
    .current_dir(c.working_dir.as_deref().unwrap_or("/"))
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err);
    Ok((
        Launch {
            cmd,
            log,
            termination_log,
        },
        c,
    ))
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::chown(dir, Some(uid), Some(gid));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                chown_tree(&p, uid, gid);
            } else {
                let _ = std::os::unix::fs::chown(&p, Some(uid), Some(gid));
            }
        }
    }
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
