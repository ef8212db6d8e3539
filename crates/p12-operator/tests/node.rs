//! What users run, on a real node (kubelet + containerd + runc, bridge pod
//! network, kube-proxy): the operator's image installed with the chart and
//! with `kubectl apply -f deploy/`, its probe pods as real containers, and Java
//! workloads (`crates/p12-testenv/images/workload`) that mount the issued
//! Secret, serve it through a Service, and connect to it as clients.
//!
//! One node for the whole binary (src/node/harness.rs in p12-testenv); the
//! cases run in order and build on each other where their names say so. Every
//! step prints how long it took.

use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use p12_testenv::Node;
use p12_testenv::node::harness::{self, Case};

const OPERATOR_NS: &str = "p12-system";
const WORKLOAD_IMAGE: &str = "localhost/p12-testenv/workload:1";

fn main() -> std::process::ExitCode {
    harness::main(
        "node",
        || p12_testenv::images::build(&["operator", "workload"]).unwrap_or_else(|e| panic!("{e}")),
        &[
            Case {
                name: "helm_install_runs_the_operator_as_a_real_pod",
                run: helm_install_runs_the_operator_as_a_real_pod,
            },
            Case {
                name: "java_deployment_mounts_the_keystore_and_probes_verify_both_replicas",
                run: java_deployment_mounts_the_keystore_and_probes_verify_both_replicas,
            },
            Case {
                name: "java_client_trusting_only_the_truststore_reaches_the_service_name",
                run: java_client_trusting_only_the_truststore_reaches_the_service_name,
            },
            Case {
                name: "mtls_client_with_its_own_issued_keystore",
                run: mtls_client_with_its_own_issued_keystore,
            },
            Case {
                name: "renewal_stale_replicas_are_reported_until_a_rollout_restart",
                run: renewal_stale_replicas_are_reported_until_a_rollout_restart,
            },
            Case {
                name: "renewal_rolls_a_java_deployment_and_the_probe_verifies_all_three_replicas",
                run: renewal_rolls_a_java_deployment_and_the_probe_verifies_all_three_replicas,
            },
            Case {
                name: "a_hot_reloading_workload_is_not_restarted",
                run: a_hot_reloading_workload_is_not_restarted,
            },
            Case {
                name: "a_rollout_whose_new_pods_fail_is_reported_once_and_old_replicas_keep_serving",
                run: a_rollout_whose_new_pods_fail_is_reported_once_and_old_replicas_keep_serving,
            },
            Case {
                name: "a_request_naming_a_workload_in_another_namespace_is_refused",
                run: a_request_naming_a_workload_in_another_namespace_is_refused,
            },
            Case {
                name: "kubectl_apply_deploy_runs_the_operator",
                run: kubectl_apply_deploy_runs_the_operator,
            },
        ],
    )
}

// --- helpers ----------------------------------------------------------------

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kubectl(node: &Node, args: &[&str]) -> Output {
    node.cp.kubectl().args(args).output().unwrap()
}

