//! Air-gapped transfer of the outbox toward DPS, for a station that cannot reach its DPS
//! target (or should not wait for it):
//!
//! 1. `station upload --export FILE` writes the target's waiting rows to a file and marks each
//!    row as travelling in that export, so the uploader leaves it alone (nothing is erased).
//! 2. `station upload --deliver FILE` runs where DPS is reachable (no station home needed):
//!    the same delivery as the uploader (bulk creates of at most 10, a 409 for the station's
//!    own enrollment recovered, anything else a conflict), and writes a receipt.
//! 3. `station upload --receipt FILE` back on the station records each row's outcome exactly as
//!    the uploader would have: delivered (unit uploaded, payload erased), in conflict (for a
//!    supervisor), or back in the queue. A receipt applies once; its rows must still travel in
//!    its export.
//!
//! Both files are JSON lines: a header, one line per row, and a closing line with the count and
//! the SHA-256 of every byte before it, so a file cut short or changed in transfer is refused
//! before anything is read from it. An export that holds symmetric-key units' keys (DPS needs
//! them) is encrypted to the delivering side's age key (`--recipient`, from
//! `station upload --new-identity` run there), or written in clear only when asked
//! (`--in-clear`); either way mode 0600. A receipt holds no key and is never encrypted.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use dps::client::ServiceClient;
use dps::wire::{AttestationMechanism, IndividualEnrollment};
use rusqlite::{TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::dps::{
    BlockPayload, GroupMemberPayload, IndividualPayload, KIND_BLOCK, KIND_GROUP_MEMBER,
    KIND_INDIVIDUAL, Outcome, deliver_block, deliver_bulk, destination, member_outcomes,
};
use super::uploader::{UploadError, UploadReport, Work, apply_outcome, decode};
use super::{Backoff, Item, PayloadCipher, RowState};
use crate::ids::StationId;
use crate::store::audit::{self, AuditEvent};
use crate::store::{Store, StoreError, now_utc, sql};

/// An age recipient (public key, `age1...`).
pub use age::x25519::Recipient as AgeRecipient;

/// The `format` of an export file's header.
pub const EXPORT_FORMAT: &str = "station-outbox-export";
/// The `format` of a receipt file's header.
pub const RECEIPT_FORMAT: &str = "station-outbox-receipt";
/// The file version this build writes and reads.
pub const VERSION: u32 = 1;

/// Why a transfer step failed. Nothing in a message quotes a line of a file (an export holds
/// keys); a bad line is named by its number.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// No row of the target waits outside an export.
    #[error(
        "nothing to export: no row for DPS target {target} waits outside an export (see `station upload --status`)"
    )]
    NothingToExport {
        /// The target.
        target: String,
    },
    /// An export names rows no longer travelling in it.
    #[error(
        "export {0} has no row left travelling in it (its receipt was applied, or it is unknown)"
    )]
    NothingLeft(String),
    /// An export holding keys, with nowhere safe to put them.
    #[error(
        "the export would hold the symmetric keys of {0} units in clear: encrypt it to the delivering side's key with --recipient AGE_PUBLIC_KEY (`station upload --new-identity FILE` makes one there), or write it in clear with --in-clear; nothing was exported"
    )]
    KeysInClear(usize),
    /// An encrypted file read without an identity.
    #[error(
        "{0} is encrypted: give the identity it was encrypted to with --identity FILE; nothing was read from it"
    )]
    Encrypted(PathBuf),
    /// An encrypted file the identities given cannot open.
    #[error(
        "{path} cannot be decrypted with the identity given ({reason}); nothing was read from it"
    )]
    Decrypt {
        /// The file.
        path: PathBuf,
        /// age's reason (names no key).
        reason: String,
    },
    /// Encrypting failed.
    #[error("the export could not be encrypted ({0}); nothing was exported")]
    Encrypt(String),
    /// An identity file that cannot be read.
    #[error("cannot read the identity file {path} ({reason})")]
    Identity {
        /// The file.
        path: PathBuf,
        /// Why (names no key).
        reason: String,
    },
    /// A waiting row cannot be read (sealed without the HSM, or a bad payload).
    #[error("{0}; nothing was exported")]
    Unreadable(String),
    /// The output file exists already.
    #[error("{0} exists already; an export or receipt never overwrites a file")]
    Exists(PathBuf),
    /// A file could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not end with its closing line.
    #[error(
        "{0} is incomplete: it does not end with its closing line (cut short in transfer?); nothing was read from it"
    )]
    Truncated(PathBuf),
    /// The file's bytes do not match its closing line.
    #[error(
        "{path} was changed or damaged after it was written ({found}); nothing was read from it"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What does not match.
        found: String,
    },
    /// A line is not what it should be.
    #[error("{path}, line {line}: not a valid {what} (JSON {kind:?} error at column {column})")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What the line should be.
        what: &'static str,
        /// serde's error class.
        kind: serde_json::error::Category,
        /// Column of the error.
        column: usize,
    },
    /// The file is another kind of file.
    #[error("{path} is a {found} file, not a {expected} file (version {VERSION})")]
    WrongFormat {
        /// The file.
        path: PathBuf,
        /// Its header's format and version.
        found: String,
        /// The format expected.
        expected: &'static str,
    },
    /// A receipt made for another station.
    #[error("the receipt is for station {found}, not this station ({ours})")]
    OtherStation {
        /// The receipt's station.
        found: String,
        /// This station.
        ours: String,
    },
    /// A receipt for an export this station never made.
    #[error("the receipt is for export {0}, which this station did not make")]
    UnknownExport(String),
    /// A receipt applied before.
    #[error(
        "the receipt of export {id} was applied at {at}: no row of it still travels; nothing changed"
    )]
    AlreadyApplied {
        /// The export.
        id: String,
        /// When its receipt was applied.
        at: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Recording an outcome failed.
    #[error(transparent)]
    Record(#[from] UploadError),
}

/// The first line of an export or receipt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// [`EXPORT_FORMAT`] or [`RECEIPT_FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The export's id (a receipt names the export it answers).
    pub export_id: String,
    /// The station that made the export.
    pub station: String,
    /// The `[dps.targets.NAME]` the rows go to.
    pub target: String,
    /// The target's ID scope, for the person delivering it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_scope: Option<String>,
    /// When the file was written (UTC).
    pub written_at: String,
}

