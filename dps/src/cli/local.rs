//! Commands of the local service: `serve`, `linked-hub`, `policy`, `stats`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use secrecy::ExposeSecret;

use super::{CliError, ServeArgs};
use crate::sas::{ConnectionString, SharedAccessKey};
use crate::server::auth::{format_rights, parse_rights};
use crate::server::setup::{self, OWNER_POLICY};
use crate::server::store::LinkedHub;
use crate::server::{ServeOptions, files, open_store};

/// `dps linked-hub ...`
#[derive(Subcommand)]
pub enum LinkedHubCommand {
    /// List linked hubs.
    List {
        /// Data directory of the service.
        #[arg(long)]
        data: PathBuf,
    },
    /// Link a hub (or update its weight).
    Add {
        /// Data directory of the service.
        #[arg(long)]
        data: PathBuf,
        /// Hub host name.
        host_name: String,
        /// Allocation weight, 1 to 1000.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Leave the hub out of allocation.
        #[arg(long)]
        no_apply_allocation_policy: bool,
    },
    /// Unlink a hub.
    Remove {
        /// Data directory of the service.
        #[arg(long)]
        data: PathBuf,
        /// Hub host name.
        host_name: String,
    },
}

/// `dps policy ...`
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// List policies and their rights.
    List {
        /// Data directory of the service.
        #[arg(long)]
        data: PathBuf,
    },
    /// Create a policy; its connection string goes to `DIR/policies/NAME.connection-string`.
    Create {
        /// Data directory of the service.
        #[arg(long)]
        data: PathBuf,
        /// Policy name.
        name: String,
        /// Comma-separated rights (ServiceConfig, EnrollmentRead, EnrollmentWrite,
        /// RegistrationStatusRead, RegistrationStatusWrite).
        #[arg(long)]
        rights: String,
    },
    /// Replace a policy key; for the owner policy, rewrites `DIR/connection-string`.
    RegenerateKey {
        /// Data directory of the service.
        #[arg(long)]
        data: PathBuf,
        /// Policy name.
        name: String,
        /// Which key: primary or secondary.
        #[arg(long, default_value = "primary")]
        key: String,
    },
}

fn parse_hub(s: &str) -> Result<LinkedHub, CliError> {
    let (host, weight) = match s.split_once('=') {
        Some((h, w)) => (
            h,
            w.parse::<u32>()
                .map_err(|_| CliError::Usage(format!("--link-hub {s}: weight is not a number")))?,
        ),
        None => (s, 1),
    };
    hub(host, weight, true)
}

fn hub(host: &str, weight: u32, apply: bool) -> Result<LinkedHub, CliError> {
    if host.trim().is_empty() || host.contains(char::is_whitespace) {
        return Err(CliError::Usage(format!("{host:?} is not a hub host name")));
    }
    if !(1..=1000).contains(&weight) {
        return Err(CliError::Usage(format!(
            "hub weight {weight} is outside 1-1000"
        )));
    }
    Ok(LinkedHub {
        host_name: host.trim().to_owned(),
        allocation_weight: weight,
        apply_allocation_policy: apply,
    })
}

/// `dps serve`.
pub async fn serve(a: ServeArgs) -> Result<(), CliError> {
    if !(0.0..=1.0).contains(&a.fail_rate) {
        return Err(CliError::Usage(
            "--fail-rate must be between 0 and 1".into(),
        ));
    }
    let link_hubs = a
        .link_hub
        .iter()
        .map(|s| parse_hub(s))
        .collect::<Result<Vec<_>, _>>()?;
    let faults = crate::server::gate::Faults::default();
    faults.throttle_next(a.throttle_next, a.throttle_retry_after);
    faults.fail_next(a.fail_next);
    faults.stale_if_match_next(a.stale_if_match_next);
    crate::server::serve(ServeOptions {
        data: a.data,
        listen: a.listen,
        mqtt_listen: a.mqtt_listen,
        link_hubs,
        ops_per_min: a.ops_per_min,
        fail_rate: a.fail_rate,
        latency: Duration::from_millis(a.latency_ms),
        faults: std::sync::Arc::new(faults),
    })
    .await?;
    Ok(())
}

/// `dps linked-hub`.
pub fn linked_hub(c: LinkedHubCommand) -> Result<(), CliError> {
    match c {
        LinkedHubCommand::List { data } => {
            let hubs = open_store(&data)?.read(|tx| tx.linked_hubs())?;
            for h in hubs {
                println!(
                    "{}\tweight={}\tapply_allocation_policy={}",
                    h.host_name, h.allocation_weight, h.apply_allocation_policy
                );
            }
        }
        LinkedHubCommand::Add {
            data,
            host_name,
            weight,
            no_apply_allocation_policy,
        } => {
            let h = hub(&host_name, weight, !no_apply_allocation_policy)?;
            open_store(&data)?.write(|tx| tx.upsert_linked_hub(&h))?;
            println!("linked {}", h.host_name);
        }
        LinkedHubCommand::Remove { data, host_name } => {
            let gone = open_store(&data)?.write(|tx| tx.remove_linked_hub(&host_name))?;
            if !gone {
                return Err(CliError::Usage(format!("hub {host_name} is not linked")));
            }
            println!("unlinked {host_name}");
        }
    }
    Ok(())
}