/// `kubectl args…`, which must succeed; its stdout.
fn ok(node: &Node, args: &[&str]) -> String {
    let out = kubectl(node, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply(node: &Node, yaml: &str) {
    use std::io::Write;
    let mut child = node
        .cp
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply failed: {}\n{yaml}",
        text(&out)
    );
}

/// Polls `check` every 250 ms until it returns `Some`; panics after `timeout`
/// with `what` and the last thing `check` saw.
fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < timeout {
        match check() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
}

/// The cluster IP of Service `svc`, once kube-proxy routes it to `endpoints`
/// endpoints: the API lists ready pods before kube-proxy has programmed them,
/// and a client connecting in between is refused.
fn routed_service_ip(node: &Node, ns: &str, svc: &str, endpoints: usize) -> String {
    let ip = jsonpath(node, ns, &format!("service/{svc}"), "{.spec.clusterIP}");
    eventually(
        Duration::from_secs(30),
        &format!("kube-proxy to route Service {svc} ({ip}) to {endpoints} endpoints"),
        || match node.routed_endpoints(&ip) {
            n if n == endpoints => Ok(()),
            n => Err(format!("{n} routed")),
        },
    );
    ip
}

fn jsonpath(node: &Node, ns: &str, what: &str, path: &str) -> String {
    let out = kubectl(
        node,
        &["get", "-n", ns, what, "-o", &format!("jsonpath={path}")],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn condition(node: &Node, ns: &str, request: &str, cond: &str) -> (String, String, String) {
    let p = |field: &str| {
        jsonpath(
            node,
            ns,
            &format!("certificaterequest/{request}"),
            &format!("{{.status.conditions[?(@.type==\"{cond}\")].{field}}}"),
        )
    };
    (p("status"), p("reason"), p("message"))
}

fn wait_condition(node: &Node, ns: &str, request: &str, cond: &str, timeout: Duration) {
    eventually(timeout, &format!("{request} {cond}=True"), || {
        let (status, reason, message) = condition(node, ns, request, cond);
        if status == "True" {
            Ok(())
        } else {
            Err(format!("{cond}={status} {reason}: {message}"))
        }
    })
}

/// A fresh namespace under the `restricted` Pod Security Standard.
fn restricted_namespace(node: &Node, prefix: &str) -> String {
    let ns = format!("{prefix}-{:06x}", rand_u32() & 0xff_ffff);
    ok(node, &["create", "namespace", &ns]);
    ok(
        node,
        &[
            "label",
            "namespace",
            &ns,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
    );
    eventually(
        Duration::from_secs(20),
        "the default ServiceAccount",
        || {
            kubectl(node, &["get", "sa", "default", "-n", &ns])
                .status
                .success()
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        },
    );
    ns
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u32::from_le_bytes(b)
}

fn step(what: &str, started: Instant) {
    println!("    {what}: {:.1}s", started.elapsed().as_secs_f64());
}

/// The SHA-256 fingerprint (lowercase hex) of the leaf in a Secret's `tls.crt`.
fn secret_fingerprint(node: &Node, ns: &str, secret: &str) -> String {
    jsonpath(
        node,
        ns,
        &format!("secret/{secret}"),
        "{.metadata.annotations.p12-operator\\.io/fingerprint-sha256}",
    )
    .to_lowercase()
    .replace(':', "")
}

/// The operator's container process on the host, found through containerd.
fn container_pid(node: &Node, pod_uid_fragment: &str, container: &str) -> Option<u32> {
    // ctr lists containers with their labels; the kubelet labels them with the
    // pod's UID and the container's name.
    let out = node.ctr().args(["containers", "ls", "-q"]).output().ok()?;
    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let info = node.ctr().args(["containers", "info", id]).output().ok()?;
        let info = String::from_utf8_lossy(&info.stdout);
        if info.contains(pod_uid_fragment)
            && info.contains(&format!(
                "\"io.kubernetes.container.name\": \"{container}\""
            ))
        {
            let task = node.ctr().args(["tasks", "ls"]).output().ok()?;
            for line in String::from_utf8_lossy(&task.stdout).lines() {
                let cols: Vec<&str> = line.split_whitespace().collect();
                if cols.first() == Some(&id) && cols.get(2) == Some(&"RUNNING") {
                    return cols.get(1)?.parse().ok();
                }
            }
        }
    }
    None
}

/// `key: value` from `/proc/<pid>/status`.
fn proc_status(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// The memory limit of a process's cgroup (cgroup v1 memory controller).
fn memory_limit(pid: u32) -> u64 {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cgroups
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrl.split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        })
        .expect("the process has a memory cgroup");
    std::fs::read_to_string(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn request_yaml(ns: &str, name: &str, extra: &str) -> String {
    format!(
        "apiVersion: p12-operator.io/v1alpha1
kind: CertificateRequest
metadata: {{name: {name}, namespace: {ns}}}
spec:
  secretName: {name}-tls
{extra}"
    )
}

/// Chart values: an IssuancePolicy for every namespace allowing what the
/// cases ask for besides their own Services' names; rollouts enabled; a probe
/// grace that outlasts the kubelet's Secret refresh (5 s here), so that a
/// hot-reloading workload has reloaded before it is probed.
const NODE_TEST_VALUES: &str = "rollout: {enabled: true}
probes: {grace: 20s}
policy:
  issuancePolicies:
  - name: node-tests
    spec:
      namespaces: {selector: {}}
      allow:
        dnsNames: ['*.example.test']
        usages: [serverAuth, clientAuth]
        commonNames: [orders-service]
";

/// The operator installed from the chart, checked once by the first case.
fn operator_installed(node: &Node) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| install_with_helm(node));
}

fn install_with_helm(node: &Node) {
    let t = Instant::now();
    ok(node, &["create", "namespace", OPERATOR_NS]);
    ok(
        node,
        &[
            "label",
            "namespace",
            OPERATOR_NS,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
    );
    let chart = p12_testenv::tools::repo_root().join("charts/p12-operator");
    // The chart installs the IssuancePolicy these tests need beyond the
    // built-in default: an external test domain and mTLS clients.
    let values = node.cp.dir.join("node-test-values.yaml");
    std::fs::write(&values, NODE_TEST_VALUES).unwrap();
    let out = node
        .cp
        .helm()
        .args(["install", "p12", "--namespace", OPERATOR_NS])
        .arg(&chart)
        .arg("--values")
        .arg(&values)
        .args([
            // The image was imported into containerd; there is no registry.
            "--set",
            "image.pullPolicy=Never",
            "--wait",
            "--timeout",
            "180s",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "helm install failed: {}", text(&out));
    step("helm install --wait (operator pod Ready)", t);
}

// --- cases ------------------------------------------------------------------

fn helm_install_runs_the_operator_as_a_real_pod(node: &'static Node) {
    operator_installed(node);
    let pod = ok(
        node,
        &[
            "get",
            "pods",
            "-n",
            OPERATOR_NS,
            "-l",
            "app.kubernetes.io/name=p12-operator",
            "-o",
            "jsonpath={.items[0].metadata.name} {.items[0].metadata.uid} {.items[0].status.podIP}",
        ],
    );
    let [pod, uid, ip] = pod.split_whitespace().collect::<Vec<_>>()[..] else {
        panic!("no operator pod: {pod:?}");
    };
    assert!(
        ip.starts_with("10.244.0."),
        "operator pod IP {ip} is not on the pod network"
    );
    // Ready means the kubelet's readiness probe got 200 from /readyz over the pod network.
    let ready = jsonpath(
        node,
        OPERATOR_NS,
        &format!("pod/{pod}"),
        "{.status.conditions[?(@.type==\"Ready\")].status}",
    );
    assert_eq!(ready, "True");

    // What the chart's security context and limits became on the host.
    let pid = container_pid(node, uid, "operator")
        .unwrap_or_else(|| panic!("no running container of pod {pod} in containerd"));
    let uids = proc_status(pid, "Uid");
    assert!(
        uids.split_whitespace().all(|u| u == "65532"),
        "the operator runs as {uids}, not 65532"
    );
    assert_eq!(
        proc_status(pid, "CapEff"),
        "0000000000000000",
        "capabilities left"
    );
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    assert_eq!(
        proc_status(pid, "Seccomp"),
        "2",
        "seccomp filter (RuntimeDefault) not applied"
    );
    assert_eq!(
        memory_limit(pid),
        256 * 1024 * 1024,
        "the chart's memory limit"
    );

    // kubectl logs goes through the kubelet.
    let logs = ok(node, &["logs", "-n", OPERATOR_NS, pod]);
    assert!(!logs.trim().is_empty(), "kubectl logs returned nothing");

    // And it issues: a request in a restricted namespace becomes a bundle.
    let t = Instant::now();
    let ns = restricted_namespace(node, "helm");
    apply(
        node,
        &request_yaml(&ns, "hello", "  dnsNames: [hello.example.test]\n"),
    );
    wait_condition(node, &ns, "hello", "Ready", Duration::from_secs(60));
    let keys = jsonpath(node, &ns, "secret/hello-tls", "{.data}");
    for k in [
        "keystore.p12",
        "truststore.p12",
        "keystore-password",
        "tls.crt",
        "ca.crt",
    ] {
        assert!(
            keys.contains(&format!("\"{k}\"")),
            "Secret hello-tls lacks {k}: {keys}"
        );
    }
    step("request to Ready", t);
}

/// The web workload: 2 Java replicas serving the mounted keystore behind a Service.
struct Web {
    ns: String,
    cluster_ip: String,
}

fn web(node: &'static Node) -> &'static Web {
    static WEB: OnceLock<Web> = OnceLock::new();
    WEB.get_or_init(|| {
        operator_installed(node);
        let ns = restricted_namespace(node, "shop");
        let t = Instant::now();
        apply(
            node,
            &format!(
                "{request}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{name: https, port: 8443, targetPort: https}}]
---
{deployment}",
                request = request_yaml(
                    &ns,
                    "web",
                    &format!(
                        "  dnsNames: [web.{ns}.svc, web.{ns}.svc.cluster.local]
  usages: [serverAuth]
  probe:
    service: {{name: web, port: 8443}}
    interval: 10m
"
                    )
                ),
                deployment = java_deployment(&ns, "web", "web-tls", &[]),
            ),
        );
        let cluster_ip = jsonpath(node, &ns, "service/web", "{.spec.clusterIP}");
        step("apply request, Service and Deployment", t);
        Web { ns, cluster_ip }
    })
}

/// A Deployment of 2 Java replicas running `workload serve` on the keystore of
/// `secret` (password generated by the operator, in the same Secret).
fn java_deployment(ns: &str, name: &str, secret: &str, extra_args: &[&str]) -> String {
    java_deployment_of(ns, name, secret, 2, extra_args, "")
}

/// [`java_deployment`] with `replicas` and extra volumes (`volumes`: YAML
/// lines for the mounts, then `---`, then the volumes).
fn java_deployment_of(
    ns: &str,
    name: &str,
    secret: &str,
    replicas: u32,
    extra_args: &[&str],
    volumes: &str,
) -> String {
    let (extra_mounts, extra_volumes) = volumes.split_once("---\n").unwrap_or(("", ""));
    let mut args = vec![
        "serve",
        "--keystore",
        "/etc/tls/keystore.p12",
        "--password-file",
        "/etc/tls/keystore-password",
        "--port",
        "8443",
    ];
    args.extend(extra_args);
    let args = args
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        seccompProfile: {{type: RuntimeDefault}}
      containers:
      - name: {name}
        image: {WORKLOAD_IMAGE}
        imagePullPolicy: Never
        args: [{args}]
        ports: [{{name: https, containerPort: 8443}}]
        readinessProbe:
          tcpSocket: {{port: https}}
          periodSeconds: 1
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {{drop: [ALL]}}
        resources:
          requests: {{cpu: 50m, memory: 128Mi}}
          limits: {{memory: 256Mi}}
        volumeMounts:
        - {{name: tls, mountPath: /etc/tls, readOnly: true}}
        - {{name: tmp, mountPath: /tmp}}
{extra_mounts}      volumes:
      - name: tls
        secret: {{secretName: {secret}}}
      - name: tmp
        emptyDir: {{}}
{extra_volumes}"
    )
}

/// Asks the operator for a `probe` or a `renew` of `request` now, as
/// `p12-operator probe-now` / `renew` do: a fresh value in its annotation.
fn ask_now(node: &Node, ns: &str, request: &str, what: &str) {
    ok(
        node,
        &[
            "annotate",
            "-n",
            ns,
            &format!("certificaterequest/{request}"),
            &format!("p12-operator.io/{what}-requested-at={}", rand_u32()),
            "--overwrite",
        ],
    );
}

/// The probe's endpoints: `address verified fingerprint reason pod` per line.
fn probe_endpoints(node: &Node, ns: &str, request: &str) -> Vec<String> {
    jsonpath(
        node,
        ns,
        &format!("certificaterequest/{request}"),
        "{range .status.probe.endpoints[*]}{.address} {.verified} {.servedFingerprintSha256} {.reason} {.pod}{\"\\n\"}{end}",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn java_deployment_mounts_the_keystore_and_probes_verify_both_replicas(node: &'static Node) {
    let w = web(node);
    let t = Instant::now();
    ok(
        node,
        &[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            &w.ns,
            "--timeout=120s",
        ],
    );
    step("2 Java replicas Ready (mounting web-tls)", t);
    let pod_ips = ok(
        node,
        &[
            "get",
            "pods",
            "-n",
            &w.ns,
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ],
    );
    let pod_ips: Vec<&str> = pod_ips.split_whitespace().collect();
    assert_eq!(pod_ips.len(), 2, "{pod_ips:?}");

    let t = Instant::now();
    // A probe right away instead of at the next interval.
    ask_now(node, &w.ns, "web", "probe");
    wait_condition(node, &w.ns, "web", "Verified", Duration::from_secs(120));
    step("probe pods on the pod network to Verified=True", t);
    let issued = secret_fingerprint(node, &w.ns, "web-tls");
    let endpoints = probe_endpoints(node, &w.ns, "web");
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    for ip in &pod_ips {
        let line = endpoints
            .iter()
            .find(|l| l.starts_with(&format!("{ip}:8443 ")))
            .unwrap_or_else(|| panic!("replica {ip} not probed: {endpoints:?}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], "true", "{line}");
        assert_eq!(cols[2].to_lowercase().replace(':', ""), issued, "{line}");
    }
}

/// Runs a pod to completion in `ns`; its exit code and log.
fn run_pod(node: &Node, ns: &str, name: &str, spec: &str) -> (i32, String) {
    apply(
        node,
        &format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}}}
spec:
  restartPolicy: Never
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    seccompProfile: {{type: RuntimeDefault}}
{spec}"
        ),
    );
    let code = eventually(
        Duration::from_secs(90),
        &format!("pod {name} to finish"),
        || {
            let phase = jsonpath(node, ns, &format!("pod/{name}"), "{.status.phase}");
            match phase.as_str() {
                "Succeeded" | "Failed" => Ok(jsonpath(
                    node,
                    ns,
                    &format!("pod/{name}"),
                    "{.status.containerStatuses[0].state.terminated.exitCode}",
                )),
                other => Err(other.to_string()),
            }
        },
    );
    let log = ok(node, &["logs", "-n", ns, name]);
    (code.parse().unwrap_or(-1), log)
}

/// A client container running `workload connect` with the Secret `secret`
/// mounted at /etc/tls and `host` resolving to `ip` (the harness has no
/// cluster DNS; the name still decides the TLS name check).
fn client_spec(host: &str, ip: &str, secret: &str, args: &[&str]) -> String {
    let mut all = vec![
        "connect",
        "--host",
        host,
        "--port",
        "8443",
        "--truststore",
        "/etc/tls/truststore.p12",
        "--truststore-password-file",
        "/etc/tls/keystore-password",
    ];
    all.extend(args);
    let all = all
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "  hostAliases: [{{ip: \"{ip}\", hostnames: [\"{host}\"]}}]
  containers:
  - name: client
    image: {WORKLOAD_IMAGE}
    imagePullPolicy: Never
    args: [{all}]
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {{drop: [ALL]}}
    volumeMounts:
    - {{name: tls, mountPath: /etc/tls, readOnly: true}}
    - {{name: tmp, mountPath: /tmp}}
  volumes:
  - name: tls
    secret: {{secretName: {secret}}}
  - name: tmp
    emptyDir: {{}}
"
    )
}

fn java_client_trusting_only_the_truststore_reaches_the_service_name(node: &'static Node) {
    let w = web(node);
    routed_service_ip(node, &w.ns, "web", 2);
    let host = format!("web.{}.svc", w.ns);
    let t = Instant::now();
    let (code, log) = run_pod(
        node,
        &w.ns,
        "client",
        &client_spec(&host, &w.cluster_ip, "web-tls", &[]),
    );
    assert_eq!(code, 0, "the client failed: {log}");
    assert!(log.contains("handshake ok"), "{log}");
    let issued = secret_fingerprint(node, &w.ns, "web-tls");
    assert!(
        log.to_lowercase().replace(':', "").contains(&issued),
        "{log}"
    );
    step("Java client pod through kube-proxy", t);

    // The same Service under a name the certificate does not carry: refused.
    let other = format!("other.{}.svc", w.ns);
    let (code, log) = run_pod(
        node,
        &w.ns,
        "client-wrong-name",
        &client_spec(&other, &w.cluster_ip, "web-tls", &[]),
    );
    assert_ne!(
        code, 0,
        "a name outside the certificate was accepted: {log}"
    );

    // A non-Java consumer: OpenSSL in a pod, trusting only the Secret's ca.crt,
    // checking the name and the chain through kube-proxy.
    let t = Instant::now();
    let (code, log) = run_pod(
        node,
        &w.ns,
        "openssl-client",
        &format!(
            "  hostAliases: [{{ip: \"{ip}\", hostnames: [\"{host}\"]}}]
  containers:
  - name: client
    image: {WORKLOAD_IMAGE}
    imagePullPolicy: Never
    command: [openssl, s_client, -connect, \"{host}:8443\", -servername, \"{host}\",
              -verify_hostname, \"{host}\", -verify_return_error, -CAfile, /etc/tls/ca.crt, -brief]
    stdin: false
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {{drop: [ALL]}}
    volumeMounts:
    - {{name: tls, mountPath: /etc/tls, readOnly: true}}
  volumes:
  - name: tls
    secret: {{secretName: web-tls}}
",
            ip = w.cluster_ip
        ),
    );
    assert_eq!(code, 0, "openssl s_client failed: {log}");
    assert!(log.contains("Verification: OK"), "{log}");
    step("OpenSSL client pod through kube-proxy", t);
}

fn mtls_client_with_its_own_issued_keystore(node: &'static Node) {
    operator_installed(node);
    let ns = restricted_namespace(node, "mtls");
    let t = Instant::now();
    apply(
        node,
        &format!(
            "{server}---
{client}---
apiVersion: v1
kind: Service
metadata: {{name: api, namespace: {ns}}}
spec:
  selector: {{app: api}}
  ports: [{{name: https, port: 8443, targetPort: https}}]
---
{deployment}",
            server = request_yaml(
                &ns,
                "api",
                &format!("  dnsNames: [api.{ns}.svc]\n  usages: [serverAuth]\n")
            ),
            client = request_yaml(
                &ns,
                "orders",
                "  commonName: orders-service\n  usages: [clientAuth]\n"
            ),
            deployment = java_deployment(
                &ns,
                "api",
                "api-tls",
                &[
                    "--client-auth",
                    "/etc/tls/truststore.p12",
                    "/etc/tls/keystore-password"
                ]
            ),
        ),
    );
    wait_condition(node, &ns, "orders", "Ready", Duration::from_secs(60));
    ok(
        node,
        &[
            "rollout",
            "status",
            "deployment/api",
            "-n",
            &ns,
            "--timeout=120s",
        ],
    );
    let ip = routed_service_ip(node, &ns, "api", 2);
    let host = format!("api.{ns}.svc");
    // The client mounts its own Secret: its keystore, and the truststore (same CA).
    let (code, log) = run_pod(
        node,
        &ns,
        "orders",
        &client_spec(
            &host,
            &ip,
            "orders-tls",
            &[
                "--keystore",
                "/etc/tls/keystore.p12",
                "--password-file",
                "/etc/tls/keystore-password",
            ],
        ),
    );
    assert_eq!(code, 0, "the mTLS client failed: {log}");
    assert!(log.contains("handshake ok"), "{log}");
    step("mTLS handshake with an issued client keystore", t);

    // Without a client certificate the server refuses.
    let (code, log) = run_pod(
        node,
        &ns,
        "anonymous",
        &client_spec(&host, &ip, "orders-tls", &[]),
    );
    assert_ne!(code, 0, "a client without a certificate got through: {log}");
    // Either replica may have served it: read both.
    let server_logs = ok(node, &["logs", "-n", &ns, "-l", "app=api", "--tail=-1"]);
    assert!(
        server_logs.contains("orders-service"),
        "the server did not log the client's subject: {server_logs}"
    );
}

fn renewal_stale_replicas_are_reported_until_a_rollout_restart(node: &'static Node) {
    let w = web(node);
    let old = secret_fingerprint(node, &w.ns, "web-tls");
    let started = Instant::now();
    ask_now(node, &w.ns, "web", "renew");
    let new = eventually(Duration::from_secs(60), "the renewed Secret", || {
        let f = secret_fingerprint(node, &w.ns, "web-tls");
        if f != old && !f.is_empty() {
            Ok(f)
        } else {
            Err(f)
        }
    });
    step("renewal to new Secret", started);

    // The kubelet refreshes the mounted files (syncFrequency 5s here).
    let t = Instant::now();
    let pods = ok(
        node,
        &[
            "get",
            "pods",
            "-n",
            &w.ns,
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    );
    let secret_keystore = jsonpath(node, &w.ns, "secret/web-tls", "{.data.keystore\\.p12}");
    for pod in pods.split_whitespace() {
        eventually(
            Duration::from_secs(120),
            "the kubelet to update the mounted keystore",
            || {
                let out = kubectl(
                    node,
                    &[
                        "exec",
                        "-n",
                        &w.ns,
                        pod,
                        "--",
                        "base64",
                        "-w0",
                        "/etc/tls/keystore.p12",
                    ],
                );
                let mounted = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if mounted == secret_keystore {
                    Ok(())
                } else {
                    Err(text(&out).chars().take(200).collect())
                }
            },
        );
    }
    step("kubelet updated the mounted keystore in both pods", t);

    // The replicas read their keystore once: the probe finds them stale.
    let t = Instant::now();
    ask_now(node, &w.ns, "web", "probe");
    let stale = eventually(
        Duration::from_secs(120),
        "both replicas reported stale",
        || {
            let eps = probe_endpoints(node, &w.ns, "web");
            let n = eps
                .iter()
                .filter(|l| l.contains("StaleCertificate"))
                .count();
            let verified = condition(node, &w.ns, "web", "Verified");
            if n == 2 && verified.0 == "False" {
                Ok(eps)
            } else {
                Err(format!("{eps:?} {verified:?}"))
            }
        },
    );
    // Each stale replica is named by its pod, in status and in the condition.
    let (_, _, message) = condition(node, &w.ns, "web", "Verified");
    for line in &stale {
        assert!(
            line.to_lowercase().replace(':', "").contains(&old),
            "{line}"
        );
        let pod = line.split_whitespace().nth(4).unwrap_or_default();
        assert!(
            pods.split_whitespace().any(|p| p == pod),
            "{line}: not one of the replicas {pods}"
        );
        assert!(message.contains(&format!("(pod {pod})")), "{message}");
    }
    step("probe reports both replicas StaleCertificate", t);

    let t = Instant::now();
    ok(node, &["rollout", "restart", "deployment/web", "-n", &w.ns]);
    ok(
        node,
        &[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            &w.ns,
            "--timeout=120s",
        ],
    );
    step("rollout restart", t);
    let t = Instant::now();
    ask_now(node, &w.ns, "web", "probe");
    wait_condition(node, &w.ns, "web", "Verified", Duration::from_secs(120));
    let eps = probe_endpoints(node, &w.ns, "web");
    assert_eq!(eps.len(), 2, "{eps:?}");
    for line in &eps {
        assert!(
            line.to_lowercase().replace(':', "").contains(&new),
            "{line}"
        );
    }
    step("probe after the rollout to Verified=True", t);
    step("renewal to verified, in all", started);
}

fn kubectl_apply_deploy_runs_the_operator(node: &'static Node) {
    // The chart's release goes first: both would own the same cluster objects.
    operator_installed(node);
    let t = Instant::now();
    let out = node
        .cp
        .helm()
        .args(["uninstall", "p12", "--namespace", OPERATOR_NS, "--wait"])
        .output()
        .unwrap();
    assert!(out.status.success(), "helm uninstall: {}", text(&out));
    // The installation moves to the namespace deploy/ uses, and its CA with
    // it: once certificates exist the operator never makes a new root
    // (CAMissing instead, and it would not become ready).
    let field = |key: &str| {
        ok(
            node,
            &[
                "get",
                "secret",
                "p12-operator-ca",
                "-n",
                OPERATOR_NS,
                "-o",
                &format!("jsonpath={{.data.{}}}", key.replace('.', "\\.")),
            ],
        )
    };
    let (crt, key) = (field("tls.crt"), field("tls.key"));
    apply(
        node,
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: p12-operator}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: p12-operator-ca, namespace: p12-operator}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
            crt.trim(),
            key.trim()
        ),
    );
    let deploy = p12_testenv::tools::repo_root().join("deploy/p12-operator.yaml");
    let manifest = std::fs::read_to_string(&deploy).unwrap();
    // As documented for clusters without a registry: the image is already on the node.
    let manifest = manifest.replace("imagePullPolicy: IfNotPresent", "imagePullPolicy: Never");
    apply(node, &manifest);
    ok(
        node,
        &[
            "rollout",
            "status",
            "deployment/p12-operator",
            "-n",
            "p12-operator",
            "--timeout=120s",
        ],
    );
    step("kubectl apply -f deploy/ to Ready", t);
    // The chart's IssuancePolicy went with its release: the built-in default
    // admits the names of the namespace's own Service, with deploy/'s RBAC.
    let ns = restricted_namespace(node, "plain");
    apply(
        node,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: hello, namespace: {ns}}}\nspec:\n  selector: {{app: hello}}\n  ports: [{{port: 443}}]\n---\n{}",
            request_yaml(&ns, "hello", &format!("  dnsNames: [hello.{ns}.svc]\n"))
        ),
    );
    wait_condition(node, &ns, "hello", "Ready", Duration::from_secs(60));
}

