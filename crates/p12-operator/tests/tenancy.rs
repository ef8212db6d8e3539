//! A cluster shared by teams: tenants with their own restricted identities
//! (client certificates) get certificates for their own Services' names and
//! nothing else, unless an IssuancePolicy allows it; every refusal names the
//! field and the value, and no key is generated for a refused request.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use p12_operator::api::CertificateRequest;
use support::{Operator, cluster, eventually, kubectl_apply};

const WAIT: Duration = Duration::from_secs(60);

/// The operator of this binary, under the built-in default policy.
fn operator() -> &'static Operator {
    static OP: std::sync::OnceLock<Operator> = std::sync::OnceLock::new();
    OP.get_or_init(|| {
        support::keep_the_default_policy();
        Operator::start("tenancy", &[])
    })
}

/// A namespace for `team`, its tenant's client (user `<team>-dev`, allowed to
/// manage CertificateRequests and read Secrets there and nothing else) and
/// the admin client.
async fn team(prefix: &str) -> (String, Client, Client) {
    operator();
    let admin = cluster().client().await.unwrap();
    let ns = cluster().namespace(&admin, prefix).await.unwrap();
    let user = format!("{ns}-dev");
    let rbac = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: tenant}}
rules:
- apiGroups: [p12-operator.io]
  resources: [certificaterequests]
  verbs: [create, get, list, watch, update, patch, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: tenant}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: tenant}}
subjects:
- {{kind: User, name: {user}, apiGroup: rbac.authorization.k8s.io}}
"#
    );
    apply(&ns, &rbac);
    let tenant = cluster().client_as(&user, &[]).await.unwrap();
    (ns, tenant, admin)
}

fn apply(ns: &str, yaml: &str) {
    let out = kubectl_apply(yaml, ns);
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn service(ns: &str, name: &str) {
    apply(
        ns,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 443, targetPort: 8443}}]\n"
        ),
    );
}

/// Creates a request as `client` (the tenant), from a spec in YAML.
async fn request(client: &Client, ns: &str, name: &str, spec: &str) {
    let cr: CertificateRequest = serde_saphyr::from_str(&format!(
        "apiVersion: p12-operator.io/v1alpha1\nkind: CertificateRequest\nmetadata: {{name: {name}}}\nspec:\n  secretName: {name}-tls\n{spec}"
    ))
    .unwrap();
    Api::<CertificateRequest>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cr)
        .await
        .unwrap_or_else(|e| panic!("the tenant may create {ns}/{name}: {e}"));
}

/// The Ready condition once its reason is one of `reasons`: (status, reason, message).
async fn ready_condition(
    client: &Client,
    ns: &str,
    name: &str,
    reasons: &[&str],
) -> (String, String, String) {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, &format!("{ns}/{name} Ready as {reasons:?}"), || {
        let api = api.clone();
        async move {
            let cr = api.get(name).await.ok()?;
            let c = cr
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            reasons
                .contains(&c.reason.as_str())
                .then_some((c.status, c.reason, c.message))
        }
    })
    .await
}

async fn issued(client: &Client, ns: &str, name: &str) {
    let (status, _, message) = ready_condition(client, ns, name, &["Issued"]).await;
    assert_eq!(status, "True", "{ns}/{name}: {message}");
}

async fn refused(client: &Client, ns: &str, name: &str, field_and_value: &str) -> String {
    let (status, reason, message) =
        ready_condition(client, ns, name, &["Issued", "PolicyViolation"]).await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "PolicyViolation"),
        "{ns}/{name}: {message}"
    );
    assert!(
        message.contains(&format!("{field_and_value} is not allowed")),
        "{ns}/{name} should name {field_and_value}: {message}"
    );
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&format!("{name}-tls"))
        .await
        .unwrap();
    assert!(secret.is_none(), "nothing is written for {ns}/{name}");
    message
}

/// No key pair was generated for `ns/name` (the operator logs each one at debug level).
fn no_key_for(ns: &str, name: &str) {
    let logs = operator().logs();
    let keys_for = logs
        .lines()
        .filter(|l| l.contains("generating a key pair"))
        .filter(|l| l.contains(ns) && l.contains(&format!("request={name} ")))
        .count();
    assert_eq!(keys_for, 0, "a key was generated for refused {ns}/{name}");
    assert!(
        logs.contains("generating a key pair"),
        "the log line this check relies on is written"
    );
}

