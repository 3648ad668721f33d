//! Operators: the people who work the line. Passwords are argon2id hashes; badge codes are
//! HMAC-SHA256 hashes under a station key (`H/secrets/badge.key`), so a copied database gives
//! away neither. The same users log on at fixtures (badge scan) and sign in to the web UI
//! (badge or password).

use std::fmt;
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use hmac::{Hmac, Mac};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::ids::{StationId, Username};
use crate::store::audit::{self, AuditEvent};
use crate::store::{Store, StoreError, now_utc, sql};
use crate::trigger::parse::Badge;

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs units on fixtures.
    Operator,
    /// Also reworks units, resolves conflicts, closes lots.
    Supervisor,
    /// Also manages users and configuration.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "operator" => Some(Role::Operator),
            "supervisor" => Some(Role::Supervisor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why an operator operation failed. Never carries a password or badge.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The user name is taken.
    #[error("user {0} already exists")]
    Exists(String),
    /// No such user.
    #[error("no user named {0}")]
    NotFound(String),
    /// The badge code is already assigned to someone.
    #[error("that badge is already assigned to user {0}")]
    BadgeTaken(String),
    /// The badge matches nobody.
    #[error("unknown badge: no active operator has this badge")]
    UnknownBadge,
    /// The user is disabled.
    #[error("user {0} is disabled")]
    Disabled(String),
    /// Wrong user name or password (not saying which).
    #[error("wrong user name or password")]
    BadCredentials,
    /// The password is too short.
    #[error("the password must have at least {MIN_PASSWORD_LEN} characters")]
    WeakPassword,
    /// The badge key file cannot be read.
    #[error("cannot read the badge key {path}")]
    BadgeKey {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Password hashing failed.
    #[error("password hashing failed")]
    Hash,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The key badge codes are hashed under.
pub struct BadgeKey(Zeroizing<Vec<u8>>);

impl fmt::Debug for BadgeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BadgeKey(<redacted>)")
    }
}

impl BadgeKey {
    /// Reads the key file written by `station init`.
    pub fn load(path: &Path) -> Result<Self, OperatorError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            OperatorError::BadgeKey {
                path: path.to_path_buf(),
                source,
            }
        })?);
        Ok(Self(Zeroizing::new(text.trim().as_bytes().to_vec())))
    }

    fn hash(&self, badge: &Badge) -> String {
        // HMAC accepts keys of any length; new_from_slice cannot fail for HMAC.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(badge.expose().as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// An operator as listed (no secrets).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Operator {
    /// Login name.
    pub username: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Whether a password is set (web UI logon).
    pub has_password: bool,
    /// Whether a badge is set (fixture logon).
    pub has_badge: bool,
    /// Whether the user is disabled.
    pub disabled: bool,
    /// When the user was added.
    pub created_at: String,
}

/// A user to add.
pub struct NewOperator {
    /// Login name.
    pub username: Username,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Password for the web UI, if any.
    pub password: Option<SecretString>,
    /// Badge for fixture logon, if any.
    pub badge: Option<Badge>,
}

fn hash_password(pw: &SecretString) -> Result<String, OperatorError> {
    if pw.expose_secret().chars().count() < MIN_PASSWORD_LEN {
        return Err(OperatorError::WeakPassword);
    }
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|_| OperatorError::Hash)?;
    argon2::Argon2::default()
        .hash_password(pw.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| OperatorError::Hash)
}

const SELECT: &str = "SELECT username, display_name, role, password_hash IS NOT NULL, badge_hash IS NOT NULL, disabled, created_at, password_hash FROM operators";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Operator> {
    let role: String = r.get(2)?;
    Ok(Operator {
        username: r.get(0)?,
        display_name: r.get(1)?,
        role: Role::parse(&role).unwrap_or(Role::Operator),
        has_password: r.get(3)?,
        has_badge: r.get(4)?,
        disabled: r.get(5)?,
        created_at: r.get(6)?,
    })
}

/// Everything about users that writes: each change is one transaction with its audit entry.
pub struct Operators<'a> {
    store: &'a mut Store,
    station: StationId,
    key: &'a BadgeKey,
}

impl<'a> Operators<'a> {
    /// Operators of this store.
    pub fn new(store: &'a mut Store, station: StationId, key: &'a BadgeKey) -> Self {
        Self {
            store,
            station,
            key,
        }
    }

