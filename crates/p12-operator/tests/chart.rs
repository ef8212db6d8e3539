//! The Helm chart and the plain manifests rendered from it: they lint, reject
//! bad values, stay in step with the generated CRD, and render a hardened
//! operator. Installed into the local control plane — where the local pod runner
//! runs the operator's pod with the chart's ServiceAccount token, so the operator
//! has exactly the chart's RBAC — they issue certificates, fail visibly when a
//! needed rule is missing, and leave nothing behind when removed.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use p12_operator::api::CertificateRequest;
use p12_testenv::tools;
use serde_json::Value;
use support::{cluster, eventually, kubectl_apply};

/// The namespace and release name the chart is installed with, as in the docs.
const NAMESPACE: &str = "p12-operator";
const RELEASE: &str = "p12-operator";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:p12-operator:p12-operator";
const WAIT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    tools::repo_root()
}

fn chart() -> String {
    repo().join("charts/p12-operator").display().to_string()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn succeed(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

// ---------------------------------------------------------------------------
// Without a cluster: lint, schema, generated files, rendered objects.
// ---------------------------------------------------------------------------

/// `helm` for commands that need no cluster, with its caches in a throwaway folder.
fn offline_helm(args: &[&str]) -> Output {
    let bin = tools::ensure_built().unwrap_or_else(|e| panic!("{e}"));
    let home = tempfile::tempdir().unwrap();
    Command::new(bin.join("helm"))
        .args(args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

/// `helm template` of the chart into namespace p12-operator, with `--set` values.
fn render(sets: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        RELEASE,
        chart.as_str(),
        "--namespace",
        NAMESPACE,
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let yaml = succeed(offline_helm(&args), &format!("helm template {sets:?}"));
    serde_saphyr::from_multiple(&yaml)
        .unwrap_or_else(|e| panic!("helm template {sets:?} is not YAML: {e}"))
}

fn objects<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn the_one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = objects(docs, kind);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}, found {}",
        found.len()
    );
    found[0]
}

/// The object of `kind` named `name`.
fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn deployment(docs: &[Value]) -> Deployment {
    serde_json::from_value(the_one(docs, "Deployment").clone())
        .expect("the Deployment is a valid apps/v1 Deployment")
}

fn args_of(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap_or_default()
}

fn rules_of(role: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(role["rules"].clone()).unwrap()
}

fn verbs_on(rules: &[PolicyRule], group: &str, resource: &str) -> Vec<String> {
    rules
        .iter()
        .filter(|r| {
            r.api_groups
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|g| g == group)
        })
        .filter(|r| {
            r.resources
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|x| x == resource)
        })
        .flat_map(|r| r.verbs.clone())
        .collect()
}

/// Every optional part switched on, so lint and render see every template branch.
const EVERYTHING_ON: &str = "replicas=2,leaderElection.enabled=true,admin.enabled=true,metrics.serviceMonitor.enabled=true,\
networkPolicy.enabled=true,networkPolicy.apiServer.cidrs={10.0.0.1/32},watchNamespace=shop,ca.existingSecret=corp-ca,\
policy.denyWildcards=true,policy.denyIpSans=true,probes.podCIDRs={10.244.0.0/16},podAnnotations.a=b,nodeSelector.kubernetes\\.io/os=linux,priorityClassName=high";

#[test]
fn the_chart_passes_helm_lint_strict_with_defaults_and_with_every_option_on() {
    let chart = chart();
    for sets in [vec![], vec!["--set", EVERYTHING_ON]] {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        args.extend(sets.iter().copied());
        let out = succeed(offline_helm(&args), &format!("helm lint --strict {sets:?}"));
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{out}"
        );
    }
    let docs = render(&[EVERYTHING_ON]);
    for kind in [
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceMonitor",
        "NetworkPolicy",
    ] {
        assert!(
            !objects(&docs, kind).is_empty(),
            "every option on renders a {kind}"
        );
    }
}

#[test]
fn the_schema_rejects_bad_values_naming_the_key_and_the_rule() {
    let chart = chart();
    let cases = [
        (
            "logFormat=xml",
            "at '/logFormat': value must be one of 'text', 'json'",
        ),
        ("replicas=0", "at '/replicas': minimum: got 0, want 1"),
        (
            "policy.maxDuration=90d",
            "at '/policy/maxDuration': '90d' does not match pattern",
        ),
        (
            "ca.duration=10y",
            "at '/ca/duration': '10y' does not match pattern",
        ),
        (
            "ca.keyAlgorithm=DSA",
            "at '/ca/keyAlgorithm': value must be one of 'ECDSA-P256'",
        ),
        (
            "concurrency=fast",
            "at '/concurrency': got string, want integer",
        ),
        (
            "logLevel=verbose",
            "at '/logLevel': 'verbose' does not match pattern",
        ),
        ("watchNamespace=Shop", "at '/watchNamespace'"),
        ("imagee.tag=x", "additional properties 'imagee' not allowed"),
        (
            "image.tagg=x",
            "at '/image': additional properties 'tagg' not allowed",
        ),
        (
            "policy.denyWildcard=true",
            "at '/policy': additional properties 'denyWildcard' not allowed",
        ),
    ];
    for (set, message) in cases {
        let out = offline_helm(&["template", RELEASE, &chart, "--set", set]);
        let t = text(&out);
        assert!(!out.status.success(), "--set {set} must be rejected");
        assert!(
            t.contains("values don't meet the specifications of the schema"),
            "--set {set}: {t}"
        );
        assert!(
            t.contains(message),
            "--set {set} should say {message:?}, said: {t}"
        );
    }
}

#[test]
fn combinations_the_schema_cannot_express_fail_with_what_to_change() {
    let chart = chart();
    let cases = [
        (
            "replicas=3",
            "replicas is 3 but leaderElection.enabled is false",
        ),
        (
            "admin.enabled=false,metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.enabled needs admin.enabled=true",
        ),
        (
            "serviceAccount.create=false",
            "serviceAccount.name is required when serviceAccount.create is false",
        ),
    ];
    for (set, message) in cases {
        let out = offline_helm(&["template", RELEASE, &chart, "--set", set]);
        assert!(
            !out.status.success() && text(&out).contains(message),
            "--set {set} should fail with {message:?}: {}",
            text(&out)
        );
    }
}

