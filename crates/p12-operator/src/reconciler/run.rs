//! `p12-operator run`: the admin endpoints, leader election, the CA loader,
//! the watches and their caches, and the controller loop until shutdown. Uses
//! everything else in `reconciler`; decides nothing about a single request.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, ResourceExt};

use super::ca::{self, CaSettings};
use super::context::{Context, ContextSettings, request_key};
use super::pass::{error_policy, reconcile};
use super::probe;
use crate::api::{CertificateRequest, IssuancePolicy};
use crate::bundle::{self, annotations as ann};
use crate::cli::RunArgs;
use crate::pki::Policy;
use crate::probe::pod as probe_pod;

fn policy(args: &RunArgs) -> Policy {
    Policy {
        min_duration: args.min_duration,
        max_duration: args.max_duration,
        allow_wildcard_dns: !args.deny_wildcards,
        allow_ip_sans: !args.deny_ip_sans,
        ..Policy::default()
    }
}

/// `p12-operator run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| anyhow::anyhow!("failed to configure the Kubernetes client: {e}"))?;
    let api_server = config.cluster_url.to_string();
    let api_server_ips = api_server_addresses(config.cluster_url.host()).await;
    let client = Client::try_from(config)
        .map_err(|e| anyhow::anyhow!("failed to configure the Kubernetes client: {e}"))?;
    let ca_settings = CaSettings {
        api_server: api_server.trim_end_matches('/').to_string(),
        namespace: args.namespace.clone(),
        secret_name: args.ca_secret.clone(),
        create: args.ca_create,
        algorithm: args.ca_key_algorithm,
        common_name: args.ca_common_name.clone(),
        validity: args.ca_duration,
        watch_namespace: args.watch_namespace.clone(),
    };
    let instance = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("p12-operator-{}", std::process::id()));

    // Admin endpoints first, so probes answer while this replica waits for the lease.
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let health = Arc::new(crate::admin::Health::default());
    let leadership = if args.leader_elect {
        crate::leader::Leadership::elected()
    } else {
        crate::leader::Leadership::always()
    };
    let admin_listener = tokio::net::TcpListener::bind(args.admin_bind_address)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "failed to listen on --admin-bind-address {}: {e}",
                args.admin_bind_address
            )
        })?;
    tokio::spawn(crate::admin::serve(
        admin_listener,
        metrics.clone(),
        health.clone(),
        leadership.clone(),
    ));

    let lease_api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &args.namespace);
    let lease_cfg = crate::leader::LeaseConfig::new(&args.lease_name, &instance);
    if args.leader_elect {
        health
            .standby
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(lease = %args.lease_name, identity = %instance, "waiting for the leader lease");
        crate::leader::acquire(lease_api.clone(), lease_cfg.clone(), &leadership, || {
            // Writes already stopped at the renew deadline; exit so the pod restarts as a standby.
            std::process::exit(1);
        })
        .await;
        health
            .standby
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    let (pod_reader, pod_writer) = reflector::store::<Pod>();
    let (ctx, revisit_rx) = Context::new(
        client.clone(),
        ContextSettings {
            instance,
            policy: policy(&args),
            admission: super::Admission::new(crate::admission::Settings {
                cluster_domain: args.cluster_domain.clone(),
                allow_unknown_services: args.allow_unknown_services,
                builtin_default: args.default_policy,
            }),
            ca: ca_settings,
            rotation: super::rotation::RotationSettings {
                automatic: args.ca_rotate,
                rotate_at: args.ca_rotate_at,
                overlap: args.ca_overlap,
            },
            concurrency: args.concurrency,
            probe: (!args.disable_probes).then(|| {
                probe::ProbeState::new(
                    probe::ProbeConfig {
                        image: args.probe_image.clone(),
                        grace: args.probe_grace,
                        network_policy: args.probe_network_policy,
                        namespace: args.namespace.clone(),
                        pod_ranges: args.pod_cidrs.clone(),
                        api_server: api_server_ips,
                    },
                    pod_reader.clone(),
                )
            }),
            rotation_rate: args.ca_rewrites_per_second,
            rollout: args.enable_rollout,
            leadership: leadership.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
        },
    );

    // The CA: loaded before the controller starts, then kept loaded (retried
    // while the API server cannot deliver it, reloaded when its Secret changes).
    let ca_api: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    let (all_tx, all_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (ca_seen_tx, ca_seen_rx) = tokio::sync::watch::channel::<Option<String>>(None);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(ca::keep_loaded(
        ctx.clone(),
        ca_api,
        ca_seen_rx,
        all_tx,
        first_tx,
    ));
    let ca_meta: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), &args.namespace);
    let ca_filter = watcher::Config::default().fields(&format!("metadata.name={}", args.ca_secret));
    tokio::spawn(async move {
        let mut events = watcher(ca_meta, ca_filter).backoff(watch_backoff()).boxed();
        while let Some(ev) = events.next().await {
            let version = match ev {
                Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => {
                    s.resource_version().unwrap_or_default()
                }
                Ok(watcher::Event::Delete(_)) => "deleted".to_string(),
                _ => continue,
            };
            ca_seen_tx.send_if_modified(|v| {
                let changed = v.as_deref() != Some(version.as_str());
                *v = Some(version);
                changed
            });
        }
    });
    let _ = first_rx.await;

    let (crs, secrets, slices): (
        Api<CertificateRequest>,
        Api<PartialObjectMeta<Secret>>,
        Api<PartialObjectMeta<EndpointSlice>>,
    ) = match &args.watch_namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    // Probe pods (ours only, by label, in the operator's own namespace) and
    // EndpointSlice metadata trigger probes. Without probes no pod is watched.
    let probe_selector = format!(
        "{}={},{}={}",
        probe_pod::COMPONENT_LABEL,
        probe_pod::COMPONENT,
        bundle::MANAGED_BY_LABEL,
        bundle::MANAGED_BY
    );
    let pod_stream = if args.disable_probes {
        futures::stream::empty().boxed()
    } else {
        watcher(
            Api::<Pod>::namespaced(client.clone(), &args.namespace),
            watcher::Config::default()
                .labels(&probe_selector)
                .any_semantic(),
        )
        .backoff(watch_backoff())
        .modify(|p| {
            p.managed_fields_mut().clear();
        })
        .reflect(pod_writer)
        .touched_objects()
        .boxed()
    };
    let ctx5 = ctx.clone();
    let slice_stream = watcher(
        slices,
        watcher::Config::default()
            .labels("kubernetes.io/service-name")
            .any_semantic(),
    )
    .backoff(watch_backoff())
    .touched_objects();
    let (reader, writer) = reflector::store();
    metrics.attach_requests(reader.clone());
    // Requests and Secrets forgotten (deleted, or gone after a re-list):
    // deletions free memory without any pass, so they too let the idle trim run.
    let forgotten = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cr_stream = watcher(crs, watcher::Config::default().any_semantic())
        .backoff(watch_backoff())
        .inspect({
            let health = health.clone();
            move |item| health.watch_result("CertificateRequest", item)
        })
        .modify(|cr| {
            // Keep only what reconciling reads: one copy of every request stays
            // in memory. Labels and foreign annotations (`kubectl apply` copies
            // the whole spec into one) are never read, and the cached object is
            // never written back (status goes out as its own patch).
            cr.managed_fields_mut().clear();
            cr.metadata.labels = None;
            cr.annotations_mut()
                .retain(|k, _| k.starts_with(ann::PREFIX));
            if cr.annotations().is_empty() {
                cr.metadata.annotations = None;
            }
        })
        // Before the cache takes the new copy: compare it with the old one, and
        // forget requests that a re-list (after a watch gap) no longer shows.
        .inspect_ok({
            let (ctx, cache) = (ctx.clone(), reader.clone());
            let forgotten = forgotten.clone();
            let mut relisted: Option<std::collections::HashSet<ObjectRef<CertificateRequest>>> =
                None;
            move |ev| match ev {
                watcher::Event::Apply(cr) => {
                    ctx.request_changed(cache.get(&request_key(cr)).as_deref(), cr)
                }
                watcher::Event::Init => relisted = Some(Default::default()),
                watcher::Event::InitApply(cr) => {
                    ctx.request_changed(cache.get(&request_key(cr)).as_deref(), cr);
                    relisted
                        .get_or_insert_with(Default::default)
                        .insert(request_key(cr));
                }
                watcher::Event::InitDone => {
                    let seen = relisted.take().unwrap_or_default();
                    for gone in cache.state() {
                        if !seen.contains(&request_key(&gone)) {
                            ctx.forget(&gone);
                            forgotten.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                watcher::Event::Delete(_) => {}
            }
        })
        .reflect(writer)
        .inspect_ok({
            let (health, forget_ctx) = (health.clone(), ctx.clone());
            let forgotten = forgotten.clone();
            move |ev| match ev {
                watcher::Event::Delete(cr) => {
                    forget_ctx.forget(cr);
                    forgotten.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                watcher::Event::InitDone => health
                    .synced
                    .store(true, std::sync::atomic::Ordering::Relaxed),
                _ => {}
            }
        })
        .applied_objects();

    // Trust distribution, fed by the namespace watch below.
    let trust = args
        .trust_bundle_namespace_selector
        .clone()
        .map(|selector| Arc::new(super::trust::Distribution::new(selector)));
    if let Some(trust) = &trust {
        let configmaps = match &args.watch_namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        tokio::spawn(super::trust::distribute(
            ctx.clone(),
            trust.clone(),
            configmaps,
        ));
    }
    let policies_changed = watch_policy_inputs(&client, &args, &ctx, &reader, &health, trust);

    let ctx2 = ctx.clone();
    let secret_stream = watcher(secrets, watcher::Config::default().any_semantic())
        .backoff(watch_backoff())
        .inspect({
            let health = health.clone();
            move |item| health.watch_result("Secret", item)
        })
        .modify(|s| {
            s.managed_fields_mut().clear();
            // Only the issuing CA's fingerprint is read (CA rotation).
            s.annotations_mut().retain(|k, _| k == ann::CA_FINGERPRINT);
        })
        .inspect_ok({
            let forgotten = forgotten.clone();
            move |ev| {
                ctx2.observe_secret(ev);
                if matches!(ev, watcher::Event::Delete(_)) {
                    forgotten.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
        .touched_objects();

    // The controller drains in-flight passes on SIGTERM/Ctrl-C; passes still
    // waiting for a slot are not in flight yet and must not delay the exit.
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            ctx.draining.send_replace(true);
        });
    }
    tokio::spawn(return_memory_when_idle(ctx.metrics.clone(), forgotten));
    if let Some(state) = &ctx.probe {
        // Known before the first probe: probes never connect to the API server.
        state.set_api_server(probe::read_api_server_addresses(&client).await);
        tokio::spawn(sweep_probe_pods(ctx.clone(), reader.clone(), pod_reader));
    }
    let ctx4 = ctx.clone();
    let mut draining = ctx.draining.subscribe();
    tracing::info!(namespace = %args.namespace, watch = %args.watch_namespace.as_deref().unwrap_or("all namespaces"), "starting controller");
    Controller::for_stream(cr_stream, reader)
        // Each watch above backs off on its own; this only guards the merged stream.
        .trigger_backoff(watch_backoff())
        .watches_stream(secret_stream, move |s| ctx4.requests_for(&s))
        // A probe pod names its request in an annotation: the request lives in
        // another namespace, so there is no ownerReference to follow.
        .watches_stream(pod_stream, |p: Pod| {
            probe_pod::request_of(&p.metadata)
                .map(|(ns, name, _)| ObjectRef::new(&name).within(&ns))
        })
        .watches_stream(slice_stream, move |s: PartialObjectMeta<EndpointSlice>| {
            let service = s
                .labels()
                .get("kubernetes.io/service-name")
                .cloned()
                .unwrap_or_default();
            match &ctx5.probe {
                Some(p) => p.endpoints_changed(&s.namespace().unwrap_or_default(), &service),
                None => Vec::new(),
            }
        })
        .reconcile_all_on(futures::stream::select(
            tokio_stream_from(all_rx),
            tokio_stream_from(policies_changed),
        ))
        .reconcile_on(futures::stream::poll_fn({
            let mut rx = revisit_rx;
            move |cx| rx.poll_recv(cx)
        }))
        // `Context::passes` limits passes, in arrival order; kube-runtime only
        // bounds how many wait for a slot (see ADMITTED).
        .with_config(kube::runtime::controller::Config::default().concurrency(ADMITTED))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    // The controller ends only on SIGTERM/Ctrl-C, which also sets `draining`
    // (from another task, hence the short wait); anything else is a defect.
    let signalled = tokio::time::timeout(Duration::from_secs(1), draining.wait_for(|d| *d))
        .await
        .is_ok_and(|r| r.is_ok());
    if !signalled {
        health.fail("the controller loop ended without a shutdown signal");
    }
    tracing::info!("controller stopped; in-flight reconciles drained");
    if args.leader_elect {
        crate::leader::release(&lease_api, &lease_cfg).await;
    }
    if !signalled {
        anyhow::bail!("failed to keep the controller running: it ended without a shutdown signal");
    }
    Ok(())
}

/// How often probe pods whose request is gone are looked for (and the API
/// server's addresses read again).
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Once the request and pod caches are filled, and then every
/// [`SWEEP_INTERVAL`]: deletes probe pods whose request is gone and refreshes
/// the API server's addresses that probes refuse.
async fn sweep_probe_pods(
    ctx: Arc<Context>,
    requests: reflector::Store<CertificateRequest>,
    pods: reflector::Store<Pod>,
) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        if let Some(state) = &ctx.probe {
            let addresses = probe::read_api_server_addresses(&ctx.client).await;
            if !addresses.is_empty() {
                state.set_api_server(addresses);
            }
        }
        // Until both caches are filled, a missing request or pod means nothing.
        let ready = futures::future::join(requests.wait_until_ready(), pods.wait_until_ready());
        let ready = tokio::time::timeout(SWEEP_INTERVAL, ready).await;
        if !matches!(ready, Ok((Ok(()), Ok(())))) || ctx.leadership.check().is_err() {
            tracing::debug!("probe pod sweep skipped: caches not filled or not the leader");
            tick.tick().await;
            continue;
        }
        match probe::sweep(&ctx, &requests).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "swept probe pods whose request is gone"),
            Err(e) => tracing::warn!(error = %e, "failed to sweep probe pods"),
        }
        tick.tick().await;
    }
}

