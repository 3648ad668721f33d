//! One TPM session: connect by TCTI string, read (or create) the EK and SRK, read the EK
//! certificate from NV.
//!
//! The session runs on its own thread and the caller waits with a deadline: a TPM that
//! serves another client (swtpm and raw `/dev/tpm0` serve one at a time) makes a second
//! connection block forever inside tpm2-tss, which has no connect timeout we can set here.
//! On timeout the thread is abandoned; it ends when the TPM answers or the process exits.

use std::str::FromStr as _;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tss_esapi::Context;
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, DefaultKey, ek};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::{CapabilityType, PropertyTag};
use tss_esapi::handles::{
    KeyHandle, NvIndexTpmHandle, ObjectHandle, PersistentTpmHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    CapabilityData, Digest, MaxNvBuffer, Public, PublicBuilder, PublicKeyRsa,
    PublicRsaParametersBuilder, RsaExponent, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;

use super::TpmError;
use super::config::{EkAlgorithm, EkPolicy, SRK_HANDLE, SrkPolicy};
use super::public::PublicArea;

/// How to read a unit's TPM.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Read the EK, or create it when absent.
    pub ek: EkPolicy,
    /// Persistent handle of the EK.
    pub ek_handle: u32,
    /// Key type of a created EK.
    pub ek_create_algorithm: EkAlgorithm,
    /// Read the SRK, or create it when absent.
    pub srk: SrkPolicy,
    /// Longest wait for the whole session, EK creation aside.
    pub timeout: Duration,
    /// Longest wait for creating the EK.
    pub ek_create_timeout: Duration,
}

impl Default for ReadOptions {
    fn default() -> Self {
        super::TpmConfig::default().read_options()
    }
}

/// Identity strings the TPM reports about itself (TPM2_PT_MANUFACTURER and friends).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TpmProperties {
    /// Four-character TCG vendor ID, e.g. `IFX`, `STM`, `IBM`.
    pub manufacturer: String,
    /// The vendor string (up to 16 characters), e.g. `SLB9670`, `SW TPM`.
    pub vendor: String,
    /// Firmware version words 1 and 2.
    pub firmware_version: (u32, u32),
    /// Largest NV read or write the TPM accepts in one command (TPM2_PT_NV_BUFFER_MAX).
    pub nv_buffer_max: u32,
}

/// Everything read from one unit's TPM, before any judgement on it.
#[derive(Debug, Clone)]
pub struct TpmRead {
    /// What the TPM says it is.
    pub properties: TpmProperties,
    /// Where the EK was read.
    pub ek_handle: u32,
    /// The EK's TPM2B_PUBLIC.
    pub endorsement_key: PublicArea,
    /// Whether the station created the EK in this session.
    pub ek_created: bool,
    /// The SRK's TPM2B_PUBLIC, when one is persisted.
    pub storage_root_key: Option<PublicArea>,
    /// Whether the station created the SRK in this session.
    pub srk_created: bool,
    /// The NV index the EK certificate belongs at.
    pub ek_certificate_index: u32,
    /// The EK certificate's NV contents, when that index exists.
    pub ek_certificate: Option<Vec<u8>>,
}

// Only events that change the deadline, and the result, go through the channel: waking the
// waiting thread at every stage would cost a context switch per TPM command.
enum Event {
    LongOperationStarted(&'static str),
    LongOperationDone,
    Done(Box<Result<TpmRead, TpmError>>),
}

type Job = Box<dyn FnOnce() + Send>;

/// Idle session threads, each waiting for its next job.
static IDLE_WORKERS: Mutex<Vec<mpsc::Sender<Job>>> = Mutex::new(Vec::new());

/// Runs `job` on an idle session thread, or a new one. Threads are reused because starting
/// one per unit costs more than a TPM command on a busy machine; a thread stuck on a TPM that
/// never answers is simply not returned to the idle list.
fn run_on_worker(job: Job) -> Result<(), TpmError> {
    let idle = IDLE_WORKERS.lock().ok().and_then(|mut v| v.pop());
    let job = match idle {
        Some(worker) => match worker.send(job) {
            Ok(()) => return Ok(()),
            Err(mpsc::SendError(job)) => job,
        },
        None => job,
    };
    let (tx, rx) = mpsc::channel::<Job>();
    let me = tx.clone();
    thread::Builder::new()
        .name("tpm-session".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                job();
                match IDLE_WORKERS.lock() {
                    Ok(mut v) => v.push(me.clone()),
                    Err(_) => return,
                }
            }
        })
        .map_err(TpmError::SpawnSession)?;
    tx.send(job).map_err(|_| TpmError::SessionLost)
}

