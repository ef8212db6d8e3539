//! Pod spec → process: expands the container's environment and arguments the
//! way the kubelet does, materialises its volumes (service-account token,
//! Secrets, ConfigMaps, emptyDirs) and builds the command that bind-mounts them
//! and runs as the pod's user. Talks to the API server only to read what the
//! volumes and environment reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, ServiceAccount, Volume};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use super::PodRunnerConfig;

/// Why a pod cannot run here; becomes the pod's status message.
#[derive(Debug, thiserror::Error)]
pub(super) enum PodError {
    #[error("local pod runner: {0}")]
    Unsupported(String),
    #[error("local pod runner: failed to {0}")]
    Setup(String),
}

pub(super) fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> PodError + '_ {
    move |e| PodError::Setup(format!("{what}: {e}"))
}

/// Expands `$(VAR)` references the way the kubelet does (`$$` escapes).
pub(super) fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
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

pub(super) async fn container_env(
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

pub(super) fn write_file(dir: &Path, name: &str, data: &[u8]) -> Result<(), PodError> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(setup("create a volume folder"))?;
    }
    std::fs::write(&path, data).map_err(setup("write a volume file"))
}

/// Fills `dir` with what the volume holds, as the kubelet would.
pub(super) async fn materialise(
    client: &Client,
    pod: &Pod,
    vol: &Volume,
    dir: &Path,
) -> Result<(), PodError> {
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
pub(super) async fn request_token(
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

pub(super) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub(super) struct Launch {
    pub(super) cmd: Command,
    pub(super) log: PathBuf,
    pub(super) termination_log: PathBuf,
}

pub(super) async fn prepare(
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

pub(super) fn chown_tree(dir: &Path, uid: u32, gid: u32) {
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