#[test]
fn the_charts_crds_are_byte_copies_of_the_generated_crds() {
    for plural in p12_operator::api::CRDS {
        let generated =
            std::fs::read(repo().join(format!("crds/p12-operator.io_{plural}.yaml"))).unwrap();
        let in_chart =
            std::fs::read(repo().join(format!("charts/p12-operator/crds/{plural}.yaml"))).unwrap();
        assert!(
            generated == in_chart,
            "charts/p12-operator/crds/{plural}.yaml differs from crds/; regenerate it with:\n  scripts/render-deploy"
        );
    }
}

#[test]
fn the_deploy_manifest_is_a_fresh_render_of_the_chart() {
    let bin = tools::ensure_built().unwrap_or_else(|e| panic!("{e}"));
    let home = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("scripts/render-deploy"))
        .arg("--print")
        .env("HELM", bin.join("helm"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap();
    let fresh = succeed(out, "scripts/render-deploy --print");
    let committed = std::fs::read_to_string(repo().join("deploy/p12-operator.yaml")).unwrap();
    assert!(
        committed == fresh,
        "deploy/p12-operator.yaml is out of date with charts/p12-operator; regenerate it with:\n  scripts/render-deploy"
    );

    let docs: Vec<Value> = serde_saphyr::from_multiple(&committed).unwrap();
    assert_eq!(
        (
            docs[0]["kind"].as_str(),
            docs[0]["metadata"]["name"].as_str()
        ),
        (Some("Namespace"), Some(NAMESPACE))
    );
    assert_eq!(
        docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let crds = p12_operator::api::CRDS.len();
    for d in &docs[1..=crds] {
        assert_eq!(
            d["kind"], "CustomResourceDefinition",
            "the CRDs come right after the Namespace"
        );
    }
    for d in &docs[1 + crds..] {
        let cluster_scoped = matches!(
            d["kind"].as_str(),
            Some("ClusterRole" | "ClusterRoleBinding" | "IssuancePolicy")
        );
        let ns = d["metadata"]["namespace"].as_str();
        assert!(
            cluster_scoped || ns == Some(NAMESPACE),
            "{} {} has namespace {ns:?}",
            d["kind"],
            d["metadata"]["name"]
        );
    }
}

#[test]
fn the_operator_pod_is_hardened_by_default() {
    let d = deployment(&render(&[]));
    let pod = d.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let psc = pod.security_context.clone().expect("a pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(
        psc.seccomp_profile.map(|s| s.type_).as_deref(),
        Some("RuntimeDefault")
    );
    assert_eq!(
        pod.automount_service_account_token,
        Some(true),
        "the operator needs its token for the API"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("p12-operator"));
    assert_eq!(pod.containers.len(), 1);

    let c = &pod.containers[0];
    let sc = c
        .security_context
        .clone()
        .expect("a container securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    let resources = c.resources.clone().expect("resources");
    for (what, set) in [
        ("requests", resources.requests),
        ("limits", resources.limits),
    ] {
        let set = set.unwrap_or_else(|| panic!("resource {what}"));
        assert!(
            set.contains_key("cpu") && set.contains_key("memory"),
            "cpu and memory {what}: {set:?}"
        );
    }

    assert_eq!(
        c.image.as_deref(),
        Some("ghcr.io/p12-operator/p12-operator:0.1.0"),
        "tag defaults to appVersion"
    );
    assert_eq!(c.command.clone().unwrap(), ["/p12-operator"]);
    let env = c.env.clone().unwrap_or_default();
    for (name, field) in [
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_NAME", "metadata.name"),
    ] {
        let var = env
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("env {name}"));
        let path = var
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(path, Some(field), "{name} comes from the downward API");
    }
    let image = env
        .iter()
        .find(|e| e.name == "P12_OPERATOR_IMAGE")
        .and_then(|e| e.value.clone());
    assert_eq!(image, c.image, "probe pods run the operator's own image");
    let strategy = d
        .spec
        .as_ref()
        .unwrap()
        .strategy
        .as_ref()
        .and_then(|s| s.type_.clone());
    assert_eq!(
        strategy.as_deref(),
        Some("Recreate"),
        "without leader election the old pod stops before the new one starts"
    );
}

#[test]
fn the_image_runs_the_binary_the_chart_calls_as_the_user_the_chart_names() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(r#"ENTRYPOINT ["/p12-operator"]"#),
        "the chart's command is the image's entrypoint"
    );
    assert!(
        dockerfile.contains("USER 65532:65532"),
        "the image runs as the chart's runAsUser"
    );
    assert!(
        dockerfile.contains("--bin p12-operator")
            && dockerfile.contains("x86_64-unknown-linux-musl"),
        "a static build"
    );
}

#[test]
fn the_default_rbac_grants_no_wildcards_and_never_deletes_secrets() {
    let docs = render(&[]);
    let rules = rules_of(named(&docs, "ClusterRole", "p12-operator"));
    let probes = named(&docs, "Role", "p12-operator-probes");
    let rotation = named(&docs, "Role", "p12-operator-ca-rotation");
    let mut roles: Vec<(&str, &str)> = objects(&docs, "Role")
        .iter()
        .map(|r| {
            (
                r["metadata"]["name"].as_str().unwrap(),
                r["metadata"]["namespace"].as_str().unwrap(),
            )
        })
        .collect();
    roles.sort();
    assert_eq!(
        roles,
        [
            ("p12-operator-ca-rotation", NAMESPACE),
            ("p12-operator-probes", NAMESPACE)
        ],
        "leader election is off: the Roles are the CA rotation's and the probe pods', in the release namespace"
    );
    // Secrets are deleted only by name: the staged and the retired CA.
    for r in rules_of(rotation) {
        if r.verbs.contains(&"delete".to_string()) {
            assert_eq!(
                r.resource_names.as_deref().unwrap_or_default(),
                ["p12-operator-ca-next", "p12-operator-ca-previous"]
            );
        }
    }
    for r in rules
        .iter()
        .chain(&rules_of(probes))
        .chain(&rules_of(rotation))
    {
        let all = [
            r.api_groups.clone().unwrap_or_default(),
            r.resources.clone().unwrap_or_default(),
            r.verbs.clone(),
        ]
        .concat();
        assert!(!all.iter().any(|x| x.contains('*')), "no wildcards: {r:?}");
    }
    assert_eq!(
        verbs_on(&rules, "", "secrets"),
        ["get", "list", "watch", "create", "update"]
    );
    assert_eq!(
        verbs_on(&rules, "p12-operator.io", "certificaterequests"),
        ["get", "list", "watch"]
    );
    assert_eq!(
        verbs_on(&rules, "p12-operator.io", "certificaterequests/status"),
        ["patch"]
    );
    assert_eq!(
        verbs_on(&rules, "events.k8s.io", "events"),
        ["create", "patch"]
    );
    assert!(
        verbs_on(&rules, "", "pods").is_empty(),
        "no verb on pods cluster-wide"
    );
    assert_eq!(
        verbs_on(&rules_of(probes), "", "pods"),
        ["create", "get", "list", "watch", "delete"],
        "probe pods, in the release namespace only"
    );
    for resource in [
        "namespaces",
        "clusterroles",
        "customresourcedefinitions",
        "nodes",
        "serviceaccounts",
    ] {
        assert!(
            rules.iter().all(|r| !r
                .resources
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|x| x == resource)),
            "nothing on {resource}"
        );
    }
    let binding = named(&docs, "ClusterRoleBinding", "p12-operator");
    assert_eq!(binding["subjects"][0]["name"], "p12-operator");
    assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
}

