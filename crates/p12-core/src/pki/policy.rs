//! What may be signed: the checks between a verified CSR and the signature.
//!
//! Every violation carries a sentence a user can act on, naming the field
//! of the request (`dnsNames[3]`, `duration`, …) that has to change.

use std::collections::BTreeSet;
use std::time::Duration;

use super::csr::{CsrSubject, VerifiedCsr};
use super::keys::KeyAlgorithm;
use super::signer::{LeafProfile, Usage};

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// X.509 upper bound for a commonName (RFC 5280, ub-common-name).
pub const MAX_COMMON_NAME_LEN: usize = 64;

/// Limits applied before signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub min_duration: Duration,
    pub max_duration: Duration,
    pub allow_wildcard_dns: bool,
    pub allow_ip_sans: bool,
    /// Upper bound on DNS + IP + URI + email names together.
    pub max_sans: usize,
    /// Upper bound on the length of any single name.
    pub max_name_len: usize,
}

impl Default for Policy {
    /// 1 hour to 397 days (the CA/Browser Forum ceiling), wildcards and IPs allowed,
    /// at most 100 names of at most 253 characters.
    fn default() -> Self {
        Self {
            min_duration: Duration::from_secs(HOUR),
            max_duration: Duration::from_secs(397 * DAY),
            allow_wildcard_dns: true,
            allow_ip_sans: true,
            max_sans: 100,
            max_name_len: 253,
        }
    }
}

/// Why a request was refused, phrased for the person who wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PolicyViolation {
    message: String,
    /// True when the request is well-formed but this installation's limits
    /// refuse it; false when the request itself is malformed.
    forbidden: bool,
}

impl PolicyViolation {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            forbidden: false,
        }
    }

    fn forbidden(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            forbidden: true,
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The condition reason: `PolicyViolation` for what the installation's
    /// limits refuse, `InvalidRequest` for what no installation could issue.
    pub fn reason(&self) -> &'static str {
        if self.forbidden {
            "PolicyViolation"
        } else {
            "InvalidRequest"
        }
    }
}

type Checked = Result<(), PolicyViolation>;

impl Policy {
    /// Checks the profile against the limits and the CSR against the profile.
    pub fn check(&self, profile: &LeafProfile, csr: &VerifiedCsr) -> Checked {
        self.check_profile(profile, csr.key_algorithm())?;
        if csr.requests_ca() {
            return Err(PolicyViolation::new(
                "the CSR asks for a CA certificate (basicConstraints CA:true, keyCertSign or cRLSign); only leaf certificates are issued",
            ));
        }
        check_csr_matches(profile, csr)
    }

    /// Everything about a request that can be checked before a key exists:
    /// the same rules [`Policy::check`] applies at signing, so a request that
    /// passes here is never refused after its key was generated.
    pub fn check_profile(&self, profile: &LeafProfile, algorithm: KeyAlgorithm) -> Checked {
        self.check_duration(profile.duration)?;
        self.check_names(profile)?;
        check_usages(profile, algorithm)
    }

    fn check_duration(&self, duration: Duration) -> Checked {
        if duration < self.min_duration {
            return Err(PolicyViolation::forbidden(format!(
                "duration {} is shorter than the minimum {}",
                human(duration),
                human(self.min_duration)
            )));
        }
        if duration > self.max_duration {
            return Err(PolicyViolation::forbidden(format!(
                "duration {} is longer than the maximum {}",
                human(duration),
                human(self.max_duration)
            )));
        }
        Ok(())
    }