/// The closing line.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Closing {
    /// The header's format again.
    end: String,
    /// Lines between header and closing line.
    items: usize,
    /// SHA-256 (hex) of every byte before this line.
    sha256: String,
}

/// One row of an export.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum ExportItem {
    /// An individual enrollment to create.
    #[serde(rename = "dps.individual-enrollment")]
    Individual {
        /// The station's outbox row.
        outbox_id: i64,
        /// The enrollment (with the unit's keys for symmetric units).
        enrollment: Box<IndividualEnrollment>,
    },
    /// A unit covered by a group: the group must exist.
    #[serde(rename = "dps.group-member")]
    GroupMember {
        /// The station's outbox row.
        outbox_id: i64,
        /// The unit's registration ID.
        registration_id: String,
        /// The enrollment group.
        group_id: String,
    },
    /// A scrapped unit to block: its enrollment disabled, or a disabled one made for it.
    #[serde(rename = "dps.block")]
    Block {
        /// The station's outbox row.
        outbox_id: i64,
        /// The unit's registration ID.
        registration_id: String,
        /// For a group member: the attestation of the disabled individual enrollment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attestation: Option<Box<AttestationMechanism>>,
    },
}

impl ExportItem {
    /// The outbox row.
    #[must_use]
    pub fn outbox_id(&self) -> i64 {
        match self {
            ExportItem::Individual { outbox_id, .. }
            | ExportItem::GroupMember { outbox_id, .. }
            | ExportItem::Block { outbox_id, .. } => *outbox_id,
        }
    }

    /// The key at the destination (registration ID).
    #[must_use]
    pub fn item_key(&self) -> &str {
        match self {
            ExportItem::Individual { enrollment, .. } => enrollment.registration_id.as_str(),
            ExportItem::GroupMember {
                registration_id, ..
            }
            | ExportItem::Block {
                registration_id, ..
            } => registration_id,
        }
    }
}

impl std::fmt::Debug for ExportItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // An enrollment may hold keys: name the row only.
        f.debug_struct("ExportItem")
            .field("outbox_id", &self.outbox_id())
            .field("item_key", &self.item_key())
            .finish_non_exhaustive()
    }
}

/// How one row's delivery ended, as a receipt says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum ReceiptItem {
    /// DPS holds it.
    Delivered {
        /// The station's outbox row.
        outbox_id: i64,
        /// Registration ID.
        item_key: String,
        /// The etag DPS gave.
        etag: String,
        /// DPS held it already with the station's attestation (a 409 resolved).
        recovered: bool,
    },
    /// Not delivered; back in the station's queue.
    Retry {
        /// The station's outbox row.
        outbox_id: i64,
        /// Registration ID.
        item_key: String,
        /// Why.
        error: String,
    },
    /// DPS holds something else under the ID.
    Conflict {
        /// The station's outbox row.
        outbox_id: i64,
        /// Registration ID.
        item_key: String,
        /// What differs and what to do.
        message: String,
        /// Audit details.
        details: serde_json::Value,
    },
}