#[test]
fn without_probes_the_operator_gets_no_verb_on_pods() {
    let docs = render(&["probes.enabled=false"]);
    let rules = rules_of(named(&docs, "ClusterRole", "p12-operator"));
    assert!(verbs_on(&rules, "", "pods").is_empty());
    let roles: Vec<&str> = objects(&docs, "Role")
        .iter()
        .filter_map(|r| r["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        roles,
        ["p12-operator-ca-rotation"],
        "no probe Role (and no Lease Role)"
    );
    assert!(
        verbs_on(&rules, "", "services").is_empty(),
        "no probed Services to read"
    );
    let args = args_of(&deployment(&docs));
    assert!(
        args.contains(&"--disable-probes".to_string())
            && !args.iter().any(|a| a.starts_with("--probe-grace")),
        "{args:?}"
    );
}

#[test]
fn by_default_network_policies_confine_the_operator_and_metrics_need_a_labelled_namespace() {
    let docs = render(&[]);
    let policy = the_one(&docs, "NetworkPolicy");
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1, "{ingress:?}");
    assert_eq!(
        ingress[0]["from"][0]["namespaceSelector"]["matchLabels"]["p12-operator.io/scrape-metrics"],
        "true",
        "metrics only from labelled namespaces: {ingress:?}"
    );
    assert_eq!(ingress[0]["ports"][0]["port"], 8080);
    assert!(
        args_of(&deployment(&docs)).contains(&"--probe-network-policy".to_string()),
        "every probe pod gets its own policy"
    );
    // Opting out leaves no NetworkPolicy and no per-probe policies.
    let docs = render(&["networkPolicy.enabled=false"]);
    assert!(objects(&docs, "NetworkPolicy").is_empty());
    assert!(!args_of(&deployment(&docs)).contains(&"--probe-network-policy".to_string()));
    // metricsFrom=[] opens the admin port to anyone.
    let docs = render(&["networkPolicy.metricsFrom=null"]);
    let ingress = the_one(&docs, "NetworkPolicy")["spec"]["ingress"].clone();
    assert!(ingress[0]["from"].is_null(), "{ingress}");
}

/// One RBAC grant: (kind and name of the role, API group, resource, limited
/// to named objects, verbs in order).
type Grant = (String, String, String, bool, Vec<String>);

/// Every grant of every ClusterRole and Role the chart renders with `sets`.
fn grants(sets: &[&str]) -> std::collections::BTreeSet<Grant> {
    let docs = render(sets);
    let mut out = std::collections::BTreeSet::new();
    for role in objects(&docs, "ClusterRole")
        .into_iter()
        .chain(objects(&docs, "Role"))
    {
        let owner = format!(
            "{} {}",
            role["kind"].as_str().unwrap(),
            role["metadata"]["name"].as_str().unwrap()
        );
        for rule in rules_of(role) {
            for group in rule.api_groups.clone().unwrap_or_default() {
                for resource in rule.resources.clone().unwrap_or_default() {
                    let mut verbs = rule.verbs.clone();
                    verbs.sort();
                    out.insert((
                        owner.clone(),
                        if group.is_empty() {
                            "core".into()
                        } else {
                            group.clone()
                        },
                        resource,
                        rule.resource_names.is_some(),
                        verbs,
                    ));
                }
            }
        }
    }
    out
}

/// The grants docs/security.md lists for `when` (a `--set`, or `default`).
fn documented_grants(when: &str) -> std::collections::BTreeSet<Grant> {
    let doc = std::fs::read_to_string(repo().join("docs/security.md")).unwrap();
    let cell = |s: &str| s.trim().trim_matches('`').to_string();
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            (cells.len() == 8 && cell(cells[1]) == when).then(|| {
                let owner = cell(cells[2]);
                let owner = owner.split(" (").next().unwrap().to_string();
                let resource = cell(cells[4]);
                let mut verbs: Vec<String> = cells[5].split(',').map(cell).collect();
                verbs.sort();
                (
                    owner,
                    cell(cells[3]),
                    resource.split(' ').next().unwrap().to_string(),
                    resource.contains('('),
                    verbs,
                )
            })
        })
        .collect()
}

