//! p12-operator: turns `CertificateRequest`s into PKCS#12 bundles in Secrets and
//! verifies, over real TLS, that workloads serve what was issued.

pub mod admin;
pub mod api;
pub mod bundle;
pub mod cli;
pub mod commands;
pub mod duration;
pub mod events;
pub mod faults;
pub mod inspect;
pub mod keystore;
pub mod leader;
pub mod metrics;
pub mod pki;
pub mod plan;
pub mod probe;
pub mod reconciler;
pub mod sensitive;
pub mod telemetry;
pub mod testenv;