impl ReceiptItem {
    fn from_outcome(outbox_id: i64, item_key: &str, o: Outcome) -> Self {
        let item_key = item_key.to_owned();
        match o {
            Outcome::Delivered { etag, recovered } => ReceiptItem::Delivered {
                outbox_id,
                item_key,
                etag,
                recovered,
            },
            Outcome::Retry { error, .. } => ReceiptItem::Retry {
                outbox_id,
                item_key,
                error,
            },
            Outcome::Conflict { message, details } => ReceiptItem::Conflict {
                outbox_id,
                item_key,
                message,
                details,
            },
        }
    }

    fn row(&self) -> (i64, &str) {
        match self {
            ReceiptItem::Delivered {
                outbox_id,
                item_key,
                ..
            }
            | ReceiptItem::Retry {
                outbox_id,
                item_key,
                ..
            }
            | ReceiptItem::Conflict {
                outbox_id,
                item_key,
                ..
            } => (*outbox_id, item_key),
        }
    }

    fn into_outcome(self) -> Outcome {
        match self {
            ReceiptItem::Delivered {
                etag, recovered, ..
            } => Outcome::Delivered { etag, recovered },
            ReceiptItem::Retry { error, .. } => Outcome::Retry {
                error,
                retry_after: None,
            },
            ReceiptItem::Conflict {
                message, details, ..
            } => Outcome::Conflict { message, details },
        }
    }
}

/// A file read and checked: its header and its lines.
#[derive(Debug)]
pub struct TransferFile<T> {
    /// The header.
    pub header: Header,
    /// The lines between header and closing line.
    pub items: Vec<T>,
    /// SHA-256 (hex) of the file's content before its closing line.
    pub sha256: String,
}

fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> TransferError + 'p {
    move |source| TransferError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Writes header, items and closing line to `path` (mode 0600), encrypted to `recipients`
/// when there are any, on disk before it returns: a temporary file beside it, synced, renamed
/// into place, the directory synced. Refuses an existing `path`. Returns the SHA-256 of the
/// content (in clear).
fn write_file<T: Serialize>(
    path: &Path,
    header: &Header,
    items: &[T],
    recipients: &[AgeRecipient],
) -> Result<String, TransferError> {
    if path.exists() {
        return Err(TransferError::Exists(path.to_owned()));
    }
    let mut body = Zeroizing::new(Vec::new());
    push_line(&mut body, header);
    for it in items {
        push_line(&mut body, it);
    }
    let sha256 = hex::encode(Sha256::digest(body.as_slice()));
    push_line(
        &mut body,
        &Closing {
            end: header.format.clone(),
            items: items.len(),
            sha256: sha256.clone(),
        },
    );
    if !recipients.is_empty() {
        body = encrypt(&body, recipients)?;
    }
    write_private(path, &body)?;
    Ok(sha256)
}

/// `plain` as an age file for `recipients`.
fn encrypt(plain: &[u8], recipients: &[AgeRecipient]) -> Result<Zeroizing<Vec<u8>>, TransferError> {
    let bad = |e: &dyn std::fmt::Display| TransferError::Encrypt(e.to_string());
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| bad(&e))?;
    let mut out = Zeroizing::new(Vec::with_capacity(plain.len() + 256));
    let mut w = enc.wrap_output(&mut *out).map_err(|e| bad(&e))?;
    w.write_all(plain).map_err(|e| bad(&e))?;
    w.finish().map_err(|e| bad(&e))?;
    Ok(out)
}

/// Writes `bytes` to a new file `path`, mode 0600, durably (temporary file, sync, rename,
/// directory sync).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TransferError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.partial"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("cannot create", &tmp))?;
    f.write_all(bytes).map_err(io("cannot write", &tmp))?;
    f.sync_all().map_err(io("cannot sync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("cannot rename into place", path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync directory", dir))?;
    Ok(())
}

/// Appends `v` as one JSON line (these plain data types always serialise).
fn push_line<T: Serialize + ?Sized>(body: &mut Vec<u8>, v: &T) {
    if serde_json::to_writer(&mut *body, v).is_ok() {
        body.push(b'\n');
    }
}

