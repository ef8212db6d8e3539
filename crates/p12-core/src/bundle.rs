//! The Secret's contents: building them from key, certificate and CA, reading
//! them back, and judging whether what is there still serves the plan. Pure.

use std::collections::BTreeMap;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::keystore::{self, Profile};
use crate::pki::{self, Authorities, CertificateAuthority, PrivateKey};
use crate::plan::Plan;
use crate::sensitive::SecretString;
use sha2::Sha256;

pub const KEYSTORE: &str = "keystore.p12";
pub const TRUSTSTORE: &str = "truststore.p12";
pub const PASSWORD: &str = "keystore-password";
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";
/// Every data key the operator owns; other keys in the Secret are left alone.
pub const OWNED_KEYS: [&str; 6] = [KEYSTORE, TRUSTSTORE, PASSWORD, TLS_CRT, TLS_KEY, CA_CRT];

/// Annotations on the Secret (and some on the request).
pub mod annotations {
    /// Every annotation the operator reads or writes starts with this.
    pub const PREFIX: &str = "p12-operator.io/";
    pub const REQUEST: &str = "p12-operator.io/request";
    pub const SERIAL: &str = "p12-operator.io/serial";
    pub const FINGERPRINT: &str = "p12-operator.io/fingerprint-sha256";
    pub const NOT_BEFORE: &str = "p12-operator.io/not-before";
    pub const NOT_AFTER: &str = "p12-operator.io/not-after";
    pub const SPEC_HASH: &str = "p12-operator.io/spec-hash";
    pub const PROFILE: &str = "p12-operator.io/keystore-profile";
    pub const ALIAS: &str = "p12-operator.io/keystore-alias";
    pub const CA_FINGERPRINT: &str = "p12-operator.io/ca-fingerprint-sha256";
    pub const REVISION: &str = "p12-operator.io/revision";
    /// On a request: set (to any new value) to force a re-issue; `p12-operator renew` does it.
    pub const RENEW_REQUESTED: &str = "p12-operator.io/renew-requested-at";
    /// On the Secret: the `RENEW_REQUESTED` value already honoured.
    pub const RENEW_HONOURED: &str = "p12-operator.io/renew-honoured";
    /// On the Secret: [`super::keystore_mac`] of the keystores as written.
    pub const KEYSTORE_MAC: &str = "p12-operator.io/keystore-mac";
    /// On a Secret a request names in `keystore.passwordSecretRef`: its owner's
    /// consent to its use as a keystore password, `*` (any request in the
    /// namespace) or a comma-separated list of request names. See
    /// [`super::password_use_allowed`].
    pub const PASSWORD_FOR: &str = "p12-operator.io/password-for";
}

/// Whether a Secret whose [`annotations::PASSWORD_FOR`] annotation is `consent`
/// lets the request named `request` use it as its keystore password: `*`, or
/// a comma-separated list of request names (whitespace around names ignored).
/// No annotation, an empty one, or one that does not name the request: no.
pub fn password_use_allowed(consent: Option<&str>, request: &str) -> bool {
    let Some(consent) = consent else {
        return false;
    };
    if consent.trim() == "*" {
        return true;
    }
    !request.is_empty() && consent.split(',').any(|n| n.trim() == request)
}

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "p12-operator";
pub const REQUEST_LABEL: &str = "p12-operator.io/request";

/// The key pair and leaf of a bundle.
pub struct Material {
    pub key: PrivateKey,
    pub leaf_der: Vec<u8>,
}

