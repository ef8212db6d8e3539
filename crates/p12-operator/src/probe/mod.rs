//! `p12-operator probe`: what probe pods run — a TLS handshake with each
//! endpoint, judged against the cluster CA and the issued certificate.
//!
//! The pure part: the [`ProbeReport`] and [`ProbeResult`] types and the
//! termination-log encoding ([`report`]), and the [`fn@judge`] that turns what the
//! client saw ([`Observation`]) into a result ([`mod@judge`]). The network
//! part: the TLS client ([`client`]), its recording verifier (`verifier`) and
//! the classification of its errors ([`classify`]). The subcommand itself is
//! [`run`]; the probe Pod the controller creates is [`pod`]; which endpoints
//! it may be aimed at is [`admission`].

pub mod admission;
pub mod classify;
pub mod client;
pub mod judge;
pub mod pod;
pub mod report;
pub mod run;
mod verifier;

pub use judge::{Finding, Observation, judge, normalize_fingerprint};
pub use report::{ProbeReport, ProbeResult, Reason, TERMINATION_MESSAGE_LIMIT};
pub use run::{CONCURRENCY, main, probe_all};
