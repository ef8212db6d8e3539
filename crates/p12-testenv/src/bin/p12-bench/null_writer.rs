//! The null writer: a minimal controller that writes a Secret and status of a
//! real bundle's shape without any cryptography, the baseline the operator is
//! measured against. Runs in its own process (`--serve-null-writer`).

use super::*;
use tokio::sync::Semaphore;

/// Per request: the renew token honoured and the revision written.
type Honoured = HashMap<String, (Option<String>, i64)>;

/// Byte sizes of the data keys of a real bundle for these parameters.
fn data_sizes(args: &Args) -> anyhow::Result<Vec<(String, usize)>> {
    use p12_core::keystore::{Profile, build_keystore, build_truststore};
    use p12_core::pki::*;
    let algorithm = key_algorithm(args);
    let profile: Profile = args.profile.parse().map_err(|e: String| anyhow!(e))?;
    let now = jiff::Timestamp::now();
    let ca = CertificateAuthority::generate_self_signed(
        KeyAlgorithm::EcdsaP256,
        "p12-operator CA",
        Duration::from_secs(3650 * 86400),
        now,
    )?;
    let leaf = LeafProfile {
        subject: CsrSubject::default(),
        sans: SubjectAltNames {
            dns: vec![
                "req-00000.bench-0.svc".into(),
                "req-00000.bench-0.svc.cluster.local".into(),
            ],
            ..Default::default()
        },
        usages: vec![Usage::ServerAuth],
        duration: Duration::from_secs(90 * 86400),
    };
    let key = PrivateKey::generate(algorithm)?;
    let csr = VerifiedCsr::parse_and_verify(&build_csr(&key, &leaf.subject, &leaf.sans)?)?;
    let cert = sign(&ca, &csr, &leaf, now)?;
    let pw = p12_core::bundle::generate_password();
    let ks = build_keystore(&key, &cert.der, ca.chain(), "req-00000", &pw, profile)?;
    let ts = build_truststore(&[ca.root_der().to_vec()], &pw, profile)?;
    Ok(vec![
        ("keystore.p12".into(), ks.expose().len()),
        ("truststore.p12".into(), ts.expose().len()),
        ("keystore-password".into(), 24),
        ("tls.crt".into(), cert.pem.len()),
        ("tls.key".into(), key.to_pem().expose().len()),
        ("ca.crt".into(), ca.root_pem().len()),
    ])
}

fn random_data(sizes: &[(String, usize)]) -> BTreeMap<String, ByteString> {
    let mut rng = rand::rng();
    sizes
        .iter()
        .map(|(k, n)| {
            let mut v = vec![0u8; *n];
            rand::RngCore::fill_bytes(&mut rng, &mut v);
            (k.clone(), ByteString(v))
        })
        .collect()
}

fn hex(n: usize) -> String {
    let mut v = vec![0u8; n];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut v);
    v.iter().map(|b| format!("{b:02x}")).collect()
}

