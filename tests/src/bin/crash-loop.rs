#![allow(clippy::expect_used, clippy::unwrap_used)]
//! `crash-loop [KILLS]`: kills `station serve` with SIGKILL KILLS times (default 1000) during a lot
//! on the demo's four fixtures (and one of random-key units), restarting it each time, then checks
//! that nothing was lost, doubled or left undelivered. `CRASH_SEED=<n>` replays a run. Prints every
//! kill and a last line `crash: kills=<n> units=<n> violations=<n>`; exits 1 on any violation.

use std::process::ExitCode;

use station_e2e::crash::{self, CrashConfig};

fn main() -> ExitCode {
    let kills = std::env::args()
        .nth(1)
        .map_or(1000, |a| a.parse().expect("KILLS is a number"));
    let mut cfg = CrashConfig::from_env(kills);
    if let Ok(q) = std::env::var("CRASH_QUIET") {
        cfg.verbose = q.is_empty() || q == "0";
    }
    let report = crash::run(&cfg);
    crash::print_report(&report);
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
