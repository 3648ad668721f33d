//! The operator web UI of `station serve` (axum, askama templates in `templates/`).
//!
//! One file per page; each route extracts, makes one call on the line or the store, and maps
//! the error. Users sign in with their password or their badge (`station user`); a signed-in
//! user's scans in a fixture's scan box go to that fixture's hardware thread exactly as its
//! scanner's do, run under the user's name. What the fixtures are doing comes from the line's
//! [`Board`]; units and lots come from the database, read on a connection of the UI's own.

mod assets;
mod error;
mod fixture;
mod line;
mod login;
mod lots;
mod outbox;
mod session;
mod units;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, mpsc};

use axum::Router;
use axum::response::{IntoResponse as _, Redirect, Response};
use axum::routing::{get, post};

use crate::line::board::Board;
use crate::line::serve::FixtureJob;
use crate::line::setup::LineSetup;
use crate::operators::BadgeKey;
use crate::store::Store;
use crate::trigger::parse::{Debouncer, ScanParser};

pub use error::WebError;
use session::{Sessions, SignedIn};

/// A fixture as the web UI drives it.
pub struct FixtureHandle {
    jobs: mpsc::Sender<FixtureJob>,
    abort: Arc<AtomicBool>,
    parser: ScanParser,
    /// A keyboard-mode scanner double-reads labels into the box as a serial one does.
    debounce: Mutex<Debouncer>,
}

/// What every request shares.
pub struct WebState {
    setup: Arc<LineSetup>,
    fixtures: BTreeMap<String, FixtureHandle>,
    board: Arc<Board>,
    sessions: Sessions,
    badge_key: Option<Arc<BadgeKey>>,
    db: Mutex<Store>,
    hsm: Option<crate::hsm::Hsm>,
    /// Serve's uploader, woken after a supervisor's change: a requeued row or a scrapped
    /// unit's block goes now rather than at the uploader's next interval.
    uploader: Option<crate::outbox::UploadSignal>,
    cookie_name: String,
    /// Over HTTPS the session cookie is never sent over plain HTTP.
    secure_cookie: bool,
}

/// Why the web UI could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebStartError {
    /// The address is taken or not ours.
    #[error("the web UI cannot listen on {addr} (set [web] listen to a free address)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A fixture's serial pattern does not compile.
    #[error("fixture {fixture}: serial pattern")]
    Pattern {
        /// The fixture.
        fixture: String,
        /// Why.
        #[source]
        source: regex::Error,
    },
    /// The database cannot be opened for reading.
    #[error("the web UI cannot open the database")]
    Store(#[source] crate::store::StoreError),
    /// The HTTPS certificate or key cannot be used.
    #[error("the web UI's HTTPS {what} {path} cannot be used: {reason}")]
    Tls {
        /// Certificate or key.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The URL file cannot be written.
    #[error("cannot write {path}")]
    UrlFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl WebState {
    /// The state for the running fixtures: each by name, with its job queue and abort flag.
    pub fn new<'a>(
        setup: &Arc<LineSetup>,
        running: impl IntoIterator<Item = (&'a str, &'a mpsc::Sender<FixtureJob>, &'a Arc<AtomicBool>)>,
        board: &Arc<Board>,
        (hsm, uploader): (
            Option<&crate::hsm::Hsm>,
            Option<&crate::outbox::UploadSignal>,
        ),
        port: u16,
    ) -> Result<Arc<Self>, WebStartError> {
        let mut fixtures = BTreeMap::new();
        for (name, jobs, abort) in running {
            let Some(fcfg) = setup.cfg.fixtures.get(name) else {
                continue;
            };
            let Some(product) = setup.products.get(&fcfg.product) else {
                continue;
            };
            let parser =
                ScanParser::new(&product.profile.serial_pattern, setup.cfg.line.max_scan_len)
                    .map_err(|source| WebStartError::Pattern {
                        fixture: name.to_owned(),
                        source,
                    })?;
            fixtures.insert(
                name.to_owned(),
                FixtureHandle {
                    jobs: jobs.clone(),
                    abort: Arc::clone(abort),
                    parser,
                    debounce: Mutex::new(Debouncer::new(std::time::Duration::from_millis(
                        setup.cfg.line.debounce_ms,
                    ))),
                },
            );
        }
        let db =
            Store::open_unmigrated(&setup.home.resolve(&setup.cfg.store.path), &setup.cfg.store)
                .map_err(WebStartError::Store)?;
        Ok(Arc::new(Self {
            setup: Arc::clone(setup),
            fixtures,
            board: Arc::clone(board),
            sessions: Sessions::new(std::time::Duration::from_secs(
                u64::from(setup.cfg.web.idle_minutes) * 60,
            )),
            badge_key: BadgeKey::load(&setup.home.badge_key_file())
                .ok()
                .map(Arc::new),
            db: Mutex::new(db),
            hsm: hsm.cloned(),
            uploader: uploader.cloned(),
            // Cookies are per host, not per port: two stations on one host keep apart.
            cookie_name: format!("station_session_{port}"),
            secure_cookie: setup.cfg.web.tls(),
        }))
    }

    /// Runs `f` on the UI's database connection, off the async workers.
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, WebError> + Send + 'static,
    ) -> Result<T, WebError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let db = me
                .db
                .lock()
                .map_err(|_| WebError::Internal("the database connection is unusable".into()))?;
            f(db.conn())
        })
        .await
        .map_err(|e| WebError::Internal(format!("a database read stopped: {e}")))?
    }
}

