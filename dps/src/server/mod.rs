//! The DPS-compatible local service: the service API (enrollments, groups, registration
//! records) and the device registration API over HTTPS with TLS 1.2 and 1.3, state in SQLite
//! in a data directory.
//!
//! One listener serves every API: [`router`] merges one router per endpoint family. Each
//! connection's client certificate chain (X.509 devices) rides on its requests as a
//! [`peer::PeerCerts`] extension.

pub mod allocate;
pub mod auth;
pub mod body;
pub mod device;
pub mod device_auth;
pub mod device_tpm;
pub mod enrollments;
pub mod error;
pub mod files;
pub mod gate;
pub mod groups;
pub mod mqtt;
pub mod peer;
pub mod records;
pub mod registrations;
pub mod seal;
pub mod setup;
pub mod state;
pub mod store;
pub mod validate;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use self::error::{ErrorChain, ServiceError, code};
use self::state::AppState;
use self::store::{LinkedHub, Store};
use crate::rate::TokenBucket;
use crate::wire::{EnrollmentGroup, IndividualEnrollment};

/// How to run the service.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Data directory.
    pub data: PathBuf,
    /// Listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Listen address of the device API over MQTT, if served (port 0 picks a free port).
    pub mqtt_listen: Option<SocketAddr>,
    /// Hubs to link at start.
    pub link_hubs: Vec<LinkedHub>,
    /// Test option: operation quota per minute (429 beyond it).
    pub ops_per_min: Option<u32>,
    /// Test option: share of requests answered 500 (0..1).
    pub fail_rate: f64,
    /// Test option: delay before every answer.
    pub latency: Duration,
    /// Test options: faults forced on the first requests (more can be armed while serving
    /// through [`Server::faults`]).
    pub faults: Arc<gate::Faults>,
}

/// Why the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Preparing the data directory failed.
    #[error("preparing the data directory failed")]
    Setup(#[from] setup::SetupError),
    /// Binding the listen address failed.
    #[error("listening on {addr} failed")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Accepting connections failed.
    #[error("accepting connections failed")]
    Accept(#[source] std::io::Error),
    /// Linking the start-up hubs failed.
    #[error("linking hubs failed")]
    LinkHubs(#[source] store::StoreError),
}

/// Keywords of the service API, matched case-insensitively (`enrollmentGroups` and
/// `enrollmentgroups` both occur in the wild).
const KEYWORDS: [&str; 5] = [
    "enrollments",
    "enrollmentgroups",
    "registrations",
    "query",
    "attestationmechanism",
];

/// Lower-cases keyword segments and drops a trailing slash, before routing.
fn normalize<B>(mut req: Request<B>) -> Request<B> {
    let uri = req.uri();
    let path = uri.path();
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        match KEYWORDS.iter().find(|k| k.eq_ignore_ascii_case(seg)) {
            Some(k) => out.push_str(k),
            None => out.push_str(seg),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    if out != path {
        let pq = match uri.query() {
            Some(q) => format!("{out}?{q}"),
            None => out,
        };
        let mut parts = uri.clone().into_parts();
        if let Ok(p) = pq.parse() {
            parts.path_and_query = Some(p);
            if let Ok(u) = Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
        }
    }
    req
}

async fn not_found() -> ServiceError {
    ServiceError::not_found("no such resource")
}

async fn method_not_allowed() -> ServiceError {
    ServiceError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        code::METHOD_NOT_ALLOWED,
        "method not allowed on this resource",
    )
}

/// Every route of the service, with the request gate.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(records::routes::<IndividualEnrollment>())
        .merge(records::routes::<EnrollmentGroup>())
        .merge(registrations::routes())
        .merge(device::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            gate::gate,
        ))
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .with_state(state)
}

fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

fn flush_operations(state: &AppState) {
    let n = state.ops_pending.swap(0, Ordering::Relaxed);
    if n == 0 {
        return;
    }
    if let Err(e) = state.store.write(|tx| tx.add_operations(&today(), n)) {
        tracing::error!(error = %ErrorChain(&e), "recording operations failed");
        state.ops_pending.fetch_add(n, Ordering::Relaxed);
    }
}

/// A prepared, bound service: the data directory is ready and the port is open, but no
/// connection is accepted until [`Server::run_until`]. Lets an embedding program (the
/// station) learn the address before serving.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    mqtt: Option<(TcpListener, SocketAddr)>,
    state: Arc<AppState>,
    tls: Arc<rustls::ServerConfig>,
    dir: setup::DataDir,
}