fn pem_block(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

/// The data of the Secret: PKCS#12 keystore and truststore, PEM files, and the
/// password when the operator generated it.
pub fn build_data(
    material: &Material,
    authorities: &Authorities,
    plan: &Plan,
    password: &SecretString,
    generated_password: bool,
) -> Result<BTreeMap<String, ByteString>, keystore::KeystoreError> {
    // The chain of the CA that signed the leaf (the issuing CA, or the
    // previous one for a leaf not re-issued yet after a switch).
    let ca = authorities
        .issuer_of(&material.leaf_der)
        .unwrap_or(authorities.current());
    let trust = authorities.bundle();
    // keystore.p12: leaf, then the CA chain up to the root (Java wants it whole).
    let keystore = keystore::build_keystore(
        &material.key,
        &material.leaf_der,
        ca.chain(),
        &plan.alias,
        password,
        plan.keystore_profile,
    )?;
    let truststore = keystore::build_truststore(trust.roots(), password, plan.keystore_profile)?;
    // tls.crt: leaf and intermediates, not the root — as web servers expect.
    let mut tls_crt = pem_block("CERTIFICATE", &material.leaf_der);
    for der in ca.chain() {
        if der.as_slice() != ca.root_der() {
            tls_crt.push_str(&pem_block("CERTIFICATE", der));
        }
    }
    let mut data = BTreeMap::new();
    data.insert(KEYSTORE.into(), ByteString(keystore.expose().to_vec()));
    data.insert(TRUSTSTORE.into(), ByteString(truststore.expose().to_vec()));
    data.insert(TLS_CRT.into(), ByteString(tls_crt.into_bytes()));
    data.insert(
        TLS_KEY.into(),
        ByteString(material.key.to_pem().expose().as_bytes().to_vec()),
    );
    data.insert(CA_CRT.into(), ByteString(trust.pem().into_bytes()));
    if generated_password {
        data.insert(
            PASSWORD.into(),
            ByteString(password.expose().as_bytes().to_vec()),
        );
    }
    Ok(data)
}

/// A random keystore password: 24 characters from a 62-letter alphabet (≈143 bits).
pub fn generate_password() -> SecretString {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let text: String = (0..24)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    SecretString::from(text)
}

/// Facts about the certificate a Secret holds, for status and annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct CertFacts {
    pub serial_hex: String,
    pub fingerprint_sha256: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl CertFacts {
    pub fn of(leaf_der: &[u8]) -> Option<CertFacts> {
        let info = pki::parse_certificate_info(leaf_der).ok()?;
        Some(CertFacts {
            serial_hex: info.serial_hex,
            fingerprint_sha256: info.fingerprint_sha256,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }
}

/// What is usable in an existing Secret.
pub struct Existing {
    pub key: Option<PrivateKey>,
    pub leaf_der: Option<Vec<u8>>,
    pub stored_password: Option<SecretString>,
}

impl Existing {
    pub fn read(data: &BTreeMap<String, ByteString>) -> Existing {
        let leaf_der = data
            .get(TLS_CRT)
            .and_then(|b| pem::parse_many(&b.0).ok())
            .and_then(|blocks| blocks.into_iter().find(|p| p.tag() == "CERTIFICATE"))
            .map(|p| p.into_contents());
        let key = data
            .get(TLS_KEY)
            .and_then(|b| std::str::from_utf8(&b.0).ok())
            .and_then(|pem| PrivateKey::from_pem(pem).ok());
        let stored_password = data
            .get(PASSWORD)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|p| !p.is_empty())
            .map(SecretString::from);
        Existing {
            key,
            leaf_der,
            stored_password,
        }
    }
}

/// What to do with an existing Secret's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Everything serves the plan.
    Current,
    /// The certificate is good but the keystores must be rebuilt (password,
    /// profile, alias or CA bundle changed, or a file was damaged).
    Reencrypt(&'static str),
    /// A new certificate is needed; the reason is a PascalCase word.
    Reissue(&'static str),
}

/// Whether `leaf_der` was signed by `ca`'s certificate.
pub fn issued_by(leaf_der: &[u8], ca: &CertificateAuthority) -> bool {
    let (Ok((_, leaf)), Ok((_, issuer))) = (
        X509Certificate::from_der(leaf_der),
        X509Certificate::from_der(ca.cert_der()),
    ) else {
        return false;
    };
    leaf.issuer() == issuer.subject() && leaf.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Judges an existing Secret against the plan. `renew_requested` is true when a
/// forced renewal has not been honoured yet.
///
/// A leaf signed by another CA of `authorities` than the issuing one (the
/// previous CA, after a switch) is still trusted: it is re-issued
/// (`CARotated`) only when `reissue_rotated` says this pass may, so a switch
/// re-issues leaves at a pace, not all at once.
#[allow(clippy::too_many_arguments)]
pub fn assess(
    data: &BTreeMap<String, ByteString>,
    annotations: &BTreeMap<String, String>,
    existing: &Existing,
    plan: &Plan,
    authorities: &Authorities,
    password: &SecretString,
    renew_requested: bool,
    reissue_rotated: bool,
    now: Timestamp,
) -> Verdict {
    let (Some(key), Some(leaf)) = (&existing.key, &existing.leaf_der) else {
        return Verdict::Reissue("Missing");
    };
    let Some(facts) = CertFacts::of(leaf) else {
        return Verdict::Reissue("Damaged");
    };
    if !pki::key_matches_certificate(key, leaf).unwrap_or(false) {
        return Verdict::Reissue("KeyMismatch");
    }
    let Some(issuer) = authorities.issuer_of(leaf) else {
        return Verdict::Reissue("CAChanged");
    };
    if annotations.get(annotations::SPEC_HASH) != Some(&plan.spec_hash)
        || key.algorithm() != plan.key_algorithm
    {
        return Verdict::Reissue("SpecChanged");
    }
    if renew_requested {
        return Verdict::Reissue("RenewalRequested");
    }
    if now >= facts.not_after {
        return Verdict::Reissue("Expired");
    }
    if now >= crate::plan::renewal_time(plan, facts.not_before, facts.not_after) {
        return Verdict::Reissue("RenewalDue");
    }
    if reissue_rotated && !std::sync::Arc::ptr_eq(issuer, authorities.current()) {
        return Verdict::Reissue("CARotated");
    }

    if annotations.get(annotations::PROFILE).map(String::as_str)
        != Some(plan.keystore_profile.name())
    {
        return Verdict::Reencrypt("ProfileChanged");
    }
    // The keystores are checked by a MAC the operator wrote beside them, never by
    // decoding them: files someone else put there are not ours to parse (hostile
    // PKCS#12 parameters can cost a GiB), and a MAC is cheaper than PBKDF2.
    let mac = annotations
        .get(annotations::KEYSTORE_MAC)
        .map(String::as_str);
    // Written under any CA the operator holds: a switch invalidates no MAC.
    if !authorities
        .all()
        .any(|ca| keystore_mac_matches(mac, ca, data, plan, password))
    {
        return Verdict::Reencrypt("KeystoreStale");
    }
    if data.get(CA_CRT).map(|b| b.0.as_slice()) != Some(authorities.bundle().pem().as_bytes()) {
        return Verdict::Reencrypt("CABundleStale");
    }
    let stored = data.get(PASSWORD).map(|b| b.0.as_slice());
    let generated = matches!(plan.password, crate::plan::PasswordSource::Generated);
    if generated && stored != Some(password.expose().as_bytes()) || !generated && stored.is_some() {
        return Verdict::Reencrypt("PasswordSourceChanged");
    }
    Verdict::Current
}

/// The HMAC of [`keystore_mac`], keyed for this purpose only: HKDF-SHA256 of
/// the CA's private key (PKCS#8 DER) with a label of its own, so the MAC key is
/// neither the CA key nor a digest anything else could use.
///
/// Version 2 (this key and `hmac`) replaced v1 (a plain SHA-256 of a label and
/// the CA key PEM, compared with `!=`). A Secret written by an older operator
/// carries a v1 MAC, fails the check once and has its keystores rebuilt
/// (`Reencrypt("KeystoreStale")`, same key and certificate): an accepted cost.
fn keystore_hmac(
    ca: &CertificateAuthority,
    data: &BTreeMap<String, ByteString>,
    plan: &Plan,
    password: &SecretString,
) -> Hmac<Sha256> {
    let key_der = ca.key().to_pkcs8_der();
    let mut mac_key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&b"p12-operator.io"[..]), key_der.expose())
        .expand(b"p12-operator keystore mac v2", &mut mac_key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&mac_key).expect("HMAC accepts keys of any length");
    let field = |k: &str| data.get(k).map(|b| b.0.as_slice()).unwrap_or_default();
    // Length-prefixed, so no two different inputs feed the same bytes.
    for part in [
        field(KEYSTORE),
        field(TRUSTSTORE),
        password.expose().as_bytes(),
        plan.alias.as_bytes(),
        plan.keystore_profile.name().as_bytes(),
    ] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

/// A MAC over the keystore, the truststore, the password, alias and profile
/// (hex, for the [`annotations::KEYSTORE_MAC`] annotation): only the operator
/// can produce it, and any change to the files or their settings breaks it.
pub fn keystore_mac(
    ca: &CertificateAuthority,
    data: &BTreeMap<String, ByteString>,
    plan: &Plan,
    password: &SecretString,
) -> String {
    hex::encode(
        keystore_hmac(ca, data, plan, password)
            .finalize()
            .into_bytes(),
    )
}

/// Whether `annotation` is the [`keystore_mac`] of this data, compared in
/// constant time (the annotation is attacker-writable, the MAC must not leak
/// byte by byte).
pub fn keystore_mac_matches(
    annotation: Option<&str>,
    ca: &CertificateAuthority,
    data: &BTreeMap<String, ByteString>,
    plan: &Plan,
    password: &SecretString,
) -> bool {
    let Some(tag) = annotation.and_then(|a| hex::decode(a).ok()) else {
        return false;
    };
    keystore_hmac(ca, data, plan, password)
        .verify_slice(&tag)
        .is_ok()
}

/// The operator's annotations for a Secret holding `facts`.
pub fn secret_annotations(
    request: &str,
    plan: &Plan,
    facts: &CertFacts,
    ca: &CertificateAuthority,
    revision: i64,
    renew_honoured: Option<&str>,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(annotations::REQUEST.into(), request.into());
    a.insert(annotations::SERIAL.into(), facts.serial_hex.clone());
    a.insert(
        annotations::FINGERPRINT.into(),
        facts.fingerprint_sha256.clone(),
    );
    a.insert(annotations::NOT_BEFORE.into(), facts.not_before.to_string());
    a.insert(annotations::NOT_AFTER.into(), facts.not_after.to_string());
    a.insert(annotations::SPEC_HASH.into(), plan.spec_hash.clone());
    a.insert(
        annotations::PROFILE.into(),
        plan.keystore_profile.name().into(),
    );
    a.insert(annotations::ALIAS.into(), plan.alias.clone());
    a.insert(annotations::CA_FINGERPRINT.into(), ca.fingerprint());
    a.insert(annotations::REVISION.into(), revision.to_string());
    if let Some(token) = renew_honoured {
        a.insert(annotations::RENEW_HONOURED.into(), token.into());
    }
    a
}

/// Which profile an existing Secret's keystores were written with, per its annotation.
pub fn profile_of(annotations: &BTreeMap<String, String>) -> Option<Profile> {
    annotations
        .get(annotations::PROFILE)
        .and_then(|p| p.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn password_secrets_need_consent_naming_the_request_or_star() {
        use super::password_use_allowed as allowed;
        assert!(!allowed(None, "web"));
        assert!(!allowed(Some(""), "web"));
        assert!(!allowed(Some("api"), "web"));
        assert!(!allowed(Some("web-1, web2"), "web"));
        assert!(!allowed(Some("*web"), "web"));
        assert!(!allowed(Some(","), ""));
        assert!(allowed(Some("*"), "web"));
        assert!(allowed(Some(" * "), "web"));
        assert!(allowed(Some("web"), "web"));
        assert!(allowed(Some("api, web ,db"), "web"));
        assert!(allowed(Some("api,\n  web"), "web"));
    }

    use super::*;
    use crate::api::{CertificateRequest, CertificateRequestSpec};
    use crate::pki::{KeyAlgorithm, Policy, VerifiedCsr};
    use sha2::Digest;
    use std::time::Duration;

    struct Fixture {
        ca: std::sync::Arc<CertificateAuthority>,
        plan: Plan,
        password: SecretString,
        data: BTreeMap<String, ByteString>,
        annotations: BTreeMap<String, String>,
        now: Timestamp,
    }

    /// A current Secret for web.shop.svc, with the annotations the reconciler writes.
    fn fixture() -> Fixture {
        let now = Timestamp::now();
        let ca = CertificateAuthority::generate_self_signed(
            KeyAlgorithm::EcdsaP256,
            "CA",
            Duration::from_secs(86_400 * 365),
            now,
        )
        .unwrap();
        let spec: CertificateRequestSpec =
            serde_json::from_str(r#"{"secretName":"web-tls","dnsNames":["web.shop.svc"]}"#)
                .unwrap();
        let request = CertificateRequest::new("web", spec);
        let plan = crate::plan::plan(&request, &Policy::default()).unwrap();
        let key = PrivateKey::generate(plan.key_algorithm).unwrap();
        let csr = pki::build_csr(&key, &plan.leaf.subject, &plan.leaf.sans).unwrap();
        let csr = VerifiedCsr::parse_and_verify(&csr).unwrap();
        let leaf_der = pki::sign(&ca, &csr, &plan.leaf, now).unwrap().der;
        let password = generate_password();
        let material = Material { key, leaf_der };
        let ca = std::sync::Arc::new(ca);
        let data = build_data(
            &material,
            &Authorities::single(ca.clone()),
            &plan,
            &password,
            true,
        )
        .unwrap();
        let facts = CertFacts::of(&material.leaf_der).unwrap();
        let mut annotations = secret_annotations("shop/web", &plan, &facts, &ca, 1, None);
        annotations.insert(
            annotations::KEYSTORE_MAC.into(),
            keystore_mac(&ca, &data, &plan, &password),
        );
        Fixture {
            ca,
            plan,
            password,
            data,
            annotations,
            now,
        }
    }

    fn verdict(f: &Fixture, mac: &str) -> Verdict {
        let mut annotations = f.annotations.clone();
        annotations.insert(annotations::KEYSTORE_MAC.into(), mac.into());
        assess(
            &f.data,
            &annotations,
            &Existing::read(&f.data),
            &f.plan,
            &Authorities::single(f.ca.clone()),
            &f.password,
            false,
            false,
            f.now,
        )
    }

    #[test]
    fn after_a_switch_the_previous_cas_leaves_stay_valid_until_their_turn_to_be_reissued() {
        let f = fixture();
        let next = std::sync::Arc::new(
            CertificateAuthority::generate_self_signed(
                KeyAlgorithm::EcdsaP256,
                "next CA",
                Duration::from_secs(86_400 * 365),
                f.now,
            )
            .unwrap(),
        );
        let judge = |authorities: &Authorities, data: &BTreeMap<String, ByteString>, reissue| {
            assess(
                data,
                &f.annotations,
                &Existing::read(data),
                &f.plan,
                authorities,
                &f.password,
                false,
                reissue,
                f.now,
            )
        };
        // The overlap: the next root joins the bundle, the Secret needs only new trust files.
        let overlap = Authorities::new(f.ca.clone(), vec![next.clone()]);
        assert_eq!(
            judge(&overlap, &f.data, false),
            Verdict::Reencrypt("CABundleStale")
        );
        let material = Material {
            key: Existing::read(&f.data).key.unwrap(),
            leaf_der: Existing::read(&f.data).leaf_der.unwrap(),
        };
        let rewritten = build_data(&material, &overlap, &f.plan, &f.password, true).unwrap();
        assert_eq!(rewritten[CA_CRT].0, overlap.bundle().pem().into_bytes());
        // The switch: the next CA issues; the old leaf, its MAC (keyed by the old
        // CA) and the bundle (same roots, same order) are all still good.
        let switched = Authorities::new(next.clone(), vec![f.ca.clone()]);
        let mut annotations = f.annotations.clone();
        annotations.insert(
            annotations::KEYSTORE_MAC.into(),
            keystore_mac(&f.ca, &rewritten, &f.plan, &f.password),
        );
        let verdict = |reissue| {
            assess(
                &rewritten,
                &annotations,
                &Existing::read(&rewritten),
                &f.plan,
                &switched,
                &f.password,
                false,
                reissue,
                f.now,
            )
        };
        assert_eq!(verdict(false), Verdict::Current, "no rewrite at the switch");
        assert_eq!(verdict(true), Verdict::Reissue("CARotated"));
        // Once the old CA is gone from the authorities, its leaf is re-issued whatever the pace.
        assert_eq!(
            judge(&Authorities::single(next), &rewritten, false),
            Verdict::Reissue("CAChanged")
        );
    }

    /// The v1 MAC older operators wrote: HMAC-SHA256 keyed with SHA-256 of a
    /// label and the CA key PEM.
    fn v1_mac(f: &Fixture) -> String {
        let key = sha2::Sha256::new()
            .chain_update(b"p12-operator keystore mac v1\0")
            .chain_update(f.ca.key_pem().expose().as_bytes())
            .finalize();
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for i in 0..32 {
            ipad[i] ^= key[i];
            opad[i] ^= key[i];
        }
        let field = |k: &str| f.data[k].0.clone();
        let len = |b: &[u8]| (b.len() as u64).to_be_bytes();
        let (ks, ts, pw) = (
            field(KEYSTORE),
            field(TRUSTSTORE),
            f.password.expose().as_bytes().to_vec(),
        );
        let inner = sha2::Sha256::new()
            .chain_update(ipad)
            .chain_update(len(&ks))
            .chain_update(&ks)
            .chain_update(len(&ts))
            .chain_update(&ts)
            .chain_update(len(&pw))
            .chain_update(&pw)
            .chain_update(f.plan.alias.as_bytes())
            .chain_update(b"\0")
            .chain_update(f.plan.keystore_profile.name().as_bytes())
            .finalize();
        hex::encode(
            sha2::Sha256::new()
                .chain_update(opad)
                .chain_update(inner)
                .finalize(),
        )
    }

    #[test]
    fn a_secret_with_the_current_keystore_mac_is_current() {
        let f = fixture();
        let mac = f.annotations[annotations::KEYSTORE_MAC].clone();
        assert_eq!(verdict(&f, &mac), Verdict::Current);
    }

    #[test]
    fn the_mac_key_is_not_the_ca_key_digest_so_a_v1_mac_rebuilds_the_keystores_once() {
        let f = fixture();
        assert_eq!(
            verdict(&f, &v1_mac(&f)),
            Verdict::Reencrypt("KeystoreStale")
        );
    }

    #[test]
    fn a_truncated_altered_or_non_hex_mac_rebuilds_the_keystores() {
        let f = fixture();
        let mac = f.annotations[annotations::KEYSTORE_MAC].clone();
        let mut altered = mac.clone().into_bytes();
        altered[63] = if altered[63] == b'0' { b'1' } else { b'0' };
        for bad in [
            mac[..32].to_owned(),
            String::from_utf8(altered).unwrap(),
            format!("{mac}00"),
            format!("{}zz", &mac[..62]),
            String::new(),
        ] {
            assert_eq!(
                verdict(&f, &bad),
                Verdict::Reencrypt("KeystoreStale"),
                "{bad:?}"
            );
        }
    }
}
