//! The cluster CA: loaded from, or created as, a Secret in the operator's namespace.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::bundle::{MANAGED_BY, MANAGED_BY_LABEL};
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
}

/// Why no CA can be used; every request reports it until it is fixed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CaProblem {
    /// `CANotFound`, `CAInvalid` or `CAUnavailable`.
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

/// Loads the CA, creating a self-signed root when the Secret is absent and
/// creation is allowed. An existing Secret is never overwritten, even when broken.
pub async fn ensure(
    api: &Api<Secret>,
    settings: &CaSettings,
) -> Result<CertificateAuthority, CaProblem> {
    let unavailable = |e: kube::Error| CaProblem {
        reason: "CAUnavailable",
        message: format!("failed to read {}: {e}", location(settings)),
    };
    if let Some(secret) = api
        .get_opt(&settings.secret_name)
        .await
        .map_err(unavailable)?
    {
        return from_secret(&secret, settings);
    }
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
        Ok(_) => {
            tracing::info!(secret = %location(settings), fingerprint = %ca.fingerprint(), "created a self-signed root CA");
            Ok(ca)
        }
        // Another replica won the race: use what it wrote.
        Err(kube::Error::Api(e)) if e.code == 409 => match api
            .get_opt(&settings.secret_name)
            .await
            .map_err(unavailable)?
        {
            Some(secret) => from_secret(&secret, settings),
            None => Err(CaProblem {
                reason: "CAUnavailable",
                message: format!("{} vanished while being created", location(settings)),
            }),
        },
        Err(e) => Err(CaProblem {
            reason: "CAUnavailable",
            message: format!("failed to create {}: {e}", location(settings)),
        }),
    }
}
