//! The cluster CA: loaded from, or created as, a Secret in the operator's namespace.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::core::PartialObjectMeta;

use crate::bundle::{MANAGED_BY, MANAGED_BY_LABEL, REQUEST_LABEL};
use crate::pki::{CertificateAuthority, KeyAlgorithm};

/// How to find (or make) the CA.
#[derive(Clone, Debug)]
pub struct CaSettings {
    pub namespace: String,
    pub secret_name: String,
    pub create: bool,
    pub algorithm: KeyAlgorithm,
    pub common_name: String,
    pub validity: Duration,
    /// The API server's address, named in connection errors.
    pub api_server: String,
    /// Where issued Secrets live (`--watch-namespace`); `None`: every namespace.
    pub watch_namespace: Option<String>,
}

/// Why no CA can be used; every request reports it until it is fixed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CaProblem {
    /// `CANotFound`, `CAMissing`, `CAInvalid` or `CAUnavailable`.
    pub reason: &'static str,
    pub message: String,
}

fn location(s: &CaSettings) -> String {
    format!("Secret {}/{}", s.namespace, s.secret_name)
}

/// Reads the CA from a Secret's `tls.crt` (CA certificate, then any issuers up
/// to the root) and `tls.key`; a separate `ca.crt` root is appended when
/// `tls.crt` does not already end with it.
pub fn from_secret(
    secret: &Secret,
    settings: &CaSettings,
) -> Result<CertificateAuthority, CaProblem> {
    let data = secret.data.clone().unwrap_or_default();
    let get = |k: &str| data.get(k).map(|b| b.0.clone()).filter(|b| !b.is_empty());
    let (Some(mut crt), Some(key)) = (get("tls.crt"), get("tls.key")) else {
        return Err(CaProblem {
            reason: "CAInvalid",
            message: format!(
                "{} must hold tls.crt and tls.key (the CA certificate and its private key)",
                location(settings)
            ),
        });
    };
    if let Some(root) = get("ca.crt") {
        let crt_text = String::from_utf8_lossy(&crt).into_owned();
        let root_text = String::from_utf8_lossy(&root).into_owned();
        if !crt_text.trim_end().ends_with(root_text.trim()) {
            crt.push(b'\n');
            crt.extend_from_slice(&root);
        }
    }
    CertificateAuthority::load(&crt, &key, jiff::Timestamp::now()).map_err(|e| CaProblem {
        reason: "CAInvalid",
        message: format!("the CA in {} cannot be used: {e}", location(settings)),
    })
}

/// The CA Secret could not be read: `CAUnavailable`, naming the API server and the cause.
fn unreadable(settings: &CaSettings, e: kube::Error) -> CaProblem {
    CaProblem {
        reason: "CAUnavailable",
        message: format!(
            "failed to read {} from the API server at {}: {}",
            location(settings),
            settings.api_server,
            crate::telemetry::error_chain(&e)
        ),
    }
}

/// Loads the CA, creating a self-signed root when the Secret is absent and
/// creation is allowed. An existing Secret is never overwritten, even when broken.
/// Returns the CA and the Secret it came from.
pub async fn ensure(
    api: &Api<Secret>,
    settings: &CaSettings,
) -> Result<(CertificateAuthority, Secret), CaProblem> {
    let unavailable = |e: kube::Error| unreadable(settings, e);
    let loaded = |secret: &Secret| from_secret(secret, settings).map(|ca| (ca, secret.clone()));
    if let Some(secret) = api
        .get_opt(&settings.secret_name)
        .await
        .map_err(unavailable)?
    {
        return loaded(&secret);
    }
    // Certificates of the missing CA are out there, and clients trust its
    // root: a new root would break every one of them at once.
    if let Some(issued) = an_issued_secret(api, settings).await.map_err(unavailable)? {
        return Err(CaProblem {
            reason: "CAMissing",
            message: format!(
                "{} is missing, but certificates were issued from it (Secret {issued} holds one); the operator does not create a new root, which would break every client that trusts the old one. Restore the Secret (tls.crt, tls.key) from a backup; or, to start over with a new root that clients must then be given, run `p12-operator ca new-root -n {}`",
                location(settings),
                settings.namespace
            ),
        });
    }
    create_root(api, settings).await
}

/// One Secret the operator issued, as `namespace/name`, if any exists where it
/// issues: one metadata-only call that returns at most one item.
async fn an_issued_secret(
    api: &Api<Secret>,
    settings: &CaSettings,
) -> Result<Option<String>, kube::Error> {
    let client = api.clone().into_client();
    let issued: Api<PartialObjectMeta<Secret>> = match &settings.watch_namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY},{REQUEST_LABEL}");
    let found = issued
        .list_metadata(&ListParams::default().labels(&selector).limit(1))
        .await?;
    Ok(found.items.first().map(|s| {
        format!(
            "{}/{}",
            s.metadata.namespace.as_deref().unwrap_or_default(),
            s.metadata.name.as_deref().unwrap_or_default()
        )
    }))
}

