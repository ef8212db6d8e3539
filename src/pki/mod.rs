//! Key pairs, CSRs, signing policy, the CA.
