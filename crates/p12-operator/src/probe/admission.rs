//! Which endpoints a probe may connect to. EndpointSlices are written by
//! tenants (or by anyone who can edit them), so an address in one proves
//! nothing: a probe pod only connects to a Pod of the request's own namespace,
//! at an address that can be a Pod's, never to the API server. Pure: takes
//! addresses and rules, returns a verdict.

use std::net::IpAddr;

pub use crate::admission::IpRange;

/// Parses a comma-separated list of ranges (a flag may be repeated, too).
pub fn parse_ranges(s: &str) -> Result<Vec<IpRange>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// What is known about the cluster when deciding on an endpoint.
#[derive(Clone, Debug, Default)]
pub struct AdmissionRules {
    /// The cluster's pod address ranges (`--pod-cidr`); empty: unknown, and
    /// then any address that passes the other checks is allowed.
    pub pod_ranges: Vec<IpRange>,
    /// The API server's addresses: the `kubernetes` Service's cluster IPs and
    /// endpoints, and the address the operator itself talks to.
    pub api_server: Vec<IpAddr>,
}

/// One endpoint as its EndpointSlice describes it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    pub ip: IpAddr,
    /// `targetRef.kind`, `targetRef.namespace` (absent: the slice's own) and `targetRef.name`.
    pub target_kind: Option<&'a str>,
    pub target_namespace: Option<&'a str>,
    pub target_name: Option<&'a str>,
}

/// Decides whether a probe of a request in `namespace` may connect to an
/// endpoint; `Err` says why not, in a sentence that tells the request's owner
/// nothing they did not write into their own EndpointSlice.
///
/// `extra_allowed` are ranges an issuance policy lets requests of this
/// namespace probe although no Pod stands behind them (e.g. VMs behind a
/// selector-less Service): an address in one needs no Pod `targetRef` and may
/// lie outside the pod ranges. Loopback, link-local, multicast and unspecified
/// addresses and the API server's are refused even then.
pub fn admit_endpoint(
    namespace: &str,
    endpoint: &Candidate<'_>,
    rules: &AdmissionRules,
    extra_allowed: &[IpRange],
) -> Result<(), String> {
    let ip = match endpoint.ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(endpoint.ip, IpAddr::V4),
        v4 => v4,
    };
    if let Some(kind) = special(ip) {
        return Err(format!("{kind} address, never probed"));
    }
    if rules.api_server.iter().any(|a| same_ip(*a, ip)) {
        // Not a secret: every kubeconfig names the API server.
        return Err("an address of the Kubernetes API server, never probed".into());
    }
    if extra_allowed.iter().any(|r| r.contains(ip)) {
        return Ok(());
    }
    match (endpoint.target_kind, endpoint.target_name) {
        (Some("Pod"), Some(_)) => {}
        _ => {
            return Err(format!(
                "its EndpointSlice entry has no targetRef to a Pod of namespace {namespace}; only Pods of the request's namespace are probed"
            ));
        }
    }
    if endpoint
        .target_namespace
        .is_some_and(|ns| !ns.is_empty() && ns != namespace)
    {
        return Err(format!(
            "its EndpointSlice entry names a Pod of another namespace; only Pods of namespace {namespace} are probed"
        ));
    }
    if !rules.pod_ranges.is_empty() && !rules.pod_ranges.iter().any(|r| r.contains(ip)) {
        return Err("outside the cluster's pod address ranges, never probed".into());
    }
    Ok(())
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    canonical(a) == canonical(b)
}

