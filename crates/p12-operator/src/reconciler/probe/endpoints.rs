//! Which endpoints a probe covers: the ready `ip:port`s of a Service port,
//! read from its EndpointSlices, each admitted or refused by
//! [`admit_endpoint`]. Uses the kube client, the API types and the pure
//! admission rules of `crate::probe::admission`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ListParams};

use crate::probe::admission::{AdmissionRules, Candidate, IpRange, admit_endpoint};
use crate::reconciler::Error;

/// Whether an EndpointSlice port carries a Service port. Ports match by name,
/// as kube-proxy matches them: an unnamed Service port (no name, or `""`)
/// matches the slice's unnamed port, whatever its `targetPort`.
pub fn port_matches(service_port_name: Option<&str>, slice_port_name: Option<&str>) -> bool {
    service_port_name.unwrap_or_default() == slice_port_name.unwrap_or_default()
}

/// A ready endpoint a probe may connect to, and the Pod its EndpointSlice
/// names (`targetRef`), so a failing replica is reported by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyEndpoint {
    pub addr: SocketAddr,
    pub pod: Option<String>,
}

/// A ready endpoint no probe connects to, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedEndpoint {
    pub addr: SocketAddr,
    pub why: String,
}

/// The ready endpoints of a Service port, sorted by `ip:port`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub admitted: Vec<ReadyEndpoint>,
    pub refused: Vec<RefusedEndpoint>,
}

impl Endpoints {
    pub fn is_empty(&self) -> bool {
        self.admitted.is_empty() && self.refused.is_empty()
    }
}

/// The ready endpoints of the Service port named `port_name` in the
/// EndpointSlices of a Service in `namespace`, each admitted or refused. An
/// endpoint without a ready condition counts as ready, as Kubernetes
/// documents. An address listed twice is refused if either entry is.
pub fn endpoints_in(
    namespace: &str,
    port_name: Option<&str>,
    slices: &[EndpointSlice],
    rules: &AdmissionRules,
    extra_allowed: &[IpRange],
) -> Endpoints {
    let mut out: BTreeMap<SocketAddr, Result<Option<String>, String>> = BTreeMap::new();
    for slice in slices {
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| port_matches(port_name, p.name.as_deref()))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in &slice.endpoints {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let target_ref = ep.target_ref.as_ref();
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                let candidate = Candidate {
                    ip,
                    target_kind: target_ref.and_then(|r| r.kind.as_deref()),
                    target_namespace: target_ref.and_then(|r| r.namespace.as_deref()),
                    target_name: target_ref.and_then(|r| r.name.as_deref()),
                };
                let verdict =
                    admit_endpoint(namespace, &candidate, rules, extra_allowed).map(|()| {
                        candidate
                            .target_name
                            .filter(|_| candidate.target_kind == Some("Pod"))
                            .map(String::from)
                    });
                let key = SocketAddr::new(ip, target);
                if !matches!(out.get(&key), Some(Err(_))) {
                    out.insert(key, verdict);
                }
            }
        }
    }
    let mut endpoints = Endpoints::default();
    for (addr, verdict) in out {
        match verdict {
            Ok(pod) => endpoints.admitted.push(ReadyEndpoint { addr, pod }),
            Err(why) => endpoints.refused.push(RefusedEndpoint { addr, why }),
        }
    }
    endpoints
}

