//! Registration on a unit's behalf: the end-of-line check of the unit's flow ("the unit, or the
//! station on its behalf, registers and the assigned hub is recorded"), made by the station
//! with a credential it can use without the unit:
//!
//! - a member of a symmetric-key group: its key derived again inside the HSM from the group
//!   key (`keys::derive_device_key`, as the line derived it);
//! - a unit with its own random symmetric key: the key read back from DPS's enrollment (the
//!   station erased its sealed copy once DPS held it; the service API hands it out, as `az`
//!   does, to whoever holds the service connection string);
//! - a unit whose X.509 key lives in its own PKCS#11 secure element, while the element is
//!   reachable (the unit on its fixture): the station logs in to the unit's token as the line
//!   did, and the TLS handshake's signature is made in the element
//!   ([`crate::hsm::tls::TokenTlsKey`]); the certificate presented is the one stored in the
//!   element, with the station's issuing CA certificate.
//!
//! A TPM unit registers through its TPM (`station tpm register` on the fixture), and an X.509
//! unit that made its key over the serial link with the private key only it holds: the station
//! cannot register those by itself.
//!
//! DPS's answer is recorded as the registration check records it ([`check::record`]): the
//! unit turns `registered` at its hub. The registration itself and what DPS said are audited
//! (`unit.register`, or `tpm.register` for the TPM command), whether DPS assigned the unit or
//! refused it. A symmetric key exists in the clear only in this process's memory, on its way
//! into the SAS token; it is never logged, printed or stored. An element's key never leaves
//! the element.

use std::sync::Arc;
use std::time::Duration;

use dps::client::ClientError;
use dps::client::device::{ClientKey, DeviceClient, DeviceCredential, DeviceOptions};
use dps::sas::SharedAccessKey;
use dps::wire::DeviceRegistrationState;
use rusqlite::{Connection, OptionalExtension as _};

use super::check::{self, Answer, Candidate, Finding};
use crate::config::Config;
use crate::element::{ElementAddress, KEY_LABEL, open_token};
use crate::enroll::profile::{self, Attestation, Enrollment};
use crate::home::Home;
use crate::hsm::Hsm;
use crate::hsm::tls::TokenTlsKey;
use crate::ids::StationId;
use crate::line::report;
use crate::line::state::UnitState;
use crate::line::units::{self, UnitStoreError};
use crate::line::worker::error_text;
use crate::store::{Store, sql};