/// Creates a self-signed root in the CA Secret, unless creation is off. Never
/// replaces an existing Secret: another replica that won the race is loaded.
pub async fn create_root(
    api: &Api<Secret>,
    settings: &CaSettings,
) -> Result<(CertificateAuthority, Secret), CaProblem> {
    let unavailable = |e: kube::Error| unreadable(settings, e);
    let loaded = |secret: &Secret| from_secret(secret, settings).map(|ca| (ca, secret.clone()));
    if !settings.create {
        return Err(CaProblem {
            reason: "CANotFound",
            message: format!(
                "{} does not exist; create it with tls.crt and tls.key, or run with --ca-create",
                location(settings)
            ),
        });
    }
    let s = settings.clone();
    let ca = tokio::task::spawn_blocking(move || {
        CertificateAuthority::generate_self_signed(
            s.algorithm,
            &s.common_name,
            s.validity,
            jiff::Timestamp::now(),
        )
    })
    .await
    .map_err(|e| CaProblem {
        reason: "CAUnavailable",
        message: format!("failed to generate the CA: {e}"),
    })?
    .map_err(|e| CaProblem {
        reason: "CAUnavailable",
        message: format!("failed to generate the CA: {e}"),
    })?;
    let mut data = BTreeMap::new();
    data.insert(
        "tls.crt".to_string(),
        ByteString(ca.cert_pem().into_bytes()),
    );
    data.insert(
        "tls.key".to_string(),
        ByteString(ca.key_pem().expose().as_bytes().to_vec()),
    );
    data.insert("ca.crt".to_string(), ByteString(ca.root_pem().into_bytes()));
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(settings.secret_name.clone()),
            labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    };
    match api
        .create(
            &PostParams {
                field_manager: Some(MANAGED_BY.into()),
                ..Default::default()
            },
            &secret,
        )
        .await
    {
        Ok(created) => {
            tracing::info!(secret = %location(settings), fingerprint = %ca.fingerprint(), "created a self-signed root CA");
            Ok((ca, created))
        }
        // Another replica won the race: use what it wrote.
        Err(kube::Error::Api(e)) if e.code == 409 => match api
            .get_opt(&settings.secret_name)
            .await
            .map_err(unavailable)?
        {
            Some(secret) => loaded(&secret),
            None => Err(CaProblem {
                reason: "CAUnavailable",
                message: format!("{} vanished while being created", location(settings)),
            }),
        },
        Err(e) => Err(CaProblem {
            reason: "CAUnavailable",
            message: format!(
                "failed to create {} through the API server at {}: {}",
                location(settings),
                settings.api_server,
                crate::telemetry::error_chain(&e)
            ),
        }),
    }
}

/// How often the rotation's Secrets and times are looked at (three GETs).
const ROTATION_TICK: Duration = Duration::from_secs(5);

/// Takes the rotation's next step when it is due and this replica leads;
/// true when it wrote something.
async fn take_rotation_step(
    ctx: &super::Context,
    api: &Api<Secret>,
    loaded: &super::rotation::Loaded,
) -> bool {
    use super::rotation::{self, Step};
    let previous_leaves = loaded
        .previous
        .as_ref()
        .filter(|_| ctx.secrets_synced())
        .map(|(p, _)| ctx.secrets.lock().unwrap().issued_by(&p.fingerprint()));
    // Since when no Secret holds a certificate of the previous CA.
    let done_since = {
        let mut since = ctx.previous_gone_since.lock().unwrap();
        match previous_leaves {
            Some(0) => *since.get_or_insert_with(std::time::Instant::now),
            _ => {
                *since = None;
                std::time::Instant::now() + Duration::from_secs(86_400)
            }
        }
    };
    let previous_done = done_since.elapsed() >= ctx.rotation.overlap;
    if let Some(n) = previous_leaves {
        ctx.metrics.ca_previous_leaves.set(n as i64);
    }
    let now = jiff::Timestamp::now();
    let step = rotation::next_step(loaded, previous_done, &ctx.rotation, now);
    if step == Step::Nothing || ctx.leadership.check().is_err() {
        return false;
    }
    let settings = &ctx.ca_settings;
    let done = match step {
        Step::StageNext => rotation::stage_next(api, settings, ctx.rotation.overlap, now)
            .await
            .map(|ca| {
                tracing::info!(fingerprint = %ca.fingerprint(), switch_in = ?ctx.rotation.overlap, "CA rotation: staged the next root; its root joins every trust bundle now");
            }),
        Step::Switch => rotation::switch(api, settings, loaded).await.map(|()| {
            tracing::info!(from = %loaded.current.0.fingerprint(), to = ?loaded.next.as_ref().map(|(n, _)| n.fingerprint()), "CA rotation: the next CA issues now; the previous one stays trusted until its certificates are re-issued");
        }),
        Step::Retire => rotation::retire(api, settings, loaded).await.map(|()| {
            tracing::info!(fingerprint = ?loaded.previous.as_ref().map(|(p, _)| p.fingerprint()), "CA rotation: no certificate of the previous CA is left; its root leaves the trust bundle");
        }),
        Step::Nothing => Ok(()),
    };
    match done {
        Ok(()) => true,
        Err(p) => {
            tracing::warn!(?step, message = %p.message, "CA rotation step failed; retrying");
            false
        }
    }
}

