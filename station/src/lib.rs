//! The provisioning station: gives every manufactured IoT device its cloud identity.
//!
//! The folders follow the path of a unit through the station; see `README.md` for the map.

pub mod backup;
pub mod ca;
pub mod check;
pub mod cli;
pub mod config;
pub mod dps_target;
pub mod element;
pub mod enroll;
pub mod home;
pub mod hsm;
pub mod ids;
pub mod keys;
pub mod line;
pub mod link;
pub mod logging;
pub mod operators;
pub mod outbox;
pub mod store;
pub mod timing;
pub mod tpm;
pub mod trigger;
pub mod web;
