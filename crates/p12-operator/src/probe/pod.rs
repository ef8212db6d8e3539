//! The probe Pod: a short-lived, hardened pod running `p12-operator probe`
//! against a Service's endpoints. Pure: builds the object, does no I/O.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::api::CertificateRequest;
use crate::bundle::{MANAGED_BY, MANAGED_BY_LABEL, REQUEST_LABEL};

pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const COMPONENT: &str = "probe";
/// Names the one probe pod a NetworkPolicy selects.
pub const POD_LABEL: &str = "p12-operator.io/probe-pod";
/// The namespace of the request a probe pod works for.
pub const REQUEST_NAMESPACE_LABEL: &str = "p12-operator.io/request-namespace";
/// The uid of the request a probe pod works for: a request deleted and
/// created again under the same name does not inherit its pods.
pub const REQUEST_UID_LABEL: &str = "p12-operator.io/request-uid";
/// `<namespace>/<name>` of the request a probe pod works for (names may be
/// longer than a label value).
pub const REQUEST_ANNOTATION: &str = "p12-operator.io/request";
/// At most this many endpoints per probe pod: the results travel back in the
/// container's termination message, which Kubernetes caps at 4 KiB. More
/// endpoints are probed in batches, one pod after another.
pub const MAX_ENDPOINTS: usize = 8;
/// Batches alternate between this many pod names, so the next batch need not
/// wait for the previous pod to be gone; a request never has more probe pods.
pub const SLOTS: usize = 2;
/// Random bytes of a probe pod's nonce.
pub const NONCE_BYTES: usize = 16;

/// What goes into a probe pod.
pub struct ProbePod<'a> {
    pub request: &'a CertificateRequest,
    /// The operator's own namespace: probe pods run there, never in the
    /// request's namespace.
    pub namespace: &'a str,
    /// One of the request's [`slot_names`].
    pub name: &'a str,
    pub image: &'a str,
    pub endpoints: &'a [SocketAddr],
    /// SNI and verified host name, `<service>.<namespace>.svc`.
    pub server_name: &'a str,
    pub ca_pem: &'a str,
    pub expect_fingerprint: &'a str,
    pub handshake_timeout: Duration,
    /// The secret the pod's report must echo ([`new_nonce`]).
    pub nonce: &'a str,
}

/// A fresh per-probe secret: 16 random bytes, hex. It sits in the pod spec,
/// readable by whoever may read pods of the operator's namespace (the
/// operator and cluster administrators, never tenants), and proves that a
/// report came from the pod the operator created, not from whoever could
/// write a termination message under that pod's name.
pub fn new_nonce() -> String {
    hex::encode(rand::random::<[u8; NONCE_BYTES]>())
}

/// The first of a request's pod names. All probe pods share the operator's
/// namespace, so the name carries the request's namespace and a digest of
/// namespace, name and uid: `web` in `a` and `web` in `b` never collide.
pub fn pod_name(request: &CertificateRequest) -> String {
    let (ns, name) = (request.namespace().unwrap_or_default(), request.name_any());
    let uid = request.uid().unwrap_or_default();
    let digest = hex::encode(&Sha256::digest(format!("{ns}/{name}/{uid}").as_bytes())[..5]);
    let prefix: String = format!("{ns}-{name}")
        .replace('.', "-")
        .chars()
        .take(63 - "-probe2-".len() - digest.len())
        .collect();
    format!("{}-probe-{digest}", prefix.trim_end_matches('-'))
}

/// The names a request's probe pods can have: one per slot, so the API server
/// itself guarantees at most [`SLOTS`] at a time.
pub fn slot_names(request: &CertificateRequest) -> [String; SLOTS] {
    let first = pod_name(request);
    let second = match first.rsplit_once("-probe-") {
        Some((prefix, digest)) => format!("{prefix}-probe2-{digest}"),
        None => format!("{first}2"),
    };
    [first, second]
}

/// The request (`namespace`, `name`, `uid`) a probe pod or its NetworkPolicy
/// says it works for; `None` for an object that does not say.
pub fn request_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(String, String, String)> {
    let (ns, name) = meta
        .annotations
        .as_ref()?
        .get(REQUEST_ANNOTATION)?
        .split_once('/')?;
    let uid = meta.labels.as_ref()?.get(REQUEST_UID_LABEL)?;
    Some((ns.to_string(), name.to_string(), uid.clone()))
}

/// How long the pod may run: every endpoint's connect and handshake, plus start-up.
pub fn deadline(handshake_timeout: Duration) -> Duration {
    handshake_timeout * 2 + Duration::from_secs(30)
}