/// Why the station did not register a unit on its behalf.
#[derive(Debug, thiserror::Error)]
pub enum OnBehalfError {
    /// A TPM unit answers DPS's challenge in its own TPM.
    #[error(
        "unit {serial} has a TPM: only its TPM can answer DPS's challenge; with the unit on a fixture, run `station tpm register --tcti <the fixture's TCTI>`"
    )]
    Tpm {
        /// Serial.
        serial: String,
    },
    /// An X.509 unit's private key never leaves the unit.
    #[error(
        "unit {serial} ({kind}) registers with its own private key, which only the unit holds: it registers itself (in the field, or at an end-of-line test), and `station registrations` then records its hub"
    )]
    OwnKey {
        /// Serial.
        serial: String,
        /// Attestation kind.
        kind: String,
    },
    /// The unit has no attestation kind recorded (it never got that far).
    #[error("unit {serial} has no attestation recorded: it was not provisioned")]
    NoAttestation {
        /// Serial.
        serial: String,
    },
    /// DPS does not hold the unit's enrollment yet.
    #[error(
        "unit {serial} is {state}: DPS does not hold its enrollment yet, so it cannot register (see `station upload --status`)"
    )]
    NotUploaded {
        /// Serial.
        serial: String,
        /// Its state, in words.
        state: String,
    },
    /// The unit was scrapped: it must not register.
    #[error(
        "unit {serial} was scrapped ({reason}): DPS is told to refuse it, and the station does not register it"
    )]
    Scrapped {
        /// Serial.
        serial: String,
        /// Why it was scrapped.
        reason: String,
    },
    /// No unit has this serial.
    #[error("no unit with serial {serial}")]
    NoUnit {
        /// Serial.
        serial: String,
    },
    /// The unit has no registration ID.
    #[error("unit {serial} has no registration ID")]
    NoRegistrationId {
        /// Serial.
        serial: String,
    },
    /// The unit's registration ID is not one DPS accepts (altered by hand).
    #[error("unit {serial}'s registration ID is not valid for DPS")]
    BadRegistrationId {
        /// Serial.
        serial: String,
        /// Why.
        #[source]
        source: dps::IdError,
    },
    /// The unit was enrolled with several targets and none was named.
    #[error("unit {serial} was enrolled with several DPS targets ({all}): name one with --target")]
    WhichTarget {
        /// Serial.
        serial: String,
        /// Its targets.
        all: String,
    },
    /// The unit was not enrolled with the target named.
    #[error("unit {serial} was not enrolled with DPS target {target} (it was with: {all})")]
    NotThatTarget {
        /// Serial.
        serial: String,
        /// The target named.
        target: String,
        /// Its targets.
        all: String,
    },
    /// The target is not reachable from this station.
    #[error(
        "DPS target {target} has delivery = \"export\": DPS is not reachable from this station, so unit {serial} cannot register from here"
    )]
    ExportOnly {
        /// Serial.
        serial: String,
        /// Target.
        target: String,
    },
    /// The target is not usable.
    #[error(transparent)]
    Target(#[from] super::TargetError),
    /// The unit's product is no longer configured, so its group is not known.
    #[error(
        "unit {serial}'s product {product} is not among the products in {dir}: its enrollment group is not known"
    )]
    NoProduct {
        /// Serial.
        serial: String,
        /// Product.
        product: String,
        /// Products directory.
        dir: String,
    },
    /// The products could not be read.
    #[error("reading the product profiles failed")]
    Products(#[source] profile::ProfileError),
    /// The unit's product is no longer a symmetric-key group product.
    #[error(
        "unit {serial}'s product {product} is no longer enrolled as a symmetric-key group: the key the unit holds cannot be derived"
    )]
    ProductChanged {
        /// Serial.
        serial: String,
        /// Product.
        product: String,
    },
    /// The HSM could not be used.
    #[error("the HSM could not be used")]
    Hsm(#[source] Box<crate::ca::CaError>),
    /// The unit's element could not be reached or logged in to (it is reachable only while the
    /// unit is on its fixture).
    #[error(
        "unit {serial}'s secure element could not be used (it is reachable only while the unit is on its fixture)"
    )]
    Element {
        /// Serial.
        serial: String,
        /// Cause.
        #[source]
        source: Box<crate::element::ElementError>,
    },
    /// The element's key could not be used.
    #[error("unit {serial}'s secure element {token}: its provisioning key could not be used")]
    ElementKey {
        /// Serial.
        serial: String,
        /// Token (or module).
        token: String,
        /// Cause.
        #[source]
        source: Box<crate::hsm::HsmError>,
    },
    /// The element holds no certificate for its key.
    #[error("unit {serial}'s secure element {token} holds no certificate for its provisioning key")]
    NoElementCertificate {
        /// Serial.
        serial: String,
        /// Token.
        token: String,
    },
    /// The unit's key could not be derived in the HSM.
    #[error("deriving unit {serial}'s key in the HSM failed")]
    Derive {
        /// Serial.
        serial: String,
        /// Cause (never the key).
        #[source]
        source: crate::keys::KeyError,
    },
    /// DPS did not hand out the unit's key.
    #[error("reading unit {serial}'s key from its enrollment in DPS target {target} failed")]
    KeyFromDps {
        /// Serial.
        serial: String,
        /// Target.
        target: String,
        /// Cause.
        #[source]
        source: Box<ClientError>,
    },
    /// DPS's enrollment has no usable primary key.
    #[error("DPS target {target} holds no usable primary key for unit {serial}'s enrollment")]
    NoKeyInDps {
        /// Serial.
        serial: String,
        /// Target.
        target: String,
    },
    /// The registration could not be made (DPS not reached): nothing changed in DPS, and
    /// nothing was recorded.
    #[error("registering unit {serial} with DPS target {target} failed (nothing was recorded)")]
    Register {
        /// Serial.
        serial: String,
        /// Target.
        target: String,
        /// Cause.
        #[source]
        source: Box<ClientError>,
    },
    /// The runtime of the DPS client could not start.
    #[error("starting the DPS client failed")]
    Runtime(#[source] std::io::Error),
    /// Recording in the database failed.
    #[error(transparent)]
    Record(#[from] UnitStoreError),
    /// Reading the database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// How the station can register a unit of this attestation kind on its behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Its key derived again in the HSM from its group's key.
    DerivedInHsm,
    /// Its own key, read back from its enrollment in DPS.
    KeyFromDps,
    /// Its X.509 key in its own PKCS#11 secure element, signing in there.
    ElementKey,
}

/// The way for a unit with attestation kind `attestation`, or why there is none.
pub fn way(serial: &str, attestation: Option<&str>) -> Result<Way, OnBehalfError> {
    match attestation {
        Some("symmetric-group") => Ok(Way::DerivedInHsm),
        Some("symmetric-individual") => Ok(Way::KeyFromDps),
        Some("x509-pkcs11") => Ok(Way::ElementKey),
        Some("tpm") => Err(OnBehalfError::Tpm {
            serial: serial.to_owned(),
        }),
        Some(kind) => Err(OnBehalfError::OwnKey {
            serial: serial.to_owned(),
            kind: kind.to_owned(),
        }),
        None => Err(OnBehalfError::NoAttestation {
            serial: serial.to_owned(),
        }),
    }
}

/// A registration made on a unit's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The unit's serial.
    pub serial: String,
    /// The target it registered with.
    pub target: String,
    /// DPS's answer in words: `Ok` when it assigned the unit a hub, `Err` with why not.
    pub said: Result<String, String>,
    /// What the station's record says now.
    pub recorded: Recorded,
}

