//! `dps register`: a unit's registration, made from the command line exactly as the unit makes
//! it (device API over HTTPS), to see what the unit will see: which hub and device ID it gets,
//! or why it is refused. For the engineer asking why unit 4711 did not register.

use std::path::PathBuf;

use clap::Args;
use secrecy::SecretBox;

use super::CliError;
use crate::client::device::{DeviceClient, DeviceCredential, DeviceOptions};
use crate::sas::{ConnectionString, SharedAccessKey, derive_device_key};

/// Azure's global device endpoint.
pub const GLOBAL_ENDPOINT: &str = "global.azure-devices-provisioning.net";

/// Options of `dps register`.
#[derive(Args)]
pub struct RegisterArgs {
    /// The unit's registration ID (for X.509: its certificate's CN).
    #[arg(long)]
    pub registration_id: crate::RegistrationId,
    /// The DPS instance's ID scope (with --data: read from the data directory).
    #[arg(long)]
    pub id_scope: Option<String>,
    /// The device endpoint, HOST[:PORT] (default: Azure's global endpoint; with --data: the
    /// local service's address).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// A local service's data directory: its endpoint, ID scope and ca.pem.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust.
    #[arg(long, env = "DPS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Environment variable holding the unit's own symmetric key (base64).
    #[arg(long, value_name = "VAR", conflicts_with_all = ["group_key_env", "cert"])]
    pub key_env: Option<String>,
    /// Environment variable holding its enrollment group's key (base64): the unit's key is
    /// derived from it.
    #[arg(long, value_name = "VAR", conflicts_with = "cert")]
    pub group_key_env: Option<String>,
    /// The unit's certificate (PEM; intermediates after the leaf).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The unit's private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// A JSON payload for allocation.
    #[arg(long)]
    pub payload: Option<String>,
    /// Seconds to wait for the assignment in all.
    #[arg(long, default_value_t = 120)]
    pub max_wait: u64,
    /// Print the final operation status as JSON.
    #[arg(long)]
    pub json: bool,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::File {
        path: path.clone(),
        source,
    })
}

fn env_key(var: &str) -> Result<SharedAccessKey, CliError> {
    let text = std::env::var(var)
        .map_err(|_| CliError::Usage(format!("environment variable {var} is not set")))?;
    Ok(SharedAccessKey::from_base64(text.trim())?)
}

impl RegisterArgs {
    fn credential(&self) -> Result<DeviceCredential, CliError> {
        let id = self.registration_id.as_str();
        match (&self.key_env, &self.group_key_env, &self.cert, &self.key) {
            (Some(var), _, _, _) => Ok(DeviceCredential::SymmetricKey(env_key(var)?)),
            (_, Some(var), _, _) => Ok(DeviceCredential::SymmetricKey(derive_device_key(
                &env_key(var)?,
                id,
            ))),
            (_, _, Some(cert), Some(key)) => {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                Ok(DeviceCredential::X509Pem(SecretBox::new(Box::new(pem))))
            }
            _ => Err(CliError::Usage(
                "give the unit's credential: --key-env VAR, --group-key-env VAR, or --cert F --key F"
                    .into(),
            )),
        }
    }

    /// Endpoint, ID scope and CA file, from the options or the data directory.
    fn place(&self) -> Result<(String, String, Option<PathBuf>), CliError> {
        let from_data = match &self.data {
            Some(d) => {
                let text = String::from_utf8_lossy(&read(&d.join("connection-string"))?)
                    .trim()
                    .to_owned();
                let cs: ConnectionString = text.parse()?;
                let scope = String::from_utf8_lossy(&read(&d.join("id-scope"))?)
                    .trim()
                    .to_owned();
                Some((cs.host_name().to_owned(), scope, d.join("ca.pem")))
            }
            None => None,
        };
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| from_data.as_ref().map(|d| d.0.clone()))
            .unwrap_or_else(|| GLOBAL_ENDPOINT.to_owned());
        let scope = self
            .id_scope
            .clone()
            .or_else(|| from_data.as_ref().map(|d| d.1.clone()))
            .ok_or_else(|| CliError::Usage("give --id-scope (or --data DIR)".into()))?;
        let ca = self.ca_file.clone().or(from_data.map(|d| d.2));
        Ok((endpoint, scope, ca))
    }
}

/// Runs `dps register`.
pub async fn register(a: RegisterArgs) -> Result<(), CliError> {
    let (endpoint, scope, ca) = a.place()?;
    let payload = a
        .payload
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--payload is not JSON: {e}")))?;
    let client = DeviceClient::new(
        &endpoint,
        &scope,
        a.credential()?,
        DeviceOptions {
            extra_ca_file: ca,
            max_wait: std::time::Duration::from_secs(a.max_wait),
            ..DeviceOptions::default()
        },
    )?;
    let done = client.register(&a.registration_id, payload).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    }
    match done.outcome(a.registration_id.as_str()) {
        Ok(line) => {
            if !a.json {
                println!("{line}");
            }
            Ok(())
        }
        Err(why) => Err(CliError::Refused(why)),
    }
}
