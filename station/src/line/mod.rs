//! The line: lots (work orders), the unit state machine, and (later) fixtures.

pub mod lots;
pub mod state;
pub mod units;
