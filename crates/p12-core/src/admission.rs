//! Who may get which names: the built-in default policy and the
//! `IssuancePolicy` resources, checked against a planned certificate before
//! any key exists. A request is admitted when one policy that applies to its
//! namespace allows all of it. Pure: the caller supplies the namespace's
//! labels and whether a Service exists.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::{self, Allowances, IssuancePolicySpec, NamespaceSelection};
use crate::duration;
use crate::pki::policy::human;
use crate::pki::{KeyAlgorithm, LeafProfile, Usage};

/// Longest lifetime the built-in default (and any policy without
/// `maxDuration`) allows: 90 days, the default `duration` of a request.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(2160 * 3600);

/// The name messages use for the policy every namespace has.
pub const BUILTIN: &str = "the built-in default policy";

/// What the installation decides for every policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// Service names are allowed without the Service existing
    /// (`--allow-unknown-services`).
    pub allow_unknown_services: bool,
    /// The built-in default policy applies to every namespace (`--default-policy`).
    pub builtin_default: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            allow_unknown_services: false,
            builtin_default: true,
        }
    }
}

/// An address range, `10.20.0.0/16`, or a single address (a /32 or /128).
/// An IPv4-mapped IPv6 address is in the ranges of the IPv4 address it maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    net: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn parse(text: &str) -> Result<IpRange, String> {
        let bad = || format!("{text:?} is not an address range like 10.20.0.0/16");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(IpRange { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip {
                IpAddr::V4(v4) => (u32::from(v4) as u128, 32),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => (u32::from(v4) as u128, 32),
                    None => (u128::from(v6), 128),
                },
            }
        };
        let (net, width) = bits(self.net);
        let (addr, addr_width) = bits(ip);
        if width != addr_width {
            return false;
        }
        if self.prefix == 0 {
            return true;
        }
        let shift = width - self.prefix;
        net >> shift == addr >> shift
    }
}

impl std::str::FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        IpRange::parse(s.trim())
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// One policy, parsed once when it is seen.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledPolicy {
    /// `None` for the built-in default.
    name: Option<String>,
    /// `None`: every namespace.
    namespaces: Option<NamespaceSelection>,
    service_names: bool,
    dns_names: Vec<String>,
    ip_ranges: Vec<IpRange>,
    uris: Vec<String>,
    emails: Vec<String>,
    common_names: Vec<String>,
    subject: api::SubjectAllowances,
    usages: Vec<Usage>,
    keys: Option<Vec<KeyAlgorithm>>,
    min_duration: Option<Duration>,
    max_duration: Duration,
    probe_ranges: Vec<IpRange>,
    /// A field that could not be parsed: the policy then allows nothing.
    broken: Option<String>,
}

impl CompiledPolicy {
    /// The built-in default: every namespace, its own Services' names,
    /// `serverAuth`, any key type, at most 90 days.
    pub fn builtin() -> Self {
        Self::from_allowances(None, None, &Allowances::default())
    }

    /// An `IssuancePolicy` named `name`.
    pub fn compile(name: &str, spec: &IssuancePolicySpec) -> Self {
        Self::from_allowances(
            Some(name.to_string()),
            Some(spec.namespaces.clone()),
            &spec.allow,
        )
    }

    fn from_allowances(
        name: Option<String>,
        namespaces: Option<NamespaceSelection>,
        allow: &Allowances,
    ) -> Self {
        let mut broken = None;
        let mut note = |e: String| {
            broken.get_or_insert(e);
        };
        let ranges = |list: &[String], field: &str, note: &mut dyn FnMut(String)| {
            list.iter()
                .filter_map(|r| {
                    IpRange::parse(r)
                        .map_err(|e| note(format!("{field}: {e}")))
                        .ok()
                })
                .collect::<Vec<_>>()
        };
        let ip_ranges = ranges(&allow.ip_ranges, "ipRanges", &mut note);
        let probe_ranges = ranges(&allow.probe_address_ranges, "probeAddressRanges", &mut note);
        let mut parse_duration = |text: &Option<String>, field: &str| {
            text.as_deref().and_then(|t| {
                duration::parse(t)
                    .map_err(|e| note(format!("{field}: {e}")))
                    .ok()
            })
        };
        let min_duration = parse_duration(&allow.min_duration, "minDuration");
        let max_duration =
            parse_duration(&allow.max_duration, "maxDuration").unwrap_or(DEFAULT_MAX_DURATION);
        let usages = match &allow.usages {
            Some(list) => list.iter().map(|u| crate::plan::usage(*u)).collect(),
            None => vec![Usage::ServerAuth],
        };
        let keys = allow.private_keys.as_ref().map(|list| {
            let mut keys = Vec::new();
            for k in list {
                let sizes: Vec<Option<i32>> = if k.sizes.is_empty() {
                    match k.algorithm {
                        api::KeyAlgorithm::Ecdsa => vec![Some(256), Some(384)],
                        api::KeyAlgorithm::Rsa => vec![Some(2048), Some(3072), Some(4096)],
                        api::KeyAlgorithm::Ed25519 => vec![None],
                    }
                } else {
                    k.sizes.iter().map(|s| Some(*s)).collect()
                };
                for size in sizes {
                    match crate::plan::key_algorithm(k.algorithm, size) {
                        Ok(a) => keys.push(a),
                        Err(e) => note(format!("privateKeys: {e}")),
                    }
                }
            }
            keys
        });
        let lower = |list: &[String]| list.iter().map(|p| p.to_ascii_lowercase()).collect();
        CompiledPolicy {
            name,
            namespaces,
            service_names: allow.service_names,
            dns_names: lower(&allow.dns_names),
            ip_ranges,
            uris: allow.uris.clone(),
            emails: lower(&allow.email_addresses),
            common_names: allow.common_names.clone(),
            subject: allow.subject.clone().unwrap_or_default(),
            usages,
            keys,
            min_duration,
            max_duration,
            probe_ranges,
            broken,
        }
    }