#[test]
fn docs_security_lists_every_rbac_rule_the_chart_grants() {
    let default = documented_grants("default");
    assert!(!default.is_empty(), "docs/security.md has the RBAC table");
    let rendered = grants(&[]);
    assert_eq!(
        default, rendered,
        "docs/security.md's RBAC table (left) differs from the chart's default rules (right)"
    );
    let with_lease: std::collections::BTreeSet<Grant> = default
        .into_iter()
        .chain(documented_grants("leaderElection.enabled=true"))
        .collect();
    assert_eq!(with_lease, grants(&["leaderElection.enabled=true"]));
    let rollout = documented_grants("rollout.enabled=true");
    assert!(
        !rollout.is_empty(),
        "docs/security.md lists the rollout rules"
    );
    let with_rollout: std::collections::BTreeSet<Grant> = documented_grants("default")
        .into_iter()
        .chain(rollout)
        .collect();
    assert_eq!(with_rollout, grants(&["rollout.enabled=true"]));
}

#[test]
fn rollout_is_off_by_default_and_its_value_passes_the_flag_and_grants_only_workload_get_and_patch()
{
    let docs = render(&[]);
    assert!(!args_of(&deployment(&docs)).contains(&"--enable-rollout".to_string()));
    assert!(
        !grants(&[]).iter().any(|(_, group, ..)| group == "apps"),
        "no workload verb by default"
    );
    let docs = render(&["rollout.enabled=true"]);
    assert!(args_of(&deployment(&docs)).contains(&"--enable-rollout".to_string()));
    let apps: Vec<Grant> = grants(&["rollout.enabled=true"])
        .into_iter()
        .filter(|(_, group, ..)| group == "apps")
        .collect();
    assert_eq!(apps.len(), 3, "{apps:?}");
    for (_, _, resource, by_name, verbs) in &apps {
        assert!(
            ["deployments", "statefulsets", "daemonsets"].contains(&resource.as_str()),
            "{resource}"
        );
        assert!(!by_name);
        assert_eq!(verbs, &["get", "patch"]);
    }
    // With watchNamespace, a Role there instead of a ClusterRole.
    let docs = render(&["rollout.enabled=true", "watchNamespace=shop"]);
    let role = objects(&docs, "Role")
        .into_iter()
        .find(|r| {
            r["metadata"]["name"]
                .as_str()
                .unwrap()
                .ends_with("-rollout")
        })
        .expect("a rollout Role");
    assert_eq!(role["metadata"]["namespace"], "shop");
    assert!(!objects(&docs, "ClusterRole").iter().any(|r| {
        r["metadata"]["name"]
            .as_str()
            .unwrap()
            .ends_with("-rollout")
    }));
}

#[test]
fn pods_and_network_policies_are_granted_only_in_the_release_namespace() {
    for sets in [
        &[][..],
        &["networkPolicy.enabled=false"],
        &["watchNamespace=shop", "networkPolicy.enabled=false"],
        &["leaderElection.enabled=true"],
    ] {
        let docs = render(sets);
        let namespaced: Vec<(String, Vec<PolicyRule>)> = objects(&docs, "Role")
            .into_iter()
            .map(|r| {
                (
                    r["metadata"]["namespace"].as_str().unwrap().to_string(),
                    rules_of(r),
                )
            })
            .collect();
        let cluster: Vec<PolicyRule> = objects(&docs, "ClusterRole")
            .into_iter()
            .flat_map(rules_of)
            .collect();
        let everywhere = std::iter::once((String::from("*cluster*"), cluster)).chain(namespaced);
        let mut granted = Vec::new();
        for (ns, rules) in everywhere {
            for (group, resource) in [("", "pods"), ("networking.k8s.io", "networkpolicies")] {
                let verbs = verbs_on(&rules, group, resource);
                if !verbs.is_empty() {
                    granted.push((ns.clone(), resource, verbs));
                }
            }
        }
        assert!(
            granted.iter().all(|(ns, ..)| ns == NAMESPACE),
            "{sets:?}: {granted:?}"
        );
        assert!(
            granted
                .iter()
                .any(|(_, r, v)| *r == "pods" && v.contains(&"create".to_string())),
            "{sets:?}: probe pods can be created in the release namespace"
        );
        assert_eq!(
            granted.iter().any(|(_, r, _)| *r == "networkpolicies"),
            !sets.contains(&"networkPolicy.enabled=false"),
            "{sets:?}"
        );
    }
    // With watchNamespace, the API server's addresses are read by name only.
    let docs = render(&["watchNamespace=shop"]);
    let addresses = objects(&docs, "Role")
        .into_iter()
        .find(|r| r["metadata"]["namespace"] == "default")
        .expect("a Role in default");
    for rule in rules_of(addresses) {
        assert_eq!(rule.verbs, ["get"]);
        assert_eq!(rule.resource_names.unwrap(), ["kubernetes"]);
    }
}

#[test]
fn pod_cidrs_reach_the_operator_as_one_flag() {
    let none = args_of(&deployment(&render(&[])));
    assert!(
        !none.iter().any(|a| a.starts_with("--pod-cidr")),
        "{none:?}"
    );
    let args = args_of(&deployment(&render(&[
        "probes.podCIDRs={10.244.0.0/16,fd00:10:244::/56}",
    ])));
    assert!(
        args.contains(&"--pod-cidr=10.244.0.0/16,fd00:10:244::/56".to_string()),
        "{args:?}"
    );
}