#[tokio::test]
async fn a_tenant_gets_its_own_services_names_and_nothing_of_another_team_the_api_server_or_the_internet()
 {
    let (a, alice, _) = team("team-a").await;
    let (b, _, _) = team("team-b").await;
    service(&a, "web");
    service(&b, "payments");

    request(
        &alice,
        &a,
        "web",
        &format!("  dnsNames: [web.{a}.svc, web.{a}.svc.cluster.local]\n"),
    )
    .await;
    issued(&alice, &a, "web").await;

    let hostile = [
        (
            "other-team",
            format!("  dnsNames: [payments.{b}.svc]\n"),
            format!(r#"dnsNames[0] "payments.{b}.svc""#),
        ),
        (
            "api-server",
            "  dnsNames: [kubernetes.default.svc]\n".to_string(),
            r#"dnsNames[0] "kubernetes.default.svc""#.to_string(),
        ),
        (
            "wildcard",
            format!("  dnsNames: ['*.{a}.svc']\n"),
            format!(r#"dnsNames[0] "*.{a}.svc""#),
        ),
        (
            "external",
            "  dnsNames: [shop.example.com]\n".to_string(),
            r#"dnsNames[0] "shop.example.com""#.to_string(),
        ),
        (
            "client",
            format!("  dnsNames: [web.{a}.svc]\n  usages: [serverAuth, clientAuth]\n"),
            r#"usages "clientAuth""#.to_string(),
        ),
        (
            "address",
            format!("  dnsNames: [web.{a}.svc]\n  ipAddresses: [10.0.0.1]\n"),
            r#"ipAddresses[0] "10.0.0.1""#.to_string(),
        ),
        (
            "no-service",
            format!("  dnsNames: [ghost.{a}.svc]\n"),
            format!(r#"dnsNames[0] "ghost.{a}.svc""#),
        ),
    ];
    for (name, spec, _) in &hostile {
        request(&alice, &a, name, spec).await;
    }
    for (name, _, field) in &hostile {
        let message = refused(&alice, &a, name, field).await;
        assert!(message.contains("the built-in default policy"), "{message}");
        no_key_for(&a, name);
    }

    // The missing Service appears: the refused request is issued without being touched.
    service(&a, "ghost");
    issued(&alice, &a, "no-service").await;
}

#[tokio::test]
async fn a_policy_for_labelled_namespaces_admits_exactly_its_names_and_follows_the_label() {
    let (shop, tenant, admin) = team("shop").await;
    let policy = format!(
        r#"apiVersion: p12-operator.io/v1alpha1
kind: IssuancePolicy
metadata: {{name: shop-external-{shop}}}
spec:
  namespaces:
    selector: {{matchLabels: {{team: {shop}}}}}
  allow:
    dnsNames: ['*.shop.example.com']
    usages: [serverAuth, clientAuth]
"#
    );
    apply("default", &policy);
    request(
        &tenant,
        &shop,
        "api",
        "  dnsNames: [api.shop.example.com]\n  usages: [serverAuth, clientAuth]\n",
    )
    .await;
    // Not yet: the namespace does not carry the label.
    refused(
        &tenant,
        &shop,
        "api",
        r#"dnsNames[0] "api.shop.example.com""#,
    )
    .await;

    let labelled = serde_json::json!({"metadata": {"labels": {"team": shop}}});
    Api::<Namespace>::all(admin.clone())
        .patch(&shop, &PatchParams::default(), &Patch::Merge(&labelled))
        .await
        .unwrap();
    issued(&tenant, &shop, "api").await;

    request(
        &tenant,
        &shop,
        "deeper",
        "  dnsNames: [a.b.shop.example.com]\n",
    )
    .await;
    let message = refused(
        &tenant,
        &shop,
        "deeper",
        r#"dnsNames[0] "a.b.shop.example.com""#,
    )
    .await;
    assert!(
        message.contains(&format!("IssuancePolicy shop-external-{shop}"))
            && message.contains("*.shop.example.com"),
        "the policies considered are named: {message}"
    );
    no_key_for(&shop, "deeper");

    // A tenant cannot write IssuancePolicies (they are cluster-scoped).
    let own: p12_operator::api::IssuancePolicy = serde_saphyr::from_str(
        "apiVersion: p12-operator.io/v1alpha1\nkind: IssuancePolicy\nmetadata: {name: mine}\nspec: {namespaces: {selector: {}}, allow: {dnsNames: ['**']}}\n",
    )
    .unwrap();
    let err = Api::<p12_operator::api::IssuancePolicy>::all(tenant.clone())
        .create(&PostParams::default(), &own)
        .await
        .expect_err("a tenant may not create an IssuancePolicy");
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 403),
        "{err}"
    );

    // The label goes: the issued certificate stays, but is no longer renewed.
    let unlabelled = serde_json::json!({"metadata": {"labels": {"team": null}}});
    Api::<Namespace>::all(admin.clone())
        .patch(&shop, &PatchParams::default(), &Patch::Merge(&unlabelled))
        .await
        .unwrap();
    let (status, _, message) = ready_condition(&tenant, &shop, "api", &["PolicyViolation"]).await;
    assert_eq!(status, "False");
    assert!(
        message.contains("stays in Secret api-tls until it expires"),
        "{message}"
    );
    let cr = Api::<CertificateRequest>::namespaced(tenant.clone(), &shop)
        .get("api")
        .await
        .unwrap();
    let issued_condition = cr
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Issued")
        .unwrap();
    assert_eq!(issued_condition.status, "True", "{}", cr.name_any());
    assert!(
        Api::<Secret>::namespaced(tenant.clone(), &shop)
            .get_opt("api-tls")
            .await
            .unwrap()
            .is_some(),
        "the Secret is kept"
    );
}

#[tokio::test]
async fn the_examples_are_issued_under_the_built_in_default_and_their_policy() {
    operator();
    let admin = cluster().client().await.unwrap();
    let examples = p12_testenv::tools::repo_root().join("examples");
    for target in [examples.join("namespace.yaml"), examples.clone()] {
        let out = cluster()
            .control_plane()
            .kubectl()
            .arg("apply")
            .arg("-f")
            .arg(&target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl apply -f {}: {}",
            target.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for name in ["web", "legacy-app", "kafka-client"] {
        issued(&admin, "shop", name).await;
    }
}
