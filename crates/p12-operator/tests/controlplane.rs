//! The local control plane is a real Kubernetes control plane: CRD schemas are
//! enforced, RBAC denies, the garbage collector collects.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::Resource;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use support::{cluster, eventually};

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.testenv.p12-operator.io}
spec:
  group: testenv.p12-operator.io
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
"#;

fn kubectl_apply(yaml: &str, namespace: Option<&str>) -> std::process::Output {
    let cp = cluster().control_plane();
    let file = cp
        .dir
        .join(format!("apply-{:08x}.yaml", rand::random::<u32>()));
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = cp.kubectl();
    cmd.args(["apply", "-f"]).arg(&file);
    if let Some(ns) = namespace {
        cmd.args(["-n", ns]);
    }
    cmd.output().expect("kubectl runs")
}

#[tokio::test]
async fn crd_applied_with_kubectl_is_established_and_its_schema_is_enforced() {
    let out = kubectl_apply(WIDGET_CRD, None);
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wait = cluster()
        .control_plane()
        .kubectl()
        .args([
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/widgets.testenv.p12-operator.io",
        ])
        .output()
        .unwrap();
    assert!(
        wait.status.success(),
        "CRD not established: {}",
        String::from_utf8_lossy(&wait.stderr)
    );

    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "crd").await.unwrap();
    let good = kubectl_apply(
        "apiVersion: testenv.p12-operator.io/v1\nkind: Widget\nmetadata: {name: ok}\nspec: {size: 3}\n",
        Some(&ns),
    );
    assert!(
        good.status.success(),
        "valid widget refused: {}",
        String::from_utf8_lossy(&good.stderr)
    );

    let bad = kubectl_apply(
        "apiVersion: testenv.p12-operator.io/v1\nkind: Widget\nmetadata: {name: big}\nspec: {size: 11}\n",
        Some(&ns),
    );
    assert!(!bad.status.success(), "a widget of size 11 must be refused");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("spec.size") && err.contains("should be less than or equal to 10"),
        "unexpected error: {err}"
    );
}

#[tokio::test]
async fn restricted_identity_is_denied_secrets_until_a_role_grants_them() {
    let admin = cluster().client().await.unwrap();
    let ns = cluster().namespace(&admin, "rbac").await.unwrap();
    let alice = cluster().client_as("alice", &["developers"]).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(alice.clone(), &ns);

    let denied = secrets
        .list(&Default::default())
        .await
        .expect_err("alice has no Role yet");
    match denied {
        kube::Error::Api(s) => assert_eq!(s.code, 403, "expected Forbidden, got {s:?}"),
        other => panic!("expected an API error, got {other}"),
    }

    let role = Role {
        metadata: ObjectMeta {
            name: Some("secret-reader".into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["secrets".into()]),
            verbs: vec!["list".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("alice-reads-secrets".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "secret-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: "alice".into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin, &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "alice to be allowed to list secrets",
        || {
            let secrets = secrets.clone();
            async move { secrets.list(&Default::default()).await.ok() }
        },
    )
    .await;
}

#[tokio::test]
async fn deleting_an_owner_makes_the_garbage_collector_delete_its_dependent() {
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "gc").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let dependent = Secret {
        metadata: ObjectMeta {
            name: Some("dependent".into()),
            owner_references: Some(vec![owner.controller_owner_ref(&()).unwrap()]),
            ..Default::default()
        },
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &dependent)
        .await
        .unwrap();

    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the dependent Secret to be garbage-collected",
        || {
            let secrets = secrets.clone();
            async move { matches!(secrets.get_opt("dependent").await, Ok(None)).then_some(()) }
        },
    )
    .await;
}