/// How often progress of a long operation (EK creation) is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Reads a unit's TPM at `tcti` (see the module doc for the timeout behaviour).
pub fn read(tcti: &str, opts: &ReadOptions) -> Result<TpmRead, TpmError> {
    let (tx, rx) = mpsc::channel();
    let worker_tcti = tcti.to_owned();
    let worker_opts = opts.clone();
    let stage_cell = Arc::new(Mutex::new("connecting"));
    let worker_stage = Arc::clone(&stage_cell);
    run_on_worker(Box::new(move || {
        let r = session(&worker_tcti, &worker_opts, &tx, &worker_stage);
        let _ = tx.send(Event::Done(Box::new(r)));
    }))?;

    let started = Instant::now();
    let mut deadline = started + opts.timeout;
    let mut stage = "connecting";
    let mut long_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if long_since.is_none() {
            stage = stage_cell.lock().map_or(stage, |s| *s);
        }
        if now >= deadline {
            return Err(TpmError::Timeout {
                tcti: tcti.to_owned(),
                stage,
                secs: now.duration_since(started).as_secs(),
            });
        }
        match rx.recv_timeout((deadline - now).min(PROGRESS_EVERY)) {
            Ok(Event::LongOperationStarted(s)) => {
                stage = s;
                long_since = Some(Instant::now());
                deadline = Instant::now() + opts.ek_create_timeout;
                tracing::info!(tcti, "{s}; a real TPM may take minutes");
            }
            Ok(Event::LongOperationDone) => {
                long_since = None;
                deadline = Instant::now() + opts.timeout;
            }
            Ok(Event::Done(r)) => return *r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(since) = long_since {
                    tracing::info!(
                        tcti,
                        elapsed_s = since.elapsed().as_secs(),
                        limit_s = opts.ek_create_timeout.as_secs(),
                        "still {stage}"
                    );
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(TpmError::SessionLost),
        }
    }
}

