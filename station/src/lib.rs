//! The provisioning station: gives every manufactured IoT device its cloud identity.
//!
//! The folders follow the path of a unit through the station; see `README.md` for the map.

pub mod check;
pub mod cli;
pub mod config;
pub mod home;
pub mod ids;
pub mod logging;
pub mod store;
pub mod tpm;
pub mod trigger;
