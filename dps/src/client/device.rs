//! The device side of DPS: a unit registering over HTTPS, as the Azure device SDKs do
//! (`shared/notes/dps-wire.md` section 5): `PUT {idScope}/registrations/{id}/register`, then
//! `GET .../operations/{operationId}` after each `Retry-After` until the status is no longer
//! `assigning`. A unit proves itself with a SAS token signed with its symmetric key, with its
//! client certificate in the TLS handshake, or (TPM units, [`DeviceClient::register_tpm`]) by
//! importing the service's challenge key into its TPM and signing its token there.
//!
//! Used by `dps register` (a unit's registration tried from the command line, to see what the
//! unit will see) and by tests; the answer is the final operation status, whatever it is
//! (`assigned`, `failed`, `disabled`), so the caller decides what a refusal means.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use secrecy::{ExposeSecret as _, SecretBox};

use super::error::{ClientError, read_ca_file};
use crate::ids::RegistrationId;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::sas::{SharedAccessKey, generate_token, token_with_signature};
use crate::wire::{
    DeviceRegistration, RegistrationOperationStatus, RegistrationStatus, TpmChallenge,
};

/// The device API version sent (the Node and C# device SDKs send it).
pub const DEVICE_API_VERSION: &str = "2019-03-31";

/// How a unit proves its identity.
pub enum DeviceCredential {
    /// A SAS token signed with the unit's key (its own, or derived from its group's key).
    SymmetricKey(SharedAccessKey),
    /// Its certificate chain (leaf first) and private key, PEM, as a unit keeps them in files.
    X509Pem(SecretBox<Vec<u8>>),
    /// Its TPM, given to each [`DeviceClient::register_tpm`] call.
    Tpm,
    /// Its certificate chain and a key that signs without leaving where it lives (a unit's
    /// PKCS#11 secure element, used by the station at the end of the line).
    X509Key(ClientKey),
}

/// A client certificate chain (leaf first) and the key that signs for it in the handshake.
#[derive(Clone)]
pub struct ClientKey {
    /// The chain, DER, leaf first.
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The leaf's private key, as a signer.
    pub key: Arc<dyn rustls::sign::SigningKey>,
}

/// Offers the one client certificate to any server that asks.
#[derive(Debug)]
struct OneClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for OneClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The TLS configuration of a client whose key is a [`ClientKey`]: the server checked as
/// reqwest checks it (the platform's roots and `extra_ca`), ALPN as reqwest offers it.
fn tls_with_key(
    extra_ca: Option<&std::path::Path>,
    key: ClientKey,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let extra = match extra_ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| ClientError::ReadCa {
                path: path.to_owned(),
                source,
            })?;
            <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?
        }
        None => Vec::new(),
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, Arc::clone(&provider))
            .map_err(|e| ClientError::Tls(e.to_string()))?;
    let certified = rustls::sign::CertifiedKey::new(key.chain, key.key);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(OneClientCert(Arc::new(certified))));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A unit's TPM, as DPS TPM attestation uses it (`crate::tpm`; the station implements it with
/// tss-esapi). Not `Send`: a TPM context stays on its thread.
pub trait TpmUnit {
    /// TPM2B_PUBLIC of its endorsement key (persisted at 0x81010001).
    fn endorsement_key(&self) -> &[u8];
    /// TPM2B_PUBLIC of its storage root key (0x81000001).
    fn storage_root_key(&self) -> &[u8];
    /// Imports the HMAC key of an `authenticationKey` blob: ActivateCredential with the EK
    /// for the SRK, Import under the SRK, Load.
    fn import_key(&mut self, blob: &[u8]) -> Result<(), String>;
    /// HMAC-SHA256 of `data` with the imported key, in the TPM.
    fn sign(&mut self, data: &[u8]) -> Result<Vec<u8>, String>;
}

