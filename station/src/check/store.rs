//! Checks of the database: opens, schema current, integrity, audit chain, clock.

use super::{CheckLine, Report};
use crate::config::Config;
use crate::home::Home;
use crate::store::{Store, audit, migrations, priority};

pub(super) fn run(home: &Home, config: &Config, report: &mut Report) {
    let path = home.resolve(&config.store.path);
    let store = match Store::open_unmigrated(&path, &config.store) {
        Ok(s) => s,
        Err(e) => {
            report
                .lines
                .push(CheckLine::fail("database", e.to_string()));
            return;
        }
    };
    let mode = store.file_mode().unwrap_or(0);
    report.lines.push(if mode & 0o077 == 0 {
        CheckLine::ok("database", format!("{} (mode {mode:04o})", path.display()))
    } else {
        CheckLine::warn(
            "database",
            format!(
                "{} is readable by others (mode {mode:04o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        )
    });

    match store.schema_version() {
        Ok(v) if v == migrations::latest() => report
            .lines
            .push(CheckLine::ok("schema", format!("version {v} (current)"))),
        Ok(v) => report.lines.push(CheckLine::warn(
            "schema",
            format!(
                "version {v}; {} migration(s) to version {} apply at the next command that writes",
                migrations::latest() - v,
                migrations::latest()
            ),
        )),
        Err(e) => report.lines.push(CheckLine::fail("schema", e.to_string())),
    }

    match store.quick_check() {
        Ok(s) if s == "ok" => report.lines.push(CheckLine::ok("integrity", "ok")),
        Ok(s) => report.lines.push(CheckLine::fail("integrity", s)),
        Err(e) => report
            .lines
            .push(CheckLine::fail("integrity", e.to_string())),
    }

    match audit::verify(store.conn()) {
        Ok(v) => match v.first_bad {
            None => report.lines.push(CheckLine::ok(
                "audit",
                format!("{} entries, chain intact", v.entries),
            )),
            Some(bad) => report.lines.push(CheckLine::fail(
                "audit",
                format!("entry {}: {}", bad.seq, bad.reason),
            )),
        },
        Err(e) => report.lines.push(CheckLine::fail("audit", e.to_string())),
    }

    if store.schema_version().ok() == Some(migrations::latest()) {
        report.lines.extend(outbox_lines(&store));
        report.lines.push(registrations_line(&store, config));
        report.lines.push(backup_line(home, config, &store));
        report.lines.push(crl_line(&store, config));
    }
    report.lines.push(clock_line(&store));
    report.lines.push(write_turn_line(config));
}

/// An air-gapped export whose receipt has not come back after this long is worth a look.
const EXPORT_OVERDUE_S: i64 = 7 * 24 * 3600;

/// The outbox: what waits, conflicts for a supervisor, and exports whose receipt is overdue.
fn outbox_lines(store: &Store) -> Vec<CheckLine> {
    let st = match crate::outbox::status(store.conn()) {
        Ok(s) => s,
        Err(e) => return vec![CheckLine::fail("outbox", e.to_string())],
    };
    let in_export: i64 = st.queues.iter().map(|q| q.in_export).sum();
    let mut lines = vec![if st.conflicts.is_empty() {
        CheckLine::ok(
            "outbox",
            format!(
                "{} undelivered ({in_export} travelling in exports), no conflict",
                st.undelivered()
            ),
        )
    } else {
        CheckLine::warn(
            "outbox",
            format!(
                "{} rows in conflict wait for a supervisor (`station upload --status`, then `station upload --requeue ID`)",
                st.conflicts.len()
            ),
        )
    }];
    let now = chrono::Utc::now();
    for e in &st.exports {
        let age_s = chrono::DateTime::parse_from_rfc3339(&e.created_at)
            .map(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds())
            .unwrap_or(0);
        if age_s > EXPORT_OVERDUE_S {
            lines.push(CheckLine::warn(
                "outbox export",
                format!(
                    "export {} ({}) to {}: {} rows travelling for {} days without a receipt; deliver it and run `station upload --receipt FILE`, or write it again with `station upload --export FILE --again {}`",
                    e.id,
                    e.file_name,
                    e.target,
                    e.travelling,
                    age_s / 86400,
                    e.id
                ),
            ));
        }
    }
    lines
}

/// Where the uploaded units stand with DPS, as the registration checks recorded it: a warning
/// when DPS refused some (an enrollment disabled, a certificate it does not trust).
fn registrations_line(store: &Store, config: &Config) -> CheckLine {
    let sum = match crate::dps_target::check::summary(store.conn()) {
        Ok(s) => s,
        Err(e) => return CheckLine::fail("registrations", e.to_string()),
    };
    let every = config.registrations.check_every_s;
    let asking = if every > 0 {
        format!("station serve asks DPS every {every} s")
    } else {
        "station serve does not ask DPS ([registrations] check_every_s = 0): run `station registrations`".to_owned()
    };
    match sum.refused.first() {
        None => CheckLine::ok(
            "registrations",
            format!(
                "{} registered, {} uploaded and not registered yet; {asking}",
                sum.registered, sum.waiting
            ),
        ),
        Some(first) => CheckLine::warn(
            "registrations",
            format!(
                "DPS refused {} unit(s), e.g. {} ({}): {}; see `station upload --status`",
                sum.refused.len(),
                first.serial,
                first.target,
                first.message
            ),
        ),
    }
}

/// Whether `station serve` can hold the write turn at real-time priority
/// (`[store] realtime_write_turn`, see `store::priority`).
fn write_turn_line(config: &Config) -> CheckLine {
    if !config.store.realtime_write_turn {
        return CheckLine::ok(
            "write turn",
            "normal priority ([store] realtime_write_turn = false)",
        );
    }
    match priority::available() {
        Ok(()) => CheckLine::ok("write turn", "real-time priority while held (SCHED_FIFO 1)"),
        Err(e) => CheckLine::warn(
            "write turn",
            format!(
                "real-time priority refused ({e}): under load units wait longer for the database; \
                 give the station CAP_SYS_NICE or an RTPRIO limit of 1 (LimitRTPRIO=1), or set \
                 [store] realtime_write_turn = false"
            ),
        ),
    }
}

/// The clock is sane when it is not before the newest audit entry: certificates issued with a
/// clock in the past would be valid too early and audit times would run backwards.
fn clock_line(store: &Store) -> CheckLine {
    let now = chrono::Utc::now();
    let newest = match audit::newest(store.conn()) {
        Ok(n) => n,
        Err(e) => return CheckLine::fail("clock", e.to_string()),
    };
    let Some(entry) = newest else {
        return CheckLine::ok(
            "clock",
            format!("{} (no audit entries yet)", now.to_rfc3339()),
        );
    };
    match chrono::DateTime::parse_from_rfc3339(&entry.ts) {
        Ok(ts) if ts <= now => CheckLine::ok(
            "clock",
            format!(
                "{} (newest audit entry {})",
                now.format("%Y-%m-%dT%H:%M:%SZ"),
                entry.ts
            ),
        ),
        Ok(_) => CheckLine::fail(
            "clock",
            format!(
                "system clock {} is before the newest audit entry ({}); set the clock (NTP) before provisioning",
                now.format("%Y-%m-%dT%H:%M:%SZ"),
                entry.ts
            ),
        ),
        Err(_) => CheckLine::fail(
            "clock",
            format!("newest audit entry has an unreadable time {:?}", entry.ts),
        ),
    }
}

/// The newest backup: how old against `[backup] every_h`, and whether it shares the
/// database's disk. A warning when it is overdue, or when units are recorded and there is none.
fn backup_line(home: &Home, config: &Config, store: &Store) -> CheckLine {
    let st = match crate::backup::Status::read(home, config, store.conn()) {
        Ok(s) => s,
        Err(e) => return CheckLine::warn("backup", e.to_string()),
    };
    let now = chrono::Utc::now();
    let disk = st
        .newest
        .as_ref()
        .and_then(|(newest, _)| crate::backup::same_disk(store.path(), newest))
        .map(|n| format!("; {n}"))
        .unwrap_or_default();
    let text = format!("{}{disk}", st.summary(now));
    match st.warning(now) {
        Some(w) => CheckLine::warn("backup", format!("{w}: {text}")),
        None => CheckLine::ok("backup", text),
    }
}

/// The newest CRL (`station ca crl`): a warning once it is past its nextUpdate, or when
/// certificates were revoked or superseded after it was signed. None signed is fine: relying
/// parties that check revocation need one, DPS does not.
fn crl_line(store: &Store, config: &Config) -> CheckLine {
    let state = match crate::ca::service::newest_crl(store.conn(), None) {
        Ok(s) => s,
        Err(e) => return CheckLine::fail("crl", e.to_string()),
    };
    let publishing = !config.ca.crl_file.as_os_str().is_empty();
    let Some(state) = state else {
        return CheckLine::ok(
            "crl",
            if publishing {
                "none signed yet: station serve signs one into [ca] crl_file when it starts"
            } else {
                "none signed (`station ca crl --out FILE` signs one for relying parties that check revocation)"
            },
        );
    };
    let now = crate::store::now_utc();
    let renew = if publishing {
        "station serve renews it within minutes while it runs ([ca] crl_file)"
    } else {
        "sign and publish a new one: `station ca crl --out FILE`"
    };
    match state.renew_why(&now) {
        Some(why) if state.unlisted > 0 || state.next_update.as_str() <= now.as_str() => {
            CheckLine::warn("crl", format!("{why}; {renew}"))
        }
        _ => CheckLine::ok(
            "crl",
            format!(
                "CRL number {}, valid until {}",
                state.number, state.next_update
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;

    #[test]
    fn the_registrations_line_counts_units_and_warns_of_refusals() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::create(&d.path().join("t.db"), &StoreConfig::default()).unwrap();
        let config: Config = toml::from_str("[registrations]\ncheck_every_s = 60\n").unwrap();
        store
            .conn()
            .execute_batch(
                "INSERT INTO units (id, serial, product, registration_id, state, state_data, created_at, updated_at) VALUES
                   (1, 'A', 'p', 'a', 'uploaded', '{}', 't', 't'),
                   (2, 'B', 'p', 'b', 'registered', '{}', 't', 't');",
            )
            .unwrap();
        let line = registrations_line(&store, &config);
        assert_eq!(line.status, super::super::Status::Ok);
        assert_eq!(
            line.detail,
            "1 registered, 1 uploaded and not registered yet; station serve asks DPS every 60 s"
        );
        store
            .conn()
            .execute(
                "INSERT INTO dps_registrations (unit_id, dps_target, registration_id, status, error_message, checked_at)
                 VALUES (1, 'local', 'a', 'disabled', 'the individual enrollment a is disabled', 't')",
                [],
            )
            .unwrap();
        let line = registrations_line(&store, &config);
        assert_eq!(line.status, super::super::Status::Warn);
        assert_eq!(
            line.detail,
            "DPS refused 1 unit(s), e.g. A (local): the individual enrollment a is disabled; see `station upload --status`"
        );
    }
}