/// What kind of address no probe connects to, whoever asks.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("a loopback")
            } else if v4.is_unspecified() {
                Some("an unspecified")
            } else if v4.is_link_local() {
                Some("a link-local")
            } else if v4.is_multicast() || v4.is_broadcast() {
                Some("a multicast or broadcast")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some("a loopback")
            } else if v6.is_unspecified() {
                Some("an unspecified")
            } else if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("a link-local")
            } else if v6.is_multicast() {
                Some("a multicast")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod<'a>(ip: &str, namespace: Option<&'a str>) -> Candidate<'a> {
        Candidate {
            ip: ip.parse().unwrap(),
            target_kind: Some("Pod"),
            target_namespace: namespace,
            target_name: Some("web-0"),
        }
    }

    fn rules() -> AdmissionRules {
        AdmissionRules {
            pod_ranges: parse_ranges("10.244.0.0/16,fd00:10:244::/56").unwrap(),
            api_server: vec![
                "10.96.0.1".parse().unwrap(),
                "192.168.1.10".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn a_pod_of_the_requests_namespace_inside_the_pod_range_is_admitted() {
        for ns in [Some("shop"), None, Some("")] {
            assert_eq!(
                admit_endpoint("shop", &pod("10.244.3.7", ns), &rules(), &[]),
                Ok(())
            );
        }
        assert_eq!(
            admit_endpoint("shop", &pod("fd00:10:244::7", None), &rules(), &[]),
            Ok(())
        );
        // Pod range unknown: any ordinary address of a Pod of the namespace.
        assert_eq!(
            admit_endpoint(
                "shop",
                &pod("172.16.0.9", None),
                &AdmissionRules::default(),
                &[]
            ),
            Ok(())
        );
    }

    #[test]
    fn hostile_endpoints_are_refused_with_a_reason() {
        let refused = |c: Candidate<'_>| admit_endpoint("shop", &c, &rules(), &[]).unwrap_err();
        assert!(refused(pod("127.0.0.1", None)).contains("loopback"));
        assert!(refused(pod("::1", None)).contains("loopback"));
        assert!(refused(pod("::ffff:127.0.0.1", None)).contains("loopback"));
        assert!(refused(pod("169.254.169.254", None)).contains("link-local"));
        assert!(refused(pod("fe80::1", None)).contains("link-local"));
        assert!(refused(pod("0.0.0.0", None)).contains("unspecified"));
        assert!(refused(pod("224.0.0.1", None)).contains("multicast"));
        assert!(refused(pod("10.96.0.1", None)).contains("API server"));
        assert!(refused(pod("192.168.1.10", None)).contains("API server"));
        assert!(refused(pod("10.245.0.1", None)).contains("outside the cluster's pod"));
        assert!(refused(pod("10.244.0.5", Some("kube-system"))).contains("another namespace"));
        let no_target = Candidate {
            target_kind: None,
            target_name: None,
            ..pod("10.244.0.5", None)
        };
        assert!(refused(no_target).contains("no targetRef to a Pod of namespace shop"));
        let a_node = Candidate {
            target_kind: Some("Node"),
            ..pod("10.244.0.5", None)
        };
        assert!(refused(a_node).contains("no targetRef"));
    }

    #[test]
    fn ranges_a_policy_allows_need_no_pod_but_never_open_the_api_server_or_loopback() {
        let vms = parse_ranges("192.168.7.0/24, 192.168.1.0/24").unwrap();
        let vm = Candidate {
            ip: "192.168.7.20".parse().unwrap(),
            target_kind: None,
            target_namespace: None,
            target_name: None,
        };
        assert!(admit_endpoint("shop", &vm, &rules(), &[]).is_err());
        assert_eq!(admit_endpoint("shop", &vm, &rules(), &vms), Ok(()));
        let api = Candidate {
            ip: "192.168.1.10".parse().unwrap(),
            ..vm
        };
        assert!(admit_endpoint("shop", &api, &rules(), &vms).is_err());
        let all = parse_ranges("0.0.0.0/0").unwrap();
        let lo = Candidate {
            ip: "127.0.0.1".parse().unwrap(),
            ..vm
        };
        assert!(admit_endpoint("shop", &lo, &rules(), &all).is_err());
    }

    #[test]
    fn ranges_parse_and_match_like_cidr() {
        let r: IpRange = "10.244.0.0/16".parse().unwrap();
        assert!(r.contains("10.244.255.255".parse().unwrap()));
        assert!(!r.contains("10.245.0.0".parse().unwrap()));
        assert!(r.contains("::ffff:10.244.1.1".parse().unwrap()));
        assert!(!r.contains("fd00::1".parse().unwrap()));
        assert_eq!(r.to_string(), "10.244.0.0/16");
        let all: IpRange = "::/0".parse().unwrap();
        assert!(all.contains("fd00::1".parse().unwrap()));
        let one: IpRange = "10.0.0.7".parse().unwrap();
        assert!(
            one.contains("10.0.0.7".parse().unwrap()) && !one.contains("10.0.0.8".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "x/8", "fd00::/129", "10.0.0/8"] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
        assert_eq!(parse_ranges("").unwrap(), vec![]);
    }
}
