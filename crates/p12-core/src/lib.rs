//! p12-core: the pure core of p12-operator — the `CertificateRequest` types, keys,
//! CSRs, signing policy, the CA, PKCS#12, the issuance plan, the Secret's contents
//! and their assessment, durations and redacting secret types. Bytes and structs
//! in, bytes and structs out: it may depend on serde, kube-core types, k8s-openapi
//! types, rcgen, p12-keystore and x509 parsing, never on a kube client, tokio,
//! hyper or rustls (scripts/test checks).

pub mod admission;
pub mod api;
pub mod bundle;
pub mod duration;
pub mod inspect;
pub mod keystore;
pub mod pki;
pub mod plan;
pub mod sensitive;