/// Reads `path`, checks its closing line (count and SHA-256) and header format, and parses
/// every line as `T`.
fn read_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    format: &'static str,
    what: &'static str,
    identities: &[Box<dyn age::Identity>],
) -> Result<TransferFile<T>, TransferError> {
    let mut bytes = Zeroizing::new(std::fs::read(path).map_err(io("cannot read", path))?);
    if bytes.starts_with(AGE_MAGIC) {
        if identities.is_empty() {
            return Err(TransferError::Encrypted(path.to_owned()));
        }
        bytes = decrypt(path, &bytes, identities)?;
    }
    let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let Some(cut) = text.iter().rposition(|&b| b == b'\n') else {
        return Err(TransferError::Truncated(path.to_owned()));
    };
    let (content, closing) = (&bytes[..=cut], &text[cut + 1..]);
    let Ok(closing) = serde_json::from_slice::<Closing>(closing) else {
        return Err(TransferError::Truncated(path.to_owned()));
    };
    let sha256 = hex::encode(Sha256::digest(content));
    let lines: Vec<&[u8]> = content
        .strip_suffix(b"\n")
        .unwrap_or(content)
        .split(|&b| b == b'\n')
        .collect();
    if sha256 != closing.sha256 {
        return Err(TransferError::Damaged {
            path: path.to_owned(),
            found: format!(
                "SHA-256 {}..., its closing line says {}...",
                &sha256[..12],
                closing.sha256.get(..12).unwrap_or(&closing.sha256)
            ),
        });
    }
    if closing.items.checked_add(1) != Some(lines.len()) {
        return Err(TransferError::Damaged {
            path: path.to_owned(),
            found: format!(
                "{} lines, its closing line says {}",
                lines.len().saturating_sub(1),
                closing.items
            ),
        });
    }
    let bad = |line: usize, what: &'static str| {
        move |e: serde_json::Error| TransferError::BadLine {
            path: path.to_owned(),
            line,
            what,
            kind: e.classify(),
            column: e.column(),
        }
    };
    let header: Header = serde_json::from_slice(lines[0]).map_err(bad(1, "header"))?;
    if header.format != format || header.version != VERSION || closing.end != header.format {
        return Err(TransferError::WrongFormat {
            path: path.to_owned(),
            found: format!("{} (version {})", header.format, header.version),
            expected: format,
        });
    }
    let items = lines[1..]
        .iter()
        .enumerate()
        .map(|(i, l)| serde_json::from_slice(l).map_err(bad(i + 2, what)))
        .collect::<Result<Vec<T>, _>>()?;
    Ok(TransferFile {
        header,
        items,
        sha256,
    })
}

/// How every age file starts.
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// The content of the age file `sealed`, opened with one of `identities`.
fn decrypt(
    path: &Path,
    sealed: &[u8],
    identities: &[Box<dyn age::Identity>],
) -> Result<Zeroizing<Vec<u8>>, TransferError> {
    use std::io::Read as _;
    let bad = |e: &dyn std::fmt::Display| TransferError::Decrypt {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let mut r = age::Decryptor::new(sealed)
        .and_then(|d| d.decrypt(identities.iter().map(|i| i.as_ref())))
        .map_err(|e| bad(&e))?;
    let mut plain = Zeroizing::new(Vec::with_capacity(sealed.len()));
    r.read_to_end(&mut plain).map_err(|e| bad(&e))?;
    Ok(plain)
}

/// Reads an export file (decrypted with one of `identities` if it is encrypted), refusing one
/// that is cut short, changed, or not an export.
pub fn read_export(
    path: &Path,
    identities: &[Box<dyn age::Identity>],
) -> Result<TransferFile<ExportItem>, TransferError> {
    read_file(path, EXPORT_FORMAT, "export row", identities)
}

/// Reads a receipt file, refusing one that is cut short, changed, or not a receipt.
pub fn read_receipt(path: &Path) -> Result<TransferFile<ReceiptItem>, TransferError> {
    read_file(path, RECEIPT_FORMAT, "receipt row", &[])
}

/// The `format` of a registration query (`station registrations --export-query`): the units
/// of an export-only target to ask DPS about, where it is reachable.
pub const QUERY_FORMAT: &str = "station-registration-query";
/// The `format` of the answers to a query (`station registrations --ask`).
pub const ANSWERS_FORMAT: &str = "station-registration-answers";

/// One unit to ask DPS about, by its registration ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryItem {
    /// The unit's registration ID.
    pub registration_id: String,
}

/// DPS's answer about one unit of a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum AnswerItem {
    /// DPS's registration record.
    Record {
        /// Registration ID.
        registration_id: String,
        /// The record (status, hub, device ID, or DPS's error).
        record: Box<dps::wire::DeviceRegistrationState>,
    },
    /// DPS has no registration record: the unit has not registered.
    None {
        /// Registration ID.
        registration_id: String,
    },
    /// DPS could not be asked.
    NotAsked {
        /// Registration ID.
        registration_id: String,
        /// Why.
        error: String,
    },
}