    fn check_names(&self, profile: &LeafProfile) -> Checked {
        let sans = &profile.sans;
        if profile.subject.common_name.is_none() && sans.is_empty() {
            return Err(PolicyViolation::new(
                "the request names nothing: set commonName or at least one of dnsNames, ipAddresses, uris, emailAddresses",
            ));
        }
        if sans.len() > self.max_sans {
            return Err(PolicyViolation::forbidden(format!(
                "the request has {} names; at most {} dnsNames, ipAddresses, uris and emailAddresses together are allowed",
                sans.len(),
                self.max_sans
            )));
        }
        if let Some(common_name) = &profile.subject.common_name
            && (common_name.is_empty() || common_name.chars().count() > MAX_COMMON_NAME_LEN)
        {
            return Err(PolicyViolation::new(format!(
                "commonName must be 1 to {MAX_COMMON_NAME_LEN} characters long (X.509 limit); \
                 put longer names in dnsNames only"
            )));
        }
        check_subject_values(&profile.subject)?;
        for (i, name) in sans.dns.iter().enumerate() {
            self.check_length("dnsNames", i, name)?;
            if let Err(why) = validate_dns_name(name, self.allow_wildcard_dns) {
                let message = format!("dnsNames[{i}] {name:?} {why}");
                return Err(if why.contains("does not issue") {
                    PolicyViolation::forbidden(message)
                } else {
                    PolicyViolation::new(message)
                });
            }
        }
        if !self.allow_ip_sans && !sans.ips.is_empty() {
            return Err(PolicyViolation::forbidden(format!(
                "ipAddresses[0] {} is not allowed: this installation does not issue certificates for IP addresses",
                sans.ips[0]
            )));
        }
        for (i, uri) in sans.uris.iter().enumerate() {
            self.check_length("uris", i, uri)?;
            if !is_uri(uri) {
                return Err(PolicyViolation::new(format!(
                    "uris[{i}] {uri:?} is not an absolute URI (scheme:rest, e.g. spiffe://cluster.local/ns/a/sa/b)"
                )));
            }
        }
        for (i, email) in sans.emails.iter().enumerate() {
            self.check_length("emailAddresses", i, email)?;
            let valid = email.rsplit_once('@').is_some_and(|(local, domain)| {
                is_email_local_part(local) && validate_dns_name(domain, false).is_ok()
            });
            if !valid {
                return Err(PolicyViolation::new(format!(
                    "emailAddresses[{i}] {email:?} is not a valid email address (local@domain)"
                )));
            }
        }
        Ok(())
    }

    fn check_length(&self, field: &str, index: usize, name: &str) -> Checked {
        if name.len() > self.max_name_len {
            return Err(PolicyViolation::forbidden(format!(
                "{field}[{index}] is {} characters long; at most {} are allowed",
                name.len(),
                self.max_name_len
            )));
        }
        Ok(())
    }
}

fn check_subject_values(subject: &CsrSubject) -> Checked {
    for (field, values) in [
        ("subject.organizations", &subject.organizations),
        ("subject.organizationalUnits", &subject.organizational_units),
        ("subject.localities", &subject.localities),
        ("subject.provinces", &subject.provinces),
    ] {
        for (i, value) in values.iter().enumerate() {
            if value.is_empty() || value.chars().count() > MAX_COMMON_NAME_LEN * 2 {
                return Err(PolicyViolation::new(format!(
                    "{field}[{i}] must be 1 to 128 characters long"
                )));
            }
        }
    }
    for (i, country) in subject.countries.iter().enumerate() {
        if country.len() != 2 || !country.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(PolicyViolation::new(format!(
                "subject.countries[{i}] {country:?} is not a two-letter ISO 3166 code such as \"DE\""
            )));
        }
    }
    Ok(())
}

fn check_usages(profile: &LeafProfile, algorithm: KeyAlgorithm) -> Checked {
    if profile.usages.is_empty() {
        return Err(PolicyViolation::new(
            "usages must name at least one usage, e.g. serverAuth",
        ));
    }
    for usage in &profile.usages {
        if !usage.fits_key(algorithm) {
            let needs = match usage {
                Usage::KeyAgreement => "an ECDSA key",
                _ => "an RSA key",
            };
            return Err(PolicyViolation::new(format!(
                "usage {usage} needs {needs}, but the private key is {algorithm}; remove the usage or change privateKey.algorithm"
            )));
        }
    }
    Ok(())
}

