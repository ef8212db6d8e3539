//! Name constraints of a CA chain (RFC 5280 §4.2.1.10), read once when the CA
//! loads and checked against every leaf's names before a key is generated.
//!
//! Where verifiers differ, the check takes the stricter reading, so a leaf this
//! operator issues is never rejected by a verifier for its names: a permitted
//! URI or email host matches that host only (OpenSSL, RFC 5280), an excluded one
//! also covers its subdomains (Go); a wildcard DNS name is excluded when it could
//! match an excluded name; a commonName that looks like a host name is held to
//! the dNSName constraints, as OpenSSL does.

use std::fmt;
use std::net::IpAddr;

use x509_parser::extensions::{GeneralName, GeneralSubtree};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use super::csr::{CsrSubject, SubjectAltNames};

/// One subtree of a nameConstraints extension, in the forms a leaf of ours can carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subtree {
    Dns(String),
    Ip {
        address: IpAddr,
        mask: IpAddr,
    },
    Email(String),
    Uri(String),
    /// RDNs, each a set of (attribute type OID, normalized value).
    Directory(Vec<Vec<(String, String)>>),
}

impl Subtree {
    fn form(&self) -> &'static str {
        match self {
            Subtree::Dns(_) => "dNSName",
            Subtree::Ip { .. } => "iPAddress",
            Subtree::Email(_) => "rfc822Name",
            Subtree::Uri(_) => "uniformResourceIdentifier",
            Subtree::Directory(_) => "directoryName",
        }
    }
}

impl fmt::Display for Subtree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subtree::Dns(base) | Subtree::Email(base) | Subtree::Uri(base) => {
                write!(f, "{base}")
            }
            Subtree::Ip { address, mask } => match prefix_length(mask) {
                Some(bits) => write!(f, "{address}/{bits}"),
                None => write!(f, "{address}/{mask}"),
            },
            Subtree::Directory(rdns) => {
                let text: Vec<String> = rdns
                    .iter()
                    .map(|rdn| {
                        rdn.iter()
                            .map(|(oid, value)| format!("{}={value}", attribute_name(oid)))
                            .collect::<Vec<_>>()
                            .join("+")
                    })
                    .collect();
                write!(f, "{}", text.join(", "))
            }
        }
    }
}

/// The permitted and excluded subtrees of one CA certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NameConstraints {
    pub permitted: Vec<Subtree>,
    pub excluded: Vec<Subtree>,
}

impl NameConstraints {
    pub fn is_empty(&self) -> bool {
        self.permitted.is_empty() && self.excluded.is_empty()
    }

    /// Reads the subtrees of a parsed extension. Forms no leaf of ours carries
    /// (otherName, x400Address, ediPartyName, registeredID) constrain nothing
    /// we issue and are left out. `Err` names a malformed subtree.
    pub fn from_x509(
        permitted: Option<&[GeneralSubtree<'_>]>,
        excluded: Option<&[GeneralSubtree<'_>]>,
    ) -> Result<Self, String> {
        let read = |subtrees: Option<&[GeneralSubtree<'_>]>| -> Result<Vec<Subtree>, String> {
            let mut out = Vec::new();
            for subtree in subtrees.unwrap_or_default() {
                if let Some(parsed) = subtree_of(&subtree.base)? {
                    out.push(parsed);
                }
            }
            Ok(out)
        };
        Ok(Self {
            permitted: read(permitted)?,
            excluded: read(excluded)?,
        })
    }
}

fn subtree_of(name: &GeneralName<'_>) -> Result<Option<Subtree>, String> {
    Ok(Some(match name {
        GeneralName::DNSName(base) => Subtree::Dns((*base).to_owned()),
        GeneralName::RFC822Name(base) => Subtree::Email((*base).to_owned()),
        GeneralName::URI(base) => Subtree::Uri((*base).to_owned()),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            8 => Subtree::Ip {
                address: IpAddr::from(<[u8; 4]>::try_from(&bytes[..4]).expect("length checked")),
                mask: IpAddr::from(<[u8; 4]>::try_from(&bytes[4..]).expect("length checked")),
            },
            32 => Subtree::Ip {
                address: IpAddr::from(<[u8; 16]>::try_from(&bytes[..16]).expect("length checked")),
                mask: IpAddr::from(<[u8; 16]>::try_from(&bytes[16..]).expect("length checked")),
            },
            n => {
                return Err(format!(
                    "an iPAddress subtree of {n} bytes (8 or 32 expected)"
                ));
            }
        },
        GeneralName::DirectoryName(name) => Subtree::Directory(rdns_of(name)),
        GeneralName::Invalid(..) => return Err("a subtree that does not parse".into()),
        _ => return Ok(None),
    }))
}

fn rdns_of(name: &X509Name<'_>) -> Vec<Vec<(String, String)>> {
    name.iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let value = attr
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|_| hex::encode(attr.as_slice()));
                    (attr.attr_type().to_id_string(), fold(&value))
                })
                .collect()
        })
        .collect()
}

