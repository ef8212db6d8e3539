//! `p12-operator status`, `renew`, `probe-now` and `completion`: the binary run
//! as a user would, with a kubeconfig, against the local control plane and a
//! running operator.

mod support;

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use p12_operator::api::CertificateRequest;
use serde_json::Value;
use support::{cluster, eventually, kubectl_apply, operator};

const WAIT: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> (Client, String) {
    operator();
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, prefix).await.unwrap();
    (client, ns)
}

fn apply(ns: &str, yaml: &str) {
    let out = kubectl_apply(yaml, ns);
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A request `name` for `name.example`, with optional labels (`{app: x}`).
fn request(ns: &str, name: &str, labels: &str) {
    apply(
        ns,
        &format!(
            "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {{name: {name}, labels: {labels}}}\nspec:\n  secretName: {name}-tls\n  dnsNames: [{name}.example]\n"
        ),
    );
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs the binary as a user: the admin kubeconfig (or `kubeconfig`), no
/// in-cluster environment.
async fn cli_with(kubeconfig: &std::path::Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_p12-operator"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

async fn cli(args: &[&str]) -> Run {
    cli_with(&cluster().kubeconfig, args).await
}

/// Waits until the request is Ready for its current generation.
async fn ready(client: &Client, ns: &str, name: &str) -> CertificateRequest {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, &format!("{ns}/{name} to be Ready"), || {
        let api = api.clone();
        async move {
            let cr = api.get(name).await.ok()?;
            let c = cr
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")?
                .clone();
            (c.status == "True" && c.observed_generation == cr.metadata.generation).then_some(cr)
        }
    })
    .await
}

async fn get(client: &Client, ns: &str, name: &str) -> CertificateRequest {
    Api::<CertificateRequest>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

fn revision(cr: &CertificateRequest) -> Option<i64> {
    cr.status.as_ref().and_then(|s| s.revision)
}

fn serial(cr: &CertificateRequest) -> String {
    cr.status
        .as_ref()
        .and_then(|s| s.serial_number.clone())
        .unwrap()
}

/// Waits until the request's revision is `want`.
async fn revision_becomes(client: &Client, ns: &str, name: &str, want: i64) -> CertificateRequest {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    eventually(
        WAIT,
        &format!("{ns}/{name} to reach revision {want}"),
        || {
            let api = api.clone();
            async move {
                let cr = api.get(name).await.ok()?;
                (revision(&cr) == Some(want)).then_some(cr)
            }
        },
    )
    .await
}

#[tokio::test]
async fn status_of_a_ready_request_names_its_secret_serial_conditions_and_events() {
    let (client, ns) = setup("cli-status").await;
    request(&ns, "web", "{}");
    let cr = ready(&client, &ns, "web").await;
    let serial = serial(&cr);
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("web-tls")
        .await
        .unwrap();
    let password = String::from_utf8(secret.data.unwrap()["keystore-password"].0.clone()).unwrap();
    assert!(password.len() >= 16);
    // The Issued event may trail the status by a moment.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "the Issued event", || {
        let events = events.clone();
        async move {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=web"))
                .await
                .ok()?;
            list.items
                .iter()
                .any(|e| e.reason.as_deref() == Some("Issued"))
                .then_some(())
        }
    })
    .await;

    let run = cli(&["status", "web", "-n", &ns]).await;
    assert_eq!(run.code, 0, "{}", run.both());
    let text = &run.stdout;
    for expected in [
        format!("CertificateRequest:  {ns}/web"),
        "Ready:               yes".to_owned(),
        "  Secret:            web-tls".to_owned(),
        "  DNS names:         web.example".to_owned(),
        format!("  Serial:            {serial}"),
        "  Revision:          1".to_owned(),
        "Secret web-tls:".to_owned(),
        "  Exists:            yes".to_owned(),
        "  Type:              kubernetes.io/tls".to_owned(),
        "  Owned by request:  yes".to_owned(),
        "Result:              ok".to_owned(),
    ] {
        assert!(text.contains(&expected), "no {expected:?} in:\n{text}");
    }
    assert!(
        text.contains("keystore.p12") && text.contains("truststore.p12"),
        "key names are listed:\n{text}"
    );
    let conditions = text
        .split("Conditions:")
        .nth(1)
        .and_then(|rest| rest.split("Certificate:").next())
        .unwrap();
    for type_ in ["Ready", "Issued"] {
        assert!(
            conditions
                .lines()
                .any(|l| l.trim_start().starts_with(type_) && l.contains("True")),
            "no {type_} True condition in:\n{conditions}"
        );
    }
    let events_section = text.split("Events (newest last):").nth(1).unwrap();
    assert!(
        events_section.contains("Normal") && events_section.contains("Issued"),
        "{events_section}"
    );
    let not_after = text.lines().find(|l| l.contains("Not after:")).unwrap();
    assert!(
        not_after.ends_with("(in 90d)") || not_after.contains("(in 89d"),
        "relative times:\n{text}"
    );

    let run_json = cli(&["status", "web", "-n", &ns, "-o", "json"]).await;
    assert_eq!(run_json.code, 0, "{}", run_json.both());
    let json: Value = serde_json::from_str(&run_json.stdout).unwrap();
    let fresh = get(&client, &ns, "web").await;
    assert_eq!(
        json["certificate"]["serialNumber"],
        Value::from(self::serial(&fresh))
    );
    assert_eq!(json["ready"], Value::Bool(true));
    assert_eq!(json["ok"], Value::Bool(true));
    assert_eq!(json["secret"]["exists"], Value::Bool(true));
    assert_eq!(json["secret"]["ownedByRequest"], Value::Bool(true));
    assert_eq!(json["spec"]["secretName"], "web-tls");
    assert!(
        json["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "Issued"),
        "{json}"
    );

    // Nothing secret, in either form, on either stream.
    for output in [run.both(), run_json.both()] {
        assert!(
            !output.contains(&password),
            "the password leaked:\n{output}"
        );
        assert!(!output.contains("PRIVATE KEY"), "{output}");
    }

    // Without -n: the kubeconfig context's namespace.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::copy(&cluster().kubeconfig, &kubeconfig).unwrap();
    let out = cluster()
        .control_plane()
        .kubectl()
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["config", "set-context", "--current", "--namespace", &ns])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = cli_with(&kubeconfig, &["status", "web"]).await;
    assert_eq!(run.code, 0, "{}", run.both());
    assert!(run.stdout.contains(&format!("{ns}/web")), "{}", run.stdout);
}

#[tokio::test]
async fn status_of_a_refused_request_exits_1_with_the_reason_and_the_event() {
    let (client, ns) = setup("cli-refused").await;
    apply(
        &ns,
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: nopw}\nspec:\n  secretName: nopw-tls\n  dnsNames: [nopw.example]\n  keystore: {passwordSecretRef: {name: nopw-pw, key: password}}\n",
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "the PasswordSecretNotAllowed event", || {
        let events = events.clone();
        async move {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=nopw"))
                .await
                .ok()?;
            list.items
                .iter()
                .any(|e| e.reason.as_deref() == Some("PasswordSecretNotAllowed"))
                .then_some(())
        }
    })
    .await;
    let run = eventually(
        WAIT,
        "status to report PasswordSecretNotAllowed",
        || async {
            let run = cli(&["status", "nopw", "-n", &ns]).await;
            run.stdout
                .contains("Result:              not Ready: PasswordSecretNotAllowed")
                .then_some(run)
        },
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.both());
    let text = &run.stdout;
    assert!(text.contains("Ready:               NO"), "{text}");
    assert!(text.contains("Exists:            NO"), "{text}");
    assert!(
        text.contains("Password:          from Secret nopw-pw key password"),
        "{text}"
    );
    let events_section = text.split("Events (newest last):").nth(1).unwrap();
    assert!(
        events_section.lines().any(|l| l.contains("Warning")
            && l.contains("PasswordSecretNotAllowed")
            && l.contains("nopw-pw")),
        "the Event is shown:\n{events_section}"
    );

    let run = cli(&["status", "nopw", "-n", &ns, "-o", "json"]).await;
    assert_eq!(run.code, 1, "{}", run.both());
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["ready"], Value::Bool(false));
    assert!(
        json["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("not Ready: PasswordSecretNotAllowed"),
        "{json}"
    );
}

