//! The CAs the operator holds at one moment: the one that issues, and during a
//! rotation the one clients are being taught to trust next (before the
//! switch) or the one whose certificates are still out there (after it). The
//! trust bundle is the roots of all of them.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{CertificateAuthority, TrustBundle, parse_certificate_info};

/// The issuing CA and the others clients must trust meanwhile.
#[derive(Clone, Debug)]
pub struct Authorities {
    current: Arc<CertificateAuthority>,
    others: Vec<Arc<CertificateAuthority>>,
    bundle: TrustBundle,
}

impl Authorities {
    /// Only `current`: the bundle is its root.
    pub fn single(current: Arc<CertificateAuthority>) -> Self {
        Self::new(current, Vec::new())
    }

    /// `current` issues; `others` (the next or the previous CA) are trusted.
    ///
    /// The bundle lists the roots oldest first (by notBefore, then
    /// fingerprint), not issuing CA first: the switch from one CA to the next
    /// then leaves `ca.crt` and the truststores byte for byte as they were, so
    /// it rewrites no Secret.
    pub fn new(current: Arc<CertificateAuthority>, others: Vec<Arc<CertificateAuthority>>) -> Self {
        let mut roots: Vec<(jiff::Timestamp, String, Vec<u8>)> = std::iter::once(&current)
            .chain(&others)
            .map(|ca| {
                let der = ca.root_der().to_vec();
                let not_before = parse_certificate_info(&der)
                    .map(|i| i.not_before)
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
                (not_before, super::fingerprint_sha256(&der), der)
            })
            .collect();
        roots.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let bundle = TrustBundle::new(roots.into_iter().map(|(_, _, der)| der))
            .expect("every root was parsed when its CA loaded");
        Authorities {
            current,
            others,
            bundle,
        }
    }

    /// The CA that issues.
    pub fn current(&self) -> &Arc<CertificateAuthority> {
        &self.current
    }

    /// The other CAs clients must trust: the next before the switch, the
    /// previous after it.
    pub fn others(&self) -> &[Arc<CertificateAuthority>] {
        &self.others
    }

    /// Every CA, the issuing one first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<CertificateAuthority>> {
        std::iter::once(&self.current).chain(&self.others)
    }

    /// The roots clients should trust.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// The CA among these that signed `leaf_der`.
    pub fn issuer_of(&self, leaf_der: &[u8]) -> Option<&Arc<CertificateAuthority>> {
        self.all().find(|ca| crate::bundle::issued_by(leaf_der, ca))
    }

    /// Changes whenever the issuing CA or the bundle changes: what a Secret
    /// was last checked against.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.current.fingerprint().as_bytes());
        for f in self.bundle.fingerprints() {
            h.update(b",");
            h.update(f.as_bytes());
        }
        hex::encode(&h.finalize()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::KeyAlgorithm;
    use std::time::Duration;

    fn ca(name: &str, at: &str) -> Arc<CertificateAuthority> {
        Arc::new(
            CertificateAuthority::generate_self_signed(
                KeyAlgorithm::EcdsaP256,
                name,
                Duration::from_secs(24 * 3600),
                at.parse().unwrap(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn the_bundle_is_oldest_first_so_the_switch_changes_no_byte_of_it() {
        let old = ca("old", "2026-01-01T00:00:00Z");
        let new = ca("new", "2026-01-01T12:00:00Z");
        let overlap = Authorities::new(old.clone(), vec![new.clone()]);
        let switched = Authorities::new(new.clone(), vec![old.clone()]);
        assert_eq!(overlap.bundle().pem(), switched.bundle().pem());
        assert_eq!(
            overlap.bundle().roots(),
            [old.root_der().to_vec(), new.root_der().to_vec()]
        );
        assert_ne!(
            overlap.fingerprint(),
            switched.fingerprint(),
            "the issuing CA changed"
        );
        assert_ne!(
            Authorities::single(old.clone()).fingerprint(),
            overlap.fingerprint(),
            "the bundle changed"
        );
    }
}
