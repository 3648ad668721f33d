//! `station serve`'s CRL publication (`[ca] crl_file`): the issuing CA's CRL is signed into
//! the file when serve starts if it has none, and again within minutes of a certificate being
//! revoked or superseded, or once half its validity is gone, so that the file a plant's web
//! server publishes never expires under relying parties (which then refuse every certificate).

use std::time::Duration;

use crate::config::Config;
use crate::home::Home;
use crate::line::worker::error_text;
use crate::outbox::{UploadSignal, until_stopped};
use crate::store::Store;

/// How often serve looks whether the CRL needs renewing.
const EVERY: Duration = Duration::from_secs(300);

/// Runs serve's CRL publication until `signal` stops; returns at once when `[ca] crl_file`
/// is not set.
pub fn run(home: &Home, cfg: &Config, hsm: &crate::hsm::Hsm, signal: &UploadSignal) {
    if cfg.ca.crl_file.as_os_str().is_empty() {
        return;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "CRL publication could not start; run `station ca crl`");
            return;
        }
    };
    loop {
        if let Err(e) = once(home, cfg, hsm) {
            tracing::error!(error = %e, file = %home.resolve(&cfg.ca.crl_file).display(), "CRL not renewed; trying again in 5 minutes");
        }
        // The sleep is made inside the runtime (async block): its timer needs it.
        until_stopped(&rt, Some(signal), async {
            tokio::time::sleep(EVERY).await;
        });
        if signal.is_stopped() {
            return;
        }
    }
}

/// Signs and writes a new CRL if one is due (or the file is missing).
fn once(home: &Home, cfg: &Config, hsm: &crate::hsm::Hsm) -> Result<(), String> {
    let file = home.resolve(&cfg.ca.crl_file);
    let mut store = Store::open_unmigrated(&home.resolve(&cfg.store.path), &cfg.store)
        .map_err(|e| error_text(&e))?;
    let session = super::service::open_ca_token(hsm, home, cfg).map_err(|e| error_text(&e))?;
    let ca = super::service::load_issuing(&session, home, cfg).map_err(|e| error_text(&e))?;
    let state = super::service::newest_crl(store.conn(), Some(ca.issuer_key_id()))
        .map_err(|e| error_text(&e))?;
    let why = match &state {
        None => "no CRL signed yet".to_owned(),
        Some(s) => match s.renew_why(&crate::store::now_utc()) {
            Some(why) => why,
            None if !file.exists() => format!("{} is missing", file.display()),
            None => return Ok(()),
        },
    };
    let key = super::service::AuditKey::find(&session, &cfg.ca.audit_key_label)
        .map_err(|e| error_text(&e))?;
    let crl = super::service::issue_crl(
        &mut store,
        (&ca, &key),
        (&cfg.station_id(), "station"),
        time::Duration::days(i64::from(cfg.ca.crl_valid_days.max(1))),
    )
    .map_err(|e| error_text(&e))?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    super::crl::write_file(&file, &crl.der).map_err(|e| error_text(&e))?;
    tracing::info!(
        number = crl.number,
        listed = crl.entries.len(),
        file = %file.display(),
        "CRL published: {why}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ca::service::CrlState;

    fn state(unlisted: usize) -> CrlState {
        CrlState {
            number: 4,
            this_update: "2026-12-01T00:00:00Z".into(),
            next_update: "2026-12-08T00:00:00Z".into(),
            unlisted,
        }
    }

    #[test]
    fn a_crl_is_renewed_for_a_new_revocation_or_past_half_its_validity() {
        assert_eq!(state(0).renew_why("2026-12-02T00:00:00Z"), None);
        assert_eq!(
            state(2).renew_why("2026-12-02T00:00:00Z").as_deref(),
            Some(
                "2 certificate(s) revoked or superseded since CRL number 4 (2026-12-01T00:00:00Z)"
            )
        );
        assert_eq!(
            state(0).renew_why("2026-12-04T13:00:00Z").as_deref(),
            Some("CRL number 4 is past half its validity (until 2026-12-08T00:00:00Z)")
        );
        assert_eq!(
            state(0).renew_why("2026-12-09T00:00:00.5Z").as_deref(),
            Some("CRL number 4 expired at 2026-12-08T00:00:00Z")
        );
    }
}