impl AnswerItem {
    /// The unit's registration ID.
    #[must_use]
    pub fn registration_id(&self) -> &str {
        match self {
            AnswerItem::Record {
                registration_id, ..
            }
            | AnswerItem::None { registration_id }
            | AnswerItem::NotAsked {
                registration_id, ..
            } => registration_id,
        }
    }
}

/// Writes a registration query (never encrypted: registration IDs are not secret), refusing
/// an existing file. Returns the SHA-256 of its content.
pub fn write_query(
    path: &Path,
    header: &Header,
    items: &[QueryItem],
) -> Result<String, TransferError> {
    write_file(path, header, items, &[])
}

/// Reads a registration query, refusing one cut short, changed, or not a query.
pub fn read_query(path: &Path) -> Result<TransferFile<QueryItem>, TransferError> {
    read_file(path, QUERY_FORMAT, "query line", &[])
}

/// Writes the answers to a registration query, refusing an existing file.
pub fn write_answers(
    path: &Path,
    header: &Header,
    items: &[AnswerItem],
) -> Result<String, TransferError> {
    write_file(path, header, items, &[])
}

/// Reads the answers to a registration query, refusing a file cut short, changed, or not
/// answers.
pub fn read_answers(path: &Path) -> Result<TransferFile<AnswerItem>, TransferError> {
    read_file(path, ANSWERS_FORMAT, "answer line", &[])
}

/// The identities of an age identity file (`station upload --new-identity`, or `age-keygen`).
pub fn load_identities(path: &Path) -> Result<Vec<Box<dyn age::Identity>>, TransferError> {
    let bad = |reason: String| TransferError::Identity {
        path: path.to_owned(),
        reason,
    };
    let text = Zeroizing::new(std::fs::read(path).map_err(|e| bad(e.to_string()))?);
    let ids = age::IdentityFile::from_buffer(text.as_slice())
        .map_err(|_| bad("not an age identity file".into()))?
        .into_identities()
        .map_err(|e| bad(e.to_string()))?;
    if ids.is_empty() {
        return Err(bad("it holds no identity".into()));
    }
    Ok(ids)
}

/// Makes a new age identity in the new file `path` (mode 0600, the layout of `age-keygen`)
/// and returns its public key, for `--recipient` where the export is written.
pub fn new_identity(path: &Path) -> Result<AgeRecipient, TransferError> {
    use age::secrecy::ExposeSecret as _;
    if path.exists() {
        return Err(TransferError::Exists(path.to_owned()));
    }
    let id = age::x25519::Identity::generate();
    let public = id.to_public();
    let text = Zeroizing::new(format!(
        "# created: {}\n# public key: {public}\n{}\n",
        now_utc(),
        id.to_string().expose_secret()
    ));
    write_private(path, text.as_bytes())?;
    Ok(public)
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    /// The export's id.
    pub export_id: String,
    /// The DPS target.
    pub target: String,
    /// The file.
    pub file: PathBuf,
    /// SHA-256 (hex) of its content.
    pub sha256: String,
    /// Individual enrollments in it.
    pub individuals: usize,
    /// Group members in it.
    pub group_members: usize,
    /// Scrapped units to block in it.
    pub blocks: usize,
    /// Of the individual enrollments, those holding a unit's symmetric keys.
    pub with_keys: usize,
    /// Whether the file is encrypted (age).
    pub encrypted: bool,
}

/// Where and how an export is written.
#[derive(Debug, Clone, Copy)]
pub struct ExportTo<'a> {
    /// The new file.
    pub path: &'a Path,
    /// Encrypt to these keys (the delivering side's); none: in clear.
    pub recipients: &'a [AgeRecipient],
    /// Allow units' keys in clear when there is no recipient.
    pub in_clear: bool,
}

