//! `station serve`'s backups: one whenever the newest in the backup directory is `[backup]
//! every_h` old (or there is none), looked for first `start_delay_s` after the start. The
//! thread runs at a lower CPU priority than the line (nice 10): a copy waits for the fixtures,
//! not they for it. The schedule follows the files, not the process, so a station restarted
//! every night still makes its daily backup.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::home::Home;
use crate::ids::StationId;
use crate::line::worker::error_text;
use crate::outbox::{UploadSignal, until_stopped};
use crate::store::Store;

/// After a failed backup, the next try comes this long after (or at the next scheduled time,
/// if sooner).
const RETRY: Duration = Duration::from_secs(600);

/// How long until a backup is due, the newest having been taken at `newest` (none: due now).
#[must_use]
pub fn due_in(newest: Option<DateTime<Utc>>, now: DateTime<Utc>, every: Duration) -> Duration {
    let Some(at) = newest else {
        return Duration::ZERO;
    };
    let age = (now - at).to_std().unwrap_or(Duration::ZERO);
    every.saturating_sub(age)
}

/// Runs serve's backups until `signal` stops; returns at once when `[backup] every_h` is 0.
pub fn run(home: &Home, cfg: &Config, hsm: &crate::hsm::Hsm, signal: &UploadSignal) {
    let every = Duration::from_secs(u64::from(cfg.backup.every_h) * 3600);
    if every.is_zero() {
        return;
    }
    lower_priority();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "backups could not start; run `station backup`");
            return;
        }
    };
    let mut wait = Duration::from_secs(cfg.backup.start_delay_s);
    let station = cfg.station_id();
    loop {
        // The sleep is made inside the runtime (async block): its timer needs it.
        until_stopped(&rt, Some(signal), async {
            tokio::time::sleep(wait).await;
        });
        if signal.is_stopped() {
            return;
        }
        wait = match once(home, cfg, hsm, &station, every) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, dir = %super::dir(home, cfg).display(), "backup failed; the next try is in 10 minutes");
                RETRY.min(every)
            }
        };
    }
}

/// Makes a backup if one is due; returns how long until the next is.
fn once(
    home: &Home,
    cfg: &Config,
    hsm: &crate::hsm::Hsm,
    station: &StationId,
    every: Duration,
) -> Result<Duration, String> {
    let newest = super::newest(home, cfg)
        .map_err(|e| error_text(&e))?
        .map(|(_, at)| at);
    let due = due_in(newest, Utc::now(), every);
    if !due.is_zero() {
        return Ok(due);
    }
    let mut store = Store::open_unmigrated(&home.resolve(&cfg.store.path), &cfg.store)
        .map_err(|e| error_text(&e))?;
    let session = crate::ca::service::open_ca_token(hsm, home, cfg);
    let key = match &session {
        Ok(s) => crate::ca::service::AuditKey::find(s, &cfg.ca.audit_key_label)
            .map_err(|e| error_text(&e)),
        Err(e) => Err(error_text(e)),
    };
    let made = super::make(
        &mut store,
        (home, cfg),
        None,
        (station, "station"),
        key.as_ref().map_err(Clone::clone),
    )
    .map_err(|e| error_text(&e))?;
    let c = &made.written.contents;
    if made.keyed.is_broken() {
        tracing::error!(file = %made.written.path.display(), "backup made, but {}: run `station audit verify`", made.keyed.describe());
    } else {
        tracing::info!(
            file = %made.written.path.display(),
            bytes = made.written.bytes,
            units = c.units,
            audit_entries = c.audit_head.as_ref().map_or(0, |h| h.seq),
            pruned = made.pruned.len(),
            "backup made: {}",
            made.keyed.describe()
        );
    }
    Ok(every)
}

/// This thread's CPU priority: nice 10 (Linux sets it per thread).
fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers; a failure leaves the priority as it was.
    let done = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid.cast_unsigned(), 10)
    };
    if done != 0 {
        tracing::debug!("backups run at the line's priority (setpriority refused)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_is_due_once_the_newest_is_as_old_as_the_interval() {
        let every = Duration::from_secs(24 * 3600);
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(due_in(None, now, every), Duration::ZERO, "none yet");
        let hours = |h: i64| now - chrono::Duration::hours(h);
        assert_eq!(
            due_in(Some(hours(3)), now, every),
            Duration::from_secs(21 * 3600)
        );
        assert_eq!(due_in(Some(hours(24)), now, every), Duration::ZERO);
        assert_eq!(due_in(Some(hours(90)), now, every), Duration::ZERO);
        // A clock set back: the backup looks newer than now; wait one interval, not forever.
        assert_eq!(due_in(Some(hours(-5)), now, every), every);
    }
}