/// The CSR must ask for exactly what the request specifies, no more, no less.
fn check_csr_matches(profile: &LeafProfile, csr: &VerifiedCsr) -> Checked {
    if csr.unsupported_san_count() > 0 {
        return Err(PolicyViolation::new(
            "the CSR carries subject alternative names of unsupported types (only DNS, IP, URI and email are issued)",
        ));
    }
    let (want, got) = (&profile.subject, csr.subject());
    if want.common_name != got.common_name {
        return Err(PolicyViolation::new(format!(
            "the CSR's commonName {:?} differs from the requested commonName {:?}",
            got.common_name.as_deref().unwrap_or(""),
            want.common_name.as_deref().unwrap_or("")
        )));
    }
    for (field, want, got) in [
        ("organizations", &want.organizations, &got.organizations),
        (
            "organizationalUnits",
            &want.organizational_units,
            &got.organizational_units,
        ),
        ("countries", &want.countries, &got.countries),
        ("localities", &want.localities, &got.localities),
        ("provinces", &want.provinces, &got.provinces),
    ] {
        if as_set(want.iter().cloned()) != as_set(got.iter().cloned()) {
            return Err(PolicyViolation::new(format!(
                "the CSR's subject {field} differ from the requested ones"
            )));
        }
    }
    let (want, got) = (&profile.sans, csr.sans());
    compare_names(
        "dnsNames",
        want.dns.iter().map(|d| d.to_ascii_lowercase()),
        got.dns.iter().map(|d| d.to_ascii_lowercase()),
    )?;
    compare_names(
        "ipAddresses",
        want.ips.iter().map(|ip| ip.to_string()),
        got.ips.iter().map(|ip| ip.to_string()),
    )?;
    compare_names("uris", want.uris.iter().cloned(), got.uris.iter().cloned())?;
    compare_names(
        "emailAddresses",
        want.emails.iter().cloned(),
        got.emails.iter().cloned(),
    )
}

fn as_set(items: impl Iterator<Item = String>) -> BTreeSet<String> {
    items.collect()
}

fn compare_names(
    field: &str,
    want: impl Iterator<Item = String>,
    got: impl Iterator<Item = String>,
) -> Checked {
    let (want, got) = (as_set(want), as_set(got));
    if let Some(extra) = got.difference(&want).next() {
        return Err(PolicyViolation::new(format!(
            "the CSR asks for {extra:?}, which is not among the requested {field}"
        )));
    }
    if let Some(missing) = want.difference(&got).next() {
        return Err(PolicyViolation::new(format!(
            "the CSR lacks {missing:?} from the requested {field}"
        )));
    }
    Ok(())
}

/// Validates a DNS name as RFC 1123 labels, optionally with a leading `*.`.
/// Returns the end of a sentence explaining the problem.
pub fn validate_dns_name(name: &str, allow_wildcard: bool) -> Result<(), String> {
    let base = match name.strip_prefix("*.") {
        Some(rest) if allow_wildcard => {
            if !rest.contains('.') {
                return Err(
                    "is a wildcard over a top-level domain; use at least two labels after \"*.\""
                        .into(),
                );
            }
            rest
        }
        Some(_) => return Err("is a wildcard, which this installation does not issue".into()),
        None => name,
    };
    if base.is_empty() {
        return Err("is not a valid DNS name: it is empty".into());
    }
    if base.len() > 253 {
        return Err("is not a valid DNS name: longer than 253 characters".into());
    }
    if base.ends_with('.') {
        return Err("is not a valid DNS name: remove the trailing dot".into());
    }
    for label in base.split('.') {
        if label.is_empty() {
            return Err(
                "is not a valid DNS name: it has an empty label (\"..\" or a leading dot)".into(),
            );
        }
        if label.contains('*') {
            return Err(
                "is not a valid DNS name: \"*\" is only allowed as the whole first label".into(),
            );
        }
        if label.len() > 63 {
            return Err(format!(
                "is not a valid DNS name: label {label:?} is longer than 63 characters"
            ));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!(
                "is not a valid DNS name: label {label:?} may contain only letters, digits and '-'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "is not a valid DNS name: label {label:?} starts or ends with '-'"
            ));
        }
    }
    Ok(())
}

