//! Certificates for the local control plane: one CA that signs the API server's
//! serving certificate and every client certificate, plus the service-account
//! signing key. Test material only — generated fresh for every control plane.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

/// A PEM certificate and its PEM private key.
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(7);
}

fn random_serial(params: &mut CertificateParams) {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    params.serial_number = Some(serial.to_vec().into());
}

impl ClusterCa {
    pub fn generate() -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "p12-operator local control plane CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params);
        random_serial(&mut params);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    fn issue(
        &self,
        cn: &str,
        orgs: &[&str],
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
    ) -> Result<CertAndKey, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        for org in orgs {
            dn.push(DnType::OrganizationName, *org);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        random_serial(&mut params);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The API server's serving certificate: valid for loopback, the given
    /// addresses (the `kubernetes` Service IP, a node's address) and the in-cluster names.
    pub fn serving(&self, ips: &[std::net::IpAddr]) -> Result<CertAndKey, rcgen::Error> {
        let mut sans = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        for name in [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            sans.push(SanType::DnsName(name.try_into()?));
        }
        self.issue(
            "kube-apiserver",
            &[],
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate; Kubernetes reads the user from CN and groups from O.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<CertAndKey, rcgen::Error> {
        self.issue(user, groups, vec![], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// The key pair the API server signs service-account tokens with (PEM private, PEM public).
pub fn service_account_key() -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// Writes a kubeconfig that authenticates with a client certificate.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    client: &CertAndKey,
    user: &str,
) -> std::io::Result<()> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: local
  context: {{cluster: local, user: {user}}}
current-context: local
",
        ca = b64(ca_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    );
    write_private(path, text.as_bytes())
}

/// Writes a file readable only by its owner (keys, kubeconfigs).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}
