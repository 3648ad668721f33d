//! `station group sync|show|import-key`: the enrollment groups of group-enrolled products, in
//! their DPS targets, and their keys in the HSM. A product whose target has
//! `delivery = "export"` (air-gapped) is not synced: its group is made where DPS is reachable,
//! and a symmetric group's key is brought in with `import-key`.

use std::process::ExitCode;

use clap::Subcommand;

use super::{ActorArg, CliError, Context};
use crate::ca::service;
use crate::config::Config;
use crate::enroll::group::{self, GroupError};
use crate::enroll::profile::{self, Attestation, Enrollment, Product, ProfileError};
use crate::ids::ProductName;
use crate::keys::{self, KeyError};
use crate::store::audit::{self, AuditEvent};

/// Enrollment groups.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create or update the group of every group-enrolled product (or one) in its DPS target,
    /// and import symmetric group keys into the HSM.
    Sync {
        /// Only this product.
        #[arg(long)]
        product: Option<ProductName>,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Show a product's group as DPS holds it, how it differs from the profile, and whether
    /// the HSM holds its key. Changes nothing.
    Show {
        /// The product.
        #[arg(long)]
        product: ProductName,
    },
    /// Import a symmetric group's primary key (base64, as DPS shows it) into the HSM as a
    /// non-extractable key, for a station that cannot reach DPS (its target has
    /// `delivery = "export"`). The same key again is a no-op; another key is refused.
    ImportKey {
        /// The product (a symmetric-key group).
        #[arg(long)]
        product: ProductName,
        /// Read the key from this environment variable.
        #[arg(long, value_name = "VAR", required_unless_present = "key_stdin")]
        key_env: Option<String>,
        /// Read the key from the first line of standard input.
        #[arg(long, conflicts_with = "key_env")]
        key_stdin: bool,
        #[command(flatten)]
        actor: ActorArg,
    },
}