/// Where an export's rows come from.
#[derive(Debug, Clone)]
pub enum ExportRows<'a> {
    /// Every row of this DPS target that waits outside an export.
    Target(&'a str),
    /// The rows still travelling in this export (its file was lost): written again.
    Again(&'a str),
}

/// Writes the chosen rows to `to.path` and marks them as travelling in the export, in one
/// transaction taken before the file is written (the uploader cannot deliver a row meanwhile).
/// The file is on disk before the rows are marked; a crash between the two leaves the rows
/// waiting and the file unrecorded, and a receipt for it is refused.
#[allow(clippy::too_many_lines)]
pub fn export(
    store: &mut Store,
    station: &StationId,
    cipher: Option<&dyn PayloadCipher>,
    rows: &ExportRows<'_>,
    id_scope: impl Fn(&str) -> Option<String>,
    to: &ExportTo<'_>,
    actor: &str,
) -> Result<ExportSummary, TransferError> {
    let out = to.path;
    if out.exists() {
        return Err(TransferError::Exists(out.to_owned()));
    }
    let tx = store
        .conn_mut()
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("begin export"))?;
    let (export_id, target, found) = {
        let cols = super::ITEM_COLUMNS;
        let (export_id, target, query, arg) = match rows {
            ExportRows::Target(t) => (
                format!(
                    "{}-{}",
                    chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                ),
                (*t).to_owned(),
                format!(
                    "SELECT {cols} FROM outbox WHERE destination = ?1 AND state = 'pending'
                     AND export_id IS NULL AND kind IN ('{KIND_INDIVIDUAL}', '{KIND_GROUP_MEMBER}', '{KIND_BLOCK}')
                     ORDER BY id"
                ),
                destination(t),
            ),
            ExportRows::Again(id) => {
                use rusqlite::OptionalExtension as _;
                let target: Option<String> = tx
                    .query_row("SELECT target FROM exports WHERE id = ?1", [id], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(sql("read export"))?;
                let target = target.ok_or_else(|| TransferError::NothingLeft((*id).to_owned()))?;
                (
                    (*id).to_owned(),
                    target,
                    format!(
                        "SELECT {cols} FROM outbox WHERE export_id = ?1 AND state = 'pending'
                         ORDER BY id"
                    ),
                    (*id).to_owned(),
                )
            }
        };
        let mut st = tx.prepare(&query).map_err(sql("read rows to export"))?;
        let found = st
            .query_map([&arg], super::item_from_row)
            .and_then(Iterator::collect::<Result<Vec<Item>, _>>)
            .map_err(sql("read rows to export"))?;
        (export_id, target, found)
    };
    if found.is_empty() {
        return Err(match rows {
            ExportRows::Target(t) => TransferError::NothingToExport {
                target: (*t).to_owned(),
            },
            ExportRows::Again(id) => TransferError::NothingLeft((*id).to_owned()),
        });
    }
    let ids: Vec<i64> = found.iter().map(|i| i.id).collect();
    let row_count = i64::try_from(ids.len()).unwrap_or(i64::MAX);
    let mut items = Vec::with_capacity(found.len());
    let (mut individuals, mut group_members, mut blocks, mut with_keys) = (0, 0, 0, 0);
    for item in found {
        let id = item.id;
        let (_, work) = decode(item, cipher).map_err(|bad| TransferError::Unreadable(bad.1))?;
        items.push(match work {
            Work::Individual(_, p) => {
                let IndividualPayload { enrollment, .. } = *p;
                individuals += 1;
                with_keys += usize::from(enrollment.attestation.symmetric_key.is_some());
                ExportItem::Individual {
                    outbox_id: id,
                    enrollment: Box::new(enrollment),
                }
            }
            Work::GroupMember(i, GroupMemberPayload { group_id, .. }) => {
                group_members += 1;
                ExportItem::GroupMember {
                    outbox_id: id,
                    registration_id: i.item_key,
                    group_id,
                }
            }
            Work::Block(_, p) => {
                let BlockPayload {
                    registration_id,
                    attestation,
                    ..
                } = *p;
                blocks += 1;
                ExportItem::Block {
                    outbox_id: id,
                    registration_id,
                    attestation: attestation.map(Box::new),
                }
            }
        });
    }
    let header = Header {
        format: EXPORT_FORMAT.into(),
        version: VERSION,
        export_id: export_id.clone(),
        station: station.to_string(),
        target: target.clone(),
        id_scope: id_scope(&target),
        written_at: now_utc(),
    };
    if with_keys > 0 && to.recipients.is_empty() && !to.in_clear {
        return Err(TransferError::KeysInClear(with_keys));
    }
    let sha256 = write_file(out, &header, &items, to.recipients)?;
    drop(items);
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let again = matches!(rows, ExportRows::Again(_));
    if again {
        tx.execute(
            "UPDATE exports SET file_name = ?2, sha256 = ?3, row_count = ?4 WHERE id = ?1",
            params![export_id, file_name, sha256, row_count],
        )
        .map_err(sql("record export"))?;
    } else {
        tx.execute(
            "INSERT INTO exports (id, target, created_at, created_by, file_name, sha256, row_count)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                export_id,
                target,
                header.written_at,
                actor,
                file_name,
                sha256,
                row_count
            ],
        )
        .map_err(sql("record export"))?;
        let mut st = tx
            .prepare("UPDATE outbox SET export_id = ?1 WHERE id = ?2")
            .map_err(sql("mark exported rows"))?;
        for id in &ids {
            st.execute(params![export_id, id])
                .map_err(sql("mark exported rows"))?;
        }
    }
    audit::append(
        &tx,
        station,
        &AuditEvent {
            actor,
            event: if again {
                "outbox.export-again"
            } else {
                "outbox.export"
            },
            subject: &export_id,
            details: serde_json::json!({
                "target": target,
                "file": file_name,
                "sha256": sha256,
                "rows": ids.len(),
                "individual_enrollments": individuals,
                "group_members": group_members,
                "blocks": blocks,
                "with_keys": with_keys,
            }),
        },
    )?;
    tx.commit().map_err(sql("commit export"))?;
    Ok(ExportSummary {
        export_id,
        target,
        file: out.to_owned(),
        sha256,
        individuals,
        group_members,
        blocks,
        with_keys,
        encrypted: !to.recipients.is_empty(),
    })
}

