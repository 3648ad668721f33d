//! `station user add|passwd|badge|disable|list`
//!
//! Passwords and badge codes never go on the command line (it is visible to every user of the
//! machine in `ps`): they come from standard input or from a named environment variable.

use std::io::BufRead;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use secrecy::SecretString;

use super::{ActorArg, CliError, Context};
use crate::ids::Username;
use crate::operators::{self, BadgeKey, NewOperator, Operators, Role};
use crate::trigger::parse::Badge;

/// User management.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user.
    Add {
        /// Login name.
        username: Username,
        /// Role.
        #[arg(long, value_enum, default_value_t = Role::Operator)]
        role: Role,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        secrets: SecretArgs,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Set a user's password.
    Passwd {
        /// Login name.
        username: Username,
        #[command(flatten)]
        secrets: SecretArgs,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Set a user's badge code (fixture logon by scanning `OP:<badge>`).
    Badge {
        /// Login name.
        username: Username,
        #[command(flatten)]
        secrets: SecretArgs,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Disable a user (records stay; no more logons).
    Disable {
        /// Login name.
        username: Username,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// List users.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Where secrets come from.
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Read the password from this environment variable.
    #[arg(long, value_name = "VAR")]
    password_env: Option<String>,
    /// Read the badge code from standard input (the line after the password, if both).
    #[arg(long)]
    badge_stdin: bool,
    /// Read the badge code from this environment variable.
    #[arg(long, value_name = "VAR")]
    badge_env: Option<String>,
}

/// A secret that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretInputError {
    /// The environment variable is unset.
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// Standard input ended early.
    #[error("standard input ended before the {0} was read")]
    StdinEnded(&'static str),
    /// Nothing was given.
    #[error("give the {0} with --{0}-stdin or --{0}-env VAR")]
    NotGiven(&'static str),
}

impl SecretArgs {
    fn read(
        &self,
        stdin: &mut impl BufRead,
    ) -> Result<(Option<SecretString>, Option<Badge>), SecretInputError> {
        let password = read_one(
            stdin,
            self.password_stdin,
            self.password_env.as_deref(),
            "password",
        )?;
        let badge =
            read_one(stdin, self.badge_stdin, self.badge_env.as_deref(), "badge")?.map(Badge::new);
        Ok((password, badge))
    }
}

/// A secret from the environment variable `env`, else (when `from_stdin`) the next line of
/// standard input; `None` when neither is asked for.
pub(super) fn read_one(
    stdin: &mut impl BufRead,
    from_stdin: bool,
    env: Option<&str>,
    what: &'static str,
) -> Result<Option<SecretString>, SecretInputError> {
    if let Some(var) = env {
        return std::env::var(var)
            .map(|v| Some(SecretString::from(v)))
            .map_err(|_| SecretInputError::EnvMissing(var.to_owned()));
    }
    if from_stdin {
        let mut line = String::new();
        let n = stdin
            .read_line(&mut line)
            .map_err(|_| SecretInputError::StdinEnded(what))?;
        if n == 0 {
            return Err(SecretInputError::StdinEnded(what));
        }
        let value = line.trim_end_matches(['\r', '\n']).to_owned();
        return Ok(Some(SecretString::from(value)));
    }
    Ok(None)
}

pub(super) fn run(ctx: &Context, cmd: UserCommand) -> Result<ExitCode, CliError> {
    let loaded = ctx.config()?;
    let mut store = ctx.open_store(&loaded.config)?;
    let station = loaded.config.station_id();
    let key = BadgeKey::load(&ctx.home.badge_key_file())?;
    let mut stdin = std::io::stdin().lock();
    match cmd {
        UserCommand::Add {
            username,
            role,
            name,
            secrets,
            actor,
        } => {
            let actor = actor.resolve()?;
            let (password, badge) = secrets.read(&mut stdin)?;
            Operators::new(&mut store, station, &key).add(
                &actor,
                &NewOperator {
                    username: username.clone(),
                    display_name: name,
                    role,
                    password,
                    badge,
                },
            )?;
            ctx.seal_audit(&loaded.config, &mut store);
            println!("added user {username} ({role})");
        }
        UserCommand::Passwd {
            username,
            secrets,
            actor,
        } => {
            let actor = actor.resolve()?;
            let (password, _) = secrets.read(&mut stdin)?;
            let password = password.ok_or(SecretInputError::NotGiven("password"))?;
            Operators::new(&mut store, station, &key).set_password(&actor, &username, &password)?;
            ctx.seal_audit(&loaded.config, &mut store);
            println!("password of {username} changed");
        }
        UserCommand::Badge {
            username,
            secrets,
            actor,
        } => {
            let actor = actor.resolve()?;
            let (_, badge) = secrets.read(&mut stdin)?;
            let badge = badge.ok_or(SecretInputError::NotGiven("badge"))?;
            Operators::new(&mut store, station, &key).set_badge(&actor, &username, &badge)?;
            ctx.seal_audit(&loaded.config, &mut store);
            println!("badge of {username} set");
        }
        UserCommand::Disable { username, actor } => {
            let actor = actor.resolve()?;
            Operators::new(&mut store, station, &key).disable(&actor, &username)?;
            ctx.seal_audit(&loaded.config, &mut store);
            println!("user {username} disabled");
        }
        UserCommand::List { json } => {
            let users = operators::list(store.conn())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&users).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<20}  {:<10}  {:<8}  {:<5}  {:<8}  name",
                    "user", "role", "password", "badge", "status"
                );
                for u in users {
                    println!(
                        "{:<20}  {:<10}  {:<8}  {:<5}  {:<8}  {}",
                        u.username,
                        u.role,
                        if u.has_password { "set" } else { "-" },
                        if u.has_badge { "set" } else { "-" },
                        if u.disabled { "disabled" } else { "active" },
                        u.display_name
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
