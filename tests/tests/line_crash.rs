#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Crash safety: `station serve` is killed (SIGKILL, or an abort at a crash point) 22 times
//! during a lot on the demo's four fixtures and restarted each time with the units still on
//! their fixtures. Afterwards no acknowledged record is lost, no unit has two live
//! certificates, every certificate signed is recorded (and the one each unit holds is its live
//! one), DPS holds exactly one enrollment per passed individual unit, the outbox drains and the
//! audit chain verifies. The run prints its seed and every kill; `CRASH_SEED=<n>` replays it.

use station_e2e::crash::{self, CrashConfig};

#[test]
fn killing_the_station_during_a_lot_loses_and_doubles_nothing() {
    let kills = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(22);
    let report = crash::run(&CrashConfig::from_env(kills));
    crash::print_report(&report);
    assert!(
        report.kills >= 20 || kills < 20,
        "only {} kills",
        report.kills
    );
    assert_eq!(report.units, 4 * report.kills);
    assert!(
        report.violations.is_empty(),
        "seed {} (replay with CRASH_SEED={}): {:#?}",
        report.seed,
        report.seed,
        report.violations
    );
}