/// Where the unit stands in the station's record after DPS's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// It turned `registered` now (it was `uploaded`, or registered at another hub).
    NewlyRegistered,
    /// It was recorded as registered at that hub already (by an earlier registration, or by
    /// `station serve`'s check a moment before).
    AlreadyRegistered,
    /// DPS did not assign it: it stays as it was.
    Unchanged,
}

/// What the station will register: the unit, found able to register from here.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Serial.
    pub serial: String,
    /// Product (a group member's group, an element's token come from its profile).
    pub product: String,
    /// The fixture of its last run (which may override how its element is reached).
    pub fixture: Option<String>,
    /// Registration ID.
    pub registration_id: dps::RegistrationId,
    /// The DPS target.
    pub target: String,
    /// With what.
    pub way: Way,
}

/// DPS's answer to a registration: in words (`Ok` when it assigned the unit a hub, `Err` with
/// why not), and its registration record when it gave one.
pub type Said = (Result<String, String>, Option<DeviceRegistrationState>);

/// Finds whether and how the station can register unit `serial` on its behalf (reads only).
/// `target`: the DPS target, needed only when the unit was enrolled with several.
pub fn plan(
    conn: &Connection,
    cfg: &Config,
    serial: &str,
    target: Option<&str>,
) -> Result<Plan, OnBehalfError> {
    let unit = units::by_serial(conn, serial)?.ok_or_else(|| OnBehalfError::NoUnit {
        serial: serial.to_owned(),
    })?;
    if let UnitState::Scrapped { reason, .. } = &unit.state {
        return Err(OnBehalfError::Scrapped {
            serial: serial.to_owned(),
            reason: reason.clone(),
        });
    }
    let way = way(serial, unit.attestation.as_deref())?;
    if !matches!(
        unit.state,
        UnitState::Uploaded { .. } | UnitState::Registered { .. }
    ) {
        return Err(OnBehalfError::NotUploaded {
            serial: serial.to_owned(),
            state: report::describe_state(&unit.state),
        });
    }
    let rid = unit
        .registration_id
        .ok_or_else(|| OnBehalfError::NoRegistrationId {
            serial: serial.to_owned(),
        })?;
    let registration_id =
        dps::RegistrationId::new(rid).map_err(|source| OnBehalfError::BadRegistrationId {
            serial: serial.to_owned(),
            source,
        })?;
    let target = pick_target(conn, cfg, unit.id, serial, target)?;
    Ok(Plan {
        serial: serial.to_owned(),
        product: unit.product,
        fixture: unit.fixture,
        registration_id,
        target,
        way,
    })
}

