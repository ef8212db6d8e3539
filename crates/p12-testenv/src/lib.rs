//! p12-testenv: a real local Kubernetes control plane for the tests, the demo
//! (`p12-dev`) and the load benchmark (`p12-bench`). Never published and never a
//! dependency of the operator binary: it runs the operator as a binary given by
//! path, and may depend on p12-core, kube and tokio, never on the p12-operator crate.
//!
//! [`TestCluster::shared`] starts — once per process — etcd, kube-apiserver (secure
//! serving, RBAC on, a service-account signing key) and kube-controller-manager on
//! 127.0.0.1 from the binaries that `tests/k8s-tools/build.sh` builds, and the
//! local pod runner for the operator's own pods. Everything it starts dies with
//! the process. `P12_TEST_KUBECONFIG` opts into an existing cluster instead; the
//! user's current kube context is never used by accident.

pub mod certs;
pub mod controlplane;
pub mod images;
pub mod netns;
pub mod node;
pub mod podrunner;
pub mod process;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub use controlplane::ControlPlane;
pub use node::Node;
pub use podrunner::PodRunnerConfig;

/// The variable that names an existing cluster's kubeconfig to test against.
pub const EXTERNAL_KUBECONFIG_ENV: &str = "P12_TEST_KUBECONFIG";

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("testenv: {0}")]
    Build(String),
    #[error("testenv: {0}")]
    Start(String),
    #[error("testenv: {0}")]
    Client(String),
}

/// The cluster tests run against: the local control plane, or an explicitly
/// named existing one.
pub struct TestCluster {
    /// The local control plane; `None` when `P12_TEST_KUBECONFIG` named a cluster.
    pub local: Option<ControlPlane>,
    /// An admin kubeconfig for the cluster.
    pub kubeconfig: PathBuf,
    /// Where logs and per-test files go.
    pub work_dir: PathBuf,
    pod_runner: OnceLock<()>,
}

impl TestCluster {
    /// The cluster shared by every test in this process, started on first use.
    /// Panics with the harness's one-line reason when it cannot start: that is
    /// the test failure a user should see.
    pub fn shared() -> &'static TestCluster {
        static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();
        match CLUSTER.get_or_init(|| Self::start(&process_label()).map_err(|e| e.to_string())) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts a new local control plane (or attaches to `P12_TEST_KUBECONFIG`).
    pub fn start(label: &str) -> Result<TestCluster, HarnessError> {
        if let Some(path) = std::env::var_os(EXTERNAL_KUBECONFIG_ENV) {
            let work_dir = tools::target_dir().join("testenv").join(label);
            std::fs::create_dir_all(&work_dir).map_err(|e| HarnessError::Start(e.to_string()))?;
            return Ok(TestCluster {
                local: None,
                kubeconfig: path.into(),
                work_dir,
                pod_runner: OnceLock::new(),
            });
        }
        let cp = ControlPlane::start(label)?;
        Ok(TestCluster {
            kubeconfig: cp.kubeconfig.clone(),
            work_dir: cp.dir.clone(),
            local: Some(cp),
            pod_runner: OnceLock::new(),
        })
    }

    /// The local control plane; panics for an external cluster (tests that
    /// need it should say so).
    pub fn control_plane(&self) -> &ControlPlane {
        self.local
            .as_ref()
            .expect("this test needs the local control plane, not P12_TEST_KUBECONFIG")
    }

    /// A client with the admin identity, bound to the calling test's runtime.
    pub async fn client(&self) -> Result<Client, HarnessError> {
        client_from(&self.kubeconfig, None).await
    }

    /// A client for a restricted identity: a client certificate on the local
    /// control plane, impersonation on an external cluster.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> Result<Client, HarnessError> {
        match &self.local {
            Some(cp) => client_from(&cp.user_kubeconfig(user, groups)?, None).await,
            None => client_from(&self.kubeconfig, Some((user, groups))).await,
        }
    }

    /// Starts the local pod runner for `operator_binary` (once per process; later
    /// calls do nothing). Not started against an external cluster, whose kubelets
    /// run pods themselves.
    pub fn start_pod_runner(&self, operator_binary: &Path) {
        let Some(cp) = &self.local else { return };
        self.pod_runner.get_or_init(|| {
            let cfg = PodRunnerConfig {
                operator_binary: operator_binary.to_path_buf(),
                work_dir: cp.dir.clone(),
                api_host: "127.0.0.1".into(),
                api_port: cp.port,
                ca_pem: cp.ca_pem.clone(),
            };
            let kubeconfig = cp.kubeconfig.clone();
            std::thread::Builder::new()
                .name("local-pod-runner".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all()
                        .build()
                        .expect("failed to build the pod runner's runtime");
                    rt.block_on(async move {
                        match client_from(&kubeconfig, None).await {
                            Ok(client) => podrunner::run(client, cfg).await,
                            Err(e) => {
                                tracing::error!(error = %e, "local pod runner could not start")
                            }
                        }
                    });
                })
                .expect("failed to start the pod runner thread");
        });
    }

    /// Creates a fresh namespace `<prefix>-<random>` and waits until its default
    /// ServiceAccount exists (pods cannot be admitted before that).
    pub async fn namespace(&self, client: &Client, prefix: &str) -> Result<String, HarnessError> {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("p12-operator.io/test".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|e| HarnessError::Client(format!("failed to create namespace {name}: {e}")))?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        for _ in 0..200 {
            if sas.get_opt("default").await.ok().flatten().is_some() {
                return Ok(name);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(HarnessError::Client(format!(
            "namespace {name} got no default ServiceAccount within 10s"
        )))
    }
}

async fn client_from(
    path: &Path,
    impersonate: Option<(&str, &[&str])>,
) -> Result<Client, HarnessError> {
    let kc = Kubeconfig::read_from(path)
        .map_err(|e| HarnessError::Client(format!("failed to read {}: {e}", path.display())))?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| HarnessError::Client(format!("failed to load {}: {e}", path.display())))?;
    if let Some((user, groups)) = impersonate {
        config.auth_info.impersonate = Some(user.to_string());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
    }
    Client::try_from(config)
        .map_err(|e| HarnessError::Client(format!("failed to build a client: {e}")))
}

/// The test binary's name without cargo's hash (`controlplane-1a2b…` → `controlplane`).
fn process_label() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_deref()
        .and_then(|p| p.file_stem())
        .and_then(|s| s.to_str())
        .unwrap_or("testenv");
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => stem.to_string(),
    }
}
