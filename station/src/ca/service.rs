//! The CA as the station runs it: opening the configured HSM tokens, loading the CA
//! certificates, recording every issued certificate with its audit entry in one transaction,
//! and the keyed audit checkpoint.

use std::path::{Path, PathBuf};

use rusqlite::Transaction;
use sha2::{Digest, Sha256};

use super::authority::{Authority, IssuedCert};
use super::error::CaError;
use super::profile::Profiles;
use super::verify;
use crate::config::Config;
use crate::home::Home;
use crate::hsm::{Hsm, HsmError, TokenSession};
use crate::ids::StationId;
use crate::store::audit::{self, AuditEvent};
use crate::store::{Store, StoreError};

/// A failure of a CA operation that also touches the database.
#[derive(Debug, thiserror::Error)]
pub enum CaServiceError {
    /// The CA refused or failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The database failed.
    #[error("recording in the database failed")]
    Store(#[from] StoreError),
}

impl From<HsmError> for CaServiceError {
    fn from(e: HsmError) -> Self {
        Self::Ca(CaError::Hsm(e))
    }
}

/// Loads the configured PKCS#11 module (exporting SOFTHSM2_CONF for the embedded default).
pub fn open_hsm(home: &Home, cfg: &Config) -> Result<Hsm, CaError> {
    Ok(Hsm::load(&cfg.hsm, |p| home.resolve(p))?)
}

/// A logged-in session on the CA token.
pub fn open_ca_token(hsm: &Hsm, home: &Home, cfg: &Config) -> Result<TokenSession, CaError> {
    Ok(hsm.open(&cfg.hsm.ca_token(), |p| home.resolve(p))?)
}

/// Seals the audit checkpoint with the HSM key in a transaction of its own, after entries
/// written outside an HSM transaction (a command's, a web action's).
pub fn seal_checkpoint(
    hsm: &Hsm,
    home: &Home,
    cfg: &Config,
    store: &mut Store,
) -> Result<(), CaServiceError> {
    let session = open_ca_token(hsm, home, cfg)?;
    let key = AuditKey::find(&session, &cfg.ca.audit_key_label)?;
    // Immediate, as every audit writer beside a running line: see outbox::requeue_conflict.
    let tx = store
        .conn_mut()
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(crate::store::sql("begin audit seal"))?;
    key.seal(&tx)?;
    tx.commit()
        .map_err(crate::store::sql("commit audit seal"))?;
    Ok(())
}

/// A logged-in session on the root token, if one is configured.
pub fn open_root_token(
    hsm: &Hsm,
    home: &Home,
    cfg: &Config,
) -> Result<Option<TokenSession>, CaError> {
    match &cfg.hsm.root {
        Some(root) => Ok(Some(hsm.open(root, |p| home.resolve(p))?)),
        None => Ok(None),
    }
}

/// Reads the first certificate of a PEM (or DER) file.
pub fn read_cert(path: &Path) -> Result<Vec<u8>, CaError> {
    let bytes = std::fs::read(path).map_err(|source| CaError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    verify::from_pem_bundle(&bytes)
        .into_iter()
        .next()
        .ok_or_else(|| CaError::CaCertParse {
            what: path.display().to_string(),
        })
}

/// The issuing CA certificate path.
pub fn cert_path(home: &Home, cfg: &Config) -> PathBuf {
    home.resolve(&cfg.ca.cert)
}

/// The root certificate path.
pub fn root_path(home: &Home, cfg: &Config) -> PathBuf {
    home.resolve(&cfg.ca.root_cert)
}

/// The issuing CA, checked: key protected, certificate matching the key.
pub fn load_issuing<'s>(
    session: &'s TokenSession,
    home: &Home,
    cfg: &Config,
) -> Result<Authority<'s>, CaError> {
    load_authority(session, home, &cert_path(home, cfg), &cfg.ca.key_label)
}

