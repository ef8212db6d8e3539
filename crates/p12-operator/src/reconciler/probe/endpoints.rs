//! Which endpoints a probe covers: the ready `ip:port`s of a Service port,
//! read from its EndpointSlices. Uses only the kube client and the API types.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ListParams};

use crate::reconciler::Error;

/// Whether an EndpointSlice port carries a Service port. Ports match by name,
/// as kube-proxy matches them: an unnamed Service port (no name, or `""`)
/// matches the slice's unnamed port, whatever its `targetPort`.
pub fn port_matches(service_port_name: Option<&str>, slice_port_name: Option<&str>) -> bool {
    service_port_name.unwrap_or_default() == slice_port_name.unwrap_or_default()
}

/// A ready endpoint, and the Pod its EndpointSlice names (`targetRef`), so a
/// failing replica is reported by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyEndpoint {
    pub addr: SocketAddr,
    pub pod: Option<String>,
}

/// The ready endpoints (sorted by `ip:port`) of the Service port named
/// `port_name` in a Service's EndpointSlices. An endpoint without a ready
/// condition counts as ready, as Kubernetes documents.
pub fn endpoints_in(port_name: Option<&str>, slices: &[EndpointSlice]) -> Vec<ReadyEndpoint> {
    let mut out = BTreeMap::new();
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
            let pod = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            for addr in &ep.addresses {
                if let Ok(ip) = addr.parse::<IpAddr>() {
                    out.insert(SocketAddr::new(ip, target), pod.clone());
                }
            }
        }
    }
    out.into_iter()
        .map(|(addr, pod)| ReadyEndpoint { addr, pod })
        .collect()
}

/// The ready endpoints of a Service port, from its EndpointSlices.
pub async fn ready_endpoints(
    client: &Client,
    ns: &str,
    service: &str,
    port: i32,
) -> Result<Result<Vec<ReadyEndpoint>, String>, Error> {
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
    Ok(Ok(endpoints_in(sp.name.as_deref(), &slices.items)))
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
            "metadata": {"name": "web-1"},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": ips.iter().map(|ip| serde_json::json!({
                "addresses": [ip], "conditions": {"ready": ready},
                "targetRef": {"kind": "Pod", "name": format!("web-{ip}")}
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn ready(port_name: Option<&str>, slices: &[EndpointSlice]) -> Vec<SocketAddr> {
        endpoints_in(port_name, slices)
            .into_iter()
            .map(|e| e.addr)
            .collect()
    }

    #[test]
    fn each_endpoint_carries_the_pod_its_slice_names() {
        let mut slices = [slice(Some("https"), 8443, &["10.0.0.1", "10.0.0.2"], None)];
        // Not a Pod: no name is reported for it.
        slices[0].endpoints[1].target_ref.as_mut().unwrap().kind = Some("Node".into());
        let eps = endpoints_in(Some("https"), &slices);
        assert_eq!(eps[0].pod.as_deref(), Some("web-10.0.0.1"));
        assert_eq!(eps[1].pod, None);
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