// --- rollout after a renewal (spec.rollout) ---------------------------------

/// `p12-operator args…` on the host, against the node's API server; its output.
fn p12(node: &Node, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p12-operator"))
        .args(args)
        .env("KUBECONFIG", &node.cp.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success() || args[0] == "status",
        "p12-operator {args:?} failed: {}",
        text(&out)
    );
    text(&out)
}

fn generation(node: &Node, ns: &str, deployment: &str) -> i64 {
    jsonpath(
        node,
        ns,
        &format!("deployment/{deployment}"),
        "{.metadata.generation}",
    )
    .parse()
    .unwrap()
}

fn pod_names(node: &Node, ns: &str, app: &str) -> Vec<String> {
    let mut names: Vec<String> = ok(
        node,
        &[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            &format!("app={app}"),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    )
    .split_whitespace()
    .map(String::from)
    .collect();
    names.sort();
    names
}

/// A request `name` probing Service `name` and rolling Deployment `name`,
/// the Service, and (from `deployment`) the Deployment; waits until its
/// replicas are verified. Returns the issued fingerprint.
fn rolled_workload(node: &Node, ns: &str, name: &str, timeout: &str, deployment: &str) -> String {
    apply(
        node,
        &format!(
            "{request}---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: https, port: 8443, targetPort: https}}]
---
{deployment}",
            request = request_yaml(
                ns,
                name,
                &format!(
                    "  dnsNames: [{name}.{ns}.svc]
  probe:
    service: {{name: {name}, port: 8443}}
    interval: 10m
  rollout:
    workloads: [{{kind: Deployment, name: {name}}}]
    timeout: {timeout}
"
                )
            ),
        ),
    );
    ok(
        node,
        &[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "-n",
            ns,
            "--timeout=180s",
        ],
    );
    ask_now(node, ns, name, "probe");
    wait_condition(node, ns, name, "Verified", Duration::from_secs(120));
    let (status, reason, _) = condition(node, ns, name, "RolledOut");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "NoRenewalYet"));
    secret_fingerprint(node, ns, &format!("{name}-tls"))
}