/// Labels and annotations of a probe pod and its NetworkPolicy.
fn metadata(request: &CertificateRequest, namespace: &str, name: &str) -> serde_json::Value {
    let (req_ns, req_name) = (request.namespace().unwrap_or_default(), request.name_any());
    let mut labels = serde_json::json!({
        MANAGED_BY_LABEL: MANAGED_BY,
        COMPONENT_LABEL: COMPONENT,
        POD_LABEL: name,
        REQUEST_NAMESPACE_LABEL: req_ns,
        REQUEST_UID_LABEL: request.uid().unwrap_or_default(),
    });
    // A request name longer than a label value is in the annotation only.
    if req_name.len() <= 63 {
        labels[REQUEST_LABEL] = req_name.clone().into();
    }
    serde_json::json!({
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "annotations": {REQUEST_ANNOTATION: format!("{req_ns}/{req_name}")},
    })
}

/// A NetworkPolicy that lets the probe pod reach exactly the endpoints it
/// probes (TCP to each `ip/32` on its port) and nothing else, not even DNS; no
/// ingress at all. It selects the one pod by its own name label, which only
/// the operator can set: pods of the operator's namespace are created by the
/// operator alone. Deleted with the pod.
pub fn network_policy(
    request: &CertificateRequest,
    namespace: &str,
    name: &str,
    endpoints: &[SocketAddr],
) -> k8s_openapi::api::networking::v1::NetworkPolicy {
    let egress: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|e| {
            let cidr = match e.ip() {
                std::net::IpAddr::V4(ip) => format!("{ip}/32"),
                std::net::IpAddr::V6(ip) => format!("{ip}/128"),
            };
            serde_json::json!({"to": [{"ipBlock": {"cidr": cidr}}], "ports": [{"protocol": "TCP", "port": e.port()}]})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(request, namespace, name),
        "spec": {
            "podSelector": {"matchLabels": {
                POD_LABEL: name,
                COMPONENT_LABEL: COMPONENT,
                MANAGED_BY_LABEL: MANAGED_BY,
            }},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }))
    .expect("the probe network policy template is valid")
}