/// Connects to the TPM at `tcti` and reads what it says it is, within `timeout`: the
/// reachability check of `station check`.
pub fn probe(tcti: &str, timeout: Duration) -> Result<TpmProperties, TpmError> {
    let (tx, rx) = mpsc::channel();
    let worker_tcti = tcti.to_owned();
    run_on_worker(Box::new(move || {
        let r = connect(&worker_tcti).and_then(|mut ctx| read_properties(&mut ctx));
        let _ = tx.send(r);
    }))?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(TpmError::Timeout {
            tcti: tcti.to_owned(),
            stage: "connecting",
            secs: timeout.as_secs(),
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(TpmError::SessionLost),
    }
}

pub(super) fn connect(tcti: &str) -> Result<Context, TpmError> {
    let conf = TctiNameConf::from_str(tcti).map_err(|source| TpmError::ParseTcti {
        tcti: tcti.to_owned(),
        source,
    })?;
    Context::new(conf).map_err(|source| TpmError::Connect {
        tcti: tcti.to_owned(),
        source,
    })
}

fn session(
    tcti: &str,
    opts: &ReadOptions,
    tx: &mpsc::Sender<Event>,
    stage_cell: &Mutex<&'static str>,
) -> Result<TpmRead, TpmError> {
    let stage = |s| {
        if let Ok(mut cell) = stage_cell.lock() {
            *cell = s;
        }
    };
    let mut ctx = connect(tcti)?;

    stage("reading the TPM properties");
    let properties = read_properties(&mut ctx)?;

    stage("listing persistent handles");
    let persistent = list_handles(&mut ctx, 0x8100_0000).map_err(TpmError::ListHandles)?;

    stage("reading the EK");
    let (endorsement_key, ek_created) = if persistent.contains(&opts.ek_handle) {
        (read_persistent(&mut ctx, opts.ek_handle)?, false)
    } else {
        match opts.ek {
            EkPolicy::Read => {
                return Err(TpmError::EkAbsent {
                    handle: opts.ek_handle,
                });
            }
            EkPolicy::CreateIfAbsent => {
                let _ = tx.send(Event::LongOperationStarted("creating the EK"));
                let r = create_ek(&mut ctx, opts.ek_handle, opts.ek_create_algorithm);
                let _ = tx.send(Event::LongOperationDone);
                (r?, true)
            }
        }
    };

    stage("reading the SRK");
    let (storage_root_key, srk_created) = if persistent.contains(&SRK_HANDLE) {
        (Some(read_persistent(&mut ctx, SRK_HANDLE)?), false)
    } else {
        match opts.srk {
            SrkPolicy::Read => (None, false),
            SrkPolicy::CreateIfAbsent => {
                let _ = tx.send(Event::LongOperationStarted("creating the SRK"));
                let r = create_srk(&mut ctx);
                let _ = tx.send(Event::LongOperationDone);
                (Some(r?), true)
            }
        }
    };

    stage("reading the EK certificate");
    let ek_certificate_index = endorsement_key
        .key()
        .ek_certificate_index()
        .ok_or_else(|| TpmError::UnsupportedEk {
            handle: opts.ek_handle,
            detail: endorsement_key.key().describe(),
        })?;
    let ek_certificate = match read_nv(&mut ctx, ek_certificate_index, properties.nv_buffer_max) {
        Ok(der) => Some(der),
        // Only a failed read needs the NV handle list, to tell "no certificate" from a
        // failure: one round trip fewer per unit on the usual path.
        Err(e) => {
            let nv = list_handles(&mut ctx, 0x0100_0000).map_err(TpmError::ListHandles)?;
            if nv.contains(&ek_certificate_index) {
                return Err(e);
            }
            None
        }
    };

    Ok(TpmRead {
        properties,
        ek_handle: opts.ek_handle,
        endorsement_key,
        ek_created,
        storage_root_key,
        srk_created,
        ek_certificate_index,
        ek_certificate,
    })
}

/// Four big-endian bytes as text, without trailing NULs or padding.
fn property_text(words: &[u32]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    String::from_utf8_lossy(&bytes)
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_properties(ctx: &mut Context) -> Result<TpmProperties, TpmError> {
    // One call for TPM2_PT_MANUFACTURER (0x105) through TPM2_PT_NV_BUFFER_MAX (0x12c): every
    // command is a round trip, and this step runs once per unit.
    let (data, _) = ctx
        .get_capability(CapabilityType::TpmProperties, 0x105, 0x12c - 0x105 + 1)
        .map_err(TpmError::ReadProperties)?;
    let CapabilityData::TpmProperties(list) = data else {
        return Err(TpmError::UnexpectedAnswer("TPM properties"));
    };
    let get = |tag: PropertyTag| {
        list.iter()
            .find(|p| p.property() == tag)
            .map_or(0, |p| p.value())
    };
    Ok(TpmProperties {
        manufacturer: property_text(&[get(PropertyTag::Manufacturer)]),
        vendor: property_text(&[
            get(PropertyTag::VendorString1),
            get(PropertyTag::VendorString2),
            get(PropertyTag::VendorString3),
            get(PropertyTag::VendorString4),
        ]),
        firmware_version: (
            get(PropertyTag::FirmwareVersion1),
            get(PropertyTag::FirmwareVersion2),
        ),
        nv_buffer_max: get(PropertyTag::NvBufferMax),
    })
}

/// All handles of the kind `first` belongs to (persistent objects, NV indices), paging
/// through the TPM's answer: a TPM returns a bounded list and sets `moreData` for the rest.
pub(super) fn list_handles(ctx: &mut Context, first: u32) -> Result<Vec<u32>, tss_esapi::Error> {
    list_handles_paged(ctx, first, 64)
}

/// [`list_handles`] asking for `page` handles per call.
pub(super) fn list_handles_paged(
    ctx: &mut Context,
    first: u32,
    page: u32,
) -> Result<Vec<u32>, tss_esapi::Error> {
    let kind = first >> 24;
    let mut out = Vec::new();
    let mut next = first;
    loop {
        let (data, more) = ctx.get_capability(CapabilityType::Handles, next, page)?;
        let CapabilityData::Handles(list) = data else {
            break;
        };
        let page: Vec<u32> = list.into_inner().into_iter().map(u32::from).collect();
        let Some(&last) = page.last() else {
            break;
        };
        out.extend(page.into_iter().filter(|h| h >> 24 == kind));
        if !more || last >> 24 != kind || last == u32::MAX {
            break;
        }
        next = last + 1;
    }
    Ok(out)
}

pub(super) fn read_persistent(ctx: &mut Context, handle: u32) -> Result<PublicArea, TpmError> {
    let read_err = |source| TpmError::ReadKey { handle, source };
    let tpm_handle = PersistentTpmHandle::new(handle).map_err(read_err)?;
    let mut obj = ctx
        .tr_from_tpm_public(TpmHandle::Persistent(tpm_handle))
        .map_err(read_err)?;
    let public = ctx.read_public(KeyHandle::from(obj));
    // The ESYS object for a persistent handle is only a local record: close it, never flush.
    let _ = ctx.tr_close(&mut obj);
    let (public, _, _) = public.map_err(read_err)?;
    PublicArea::from_public(&public).map_err(|e| TpmError::UnsupportedEk {
        handle,
        detail: e.to_string(),
    })
}

fn persist(ctx: &mut Context, transient: KeyHandle, handle: u32) -> Result<(), tss_esapi::Error> {
    let target = Persistent::Persistent(PersistentTpmHandle::new(handle)?);
    let r = ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.evict_control(Provision::Owner, ObjectHandle::from(transient), target)
    });
    // Flush the transient copy in every case: swtpm has no resource manager and would
    // otherwise keep it until TPM_RC_OBJECT_MEMORY.
    let flushed = ctx.flush_context(ObjectHandle::from(transient));
    let mut persistent = r?;
    let _ = ctx.tr_close(&mut persistent);
    flushed
}