/// What a delivery did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliverySummary {
    /// Rows DPS now holds.
    pub delivered: usize,
    /// Of those, enrollments DPS held already as the station's.
    pub recovered: usize,
    /// Rows not delivered (back in the station's queue once the receipt is applied).
    pub retrying: usize,
    /// Rows in conflict.
    pub conflicts: usize,
    /// Bulk calls sent.
    pub bulk_calls: usize,
}

/// Delivers an export's rows to DPS through `client`, exactly as the uploader would (bulk
/// creates of at most `batch`; once DPS is down, the rest are not tried), and writes the
/// receipt to `receipt`. The receipt is written whatever the outcomes.
pub async fn deliver(
    client: &ServiceClient,
    export: TransferFile<ExportItem>,
    batch: usize,
    receipt: &Path,
) -> Result<DeliverySummary, TransferError> {
    if receipt.exists() {
        return Err(TransferError::Exists(receipt.to_owned()));
    }
    let target = export.header.target.clone();
    let batch = batch.clamp(1, dps::wire::MAX_BULK_ITEMS);
    let mut out: Vec<ReceiptItem> = Vec::with_capacity(export.items.len());
    let mut summary = DeliverySummary::default();
    let mut individuals: Vec<(i64, IndividualEnrollment)> = Vec::new();
    let mut members: Vec<(i64, String, String)> = Vec::new();
    let mut blocks: Vec<(i64, BlockPayload)> = Vec::new();
    for it in export.items {
        match it {
            ExportItem::Block {
                outbox_id,
                registration_id,
                attestation,
            } => blocks.push((
                outbox_id,
                BlockPayload {
                    target: target.clone(),
                    registration_id,
                    attestation: attestation.map(|a| *a),
                },
            )),
            ExportItem::Individual {
                outbox_id,
                enrollment,
            } => individuals.push((outbox_id, *enrollment)),
            ExportItem::GroupMember {
                outbox_id,
                registration_id,
                group_id,
            } => members.push((outbox_id, registration_id, group_id)),
        }
    }
    let mut down: Option<String> = None;
    for chunk in individuals.chunks(batch) {
        let enrollments: Vec<IndividualEnrollment> = chunk.iter().map(|(_, e)| e.clone()).collect();
        let outcomes = deliver_bulk(
            client,
            &target,
            &enrollments,
            &mut down,
            &mut summary.bulk_calls,
        )
        .await;
        for ((id, e), o) in chunk.iter().zip(outcomes) {
            out.push(ReceiptItem::from_outcome(
                *id,
                e.registration_id.as_str(),
                o,
            ));
        }
    }
    if !members.is_empty() {
        let groups: Vec<&str> = members.iter().map(|(_, _, g)| g.as_str()).collect();
        let outcomes = member_outcomes(client, &target, &groups, down.as_deref()).await;
        for ((id, rid, _), o) in members.iter().zip(outcomes) {
            out.push(ReceiptItem::from_outcome(*id, rid, o));
        }
    }
    // Blocks last, as the uploader sends them: an enrollment created above is disabled here.
    for (id, p) in &blocks {
        let o = deliver_block(client, &target, p, &mut down).await;
        out.push(ReceiptItem::from_outcome(*id, &p.registration_id, o));
    }
    for r in &out {
        match r {
            ReceiptItem::Delivered { recovered, .. } => {
                summary.delivered += 1;
                summary.recovered += usize::from(*recovered);
            }
            ReceiptItem::Retry { .. } => summary.retrying += 1,
            ReceiptItem::Conflict { .. } => summary.conflicts += 1,
        }
    }
    let header = Header {
        format: RECEIPT_FORMAT.into(),
        version: VERSION,
        written_at: now_utc(),
        ..export.header
    };
    write_file(receipt, &header, &out, &[])?;
    Ok(summary)
}