#[test]
fn admin_endpoints_and_leader_election_follow_their_switches() {
    let container = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .clone()
    };
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };

    // Default: admin endpoints on the pod's address, probed; one replica, no Lease.
    let docs = render(&[]);
    let d = deployment(&docs);
    let args = args_of(&d);
    assert_eq!(args[0], "run");
    assert!(
        args.contains(&"--admin-bind-address=0.0.0.0:8080".to_string())
            && !args.contains(&"--leader-elect".to_string()),
        "{args:?}"
    );
    let c = container(&d);
    assert_eq!(
        (
            path(&c.liveness_probe).as_deref(),
            path(&c.readiness_probe).as_deref()
        ),
        (Some("/livez"), Some("/readyz"))
    );
    assert_eq!(
        the_one(&docs, "Service")["spec"]["ports"][0]["targetPort"],
        "admin"
    );

    // admin.enabled=false: loopback only, so no probes and no Service.
    let docs = render(&["admin.enabled=false"]);
    let d = deployment(&docs);
    assert!(args_of(&d).contains(&"--admin-bind-address=127.0.0.1:8080".to_string()));
    let c = container(&d);
    assert!(c.liveness_probe.is_none() && c.readiness_probe.is_none() && c.ports.is_none());
    assert!(objects(&docs, "Service").is_empty());

    // Leader election: the flag, a rolling update, and a Role for one Lease.
    let docs = render(&["leaderElection.enabled=true,replicas=2"]);
    let d = deployment(&docs);
    assert!(args_of(&d).contains(&"--leader-elect".to_string()));
    assert_eq!(
        d.spec
            .as_ref()
            .unwrap()
            .strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref()),
        Some("RollingUpdate")
    );
    let lease = objects(&docs, "Role")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "p12-operator-leader-election")
        .expect("a Lease Role");
    assert_eq!(lease["metadata"]["namespace"], NAMESPACE);
    let rules = rules_of(lease);
    assert_eq!(
        verbs_on(&rules, "coordination.k8s.io", "leases"),
        ["create", "get", "update"]
    );
    assert!(
        rules
            .iter()
            .any(|r| r.resource_names.as_deref() == Some(&["p12-operator".to_string()][..])),
        "get and update only on the p12-operator Lease"
    );
}

#[test]
fn watch_namespace_swaps_the_cluster_role_for_roles_in_two_namespaces() {
    let default_rules = rules_of(named(&render(&[]), "ClusterRole", "p12-operator"));
    let docs = render(&["watchNamespace=shop"]);
    let cluster_roles: Vec<&str> = objects(&docs, "ClusterRole")
        .iter()
        .filter_map(|r| r["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        cluster_roles,
        ["p12-operator-policy"],
        "only the policy inputs (cluster-scoped) stay cluster-wide"
    );
    let roles = objects(&docs, "Role");
    let watched = roles
        .iter()
        .find(|r| r["metadata"]["namespace"] == "shop" && r["metadata"]["name"] == "p12-operator")
        .expect("a Role in the watched namespace");
    assert_eq!(
        rules_of(watched),
        default_rules,
        "the same rules, namespaced"
    );
    let ca = roles
        .iter()
        .find(|r| r["metadata"]["namespace"] == NAMESPACE)
        .expect("a Role for the CA Secret");
    assert_eq!(ca["rules"][0]["resourceNames"][0], "p12-operator-ca");
    assert!(args_of(&deployment(&docs)).contains(&"--watch-namespace=shop".to_string()));
}

#[test]
fn policy_inputs_are_read_only_and_services_are_read_only_where_requests_are_watched() {
    let read = ["get", "list", "watch"];
    let docs = render(&[]);
    let rules = rules_of(named(&docs, "ClusterRole", "p12-operator-policy"));
    assert_eq!(
        verbs_on(&rules, "p12-operator.io", "issuancepolicies"),
        read
    );
    assert_eq!(verbs_on(&rules, "", "namespaces"), read);
    assert_eq!(verbs_on(&rules, "", "services"), ["list", "watch"]);
    assert_eq!(rules.len(), 3, "nothing else: {rules:?}");
    let binding = named(&docs, "ClusterRoleBinding", "p12-operator-policy");
    assert_eq!(binding["subjects"][0]["name"], "p12-operator");
    let args = args_of(&deployment(&docs));
    for flag in ["--default-policy=true", "--cluster-domain=cluster.local"] {
        assert!(args.contains(&flag.to_string()), "{flag} in {args:?}");
    }

    // Services are not read at all when their existence is not checked.
    let docs = render(&[
        "policy.allowUnknownServices=true",
        "policy.builtinDefault=false",
    ]);
    let rules = rules_of(named(&docs, "ClusterRole", "p12-operator-policy"));
    assert!(verbs_on(&rules, "", "services").is_empty());
    let args = args_of(&deployment(&docs));
    assert!(
        args.contains(&"--allow-unknown-services".to_string())
            && args.contains(&"--default-policy=false".to_string()),
        "{args:?}"
    );

    // With watchNamespace, Services only there.
    let docs = render(&["watchNamespace=shop"]);
    let rules = rules_of(named(&docs, "ClusterRole", "p12-operator-policy"));
    assert!(verbs_on(&rules, "", "services").is_empty());
    let services = named(&docs, "Role", "p12-operator-services");
    assert_eq!(services["metadata"]["namespace"], "shop");
    assert_eq!(
        verbs_on(&rules_of(services), "", "services"),
        ["list", "watch"]
    );
}

#[test]
fn issuance_policies_from_values_are_rendered_as_they_were_given() {
    let values = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        values.path(),
        "policy:\n  issuancePolicies:\n  - name: shop-external\n    spec:\n      namespaces: {selector: {matchLabels: {team: shop}}}\n      allow: {dnsNames: ['*.shop.example.com'], usages: [serverAuth, clientAuth]}\n",
    )
    .unwrap();
    let chart = chart();
    let values_arg = format!("--values={}", values.path().display());
    let yaml = succeed(
        offline_helm(&[
            "template",
            RELEASE,
            chart.as_str(),
            "--namespace",
            NAMESPACE,
            &values_arg,
        ]),
        "helm template with policy.issuancePolicies",
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    let policy = the_one(&docs, "IssuancePolicy");
    assert_eq!(policy["metadata"]["name"], "shop-external");
    let spec: p12_operator::api::IssuancePolicySpec =
        serde_json::from_value(policy["spec"].clone()).expect("a valid IssuancePolicy spec");
    assert_eq!(spec.allow.dns_names, ["*.shop.example.com"]);
    assert_eq!(
        spec.namespaces.selector.unwrap().match_labels.unwrap()["team"],
        "shop"
    );
    assert!(
        objects(&render(&[]), "IssuancePolicy").is_empty(),
        "none by default"
    );
}

// ---------------------------------------------------------------------------
// Installed into the local control plane.
// ---------------------------------------------------------------------------

/// One operator at a time: two would both write the same requests' Secrets.
static ONE_OPERATOR: Mutex<()> = Mutex::new(());

fn one_operator() -> MutexGuard<'static, ()> {
    ONE_OPERATOR.lock().unwrap_or_else(PoisonError::into_inner)
}

