//! The provisioning station library.