    /// How messages name this policy.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("IssuancePolicy {n}"),
            None => BUILTIN.to_string(),
        }
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether this policy applies to requests of namespace `ns` with `labels`.
    pub fn applies_to(&self, ns: &str, labels: &BTreeMap<String, String>) -> bool {
        match &self.namespaces {
            None => true,
            Some(sel) => {
                sel.names.iter().any(|n| n == ns)
                    || sel
                        .selector
                        .as_ref()
                        .is_some_and(|s| selector_matches(s, labels))
            }
        }
    }

    /// Whether this policy selects namespaces by label (so a change of a
    /// namespace's labels can change what it admits).
    pub fn uses_labels(&self) -> bool {
        self.namespaces
            .as_ref()
            .is_some_and(|s| s.selector.is_some())
    }

    /// The address ranges this policy lets probes reach beyond Pods.
    pub fn probe_ranges(&self) -> &[IpRange] {
        &self.probe_ranges
    }

    /// The first part of `req` this policy does not allow.
    fn check(&self, req: &Request<'_>, settings: &Settings) -> Result<(), Denial> {
        if let Some(e) = &self.broken {
            return Err(Denial::whole(format!("the policy is invalid ({e})")));
        }
        let ns = req.namespace;
        let leaf = req.leaf;
        for (i, name) in leaf.sans.dns.iter().enumerate() {
            let lower = name.to_ascii_lowercase();
            let by_pattern = self
                .dns_names
                .iter()
                .any(|p| dns_matches(&p.replace("{namespace}", ns), &lower));
            if by_pattern {
                continue;
            }
            let why = if self.service_names {
                match service_of(&lower, ns, &settings.cluster_domain) {
                    Some(svc) if settings.allow_unknown_services || (req.service_exists)(svc) => {
                        continue;
                    }
                    Some(svc) => format!("there is no Service {svc} in namespace {ns}"),
                    None => format!(
                        "it is not the name of a Service of namespace {ns} (<service>.{ns}.svc or <service>.{ns}.svc.{})",
                        settings.cluster_domain
                    ),
                }
            } else {
                "it matches none of the policy's dnsNames".to_string()
            };
            return Err(Denial::field(
                format!("dnsNames[{i}]"),
                name,
                self.with_patterns(why, &self.dns_names),
            ));
        }
        if let Some(cn) = &leaf.subject.common_name {
            let is_dns_name = leaf.sans.dns.iter().any(|d| d.eq_ignore_ascii_case(cn));
            if !is_dns_name && !any_glob(&self.common_names, ns, cn, false) {
                return Err(Denial::field(
                    "commonName",
                    cn,
                    self.with_patterns(
                        "it is neither one of the request's dnsNames nor allowed by the policy's commonNames"
                            .into(),
                        &self.common_names,
                    ),
                ));
            }
        }
        for (i, ip) in leaf.sans.ips.iter().enumerate() {
            if !self.ip_ranges.iter().any(|r| r.contains(*ip)) {
                let ranges: Vec<String> = self.ip_ranges.iter().map(|r| r.to_string()).collect();
                return Err(Denial::field(
                    format!("ipAddresses[{i}]"),
                    &ip.to_string(),
                    self.with_patterns("it is in none of the policy's ipRanges".into(), &ranges),
                ));
            }
        }
        for (i, uri) in leaf.sans.uris.iter().enumerate() {
            if !any_glob(&self.uris, ns, uri, false) {
                return Err(Denial::field(
                    format!("uris[{i}]"),
                    uri,
                    self.with_patterns("it matches none of the policy's uris".into(), &self.uris),
                ));
            }
        }
        for (i, email) in leaf.sans.emails.iter().enumerate() {
            if !any_glob(&self.emails, ns, email, true) {
                return Err(Denial::field(
                    format!("emailAddresses[{i}]"),
                    email,
                    self.with_patterns(
                        "it matches none of the policy's emailAddresses".into(),
                        &self.emails,
                    ),
                ));
            }
        }
        let s = &leaf.subject;
        let a = &self.subject;
        for (field, values, patterns) in [
            ("subject.organizations", &s.organizations, &a.organizations),
            (
                "subject.organizationalUnits",
                &s.organizational_units,
                &a.organizational_units,
            ),
            ("subject.countries", &s.countries, &a.countries),
            ("subject.localities", &s.localities, &a.localities),
            ("subject.provinces", &s.provinces, &a.provinces),
        ] {
            for (i, v) in values.iter().enumerate() {
                if !any_glob(patterns, ns, v, false) {
                    return Err(Denial::field(
                        format!("{field}[{i}]"),
                        v,
                        self.with_patterns(
                            format!("it matches none of the policy's {field}"),
                            patterns,
                        ),
                    ));
                }
            }
        }
        for u in &leaf.usages {
            if u.is_extended() && !self.usages.contains(u) {
                let allowed: Vec<String> = self.usages.iter().map(|u| u.name().into()).collect();
                return Err(Denial::field(
                    "usages",
                    u.name(),
                    format!(
                        "the policy allows only {}",
                        if allowed.is_empty() {
                            "key usages".into()
                        } else {
                            allowed.join(", ")
                        }
                    ),
                ));
            }
        }
        if let Some(keys) = &self.keys
            && !keys.contains(&req.key)
        {
            let allowed: Vec<&str> = keys.iter().map(|k| key_name(*k)).collect();
            return Err(Denial::field(
                "privateKey",
                key_name(req.key),
                format!("the policy allows only {}", allowed.join(", ")),
            ));
        }
        if leaf.duration > self.max_duration {
            return Err(Denial::field(
                "duration",
                &human(leaf.duration),
                format!("the policy allows at most {}", human(self.max_duration)),
            ));
        }
        if let Some(min) = self.min_duration
            && leaf.duration < min
        {
            return Err(Denial::field(
                "duration",
                &human(leaf.duration),
                format!("the policy allows at least {}", human(min)),
            ));
        }
        Ok(())
    }

    fn with_patterns(&self, why: String, patterns: &[String]) -> String {
        if patterns.is_empty() || self.name.is_none() {
            why
        } else {
            format!("{why}: {}", patterns.join(", "))
        }
    }
}

