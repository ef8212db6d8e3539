//! Certificate signing requests (PKCS#10): building ours, verifying anyone's.
//!
//! Verification uses x509-parser, never rcgen's CSR parser, which rejects
//! common real CSRs and mis-derives key types from signature algorithms.

use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use super::der;
use super::keys::{KeyAlgorithm, PrivateKey};
use super::oids;
use super::{PkiError, Result};

/// The distinguished name a certificate is requested for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsrSubject {
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
    pub organizational_units: Vec<String>,
    pub countries: Vec<String>,
    pub localities: Vec<String>,
    pub provinces: Vec<String>,
}

impl CsrSubject {
    pub fn with_common_name(common_name: impl Into<String>) -> Self {
        Self {
            common_name: Some(common_name.into()),
            ..Self::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.common_name.is_none()
            && self.organizations.is_empty()
            && self.organizational_units.is_empty()
            && self.countries.is_empty()
            && self.localities.is_empty()
            && self.provinces.is_empty()
    }

    /// DER `Name`, one attribute per RDN, in the conventional C, ST, L, O, OU, CN order.
    /// Countries are PrintableString (RFC 5280); everything else UTF8String.
    pub(crate) fn to_der(&self) -> Vec<u8> {
        let mut rdns: Vec<Vec<u8>> = Vec::new();
        let mut push = |oid: &[u64], value: &str, printable: bool| {
            let value = if printable && der::is_printable(value) {
                der::printable_string(value)
            } else {
                der::utf8_string(value)
            };
            rdns.push(der::set(&[&der::sequence(&[&der::oid(oid), &value])]));
        };
        for country in &self.countries {
            push(oids::COUNTRY, country, true);
        }
        for province in &self.provinces {
            push(oids::PROVINCE, province, false);
        }
        for locality in &self.localities {
            push(oids::LOCALITY, locality, false);
        }
        for organization in &self.organizations {
            push(oids::ORGANIZATION, organization, false);
        }
        for unit in &self.organizational_units {
            push(oids::ORGANIZATIONAL_UNIT, unit, false);
        }
        if let Some(common_name) = &self.common_name {
            push(oids::COMMON_NAME, common_name, false);
        }
        let parts: Vec<&[u8]> = rdns.iter().map(Vec::as_slice).collect();
        der::sequence(&parts)
    }

    /// Reads the attributes we model from a parsed name; others are ignored.
    pub(crate) fn from_x509_name(name: &X509Name<'_>) -> Self {
        let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
            attr.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|_| String::from_utf8_lossy(attr.as_slice()).into_owned())
        };
        let mut subject = CsrSubject::default();
        for attr in name.iter_attributes() {
            let oid = attr.attr_type();
            let value = text(attr);
            if oids::is(oid, oids::COMMON_NAME) {
                // Several CNs are legal but odd; the last one is what most software reads.
                subject.common_name = Some(value);
            } else if oids::is(oid, oids::ORGANIZATION) {
                subject.organizations.push(value);
            } else if oids::is(oid, oids::ORGANIZATIONAL_UNIT) {
                subject.organizational_units.push(value);
            } else if oids::is(oid, oids::COUNTRY) {
                subject.countries.push(value);
            } else if oids::is(oid, oids::LOCALITY) {
                subject.localities.push(value);
            } else if oids::is(oid, oids::PROVINCE) {
                subject.provinces.push(value);
            }
        }
        subject
    }
}

/// The subject alternative names of a request or certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectAltNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
}

impl SubjectAltNames {
    pub fn len(&self) -> usize {
        self.dns.len() + self.ips.len() + self.uris.len() + self.emails.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// DER `GeneralNames` (the SAN extension value).
    pub(crate) fn to_der(&self) -> Vec<u8> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        for email in &self.emails {
            names.push(der::context_primitive(1, email.as_bytes()));
        }
        for dns in &self.dns {
            names.push(der::context_primitive(2, dns.as_bytes()));
        }
        for uri in &self.uris {
            names.push(der::context_primitive(6, uri.as_bytes()));
        }
        for ip in &self.ips {
            let octets = match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            names.push(der::context_primitive(7, &octets));
        }
        let parts: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
        der::sequence(&parts)
    }

