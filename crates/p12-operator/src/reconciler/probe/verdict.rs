//! What a probe round's report means for the request: the `Verified`
//! condition and the bounded `status.probe`. Pure; uses the report types and
//! the reconciler's condition helpers.

use std::collections::BTreeSet;

use crate::api::{CertificateRequest, CertificateRequestStatus, ProbeStatus};
use crate::probe::{ProbeReport, Reason};
use crate::reconciler::status;

pub(super) fn addresses(s: &ProbeStatus) -> BTreeSet<String> {
    s.endpoints.iter().map(|e| e.address.clone()).collect()
}

/// The Verified condition for a report: True when every endpoint verified and
/// serves the issued certificate, else the most serious reason and the failing
/// endpoints named.
pub fn verdict(report: &ProbeReport) -> (bool, &'static str, String) {
    if report.endpoints.is_empty() {
        return (
            false,
            "NoEndpoints",
            "the probe reported no endpoints".into(),
        );
    }
    let failing: Vec<_> = report
        .endpoints
        .iter()
        .filter(|e| e.reason != Reason::Verified)
        .collect();
    if failing.is_empty() && report.omitted_endpoints == 0 {
        return (
            true,
            "Verified",
            format!(
                "all {} endpoints serve the issued certificate",
                report.endpoints.len()
            ),
        );
    }
    const ORDER: [Reason; 8] = [
        Reason::UntrustedChain,
        Reason::Expired,
        Reason::HostnameMismatch,
        Reason::StaleCertificate,
        Reason::EndpointRefused,
        Reason::HandshakeFailed,
        Reason::Timeout,
        Reason::ConnectionFailed,
    ];
    let worst = ORDER
        .iter()
        .find(|r| failing.iter().any(|e| e.reason == **r))
        .copied()
        .unwrap_or(Reason::HandshakeFailed);
    let mut parts: Vec<String> = failing
        .iter()
        .map(|e| match &e.pod {
            Some(pod) => format!("{} (pod {pod}): {} ({})", e.address, e.reason, e.message),
            None => format!("{}: {} ({})", e.address, e.reason, e.message),
        })
        .collect();
    if report.omitted_endpoints > 0 {
        parts.push(format!(
            "{} endpoints were not reported",
            report.omitted_endpoints
        ));
    }
    (
        false,
        worst.as_str(),
        format!(
            "{} of {} endpoints fail: {}",
            failing.len(),
            report.endpoints.len(),
            parts.join("; ")
        ),
    )
}

pub(super) fn set_verified(
    cr: &CertificateRequest,
    status: &mut CertificateRequestStatus,
    ok: bool,
    reason: &str,
    message: &str,
) -> bool {
    let before = status::get(&status.conditions, status::VERIFIED)
        .map(|c| (c.status.clone(), c.reason.clone()));
    status::set(
        &mut status.conditions,
        status::VERIFIED,
        ok,
        reason,
        &status::truncate(message),
        cr.metadata.generation,
    );
    before
        != Some((
            if ok { "True" } else { "False" }.to_string(),
            reason.to_string(),
        ))
}

/// `status.probe.endpoints` lists at most this many endpoints, failing ones
/// first, so a Service with thousands of endpoints cannot outgrow the object.
pub const MAX_STATUS_ENDPOINTS: usize = 200;

/// The round's result in `status.probe`, bounded by [`MAX_STATUS_ENDPOINTS`].
pub(super) fn bounded_status(report: &ProbeReport) -> ProbeStatus {
    let mut status = report.to_status();
    if status.endpoints.len() > MAX_STATUS_ENDPOINTS {
        // Stable: each group keeps the endpoints' order.
        status
            .endpoints
            .sort_by_key(|e| e.reason == Reason::Verified.as_str());
        status.endpoints.truncate(MAX_STATUS_ENDPOINTS);
    }
    status
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::probe::ProbeResult;
    use jiff::Timestamp;

    pub(crate) fn result(address: &str, reason: Reason) -> ProbeResult {
        serde_json::from_value(serde_json::json!({
            "address": address, "verified": reason == Reason::Verified, "reason": reason,
            "message": format!("{reason} seen"), "chainLength": 2
        }))
        .unwrap()
    }

    pub(crate) fn report(results: Vec<ProbeResult>) -> ProbeReport {
        ProbeReport {
            endpoints: results,
            probed_at: Timestamp::now(),
            omitted_endpoints: 0,
            nonce: None,
        }
    }

    #[test]
    fn every_endpoint_verified_makes_verified_true() {
        let (ok, reason, _) = verdict(&report(vec![
            result("10.0.0.1:443", Reason::Verified),
            result("10.0.0.2:443", Reason::Verified),
        ]));
        assert!(ok);
        assert_eq!(reason, "Verified");
    }

    #[test]
    fn one_stale_endpoint_is_named_and_the_others_are_not() {
        let (ok, reason, message) = verdict(&report(vec![
            result("10.0.0.1:443", Reason::Verified),
            result("10.0.0.2:443", Reason::StaleCertificate),
        ]));
        assert!(!ok);
        assert_eq!(reason, "StaleCertificate");
        assert!(
            message.contains("10.0.0.2:443") && !message.contains("10.0.0.1:443"),
            "{message}"
        );
        assert!(message.starts_with("1 of 2 endpoints fail"), "{message}");
    }

    #[test]
    fn a_large_status_keeps_the_failing_endpoints() {
        let results = (0..MAX_STATUS_ENDPOINTS + 50)
            .map(|i| {
                let reason = if i == MAX_STATUS_ENDPOINTS + 40 {
                    Reason::Timeout
                } else {
                    Reason::Verified
                };
                result(&format!("10.0.{}.{}:443", i / 250, i % 250), reason)
            })
            .collect();
        let status = bounded_status(&report(results));
        assert_eq!(status.endpoints.len(), MAX_STATUS_ENDPOINTS);
        assert_eq!(status.endpoints[0].reason, "Timeout");
    }

    #[test]
    fn the_most_serious_reason_wins() {
        let (_, reason, _) = verdict(&report(vec![
            result("a:1", Reason::Timeout),
            result("b:1", Reason::UntrustedChain),
            result("c:1", Reason::StaleCertificate),
        ]));
        assert_eq!(reason, "UntrustedChain");
    }
}