/// The ready endpoints of a Service port, from its EndpointSlices.
/// `extra_allowed` is passed on to [`admit_endpoint`].
pub async fn ready_endpoints(
    client: &Client,
    ns: &str,
    service: &str,
    port: i32,
    rules: &AdmissionRules,
    extra_allowed: &[IpRange],
) -> Result<Result<Endpoints, String>, Error> {
    let Some(svc) = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(service)
        .await?
    else {
        return Ok(Err(format!(
            "Service {service} does not exist in namespace {ns}"
        )));
    };
    let ports = svc.spec.and_then(|s| s.ports).unwrap_or_default();
    let Some(sp) = ports.iter().find(|p| p.port == port) else {
        return Ok(Err(format!("Service {service} has no port {port}")));
    };
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await?;
    Ok(Ok(endpoints_in(
        ns,
        sp.name.as_deref(),
        &slices.items,
        rules,
        extra_allowed,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(
        port_name: Option<&str>,
        port: i32,
        ips: &[&str],
        ready: Option<bool>,
    ) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop"},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": ips.iter().map(|ip| serde_json::json!({
                "addresses": [ip], "conditions": {"ready": ready},
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": format!("web-{ip}")}
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn endpoints(port_name: Option<&str>, slices: &[EndpointSlice]) -> Endpoints {
        let rules = AdmissionRules {
            pod_ranges: Vec::new(),
            api_server: vec!["10.96.0.1".parse().unwrap()],
        };
        endpoints_in("shop", port_name, slices, &rules, &[])
    }

    fn ready(port_name: Option<&str>, slices: &[EndpointSlice]) -> Vec<SocketAddr> {
        endpoints(port_name, slices)
            .admitted
            .into_iter()
            .map(|e| e.addr)
            .collect()
    }

    #[test]
    fn each_endpoint_carries_the_pod_its_slice_names() {
        let slices = [slice(Some("https"), 8443, &["10.0.0.1", "10.0.0.2"], None)];
        let eps = endpoints(Some("https"), &slices).admitted;
        assert_eq!(eps[0].pod.as_deref(), Some("web-10.0.0.1"));
        assert_eq!(eps[1].pod.as_deref(), Some("web-10.0.0.2"));
    }

    #[test]
    fn hostile_entries_of_a_slice_are_refused_and_the_rest_admitted() {
        let mut slices = [slice(
            Some("https"),
            8443,
            &[
                "10.0.0.1",
                "10.96.0.1",
                "127.0.0.1",
                "10.0.0.4",
                "10.0.0.5",
                "10.0.0.6",
            ],
            None,
        )];
        // 10.0.0.4: no targetRef; 10.0.0.5: a Node; 10.0.0.6: a Pod of kube-system.
        slices[0].endpoints[3].target_ref = None;
        slices[0].endpoints[4].target_ref.as_mut().unwrap().kind = Some("Node".into());
        slices[0].endpoints[5]
            .target_ref
            .as_mut()
            .unwrap()
            .namespace = Some("kube-system".into());
        let eps = endpoints(Some("https"), &slices);
        assert_eq!(
            eps.admitted,
            vec![ReadyEndpoint {
                addr: "10.0.0.1:8443".parse().unwrap(),
                pod: Some("web-10.0.0.1".into())
            }]
        );
        let refused: Vec<(String, &str)> = eps
            .refused
            .iter()
            .map(|r| (r.addr.to_string(), r.why.as_str()))
            .collect();
        assert_eq!(refused.len(), 5, "{refused:?}");
        let why = |a: &str| refused.iter().find(|r| r.0 == a).unwrap().1;
        assert!(why("10.96.0.1:8443").contains("API server"));
        assert!(why("127.0.0.1:8443").contains("loopback"));
        assert!(why("10.0.0.4:8443").contains("no targetRef"));
        assert!(why("10.0.0.5:8443").contains("no targetRef"));
        assert!(why("10.0.0.6:8443").contains("another namespace"));
    }

    #[test]
    fn an_address_refused_in_one_slice_stays_refused_whatever_another_says() {
        let good = slice(Some("https"), 8443, &["10.0.0.1"], None);
        let mut bad = slice(Some("https"), 8443, &["10.0.0.1"], None);
        bad.endpoints[0].target_ref = None;
        for slices in [[good.clone(), bad.clone()], [bad, good]] {
            let eps = endpoints(Some("https"), &slices);
            assert!(eps.admitted.is_empty());
            assert_eq!(eps.refused.len(), 1);
        }
    }

    #[test]
    fn an_unnamed_service_port_matches_the_slices_unnamed_port() {
        assert!(port_matches(None, Some("")));
        assert!(port_matches(None, None));
        assert!(port_matches(Some(""), None));
        assert!(port_matches(Some("https"), Some("https")));
        assert!(!port_matches(None, Some("https")));
        assert!(!port_matches(Some("https"), Some("")));
        // The API server stores an unnamed slice port as `""` or leaves the name out.
        for name in [Some(""), None] {
            let slices = [slice(name, 8443, &["10.0.0.1", "10.0.0.2"], Some(true))];
            assert_eq!(
                ready(None, &slices),
                addrs(&["10.0.0.1:8443", "10.0.0.2:8443"])
            );
        }
    }

    #[test]
    fn a_named_port_takes_each_slices_own_target_port_and_skips_unready_endpoints() {
        // A named targetPort may resolve to different numbers per pod, hence per slice.
        let slices = [
            slice(Some("https"), 8443, &["10.0.0.1"], Some(true)),
            slice(Some("https"), 9443, &["10.0.0.2"], None),
            slice(Some("https"), 8443, &["10.0.0.3"], Some(false)),
            slice(Some("metrics"), 9090, &["10.0.0.4"], Some(true)),
        ];
        assert_eq!(
            ready(Some("https"), &slices),
            addrs(&["10.0.0.1:8443", "10.0.0.2:9443"])
        );
        assert!(ready(None, &slices).is_empty());
    }
}