/// What applying a receipt did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReceiptSummary {
    /// The export answered.
    pub export_id: String,
    /// Rows recorded as delivered, retried later, or in conflict.
    pub report: UploadReport,
    /// Receipt rows left alone: not (or no longer) travelling in this export.
    pub skipped: Vec<String>,
    /// Rows of the export the receipt says nothing about: they still travel.
    pub still_travelling: i64,
}

/// Applies a receipt in one transaction: each row still travelling in its export gets the
/// outcome the uploader would have recorded. A row the receipt sends back to the queue (or to
/// a supervisor) leaves the export; the uploader or a later export takes it.
pub fn apply_receipt(
    store: &mut Store,
    station: &StationId,
    receipt: TransferFile<ReceiptItem>,
    backoff: &Backoff,
    actor: &str,
) -> Result<ReceiptSummary, TransferError> {
    use rusqlite::OptionalExtension as _;
    let h = &receipt.header;
    if h.station != station.as_str() {
        return Err(TransferError::OtherStation {
            found: h.station.clone(),
            ours: station.to_string(),
        });
    }
    let tx = store
        .conn_mut()
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("begin receipt"))?;
    let known: Option<Option<String>> = tx
        .query_row(
            "SELECT receipt_at FROM exports WHERE id = ?1",
            [&h.export_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql("read export"))?;
    let Some(receipt_at) = known else {
        return Err(TransferError::UnknownExport(h.export_id.clone()));
    };
    let mut summary = ReceiptSummary {
        export_id: h.export_id.clone(),
        ..ReceiptSummary::default()
    };
    let dest = destination(&h.target);
    for r in receipt.items {
        let (id, key) = r.row();
        let row = super::get(&tx, id)?;
        let why = match &row {
            None => Some("no such outbox row"),
            Some(i) if i.destination != dest || !i.item_key.eq_ignore_ascii_case(key) => {
                Some("the station's row is for something else")
            }
            Some(i) if i.export_id.as_deref() != Some(h.export_id.as_str()) => {
                Some("not in this export")
            }
            Some(i) if i.state == RowState::Done => Some("delivered already"),
            Some(i) if i.state == RowState::Conflict => Some("in conflict already"),
            Some(_) => None,
        };
        let Some(item) = row.filter(|_| why.is_none()) else {
            summary
                .skipped
                .push(format!("#{id} {key}: {}", why.unwrap_or_default()));
            continue;
        };
        let outcome = r.into_outcome();
        if !matches!(outcome, Outcome::Delivered { .. }) {
            tx.execute("UPDATE outbox SET export_id = NULL WHERE id = ?1", [id])
                .map_err(sql("take row out of its export"))?;
        }
        apply_outcome(&tx, station, item, outcome, backoff, &mut summary.report)?;
    }
    let applied = summary.report.delivered + summary.report.retrying + summary.report.conflicts;
    if applied == 0
        && let Some(at) = receipt_at
    {
        return Err(TransferError::AlreadyApplied {
            id: h.export_id.clone(),
            at,
        });
    }
    summary.still_travelling = tx
        .query_row(
            "SELECT count(*) FROM outbox WHERE export_id = ?1 AND state = 'pending'",
            [&h.export_id],
            |r| r.get(0),
        )
        .map_err(sql("count rows still travelling"))?;
    let now = now_utc();
    tx.execute(
        "UPDATE exports SET receipt_at = ?2 WHERE id = ?1",
        params![h.export_id, now],
    )
    .map_err(sql("record receipt"))?;
    audit::append(
        &tx,
        station,
        &AuditEvent {
            actor,
            event: "outbox.receipt",
            subject: &h.export_id,
            details: serde_json::json!({
                "target": h.target,
                "receipt_sha256": receipt.sha256,
                "delivered": summary.report.delivered,
                "recovered": summary.report.recovered,
                "retrying": summary.report.retrying,
                "conflicts": summary.report.conflicts,
                "skipped": summary.skipped.len(),
                "still_travelling": summary.still_travelling,
            }),
        },
    )?;
    tx.commit().map_err(sql("commit receipt"))?;
    crate::line::units::committed();
    Ok(summary)
}
