//! Fault injection for the crash-safety tests: `STATION_CRASH_AT=<point>[:<n>]` makes the
//! process abort (no unwinding, no cleanup: what kill -9 does) the n-th time (default the
//! first) it passes `<point>`. Never set in production.
//!
//! Points: `<state>` right after the commit that moved a unit into that state (e.g.
//! `certificate-issued`), `before:<state>` inside that transaction before its commit, and
//! `upload:accepted` after DPS accepted a bulk and before the delivery is recorded.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The environment variable.
pub const ENV: &str = "STATION_CRASH_AT";

struct Hook {
    point: String,
    nth: u32,
    seen: AtomicU32,
}

fn hook() -> Option<&'static Hook> {
    static HOOK: OnceLock<Option<Hook>> = OnceLock::new();
    HOOK.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        let (point, nth) = match v.rsplit_once(':') {
            Some((p, n)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
                (p.to_owned(), n.parse().unwrap_or(1))
            }
            _ => (v.clone(), 1),
        };
        Some(Hook {
            point,
            nth: nth.max(1),
            seen: AtomicU32::new(0),
        })
    })
    .as_ref()
}

/// Passes `point`; aborts the process if the hook names it and its count is reached.
pub fn point(point: &str) {
    if let Some(h) = hook()
        && h.point == point
        && h.seen.fetch_add(1, Ordering::SeqCst) + 1 == h.nth
    {
        eprintln!("{ENV}: aborting at {point} (crash test)");
        std::process::abort();
    }
}
