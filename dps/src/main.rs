//! `dps`: the DPS command line.
fn main() {}