#[tokio::test]
async fn status_of_a_missing_request_exits_1_with_a_clear_message() {
    let (_client, ns) = setup("cli-missing").await;
    let run = cli(&["status", "nothing-here", "-n", &ns]).await;
    assert_eq!(run.code, 1, "{}", run.both());
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains(&format!(
            "error: CertificateRequest {ns}/nothing-here: it does not exist"
        )),
        "{}",
        run.stderr
    );
    let run = cli(&["renew", "nothing-here", "-n", &ns]).await;
    assert_eq!(run.code, 1, "{}", run.both());
    assert!(run.stderr.contains("it does not exist"), "{}", run.stderr);
    let run = cli(&["renew", "-l", "app=none", "-n", &ns]).await;
    assert_eq!(run.code, 1, "{}", run.both());
    assert!(
        run.stderr.contains(&format!(
            "no CertificateRequests match -l app=none in namespace {ns}"
        )),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn renew_by_name_issues_a_new_serial_as_revision_2() {
    let (client, ns) = setup("cli-renew").await;
    request(&ns, "web", "{}");
    let first = ready(&client, &ns, "web").await;
    assert_eq!(revision(&first), Some(1));

    let run = cli(&["renew", "web", "-n", &ns, "--wait", "--timeout", "60s"]).await;
    assert_eq!(run.code, 0, "{}", run.both());
    let second = get(&client, &ns, "web").await;
    assert_eq!(revision(&second), Some(2));
    assert_ne!(
        serial(&second),
        serial(&first),
        "a renewal issues a new serial"
    );
    assert_eq!(
        run.stdout.trim(),
        format!(
            "{ns}/web: renewed: revision 1 -> 2, serial {} -> {}",
            serial(&first),
            serial(&second)
        )
    );
    let annotation = second
        .annotations()
        .get("p12-operator.io/renew-requested-at")
        .cloned()
        .unwrap();
    assert!(
        annotation.parse::<jiff::Timestamp>().is_ok(),
        "{annotation} is an RFC 3339 time"
    );
    let managers: Vec<String> = second
        .metadata
        .managed_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| f.manager)
        .collect();
    assert!(
        managers.iter().any(|m| m == "p12-operator-cli"),
        "{managers:?}"
    );
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("web-tls")
        .await
        .unwrap();
    assert_eq!(
        secret.annotations().get("p12-operator.io/serial"),
        Some(&serial(&second))
    );
}

