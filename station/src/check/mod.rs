//! `station check`: one line per check — name, ok/warn/FAIL, detail.
//!
//! Checks of parts that may legitimately be absent (a DPS endpoint, a fixture's device) warn
//! rather than fail. Each part of the station adds its checks in a file of its own here.

mod hsm;
mod store;
pub mod tpm;
mod web;

use std::fmt;

use crate::config::{Config, Loaded};
use crate::home::Home;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but someone should look.
    Warn,
    /// Broken: the station must not run like this.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct CheckLine {
    /// What was checked.
    pub name: String,
    /// How it went.
    pub status: Status,
    /// What was found, or what to do.
    pub detail: String,
}

impl CheckLine {
    /// A passing check.
    pub fn ok(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Ok, detail)
    }

    /// A warning.
    pub fn warn(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, detail)
    }

    /// A failure.
    pub fn fail(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, detail)
    }

    fn new(name: &str, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            status,
            detail: detail.into(),
        }
    }
}

/// All lines of one `station check`.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// In the order run.
    pub lines: Vec<CheckLine>,
}

impl Report {
    /// How many checks failed.
    #[must_use]
    pub fn failures(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| l.status == Status::Fail)
            .count()
    }

    /// How many checks warned.
    #[must_use]
    pub fn warnings(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| l.status == Status::Warn)
            .count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.lines.iter().map(|l| l.name.len()).max().unwrap_or(0);
        for l in &self.lines {
            writeln!(f, "{:<width$}  {:<4}  {}", l.name, l.status, l.detail)?;
        }
        Ok(())
    }
}

/// Runs every check against a home.
#[must_use]
pub fn run_all(home: &Home) -> Report {
    let mut report = Report::default();
    if let Err(e) = home.ensure_usable() {
        report.lines.push(CheckLine::fail("home", e.to_string()));
        return report;
    }
    report
        .lines
        .push(CheckLine::ok("home", home.root().display().to_string()));
    let loaded = match Config::load(home) {
        Ok(l) => l,
        Err(e) => {
            report.lines.push(CheckLine::fail("config", e.to_string()));
            return report;
        }
    };
    report.lines.push(config_line(home, &loaded));
    store::run(home, &loaded.config, &mut report);
    hsm::run(home, &loaded.config, &mut report);
    tpm::run(home, &loaded.config, &mut report);
    web::run(home, &loaded.config, &mut report);
    report
}

fn config_line(home: &Home, loaded: &Loaded) -> CheckLine {
    let files: Vec<String> = loaded
        .files
        .iter()
        .map(|p| {
            p.strip_prefix(home.root())
                .unwrap_or(p)
                .display()
                .to_string()
        })
        .collect();
    CheckLine::ok(
        "config",
        format!(
            "valid ({}); station id {}",
            files.join(", "),
            loaded.config.station_id()
        ),
    )
}