fn new_key() -> String {
    SharedAccessKey::generate()
        .to_base64()
        .expose_secret()
        .to_owned()
}

fn host_name(data: &Path) -> Result<String, CliError> {
    Ok(open_store(data)?
        .read(|tx| tx.meta("host_name"))?
        .unwrap_or_else(|| "localhost:8443".into()))
}

/// `dps policy`.
pub fn policy(c: PolicyCommand) -> Result<(), CliError> {
    match c {
        PolicyCommand::List { data } => {
            for p in open_store(&data)?.read(|tx| tx.policies())? {
                println!("{}\t{}", p.name, p.rights);
            }
        }
        PolicyCommand::Create { data, name, rights } => {
            let r = parse_rights(&rights).map_err(|e| CliError::Usage(e.to_string()))?;
            if r.is_empty() {
                return Err(CliError::Usage("--rights names no right".into()));
            }
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(CliError::Usage(format!(
                    "policy name {name:?} must be letters, digits, - or _"
                )));
            }
            let store = open_store(&data)?;
            let primary = new_key();
            let exists = store.write(|tx| {
                if tx.policy(&name)?.is_some() {
                    return Ok(true);
                }
                tx.put_policy(
                    &name,
                    &format_rights(&r),
                    primary.as_bytes(),
                    new_key().as_bytes(),
                )?;
                Ok::<_, crate::server::store::StoreError>(false)
            })?;
            if exists {
                return Err(CliError::Usage(format!("policy {name} already exists")));
            }
            let path = write_policy_cs(&data, &name, &primary)?;
            println!(
                "created policy {name}; connection string in {}",
                path.display()
            );
        }
        PolicyCommand::RegenerateKey { data, name, key } => {
            let secondary = match key.as_str() {
                "primary" => false,
                "secondary" => true,
                other => {
                    return Err(CliError::Usage(format!(
                        "--key {other}: use primary or secondary"
                    )));
                }
            };
            let store = open_store(&data)?;
            let fresh = new_key();
            store
                .write(|tx| {
                    let Some((row, a, b)) = tx.policy(&name)? else {
                        return Ok(false);
                    };
                    let (a, b) = if secondary {
                        (a.to_vec(), fresh.as_bytes().to_vec())
                    } else {
                        (fresh.as_bytes().to_vec(), b.to_vec())
                    };
                    tx.put_policy(&row.name, &row.rights, &a, &b)?;
                    Ok::<_, crate::server::store::StoreError>(true)
                })?
                .then_some(())
                .ok_or_else(|| CliError::Usage(format!("no policy {name}")))?;
            drop(store);
            if name.eq_ignore_ascii_case(OWNER_POLICY) && !secondary {
                let dir = setup::ensure_dir(&data)?;
                let store = open_store(&data)?;
                setup::write_connection_string(&dir, &store, &host_name(&data)?)?;
                println!(
                    "regenerated the {key} key of {name}; rewrote {}",
                    dir.connection_string().display()
                );
            } else {
                if !secondary {
                    write_policy_cs(&data, &name, &fresh)?;
                }
                println!("regenerated the {key} key of {name}");
            }
        }
    }
    Ok(())
}

fn write_policy_cs(data: &Path, name: &str, key_b64: &str) -> Result<PathBuf, CliError> {
    let dir = data.join("policies");
    std::fs::create_dir_all(&dir).map_err(|source| CliError::File {
        path: dir.clone(),
        source,
    })?;
    let cs = ConnectionString::new(
        host_name(data)?,
        name,
        SharedAccessKey::from_base64(key_b64)?,
    );
    let path = dir.join(format!("{name}.connection-string"));
    let text = format!("{}\n", cs.to_secret_string().expose_secret());
    files::write_private(&path, text.as_bytes()).map_err(|source| CliError::File {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// `dps stats`.
pub fn stats(data: &Path) -> Result<(), CliError> {
    if !data.join("dps.sqlite").exists() {
        return Err(CliError::Usage(format!(
            "{} holds no service database",
            data.display()
        )));
    }
    let store = open_store(data)?;
    let days = store.read(|tx| tx.operations())?;
    let (e, g, r) = store.read(|tx| {
        Ok::<_, CliError>((
            tx.count(crate::server::store::Table::Enrollments)?,
            tx.count(crate::server::store::Table::Groups)?,
            tx.count(crate::server::store::Table::Registrations)?,
        ))
    })?;
    println!("enrollments={e} groups={g} registrations={r}");
    for (day, n) in days {
        println!("{day} operations={n}");
    }
    Ok(())
}
