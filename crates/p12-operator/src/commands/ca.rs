//! `ca status` and `ca new-root`: the cluster CA as the operator would load it,
//! how many issued certificates it signed, and an explicit new root when its
//! Secret is missing. Reads Secrets through your kubeconfig; never prints a key.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::{Failure, classify, connect};
use crate::bundle::{self, MANAGED_BY, MANAGED_BY_LABEL, REQUEST_LABEL};
use crate::cli::{CaArgs, CaCommand, CaTarget, NewRootArgs, RotateArgs};
use crate::pki::{CertificateAuthority, KeyAlgorithm};
use crate::reconciler::ca::{CaSettings, create_root, from_secret};
use crate::reconciler::rotation::{self, next_name, previous_name};

/// Runs `p12-operator ca …`; returns the exit code.
pub async fn ca(args: CaArgs) -> anyhow::Result<i32> {
    let client = match connect().await {
        Ok(c) => c,
        Err(f) => return Ok(f.report()),
    };
    let result = match args.command {
        CaCommand::Status(target) => status(&client, &target).await,
        CaCommand::NewRoot(args) => new_root(&client, &args).await,
        CaCommand::Rotate(args) => rotate(&client, &args).await,
    };
    Ok(result.unwrap_or_else(|f| f.report()))
}

fn settings(target: &CaTarget, client: &Client) -> CaSettings {
    CaSettings {
        namespace: target.namespace.clone(),
        secret_name: target.ca_secret.clone(),
        create: true,
        algorithm: KeyAlgorithm::EcdsaP256,
        common_name: String::new(),
        validity: std::time::Duration::ZERO,
        api_server: client.default_namespace().to_string(),
        watch_namespace: None,
    }
}

async fn status(client: &Client, target: &CaTarget) -> Result<i32, Failure> {
    let what = format!("Secret {}/{}", target.namespace, target.ca_secret);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    let Some(secret) = secrets
        .get_opt(&target.ca_secret)
        .await
        .map_err(|e| classify(e, &what))?
    else {
        println!("CA:       {what} is missing");
        return Err(Failure::Request(format!(
            "{what} does not exist; restore it from a backup, or see `p12-operator ca new-root --help`"
        )));
    };
    let ca = from_secret(&secret, &settings(target, client))
        .map_err(|p| Failure::Request(format!("{}: {}", p.reason, p.message)))?;
    print!("{}", describe(&ca));
    // The rotation, if one is under way.
    let mut others: Vec<(&str, CertificateAuthority)> = Vec::new();
    for (role, name) in [
        ("next", next_name(&target.ca_secret)),
        ("previous", previous_name(&target.ca_secret)),
    ] {
        if let Some(s) = secrets
            .get_opt(&name)
            .await
            .map_err(|e| classify(e, &name))?
        {
            let settings = CaSettings {
                secret_name: name.clone(),
                ..settings(target, client)
            };
            match from_secret(&s, &settings) {
                Ok(other) => {
                    let when = match role {
                        "next" => format!(
                            ", issues from {}",
                            s.annotations()
                                .get(rotation::SWITCH_AT)
                                .cloned()
                                .unwrap_or_else(|| "creation + --ca-overlap".into())
                        ),
                        _ => ", trusted until none of its certificates is left".into(),
                    };
                    println!(
                        "Rotation: {role} CA {} in {name}{when}",
                        other.fingerprint()
                    );
                    others.push((role, other));
                }
                Err(p) => println!("Rotation: {name} cannot be used: {}", p.message),
            }
        }
    }
    if others.is_empty() {
        println!("Rotation: none under way");
    }
    // How many issued certificates each CA signed: read every issued Secret's leaf.
    let issued: Api<Secret> = Api::all(client.clone());
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY},{REQUEST_LABEL}");
    match issued.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => {
            let (mut ours, mut other) = (0usize, 0usize);
            let mut by_role = vec![0usize; others.len()];
            for s in &list.items {
                let leaf = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(bundle::TLS_CRT))
                    .and_then(|pem| pem::parse(&pem.0).ok())
                    .map(|p| p.into_contents());
                match leaf {
                    Some(der) if bundle::issued_by(&der, &ca) => ours += 1,
                    Some(der) => {
                        match others.iter().position(|(_, o)| bundle::issued_by(&der, o)) {
                            Some(i) => by_role[i] += 1,
                            None => other += 1,
                        }
                    }
                    None => other += 1,
                }
            }
            println!("Signed:   {ours} issued Secrets hold a certificate of this CA");
            for ((role, _), n) in others.iter().zip(&by_role) {
                println!("Signed:   {n} issued Secrets hold a certificate of the {role} CA");
            }
            if other > 0 {
                println!(
                    "Other:    {other} issued Secrets hold a certificate of another CA (re-issued on their next pass)"
                );
            }
        }
        Err(e) => println!(
            "Signed:   unknown ({})",
            match classify(e, "listing issued Secrets") {
                Failure::Usage(m) | Failure::Request(m) => m,
            }
        ),
    }
    Ok(0)
}