fn kubectl(args: &[&str]) -> Output {
    cluster()
        .control_plane()
        .kubectl()
        .args(args)
        .output()
        .unwrap()
}

fn kubectl_command(args: &[&str]) -> Command {
    let mut cmd = cluster().control_plane().kubectl();
    cmd.args(args);
    cmd
}

/// Runs `cmd` with `input` on its stdin.
fn piped(cmd: &mut Command, input: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn helm(args: &[&str]) -> Output {
    cluster()
        .control_plane()
        .helm()
        .args(args)
        .output()
        .unwrap()
}

/// The operator's namespace, labelled like deploy/ labels it: pods must meet
/// the restricted Pod Security Standard.
fn prepare_namespace() {
    let out = kubectl(&["create", "namespace", NAMESPACE]);
    assert!(
        out.status.success() || text(&out).contains("AlreadyExists"),
        "{}",
        text(&out)
    );
    succeed(
        kubectl(&[
            "label",
            "namespace",
            NAMESPACE,
            "pod-security.kubernetes.io/enforce=restricted",
            "--overwrite",
        ]),
        "labelling the namespace",
    );
}

/// The admin port of installed operators. The local pod runner runs pods in the
/// host's network, so a fixed port (8080) could be taken on a test machine.
fn admin_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        std::net::TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

/// `GET path` on the operator's admin port: the status code and the body.
fn admin_get(path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", admin_port())).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, response))
}

/// An installation; removed when dropped (also when the test panics), so the
/// next test starts with no operator running.
struct Installed {
    helm_release: bool,
    removed: bool,
}

impl Installed {
    fn helm(sets: &[&str]) -> Installed {
        prepare_namespace();
        let chart = chart();
        let port = format!("admin.port={}", admin_port());
        let mut args = vec![
            "install",
            RELEASE,
            chart.as_str(),
            "--namespace",
            NAMESPACE,
            "--set",
            &port,
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        let notes = succeed(helm(&args), "helm install");
        assert!(
            notes.contains("kind: CertificateRequest"),
            "NOTES tell what to apply next: {notes}"
        );
        Installed {
            helm_release: true,
            removed: false,
        }
    }

    /// `kubectl apply --server-side -f deploy/p12-operator.yaml`, with the admin
    /// port moved to [`admin_port`] (the only change).
    fn manifests() -> Installed {
        let manifest = std::fs::read_to_string(repo().join("deploy/p12-operator.yaml")).unwrap();
        let default = "--admin-bind-address=0.0.0.0:8080";
        assert_eq!(
            manifest.matches(default).count(),
            1,
            "deploy/ binds the admin port once"
        );
        let manifest = manifest.replace(
            default,
            &format!("--admin-bind-address=0.0.0.0:{}", admin_port()),
        );
        let mut apply = kubectl_command(&["apply", "--server-side", "-f", "-"]);
        succeed(
            piped(&mut apply, &manifest),
            "kubectl apply -f deploy/p12-operator.yaml",
        );
        Installed {
            helm_release: false,
            removed: false,
        }
    }

    /// `helm uninstall`, or the labelled delete docs/install.md gives for deploy/.
    fn remove(&mut self) -> Output {
        self.removed = true;
        if self.helm_release {
            helm(&[
                "uninstall",
                RELEASE,
                "--namespace",
                NAMESPACE,
                "--ignore-not-found",
            ])
        } else {
            let file = repo()
                .join("deploy/p12-operator.yaml")
                .display()
                .to_string();
            kubectl(&[
                "delete",
                "-f",
                &file,
                "-l",
                "app.kubernetes.io/name=p12-operator",
                "--ignore-not-found",
            ])
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.remove();
        }
        for _ in 0..300 {
            if operator_processes(None).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Processes the local pod runner started for pods of the operator's namespace
/// on this test binary's control plane (optionally: of one pod).
fn operator_processes(pod: Option<&str>) -> Vec<u32> {
    let port = format!("KUBERNETES_SERVICE_PORT={}", cluster().control_plane().port);
    let ns = format!("POD_NAMESPACE={NAMESPACE}");
    let name = pod.map(|p| format!("POD_NAME={p}"));
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let vars: Vec<String> = env
                .split(|b| *b == 0)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            vars.contains(&port)
                && vars.contains(&ns)
                && name.as_ref().is_none_or(|n| vars.contains(n))
        })
        .collect()
}

/// The one running operator pod whose args satisfy `want`.
async fn operator_pod(client: &Client, want: impl Fn(&[String]) -> bool) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let lp = ListParams::default()
        .labels("app.kubernetes.io/name=p12-operator,app.kubernetes.io/component=controller");
    let what = format!(
        "one running operator pod in {NAMESPACE} (if none: kubectl -n {NAMESPACE} describe replicaset)"
    );
    eventually(WAIT, &what, || {
        let (pods, lp) = (pods.clone(), lp.clone());
        let want = &want;
        async move {
            let list = pods.list(&lp).await.ok()?.items;
            let [pod] = list.as_slice() else { return None };
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let args = pod.spec.as_ref()?.containers[0]
                .args
                .clone()
                .unwrap_or_default();
            (running && pod.metadata.deletion_timestamp.is_none() && want(&args))
                .then(|| pod.clone())
        }
    })
    .await
}

fn operator_log(pod: &Pod) -> String {
    let path = cluster()
        .work_dir
        .join("pods")
        .join(format!("{NAMESPACE}_{}", pod.name_any()))
        .join("operator.log");
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A Service `name` in `ns` and a request for its name, which the built-in
/// default policy allows (the operator reads Services with the chart's RBAC).
fn request(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 443}}]\n---\napiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata:\n  name: {name}\nspec:\n  secretName: {name}-tls\n  dnsNames: [{name}.{ns}.svc]\n"
    )
}

fn apply(ns: &str, yaml: &str) {
    let out = kubectl_apply(yaml, ns);
    assert!(out.status.success(), "kubectl apply failed: {}", text(&out));
}

fn is_ready(cr: &CertificateRequest) -> bool {
    let Some(status) = &cr.status else {
        return false;
    };
    status.conditions.iter().any(|c| {
        c.type_ == "Ready" && c.status == "True" && c.observed_generation == cr.metadata.generation
    })
}