    /// Collects names from parsed GeneralNames; returns how many were of other types.
    pub(crate) fn from_general_names(names: &[GeneralName<'_>]) -> (Self, usize) {
        let mut sans = SubjectAltNames::default();
        let mut others = 0;
        for name in names {
            match name {
                GeneralName::DNSName(dns) => sans.dns.push((*dns).to_owned()),
                GeneralName::RFC822Name(email) => sans.emails.push((*email).to_owned()),
                GeneralName::URI(uri) => sans.uris.push((*uri).to_owned()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => sans.ips.push(IpAddr::from(
                        <[u8; 4]>::try_from(*bytes).expect("length checked"),
                    )),
                    16 => sans.ips.push(IpAddr::from(
                        <[u8; 16]>::try_from(*bytes).expect("length checked"),
                    )),
                    _ => others += 1,
                },
                _ => others += 1,
            }
        }
        (sans, others)
    }
}

/// Builds a DER PKCS#10 request signed by `key`, carrying the SANs as an extension request.
pub fn build_csr(
    key: &PrivateKey,
    subject: &CsrSubject,
    sans: &SubjectAltNames,
) -> Result<Vec<u8>> {
    let attributes = if sans.is_empty() {
        der::context_constructed(0, &[])
    } else {
        let san = extension(oids::SUBJECT_ALT_NAME, subject.is_empty(), &sans.to_der());
        let extensions = der::sequence(&[&san]);
        let request = der::sequence(&[
            &der::oid(oids::EXTENSION_REQUEST),
            &der::set(&[&extensions]),
        ]);
        der::context_constructed(0, &request)
    };
    let info = der::sequence(&[
        &der::small_integer(0),
        &subject.to_der(),
        &key.public_key_der(),
        &attributes,
    ]);
    let signature = key.sign(&info)?;
    Ok(der::sequence(&[
        &info,
        &key.algorithm().signature_algorithm_der(),
        &der::bit_string(&signature),
    ]))
}

/// One DER `Extension`.
pub(crate) fn extension(oid: &[u64], critical: bool, value: &[u8]) -> Vec<u8> {
    if critical {
        der::sequence(&[
            &der::oid(oid),
            &der::boolean(true),
            &der::octet_string(value),
        ])
    } else {
        der::sequence(&[&der::oid(oid), &der::octet_string(value)])
    }
}

/// A CSR whose self-signature has been checked, with what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    der: Vec<u8>,
    spki_der: Vec<u8>,
    key_algorithm: KeyAlgorithm,
    subject: CsrSubject,
    sans: SubjectAltNames,
    unsupported_san_count: usize,
    requests_ca: bool,
}

