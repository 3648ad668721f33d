//! The line's part of the configuration: DPS targets, the line's own settings, the uploader and
//! the fixtures. Products refer to a DPS target by name; fixtures refer to a product by name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// `[dps]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpsConfig {
    /// `[dps.targets.NAME]`: the DPS instances this station uploads to, by name.
    #[serde(default)]
    pub targets: BTreeMap<String, DpsTarget>,
}

impl DpsConfig {
    /// Whether the target called `name` is configured with `delivery = "export"` (the
    /// station cannot reach it).
    #[must_use]
    pub fn export_only(&self, name: &str) -> bool {
        self.targets
            .get(name)
            .is_some_and(|t| t.delivery == Delivery::Export)
    }
}

/// `[dps.targets.NAME]`: one DPS instance (one tenant).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpsTarget {
    /// File holding the service connection string (`HostName=...;SharedAccessKeyName=...;
    /// SharedAccessKey=...`), relative to the home; keep it mode 0600. The key never goes in
    /// this file. Required unless `delivery = "export"`.
    #[serde(default)]
    pub connection_string_file: Option<PathBuf>,
    /// How the target's rows reach DPS: `online` (the uploader, default) or `export` (an
    /// air-gapped station: the uploader leaves them alone and they leave with
    /// `station upload --export`).
    #[serde(default)]
    pub delivery: Delivery,
    /// The ID scope devices register under (written to symmetric-key units).
    pub id_scope: String,
    /// The device registration endpoint host (written to symmetric-key units).
    #[serde(default = "default_global_endpoint")]
    pub global_endpoint: String,
    /// Extra CA certificates (PEM) to trust for this service, e.g. the local service's
    /// `ca.pem`. Unset: the system roots only.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Operations-per-minute budget shared by everything this station sends to the target.
    /// 0: no budget (the service's 429s still slow the uploader down).
    #[serde(default)]
    pub ops_per_min: u32,
}

/// How a DPS target's rows reach it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// The uploader of `station serve` (or `station upload --now`) sends them.
    #[default]
    Online,
    /// The station cannot reach DPS: rows wait for `station upload --export`.
    Export,
}

fn default_global_endpoint() -> String {
    "global.azure-devices-provisioning.net".into()
}

/// `[line]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    /// Directory of product profiles (`<product>.toml`), relative to the home.
    #[serde(default = "default_products_dir")]
    pub products_dir: PathBuf,
    /// A scan repeated within this window (milliseconds) is ignored.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// Longest scanner line accepted, in bytes.
    #[serde(default = "default_max_scan_len")]
    pub max_scan_len: usize,
}

impl Default for LineConfig {
    fn default() -> Self {
        Self {
            products_dir: default_products_dir(),
            debounce_ms: default_debounce_ms(),
            max_scan_len: default_max_scan_len(),
        }
    }
}

fn default_products_dir() -> PathBuf {
    PathBuf::from("products")
}
fn default_debounce_ms() -> u64 {
    1500
}
fn default_max_scan_len() -> usize {
    128
}

/// `[upload]`: the outbox uploader.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// How often the uploader looks for work when idle, in milliseconds. New rows also wake it.
    #[serde(default = "default_upload_interval_ms")]
    pub interval_ms: u64,
    /// On a busy line, at most one pass per this many milliseconds: the units recorded
    /// meanwhile go to DPS together (fewer bulk requests, transactions and disk syncs). A unit
    /// recorded on a quiet line is uploaded at once.
    #[serde(default = "default_upload_gather_ms")]
    pub gather_ms: u64,
    /// Enrollments per bulk operation (1 to 10; DPS takes at most 10).
    #[serde(default = "default_upload_batch")]
    pub batch: usize,
    /// After a failed delivery, wait this long before the first retry (milliseconds); the wait
    /// doubles per failure up to `max_backoff_ms`.
    #[serde(default = "default_upload_min_backoff_ms")]
    pub min_backoff_ms: u64,
    /// Longest wait between retries of one row, in milliseconds.
    #[serde(default = "default_upload_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            interval_ms: default_upload_interval_ms(),
            gather_ms: default_upload_gather_ms(),
            batch: default_upload_batch(),
            min_backoff_ms: default_upload_min_backoff_ms(),
            max_backoff_ms: default_upload_max_backoff_ms(),
        }
    }
}

/// `[registrations]`: `station serve`'s own registration check (`dps_target::sweep`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationsConfig {
    /// Every this many seconds, ask DPS which uploaded units have registered and record each
    /// one's hub, as `station registrations` does. 0: never (the command still works).
    #[serde(default = "default_check_every_s")]
    pub check_every_s: u64,
    /// A unit that has not registered is asked again after a wait that grows with how long it
    /// has waited since its upload (about doubling), at least `check_every_s` and at most this
    /// many seconds.
    #[serde(default = "default_longest_wait_s")]
    pub longest_wait_s: u64,
    /// At most this many units a round, the longest due first; the rest wait for the next.
    #[serde(default = "default_units_per_round")]
    pub units_per_round: usize,
    /// How long an end-of-line registration the station makes on a unit's behalf (`station
    /// unit register`, the unit page's Register button) keeps trying while DPS does not answer,
    /// throttles or is still assigning, in seconds, before it fails with nothing recorded.
    #[serde(default = "default_register_wait_s")]
    pub register_wait_s: u64,
}

