//! The provisioning station library.

pub mod link;