/// The next change of the CA Secret's version; never, once its watch is gone.
async fn changed(seen: &mut tokio::sync::watch::Receiver<Option<String>>) {
    if seen.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Back-off between attempts to load a CA the API server could not deliver.
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs((1u64 << attempt.min(6)).min(60))
}

/// Keeps `ctx.ca` loaded for the life of the process: the first attempt, then
/// again whenever the CA Secret's version changes (`seen`, fed by a watch) and,
/// while the API server could not be reached, with back-off until it can. A
/// Secret that is missing or broken waits for a person (or a change) and is
/// re-checked every few minutes. Every change of the CA revisits all requests
/// through `revisit_all`. `first` is told once the first attempt is over.
pub async fn keep_loaded(
    ctx: std::sync::Arc<super::Context>,
    api: Api<Secret>,
    mut seen: tokio::sync::watch::Receiver<Option<String>>,
    revisit_all: tokio::sync::mpsc::Sender<()>,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut attempt = 0u32;
    let mut last_problem: Option<String> = None;
    loop {
        let result = match ensure(&api, &ctx.ca_settings).await {
            Ok(current) => super::rotation::load(&api, &ctx.ca_settings, current).await,
            Err(p) => Err(p),
        };
        let previous = ctx.ca().ok().map(|c| c.fingerprint());
        let wait_for_change_of = match result {
            Ok(loaded) => {
                attempt = 0;
                last_problem = None;
                if take_rotation_step(&ctx, &api, &loaded).await {
                    // Something was written: read it back before using it.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                let authorities = loaded.authorities();
                let fingerprint = authorities.fingerprint();
                if previous.as_deref() != Some(fingerprint.as_str()) {
                    let ca = authorities.current();
                    tracing::info!(fingerprint = %ca.fingerprint(), not_after = %ca.not_after(), roots = ?authorities.bundle().fingerprints(), "CA loaded");
                    ctx.set_ca(Ok(std::sync::Arc::new(authorities)));
                    let _ = revisit_all.try_send(());
                }
                loaded.current.1.metadata.resource_version.clone()
            }
            Err(problem) => {
                // The same failure is logged once, not at every retry.
                let new_problem = last_problem.as_deref() != Some(problem.message.as_str());
                if new_problem {
                    tracing::error!(reason = problem.reason, message = %problem.message, "no usable CA; requests report it until it is fixed");
                    last_problem = Some(problem.message.clone());
                } else {
                    tracing::debug!(reason = problem.reason, "CA still unusable");
                }
                let transient = problem.reason == "CAUnavailable";
                ctx.set_ca(Err(problem));
                // A person mending the CA Secret sees each new problem on the
                // requests at once, not after their back-off.
                if previous.is_some() || (new_problem && !transient) {
                    let _ = revisit_all.try_send(());
                }
                if transient {
                    attempt += 1;
                    let delay = retry_delay(attempt);
                    if let Some(f) = first.take() {
                        let _ = f.send(());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = changed(&mut seen) => {}
                    }
                    continue;
                }
                None
            }
        };
        if let Some(f) = first.take() {
            let _ = f.send(());
        }
        match wait_for_change_of {
            // Loaded: the next attempt is for a new version of the Secret, or
            // a rotation's next step (its Secrets and its times are looked at
            // every few seconds).
            Some(version) => {
                tokio::select! {
                    changed = seen.wait_for(|v| v.as_ref().is_some_and(|v| *v != version)) => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = tokio::time::sleep(ROTATION_TICK) => {}
                }
            }
            // Missing or broken: a person has to act; look again on any change.
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(300)) => {}
                    _ = changed(&mut seen) => {}
                }
            }
        }
    }
}
