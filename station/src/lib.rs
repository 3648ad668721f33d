//! The provisioning station library.

pub mod tpm;