/// Waits until the request is Ready for its current generation.
async fn ready(client: &Client, ns: &str, name: &str) -> CertificateRequest {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, &format!("{ns}/{name} to be Ready"), || {
        let api = api.clone();
        async move { api.get(name).await.ok().filter(is_ready) }
    })
    .await
}

fn serial(cr: &CertificateRequest) -> String {
    cr.status
        .as_ref()
        .and_then(|s| s.serial_number.clone())
        .expect("a Ready request has a serial")
}

/// Whether the operator's ServiceAccount may `verb` `resource` in `ns`, per the API server.
fn service_account_can(verb: &str, resource: &str, ns: &str) -> bool {
    let out = kubectl(&[
        "auth",
        "can-i",
        verb,
        resource,
        "--as",
        SERVICE_ACCOUNT,
        "-n",
        ns,
    ]);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// Names of the objects of `kind`, in any namespace, labelled as this chart's.
fn chart_objects(kind: &str) -> Vec<String> {
    let args = [
        "get",
        kind,
        "--all-namespaces",
        "-l",
        "app.kubernetes.io/name=p12-operator",
        "-o",
        "name",
    ];
    succeed(kubectl(&args), &format!("kubectl get {kind}"))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Nothing of the installation is left: workload, pods, processes, RBAC, Services.
async fn assert_no_orphans() {
    eventually(
        WAIT,
        "every object and process of the installation to be gone",
        || async {
            let kinds = [
                "deployments",
                "replicasets",
                "pods",
                "serviceaccounts",
                "services",
                "roles",
                "rolebindings",
                "clusterroles",
                "clusterrolebindings",
            ];
            let mut left: Vec<String> = kinds.iter().flat_map(|k| chart_objects(k)).collect();
            left.extend(
                operator_processes(None)
                    .iter()
                    .map(|p| format!("process {p}")),
            );
            left.is_empty().then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn helm_install_issues_with_only_the_charts_rbac_and_upgrade_and_uninstall_leave_no_orphans()
{
    let _one = one_operator();
    let client = cluster().client().await.unwrap();
    let mut install = Installed::helm(&[]);
    let first = operator_pod(&client, |_| true).await;
    assert_eq!(
        first.spec.as_ref().unwrap().service_account_name.as_deref(),
        Some("p12-operator")
    );

    let shop = cluster().namespace(&client, "chart-helm").await.unwrap();
    assert!(
        service_account_can("create", "secrets", &shop)
            && !service_account_can("delete", "secrets", &shop)
    );
    assert!(
        service_account_can("create", "pods", NAMESPACE)
            && !service_account_can("create", "pods", &shop)
            && !service_account_can("create", "pods", "kube-system")
            && !service_account_can("delete", "pods", &shop),
        "probe pods may be created in the release namespace only"
    );
    for (verb, resource) in [
        ("list", "issuancepolicies.p12-operator.io"),
        ("watch", "namespaces"),
        ("list", "services"),
    ] {
        assert!(
            service_account_can(verb, resource, &shop),
            "{verb} {resource}"
        );
    }
    for (verb, resource) in [
        ("create", "issuancepolicies.p12-operator.io"),
        ("update", "issuancepolicies.p12-operator.io"),
        ("create", "namespaces"),
        ("patch", "namespaces"),
        ("create", "services"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
    ] {
        assert!(
            !service_account_can(verb, resource, &shop),
            "the operator may not {verb} {resource}"
        );
    }
    apply(&shop, &request(&shop, "web"));
    let web = ready(&client, &shop, "web").await;
    let secret = Api::<Secret>::namespaced(client.clone(), &shop)
        .get("web-tls")
        .await
        .unwrap();
    assert!(secret.data.as_ref().unwrap().contains_key("keystore.p12"));
    assert_eq!(secret.owner_references()[0].uid, web.uid().unwrap());
    assert!(
        Api::<Secret>::namespaced(client.clone(), NAMESPACE)
            .get_opt("p12-operator-ca")
            .await
            .unwrap()
            .is_some(),
        "the CA Secret"
    );

    // The probes the chart declares answer on the admin port.
    for path in ["/livez", "/readyz"] {
        let what = format!("{path} on the admin port to answer 200");
        let (_, body) = eventually(WAIT, &what, || async {
            admin_get(path).filter(|(code, _)| *code == 200)
        })
        .await;
        assert!(body.contains("ok"), "{path}: {body}");
    }

    // An upgrade replaces the pod (Recreate: the old one stops first); the new
    // one carries the new flag, keeps the CA and does not re-issue.
    let chart = chart();
    succeed(
        helm(&[
            "upgrade",
            RELEASE,
            &chart,
            "--namespace",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "logLevel=debug",
        ]),
        "helm upgrade",
    );
    let second = operator_pod(&client, |args| {
        args.iter().any(|a| a == "--log-level=debug")
    })
    .await;
    assert_ne!(first.name_any(), second.name_any());
    eventually(WAIT, "the old operator process to stop", || async {
        operator_processes(Some(&first.name_any()))
            .is_empty()
            .then_some(())
    })
    .await;
    apply(&shop, &request(&shop, "api"));
    ready(&client, &shop, "api").await;
    let crs: Api<CertificateRequest> = Api::namespaced(client.clone(), &shop);
    assert_eq!(
        serial(&crs.get("web").await.unwrap()),
        serial(&web),
        "the upgrade did not re-issue"
    );
    assert!(
        operator_log(&second).contains("DEBUG"),
        "the new pod logs at debug level"
    );

    // Uninstall removes everything the chart made ...
    succeed(install.remove(), "helm uninstall");
    assert_no_orphans().await;
    // ... and keeps what users own: the CRD, requests, their Secrets, the CA.
    succeed(
        kubectl(&["get", "crd", "certificaterequests.p12-operator.io"]),
        "the CRD outlives the release",
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &shop);
    let kept = secrets.get("web-tls").await.unwrap();
    assert_eq!(
        kept.annotations().get("p12-operator.io/serial"),
        secret.annotations().get("p12-operator.io/serial")
    );
    assert!(
        Api::<Secret>::namespaced(client.clone(), NAMESPACE)
            .get_opt("p12-operator-ca")
            .await
            .unwrap()
            .is_some(),
        "the CA is kept"
    );
    // A request's Secret lives until the request is deleted (garbage collector, no operator needed).
    crs.delete("web", &DeleteParams::default()).await.unwrap();
    eventually(WAIT, "web-tls to be deleted with its request", || {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt("web-tls")
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn without_create_on_secrets_issuance_fails_with_a_forbidden_error_and_recovers_when_restored()
 {
    let _one = one_operator();
    let client = cluster().client().await.unwrap();
    let _install = Installed::helm(&[]);
    let pod = operator_pod(&client, |_| true).await;
    let shop = cluster().namespace(&client, "chart-rbac").await.unwrap();
    apply(&shop, &request(&shop, "before"));
    ready(&client, &shop, "before").await;

    // Drop `create` from the ClusterRole's Secret rule.
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let original = roles.get(RELEASE).await.unwrap().rules.unwrap();
    let mut cut = roles.get(RELEASE).await.unwrap();
    for rule in cut.rules.as_mut().unwrap() {
        if rule
            .resources
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|r| r == "secrets")
        {
            rule.verbs.retain(|v| v != "create");
        }
    }
    roles
        .replace(RELEASE, &PostParams::default(), &cut)
        .await
        .unwrap();
    eventually(WAIT, "the API server to apply the cut rule", || async {
        (!service_account_can("create", "secrets", &shop)).then_some(())
    })
    .await;

    apply(&shop, &request(&shop, "after"));
    let forbidden = format!(r#"User "{SERVICE_ACCOUNT}" cannot create resource "secrets""#);
    let line = eventually(WAIT, "the operator to log the forbidden create", || {
        let log = operator_log(&pod);
        let line = log
            .lines()
            .find(|l| l.contains(&forbidden) && l.contains("after"))
            .map(str::to_string);
        async move { line }
    })
    .await;
    assert!(
        line.contains("WARN") && line.contains("Forbidden"),
        "a warning with its reason: {line}"
    );
    // The request itself says what is wrong, as a condition a user sees in kubectl.
    let crs_api: Api<CertificateRequest> = Api::namespaced(client.clone(), &shop);
    let message = eventually(WAIT, "the request to report Forbidden", || {
        let crs_api = crs_api.clone();
        async move {
            let cr = crs_api.get("after").await.ok()?;
            let c = cr
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (c.status == "False" && c.reason == "Forbidden").then_some(c.message)
        }
    })
    .await;
    assert!(
        message.contains("cannot create resource \"secrets\"") && message.contains("RBAC"),
        "{message}"
    );
    let crs: Api<CertificateRequest> = Api::namespaced(client.clone(), &shop);
    assert!(
        !is_ready(&crs.get("after").await.unwrap()),
        "nothing was issued"
    );
    assert!(
        Api::<Secret>::namespaced(client.clone(), &shop)
            .get_opt("after-tls")
            .await
            .unwrap()
            .is_none()
    );

    // Restoring the rule lets the same request through, without a restart.
    let mut restored = roles.get(RELEASE).await.unwrap();
    restored.rules = Some(original);
    roles
        .replace(RELEASE, &PostParams::default(), &restored)
        .await
        .unwrap();
    eventually(
        WAIT,
        "the API server to apply the restored rule",
        || async { service_account_can("create", "secrets", &shop).then_some(()) },
    )
    .await;
    // Touch the request so it is retried now rather than after its back-off.
    let touch = serde_json::json!({"metadata": {"labels": {"touched": "yes"}}});
    crs.patch("after", &PatchParams::default(), &Patch::Merge(touch))
        .await
        .unwrap();
    ready(&client, &shop, "after").await;
    assert_eq!(
        operator_pod(&client, |_| true).await.name_any(),
        pod.name_any(),
        "the same pod recovered"
    );
}

#[tokio::test]
async fn kubectl_apply_of_the_deploy_manifest_issues_and_its_labelled_delete_leaves_no_orphans() {
    let _one = one_operator();
    let client = cluster().client().await.unwrap();
    let mut install = Installed::manifests();
    operator_pod(&client, |_| true).await;
    let shop = cluster().namespace(&client, "chart-deploy").await.unwrap();
    apply(&shop, &request(&shop, "web"));
    ready(&client, &shop, "web").await;

    let out = install.remove();
    succeed(
        out,
        "kubectl delete -f deploy/p12-operator.yaml -l app.kubernetes.io/name=p12-operator",
    );
    assert_no_orphans().await;
    succeed(
        kubectl(&["get", "crd", "certificaterequests.p12-operator.io"]),
        "the CRD is kept",
    );
    succeed(
        kubectl(&["get", "namespace", NAMESPACE]),
        "the namespace is kept",
    );
    assert!(
        Api::<Secret>::namespaced(client.clone(), &shop)
            .get_opt("web-tls")
            .await
            .unwrap()
            .is_some(),
        "issued Secrets are kept"
    );
}

#[tokio::test]
async fn with_watch_namespace_and_leader_election_the_operator_issues_with_namespaced_roles_only() {
    let _one = one_operator();
    let client = cluster().client().await.unwrap();
    let shop = cluster().namespace(&client, "chart-watch").await.unwrap();
    let watch = format!("watchNamespace={shop}");
    let mut install = Installed::helm(&[&watch, "leaderElection.enabled=true"]);
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt(RELEASE)
            .await
            .unwrap()
            .is_none(),
        "no ClusterRole"
    );
    assert!(
        !service_account_can("list", "secrets", "default"),
        "no access outside the watched namespace"
    );
    let pod = operator_pod(&client, |args| {
        args.contains(&format!("--watch-namespace={shop}"))
    })
    .await;
    apply(&shop, &request(&shop, "web"));
    ready(&client, &shop, "web").await;
    // It issued as the leader, holding the Lease under its pod name (POD_NAME).
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let holder = leases
        .get("p12-operator")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity);
    assert_eq!(holder, Some(pod.name_any()));

    succeed(install.remove(), "helm uninstall");
    assert_no_orphans().await;
}
