//! Shared state of the running service.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::store::Store;
use crate::rate::TokenBucket;

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Lower-case host names a service token's `sr` may name (besides the `Host` header).
    pub host_names: Vec<String>,
    /// This instance's ID scope.
    pub id_scope: String,
    /// Test option `--ops-per-min`.
    pub quota: Option<Mutex<TokenBucket>>,
    /// Test option `--fail-rate` (0..1).
    pub fail_rate: f64,
    /// Test option `--latency-ms`.
    pub latency: Duration,
    /// Test options: faults forced on the next requests.
    pub faults: Arc<super::gate::Faults>,
    /// Completed operations not yet added to `operations_daily`.
    pub ops_pending: AtomicU64,
    /// TPM challenges sent and not yet answered.
    pub tpm: super::device_tpm::TpmChallenges,
}