    /// Adds a user.
    pub fn add(&mut self, actor: &str, new: &NewOperator) -> Result<(), OperatorError> {
        let pw = new.password.as_ref().map(hash_password).transpose()?;
        let badge = new.badge.as_ref().map(|b| self.key.hash(b));
        let tx = self
            .store
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin"))?;
        let exists: bool = tx
            .query_row(
                "SELECT count(*) FROM operators WHERE username = ?1",
                [new.username.as_str()],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )
            .map_err(sql("look up user"))?;
        if exists {
            return Err(OperatorError::Exists(new.username.to_string()));
        }
        if let Some(b) = &badge
            && let Some(holder) = badge_holder(&tx, b)?
        {
            return Err(OperatorError::BadgeTaken(holder));
        }
        tx.execute(
            "INSERT INTO operators (username, display_name, role, password_hash, badge_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![new.username.as_str(), new.display_name, new.role.as_str(), pw, badge, now_utc()],
        )
        .map_err(sql("add user"))?;
        audit::append(
            &tx,
            &self.station,
            &AuditEvent {
                actor,
                event: "user.add",
                subject: new.username.as_str(),
                details: serde_json::json!({
                    "role": new.role.as_str(),
                    "password": new.password.is_some(),
                    "badge": new.badge.is_some(),
                }),
            },
        )?;
        tx.commit().map_err(sql("commit"))?;
        Ok(())
    }

    /// Sets a new password.
    pub fn set_password(
        &mut self,
        actor: &str,
        user: &Username,
        pw: &SecretString,
    ) -> Result<(), OperatorError> {
        let hash = hash_password(pw)?;
        self.update(actor, user, "user.passwd", "password_hash = ?2", &hash)
    }

    /// Sets (or replaces) a user's badge.
    pub fn set_badge(
        &mut self,
        actor: &str,
        user: &Username,
        badge: &Badge,
    ) -> Result<(), OperatorError> {
        let hash = self.key.hash(badge);
        if let Some(holder) = badge_holder(self.store.conn(), &hash)?
            && holder != user.as_str()
        {
            return Err(OperatorError::BadgeTaken(holder));
        }
        self.update(actor, user, "user.badge", "badge_hash = ?2", &hash)
    }

    /// Disables a user: no logon by password or badge any more. Records stay.
    pub fn disable(&mut self, actor: &str, user: &Username) -> Result<(), OperatorError> {
        self.update(actor, user, "user.disable", "disabled = ?2", "1")
    }

    fn update(
        &mut self,
        actor: &str,
        user: &Username,
        event: &str,
        set: &str,
        value: &str,
    ) -> Result<(), OperatorError> {
        let tx = self
            .store
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin"))?;
        let n = tx
            .execute(
                &format!("UPDATE operators SET {set} WHERE username = ?1"),
                params![user.as_str(), value],
            )
            .map_err(sql("update user"))?;
        if n == 0 {
            return Err(OperatorError::NotFound(user.to_string()));
        }
        audit::append(
            &tx,
            &self.station,
            &AuditEvent {
                actor,
                event,
                subject: user.as_str(),
                details: serde_json::json!({}),
            },
        )?;
        tx.commit().map_err(sql("commit"))?;
        Ok(())
    }
}

fn badge_holder(conn: &rusqlite::Connection, hash: &str) -> Result<Option<String>, StoreError> {
    conn.query_row(
        "SELECT username FROM operators WHERE badge_hash = ?1",
        [hash],
        |r| r.get(0),
    )
    .optional()
    .map_err(sql("look up badge"))
}

/// Every user, by name.
pub fn list(conn: &rusqlite::Connection) -> Result<Vec<Operator>, OperatorError> {
    let mut stmt = conn
        .prepare(&format!("{SELECT} ORDER BY username"))
        .map_err(sql("list users"))?;
    let users = stmt
        .query_map([], row)
        .map_err(sql("list users"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql("list users"))?;
    Ok(users)
}

/// The active operator holding a badge.
pub fn by_badge(
    conn: &rusqlite::Connection,
    key: &BadgeKey,
    badge: &Badge,
) -> Result<Operator, OperatorError> {
    let op = conn
        .query_row(
            &format!("{SELECT} WHERE badge_hash = ?1"),
            [key.hash(badge)],
            row,
        )
        .optional()
        .map_err(sql("look up badge"))?
        .ok_or(OperatorError::UnknownBadge)?;
    if op.disabled {
        return Err(OperatorError::Disabled(op.username));
    }
    Ok(op)
}

/// Checks a user name and password (for the web UI).
pub fn authenticate(
    conn: &rusqlite::Connection,
    user: &str,
    pw: &SecretString,
) -> Result<Operator, OperatorError> {
    let found: Option<(Option<String>, Operator)> = conn
        .query_row(&format!("{SELECT} WHERE username = ?1"), [user], |r| {
            Ok((r.get(7)?, row(r)?))
        })
        .optional()
        .map_err(sql("look up user"))?;
    let Some((Some(hash), op)) = found else {
        return Err(OperatorError::BadCredentials);
    };
    let parsed = PasswordHash::new(&hash).map_err(|_| OperatorError::BadCredentials)?;
    argon2::Argon2::default()
        .verify_password(pw.expose_secret().as_bytes(), &parsed)
        .map_err(|_| OperatorError::BadCredentials)?;
    if op.disabled {
        return Err(OperatorError::Disabled(op.username));
    }
    Ok(op)
}