/// What is checked: the planned certificate, its key type and namespace.
pub struct Request<'a> {
    pub namespace: &'a str,
    pub leaf: &'a LeafProfile,
    pub key: KeyAlgorithm,
    /// Whether a Service of this name exists in the request's namespace.
    pub service_exists: &'a dyn Fn(&str) -> bool,
}

/// Why one policy does not admit a request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Denial {
    /// `dnsNames[1] "payments.team-b.svc"`, or empty for the whole request.
    what: String,
    why: String,
}

impl Denial {
    fn field(field: impl Into<String>, value: &str, why: String) -> Self {
        Denial {
            what: format!("{} {value:?}", field.into()),
            why,
        }
    }

    fn whole(why: String) -> Self {
        Denial {
            what: String::new(),
            why,
        }
    }

    fn sentence(&self) -> String {
        if self.what.is_empty() {
            self.why.clone()
        } else {
            format!("{} is not allowed: {}", self.what, self.why)
        }
    }
}

/// A refused request: the sentence for its status and Event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub message: String,
}

impl Refusal {
    pub const REASON: &'static str = "PolicyViolation";
}

/// Admits `req` when one policy that applies to its namespace allows all of
/// it; otherwise says, for each policy considered, the first field and value
/// it does not allow.
pub fn admit(
    req: &Request<'_>,
    namespace_labels: &BTreeMap<String, String>,
    policies: &[CompiledPolicy],
    settings: &Settings,
) -> Result<(), Refusal> {
    static BUILTIN: std::sync::LazyLock<CompiledPolicy> =
        std::sync::LazyLock::new(CompiledPolicy::builtin);
    let applicable: Vec<&CompiledPolicy> = settings
        .builtin_default
        .then_some(&*BUILTIN)
        .into_iter()
        .chain(
            policies
                .iter()
                .filter(|p| p.applies_to(req.namespace, namespace_labels)),
        )
        .collect();
    if applicable.is_empty() {
        return Err(Refusal {
            message: format!(
                "no IssuancePolicy applies to namespace {} and the built-in default policy is off (--default-policy=false): ask the cluster's administrators for an IssuancePolicy that selects this namespace",
                req.namespace
            ),
        });
    }
    let mut denials = Vec::with_capacity(applicable.len());
    for p in &applicable {
        match p.check(req, settings) {
            Ok(()) => return Ok(()),
            Err(d) => denials.push((p.label(), d)),
        }
    }
    let message = if let [(label, d)] = denials.as_slice() {
        format!(
            "{}; {label} is the only policy for namespace {}, and no IssuancePolicy selects it",
            d.sentence(),
            req.namespace
        )
    } else {
        let each: Vec<String> = denials
            .iter()
            .map(|(label, d)| format!("{label}: {}", d.sentence()))
            .collect();
        format!(
            "no policy for namespace {} allows the whole request — {}",
            req.namespace,
            each.join("; ")
        )
    };
    Err(Refusal { message })
}