#[tokio::test]
async fn renew_by_selector_renews_only_the_labelled_requests() {
    let (client, ns) = setup("cli-selector").await;
    request(&ns, "x1", "{app: 'x'}");
    request(&ns, "x2", "{app: 'x'}");
    request(&ns, "y1", "{app: 'y'}");
    let mut before = Vec::new();
    for name in ["x1", "x2", "y1"] {
        before.push(ready(&client, &ns, name).await);
    }

    let run = cli(&["renew", "-l", "app=x", "-n", &ns]).await;
    assert_eq!(run.code, 0, "{}", run.both());
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(
        lines[0].starts_with(&format!("{ns}/x1: renewal requested")),
        "{}",
        run.stdout
    );
    assert!(
        lines[1].starts_with(&format!("{ns}/x2: renewal requested")),
        "{}",
        run.stdout
    );

    for (i, name) in ["x1", "x2"].into_iter().enumerate() {
        let renewed = revision_becomes(&client, &ns, name, 2).await;
        assert_ne!(serial(&renewed), serial(&before[i]));
    }
    // Give the operator time to (wrongly) touch the unlabelled one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let untouched = get(&client, &ns, "y1").await;
    assert_eq!(revision(&untouched), Some(1));
    assert_eq!(serial(&untouched), serial(&before[2]));
    assert!(
        !untouched
            .annotations()
            .contains_key("p12-operator.io/renew-requested-at")
    );
}

#[tokio::test]
async fn renew_all_renews_every_request_of_the_namespace_and_no_other() {
    let (client, ns) = setup("cli-all").await;
    let other = cluster().namespace(&client, "cli-all-other").await.unwrap();
    request(&ns, "a", "{}");
    request(&ns, "b", "{}");
    request(&other, "c", "{}");
    for (n, name) in [(&ns, "a"), (&ns, "b"), (&other, "c")] {
        ready(&client, n, name).await;
    }

    let run = cli(&["renew", "--all", "-n", &ns, "--wait"]).await;
    assert_eq!(run.code, 0, "{}", run.both());
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(
        lines[0].starts_with(&format!("{ns}/a: renewed: revision 1 -> 2")),
        "{}",
        run.stdout
    );
    assert!(
        lines[1].starts_with(&format!("{ns}/b: renewed: revision 1 -> 2")),
        "{}",
        run.stdout
    );
    for name in ["a", "b"] {
        assert_eq!(revision(&get(&client, &ns, name).await), Some(2));
    }
    assert_eq!(revision(&get(&client, &other, "c").await), Some(1));
}