/// Renews with `p12-operator renew`; the new fingerprint.
fn renew(node: &Node, ns: &str, name: &str, old: &str) -> String {
    p12(node, &["renew", name, "-n", ns]);
    eventually(Duration::from_secs(60), "the renewed Secret", || {
        let f = secret_fingerprint(node, ns, &format!("{name}-tls"));
        if f != old && !f.is_empty() {
            Ok(f)
        } else {
            Err(f)
        }
    })
}

fn rollout_state(node: &Node, ns: &str, name: &str) -> String {
    jsonpath(
        node,
        ns,
        &format!("certificaterequest/{name}"),
        "{range .status.rollout.workloads[*]}{.kind}/{.name}={.state} {end}",
    )
}

/// The namespace of the first rollout case, whose Deployment the hostile request aims at.
static ROLLED_NS: OnceLock<String> = OnceLock::new();

fn renewal_rolls_a_java_deployment_and_the_probe_verifies_all_three_replicas(node: &'static Node) {
    operator_installed(node);
    let ns = restricted_namespace(node, "roll");
    ROLLED_NS.set(ns.clone()).ok();
    let t = Instant::now();
    let old = rolled_workload(
        node,
        &ns,
        "web",
        "3m",
        &java_deployment_of(&ns, "web", "web-tls", 3, &[], ""),
    );
    step("3 Java replicas verified", t);
    let before = pod_names(node, &ns, "web");
    assert_eq!(before.len(), 3, "{before:?}");
    let g0 = generation(node, &ns, "web");

    let started = Instant::now();
    let new = renew(node, &ns, "web", &old);
    step("p12-operator renew to the new Secret", started);
    eventually(
        Duration::from_secs(300),
        "RolledOut=True and Verified=True with the new certificate",
        || {
            let rolled = condition(node, &ns, "web", "RolledOut");
            let verified = condition(node, &ns, "web", "Verified");
            let eps = probe_endpoints(node, &ns, "web");
            let all_new = eps.len() == 3
                && eps.iter().all(|l| {
                    l.to_lowercase().replace(':', "").contains(&new) && l.contains(" true ")
                });
            if rolled.0 == "True" && rolled.1 == "RolledOut" && verified.0 == "True" && all_new {
                Ok(())
            } else {
                Err(format!(
                    "RolledOut {rolled:?} Verified {verified:?} {eps:?} {}",
                    rollout_state(node, &ns, "web")
                ))
            }
        },
    );
    step(
        "renewal to Verified=True on all three new replicas",
        started,
    );
    println!(
        "    time from renewal to verified: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let after = pod_names(node, &ns, "web");
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} → {after:?}"
    );
    assert_eq!(
        jsonpath(
            node,
            &ns,
            "deployment/web",
            "{.spec.template.metadata.annotations.p12-operator\\.io/restarted-for}"
        ),
        new
    );
    assert_eq!(generation(node, &ns, "web"), g0 + 1, "one restart");
    assert_eq!(
        rollout_state(node, &ns, "web").trim(),
        "Deployment/web=RolledOut"
    );
    // Verified after the rollout, and the times say so.
    eventually(
        Duration::from_secs(30),
        "status.rollout.verifiedTime",
        || {
            let t = jsonpath(
                node,
                &ns,
                "certificaterequest/web",
                "{.status.rollout.verifiedTime}",
            );
            if t.is_empty() {
                Err("none".into())
            } else {
                Ok(())
            }
        },
    );
    let report = p12(node, &["status", "web", "-n", &ns]);
    println!("{report}");
    assert!(report.contains("Last rotation:"), "{report}");
    assert!(
        report.contains("Rolled out:") && !report.contains("in progress"),
        "{report}"
    );
    assert!(!report.contains("Verified:          not yet"), "{report}");
    // Another probe and more passes: no second restart.
    ask_now(node, &ns, "web", "probe");
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        generation(node, &ns, "web"),
        g0 + 1,
        "restarted once per certificate"
    );
}