/// What the unit registers with when a token has it: a group member's key derived again in
/// the HSM `hsm`, or an element's key with its certificate (`None` for a unit whose key comes
/// from DPS, [`Way::KeyFromDps`]). Blocking PKCS#11 calls.
pub fn hsm_credential(
    home: &Home,
    cfg: &Config,
    hsm: &Hsm,
    plan: &Plan,
) -> Result<Option<DeviceCredential>, OnBehalfError> {
    Ok(match plan.way {
        Way::DerivedInHsm => Some(DeviceCredential::SymmetricKey(derived_key(
            home, cfg, hsm, plan,
        )?)),
        Way::ElementKey => Some(DeviceCredential::X509Key(element_key(
            home, cfg, hsm, plan,
        )?)),
        Way::KeyFromDps => None,
    })
}

/// Registers the planned unit with DPS, with `credential` ([`hsm_credential`]) or, for a unit
/// whose key DPS holds, the key read back from its enrollment. `wait`: how long to keep trying
/// while DPS does not answer, throttles or is still assigning. A refusal is an answer (`Ok`);
/// an `Err` changed nothing in DPS and is not to be recorded.
pub async fn ask(
    home: &Home,
    cfg: &Config,
    plan: &Plan,
    credential: Option<DeviceCredential>,
    wait: Duration,
) -> Result<Said, OnBehalfError> {
    let t = super::target(cfg, &plan.target)?;
    let credential = match credential {
        Some(c) => c,
        None => DeviceCredential::SymmetricKey(key_from_dps(home, cfg, plan, wait).await?),
    };
    let failed = |source| OnBehalfError::Register {
        serial: plan.serial.clone(),
        target: plan.target.clone(),
        source: Box::new(source),
    };
    let client = DeviceClient::new(
        &t.global_endpoint,
        &t.id_scope,
        credential,
        DeviceOptions {
            extra_ca_file: t.ca_file.as_ref().map(|p| home.resolve(p)),
            max_wait: wait,
            ..DeviceOptions::default()
        },
    )
    .map_err(failed)?;
    let rid = plan.registration_id.as_str();
    match client.register(&plan.registration_id, None).await {
        Ok(d) => Ok((d.outcome(rid), d.registration_state)),
        // DPS answered with a refusal (a wrong key, no enrollment, a disabled one): what it
        // said is recorded.
        Err(e @ ClientError::Service { .. }) => Ok((Err(error_text(&e)), None)),
        Err(source) => Err(failed(source)),
    }
}

/// Records DPS's answer to the planned unit's registration ([`record`], event
/// `unit.register`) and tells what it made of it.
pub fn record_said(
    store: &mut Store,
    station: &StationId,
    actor: &str,
    plan: &Plan,
    (said, state): Said,
) -> Result<Registered, OnBehalfError> {
    let recorded = record(
        store,
        station,
        actor,
        "unit.register",
        &plan.target,
        plan.registration_id.as_str(),
        &said,
        state,
    )?;
    Ok(Registered {
        serial: plan.serial.clone(),
        target: plan.target.clone(),
        said,
        recorded: match recorded {
            Some((_, true)) => Recorded::NewlyRegistered,
            Some((_, false)) => Recorded::AlreadyRegistered,
            None => Recorded::Unchanged,
        },
    })
}