/// The root CA (for verification certificates under the root), checked likewise.
pub fn load_root<'s>(
    session: &'s TokenSession,
    home: &Home,
    cfg: &Config,
) -> Result<Authority<'s>, CaError> {
    load_authority(session, home, &root_path(home, cfg), &cfg.ca.root_key_label)
}

fn load_authority<'s>(
    session: &'s TokenSession,
    home: &Home,
    path: &Path,
    key_label: &str,
) -> Result<Authority<'s>, CaError> {
    let der = read_cert(path)?;
    Authority::load(
        session,
        key_label,
        der,
        &path
            .strip_prefix(home.root())
            .unwrap_or(path)
            .display()
            .to_string(),
    )
}

/// The profiles in use (home copy over the built-in set).
pub fn profiles(home: &Home, cfg: &Config) -> Result<Profiles, CaError> {
    Profiles::load(&home.resolve(&cfg.ca.profiles_dir))
}

/// Identifies a CA key in the database: SHA-256 of the CA certificate's SubjectPublicKeyInfo.
pub fn issuer_key_id(ca_cert_der: &[u8]) -> Result<String, CaError> {
    let cert = verify::parse(ca_cert_der, "CA")?;
    Ok(hex::encode(Sha256::digest(cert.public_key().raw)))
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What to write next to an issued certificate.
#[derive(Debug, Clone, Copy)]
pub struct RecordContext<'a> {
    /// The station.
    pub station: &'a StationId,
    /// Who asked.
    pub actor: &'a str,
    /// Audit event name, e.g. `ca.issue`.
    pub event: &'a str,
    /// The unit's registration ID, when the certificate is a device's.
    pub registration_id: Option<&'a str>,
    /// The unit's row, when the certificate is issued to a unit on the line.
    pub unit_id: Option<i64>,
}

/// Writes the certificate row and its audit entry in the caller's transaction, and gives the
/// row's id. The serial must be new for this issuer: the database's UNIQUE constraint
/// enforces it.
pub fn record_issued(
    tx: &Transaction<'_>,
    issuer_key_id: &str,
    cert: &IssuedCert,
    ctx: &RecordContext<'_>,
) -> Result<i64, CaServiceError> {
    let row = insert_issued(tx, issuer_key_id, cert, ctx)?;
    audit::append(tx, ctx.station, &row.event(ctx))?;
    Ok(row.id)
}

/// A certificate row just written, for its audit entry.
struct IssuedRow<'a> {
    /// The certificate's row.
    id: i64,
    issuer_key_id: &'a str,
    cert: &'a IssuedCert,
    serial: String,
    subject: String,
    fingerprint: String,
}

impl IssuedRow<'_> {
    fn event<'e>(&'e self, ctx: &RecordContext<'e>) -> AuditEvent<'e> {
        AuditEvent {
            actor: ctx.actor,
            event: ctx.event,
            subject: &self.serial,
            details: serde_json::json!({
                "issuer_key_id": self.issuer_key_id,
                "subject": self.subject,
                "profile": self.cert.profile,
                "fingerprint_sha256": self.fingerprint,
                "not_after": rfc3339(self.cert.not_after),
            }),
        }
    }
}

fn insert_issued<'a>(
    tx: &Transaction<'_>,
    issuer_key_id: &'a str,
    cert: &'a IssuedCert,
    ctx: &RecordContext<'_>,
) -> Result<IssuedRow<'a>, CaServiceError> {
    let serial = cert.serial.hex();
    let subject = format!("CN={}", cert.common_name);
    let fingerprint = hex::encode(Sha256::digest(&cert.der));
    let res = tx
        .prepare_cached(
            "INSERT INTO certificates (issuer_key_id, serial_hex, registration_id, subject, profile,
             not_before, not_after, fingerprint_sha256, der, status, issued_at, unit_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'issued', ?10, ?11)",
        )
        .and_then(|mut st| st.execute(rusqlite::params![
            issuer_key_id,
            serial,
            ctx.registration_id,
            subject,
            cert.profile,
            rfc3339(cert.not_before),
            rfc3339(cert.not_after),
            fingerprint,
            cert.der,
            crate::store::now_utc(),
            ctx.unit_id,
        ]));
    match res {
        Ok(_) => Ok(IssuedRow {
            id: tx.last_insert_rowid(),
            issuer_key_id,
            cert,
            serial,
            subject,
            fingerprint,
        }),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(CaError::SerialCollision.into())
        }
        Err(source) => Err(StoreError::Sql {
            op: "record issued certificate",
            source,
        }
        .into()),
    }
}

