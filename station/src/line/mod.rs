//! The line: lots (work orders), the unit state machine, and (later) fixtures.

pub mod board;
pub mod crash;
pub mod lock;
pub mod lots;
pub mod report;
pub mod scrap;
pub mod serve;
pub mod setup;
pub mod state;
pub mod units;
pub mod worker;