fn create_ek(ctx: &mut Context, handle: u32, alg: EkAlgorithm) -> Result<PublicArea, TpmError> {
    let selection = match alg {
        EkAlgorithm::Rsa2048 => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        EkAlgorithm::EccP256 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        EkAlgorithm::EccP384 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP384),
    };
    let key = ek::create_ek_object_2(ctx, selection, DefaultKey).map_err(TpmError::CreateEk)?;
    persist(ctx, key, handle).map_err(TpmError::PersistKey)?;
    read_persistent(ctx, handle)
}

/// The SRK template of Azure's C and Node SDKs (`GetSrkTemplate()`, `_srkTemplate`):
/// RSA-2048, SHA-256, AES-128-CFB, attributes 0x00030472, empty policy and unique.
pub fn srk_template() -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::default())
        .with_rsa_parameters(
            PublicRsaParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                RsaKeyBits::Rsa2048,
                RsaExponent::default(),
            )
            .build()?,
        )
        .with_rsa_unique_identifier(PublicKeyRsa::default())
        .build()
}

pub(super) fn create_srk(ctx: &mut Context) -> Result<PublicArea, TpmError> {
    let template = srk_template().map_err(TpmError::CreateSrk)?;
    let created = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Owner, template, None, None, None, None)
        })
        .map_err(TpmError::CreateSrk)?;
    persist(ctx, created.key_handle, SRK_HANDLE).map_err(TpmError::PersistKey)?;
    read_persistent(ctx, SRK_HANDLE)
}

/// Reads a whole NV index in chunks no larger than the TPM's NV buffer, `nv_buffer_max`
/// (TPM2_PT_NV_BUFFER_MAX; 0 when the TPM did not say, then the PC Client minimum of 1024).
pub(super) fn read_nv(
    ctx: &mut Context,
    index: u32,
    nv_buffer_max: u32,
) -> Result<Vec<u8>, TpmError> {
    let nv_err = |source| TpmError::ReadNv { index, source };
    let tpm_handle = NvIndexTpmHandle::new(index).map_err(nv_err)?;
    let mut obj = ctx
        .tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle))
        .map_err(nv_err)?;
    let chunk = match usize::try_from(nv_buffer_max) {
        Ok(0) | Err(_) => 1024,
        Ok(n) => n.min(MaxNvBuffer::MAX_SIZE),
    };
    let r = read_nv_open(ctx, obj, chunk);
    let _ = ctx.tr_close(&mut obj);
    r.map_err(nv_err)
}

fn read_nv_open(
    ctx: &mut Context,
    obj: ObjectHandle,
    chunk: usize,
) -> Result<Vec<u8>, tss_esapi::Error> {
    let (public, _) = ctx.nv_read_public(obj.into())?;
    let size = public.data_size();
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let n = chunk.min(size - out.len());
        let (Ok(n16), Ok(offset)) = (u16::try_from(n), u16::try_from(out.len())) else {
            return Err(tss_esapi::Error::WrapperError(
                tss_esapi::WrapperErrorKind::WrongParamSize,
            ));
        };
        // EK certificate indices are readable with their own (empty) auth value.
        let part = ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.nv_read(NvAuth::NvIndex(obj.into()), obj.into(), n16, offset)
        })?;
        if part.is_empty() {
            break;
        }
        out.extend_from_slice(&part);
    }
    Ok(out)
}