/// Why a group command failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupCliError {
    /// The product profiles could not be read.
    #[error("cannot load the product profiles")]
    Profiles(#[source] ProfileError),
    /// No profile with that name.
    #[error("no product {name} in {dir} (products present: {present})")]
    UnknownProduct {
        /// Asked for.
        name: String,
        /// The products directory.
        dir: String,
        /// Names found.
        present: String,
    },
    /// No product uses a group.
    #[error("no product in {dir} uses a group enrollment; nothing to sync")]
    NoGroupProducts {
        /// The products directory.
        dir: String,
    },
    /// The DPS target cannot be used.
    #[error(transparent)]
    Target(#[from] crate::dps_target::TargetError),
    /// The group could not be built or synchronised.
    #[error("product {product}")]
    Group {
        /// The product.
        product: String,
        /// What failed.
        #[source]
        source: Box<GroupError>,
    },
    /// The group key could not be imported or checked.
    #[error("product {product}: the group key could not be imported into the HSM")]
    Key {
        /// The product.
        product: String,
        /// What failed.
        #[source]
        source: KeyError,
    },
    /// `import-key` for a product that is not a symmetric-key group.
    #[error("product {0} is not enrolled in a symmetric-key group: it has no group key")]
    NotSymmetricGroup(String),
    /// The async runtime for the DPS client could not start.
    #[error("cannot start the runtime for the DPS client")]
    Runtime(#[source] std::io::Error),
}

// Boxed inside CliError: the group errors are large and CliError travels through every command.
impl From<GroupCliError> for CliError {
    fn from(e: GroupCliError) -> Self {
        CliError::Group(Box::new(e))
    }
}

fn products(ctx: &Context, cfg: &Config) -> Result<(String, Vec<Product>), GroupCliError> {
    let dir = ctx.home.resolve(&cfg.line.products_dir);
    let all = profile::load_dir(&dir).map_err(GroupCliError::Profiles)?;
    Ok((dir.display().to_string(), all))
}

fn select(
    dir: &str,
    all: Vec<Product>,
    only: Option<&ProductName>,
) -> Result<Vec<Product>, GroupCliError> {
    let Some(name) = only else {
        let groups: Vec<Product> = all
            .into_iter()
            .filter(|p| matches!(p.profile.enrollment, Enrollment::Group { .. }))
            .collect();
        if groups.is_empty() {
            return Err(GroupCliError::NoGroupProducts {
                dir: dir.to_owned(),
            });
        }
        return Ok(groups);
    };
    let present = all
        .iter()
        .map(|p| p.name.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let p =
        all.into_iter()
            .find(|p| &p.name == name)
            .ok_or_else(|| GroupCliError::UnknownProduct {
                name: name.to_string(),
                dir: dir.to_owned(),
                present: if present.is_empty() {
                    "none".into()
                } else {
                    present
                },
            })?;
    group::group_id(&p).map_err(|source| GroupCliError::Group {
        product: p.name.to_string(),
        source: Box::new(source),
    })?;
    Ok(vec![p])
}

/// The issuing CA certificate in PEM when some product needs it (x509 groups).
fn signing_pem(
    ctx: &Context,
    cfg: &Config,
    products: &[Product],
) -> Result<Option<String>, CliError> {
    let x509 = products.iter().any(|p| {
        matches!(
            p.profile.attestation,
            Attestation::X509Link | Attestation::X509Pkcs11 { .. }
        )
    });
    if !x509 {
        return Ok(None);
    }
    let der = service::read_cert(&service::cert_path(&ctx.home, cfg))?;
    Ok(Some(crate::ca::verify::to_pem(&[&der])))
}

fn runtime() -> Result<tokio::runtime::Runtime, GroupCliError> {
    crate::dps_target::runtime().map_err(GroupCliError::Runtime)
}

pub(super) fn run(ctx: &Context, cmd: GroupCommand) -> Result<ExitCode, CliError> {
    match cmd {
        GroupCommand::Sync { product, actor } => sync(ctx, product.as_ref(), &actor),
        GroupCommand::Show { product } => show(ctx, &product),
        GroupCommand::ImportKey {
            product,
            key_env,
            key_stdin,
            actor,
        } => import_key(ctx, &product, key_env.as_deref(), key_stdin, &actor),
    }
}

pub(super) fn sync(
    ctx: &Context,
    only: Option<&ProductName>,
    actor: &ActorArg,
) -> Result<ExitCode, CliError> {
    sync_with(ctx, only, actor, false)
}

/// `sync`; `quick`: one attempt per DPS call with a short timeout (for `station serve`'s start,
/// which must not wait minutes on a DPS that is down).
pub(super) fn sync_with(
    ctx: &Context,
    only: Option<&ProductName>,
    actor: &ActorArg,
    quick: bool,
) -> Result<ExitCode, CliError> {
    let actor = actor.resolve()?;
    let cfg = ctx.config()?.config;
    let station = cfg.station_id();
    let (dir, all) = products(ctx, &cfg)?;
    let chosen = select(&dir, all, only)?;
    let pem = signing_pem(ctx, &cfg, &chosen)?;
    let hsm = service::open_hsm(&ctx.home, &cfg)?;
    let session = service::open_ca_token(&hsm, &ctx.home, &cfg)?;
    let rt = runtime()?;
    let mut store = ctx.open_store(&cfg)?;
    for p in &chosen {
        let name = p.name.to_string();
        let gerr = |source| GroupCliError::Group {
            product: name.clone(),
            source: Box::new(source),
        };
        let desired = group::desired_group(p, &station, pem.as_deref()).map_err(gerr)?;
        let target = &p.profile.dps_target;
        if cfg.dps.export_only(target) {
            println!(
                "group {} (product {name}, target {target}): not synced: the target has delivery = \"export\"",
                desired.enrollment_group_id
            );
            println!(
                "  create it where DPS is reachable ({}){}",
                if matches!(
                    p.profile.attestation,
                    Attestation::X509Link | Attestation::X509Pkcs11 { .. }
                ) {
                    "`dps group create --attestation-type x509 --certificate-path` with the issuing CA of `station ca chain`"
                } else {
                    "`dps group create --attestation-type symmetrickey --show-keys`"
                },
                if p.profile.attestation == Attestation::SymmetricGroup {
                    format!(
                        ", then bring its primary key in: `station group import-key --product {name} --key-env VAR`"
                    )
                } else {
                    String::new()
                }
            );
            continue;
        }
        let client = crate::dps_target::client_with(&ctx.home, &cfg, target, |o| {
            if quick {
                o.retry.max_attempts = 1;
                o.request_timeout = std::time::Duration::from_secs(5);
            }
        })
        .map_err(GroupCliError::Target)?;
        let mut outcome = rt
            .block_on(group::sync_group(&client, &desired))
            .map_err(gerr)?;
        // The key goes from DPS's answer into the HSM and is dropped (and wiped) right here.
        let imported = outcome
            .primary_key
            .take()
            .map(|k| keys::import_group_key(&session, &outcome.group_id, &k));
        let hsm_key = match &imported {
            None => "not used",
            Some(Ok(i)) => i.as_str(),
            Some(Err(KeyError::GroupKeyMismatch { .. })) => {
                "refused: a different key holds the label"
            }
            Some(Err(_)) => "import failed",
        };
        let changed: Vec<&str> = match &outcome.change {
            group::GroupChange::Updated(f) => f.clone(),
            _ => Vec::new(),
        };
        let tx = store
            .conn_mut()
            .transaction()
            .map_err(crate::store::sql("begin group sync"))?;
        audit::append(
            &tx,
            &station,
            &AuditEvent {
                actor: &actor,
                event: "group.sync",
                subject: &outcome.group_id,
                details: serde_json::json!({
                    "product": name,
                    "target": target,
                    "etag": outcome.etag,
                    "attestation": outcome.attestation.as_str(),
                    "change": outcome.change.as_str(),
                    "changed_fields": changed,
                    "hsm_key": hsm_key,
                }),
            },
        )?;
        service::AuditKey::find(&session, &cfg.ca.audit_key_label)
            .map_err(crate::ca::CaError::from)?
            .seal(&tx)?;
        tx.commit()
            .map_err(crate::store::sql("commit group sync"))?;
        println!(
            "group {} (product {name}, target {target}): {}{}",
            outcome.group_id,
            outcome.change.as_str(),
            if changed.is_empty() {
                String::new()
            } else {
                format!(" ({})", changed.join(", "))
            }
        );
        println!("  etag:        {}", outcome.etag.as_deref().unwrap_or("-"));
        println!("  attestation: {}", outcome.attestation.as_str());
        println!("  hsm key:     {hsm_key}");
        if let Some(Err(source)) = imported {
            return Err(GroupCliError::Key {
                product: name,
                source,
            }
            .into());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(ctx: &Context, product: &ProductName) -> Result<ExitCode, CliError> {
    let cfg = ctx.config()?.config;
    let station = cfg.station_id();
    let (dir, all) = products(ctx, &cfg)?;
    let chosen = select(&dir, all, Some(product))?;
    let pem = signing_pem(ctx, &cfg, &chosen)?;
    let name = product.to_string();
    let gerr = |source| GroupCliError::Group {
        product: name.clone(),
        source: Box::new(source),
    };
    let Some(p) = chosen.first() else {
        return Ok(ExitCode::SUCCESS);
    };
    let desired = group::desired_group(p, &station, pem.as_deref()).map_err(gerr)?;
    let target = &p.profile.dps_target;
    let gid = desired.enrollment_group_id.clone();
    // An air-gapped target is not asked: the station cannot reach it.
    let offline = cfg.dps.export_only(target);
    let actual = if offline {
        None
    } else {
        let client =
            crate::dps_target::client(&ctx.home, &cfg, target).map_err(GroupCliError::Target)?;
        match runtime()?.block_on(client.get_group(&gid)) {
            Ok(g) => Some(g),
            Err(e) if e.status() == Some(404) => None,
            Err(source) => {
                return Err(gerr(GroupError::Fetch {
                    group_id: gid.to_string(),
                    source,
                })
                .into());
            }
        }
    };
    println!("group {gid} (product {name}, target {target})");
    match &actual {
        None if offline => println!(
            "  in DPS:      not asked (delivery = \"export\": made where DPS is reachable, see `station group sync`)"
        ),
        None => println!("  in DPS:      absent (run `station group sync`)"),
        Some(g) => {
            let diffs = group::differences(&desired, g);
            println!("  in DPS:      present");
            println!("  etag:        {}", g.etag.as_deref().unwrap_or("-"));
            println!("  attestation: {}", g.attestation.kind.as_str());
            if diffs.is_empty() {
                println!("  profile:     in step");
            } else {
                println!("  profile:     differs in {}", diffs.join(", "));
            }
        }
    }
    if matches!(p.profile.attestation, Attestation::SymmetricGroup) {
        let hsm = service::open_hsm(&ctx.home, &cfg)?;
        let session = service::open_ca_token(&hsm, &ctx.home, &cfg)?;
        let present = keys::group_key_present(&session, gid.as_str()).map_err(|source| {
            GroupCliError::Key {
                product: name.clone(),
                source,
            }
        })?;
        println!(
            "  hsm key:     {} ({:?} in token {})",
            if present { "present" } else { "absent" },
            keys::group_key_label(gid.as_str()),
            session.token()
        );
    } else {
        println!("  hsm key:     not used ({})", p.profile.attestation.kind());
    }
    Ok(ExitCode::SUCCESS)
}

fn import_key(
    ctx: &Context,
    product: &ProductName,
    key_env: Option<&str>,
    key_stdin: bool,
    actor: &ActorArg,
) -> Result<ExitCode, CliError> {
    let actor = actor.resolve()?;
    let cfg = ctx.config()?.config;
    let station = cfg.station_id();
    let (dir, all) = products(ctx, &cfg)?;
    let chosen = select(&dir, all, Some(product))?;
    let Some(p) = chosen.first() else {
        return Ok(ExitCode::SUCCESS);
    };
    let name = p.name.to_string();
    if p.profile.attestation != Attestation::SymmetricGroup {
        return Err(GroupCliError::NotSymmetricGroup(name).into());
    }
    let gid = group::group_id(p)
        .map_err(|source| GroupCliError::Group {
            product: name.clone(),
            source: Box::new(source),
        })?
        .to_owned();
    // Clap requires one of --key-env and --key-stdin.
    let key = super::user::read_one(&mut std::io::stdin().lock(), key_stdin, key_env, "key")?
        .ok_or(super::user::SecretInputError::NotGiven("key"))?;
    let hsm = service::open_hsm(&ctx.home, &cfg)?;
    let session = service::open_ca_token(&hsm, &ctx.home, &cfg)?;
    let imported = keys::import_group_key(&session, &gid, &key);
    drop(key);
    let result = match &imported {
        Ok(i) => i.as_str(),
        Err(KeyError::GroupKeyMismatch { .. }) => "refused: a different key holds the label",
        Err(_) => "import failed",
    };
    let mut store = ctx.open_store(&cfg)?;
    let tx = store
        .conn_mut()
        .transaction()
        .map_err(crate::store::sql("begin group key import"))?;
    audit::append(
        &tx,
        &station,
        &AuditEvent {
            actor: &actor,
            event: "group.import-key",
            subject: &gid,
            details: serde_json::json!({
                "product": name,
                "target": p.profile.dps_target,
                "hsm_key": result,
            }),
        },
    )?;
    service::AuditKey::find(&session, &cfg.ca.audit_key_label)
        .map_err(crate::ca::CaError::from)?
        .seal(&tx)?;
    tx.commit()
        .map_err(crate::store::sql("commit group key import"))?;
    match imported {
        Ok(i) => {
            let what = match i {
                keys::GroupKeyImport::Imported => "imported into the HSM (non-extractable)",
                keys::GroupKeyImport::AlreadyPresent => "already in the HSM (the same key)",
            };
            println!("group {gid} (product {name}): hsm key {what}");
            Ok(ExitCode::SUCCESS)
        }
        Err(source) => Err(GroupCliError::Key {
            product: name,
            source,
        }
        .into()),
    }
}
