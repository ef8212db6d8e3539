//! The probe Pod: a short-lived, hardened pod running `p12-operator probe`
//! against a Service's endpoints. Pure: builds the object, does no I/O.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::CertificateRequest;
use crate::bundle::{MANAGED_BY, MANAGED_BY_LABEL, REQUEST_LABEL};

pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const COMPONENT: &str = "probe";
/// Names the one probe pod a NetworkPolicy selects.
pub const POD_LABEL: &str = "p12-operator.io/probe-pod";
/// At most this many endpoints per probe pod: the results travel back in the
/// container's termination message, which Kubernetes caps at 4 KiB. More
/// endpoints are probed in batches, one pod after another.
pub const MAX_ENDPOINTS: usize = 8;
/// Batches alternate between this many pod names, so the next batch need not
/// wait for the previous pod to be gone; a request never has more probe pods.
pub const SLOTS: usize = 2;

/// What goes into a probe pod.
pub struct ProbePod<'a> {
    pub request: &'a CertificateRequest,
    /// One of the request's [`slot_names`].
    pub name: &'a str,
    pub image: &'a str,
    pub endpoints: &'a [SocketAddr],
    /// SNI and verified host name, `<service>.<namespace>.svc`.
    pub server_name: &'a str,
    pub ca_pem: &'a str,
    pub expect_fingerprint: &'a str,
    pub handshake_timeout: Duration,
}

/// The one name a request's probe pod can have, so the API server itself
/// guarantees at most one at a time.
pub fn pod_name(request: &CertificateRequest) -> String {
    let name = request.name_any();
    let digest = hex::encode(&Sha256::digest(request.uid().unwrap_or_default().as_bytes())[..4]);
    let prefix: String = name
        .chars()
        .take(63 - "-probe-".len() - digest.len())
        .collect();
    format!("{}-probe-{digest}", prefix.trim_end_matches(['-', '.']))
}

/// The names a request's probe pods can have: one per slot, so the API server
/// itself guarantees at most [`SLOTS`] at a time.
pub fn slot_names(request: &CertificateRequest) -> [String; SLOTS] {
    let first = pod_name(request);
    // The second name keeps within 63 characters by giving up one of the prefix.
    let second = match first.rsplit_once("-probe-") {
        Some((prefix, digest)) => {
            let prefix: String = prefix
                .chars()
                .take(63 - "-probe2-".len() - digest.len())
                .collect();
            format!("{}-probe2-{digest}", prefix.trim_end_matches(['-', '.']))
        }
        None => format!("{first}2"),
    };
    [first, second]
}

/// How long the pod may run: every endpoint's connect and handshake, plus start-up.
pub fn deadline(handshake_timeout: Duration) -> Duration {
    handshake_timeout * 2 + Duration::from_secs(30)
}

/// A NetworkPolicy that lets the probe pod reach exactly the endpoints it
/// probes (TCP to each `ip/32` on its port) and nothing else, not even DNS; no
/// ingress at all. Owned by the request; deleted with the pod.
pub fn network_policy(
    request: &CertificateRequest,
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
        "metadata": {
            "name": name,
            "namespace": request.namespace(),
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, REQUEST_LABEL: request.name_any(), COMPONENT_LABEL: COMPONENT},
            "ownerReferences": [request.controller_owner_ref(&()).unwrap_or_default()],
        },
        "spec": {
            "podSelector": {"matchLabels": {POD_LABEL: name}},
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
        let owner = cr.controller_owner_ref(&()).unwrap_or_default();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": cr.namespace(),
                "labels": {
                    MANAGED_BY_LABEL: MANAGED_BY,
                    REQUEST_LABEL: cr.name_any(),
                    COMPONENT_LABEL: COMPONENT,
                    POD_LABEL: self.name,
                },
                "ownerReferences": [owner],
            },
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

    fn request(name: &str) -> CertificateRequest {
        let spec: CertificateRequestSpec =
            serde_saphyr::from_str("secretName: s\ndnsNames: [a.b]\n").unwrap();
        let mut cr = CertificateRequest::new(name, spec);
        cr.metadata.namespace = Some("shop".into());
        cr.metadata.uid = Some("1234".into());
        cr
    }

    #[test]
    fn the_probe_pod_is_hardened_owned_and_self_contained() {
        let cr = request("web");
        let eps: Vec<SocketAddr> = vec!["10.0.0.7:8443".parse().unwrap()];
        let pod = ProbePod {
            request: &cr,
            name: &pod_name(&cr),
            image: "ghcr.io/p12-operator/p12-operator:0.1.0",
            endpoints: &eps,
            server_name: "web.shop.svc",
            ca_pem: "PEM",
            expect_fingerprint: "ab",
            handshake_timeout: Duration::from_secs(10),
        }
        .build();
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
        assert_eq!(pod.metadata.owner_references.unwrap()[0].name, "web");
    }

    #[test]
    fn pod_names_fit_kubernetes_limits_and_differ_per_request() {
        let long = request(&"x".repeat(253));
        let name = pod_name(&long);
        assert!(name.len() <= 63, "{name}");
        let mut other = request("web");
        other.metadata.uid = Some("5678".into());
        assert_ne!(pod_name(&request("web")), pod_name(&other));
    }

    #[test]
    fn the_slot_names_differ_and_fit_kubernetes_limits() {
        for name in [
            "web".to_string(),
            "x".repeat(253),
            format!("{}-y", "x".repeat(46)),
        ] {
            let [a, b] = slot_names(&request(&name));
            assert_ne!(a, b);
            assert_eq!(a, pod_name(&request(&name)));
            for n in [&a, &b] {
                assert!(n.len() <= 63 && !n.contains("--"), "{n}");
            }
        }
    }
}