/// The API server's addresses as this process knows them without asking:
/// the host it was configured with (resolved) and `KUBERNETES_SERVICE_HOST`.
async fn api_server_addresses(host: Option<&str>) -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let hosts = host
        .map(|h| h.trim_matches(['[', ']']).to_string())
        .into_iter()
        .chain(std::env::var("KUBERNETES_SERVICE_HOST").ok());
    for host in hosts {
        match host.parse() {
            Ok(ip) => out.push(ip),
            Err(_) => {
                if let Ok(found) = tokio::net::lookup_host((host.as_str(), 443)).await {
                    out.extend(found.map(|a| a.ip()));
                }
            }
        }
    }
    out
}

/// Watches what policy decisions read: IssuancePolicies (a change checks every
/// request again, through the returned channel), namespaces' labels and
/// Services' names (a change checks the requests of that namespace again).
/// Namespaces and Services are watched as metadata and only their names and
/// labels are kept. Namespace events also feed trust distribution (`trust`).
fn watch_policy_inputs(
    client: &Client,
    args: &RunArgs,
    ctx: &Arc<Context>,
    requests: &reflector::Store<CertificateRequest>,
    health: &Arc<crate::admin::Health>,
    trust: Option<Arc<super::trust::Distribution>>,
) -> tokio::sync::mpsc::Receiver<()> {
    let (all_tx, all_rx) = tokio::sync::mpsc::channel::<()>(1);
    let policies: Api<IssuancePolicy> = Api::all(client.clone());
    let (ctx1, health1) = (ctx.clone(), health.clone());
    tokio::spawn(async move {
        let mut events = watcher(policies, watcher::Config::default().any_semantic())
            .backoff(watch_backoff())
            .boxed();
        while let Some(ev) = events.next().await {
            health1.watch_result("IssuancePolicy", &ev);
            if let Ok(ev) = ev
                && ctx1.admission.observe_policy(&ev)
            {
                tracing::info!("IssuancePolicies changed; checking every request again");
                let _ = all_tx.try_send(());
            }
        }
    });
    // Requests of the namespaces `changed` names, from the controller's cache.
    let revisit = {
        let (ctx, requests) = (ctx.clone(), requests.clone());
        move |changed: Vec<String>| {
            if changed.is_empty() {
                return;
            }
            for cr in requests.state() {
                if cr.namespace().is_some_and(|ns| changed.contains(&ns)) {
                    ctx.revisit(request_key(&cr));
                }
            }
        }
    };
    let namespaces: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    let ns_config = match &args.watch_namespace {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let (ctx2, health2, revisit2) = (ctx.clone(), health.clone(), revisit.clone());
    tokio::spawn(async move {
        let mut events = watcher(namespaces, ns_config.any_semantic())
            .backoff(watch_backoff())
            .boxed();
        while let Some(ev) = events.next().await {
            health2.watch_result("Namespace", &ev);
            if let Ok(ev) = ev {
                if let Some(trust) = &trust {
                    trust.observe_namespace(&ev);
                }
                revisit2(ctx2.admission.observe_namespace(&ev));
            }
        }
    });
    if ctx.admission.watches_services() {
        let services: Api<PartialObjectMeta<Service>> = match &args.watch_namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (ctx3, health3) = (ctx.clone(), health.clone());
        tokio::spawn(async move {
            let mut events = watcher(services, watcher::Config::default().any_semantic())
                .backoff(watch_backoff())
                .boxed();
            while let Some(ev) = events.next().await {
                health3.watch_result("Service", &ev);
                if let Ok(ev) = ev {
                    revisit(ctx3.admission.observe_service(&ev));
                }
            }
        });
    }
    all_rx
}

/// Passes kube-runtime hands over at once; they then wait for one of the
/// `--concurrency` slots in arrival order. kube-runtime's runner polls every
/// admitted pass on each wake-up and keeps its table at the largest size it
/// reached, so admitting everything costs CPU and memory in proportion to the
/// backlog. Beyond this many due requests, kube-runtime picks the next one in
/// no particular order (docs/benchmarks.md).
const ADMITTED: u16 = 1024;

/// After a burst of passes or of deletions, hands the memory it freed back to
/// the system. glibc's allocator keeps freed memory in its arenas, so without
/// this the operator's resident size stays at the peak of its largest wave;
/// one `malloc_trim` when the work stops costs a few milliseconds. Deleted
/// requests and Secrets count as work: forgetting them runs no pass, and
/// without them 10,000 deleted requests left the resident size where it was
/// while they were held (docs/benchmarks.md, "Churn").
async fn return_memory_when_idle(
    metrics: Arc<crate::metrics::Metrics>,
    forgotten: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut seen = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let work = (
            metrics.reconciles.get(),
            forgotten.load(std::sync::atomic::Ordering::Relaxed),
        );
        if work != seen && metrics.in_flight.get() == 0 {
            seen = work;
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only releases free memory; it is thread-safe.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// The first SIGTERM or Ctrl-C (the same signals as `Controller::shutdown_on_signal`).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Watch reconnection back-off: 0.5 s doubling to 5 s (with jitter), starting
/// over after 10 s without errors. Shorter than kube's default (30 s cap, 120 s
/// reset) so that after an API server outage the operator is back within
/// seconds; a handful of watches retrying every 5 s cost the API server nothing.
pub(super) struct WatchBackoff {
    next: Duration,
    last_error: Option<std::time::Instant>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = std::time::Instant::now();
        if self
            .last_error
            .is_some_and(|t| now.duration_since(t) > Duration::from_secs(10))
        {
            self.next = BACKOFF_MIN;
        }
        self.last_error = Some(now);
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        Some(d.mul_f64(rand::random_range(0.8..1.2)))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

pub(super) fn watch_backoff() -> WatchBackoff {
    WatchBackoff {
        next: BACKOFF_MIN,
        last_error: None,
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<()>,
) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