impl ProbePod<'_> {
    pub fn build(&self) -> Pod {
        let cr = self.request;
        let mut args: Vec<String> = vec![
            "probe".into(),
            "--server-name".into(),
            self.server_name.into(),
        ];
        for e in self.endpoints {
            args.push("--endpoint".into());
            args.push(e.to_string());
        }
        args.push("--handshake-timeout".into());
        args.push(crate::duration::format(self.handshake_timeout));
        args.push("--connect-timeout".into());
        args.push(crate::duration::format(
            self.handshake_timeout.min(Duration::from_secs(5)),
        ));
        // No ownerReference: the request lives in another namespace. The
        // operator deletes the pod once its report is read, and sweeps pods
        // whose request is gone (`request_of`).
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata(cr, self.namespace, self.name),
            "spec": {
                "restartPolicy": "Never",
                "activeDeadlineSeconds": deadline(self.handshake_timeout).as_secs(),
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "terminationGracePeriodSeconds": 1,
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "runAsGroup": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [{
                    "name": "probe",
                    "image": self.image,
                    "command": ["/p12-operator"],
                    "args": args,
                    "env": [
                        {"name": "P12_PROBE_CA_PEM", "value": self.ca_pem},
                        {"name": "P12_PROBE_EXPECT_FINGERPRINT", "value": self.expect_fingerprint},
                        {"name": "P12_PROBE_NONCE", "value": self.nonce},
                        {"name": "P12_LOG_LEVEL", "value": "warn"},
                    ],
                    "terminationMessagePolicy": "File",
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "runAsNonRoot": true,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "16Mi"},
                        "limits": {"cpu": "100m", "memory": "32Mi"},
                    },
                }],
            },
        }))
        .expect("the probe pod template is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CertificateRequestSpec;

    fn request_in(ns: &str, name: &str, uid: &str) -> CertificateRequest {
        let spec: CertificateRequestSpec =
            serde_saphyr::from_str("secretName: s\ndnsNames: [a.b]\n").unwrap();
        let mut cr = CertificateRequest::new(name, spec);
        cr.metadata.namespace = Some(ns.into());
        cr.metadata.uid = Some(uid.into());
        cr
    }

    fn request(name: &str) -> CertificateRequest {
        request_in("shop", name, "1234")
    }

    fn probe_pod(cr: &CertificateRequest) -> Pod {
        let eps: Vec<SocketAddr> = vec!["10.0.0.7:8443".parse().unwrap()];
        ProbePod {
            request: cr,
            namespace: "p12-system",
            name: &pod_name(cr),
            image: "ghcr.io/p12-operator/p12-operator:0.1.0",
            endpoints: &eps,
            server_name: "web.shop.svc",
            ca_pem: "PEM",
            expect_fingerprint: "ab",
            handshake_timeout: Duration::from_secs(10),
            nonce: "00ff",
        }
        .build()
    }

    #[test]
    fn the_probe_pod_is_hardened_and_self_contained() {
        let pod = probe_pod(&request("web"));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.active_deadline_seconds, Some(50));
        assert!(spec.volumes.is_none());
        let c = &spec.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert!(c.resources.as_ref().unwrap().limits.is_some());
        let args = c.args.clone().unwrap();
        assert!(
            args.windows(2)
                .any(|w| w == ["--endpoint", "10.0.0.7:8443"])
        );
        let env = c.env.clone().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "P12_PROBE_NONCE" && e.value.as_deref() == Some("00ff")),
            "the nonce travels in the environment, not on the command line"
        );
        assert!(!args.iter().any(|a| a.contains("00ff")));
    }

    #[test]
    fn the_probe_pod_lives_in_the_operators_namespace_labelled_with_its_request() {
        let cr = request_in("shop", "web", "1234");
        let pod = probe_pod(&cr);
        assert_eq!(pod.metadata.namespace.as_deref(), Some("p12-system"));
        assert!(
            pod.metadata.owner_references.is_none(),
            "no owner across namespaces"
        );
        let labels = pod.labels();
        assert_eq!(labels[REQUEST_NAMESPACE_LABEL], "shop");
        assert_eq!(labels[REQUEST_UID_LABEL], "1234");
        assert_eq!(labels[REQUEST_LABEL], "web");
        assert_eq!(labels[POD_LABEL], pod.name_any());
        assert_eq!(
            request_of(&pod.metadata),
            Some(("shop".into(), "web".into(), "1234".into()))
        );
        // A name longer than a label value is in the annotation only.
        let long = request_in("shop", &"x".repeat(100), "1234");
        let pod = probe_pod(&long);
        assert!(!pod.labels().contains_key(REQUEST_LABEL));
        assert_eq!(request_of(&pod.metadata).unwrap().1, "x".repeat(100));
    }

    #[test]
    fn the_network_policy_selects_only_its_own_pod() {
        let cr = request("web");
        let name = pod_name(&cr);
        let eps: Vec<SocketAddr> = vec!["10.0.0.7:8443".parse().unwrap()];
        let policy = network_policy(&cr, "p12-system", &name, &eps);
        assert_eq!(policy.metadata.namespace.as_deref(), Some("p12-system"));
        let selector = policy
            .spec
            .unwrap()
            .pod_selector
            .unwrap()
            .match_labels
            .unwrap();
        assert_eq!(selector[POD_LABEL], name);
        assert_eq!(selector[COMPONENT_LABEL], COMPONENT);
        let other = slot_names(&cr)[1].clone();
        assert_ne!(
            selector[POD_LABEL], other,
            "the other slot's pod is not selected"
        );
    }

    #[test]
    fn pod_names_fit_kubernetes_limits_and_differ_per_request_and_namespace() {
        let long = request(&"x".repeat(253));
        let name = pod_name(&long);
        assert!(name.len() <= 63, "{name}");
        let other = request_in("shop", "web", "5678");
        assert_ne!(pod_name(&request("web")), pod_name(&other));
        // The same name (even the same uid) in two namespaces.
        let (a, b) = (request_in("a", "web", "1"), request_in("b", "web", "1"));
        assert_ne!(slot_names(&a), slot_names(&b));
        assert!(pod_name(&a).starts_with("a-web-probe-"), "{}", pod_name(&a));
    }

    #[test]
    fn the_slot_names_differ_and_fit_kubernetes_limits() {
        for name in [
            "web".to_string(),
            "x".repeat(253),
            format!("{}-y", "x".repeat(46)),
            "a.b.c".to_string(),
        ] {
            let [a, b] = slot_names(&request(&name));
            assert_ne!(a, b);
            assert_eq!(a, pod_name(&request(&name)));
            for n in [&a, &b] {
                assert!(
                    n.len() <= 63 && !n.contains("--") && !n.contains('.'),
                    "{n}"
                );
            }
        }
    }

    #[test]
    fn nonces_are_fresh_and_32_hex_digits() {
        let (a, b) = (new_nonce(), new_nonce());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
