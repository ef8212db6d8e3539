//! Redacting wrappers for secret material.
