//! `[web]`: the operator web UI that `station serve` runs beside the fixtures.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// `[web]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address the web UI listens on (`127.0.0.1:8480`; port 0 picks a free port, written to
    /// `H/run/web.url`). Unset: no web UI.
    #[serde(default)]
    pub listen: Option<String>,
    /// A signed-in browser is signed out after this many minutes without a request.
    #[serde(default = "default_idle_minutes")]
    pub idle_minutes: u32,
    /// How often the line page refreshes the fixtures' status, in milliseconds.
    #[serde(default = "default_refresh_ms")]
    pub refresh_ms: u32,
    /// PEM certificate chain (server certificate first) to serve HTTPS with, relative to the
    /// home. Unset: plain HTTP.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (keep it mode 0600).
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: None,
            idle_minutes: default_idle_minutes(),
            refresh_ms: default_refresh_ms(),
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

fn default_idle_minutes() -> u32 {
    480
}
fn default_refresh_ms() -> u32 {
    1000
}

impl WebConfig {
    /// The address to listen on, if the web UI is on.
    pub fn address(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(listen) = self.listen.as_deref().filter(|l| !l.is_empty()) else {
            return Ok(None);
        };
        listen.parse().map(Some).map_err(|_| ConfigError::Invalid {
            key: "web.listen".into(),
            message: format!("{listen:?} is not an address and port such as 127.0.0.1:8480"),
        })
    }

    /// Whether the UI is served over HTTPS.
    #[must_use]
    pub fn tls(&self) -> bool {
        self.tls_cert_file.is_some()
    }

    /// Cross-field checks.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.address()?;
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(ConfigError::Invalid {
                key: "web.tls_cert_file".into(),
                message: "HTTPS needs both tls_cert_file and tls_key_file".into(),
            });
        }
        if self.idle_minutes == 0 {
            return Err(ConfigError::Invalid {
                key: "web.idle_minutes".into(),
                message: "must be at least 1".into(),
            });
        }
        if !(200..=60_000).contains(&self.refresh_ms) {
            return Err(ConfigError::Invalid {
                key: "web.refresh_ms".into(),
                message: "must be between 200 and 60000".into(),
            });
        }
        Ok(())
    }
}