impl Default for RegistrationsConfig {
    fn default() -> Self {
        Self {
            check_every_s: default_check_every_s(),
            longest_wait_s: default_longest_wait_s(),
            units_per_round: default_units_per_round(),
            register_wait_s: default_register_wait_s(),
        }
    }
}

fn default_check_every_s() -> u64 {
    300
}
fn default_longest_wait_s() -> u64 {
    86_400
}
fn default_units_per_round() -> usize {
    500
}
fn default_register_wait_s() -> u64 {
    30
}

fn default_upload_interval_ms() -> u64 {
    2000
}
fn default_upload_gather_ms() -> u64 {
    50
}
fn default_upload_batch() -> usize {
    10
}
fn default_upload_min_backoff_ms() -> u64 {
    5000
}
fn default_upload_max_backoff_ms() -> u64 {
    120_000
}

/// `[fixtures.NAME]`: one fixture (one place on the line where a unit sits).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureConfig {
    /// The product this fixture makes (a profile in `line.products_dir`).
    pub product: String,
    /// The fixture's barcode scanner: a serial port path (`/dev/serial/by-id/...`). Unset: the
    /// fixture is driven from the web page or `station provision` only.
    #[serde(default)]
    pub scanner: Option<PathBuf>,
    /// The scanner's line speed.
    #[serde(default = "default_scanner_baud")]
    pub scanner_baud: u32,
    /// The unit's serial device link (x509-link and symmetric products).
    #[serde(default)]
    pub serial_port: Option<PathBuf>,
    /// The device link's line speed.
    #[serde(default = "default_link_baud")]
    pub baud: u32,
    /// Wait for each answer on the device link, in milliseconds (wire time is added).
    #[serde(default = "default_link_timeout_ms")]
    pub link_timeout_ms: u64,
    /// Retries of a device-link command after no or a corrupt answer.
    #[serde(default = "default_link_retries")]
    pub link_retries: u32,
    /// The unit's TPM (tpm products), e.g. "device:/dev/tpmrm0" or
    /// "swtpm:host=127.0.0.1,port=2321". Unset: `tpm.tcti`.
    #[serde(default)]
    pub tcti: Option<String>,
    /// The unit element's PKCS#11 module (x509-pkcs11 products). Unset: the product's.
    #[serde(default)]
    pub pkcs11_module: Option<PathBuf>,
    /// The unit element's token label pattern (x509-pkcs11 products). Unset: the product's.
    #[serde(default)]
    pub pkcs11_token: Option<String>,
}

fn default_scanner_baud() -> u32 {
    9600
}
fn default_link_baud() -> u32 {
    115_200
}
fn default_link_timeout_ms() -> u64 {
    2000
}
fn default_link_retries() -> u32 {
    4
}

/// Checks the rules of these sections that a single key's type cannot express.
pub(super) fn check(
    dps: &DpsConfig,
    upload: &UploadConfig,
    fixtures: &BTreeMap<String, FixtureConfig>,
) -> Result<(), ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid { key, message };
    for (name, t) in &dps.targets {
        if crate::ids::FixtureName::new(name.clone()).is_err() {
            return Err(invalid(
                format!("dps.targets.{name}"),
                "a target name is 1 to 64 ASCII letters, digits and - _".into(),
            ));
        }
        if t.delivery == Delivery::Online && t.connection_string_file.is_none() {
            return Err(invalid(
                format!("dps.targets.{name}.connection_string_file"),
                "is required (or set delivery = \"export\" for a station that cannot reach DPS)"
                    .into(),
            ));
        }
        if t.id_scope.trim().is_empty() {
            return Err(invalid(
                format!("dps.targets.{name}.id_scope"),
                "must not be empty".into(),
            ));
        }
    }
    if !(1..=10).contains(&upload.batch) {
        return Err(invalid(
            "upload.batch".into(),
            format!("must be 1 to 10 (DPS bulk limit), not {}", upload.batch),
        ));
    }
    let mut scanners: BTreeMap<&PathBuf, &str> = BTreeMap::new();
    let mut links: BTreeMap<&PathBuf, &str> = BTreeMap::new();
    for (name, f) in fixtures {
        crate::ids::FixtureName::new(name.clone())
            .map_err(|e| invalid(format!("fixtures.{name}"), format!("fixture name: {e}")))?;
        crate::ids::ProductName::new(f.product.clone())
            .map_err(|e| invalid(format!("fixtures.{name}.product"), e.to_string()))?;
        if let Some(s) = &f.scanner
            && let Some(other) = scanners.insert(s, name)
        {
            return Err(invalid(
                format!("fixtures.{name}.scanner"),
                format!("{} is already fixture {other}'s scanner", s.display()),
            ));
        }
        if let Some(p) = &f.serial_port
            && let Some(other) = links.insert(p, name)
        {
            return Err(invalid(
                format!("fixtures.{name}.serial_port"),
                format!("{} is already fixture {other}'s device link", p.display()),
            ));
        }
    }
    Ok(())
}