fn secret_for(cr: &CertificateRequest, sizes: &[(String, usize)], revision: i64) -> Secret {
    let now = jiff::Timestamp::now();
    let annotations: BTreeMap<String, String> = [
        ("p12-operator.io/request", cr.name_any()),
        ("p12-operator.io/serial", hex(16)),
        ("p12-operator.io/fingerprint-sha256", hex(32)),
        ("p12-operator.io/not-before", now.to_string()),
        ("p12-operator.io/not-after", now.to_string()),
        ("p12-operator.io/spec-hash", hex(32)),
        ("p12-operator.io/keystore-profile", "Modern2023".into()),
        ("p12-operator.io/keystore-alias", cr.name_any()),
        ("p12-operator.io/ca-fingerprint-sha256", hex(32)),
        ("p12-operator.io/revision", revision.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut owner: OwnerReference = cr.controller_owner_ref(&()).unwrap_or_default();
    owner.block_owner_deletion = Some(true);
    Secret {
        metadata: ObjectMeta {
            name: Some(cr.spec.secret_name.clone()),
            namespace: cr.namespace(),
            labels: Some(
                [
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        NULL_MANAGER.to_string(),
                    ),
                    ("p12-operator.io/request".to_string(), cr.name_any()),
                ]
                .into(),
            ),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(random_data(sizes)),
        ..Default::default()
    }
}

fn status_for(cr: &CertificateRequest, revision: i64) -> CertificateRequestStatus {
    let now = jiff::Timestamp::now();
    let mut status = cr.status.clone().unwrap_or_default();
    let generation = cr.metadata.generation;
    for (type_, message) in [
        (
            "Ready",
            format!("certificate {} valid until {now}, renews at {now}", hex(16)),
        ),
        (
            "Issued",
            format!("Secret {} holds revision {revision}", cr.spec.secret_name),
        ),
    ] {
        let existing = status.conditions.iter_mut().find(|c| c.type_ == type_);
        match existing {
            Some(c) => {
                c.message = message;
                c.observed_generation = generation;
            }
            None => status.conditions.push(Condition {
                type_: type_.into(),
                status: "True".into(),
                reason: "Issued".into(),
                message,
                observed_generation: generation,
                last_transition_time: Time(now),
            }),
        }
    }
    status.not_before = Some(Time(now));
    status.not_after = Some(Time(now));
    status.renewal_time = Some(Time(now));
    status.serial_number = Some(hex(16));
    status.fingerprint_sha256 = Some(hex(32));
    status.revision = Some(revision);
    status
}

/// One issuance: POST (or PUT on renewal) the Secret, then SSA the status.
async fn write(
    client: Client,
    cr: Arc<CertificateRequest>,
    sizes: Arc<Vec<(String, usize)>>,
    revision: i64,
) -> anyhow::Result<()> {
    let ns = cr.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = secret_for(&cr, &sizes, revision);
    let pp = PostParams {
        field_manager: Some(NULL_MANAGER.into()),
        ..Default::default()
    };
    if revision == 1 {
        match secrets.create(&pp, &secret).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                secrets.replace(&cr.spec.secret_name, &pp, &secret).await?;
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        // Unconditional update (no resourceVersion): one call, as the lower bound.
        secrets.replace(&cr.spec.secret_name, &pp, &secret).await?;
    }
    let crs: Api<CertificateRequest> = Api::namespaced(client, &ns);
    let patch = json!({
        "apiVersion": "p12-operator.io/v1alpha1",
        "kind": "CertificateRequest",
        "status": status_for(&cr, revision),
    });
    crs.patch_status(
        &cr.name_any(),
        &PatchParams::apply(NULL_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

/// Watches every CertificateRequest; issues what is not Ready and renews
/// what carries a renew-requested-at value not yet honoured.
pub async fn serve(args: Args) -> anyhow::Result<()> {
    let sizes = Arc::new(data_sizes(&args)?);
    let client = Client::try_default().await?;
    let crs: Api<CertificateRequest> = Api::all(client.clone());
    let permits = Arc::new(Semaphore::new(args.null_concurrency.max(1)));
    // Per request: the renew token honoured and the revision written.
    let done: Arc<Mutex<Honoured>> = Arc::default();
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut stream = watcher(crs, watcher::Config::default()).boxed();
    while let Some(ev) = stream.next().await {
        let cr = match ev {
            Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => o,
            Ok(watcher::Event::InitDone) => {
                println!("null writer ready");
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                eprintln!("watch error: {e}");
                continue;
            }
        };
        let key = key_of(&cr);
        let token = cr.annotations().get(RENEW_ANNOTATION).cloned();
        let status_revision = cr.status.as_ref().and_then(|s| s.revision).unwrap_or(0);
        let revision = {
            let d = done.lock().unwrap();
            match d.get(&key) {
                Some((t, _)) if *t == token => continue,
                Some((_, r)) => r + 1,
                None if is_ready(&cr) && token.is_none() => continue,
                None => status_revision + 1,
            }
        };
        if !busy.lock().unwrap().insert(key.clone()) {
            continue;
        }
        let permit = permits.clone().acquire_owned().await?;
        let (client, sizes, done, busy) =
            (client.clone(), sizes.clone(), done.clone(), busy.clone());
        let cr = Arc::new(cr);
        tokio::spawn(async move {
            let result = write(client, cr, sizes, revision).await;
            drop(permit);
            match result {
                Ok(()) => {
                    done.lock().unwrap().insert(key.clone(), (token, revision));
                }
                Err(e) => eprintln!("null writer: {key}: {e:#}"),
            }
            busy.lock().unwrap().remove(&key);
        });
    }
    Ok(())
}