/// The audit HMAC key in the CA token.
#[derive(Debug, Clone, Copy)]
pub struct AuditKey<'s> {
    session: &'s TokenSession,
    key: cryptoki::object::ObjectHandle,
}

impl<'s> AuditKey<'s> {
    /// Finds the key labelled `label` in the CA token.
    pub fn find(session: &'s TokenSession, label: &str) -> Result<Self, HsmError> {
        Ok(Self {
            session,
            key: session.find_secret_key(label)?,
        })
    }

    /// HMAC-SHA256 in the token.
    pub fn mac(&self, data: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.session
            .hmac_sha256(self.key, "audit checkpoint key", data)
    }

    /// Seals the audit checkpoint in the caller's transaction.
    pub fn seal(&self, tx: &Transaction<'_>) -> Result<(), CaServiceError> {
        audit::seal(tx, |m| self.mac(m))??;
        Ok(())
    }
}

/// The outcome of checking the keyed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealCheck {
    /// The MAC verifies and covers entry `seq`; `unsealed` newer entries follow it.
    Valid {
        /// Entry covered.
        seq: i64,
        /// Entries after it, protected by the hash chain only.
        unsealed: i64,
    },
    /// The log is empty and no checkpoint exists.
    Empty,
    /// Broken: what is wrong.
    Broken(String),
}

/// Checks the keyed checkpoint against the chain and the HSM key.
pub fn check_seal(store: &Store, key: &AuditKey<'_>) -> Result<SealCheck, CaServiceError> {
    let conn = store.conn();
    let last = audit::read_checkpoint(conn)?;
    let Some(seal) = audit::read_seal(conn)? else {
        return Ok(match last {
            None => SealCheck::Empty,
            Some(_) => SealCheck::Broken("the keyed audit checkpoint is missing".into()),
        });
    };
    let expected = key.mac(&audit::seal_message(seal.seq, &seal.hash))?;
    if hex::encode(expected) != seal.mac {
        return Ok(SealCheck::Broken(format!(
            "the keyed checkpoint over entry {} does not verify with the HSM key: the checkpoint was rewritten",
            seal.seq
        )));
    }
    match audit::entry_hash_at(conn, seal.seq)? {
        Some(h) if h == seal.hash => {}
        Some(_) => {
            return Ok(SealCheck::Broken(format!(
                "entry {} no longer has the hash the keyed checkpoint recorded: entries up to it were altered",
                seal.seq
            )));
        }
        None => {
            return Ok(SealCheck::Broken(format!(
                "entry {} covered by the keyed checkpoint is missing",
                seal.seq
            )));
        }
    }
    let last_seq = last.map_or(seal.seq, |c| c.last_seq);
    Ok(SealCheck::Valid {
        seq: seal.seq,
        unsealed: last_seq - seal.seq,
    })
}

/// Records a signed certificate (row + audit entry + keyed checkpoint) in one transaction.
/// The certificate may be released only after this returns.
pub fn commit_issued(
    store: &mut Store,
    ca: &Authority<'_>,
    audit_key: &AuditKey<'_>,
    cert: &IssuedCert,
    rec: &RecordContext<'_>,
) -> Result<(), CaServiceError> {
    commit_batch(store, ca, audit_key, &[(cert, *rec)])
}