#[tokio::test]
async fn probe_now_refuses_a_request_without_a_probe() {
    let (client, ns) = setup("cli-probe").await;
    request(&ns, "plain", "{}");
    ready(&client, &ns, "plain").await;
    let run = cli(&["probe-now", "plain", "-n", &ns]).await;
    assert_eq!(run.code, 1, "{}", run.both());
    assert!(
        run.stderr.contains(&format!(
            "{ns}/plain: has no spec.probe, so there is nothing to probe"
        )),
        "{}",
        run.stderr
    );
    assert!(
        !get(&client, &ns, "plain")
            .await
            .annotations()
            .contains_key("p12-operator.io/probe-requested-at")
    );
}

#[tokio::test]
async fn probe_now_wait_reports_the_verdict_of_the_probe_it_asked_for() {
    let (client, ns) = setup("cli-probe-wait").await;
    // A Service with no endpoints: the probe answers at once with NoEndpoints.
    apply(
        &ns,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 8443}]\n",
    );
    apply(
        &ns,
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {name: web}\nspec:\n  secretName: web-tls\n  dnsNames: [web.example]\n  probe: {service: {name: web, port: 8443}}\n",
    );
    ready(&client, &ns, "web").await;
    let run = cli(&["probe-now", "web", "-n", &ns, "--wait", "--timeout", "45s"]).await;
    assert_eq!(run.code, 1, "{}", run.both());
    assert!(
        run.stderr.contains(&format!(
            "error: {ns}/web: probed, not verified (0/0 endpoints): NoEndpoints"
        )),
        "{}",
        run.stderr
    );
    let cr = get(&client, &ns, "web").await;
    let token = cr
        .annotations()
        .get("p12-operator.io/probe-requested-at")
        .cloned()
        .unwrap();
    let probe = cr.status.unwrap().probe.unwrap();
    assert_eq!(probe.requested.as_deref(), Some(token.as_str()));
    let status = cli(&["status", "web", "-n", &ns]).await;
    assert_eq!(
        status.code,
        1,
        "Verified=False fails status: {}",
        status.both()
    );
    assert!(
        status
            .stdout
            .contains("Result:              verification failed: NoEndpoints"),
        "{}",
        status.stdout
    );
}

#[tokio::test]
async fn completion_bash_prints_a_script_that_knows_the_subcommands() {
    let run = cli(&["completion", "bash"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("complete -F"),
        "a bash completion script"
    );
    for sub in [
        "status",
        "renew",
        "probe-now",
        "inspect",
        "completion",
        "run",
        "crd",
    ] {
        assert!(run.stdout.contains(sub), "{sub} is not in the script");
    }
    assert!(run.stdout.contains("--all-namespaces"));
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let run = cli(&["completion", shell]).await;
        assert_eq!(run.code, 0, "{shell}: {}", run.stderr);
        assert!(run.stdout.contains("renew"), "{shell}");
    }
}

#[tokio::test]
async fn usage_errors_and_an_unreachable_cluster_exit_2() {
    // No cluster needed: clap rejects these.
    for args in [
        &["renew"][..],
        &["renew", "web", "--all"],
        &["renew", "web", "-A"],
        &["renew", "-A"],
        &["completion", "tcsh"],
        &["status"],
    ] {
        let run = cli(args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.both());
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    )
    .unwrap();
    for args in [
        &["status", "web"][..],
        &["renew", "--all"],
        &["probe-now", "web"],
    ] {
        let run = cli_with(&kubeconfig, args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.both());
        assert!(
            run.stderr.contains("cannot reach the cluster"),
            "{}",
            run.stderr
        );
    }
    let run = cli_with(&dir.path().join("absent"), &["status", "web"]).await;
    assert_eq!(run.code, 2, "{}", run.both());
    assert!(run.stderr.contains("kubeconfig"), "{}", run.stderr);
}

#[tokio::test]
async fn help_texts_carry_examples_and_exit_codes() {
    for sub in ["status", "renew", "probe-now", "completion"] {
        let run = cli(&[sub, "--help"]).await;
        assert_eq!(run.code, 0, "{sub}: {}", run.stderr);
        assert!(
            run.stdout.contains(&format!("p12-operator {sub} ")),
            "{sub} --help has examples:\n{}",
            run.stdout
        );
    }
    let run = cli(&["renew", "--help"]).await;
    assert!(run.stdout.contains("Exit codes:"), "{}", run.stdout);
}