impl WebState {
    /// A supervisor's change from a page. Anyone else is refused. Otherwise `f` runs on the
    /// UI's database connection, with the station and the user as actor (each change is one
    /// transaction with its audit entry), and the audit checkpoint is then sealed with the HSM
    /// key as after a command. Either way the outcome (`f`'s message, or its refusal) is logged
    /// and left for the page at `back`, where the browser is sent.
    async fn supervise(
        self: &Arc<Self>,
        who: &SignedIn,
        what: &str,
        back: &str,
        f: impl FnOnce(&mut Store, &crate::ids::StationId, &str) -> Result<String, String>
        + Send
        + 'static,
    ) -> Result<Response, WebError> {
        let done = if who.supervises() {
            let me = Arc::clone(self);
            let actor = who.user.clone();
            tokio::task::spawn_blocking(move || {
                let mut db = me.db.lock().map_err(|_| {
                    WebError::Internal("the database connection is unusable".into())
                })?;
                let done = f(&mut db, &me.setup.station, &actor);
                if done.is_ok()
                    && let Some(hsm) = &me.hsm
                    && let Err(e) = crate::ca::service::seal_checkpoint(
                        hsm,
                        &me.setup.home,
                        &me.setup.cfg,
                        &mut db,
                    )
                {
                    tracing::warn!(error = %crate::line::worker::error_text(&e), "could not seal the audit checkpoint with the HSM key; the hash chain still covers the new entries");
                }
                if done.is_ok()
                    && let Some(uploader) = &me.uploader
                {
                    uploader.wake();
                }
                Ok::<_, WebError>(done)
            })
            .await
            .map_err(|e| WebError::Internal(format!("a database change stopped: {e}")))??
        } else {
            Err(format!("Only a supervisor can {what}: ask one."))
        };
        match done {
            Ok(text) => {
                tracing::info!(user = %who.user, "web: {text}");
                self.sessions.flash(&who.token, true, text);
            }
            Err(text) => {
                tracing::warn!(user = %who.user, "web: could not {what}: {text}");
                self.sessions.flash(&who.token, false, text);
            }
        }
        Ok(Redirect::to(back).into_response())
    }
}