/// Records several signed certificates in one transaction; none may be released before it
/// commits.
pub fn commit_batch(
    store: &mut Store,
    ca: &Authority<'_>,
    audit_key: &AuditKey<'_>,
    certs: &[(&IssuedCert, RecordContext<'_>)],
) -> Result<(), CaServiceError> {
    let tx = store
        .conn_mut()
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(crate::store::sql("begin issuance transaction"))?;
    let rows = certs
        .iter()
        .map(|(cert, rec)| insert_issued(&tx, ca.issuer_key_id(), cert, rec))
        .collect::<Result<Vec<_>, _>>()?;
    audit::append_all(
        &tx,
        rows.iter()
            .zip(certs)
            .map(|(row, (_, rec))| (rec.station, row.event(rec))),
    )?;
    audit_key.seal(&tx)?;
    tx.commit()
        .map_err(crate::store::sql("commit issuance transaction"))?;
    Ok(())
}

/// A CRL signed, checked and recorded.
#[derive(Debug, Clone)]
pub struct IssuedCrl {
    /// Its CRL number.
    pub number: u64,
    /// DER.
    pub der: Vec<u8>,
    /// The certificates it lists.
    pub entries: Vec<super::crl::Entry>,
    /// Valid from.
    pub this_update: time::OffsetDateTime,
    /// The next CRL is due by then.
    pub next_update: time::OffsetDateTime,
}

/// Signs `ca`'s next CRL: every certificate it issued that is revoked (a scrapped unit's) or
/// superseded (a retried unit's) and not yet expired, valid for `valid_for`. The CRL row, an
/// audit entry (`ca.crl`) and the keyed checkpoint are committed in one transaction before the
/// CRL is returned, as with a certificate.
pub fn issue_crl(
    store: &mut Store,
    (ca, audit_key): (&Authority<'_>, &AuditKey<'_>),
    (station, actor): (&StationId, &str),
    valid_for: time::Duration,
) -> Result<IssuedCrl, CaServiceError> {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    let tx = store
        .conn_mut()
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(crate::store::sql("begin the CRL transaction"))?;
    let number: i64 = tx
        .query_row("SELECT COALESCE(MAX(number), 0) + 1 FROM crls", [], |r| {
            r.get(0)
        })
        .map_err(crate::store::sql("read the last CRL number"))?;
    let rows: Vec<(String, Option<String>, String)> = tx
        .prepare(
            "SELECT serial_hex, revoked_at, status FROM certificates
             WHERE issuer_key_id = ?1 AND status IN ('revoked', 'superseded') AND not_after > ?2
             ORDER BY revoked_at, serial_hex",
        )
        .and_then(|mut st| {
            st.query_map(
                rusqlite::params![ca.issuer_key_id(), rfc3339(now.unix_timestamp())],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .collect()
        })
        .map_err(crate::store::sql("read the revoked certificates"))?;
    let entries: Vec<super::crl::Entry> = rows
        .into_iter()
        .filter_map(|(serial_hex, at, status)| {
            let reason = super::crl::Reason::for_status(&status)?;
            let revoked_at = at
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.timestamp()).ok())
                .unwrap_or(now);
            Some(super::crl::Entry {
                serial_hex,
                revoked_at,
                reason,
            })
        })
        .collect();
    let next_update = now + valid_for;
    let number_u = u64::try_from(number).unwrap_or(1);
    let der = super::crl::sign(ca, number_u, (now, next_update), &entries)?;
    tx.prepare(
        "INSERT INTO crls (number, issuer_key_id, this_update, next_update, entries, der)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut st| {
        st.execute(rusqlite::params![
            number,
            ca.issuer_key_id(),
            rfc3339(now.unix_timestamp()),
            rfc3339(next_update.unix_timestamp()),
            i64::try_from(entries.len()).unwrap_or(i64::MAX),
            der,
        ])
    })
    .map_err(crate::store::sql("record the CRL"))?;
    let count = |r: super::crl::Reason| entries.iter().filter(|e| e.reason == r).count();
    audit::append(
        &tx,
        station,
        &AuditEvent {
            actor,
            event: "ca.crl",
            subject: &number.to_string(),
            details: serde_json::json!({
                "issuerKeyId": ca.issuer_key_id(),
                "revoked": count(super::crl::Reason::Scrapped),
                "superseded": count(super::crl::Reason::Superseded),
                "nextUpdate": rfc3339(next_update.unix_timestamp()),
                "sha256": hex::encode(Sha256::digest(&der)),
            }),
        },
    )?;
    audit_key.seal(&tx)?;
    tx.commit()
        .map_err(crate::store::sql("commit the CRL transaction"))?;
    Ok(IssuedCrl {
        number: number_u,
        der,
        entries,
        this_update: now,
        next_update,
    })
}