impl Server {
    /// Prepares the data directory (first start creates CA, certificate, policies, ID
    /// scope), links the start-up hubs and binds the listener.
    pub async fn bind(opts: ServeOptions) -> Result<Self, ServeError> {
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(ServeError::Accept)?;
        let mqtt = match opts.mqtt_listen {
            Some(at) => {
                let l = TcpListener::bind(at)
                    .await
                    .map_err(|source| ServeError::Bind { addr: at, source })?;
                let a = l.local_addr().map_err(ServeError::Accept)?;
                Some((l, a))
            }
            None => None,
        };
        let host_name = format!("localhost:{}", addr.port());
        let prepared = setup::prepare(&opts.data, &host_name)?;
        prepared
            .store
            .write(|tx| {
                for h in &opts.link_hubs {
                    tx.upsert_linked_hub(h)?;
                }
                Ok(())
            })
            .map_err(ServeError::LinkHubs)?;
        let mut host_names = vec![
            host_name,
            format!("127.0.0.1:{}", addr.port()),
            addr.to_string(),
        ];
        if addr.port() == 443 {
            host_names.push("localhost".into());
        }
        let state = Arc::new(AppState {
            store: prepared.store,
            host_names,
            id_scope: prepared.id_scope,
            quota: opts
                .ops_per_min
                .map(|n| Mutex::new(TokenBucket::per_minute(n))),
            fail_rate: opts.fail_rate,
            latency: opts.latency,
            faults: opts.faults,
            ops_pending: Default::default(),
            tpm: Default::default(),
        });
        Ok(Self {
            listener,
            addr,
            mqtt,
            state,
            tls: prepared.tls,
            dir: prepared.dir,
        })
    }

    /// The bound address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound address of the device API over MQTT, when served.
    #[must_use]
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt.as_ref().map(|(_, a)| *a)
    }

    /// The ID scope of this instance.
    #[must_use]
    pub fn id_scope(&self) -> &str {
        &self.state.id_scope
    }

    /// The forced-fault controls (a test option), usable while the service runs.
    #[must_use]
    pub fn faults(&self) -> Arc<gate::Faults> {
        self.state.faults.clone()
    }

    /// The data directory's files (`ca.pem`, `connection-string`, `id-scope`).
    #[must_use]
    pub fn data_dir(&self) -> &setup::DataDir {
        &self.dir
    }

    /// Serves until `shutdown` completes, then records the pending operation count.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) {
        let state = self.state;
        let flusher = {
            let st = state.clone();
            tokio::spawn(async move {
                let mut t = tokio::time::interval(Duration::from_secs(1));
                loop {
                    t.tick().await;
                    flush_operations(&st);
                }
            })
        };
        let app = router(state.clone()).map_request(normalize::<hyper::body::Incoming>);
        let acceptor = TlsAcceptor::from(self.tls);
        let mqtt = self.mqtt.map(|(l, _)| {
            let st = state.clone();
            tokio::spawn(peer::accept_tls(
                l,
                acceptor.clone(),
                "mqtt",
                move |tls, peer| mqtt::session(tls, peer, st.clone()),
            ))
        });
        let https = tokio::spawn(peer::accept_tls(
            self.listener,
            acceptor,
            "https",
            move |tls, peer| {
                let app =
                    app.clone()
                        .map_request(move |mut req: Request<hyper::body::Incoming>| {
                            req.extensions_mut().insert(peer.clone());
                            req
                        });
                async move {
                    let svc = TowerToHyperService::new(app);
                    if let Err(e) =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), svc)
                            .await
                    {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
            },
        ));
        shutdown.await;
        https.abort();
        flusher.abort();
        if let Some(m) = mqtt {
            m.abort();
        }
        flush_operations(&state);
    }
}

/// Runs the service until SIGINT or SIGTERM, printing where its files are and, last,
/// `https listening on ADDR:PORT`.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let server = Server::bind(opts).await?;
    let dir = server.data_dir();
    let mut out = std::io::stdout().lock();
    // Paths only: the connection string holds a key and must not reach logs.
    let _ = writeln!(out, "ca certificate: {}", dir.ca_pem().display());
    let _ = writeln!(
        out,
        "connection string: {}",
        dir.connection_string().display()
    );
    let _ = writeln!(
        out,
        "id scope: {} ({})",
        server.id_scope(),
        dir.id_scope().display()
    );
    // Before the https line, which callers wait for as "ready".
    if let Some(a) = server.mqtt_addr() {
        let _ = writeln!(out, "mqtts listening on {a}");
    }
    let _ = writeln!(out, "https listening on {}", server.local_addr());
    let _ = out.flush();
    drop(out);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServeError::Accept)?;
    server
        .run_until(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await;
    Ok(())
}

/// Opens the store of a data directory (for the management commands, also while the
/// service runs).
pub fn open_store(data: &std::path::Path) -> Result<Store, setup::SetupError> {
    let dir = setup::ensure_dir(data)?;
    Ok(Store::open(&dir.root)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_and_trailing_slash_but_keeps_ids() {
        let r = normalize(
            Request::builder()
                .uri("/enrollmentGroups/Grp-1?api-version=1")
                .body(())
                .unwrap(),
        );
        assert_eq!(r.uri().to_string(), "/enrollmentgroups/Grp-1?api-version=1");
        let r = normalize(
            Request::builder()
                .uri("/enrollments/?api-version=1")
                .body(())
                .unwrap(),
        );
        assert_eq!(r.uri().to_string(), "/enrollments?api-version=1");
        let r = normalize(
            Request::builder()
                .uri("/Enrollments/a%20b/AttestationMechanism")
                .body(())
                .unwrap(),
        );
        assert_eq!(r.uri().path(), "/enrollments/a%20b/attestationmechanism");
    }
}