/// All of it from the command line ([`plan`], [`hsm_credential`], [`ask`] and
/// [`record_said`]), for one unit or each of a lot's in turn: the HSM is opened once, when a
/// unit first needs it.
pub struct Registrar<'a> {
    home: &'a Home,
    cfg: &'a Config,
    /// The DPS target, needed only for a unit enrolled with several.
    target: Option<&'a str>,
    actor: &'a str,
    /// How long to keep trying while DPS does not answer, throttles or is still assigning.
    wait: Duration,
    hsm: Option<Hsm>,
}

impl<'a> Registrar<'a> {
    /// Registrations by `actor` with `target` (when named), each waiting at most `wait`.
    pub fn new(
        home: &'a Home,
        cfg: &'a Config,
        target: Option<&'a str>,
        actor: &'a str,
        wait: Duration,
    ) -> Self {
        Self {
            home,
            cfg,
            target,
            actor,
            wait,
            hsm: None,
        }
    }

    /// Registers unit `serial` on its behalf and records DPS's answer. An `Ok` may carry
    /// DPS's refusal ([`Registered::said`]); an `Err` changed nothing.
    pub fn register(
        &mut self,
        store: &mut Store,
        serial: &str,
    ) -> Result<Registered, OnBehalfError> {
        let (home, cfg) = (self.home, self.cfg);
        let plan = plan(store.conn(), cfg, serial, self.target)?;
        let credential = match plan.way {
            Way::KeyFromDps => None,
            Way::DerivedInHsm | Way::ElementKey => {
                let hsm = match &mut self.hsm {
                    Some(hsm) => hsm,
                    none => none.insert(
                        crate::ca::service::open_hsm(home, cfg)
                            .map_err(|e| OnBehalfError::Hsm(e.into()))?,
                    ),
                };
                hsm_credential(home, cfg, hsm, &plan)?
            }
        };
        let rt = super::runtime().map_err(OnBehalfError::Runtime)?;
        let said = rt.block_on(ask(home, cfg, &plan, credential, self.wait))?;
        record_said(store, &cfg.station_id(), self.actor, &plan, said)
    }
}

/// The target to register the unit with: `named`, which must be one of the unit's, or its only
/// one; never an export-only one.
fn pick_target(
    conn: &Connection,
    cfg: &Config,
    unit_id: i64,
    serial: &str,
    named: Option<&str>,
) -> Result<String, OnBehalfError> {
    let all = report::dps_targets(conn, unit_id).map_err(sql("read the unit's DPS targets"))?;
    let listed = || all.join(", ");
    let target = match (named, all.as_slice()) {
        (Some(t), _) if all.iter().any(|a| a == t) => t.to_owned(),
        (Some(t), _) => {
            return Err(OnBehalfError::NotThatTarget {
                serial: serial.to_owned(),
                target: t.to_owned(),
                all: listed(),
            });
        }
        (None, [one]) => one.clone(),
        (None, _) => {
            return Err(OnBehalfError::WhichTarget {
                serial: serial.to_owned(),
                all: listed(),
            });
        }
    };
    if cfg.dps.export_only(&target) {
        return Err(OnBehalfError::ExportOnly {
            serial: serial.to_owned(),
            target,
        });
    }
    Ok(target)
}

/// The unit's product as its profile reads now.
fn product_of(home: &Home, cfg: &Config, plan: &Plan) -> Result<profile::Product, OnBehalfError> {
    let dir = home.resolve(&cfg.line.products_dir);
    profile::load_dir(&dir)
        .map_err(OnBehalfError::Products)?
        .into_iter()
        .find(|p| p.name.as_str() == plan.product)
        .ok_or_else(|| OnBehalfError::NoProduct {
            serial: plan.serial.clone(),
            product: plan.product.clone(),
            dir: dir.display().to_string(),
        })
}

