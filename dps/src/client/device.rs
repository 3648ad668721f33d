//! The device side of DPS: a unit registering over HTTPS, as the Azure device SDKs do
//! (`shared/notes/dps-wire.md` section 5): `PUT {idScope}/registrations/{id}/register`, then
//! `GET .../operations/{operationId}` after each `Retry-After` until the status is no longer
//! `assigning`. A unit proves itself with a SAS token signed with its symmetric key, or with
//! its client certificate in the TLS handshake.
//!
//! Used by `dps register` (a unit's registration tried from the command line, to see what the
//! unit will see) and by tests; the answer is the final operation status, whatever it is
//! (`assigned`, `failed`, `disabled`), so the caller decides what a refusal means.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::Method;
use secrecy::{ExposeSecret as _, SecretBox};

use super::error::{ClientError, read_ca_file};
use crate::ids::RegistrationId;
use crate::sas::{SharedAccessKey, generate_token};
use crate::wire::{DeviceRegistration, RegistrationOperationStatus, RegistrationStatus};

/// The device API version sent (the Node and C# device SDKs send it).
pub const DEVICE_API_VERSION: &str = "2019-03-31";

/// How a unit proves its identity.
pub enum DeviceCredential {
    /// A SAS token signed with the unit's key (its own, or derived from its group's key).
    SymmetricKey(SharedAccessKey),
    /// Its certificate chain (leaf first) and private key, PEM, as a unit keeps them in files.
    X509Pem(SecretBox<Vec<u8>>),
}

impl std::fmt::Debug for DeviceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SymmetricKey(_) => "SymmetricKey(<redacted>)",
            Self::X509Pem(_) => "X509Pem(<redacted>)",
        })
    }
}

/// Options of the device client.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// A PEM CA file to trust besides the system's (the local service's `ca.pem`).
    pub extra_ca_file: Option<PathBuf>,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// How long a registration may take in all, polls and throttling included.
    pub max_wait: Duration,
    /// Wait between polls when the service gives no `Retry-After`.
    pub default_poll: Duration,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            extra_ca_file: None,
            request_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(120),
            default_poll: Duration::from_secs(2),
        }
    }
}

/// A unit's registration client.
#[derive(Debug)]
pub struct DeviceClient {
    http: reqwest::Client,
    endpoint: String,
    id_scope: String,
    key: Option<SharedAccessKey>,
    opts: DeviceOptions,
}

/// Retry-After of an answer, capped so a bad header cannot stall a unit for hours.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(60)))
}

impl DeviceClient {
    /// A client for the DPS device endpoint `endpoint` (`host[:port]`, e.g.
    /// `global.azure-devices-provisioning.net`) and ID scope.
    pub fn new(
        endpoint: &str,
        id_scope: &str,
        credential: DeviceCredential,
        opts: DeviceOptions,
    ) -> Result<Self, ClientError> {
        let mut b = reqwest::Client::builder()
            .timeout(opts.request_timeout)
            .user_agent(concat!("station-dps-device/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &opts.extra_ca_file {
            b = b.tls_certs_merge(read_ca_file(path)?);
        }
        let key = match credential {
            DeviceCredential::SymmetricKey(k) => Some(k),
            DeviceCredential::X509Pem(pem) => {
                let id = reqwest::Identity::from_pem(pem.expose_secret())
                    .map_err(ClientError::Identity)?;
                b = b.identity(id);
                None
            }
        };
        Ok(Self {
            http: b.build().map_err(ClientError::Build)?,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            id_scope: id_scope.to_owned(),
            key,
            opts,
        })
    }

    fn url(&self, registration_id: &str, tail: &str) -> String {
        format!(
            "https://{}/{}/registrations/{}/{tail}?api-version={DEVICE_API_VERSION}",
            self.endpoint,
            self.id_scope,
            urlencoding::encode(registration_id)
        )
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        registration_id: &str,
        body: Vec<u8>,
    ) -> Result<(RegistrationOperationStatus, Option<Duration>), ClientError> {
        let mut req = self
            .http
            .request(method, url)
            .header("Accept", "application/json")
            .header("Content-Type", "application/json; charset=utf-8")
            .body(body);
        if let Some(key) = &self.key {
            let expiry = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0) + 3600;
            let resource = format!("{}/registrations/{registration_id}", self.id_scope);
            let token = generate_token(&resource, key, Some("registration"), expiry);
            req = req.header("Authorization", token.expose_secret());
        }
        let send_err = |source| ClientError::Send {
            host: self.endpoint.clone(),
            source,
        };
        let resp = req.send().await.map_err(send_err)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(send_err)?;
        if !status.is_success() {
            return Err(ClientError::from_answer(status.as_u16(), &headers, &body));
        }
        let answer = serde_json::from_slice(&body).map_err(ClientError::Decode)?;
        Ok((answer, retry_after(&headers)))
    }

    /// Registers the unit and follows the operation to its end: the final status and record.
    /// A throttled (429) or unavailable (5xx) answer is retried after its `Retry-After` (or
    /// the poll interval) until `max_wait` has passed.
    pub async fn register(
        &self,
        registration_id: &RegistrationId,
        payload: Option<serde_json::Value>,
    ) -> Result<RegistrationOperationStatus, ClientError> {
        let id = registration_id.as_str();
        let deadline = Instant::now() + self.opts.max_wait;
        let body = serde_json::to_vec(&DeviceRegistration {
            registration_id: Some(id.to_owned()),
            tpm: None,
            payload,
        })
        .map_err(ClientError::Encode)?;
        let mut attempts = 0u32;
        let mut request = (Method::PUT, self.url(id, "register"), body);
        loop {
            attempts += 1;
            let (method, url, body) = request.clone();
            let (answer, wait) = match self.send(method, &url, id, body).await {
                Ok(a) => a,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    let wait = e.retry_after().unwrap_or(self.opts.default_poll);
                    tracing::debug!(registration_id = id, error = %e, ?wait, "registration retried");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) if e.is_retryable() => {
                    return Err(ClientError::Exhausted {
                        attempts,
                        last: Box::new(e),
                    });
                }
                Err(e) => return Err(e),
            };
            if answer.status != RegistrationStatus::Assigning {
                return Ok(answer);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::StillAssigning {
                    operation_id: answer.operation_id,
                    waited: self.opts.max_wait,
                });
            }
            tokio::time::sleep(wait.unwrap_or(self.opts.default_poll)).await;
            let poll = self.url(id, &format!("operations/{}", answer.operation_id));
            request = (Method::GET, poll, b"{}".to_vec());
        }
    }
}