impl VerifiedCsr {
    /// Parses a DER PKCS#10 request and verifies its signature with its own key.
    pub fn parse_and_verify(csr_der: &[u8]) -> Result<Self> {
        let (rest, csr) =
            X509CertificationRequest::from_der(csr_der).map_err(|_| PkiError::InvalidCsr)?;
        if !rest.is_empty() {
            return Err(PkiError::InvalidCsr);
        }
        let info = &csr.certification_request_info;
        let spki_der = info.subject_pki.raw.to_vec();
        let key_algorithm = KeyAlgorithm::from_spki_der(&spki_der)?;
        csr.verify_signature()
            .map_err(|_| PkiError::CsrSignatureInvalid)?;

        let mut sans = SubjectAltNames::default();
        let mut unsupported_san_count = 0;
        let mut requests_ca = false;
        if let Some(extensions) = csr.requested_extensions() {
            for extension in extensions {
                match extension {
                    ParsedExtension::SubjectAlternativeName(san) => {
                        let (found, others) =
                            SubjectAltNames::from_general_names(&san.general_names);
                        sans.dns.extend(found.dns);
                        sans.ips.extend(found.ips);
                        sans.uris.extend(found.uris);
                        sans.emails.extend(found.emails);
                        unsupported_san_count += others;
                    }
                    ParsedExtension::BasicConstraints(constraints) => requests_ca |= constraints.ca,
                    ParsedExtension::KeyUsage(usage) => {
                        requests_ca |= usage.key_cert_sign() || usage.crl_sign()
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            der: csr_der.to_vec(),
            spki_der,
            key_algorithm,
            subject: CsrSubject::from_x509_name(&info.subject),
            sans,
            unsupported_san_count,
            requests_ca,
        })
    }

    /// Same as [`VerifiedCsr::parse_and_verify`] for a `CERTIFICATE REQUEST` PEM block.
    pub fn parse_and_verify_pem(pem_text: &str) -> Result<Self> {
        let blocks = super::parse_pem_blocks(pem_text.as_bytes())?;
        let block = blocks
            .iter()
            .find(|b| matches!(b.tag(), "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"))
            .ok_or_else(|| PkiError::InvalidPem {
                reason: "no CERTIFICATE REQUEST block".into(),
            })?;
        Self::parse_and_verify(block.contents())
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The requester's SubjectPublicKeyInfo, exactly as in the request.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }

    pub fn subject(&self) -> &CsrSubject {
        &self.subject
    }

    pub fn sans(&self) -> &SubjectAltNames {
        &self.sans
    }

    /// SANs of types we do not issue (otherName, directoryName, …).
    pub fn unsupported_san_count(&self) -> usize {
        self.unsupported_san_count
    }

    /// Whether the request asks for CA powers (basicConstraints CA:true, keyCertSign or cRLSign).
    pub fn requests_ca(&self) -> bool {
        self.requests_ca
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sample_sans() -> SubjectAltNames {
        SubjectAltNames {
            dns: vec!["web.shop.svc".into(), "web.shop.svc.cluster.local".into()],
            ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            uris: vec!["spiffe://cluster.local/ns/shop/sa/web".into()],
            emails: vec!["ops@example.com".into()],
        }
    }

    fn sample_subject() -> CsrSubject {
        CsrSubject {
            common_name: Some("web.shop.svc".into()),
            organizations: vec!["Shop Inc".into()],
            organizational_units: vec!["Payments".into(), "Platform".into()],
            countries: vec!["DE".into()],
            localities: vec!["Berlin".into()],
            provinces: vec!["Berlin".into()],
        }
    }

    #[test]
    fn built_csr_verifies_and_round_trips_subject_and_names_for_every_algorithm() {
        for algorithm in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::Ed25519,
        ] {
            let key = PrivateKey::generate(algorithm).unwrap();
            let csr = build_csr(&key, &sample_subject(), &sample_sans()).unwrap();
            let verified = VerifiedCsr::parse_and_verify(&csr).unwrap();
            assert_eq!(verified.key_algorithm(), algorithm);
            assert_eq!(verified.subject(), &sample_subject());
            assert_eq!(verified.sans(), &sample_sans());
            assert!(key.matches_spki(verified.spki_der()));
            assert!(!verified.requests_ca());
        }
    }

    #[test]
    fn csr_with_tampered_signature_is_rejected() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut csr = build_csr(&key, &sample_subject(), &sample_sans()).unwrap();
        let last = csr.len() - 1;
        csr[last] ^= 0x01;
        let error = VerifiedCsr::parse_and_verify(&csr).unwrap_err();
        assert_eq!(error.reason(), "CsrSignatureInvalid");
    }

    #[test]
    fn csr_with_tampered_name_is_rejected() {
        let key = PrivateKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let csr = build_csr(&key, &sample_subject(), &sample_sans()).unwrap();
        let needle = b"web.shop.svc.cluster.local";
        let at = csr.windows(needle.len()).position(|w| w == needle).unwrap();
        let mut tampered = csr.clone();
        tampered[at] = b'x';
        assert_eq!(
            VerifiedCsr::parse_and_verify(&tampered)
                .unwrap_err()
                .reason(),
            "CsrSignatureInvalid"
        );
    }

    #[test]
    fn garbage_is_not_a_csr() {
        assert_eq!(
            VerifiedCsr::parse_and_verify(b"\x30\x03\x02\x01\x00")
                .unwrap_err()
                .reason(),
            "InvalidCsr"
        );
        assert_eq!(
            VerifiedCsr::parse_and_verify(b"").unwrap_err().reason(),
            "InvalidCsr"
        );
    }

    #[test]
    fn openssl_accepts_our_csr() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = build_csr(&key, &sample_subject(), &sample_sans()).unwrap();
        let path = dir.path().join("req.der");
        std::fs::write(&path, &csr).unwrap();
        let output = Command::new("openssl")
            .args([
                "req",
                "-inform",
                "DER",
                "-in",
                path.to_str().unwrap(),
                "-verify",
                "-noout",
                "-text",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let errors = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{errors}");
        assert!(
            errors.contains("verify OK") || text.contains("verify OK"),
            "{errors}"
        );
        assert!(text.contains("DNS:web.shop.svc.cluster.local"), "{text}");
        assert!(text.contains("IP Address:127.0.0.1"), "{text}");
        assert!(text.contains("OU = Payments, OU = Platform"), "{text}");
    }

    #[test]
    fn csr_made_by_the_openssl_cli_is_verified_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("key.pem");
        let csr_path = dir.path().join("req.pem");
        for key_args in [
            &["-newkey", "rsa:2048"][..],
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ] {
            let output = Command::new("openssl")
                .args(["req", "-new", "-nodes"])
                .args(key_args)
                .args([
                    "-keyout",
                    key_path.to_str().unwrap(),
                    "-out",
                    csr_path.to_str().unwrap(),
                ])
                .args(["-subj", "/C=DE/O=Shop Inc/OU=Payments/CN=web.shop.svc"])
                .args([
                    "-addext",
                    "subjectAltName=DNS:web.shop.svc,IP:10.0.0.7,email:ops@example.com",
                ])
                .args(["-addext", "subjectKeyIdentifier=hash"])
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let csr =
                VerifiedCsr::parse_and_verify_pem(&std::fs::read_to_string(&csr_path).unwrap())
                    .unwrap();
            assert_eq!(csr.subject().common_name.as_deref(), Some("web.shop.svc"));
            assert_eq!(csr.subject().organizations, vec!["Shop Inc"]);
            assert_eq!(csr.subject().countries, vec!["DE"]);
            assert_eq!(csr.sans().dns, vec!["web.shop.svc"]);
            assert_eq!(csr.sans().ips, vec!["10.0.0.7".parse::<IpAddr>().unwrap()]);
            assert_eq!(csr.sans().emails, vec!["ops@example.com"]);
            let key = PrivateKey::from_pem(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
            assert!(key.matches_spki(csr.spki_der()));
            assert_eq!(csr.key_algorithm(), key.algorithm());
        }
    }

    #[test]
    fn csr_asking_for_a_ca_is_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let csr_path = dir.path().join("req.pem");
        let key_path = dir.path().join("key.pem");
        let output = Command::new("openssl")
            .args([
                "req",
                "-new",
                "-nodes",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-keyout",
                key_path.to_str().unwrap(),
                "-out",
                csr_path.to_str().unwrap(),
            ])
            .args([
                "-subj",
                "/CN=sneaky",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let csr = VerifiedCsr::parse_and_verify_pem(&std::fs::read_to_string(&csr_path).unwrap())
            .unwrap();
        assert!(csr.requests_ca());
    }
}