/// An element's key and certificate, reached as the line reached them (the product's module,
/// token and PIN, as the unit's fixture overrides them): the handshake signs in the element.
fn element_key(
    home: &Home,
    cfg: &Config,
    station_hsm: &Hsm,
    plan: &Plan,
) -> Result<ClientKey, OnBehalfError> {
    let serial = &plan.serial;
    let p = product_of(home, cfg, plan)?;
    let Attestation::X509Pkcs11 {
        module,
        token,
        pin_file,
        pin_env,
    } = &p.profile.attestation
    else {
        return Err(OnBehalfError::ProductChanged {
            serial: serial.clone(),
            product: plan.product.clone(),
        });
    };
    let fixture = plan.fixture.as_ref().and_then(|f| cfg.fixtures.get(f));
    let address = ElementAddress::new(
        fixture
            .and_then(|f| f.pkcs11_module.clone())
            .unwrap_or_else(|| module.clone()),
        fixture
            .and_then(|f| f.pkcs11_token.clone())
            .unwrap_or_else(|| token.clone()),
        pin_env.as_ref(),
        pin_file.as_ref(),
    );
    let element_err = |source| OnBehalfError::Element {
        serial: serial.clone(),
        source: Box::new(source),
    };
    let hsm_err = |token: &str| {
        let token = token.to_owned();
        move |source| OnBehalfError::ElementKey {
            serial: serial.clone(),
            token: token.clone(),
            source: Box::new(source),
        }
    };
    let module = address
        .module(station_hsm, |p| home.resolve(p))
        .map_err(hsm_err(&address.module.display().to_string()))?;
    let (token, session) = open_token(
        &module,
        address.token_pattern(serial).as_deref(),
        &address.pin,
        |p| home.resolve(p),
    )
    .map_err(element_err)?;
    let key = session.find_ec_key(KEY_LABEL).map_err(hsm_err(&token))?;
    let leaf = session
        .certificates_with_id(&key.id)
        .map_err(hsm_err(&token))?
        .into_iter()
        .next()
        .ok_or_else(|| OnBehalfError::NoElementCertificate {
            serial: serial.clone(),
            token: token.clone(),
        })?;
    let issuing = crate::ca::service::read_cert(&crate::ca::service::cert_path(home, cfg))
        .map_err(|e| OnBehalfError::Hsm(e.into()))?;
    Ok(ClientKey {
        chain: vec![leaf.into(), issuing.into()],
        key: Arc::new(TokenTlsKey::new(session, key)),
    })
}

/// A group member's key, derived again in the HSM from the group key of its product's group.
fn derived_key(
    home: &Home,
    cfg: &Config,
    hsm: &Hsm,
    plan: &Plan,
) -> Result<SharedAccessKey, OnBehalfError> {
    let (serial, product) = (&plan.serial, &plan.product);
    let p = product_of(home, cfg, plan)?;
    let (Attestation::SymmetricGroup, Enrollment::Group { group_id }) =
        (&p.profile.attestation, &p.profile.enrollment)
    else {
        return Err(OnBehalfError::ProductChanged {
            serial: serial.clone(),
            product: product.clone(),
        });
    };
    let session = crate::ca::service::open_ca_token(hsm, home, cfg)
        .map_err(|e| OnBehalfError::Hsm(e.into()))?;
    let key = crate::keys::derive_device_key(&session, group_id, plan.registration_id.as_str())
        .map_err(|source| OnBehalfError::Derive {
            serial: serial.clone(),
            source,
        })?;
    Ok(SharedAccessKey::from_bytes(key.expose().to_vec()))
}

/// An individual unit's own key, as its enrollment in DPS holds it.
async fn key_from_dps(
    home: &Home,
    cfg: &Config,
    plan: &Plan,
    wait: Duration,
) -> Result<SharedAccessKey, OnBehalfError> {
    // One read: a few quick attempts, none longer than the wait.
    let client = super::client_with(home, cfg, &plan.target, |o| {
        o.retry.max_attempts = 3;
        o.retry.min_backoff = Duration::from_secs(1);
        o.request_timeout = wait.clamp(Duration::from_secs(1), Duration::from_secs(30));
    })?;
    let a = client
        .enrollment_attestation(&plan.registration_id)
        .await
        .map_err(|source| OnBehalfError::KeyFromDps {
            serial: plan.serial.clone(),
            target: plan.target.clone(),
            source: Box::new(source),
        })?;
    a.symmetric_key
        .and_then(|s| s.primary_key)
        .and_then(|k| SharedAccessKey::from_base64(k.expose()).ok())
        .ok_or_else(|| OnBehalfError::NoKeyInDps {
            serial: plan.serial.clone(),
            target: plan.target.clone(),
        })
}