fn is_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
        && uri.chars().all(|c| c.is_ascii_graphic())
}

fn is_email_local_part(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= 64
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
}

/// Formats a duration the way the API writes them (`2160h`, `90m`, `45s`).
pub(crate) fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs.is_multiple_of(HOUR) {
        format!("{}h", secs / HOUR)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::csr::{SubjectAltNames, build_csr};
    use crate::pki::keys::{KeyAlgorithm, PrivateKey};

    fn profile() -> LeafProfile {
        LeafProfile {
            subject: CsrSubject::with_common_name("web.shop.svc"),
            sans: SubjectAltNames {
                dns: vec!["web.shop.svc".into(), "web.shop.svc.cluster.local".into()],
                ips: vec!["10.0.0.7".parse().unwrap()],
                ..SubjectAltNames::default()
            },
            usages: vec![Usage::ServerAuth, Usage::ClientAuth],
            duration: Duration::from_secs(90 * DAY),
        }
    }

    fn csr_for(profile: &LeafProfile, algorithm: KeyAlgorithm) -> VerifiedCsr {
        let key = PrivateKey::generate(algorithm).unwrap();
        VerifiedCsr::parse_and_verify(&build_csr(&key, &profile.subject, &profile.sans).unwrap())
            .unwrap()
    }

    fn violation(profile: &LeafProfile) -> String {
        let csr = csr_for(profile, KeyAlgorithm::EcdsaP256);
        Policy::default()
            .check(profile, &csr)
            .unwrap_err()
            .message()
            .to_owned()
    }

    #[test]
    fn a_matching_request_passes() {
        let profile = profile();
        Policy::default()
            .check(&profile, &csr_for(&profile, KeyAlgorithm::EcdsaP256))
            .unwrap();
    }

    #[test]
    fn an_invalid_dns_name_is_reported_with_its_index() {
        let mut profile = profile();
        profile.sans.dns = vec![
            "a.example".into(),
            "b.example".into(),
            "c.example".into(),
            "a..b".into(),
        ];
        assert_eq!(
            violation(&profile),
            "dnsNames[3] \"a..b\" is not a valid DNS name: it has an empty label (\"..\" or a leading dot)"
        );
    }

    #[test]
    fn dns_names_follow_rfc_1123() {
        for good in [
            "localhost",
            "a.b",
            "xn--bcher-kva.example",
            "1.example",
            "A-b.Example",
        ] {
            assert!(validate_dns_name(good, false).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a.example",
            "a-.example",
            "a_b.example",
            "a.example.",
            "a b",
            "a.*.example",
            &"a".repeat(64),
        ] {
            assert!(validate_dns_name(bad, true).is_err(), "{bad}");
        }
        assert!(validate_dns_name("*.shop.example", true).is_ok());
        assert!(validate_dns_name("*.shop.example", false).is_err());
        assert!(validate_dns_name("*.com", true).is_err());
    }

    #[test]
    fn wildcards_are_refused_when_the_policy_says_so() {
        let mut profile = profile();
        profile.sans.dns = vec!["*.shop.example".into()];
        let csr = csr_for(&profile, KeyAlgorithm::EcdsaP256);
        let strict = Policy {
            allow_wildcard_dns: false,
            ..Policy::default()
        };
        let message = strict
            .check(&profile, &csr)
            .unwrap_err()
            .message()
            .to_owned();
        assert_eq!(
            message,
            "dnsNames[0] \"*.shop.example\" is a wildcard, which this installation does not issue"
        );
        Policy::default().check(&profile, &csr).unwrap();
    }

    #[test]
    fn ip_addresses_are_refused_when_the_policy_says_so() {
        let profile = profile();
        let csr = csr_for(&profile, KeyAlgorithm::EcdsaP256);
        let strict = Policy {
            allow_ip_sans: false,
            ..Policy::default()
        };
        assert!(
            strict
                .check(&profile, &csr)
                .unwrap_err()
                .message()
                .starts_with("ipAddresses[0] 10.0.0.7 is not allowed")
        );
    }

    #[test]
    fn durations_outside_the_bounds_are_refused() {
        let mut profile = profile();
        profile.duration = Duration::from_secs(30 * 60);
        assert_eq!(
            violation(&profile),
            "duration 30m is shorter than the minimum 1h"
        );
        profile.duration = Duration::from_secs(400 * DAY);
        assert_eq!(
            violation(&profile),
            "duration 9600h is longer than the maximum 9528h"
        );
    }

    #[test]
    fn too_many_names_are_refused() {
        let mut profile = profile();
        profile.sans.dns = (0..101).map(|i| format!("n{i}.example")).collect();
        profile.sans.ips.clear();
        assert!(violation(&profile).starts_with("the request has 101 names; at most 100"));
    }

    #[test]
    fn a_csr_naming_other_hosts_than_requested_is_refused() {
        let requested = profile();
        let mut sneaky = profile();
        sneaky.sans.dns.push("bank.example".into());
        let csr = csr_for(&sneaky, KeyAlgorithm::EcdsaP256);
        let message = Policy::default()
            .check(&requested, &csr)
            .unwrap_err()
            .message()
            .to_owned();
        assert_eq!(
            message,
            "the CSR asks for \"bank.example\", which is not among the requested dnsNames"
        );

        let mut short = profile();
        short.sans.ips.clear();
        let csr = csr_for(&short, KeyAlgorithm::EcdsaP256);
        let message = Policy::default()
            .check(&requested, &csr)
            .unwrap_err()
            .message()
            .to_owned();
        assert_eq!(
            message,
            "the CSR lacks \"10.0.0.7\" from the requested ipAddresses"
        );
    }

    #[test]
    fn key_encipherment_on_an_ec_key_is_refused() {
        let mut profile = profile();
        profile.usages.push(Usage::KeyEncipherment);
        assert_eq!(
            violation(&profile),
            "usage keyEncipherment needs an RSA key, but the private key is ECDSA P-256; \
             remove the usage or change privateKey.algorithm"
        );
    }

    #[test]
    fn a_request_without_any_name_is_refused() {
        let profile = LeafProfile {
            subject: CsrSubject::default(),
            sans: SubjectAltNames::default(),
            usages: vec![Usage::ServerAuth],
            duration: Duration::from_secs(DAY),
        };
        assert!(violation(&profile).starts_with("the request names nothing"));
    }

    #[test]
    fn an_overlong_common_name_is_refused() {
        let mut profile = profile();
        profile.subject.common_name = Some("a".repeat(65));
        assert!(violation(&profile).starts_with("commonName must be 1 to 64 characters"));
    }

    #[test]
    fn bad_uris_emails_and_countries_are_refused() {
        let mut p = profile();
        p.sans.uris = vec!["not a uri".into()];
        assert!(violation(&p).starts_with("uris[0] \"not a uri\" is not an absolute URI"));
        let mut p = profile();
        p.sans.emails = vec!["ops@".into()];
        assert!(
            violation(&p).starts_with("emailAddresses[0] \"ops@\" is not a valid email address")
        );
        let mut p = profile();
        p.subject.countries = vec!["Germany".into()];
        assert!(violation(&p).starts_with("subject.countries[0] \"Germany\" is not a two-letter"));
    }
}
