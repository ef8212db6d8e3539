//! p12-operator: turns `CertificateRequest`s into PKCS#12 bundles in Secrets and
//! verifies, over real TLS, that workloads serve what was issued. This crate is
//! everything that talks to the cluster or the network — the controller, probes,
//! CLI commands, admin endpoints, metrics, leader election, events — around the
//! pure `p12_core`. It may depend on p12-core, kube, tokio and rustls; never on
//! p12-testenv except in its tests.

pub mod admin;
pub mod cli;
pub mod commands;
pub mod events;
pub mod faults;
pub mod inspect;
pub mod leader;
pub mod metrics;
pub mod probe;
pub mod reconciler;
pub mod telemetry;

// The core's modules under the paths the operator has always used (`crate::pki`, …).
pub use p12_core::{admission, api, bundle, duration, keystore, pki, plan, sensitive};