fn a_hot_reloading_workload_is_not_restarted(node: &'static Node) {
    operator_installed(node);
    let ns = restricted_namespace(node, "live");
    let old = rolled_workload(
        node,
        &ns,
        "live",
        "3m",
        &java_deployment_of(&ns, "live", "live-tls", 2, &["--reload", "true"], ""),
    );
    let before = pod_names(node, &ns, "live");
    let g0 = generation(node, &ns, "live");
    let started = Instant::now();
    let new = renew(node, &ns, "live", &old);
    eventually(
        Duration::from_secs(180),
        "the rollout to skip the workload",
        || {
            let rolled = condition(node, &ns, "live", "RolledOut");
            let state = rollout_state(node, &ns, "live");
            if rolled.0 == "True" && state.contains("=Skipped") {
                Ok(())
            } else {
                Err(format!("{rolled:?} {state}"))
            }
        },
    );
    step(
        "renewal to RolledOut=True with the workload skipped",
        started,
    );
    let eps = probe_endpoints(node, &ns, "live");
    assert_eq!(eps.len(), 2, "{eps:?}");
    assert!(
        eps.iter()
            .all(|l| l.to_lowercase().replace(':', "").contains(&new)),
        "{eps:?}"
    );
    assert_eq!(condition(node, &ns, "live", "Verified").0, "True");
    assert_eq!(generation(node, &ns, "live"), g0, "not restarted");
    assert_eq!(pod_names(node, &ns, "live"), before, "the same pods");
}

