//! The provisioning station library.

pub mod ca;
pub mod hsm;