/// Subject, fingerprint, validity and chain of a CA, one per line.
fn describe(ca: &CertificateAuthority) -> String {
    let subject = crate::pki::parse_certificate_info(ca.cert_der())
        .map(|c| c.subject)
        .unwrap_or_default();
    format!(
        "CA:       {subject}\nSHA-256:  {}\nValid:    {} to {}\nChain:    {} certificate(s) up to the root\n",
        ca.fingerprint(),
        ca.not_before(),
        ca.not_after(),
        ca.chain().len()
    )
}

async fn rotate(client: &Client, args: &RotateArgs) -> Result<i32, Failure> {
    let target = &args.target;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    for name in [
        next_name(&target.ca_secret),
        previous_name(&target.ca_secret),
    ] {
        if secrets
            .get_opt(&name)
            .await
            .map_err(|e| classify(e, &name))?
            .is_some()
        {
            return Err(Failure::Request(format!(
                "a rotation is under way (Secret {}/{name} exists); `p12-operator ca status` shows it",
                target.namespace
            )));
        }
    }
    let settings = CaSettings {
        algorithm: args.key_algorithm,
        common_name: args.common_name.clone(),
        validity: args.duration,
        ..settings(target, client)
    };
    let ca = rotation::stage_next(&secrets, &settings, args.overlap, jiff::Timestamp::now())
        .await
        .map_err(|p| Failure::Request(p.message))?;
    println!(
        "staged a new root in {}/{}",
        target.namespace,
        next_name(&target.ca_secret)
    );
    print!("{}", describe(&ca));
    println!(
        "Its root joins every ca.crt, truststore.p12 and trust ConfigMap now; it issues from {}.",
        jiff::Timestamp::now() + jiff::SignedDuration::try_from(args.overlap).unwrap_or_default()
    );
    Ok(0)
}

async fn new_root(client: &Client, args: &NewRootArgs) -> Result<i32, Failure> {
    if !args.yes {
        return Err(Failure::Usage(
            "a new root is not trusted by clients that trust the old one: every workload must be given the new ca.crt / truststore.p12 (issued Secrets are rewritten with it). Add --yes to go ahead".into(),
        ));
    }
    let target = &args.target;
    let what = format!("Secret {}/{}", target.namespace, target.ca_secret);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    if secrets
        .get_opt(&target.ca_secret)
        .await
        .map_err(|e| classify(e, &what))?
        .is_some()
    {
        return Err(Failure::Request(format!(
            "{what} exists; new-root only creates a missing CA and never replaces one"
        )));
    }
    let settings = CaSettings {
        algorithm: args.key_algorithm,
        common_name: args.common_name.clone(),
        validity: args.duration,
        ..settings(target, client)
    };
    let (ca, _) = create_root(&secrets, &settings)
        .await
        .map_err(|p| Failure::Request(format!("{}: {}", p.reason, p.message)))?;
    println!("created a new self-signed root in {what}");
    print!("{}", describe(&ca));
    println!(
        "The operator loads it at once and re-issues every certificate from it. Give clients the new root: ca.crt / truststore.p12 of any issued Secret."
    );
    Ok(0)
}