/// The address ranges the probes of requests in `ns` may reach beyond Pods
/// of that namespace: the union over the IssuancePolicies that apply.
pub fn probe_ranges(
    ns: &str,
    labels: &BTreeMap<String, String>,
    policies: &[CompiledPolicy],
) -> Vec<IpRange> {
    policies
        .iter()
        .filter(|p| p.broken.is_none() && p.applies_to(ns, labels))
        .flat_map(|p| p.probe_ranges.iter().copied())
        .collect()
}

/// The Service a DNS name belongs to when it is one of namespace `ns`'s
/// Service names: `<svc>.<ns>.svc`, `<host>.<svc>.<ns>.svc`, each optionally
/// followed by `.<cluster domain>`. `name` is lower case.
fn service_of<'n>(name: &'n str, ns: &str, cluster_domain: &str) -> Option<&'n str> {
    let domain = cluster_domain.trim_end_matches('.').to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    let rest = name
        .strip_suffix(&format!(".{domain}"))
        .unwrap_or(name)
        .strip_suffix(".svc")?
        .strip_suffix(ns)?
        .strip_suffix('.')?;
    let labels: Vec<&str> = rest.split('.').collect();
    let valid = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    match labels.as_slice() {
        [svc] if valid(svc) => Some(svc),
        [host, svc] if valid(host) && valid(svc) => Some(svc),
        _ => None,
    }
}

/// DNS pattern match, label by label: `*` within a label matches any run of
/// characters of that label (one or more for a whole-label `*`), a leading
/// `**` label one or more labels. Both are lower case.
fn dns_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    let name = name.trim_end_matches('.');
    let p: Vec<&str> = pattern.split('.').collect();
    let n: Vec<&str> = name.split('.').collect();
    if let Some(("**", tail)) = p.split_first().map(|(h, t)| (*h, t)) {
        return n.len() > tail.len()
            && n[n.len() - tail.len()..]
                .iter()
                .zip(tail)
                .all(|(l, pl)| label_matches(pl, l));
    }
    p.len() == n.len() && p.iter().zip(&n).all(|(pl, l)| label_matches(pl, l))
}

fn label_matches(pattern: &str, label: &str) -> bool {
    if pattern == "*" {
        return !label.is_empty();
    }
    glob(pattern.as_bytes(), label.as_bytes())
}

fn any_glob(patterns: &[String], ns: &str, value: &str, ignore_case: bool) -> bool {
    let value = if ignore_case {
        value.to_ascii_lowercase()
    } else {
        value.to_string()
    };
    patterns
        .iter()
        .any(|p| glob(p.replace("{namespace}", ns).as_bytes(), value.as_bytes()))
}

/// `*` matches any run of bytes (possibly empty); everything else matches itself.
fn glob(pattern: &[u8], value: &[u8]) -> bool {
    // Iterative matching with one backtrack point: linear in practice.
    let (mut p, mut v) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, v));
            p += 1;
        } else if p < pattern.len() && pattern[p] == value[v] {
            p += 1;
            v += 1;
        } else if let Some((sp, sv)) = star {
            p = sp + 1;
            v = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

fn key_name(k: KeyAlgorithm) -> &'static str {
    match k {
        KeyAlgorithm::EcdsaP256 => "ECDSA 256",
        KeyAlgorithm::EcdsaP384 => "ECDSA 384",
        KeyAlgorithm::Rsa2048 => "RSA 2048",
        KeyAlgorithm::Rsa3072 => "RSA 3072",
        KeyAlgorithm::Rsa4096 => "RSA 4096",
        KeyAlgorithm::Ed25519 => "Ed25519",
    }
}

/// Kubernetes label-selector semantics: every `matchLabels` pair and every
/// `matchExpressions` requirement must hold; an empty selector matches all.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            // An operator Kubernetes does not know selects nothing.
            _ => false,
        }
    });
    pairs && exprs
}

#[cfg(test)]
mod tests;