impl std::fmt::Debug for DeviceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SymmetricKey(_) => "SymmetricKey(<redacted>)",
            Self::X509Pem(_) => "X509Pem(<redacted>)",
            Self::Tpm => "Tpm",
            Self::X509Key(_) => "X509Key(<in its token>)",
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
            DeviceCredential::Tpm => None,
            DeviceCredential::X509Pem(pem) => {
                let id = reqwest::Identity::from_pem(pem.expose_secret())
                    .map_err(ClientError::Identity)?;
                b = b.identity(id);
                None
            }
            DeviceCredential::X509Key(key) => {
                b = b.tls_backend_preconfigured(tls_with_key(opts.extra_ca_file.as_deref(), key)?);
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

    /// A SAS token for the unit signed with its key, valid for an hour (the SDKs sign once
    /// per registration).
    fn key_token(&self, registration_id: &str) -> Option<String> {
        let key = self.key.as_ref()?;
        let expiry = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0) + 3600;
        let resource = format!("{}/registrations/{registration_id}", self.id_scope);
        let token = generate_token(&resource, key, Some("registration"), expiry);
        Some(token.expose_secret().to_owned())
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>), ClientError> {
        let mut req = self
            .http
            .request(method, url)
            .header("Accept", "application/json")
            .header("Content-Type", "application/json; charset=utf-8")
            .body(body);
        if let Some(t) = token {
            req = req.header("Authorization", t);
        }
        let send_err = |source| ClientError::Send {
            host: self.endpoint.clone(),
            source,
        };
        let resp = req.send().await.map_err(send_err)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(send_err)?.to_vec();
        Ok((status, headers, body))
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(RegistrationOperationStatus, Option<Duration>), ClientError> {
        let (status, headers, body) = self.send(method, url, token, body).await?;
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
        let body = serde_json::to_vec(&DeviceRegistration {
            registration_id: Some(id.to_owned()),
            tpm: None,
            payload,
        })
        .map_err(ClientError::Encode)?;
        let token = self.key_token(id);
        self.follow(id, body, token.as_deref()).await
    }

    /// Registers a TPM unit: the first call is answered with the challenge (HTTP 401 and an
    /// `authenticationKey`), whose key the TPM imports and signs the unit's token with; then
    /// as [`Self::register`]. The hub key of the answer is imported too, as the SDKs do.
    pub async fn register_tpm(
        &self,
        registration_id: &RegistrationId,
        tpm: &mut dyn TpmUnit,
        payload: Option<serde_json::Value>,
    ) -> Result<RegistrationOperationStatus, ClientError> {
        let id = registration_id.as_str();
        let body = serde_json::to_vec(&DeviceRegistration {
            registration_id: Some(id.to_owned()),
            tpm: Some(serde_json::json!({
                "endorsementKey": B64.encode(tpm.endorsement_key()),
                "storageRootKey": B64.encode(tpm.storage_root_key()),
            })),
            payload,
        })
        .map_err(ClientError::Encode)?;
        // The challenge call, retried as the others on a throttled or unavailable service.
        let deadline = Instant::now() + self.opts.max_wait;
        let mut attempts = 0u32;
        let (headers, answer) = loop {
            attempts += 1;
            let sent = self
                .send(Method::PUT, &self.url(id, "register"), None, body.clone())
                .await;
            let err = match sent {
                Ok((status, headers, answer)) if status.as_u16() == 401 => {
                    break (headers, answer);
                }
                Ok((status, _, _)) if status.is_success() => {
                    return Err(ClientError::NoTpmChallenge);
                }
                Ok((status, headers, answer)) => {
                    ClientError::from_answer(status.as_u16(), &headers, &answer)
                }
                Err(e) => e,
            };
            self.wait_to_retry(id, err, deadline, attempts).await?;
        };
        let challenge: TpmChallenge = serde_json::from_slice(&answer)
            .map_err(|_| ClientError::from_answer(401, &headers, &answer))?;
        let blob = B64
            .decode(challenge.authentication_key.trim())
            .map_err(|e| ClientError::Tpm(format!("the challenge is not base64: {e}")))?;
        tpm.import_key(&blob).map_err(ClientError::Tpm)?;
        let expiry = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0) + 3600;
        let resource = format!("{}/registrations/{id}", self.id_scope);
        let signature = tpm
            .sign(format!("{resource}\n{expiry}").as_bytes())
            .map_err(ClientError::Tpm)?;
        let token = token_with_signature(&resource, &signature, Some(&challenge.key_name), expiry);
        let done = self.follow(id, body, Some(token.expose_secret())).await?;
        if let Some(hub) = done
            .registration_state
            .as_ref()
            .and_then(|s| s.tpm.as_ref())
        {
            let blob = B64
                .decode(hub.authentication_key.trim())
                .map_err(|e| ClientError::Tpm(format!("the hub key is not base64: {e}")))?;
            tpm.import_key(&blob).map_err(ClientError::Tpm)?;
        }
        Ok(done)
    }

    /// After a failed call: waits out its `Retry-After` (or the poll interval) when the same
    /// call may succeed later and time is left; otherwise the error to give up with.
    async fn wait_to_retry(
        &self,
        id: &str,
        e: ClientError,
        deadline: Instant,
        attempts: u32,
    ) -> Result<(), ClientError> {
        if !e.is_retryable() {
            return Err(e);
        }
        if Instant::now() >= deadline {
            return Err(ClientError::Exhausted {
                attempts,
                last: Box::new(e),
            });
        }
        let wait = e.retry_after().unwrap_or(self.opts.default_poll);
        tracing::debug!(registration_id = id, error = %e, ?wait, "registration call retried");
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Sends the register call and polls its operation to the end.
    async fn follow(
        &self,
        id: &str,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> Result<RegistrationOperationStatus, ClientError> {
        let deadline = Instant::now() + self.opts.max_wait;
        let mut attempts = 0u32;
        let mut request = (Method::PUT, self.url(id, "register"), body);
        loop {
            attempts += 1;
            let (method, url, body) = request.clone();
            let (answer, wait) = match self.call(method, &url, token, body).await {
                Ok(a) => a,
                Err(e) => {
                    self.wait_to_retry(id, e, deadline, attempts).await?;
                    continue;
                }
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