/// Records DPS's answer to a registration the station made itself (`event`: `unit.register`,
/// `tpm.register`) in one transaction: an audit entry with what DPS said, and, when a unit of
/// this station has registration ID `rid` and DPS holds its enrollment (it is `uploaded` or
/// `registered`), DPS's record for it as the registration check records it (an assigned unit
/// turns `registered`). Returns the serial of the unit DPS assigned, and whether it turned
/// registered now (`false`: it was recorded there already).
#[allow(clippy::too_many_arguments)]
pub fn record(
    store: &mut Store,
    station: &StationId,
    actor: &str,
    event: &str,
    target: &str,
    rid: &str,
    said: &Result<String, String>,
    state: Option<DeviceRegistrationState>,
) -> Result<Option<(String, bool)>, UnitStoreError> {
    let tx = store
        .conn_mut()
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql("begin recording the registration"))?;
    let unit: Option<(i64, String, String, String)> = tx
        .query_row(
            "SELECT id, serial, registration_id, state FROM units WHERE registration_id = ?1",
            [rid],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(sql("find the unit with the registration ID"))?;
    crate::store::audit::append(
        &tx,
        station,
        &crate::store::audit::AuditEvent {
            actor,
            event,
            subject: rid,
            details: serde_json::json!({
                "target": target,
                "serial": unit.as_ref().map(|u| u.1.as_str()),
                "assigned": said.is_ok(),
                "outcome": match said { Ok(l) | Err(l) => l.as_str() },
            }),
        },
    )?;
    let mut registered = None;
    // Only a unit DPS holds the enrollment of (uploaded, or registered before) is recorded,
    // as the registration check picks them.
    if let (Some((unit_id, serial, registration_id, unit_state)), Some(state)) = (unit, state)
        && matches!(unit_state.as_str(), "uploaded" | "registered")
    {
        let candidate = Candidate {
            unit_id,
            serial: serial.clone(),
            registration_id,
            target: target.to_owned(),
        };
        let found = check::record(
            &tx,
            station,
            actor,
            &[candidate],
            &[Answer::Record(Box::new(state))],
        )?;
        if let Some(Finding::Assigned { newly, .. }) = found.first() {
            registered = Some((serial, *newly));
        }
    }
    tx.commit()
        .map_err(sql("commit the registration's record"))?;
    Ok(registered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_whose_key_the_station_can_use_have_a_way_and_the_others_are_told_who_registers_them() {
        assert_eq!(
            way("SY-1", Some("symmetric-group")).ok(),
            Some(Way::DerivedInHsm)
        );
        assert_eq!(
            way("SK-1", Some("symmetric-individual")).ok(),
            Some(Way::KeyFromDps)
        );
        let said = |kind: Option<&str>| match way("U-1", kind) {
            Err(e) => e.to_string(),
            Ok(w) => panic!("{kind:?} has a way: {w:?}"),
        };
        assert_eq!(
            said(Some("tpm")),
            "unit U-1 has a TPM: only its TPM can answer DPS's challenge; with the unit on a fixture, run `station tpm register --tcti <the fixture's TCTI>`"
        );
        assert_eq!(way("GW-1", Some("x509-pkcs11")).ok(), Some(Way::ElementKey));
        assert_eq!(
            said(Some("x509-link")),
            "unit U-1 (x509-link) registers with its own private key, which only the unit holds: it registers itself (in the field, or at an end-of-line test), and `station registrations` then records its hub"
        );
        assert_eq!(
            said(None),
            "unit U-1 has no attestation recorded: it was not provisioned"
        );
    }
}