/// RFC 4518-style comparison form: case folded, inner whitespace collapsed.
fn fold(value: &str) -> String {
    value
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn attribute_name(oid: &str) -> &str {
    match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        other => other,
    }
}

fn prefix_length(mask: &IpAddr) -> Option<u32> {
    let bits: u128 = match mask {
        IpAddr::V4(v4) => u128::from(u32::from(*v4)) << 96,
        IpAddr::V6(v6) => u128::from(*v6),
    };
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones)
}

/// A name of a request that a CA certificate's name constraints forbid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{field} {value:?} is outside the name constraints of CA certificate {position} ({subject}): {constraint}"
)]
pub struct NameConstraintViolation {
    /// The request field, e.g. `dnsNames[0]` or `commonName`.
    pub field: String,
    pub value: String,
    /// 1-based position of the constraining certificate in the CA bundle.
    pub position: usize,
    pub subject: String,
    /// What the name breaks, e.g. `permitted dNSName corp.example.com`.
    pub constraint: String,
}

impl NameConstraintViolation {
    /// The condition reason: the request asks for what this CA may not certify.
    pub fn reason(&self) -> &'static str {
        "PolicyViolation"
    }
}

/// One name of a request: which field it came from and what it is.
struct Candidate<'a> {
    field: String,
    value: String,
    name: Name<'a>,
}

enum Name<'a> {
    Dns(&'a str),
    Ip(IpAddr),
    Email(&'a str),
    Uri(&'a str),
    Directory(Vec<Vec<(String, String)>>),
}

impl Name<'_> {
    fn form(&self) -> &'static str {
        match self {
            Name::Dns(_) => "dNSName",
            Name::Ip(_) => "iPAddress",
            Name::Email(_) => "rfc822Name",
            Name::Uri(_) => "uniformResourceIdentifier",
            Name::Directory(_) => "directoryName",
        }
    }
}

/// The names of a request, each with the field it came from.
fn candidates<'a>(
    sans: &'a SubjectAltNames,
    common_name: Option<&'a str>,
    subject: Option<&CsrSubject>,
) -> Vec<Candidate<'a>> {
    let mut out = Vec::new();
    for (i, dns) in sans.dns.iter().enumerate() {
        out.push(Candidate {
            field: format!("dnsNames[{i}]"),
            value: dns.clone(),
            name: Name::Dns(dns),
        });
    }
    for (i, ip) in sans.ips.iter().enumerate() {
        out.push(Candidate {
            field: format!("ipAddresses[{i}]"),
            value: ip.to_string(),
            name: Name::Ip(*ip),
        });
    }
    for (i, email) in sans.emails.iter().enumerate() {
        out.push(Candidate {
            field: format!("emailAddresses[{i}]"),
            value: email.clone(),
            name: Name::Email(email),
        });
    }
    for (i, uri) in sans.uris.iter().enumerate() {
        out.push(Candidate {
            field: format!("uris[{i}]"),
            value: uri.clone(),
            name: Name::Uri(uri),
        });
    }
    if let Some(cn) = common_name.filter(|cn| looks_like_host_name(cn)) {
        out.push(Candidate {
            field: "commonName".into(),
            value: cn.to_owned(),
            name: Name::Dns(cn),
        });
    }
    if let Some(subject) = subject.filter(|s| !s.is_empty()) {
        let der = subject.to_der();
        if let Ok((_, name)) = X509Name::from_der(&der) {
            out.push(Candidate {
                field: "subject".into(),
                value: name.to_string(),
                name: Name::Directory(rdns_of(&name)),
            });
        }
    }
    out
}

