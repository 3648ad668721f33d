//! The line: lots (work orders), and later fixtures and the unit state machine.

pub mod lots;
