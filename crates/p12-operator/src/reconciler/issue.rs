//! The key and certificate: key pair → CSR → signing-time policy → signature,
//! and the password a request references. Uses the core's `pki` and the API
//! (to read the password Secret); knows nothing of caches or status.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::ResourceExt;
use kube::api::Api;

use super::Error;
use super::pass::{Refusal, refuse};
use crate::bundle::{self, Material, annotations as ann};
use crate::pki::{self, CertificateAuthority, Policy, PrivateKey};
use crate::plan::Plan;
use crate::sensitive::SecretString;

/// Why a request may not use the password Secret it names. One message
/// whether the Secret is missing or does not consent: what a request can learn
/// about a Secret it may not use is nothing.
fn password_not_allowed(name: &str, request: &str) -> Refusal {
    refuse(
        "PasswordSecretNotAllowed",
        format!(
            "keystore.passwordSecretRef names Secret {name}: it does not exist or does not allow this request to use it; create it with the annotation {}: {request} (or \"*\")",
            ann::PASSWORD_FOR
        ),
    )
}

/// Reads the password request `request` names. Never echoes its value. A
/// Secret that does not consent ([`ann::PASSWORD_FOR`]) is treated exactly as
/// a missing one; only after consent are its key and value checked (and
/// described: its owner agreed to its use).
pub(super) async fn referenced_password(
    client: &Client,
    ns: &str,
    request: &str,
    name: &str,
    key: &str,
) -> Result<Result<SecretString, Refusal>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = api.get_opt(name).await?.filter(|s| {
        bundle::password_use_allowed(
            s.annotations().get(ann::PASSWORD_FOR).map(String::as_str),
            request,
        )
    });
    let Some(secret) = secret else {
        return Ok(Err(password_not_allowed(name, request)));
    };
    let Some(value) = secret.data.unwrap_or_default().remove(key) else {
        return Ok(Err(refuse(
            "PasswordKeyNotFound",
            format!(
                "Secret {name} has no key {key:?}; add it or fix keystore.passwordSecretRef.key"
            ),
        )));
    };
    if value.0.is_empty() {
        return Ok(Err(refuse(
            "PasswordEmpty",
            format!("key {key:?} of Secret {name} is empty; PKCS#12 keystores need a password"),
        )));
    }
    if value.0.len() > 1024 {
        return Ok(Err(refuse(
            "PasswordInvalid",
            format!("key {key:?} of Secret {name} is longer than 1024 bytes"),
        )));
    }
    match String::from_utf8(value.0) {
        Ok(text) => Ok(Ok(SecretString::from(text))),
        Err(_) => Ok(Err(refuse(
            "PasswordInvalid",
            format!("key {key:?} of Secret {name} is not UTF-8 text"),
        ))),
    }
}

pub(super) enum IssueError {
    Policy(&'static str, String),
    Pki(pki::PkiError),
}

/// Key pair → CSR → verified CSR → policy → signature. Runs on a blocking thread.
pub(super) fn issue(
    plan: &Plan,
    ca: &CertificateAuthority,
    reuse: Option<PrivateKey>,
) -> Result<Material, IssueError> {
    let key = match reuse {
        Some(k) => k,
        None => PrivateKey::generate(plan.key_algorithm).map_err(IssueError::Pki)?,
    };
    crate::faults::crash_point("after-keygen");
    let csr_der =
        pki::build_csr(&key, &plan.leaf.subject, &plan.leaf.sans).map_err(IssueError::Pki)?;
    let csr = pki::VerifiedCsr::parse_and_verify(&csr_der).map_err(IssueError::Pki)?;
    Policy::default_for_signing(plan)
        .check(&plan.leaf, &csr)
        .map_err(|v| IssueError::Policy(v.reason(), v.message().to_string()))?;
    let cert = pki::sign(ca, &csr, &plan.leaf, Timestamp::now()).map_err(|e| match e {
        pki::PkiError::NameConstraint(v) => IssueError::Policy(v.reason(), v.to_string()),
        other => IssueError::Pki(other),
    })?;
    crate::faults::crash_point("after-sign");
    Ok(Material {
        key,
        leaf_der: cert.der,
    })
}

trait SigningPolicy {
    fn default_for_signing(plan: &Plan) -> Policy;
}

impl SigningPolicy for Policy {
    /// The plan already passed the installation's policy; at signing time the
    /// CSR is checked against the plan with bounds that admit that plan.
    fn default_for_signing(plan: &Plan) -> Policy {
        Policy {
            min_duration: plan.leaf.duration,
            max_duration: plan.leaf.duration,
            allow_wildcard_dns: true,
            allow_ip_sans: true,
            ..Policy::default()
        }
    }
}