/// The newest CRL the station signed, and how it stands against the certificates now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlState {
    /// Its CRL number.
    pub number: i64,
    /// Its thisUpdate (RFC 3339).
    pub this_update: String,
    /// Its nextUpdate (RFC 3339).
    pub next_update: String,
    /// Its CA's certificates the station no longer stands behind (revoked or superseded, not
    /// expired) that it does not list.
    pub unlisted: usize,
}

impl CrlState {
    /// Why a new CRL should be signed at `now` (RFC 3339), if it should: a certificate it
    /// does not list, or half its validity gone (relying parties refuse every certificate
    /// once a CRL they rely on has expired).
    #[must_use]
    pub fn renew_why(&self, now: &str) -> Option<String> {
        if self.unlisted > 0 {
            return Some(format!(
                "{} certificate(s) revoked or superseded since CRL number {} ({})",
                self.unlisted, self.number, self.this_update
            ));
        }
        let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
        let (Some(from), Some(until), Some(now)) =
            (t(&self.this_update), t(&self.next_update), t(now))
        else {
            return Some(format!("CRL number {} has unreadable dates", self.number));
        };
        if now >= until {
            Some(format!(
                "CRL number {} expired at {}",
                self.number, self.next_update
            ))
        } else if now >= from + (until - from) / 2 {
            Some(format!(
                "CRL number {} is past half its validity (until {})",
                self.number, self.next_update
            ))
        } else {
            None
        }
    }
}

/// The newest CRL signed (by the CA with key ID `issuer`, or by any), if any.
pub fn newest_crl(
    conn: &rusqlite::Connection,
    issuer: Option<&str>,
) -> Result<Option<CrlState>, StoreError> {
    use rusqlite::OptionalExtension;
    let newest: Option<(i64, String, String, String, Vec<u8>)> = conn
        .query_row(
            "SELECT number, this_update, next_update, issuer_key_id, der FROM crls
             WHERE ?1 IS NULL OR issuer_key_id = ?1 ORDER BY number DESC LIMIT 1",
            [issuer],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()
        .map_err(crate::store::sql("read the newest CRL"))?;
    let Some((number, this_update, next_update, issuer, der)) = newest else {
        return Ok(None);
    };
    // Read back from the CRL itself: what it lists is what relying parties see.
    let listed: std::collections::HashSet<String> = {
        use x509_parser::prelude::FromDer;
        x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
            .map(|(_, crl)| {
                crl.iter_revoked_certificates()
                    .map(|r| hex::encode(r.raw_serial()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let gone: Vec<String> = conn
        .prepare(
            "SELECT serial_hex FROM certificates WHERE issuer_key_id = ?1
             AND status IN ('revoked', 'superseded') AND not_after > ?2",
        )
        .and_then(|mut st| {
            st.query_map(
                rusqlite::params![issuer, rfc3339(chrono::Utc::now().timestamp())],
                |r| r.get(0),
            )?
            .collect()
        })
        .map_err(crate::store::sql("read the revoked certificates"))?;
    Ok(Some(CrlState {
        number,
        this_update,
        next_update,
        unlisted: gone.iter().filter(|s| !listed.contains(*s)).count(),
    }))
}