fn a_rollout_whose_new_pods_fail_is_reported_once_and_old_replicas_keep_serving(
    node: &'static Node,
) {
    operator_installed(node);
    let ns = restricted_namespace(node, "broken");
    // The workload reads the keystore password from a Secret of its own,
    // which someone will break after it started.
    apply(
        node,
        &request_yaml(&ns, "pay", &format!("  dnsNames: [pay.{ns}.svc]\n")),
    );
    // The Service must exist for the default policy; the request waits for it.
    apply(
        node,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: pay, namespace: {ns}}}\nspec:\n  selector: {{app: pay}}\n  ports: [{{name: https, port: 8443, targetPort: https}}]\n"
        ),
    );
    wait_condition(node, &ns, "pay", "Ready", Duration::from_secs(60));
    let password = jsonpath(node, &ns, "secret/pay-tls", "{.data.keystore-password}");
    apply(
        node,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: pay-pw, namespace: {ns}}}\ndata: {{password: \"{password}\"}}\n"
        ),
    );
    let deployment = java_deployment_of(
        &ns,
        "pay",
        "pay-tls",
        2,
        &[],
        "        - {name: pw, mountPath: /etc/pw, readOnly: true}\n---\n      - name: pw\n        secret: {secretName: pay-pw}\n",
    )
    .replace("/etc/tls/keystore-password", "/etc/pw/password");
    let old = rolled_workload(node, &ns, "pay", "60s", &deployment);
    let before = pod_names(node, &ns, "pay");
    let g0 = generation(node, &ns, "pay");
    ok(
        node,
        &[
            "patch",
            "secret",
            "pay-pw",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            "{\"stringData\":{\"password\":\"not-the-password\"}}",
        ],
    );
    let started = Instant::now();
    renew(node, &ns, "pay", &old);
    eventually(
        Duration::from_secs(240),
        "RolledOut=False, RolloutTimedOut",
        || {
            let rolled = condition(node, &ns, "pay", "RolledOut");
            if rolled.0 == "False" && rolled.1 == "RolloutTimedOut" {
                Ok(())
            } else {
                Err(format!("{rolled:?} {}", rollout_state(node, &ns, "pay")))
            }
        },
    );
    step("renewal to RolloutTimedOut", started);
    let events = ok(
        node,
        &[
            "get",
            "events.events.k8s.io",
            "-n",
            &ns,
            "--field-selector",
            "reason=RolloutTimedOut",
            "-o",
            "jsonpath={range .items[*]}{.note}{\"\\n\"}{end}",
        ],
    );
    assert!(events.contains("Deployment pay"), "{events}");
    // The old replicas keep serving the old certificate, and the probe says which.
    eventually(Duration::from_secs(120), "the stale pods in status", || {
        let stale = jsonpath(
            node,
            &ns,
            "certificaterequest/pay",
            "{.status.rollout.workloads[0].stalePods}",
        );
        if before.iter().all(|p| stale.contains(p.as_str())) {
            Ok(())
        } else {
            Err(stale)
        }
    });
    let available = jsonpath(node, &ns, "deployment/pay", "{.status.availableReplicas}");
    assert_eq!(available, "2", "the old replicas stay available");
    let (verified, reason, message) = condition(node, &ns, "pay", "Verified");
    assert_eq!(
        (verified.as_str(), reason.as_str()),
        ("False", "StaleCertificate"),
        "{message}"
    );
    // Never retried: one restart, still after more passes.
    std::thread::sleep(Duration::from_secs(15));
    assert_eq!(
        generation(node, &ns, "pay"),
        g0 + 1,
        "restarted once, not in a loop"
    );
    assert_eq!(
        rollout_state(node, &ns, "pay").trim(),
        "Deployment/pay=TimedOut"
    );
}

