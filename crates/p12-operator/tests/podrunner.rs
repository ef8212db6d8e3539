//! The local pod runner plays the kubelet for pods with the operator's image:
//! it runs them, reports exit codes and termination messages, mounts their
//! service-account token, honours deadlines, and stops them when deleted.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use support::{cluster, eventually};

fn pod(name: &str, args: &[&str], extra: serde_json::Value) -> Pod {
    let mut spec = serde_json::json!({
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "ghcr.io/example/p12-operator:dev", "args": args}],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})).unwrap()
}

fn phase(p: &Pod) -> Option<String> {
    p.status.as_ref().and_then(|s| s.phase.clone())
}

async fn wait_phase(api: &Api<Pod>, name: &str, want: &str) -> Pod {
    eventually(
        Duration::from_secs(60),
        &format!("pod {name} to reach {want}"),
        || {
            let api = api.clone();
            async move {
                api.get(name)
                    .await
                    .ok()
                    .filter(|p| phase(p).as_deref() == Some(want))
            }
        },
    )
    .await
}

/// PIDs of processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

#[tokio::test]
async fn exit_code_and_termination_message_reach_the_pod_status() {
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "pods").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let no_token = serde_json::json!({"automountServiceAccountToken": false});

    pods.create(
        &PostParams::default(),
        &pod("ok", &["crd"], no_token.clone()),
    )
    .await
    .unwrap();
    let done = wait_phase(&pods, "ok", "Succeeded").await;
    let term = done.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(
        (term.exit_code, term.reason.as_deref()),
        (0, Some("Completed"))
    );

    // A probe of a closed port fails: exit code 1 and the JSON verdict as the termination message.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let ca = format!("--ca-pem={}", cluster().control_plane().ca_pem);
    let args = [
        "probe",
        "--endpoint",
        closed.as_str(),
        "--server-name",
        "web.shop.svc",
        ca.as_str(),
    ];
    pods.create(&PostParams::default(), &pod("fails", &args, no_token))
        .await
        .unwrap();
    let failed = wait_phase(&pods, "fails", "Failed").await;
    let term = failed.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!((term.exit_code, term.reason.as_deref()), (1, Some("Error")));
    let message = term.message.unwrap_or_default();
    let verdict: serde_json::Value = serde_json::from_str(&message)
        .unwrap_or_else(|e| panic!("termination message is not JSON ({e}): {message}"));
    assert_eq!(verdict["endpoints"][0]["address"], closed.as_str());
    assert_eq!(verdict["endpoints"][0]["reason"], "ConnectionFailed");
}

#[tokio::test]
async fn a_pod_runs_with_its_service_account_token_and_deleting_it_stops_the_process() {
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "token").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let marker = format!("p12-operator-{ns}");
    // `run` without RBAC stays up, retrying, and logs who it is: proof of the mounted token.
    let p = pod(
        "controller",
        &[
            "run",
            "--namespace",
            &marker,
            "--admin-bind-address",
            "127.0.0.1:0",
        ],
        serde_json::json!({"terminationGracePeriodSeconds": 5}),
    );
    pods.create(&PostParams::default(), &p).await.unwrap();
    let running = wait_phase(&pods, "controller", "Running").await;
    let spec = running.spec.unwrap();
    assert!(
        spec.volumes
            .unwrap_or_default()
            .iter()
            .any(|v| v.projected.is_some()),
        "the ServiceAccount admission added a token volume"
    );

    let log_path = cluster()
        .work_dir
        .join("pods")
        .join(format!("{ns}_controller"))
        .join("main.log");
    let who = format!("system:serviceaccount:{ns}:default");
    eventually(
        Duration::from_secs(30),
        "the pod to call the API server as its service account",
        || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let who = who.clone();
            async move { log.contains(&who).then_some(()) }
        },
    )
    .await;
    assert!(
        !processes_with(&marker).is_empty(),
        "the operator process runs on the host"
    );

    pods.delete("controller", &DeleteParams::default())
        .await
        .unwrap();
    let marker2 = marker.clone();
    eventually(
        Duration::from_secs(15),
        "the process to stop after the pod was deleted",
        || {
            let gone = processes_with(&marker2).is_empty();
            async move { gone.then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn active_deadline_fails_the_pod_and_stops_the_process() {
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "deadline").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let marker = format!("p12-operator-{ns}");
    let p = pod(
        "slow",
        &[
            "run",
            "--namespace",
            &marker,
            "--admin-bind-address",
            "127.0.0.1:0",
        ],
        serde_json::json!({"activeDeadlineSeconds": 3, "terminationGracePeriodSeconds": 2}),
    );
    pods.create(&PostParams::default(), &p).await.unwrap();
    let failed = wait_phase(&pods, "slow", "Failed").await;
    assert_eq!(
        failed.status.unwrap().reason.as_deref(),
        Some("DeadlineExceeded")
    );
    assert!(
        processes_with(&marker).is_empty(),
        "the process was stopped at the deadline"
    );
}

#[tokio::test]
async fn pods_with_other_images_are_left_alone() {
    let client = cluster().client().await.unwrap();
    let ns = cluster().namespace(&client, "other").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let mut p = pod(
        "nginx",
        &[],
        serde_json::json!({"automountServiceAccountToken": false}),
    );
    p.spec.as_mut().unwrap().containers[0].image = Some("nginx:1.27".into());
    pods.create(&PostParams::default(), &p).await.unwrap();
    // Give the runner the time it takes to start a pod of ours, several times over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = pods.get("nginx").await.unwrap();
    assert_eq!(phase(&p).as_deref(), Some("Pending"), "no one runs it");
    assert!(p.status.unwrap().container_statuses.is_none());
}