/// `s` as one path segment of a URL (serials and names keep their `-`, `.`, `_`).
fn path_segment(s: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// Every route of the UI.
pub fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/", get(line::page))
        .route("/board", get(line::board))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/fixtures/{name}", get(fixture::page))
        .route("/fixtures/{name}/status", get(fixture::status))
        .route("/fixtures/{name}/scan", post(fixture::scan))
        .route("/fixtures/{name}/retry", post(fixture::retry))
        .route("/fixtures/{name}/abort", post(fixture::abort_button))
        .route("/units", get(units::list))
        .route("/units/{serial}", get(units::show))
        .route("/units/{serial}/register", post(units::register))
        .route("/units/{serial}/scrap", post(units::scrap))
        .route("/lots", get(lots::list).post(lots::open))
        .route("/lots/{id}/close", post(lots::close))
        .route("/outbox", get(outbox::page))
        .route("/outbox/{id}/requeue", post(outbox::requeue))
        .route("/outbox/registrations", post(outbox::check_registrations))
        .route("/outbox/backup", post(outbox::backup_now))
        .route("/static/station.css", get(assets::css))
        .route("/static/station.js", get(assets::js))
        .layer(axum::middleware::from_fn(session::same_origin))
        .with_state(state)
}

/// A bound listener and the URL it serves.
pub struct Listener {
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// `http://ADDR:PORT/` or `https://...`.
    pub url: String,
    /// The port it listens on.
    pub port: u16,
}

/// Loads `[web] tls_cert_file` and `tls_key_file` into a rustls configuration (TLS 1.2 and
/// 1.3; a key that does not belong to the certificate is refused here, not at the first
/// browser).
fn tls_config(setup: &LineSetup) -> Result<Option<Arc<rustls::ServerConfig>>, WebStartError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let web = &setup.cfg.web;
    let (Some(cert), Some(key)) = (&web.tls_cert_file, &web.tls_key_file) else {
        return Ok(None);
    };
    let (cert, key) = (setup.home.resolve(cert), setup.home.resolve(key));
    let bad = |what: &'static str, path: &std::path::Path, reason: String| WebStartError::Tls {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| bad("certificate", &cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(
            "certificate",
            &cert,
            "it holds no PEM certificate".into(),
        ));
    }
    // The key's own error could quote nothing of it, but is kept short anyway: no key material.
    let private = PrivateKeyDer::from_pem_file(&key).map_err(|_| {
        bad(
            "key",
            &key,
            "it holds no PEM private key that can be read".into(),
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|e| {
            bad(
                "key",
                &key,
                format!("{e} (does it belong to {}?)", cert.display()),
            )
        })?;
    Ok(Some(Arc::new(cfg)))
}

/// Binds the configured address (before the fixtures start, so a taken port or an unusable
/// certificate stops the daemon at once) and writes the URL to `H/run/web.url`.
pub fn bind(setup: &LineSetup) -> Result<Option<Listener>, WebStartError> {
    let Ok(Some(addr)) = setup.cfg.web.address() else {
        return Ok(None);
    };
    let tls = tls_config(setup)?;
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| WebStartError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| WebStartError::Bind { addr, source })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{local}/");
    let path = setup.home.run_dir().join("web.url");
    std::fs::create_dir_all(setup.home.run_dir())
        .and_then(|()| std::fs::write(&path, format!("{url}\n")))
        .map_err(|source| WebStartError::UrlFile { path, source })?;
    Ok(Some(Listener {
        listener,
        tls,
        url,
        port: local.port(),
    }))
}

/// Serves the UI on `listener` until `stop` is notified.
pub async fn serve(
    listener: Listener,
    state: Arc<WebState>,
    stop: Arc<tokio::sync::Notify>,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    match listener.tls {
        None => {
            let listener = tokio::net::TcpListener::from_std(listener.listener)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.notified().await })
                .await
        }
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                stop.notified().await;
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(1)));
            });
            axum_server::from_tcp_rustls(
                listener.listener,
                axum_server::tls_rustls::RustlsConfig::from_config(tls),
            )?
            .handle(handle)
            .serve(app)
            .await
        }
    }
}