/// Whether a commonName reads as a DNS name (letters, digits, hyphens, dots, at
/// least one dot, an optional leading `*.`), the test OpenSSL applies before
/// holding it to dNSName constraints.
fn looks_like_host_name(cn: &str) -> bool {
    let name = cn.strip_prefix("*.").unwrap_or(cn);
    name.contains('.')
        && name.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Checks every name of a request against the constraints of each CA
/// certificate (`chain[i]` = (subject, constraints) of certificate i+1).
pub(crate) fn check(
    chain: &[(&str, &NameConstraints)],
    sans: &SubjectAltNames,
    common_name: Option<&str>,
    subject: Option<&CsrSubject>,
) -> Result<(), NameConstraintViolation> {
    if chain.iter().all(|(_, c)| c.is_empty()) {
        return Ok(());
    }
    for candidate in candidates(sans, common_name, subject) {
        for (index, (ca_subject, constraints)) in chain.iter().enumerate() {
            let violation = |constraint: String| NameConstraintViolation {
                field: candidate.field.clone(),
                value: candidate.value.clone(),
                position: index + 1,
                subject: (*ca_subject).to_owned(),
                constraint,
            };
            let form = candidate.name.form();
            if let Some(hit) = constraints
                .excluded
                .iter()
                .find(|s| s.form() == form && excluded_by(&candidate.name, s))
            {
                return Err(violation(format!("excluded {form} {hit}")));
            }
            let permitted: Vec<&Subtree> = constraints
                .permitted
                .iter()
                .filter(|s| s.form() == form)
                .collect();
            if !permitted.is_empty() && !permitted.iter().any(|s| permitted_by(&candidate.name, s))
            {
                let list: Vec<String> = permitted.iter().map(ToString::to_string).collect();
                return Err(violation(format!("permitted {form} {}", list.join(", "))));
            }
        }
    }
    Ok(())
}

fn permitted_by(name: &Name<'_>, subtree: &Subtree) -> bool {
    match (name, subtree) {
        (Name::Dns(name), Subtree::Dns(base)) => dns_within(name, base),
        (Name::Ip(ip), Subtree::Ip { address, mask }) => ip_within(ip, address, mask),
        (Name::Email(email), Subtree::Email(base)) => email_within(email, base, false),
        (Name::Uri(uri), Subtree::Uri(base)) => {
            uri_host(uri).is_some_and(|host| host_within(&host, base, false))
        }
        (Name::Directory(rdns), Subtree::Directory(base)) => rdns.starts_with(base),
        _ => false,
    }
}

fn excluded_by(name: &Name<'_>, subtree: &Subtree) -> bool {
    match (name, subtree) {
        (Name::Dns(name), Subtree::Dns(base)) => {
            dns_within(name, base) || wildcard_reaches(name, base)
        }
        (Name::Email(email), Subtree::Email(base)) => email_within(email, base, true),
        // A URI without a host name cannot be shown to lie outside the subtree.
        (Name::Uri(uri), Subtree::Uri(base)) => {
            uri_host(uri).is_none_or(|host| host_within(&host, base, true))
        }
        _ => permitted_by(name, subtree),
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// RFC 5280 dNSName matching: `example.com` covers itself and every subdomain,
/// `.example.com` only the subdomains, the empty base everything.
fn dns_within(name: &str, base: &str) -> bool {
    let name = normalize(name);
    let base = normalize(base);
    if base.is_empty() {
        return true;
    }
    if base.starts_with('.') {
        return name.len() > base.len() && name.ends_with(&base);
    }
    name == base || name.ends_with(&format!(".{base}"))
}

/// Whether a wildcard name `*.d` could match a name in the subtree `base`.
fn wildcard_reaches(name: &str, base: &str) -> bool {
    let Some(domain) = normalize(name).strip_prefix("*.").map(str::to_owned) else {
        return false;
    };
    let base = normalize(base);
    let base = base.trim_start_matches('.');
    base.is_empty() || base.ends_with(&format!(".{domain}"))
}

fn ip_within(ip: &IpAddr, address: &IpAddr, mask: &IpAddr) -> bool {
    match (ip, address, mask) {
        (IpAddr::V4(ip), IpAddr::V4(address), IpAddr::V4(mask)) => {
            let m = u32::from(*mask);
            u32::from(*ip) & m == u32::from(*address) & m
        }
        (IpAddr::V6(ip), IpAddr::V6(address), IpAddr::V6(mask)) => {
            let m = u128::from(*mask);
            u128::from(*ip) & m == u128::from(*address) & m
        }
        _ => false,
    }
}

/// A host against a URI or email host subtree: `.example.com` covers the
/// subdomains; `example.com` that host only, or with `and_subdomains` (the
/// reading some verifiers take for excluded subtrees) its subdomains too.
fn host_within(host: &str, base: &str, and_subdomains: bool) -> bool {
    let host = normalize(host);
    let base = normalize(base);
    if base.is_empty() {
        return true;
    }
    if base.starts_with('.') {
        return host.len() > base.len() && host.ends_with(&base);
    }
    host == base || (and_subdomains && host.ends_with(&format!(".{base}")))
}

/// rfc822Name matching: a full address matches that mailbox (host compared
/// without case), otherwise the base is a host or a `.domain`.
fn email_within(email: &str, base: &str, and_subdomains: bool) -> bool {
    let Some((local, host)) = email.rsplit_once('@') else {
        // Not an address: it fits no permitted subtree and is kept out of excluded ones.
        return and_subdomains;
    };
    match base.rsplit_once('@') {
        Some((base_local, base_host)) => {
            local == base_local && normalize(host) == normalize(base_host)
        }
        None => host_within(host, base, and_subdomains),
    }
}

/// The host of a URI with an authority (`scheme://[userinfo@]host[:port]/…`);
/// `None` without one or when the host is an IP literal (name constraints are
/// about host names there).
fn uri_host(uri: &str) -> Option<String> {
    let (_, rest) = uri.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.starts_with('[') {
        return None;
    }
    let host = host_port.split(':').next().unwrap_or_default();
    if host.is_empty() || host.parse::<IpAddr>().is_ok() {
        return None;
    }
    Some(host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn constraints(permitted: Vec<Subtree>, excluded: Vec<Subtree>) -> NameConstraints {
        NameConstraints {
            permitted,
            excluded,
        }
    }

    fn dns(names: &[&str]) -> SubjectAltNames {
        SubjectAltNames {
            dns: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn check_one(
        c: &NameConstraints,
        sans: &SubjectAltNames,
        cn: Option<&str>,
    ) -> Result<(), NameConstraintViolation> {
        check(&[("CN=Corp Issuing CA", c)], sans, cn, None)
    }

    #[test]
    fn a_dns_base_covers_itself_and_its_subdomains_and_a_leading_dot_only_subdomains() {
        assert!(dns_within("example.com", "example.com"));
        assert!(dns_within("www.Example.COM.", "example.com"));
        assert!(!dns_within("notexample.com", "example.com"));
        assert!(!dns_within("example.com", ".example.com"));
        assert!(dns_within("a.b.example.com", ".example.com"));
        assert!(dns_within("anything", ""));
    }

    #[test]
    fn a_name_outside_a_permitted_dns_subtree_is_refused_naming_field_value_and_ca() {
        let c = constraints(vec![Subtree::Dns("corp.example.com".into())], vec![]);
        check_one(
            &c,
            &dns(&["corp.example.com", "web.corp.example.com"]),
            None,
        )
        .unwrap();
        let error = check_one(&c, &dns(&["web.corp.example.com", "evil.com"]), None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "dnsNames[1] \"evil.com\" is outside the name constraints of CA certificate 1 (CN=Corp Issuing CA): permitted dNSName corp.example.com"
        );
        assert_eq!(error.reason(), "PolicyViolation");
    }

    #[test]
    fn an_excluded_dns_subtree_wins_over_a_permitted_one_and_catches_wildcards() {
        let c = constraints(
            vec![Subtree::Dns(".corp.example.com".into())],
            vec![Subtree::Dns("secret.corp.example.com".into())],
        );
        check_one(&c, &dns(&["web.corp.example.com"]), None).unwrap();
        let error = check_one(&c, &dns(&["db.secret.corp.example.com"]), None).unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with(": excluded dNSName secret.corp.example.com"),
            "{error}"
        );
        let error = check_one(&c, &dns(&["*.corp.example.com"]), None).unwrap_err();
        assert_eq!(error.field, "dnsNames[0]");
    }

    #[test]
    fn a_common_name_that_looks_like_a_host_name_is_held_to_dns_constraints() {
        let c = constraints(vec![Subtree::Dns(".corp.example.com".into())], vec![]);
        check_one(&c, &dns(&[]), Some("web service")).unwrap();
        let error = check_one(&c, &dns(&[]), Some("evil.com")).unwrap_err();
        assert_eq!(error.field, "commonName");
    }

    #[test]
    fn ip_subtrees_are_address_and_mask_per_family() {
        let c = constraints(
            vec![
                Subtree::Ip {
                    address: ip("10.0.0.0"),
                    mask: ip("255.0.0.0"),
                },
                Subtree::Ip {
                    address: ip("fd00::"),
                    mask: ip("ff00::"),
                },
            ],
            vec![Subtree::Ip {
                address: ip("10.9.0.0"),
                mask: ip("255.255.0.0"),
            }],
        );
        let sans = |ips: &[&str]| SubjectAltNames {
            ips: ips.iter().map(|s| ip(s)).collect(),
            ..Default::default()
        };
        check_one(&c, &sans(&["10.1.2.3", "fd00::1"]), None).unwrap();
        let error = check_one(&c, &sans(&["10.1.2.3", "192.168.0.1"]), None).unwrap_err();
        assert_eq!(
            (error.field.as_str(), error.constraint.as_str()),
            ("ipAddresses[1]", "permitted iPAddress 10.0.0.0/8, fd00::/8")
        );
        let error = check_one(&c, &sans(&["10.9.1.1"]), None).unwrap_err();
        assert_eq!(error.constraint, "excluded iPAddress 10.9.0.0/16");
        // DNS names are not constrained by IP subtrees.
        check_one(&c, &dns(&["anything.example"]), None).unwrap();
    }

    #[test]
    fn email_subtrees_are_a_mailbox_a_host_or_a_domain() {
        assert!(email_within("ops@example.com", "ops@EXAMPLE.com", false));
        assert!(!email_within("dev@example.com", "ops@example.com", false));
        assert!(email_within("dev@example.com", "example.com", false));
        assert!(!email_within("dev@mail.example.com", "example.com", false));
        assert!(email_within("dev@mail.example.com", ".example.com", false));
        assert!(!email_within("dev@example.com", ".example.com", false));
        let c = constraints(
            vec![Subtree::Email(".corp.example.com".into())],
            vec![Subtree::Email("ceo@mail.corp.example.com".into())],
        );
        let sans = |emails: &[&str]| SubjectAltNames {
            emails: emails.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        check_one(&c, &sans(&["dev@mail.corp.example.com"]), None).unwrap();
        let error = check_one(&c, &sans(&["dev@gmail.com"]), None).unwrap_err();
        assert_eq!(error.constraint, "permitted rfc822Name .corp.example.com");
        let error = check_one(&c, &sans(&["ceo@mail.corp.example.com"]), None).unwrap_err();
        assert_eq!(
            error.constraint,
            "excluded rfc822Name ceo@mail.corp.example.com"
        );
    }

    #[test]
    fn uri_subtrees_constrain_the_host() {
        assert_eq!(
            uri_host("https://user@Web.Example.com:8443/x?y").as_deref(),
            Some("Web.Example.com")
        );
        assert_eq!(
            uri_host("spiffe://corp.example.com/ns/a/sa/b").as_deref(),
            Some("corp.example.com")
        );
        assert_eq!(uri_host("urn:uuid:1234"), None);
        assert_eq!(uri_host("https://10.0.0.1/"), None);
        let c = constraints(
            vec![
                Subtree::Uri(".corp.example.com".into()),
                Subtree::Uri("corp.example.com".into()),
            ],
            vec![Subtree::Uri("legacy.corp.example.com".into())],
        );
        let sans = |uris: &[&str]| SubjectAltNames {
            uris: uris.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        check_one(
            &c,
            &sans(&[
                "spiffe://corp.example.com/ns/a",
                "https://web.corp.example.com/",
            ]),
            None,
        )
        .unwrap();
        let error = check_one(&c, &sans(&["https://evil.com/"]), None).unwrap_err();
        assert_eq!(error.field, "uris[0]");
        let error = check_one(&c, &sans(&["urn:uuid:1234"]), None).unwrap_err();
        assert_eq!(
            error.field, "uris[0]",
            "a URI without a host fits no permitted subtree"
        );
        let error =
            check_one(&c, &sans(&["https://a.legacy.corp.example.com/"]), None).unwrap_err();
        assert_eq!(
            error.constraint,
            "excluded uniformResourceIdentifier legacy.corp.example.com"
        );
    }

    #[test]
    fn a_permitted_directory_name_is_a_prefix_of_the_subject_compared_without_case() {
        let c = constraints(
            vec![Subtree::Directory(vec![
                vec![("2.5.4.6".into(), "de".into())],
                vec![("2.5.4.10".into(), "example corp".into())],
            ])],
            vec![],
        );
        let subject = |o: &str| CsrSubject {
            countries: vec!["DE".into()],
            organizations: vec![o.into()],
            common_name: Some("web".into()),
            ..Default::default()
        };
        let chain = [("CN=Corp Root", &c)];
        check(&chain, &dns(&[]), None, Some(&subject("Example  Corp"))).unwrap();
        let error = check(&chain, &dns(&[]), None, Some(&subject("Other Corp"))).unwrap_err();
        assert_eq!(error.field, "subject");
        assert_eq!(
            error.constraint,
            "permitted directoryName C=de, O=example corp"
        );
        check(&chain, &dns(&[]), None, Some(&CsrSubject::default())).unwrap();
    }

    #[test]
    fn every_certificate_of_the_chain_constrains_and_is_named_by_position() {
        let issuing = NameConstraints::default();
        let root = constraints(vec![], vec![Subtree::Dns("evil.com".into())]);
        let error = check(
            &[("CN=Corp Issuing CA", &issuing), ("CN=Corp Root", &root)],
            &dns(&["ok.example", "www.evil.com"]),
            None,
            None,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "dnsNames[1] \"www.evil.com\" is outside the name constraints of CA certificate 2 (CN=Corp Root): excluded dNSName evil.com"
        );
    }

    #[test]
    fn masks_print_as_prefix_lengths_when_contiguous() {
        assert_eq!(prefix_length(&ip("255.255.255.0")), Some(24));
        assert_eq!(prefix_length(&ip("0.0.0.0")), Some(0));
        assert_eq!(prefix_length(&ip("255.0.255.0")), None);
        assert_eq!(prefix_length(&ip("ffff:ffff::")), Some(32));
    }
}
