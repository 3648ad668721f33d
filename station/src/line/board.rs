//! The line's board: what each fixture of `station serve` is doing now, as an operator at the
//! line wants to see it (who is logged on, the unit running, the last outcome with its reason,
//! whether the scanner and the HSM answer). The fixture threads and scanner tasks write it;
//! the web UI reads it. It lives in memory only: every fact on it that matters afterwards is
//! also in the database (units, runs, audit entries).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::worker::UnitOutcome;

/// How an outcome reads at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The unit passed.
    Pass,
    /// It had passed before: nothing was issued.
    AlreadyDone,
    /// The unit failed: it needs a retry or rework.
    Fail,
    /// The scan started nothing.
    Refused,
    /// Information (an operator logged on, a command taken).
    Info,
}

impl Verdict {
    /// The word shown on the board.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::AlreadyDone => "ALREADY DONE",
            Verdict::Fail => "FAIL",
            Verdict::Refused => "REFUSED",
            Verdict::Info => "INFO",
        }
    }
}

/// The last thing a fixture said.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its kind.
    pub verdict: Verdict,
    /// The serial it is about, if any.
    pub serial: Option<String>,
    /// The text, as the log has it.
    pub text: String,
    /// When (UTC, RFC 3339).
    pub at: String,
    /// Counts up with every message on this fixture, so a page can tell a new one.
    pub seq: u64,
}

/// One fixture's status.
#[derive(Debug, Clone, Default)]
pub struct FixtureStatus {
    /// Its product.
    pub product: String,
    /// Who is logged on (badge scan or the web).
    pub operator: Option<String>,
    /// The unit it runs now.
    pub running: Option<String>,
    /// The last outcome or refusal.
    pub last: Option<Message>,
    /// The last units' outcomes, newest first (at most [`RECENT`]).
    pub recent: std::collections::VecDeque<Message>,
    /// Why the HSM does not answer, while it does not.
    pub hsm_down: Option<String>,
    /// Why the scanner is not connected, while it is not (fixtures with a scanner port).
    pub scanner_down: Option<String>,
    /// Units passed since `station serve` started.
    pub passed: u64,
    /// Units failed since `station serve` started.
    pub failed: u64,
}

/// Unit outcomes kept per fixture for its page.
pub const RECENT: usize = 10;

/// The board of every fixture.
#[derive(Debug, Default)]
pub struct Board {
    fixtures: RwLock<BTreeMap<String, FixtureStatus>>,
}

impl Board {
    /// A board listing these fixtures (name, product).
    #[must_use]
    pub fn new<'a>(fixtures: impl IntoIterator<Item = (&'a str, &'a str)>) -> Arc<Self> {
        let map = fixtures
            .into_iter()
            .map(|(f, p)| {
                (
                    f.to_owned(),
                    FixtureStatus {
                        product: p.to_owned(),
                        ..FixtureStatus::default()
                    },
                )
            })
            .collect();
        Arc::new(Self {
            fixtures: RwLock::new(map),
        })
    }

    /// Every fixture's status, by name.
    #[must_use]
    pub fn snapshot(&self) -> BTreeMap<String, FixtureStatus> {
        self.fixtures.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// Whether a unit runs on the fixture now.
    #[must_use]
    pub fn running(&self, fixture: &str) -> bool {
        self.fixtures
            .read()
            .is_ok_and(|m| m.get(fixture).is_some_and(|s| s.running.is_some()))
    }

    fn update(&self, fixture: &str, f: impl FnOnce(&mut FixtureStatus)) {
        // A poisoned lock means a writer panicked mid-update; the board is advisory, so the
        // status is still updated rather than the fixture stopped.
        let mut map = match self.fixtures.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(s) = map.get_mut(fixture) {
            f(s);
        }
    }

    fn say(s: &mut FixtureStatus, verdict: Verdict, serial: Option<&str>, text: String) {
        let seq = s.last.as_ref().map_or(1, |m| m.seq + 1);
        let m = Message {
            verdict,
            serial: serial.map(str::to_owned),
            text,
            at: crate::store::now_utc(),
            seq,
        };
        if m.serial.is_some() {
            s.recent.push_front(m.clone());
            s.recent.truncate(RECENT);
        }
        s.last = Some(m);
    }

    /// A unit started on the fixture.
    pub fn started(&self, fixture: &str, serial: &str) {
        self.update(fixture, |s| s.running = Some(serial.to_owned()));
    }

    /// A unit ended (or a scan was refused).
    pub fn outcome(&self, fixture: &str, o: &UnitOutcome) {
        self.update(fixture, |s| {
            s.running = None;
            let (verdict, serial) = match o {
                UnitOutcome::Passed { serial, .. } => {
                    s.passed += 1;
                    (Verdict::Pass, Some(serial.as_str()))
                }
                UnitOutcome::AlreadyPassed { serial, .. } => {
                    (Verdict::AlreadyDone, Some(serial.as_str()))
                }
                UnitOutcome::Failed { serial, .. } => {
                    s.failed += 1;
                    (Verdict::Fail, Some(serial.as_str()))
                }
                UnitOutcome::Refused { .. } => (Verdict::Refused, None),
            };
            Self::say(s, verdict, serial, o.to_string());
        });
    }

    /// A scan that was not understood, or something the fixture refused outside a unit.
    pub fn refused(&self, fixture: &str, text: String) {
        self.update(fixture, |s| Self::say(s, Verdict::Refused, None, text));
    }

    /// Something worth showing that is not an outcome.
    pub fn info(&self, fixture: &str, text: String) {
        self.update(fixture, |s| Self::say(s, Verdict::Info, None, text));
    }

    /// Someone logged on to the fixture.
    pub fn logged_on(&self, fixture: &str, user: &str) {
        self.update(fixture, |s| {
            s.operator = Some(user.to_owned());
            Self::say(s, Verdict::Info, None, format!("{user} logged on"));
        });
    }

    /// The HSM stopped answering (`Some(reason)`) or is back (`None`).
    pub fn hsm(&self, fixture: &str, down: Option<String>) {
        self.update(fixture, |s| s.hsm_down = down);
    }

    /// The scanner went away (`Some(reason)`) or is connected (`None`).
    pub fn scanner(&self, fixture: &str, down: Option<String>) {
        self.update(fixture, |s| s.scanner_down = down);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::state::Step;

    #[test]
    fn outcomes_count_and_say_what_happened() {
        let b = Board::new([("f1", "sensor"), ("f2", "gateway")]);
        b.started("f1", "SN1");
        assert_eq!(b.snapshot()["f1"].running.as_deref(), Some("SN1"));
        assert!(b.running("f1") && !b.running("f2"));
        b.outcome(
            "f1",
            &UnitOutcome::Failed {
                serial: "SN1".into(),
                fixture: "f1".into(),
                step: Step::Identify,
                reason: "the unit did not answer".into(),
            },
        );
        b.outcome(
            "f1",
            &UnitOutcome::Passed {
                serial: "SN2".into(),
                registration_id: "sn2".into(),
            },
        );
        let f1 = &b.snapshot()["f1"];
        assert_eq!((f1.passed, f1.failed, f1.running.as_deref()), (1, 1, None));
        let last = f1
            .last
            .as_ref()
            .map(|m| (m.verdict, m.serial.clone(), m.seq));
        assert_eq!(last, Some((Verdict::Pass, Some("SN2".into()), 2)));
        // Another fixture is untouched, and an unknown one is ignored.
        b.refused("nowhere", "x".into());
        assert!(b.snapshot()["f2"].last.is_none());
        assert_eq!(b.snapshot().len(), 2);
    }
}