fn a_request_naming_a_workload_in_another_namespace_is_refused(node: &'static Node) {
    operator_installed(node);
    let victim = ROLLED_NS.get().expect("the first rollout case ran").clone();
    let g0 = generation(node, &victim, "web");
    let ns = restricted_namespace(node, "hostile");
    let yaml = request_yaml(
        &ns,
        "grab",
        &format!(
            "  dnsNames: [grab.example.test]\n  rollout:\n    workloads: [{{kind: Deployment, name: web, namespace: {victim}}}]\n"
        ),
    );
    // The API server refuses the field …
    let out = {
        use std::io::Write;
        let mut child = node
            .cp
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(!out.status.success(), "accepted: {}", text(&out));
    assert!(text(&out).contains("unknown field"), "{}", text(&out));
    // … and without client-side validation it is dropped: the operator looks
    // for the workload in the request's own namespace only.
    let path = node.cp.dir.join("hostile.yaml");
    std::fs::write(&path, &yaml).unwrap();
    ok(
        node,
        &["apply", "--validate=false", "-f", path.to_str().unwrap()],
    );
    wait_condition(node, &ns, "grab", "Ready", Duration::from_secs(60));
    let old = secret_fingerprint(node, &ns, "grab-tls");
    renew(node, &ns, "grab", &old);
    eventually(
        Duration::from_secs(60),
        "RolledOut=False, WorkloadNotFound",
        || {
            let rolled = condition(node, &ns, "grab", "RolledOut");
            if rolled.1 == "WorkloadNotFound"
                && rolled.2.contains(&format!("not found in namespace {ns}"))
            {
                Ok(())
            } else {
                Err(format!("{rolled:?}"))
            }
        },
    );
    assert_eq!(
        generation(node, &victim, "web"),
        g0,
        "the other namespace's Deployment was not touched"
    );
}
