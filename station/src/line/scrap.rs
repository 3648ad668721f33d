//! Scrapping a unit: taking a unit out of production after it passed (it failed a later test,
//! was damaged or destroyed) or after it failed and will not be retried, so that the identity
//! the station gave it can never be used.
//!
//! In one transaction, audited (`unit.scrap`): the unit moves to `scrapped` (final: a scan of
//! its serial is refused from then on); its certificates still issued or live are `revoked`;
//! its enrollment rows that never left (pending or in conflict, not travelling in an export)
//! leave the outbox, each audited (`outbox.cancelled`); and for each DPS target that holds, or
//! may hold, something that lets the unit register, a `dps.block` row is queued. The uploader
//! (or an export, for an air-gapped target) then disables the unit's individual enrollment in
//! DPS, or, for a unit a group covers, creates a disabled individual enrollment for its
//! registration ID, which is how DPS refuses one unit of a group (`outbox/dps.rs`, `block`).
//! A unit of a group-enrolled product that failed after its key or certificate reached it is
//! blocked in its group's target too: the group would let it register.
//! DPS's registration record and the device in its IoT hub stay: the hub is not the station's.

use dps::wire::AttestationMechanism;
use rusqlite::{OptionalExtension as _, TransactionBehavior, params};

use super::state::UnitState;
use super::units::{self, Facts, UnitStoreError};
use crate::ids::StationId;
use crate::outbox::dps as outbox_dps;
use crate::store::audit::{self, AuditEvent};
use crate::store::{Store, sql};

/// The longest reason kept.
const REASON_MAX: usize = 200;

/// Why a unit could not be scrapped (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum ScrapError {
    /// No unit with that serial.
    #[error("no unit with serial {0:?} in this station's database")]
    NoUnit(String),
    /// The reason is missing or too long.
    #[error(
        "give the reason the unit is scrapped (1 to {REASON_MAX} characters), e.g. --reason \"failed final RF test\""
    )]
    Reason,
    /// The unit is on a fixture right now.
    #[error(
        "unit {serial} is being provisioned (state {state}); abort or finish its run first, then scrap it"
    )]
    Busy {
        /// The unit.
        serial: String,
        /// Its state.
        state: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] UnitStoreError),
}

impl From<crate::store::StoreError> for ScrapError {
    fn from(e: crate::store::StoreError) -> Self {
        ScrapError::Store(e.into())
    }
}

/// What scrapping a unit did.
#[derive(Debug, Clone, Default)]
pub struct Scrapped {
    /// The unit.
    pub serial: String,
    /// Set when the unit was scrapped before: its earlier reason (nothing changed now).
    pub already: Option<String>,
    /// The state it was scrapped from.
    pub from: String,
    /// Serials (hex) of the certificates revoked.
    pub revoked: Vec<String>,
    /// Outbox rows that never reached DPS and were cancelled.
    pub cancelled: Vec<i64>,
    /// Blocks queued: (DPS target, registration ID).
    pub blocks: Vec<(String, String)>,
    /// The hub and device ID DPS had assigned a registered unit (it stays in that hub).
    pub registered_at: Option<(String, String)>,
}

/// The DPS target whose enrollment group covers units of `product`, if it is group-enrolled:
/// a unit of it that failed after its key or certificate reached it can register through the
/// group though the station never queued it, so scrapping it blocks it there too.
#[must_use]
pub fn group_target(product: &crate::enroll::profile::Product) -> Option<&str> {
    match product.profile.enrollment {
        crate::enroll::profile::Enrollment::Group { .. } => Some(&product.profile.dps_target),
        crate::enroll::profile::Enrollment::Individual => None,
    }
}

/// Scraps the unit `serial` for `reason`, by `actor`, in one transaction (see the module doc).
/// `group_target` is [`group_target`] of the unit's product.
pub fn scrap(
    store: &mut Store,
    (station, actor): (&StationId, &str),
    serial: &str,
    reason: &str,
    group_target: Option<&str>,
) -> Result<Scrapped, ScrapError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > REASON_MAX {
        return Err(ScrapError::Reason);
    }
    let tx = store
        .conn_mut()
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("begin scrapping the unit"))?;
    let unit = units::by_serial(&tx, serial)?.ok_or_else(|| ScrapError::NoUnit(serial.into()))?;
    let mut done = Scrapped {
        serial: unit.serial.clone(),
        from: unit.state.name().to_owned(),
        ..Scrapped::default()
    };
    match &unit.state {
        UnitState::Scrapped { reason, .. } => {
            done.already = Some(reason.clone());
            return Ok(done);
        }
        UnitState::Registered { hub, device_id } => {
            done.registered_at = Some((hub.clone(), device_id.clone()));
        }
        s if !s.scrappable() => {
            return Err(ScrapError::Busy {
                serial: unit.serial,
                state: s.name().to_owned(),
            });
        }
        _ => {}
    }
    let mut targets =
        super::report::dps_targets(&tx, unit.id).map_err(sql("read the unit's DPS targets"))?;
    if let Some(t) = group_target
        && !targets.iter().any(|have| have == t)
    {
        targets.push(t.to_owned());
    }
    // The newest certificate, for a group member's disabled enrollment (X.509 groups).
    let newest_cert: Option<Vec<u8>> = tx
        .query_row(
            "SELECT der FROM certificates WHERE unit_id = ?1 AND status IN ('issued', 'live')
             ORDER BY id DESC LIMIT 1",
            [unit.id],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql("read the unit's certificate"))?;
    done.revoked = tx
        .prepare(
            "UPDATE certificates SET status = 'revoked', revoked_at = ?2
             WHERE unit_id = ?1 AND status IN ('issued', 'live') RETURNING serial_hex",
        )
        .and_then(|mut st| {
            st.query_map(rusqlite::params![unit.id, crate::store::now_utc()], |r| {
                r.get(0)
            })?
            .collect()
        })
        .map_err(sql("revoke the unit's certificates"))?;
    done.cancelled = tx
        .prepare(
            "DELETE FROM outbox WHERE unit_id = ?1 AND state IN ('pending', 'conflict')
             AND export_id IS NULL AND kind IN (?2, ?3) RETURNING id",
        )
        .and_then(|mut st| {
            st.query_map(
                params![
                    unit.id,
                    outbox_dps::KIND_INDIVIDUAL,
                    outbox_dps::KIND_GROUP_MEMBER
                ],
                |r| r.get(0),
            )?
            .collect()
        })
        .map_err(sql("cancel the unit's undelivered enrollment"))?;
    for id in &done.cancelled {
        audit::append(
            &tx,
            station,
            &AuditEvent {
                actor,
                event: "outbox.cancelled",
                subject: &unit.serial,
                details: serde_json::json!({"outbox_id": id, "why": "unit scrapped before DPS received it"}),
            },
        )?;
    }
    let rid = unit.registration_id.clone().unwrap_or_default();
    for target in targets {
        let individual: Option<String> = tx
            .query_row(
                "SELECT enrollment_id FROM enrollments
                 WHERE unit_id = ?1 AND dps_target = ?2 AND kind = 'individual'",
                params![unit.id, target],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read the unit's enrollment"))?;
        let payload = match individual {
            Some(enrollment_id) => {
                // DPS holds it, or will once a travelling export is delivered, unless its
                // only row was just cancelled.
                let left: i64 = tx
                    .query_row(
                        "SELECT count(*) FROM outbox WHERE unit_id = ?1 AND destination = ?2
                         AND kind = ?3",
                        params![
                            unit.id,
                            outbox_dps::destination(&target),
                            outbox_dps::KIND_INDIVIDUAL
                        ],
                        |r| r.get(0),
                    )
                    .map_err(sql("read the unit's uploads"))?;
                if left == 0 {
                    tx.execute(
                        "UPDATE enrollments SET status = 'cancelled', updated_at = ?3
                         WHERE unit_id = ?1 AND dps_target = ?2 AND kind = 'individual'",
                        params![unit.id, target, crate::store::now_utc()],
                    )
                    .map_err(sql("cancel the unit's enrollment"))?;
                    continue;
                }
                outbox_dps::BlockPayload {
                    target: target.clone(),
                    registration_id: enrollment_id,
                    attestation: None,
                }
            }
            None => {
                // A group member: the group lets it register whatever happened to its row (or
                // to its run: a unit that failed after its key or certificate reached it).
                if rid.is_empty() {
                    continue;
                }
                let attestation = match (unit.attestation.as_deref(), &newest_cert) {
                    (Some("symmetric-group"), _) => AttestationMechanism::symmetric_key(None, None),
                    (_, Some(der)) => {
                        AttestationMechanism::x509_client(crate::ca::verify::to_pem(&[der]))
                    }
                    // No certificate and no key: nothing it could register with.
                    _ => continue,
                };
                outbox_dps::BlockPayload {
                    target: target.clone(),
                    registration_id: rid.clone(),
                    attestation: Some(attestation),
                }
            }
        };
        let json = serde_json::to_vec(&payload).map_err(|e| {
            sql("encode the block")(rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
        })?;
        crate::outbox::enqueue(
            &tx,
            &crate::outbox::NewItem {
                destination: &outbox_dps::destination(&target),
                kind: outbox_dps::KIND_BLOCK,
                item_key: &payload.registration_id,
                unit_id: Some(unit.id),
                payload: &json,
            },
            None,
        )?;
        done.blocks.push((target, payload.registration_id));
    }
    units::transition(
        &tx,
        station,
        actor,
        unit.id,
        scrapped(reason, &unit.state),
        &Facts::default(),
    )?;
    audit::append(
        &tx,
        station,
        &AuditEvent {
            actor,
            event: "unit.scrap",
            subject: &unit.serial,
            details: serde_json::json!({
                "reason": reason,
                "from": done.from,
                "revoked_certificates": done.revoked,
                "cancelled_outbox_rows": done.cancelled,
                "blocks": done.blocks.iter().map(|(t, r)| serde_json::json!({"target": t, "registration_id": r})).collect::<Vec<_>>(),
            }),
        },
    )?;
    tx.commit().map_err(sql("commit scrapping the unit"))?;
    units::committed();
    Ok(done)
}

fn scrapped(reason: &str, from: &UnitState) -> UnitState {
    UnitState::Scrapped {
        reason: reason.to_owned(),
        from: from.name().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;

    /// A store with four units, each with a run: SX-1 an uploaded X.509 unit with its own
    /// enrollment (delivered) and a live certificate; SG-1 an uploaded member of an X.509
    /// group (its row delivered) with a live certificate; SF-1 failed before anything was
    /// recorded; SB-1 on its fixture (key-ready).
    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::create(&d.path().join("s.db"), &StoreConfig::default()).unwrap();
        s.conn()
            .execute_batch(
                "INSERT INTO units (id, serial, product, registration_id, attestation, state, state_data, created_at, updated_at) VALUES
                   (1, 'SX-1', 'p', 'SX-1', 'x509-link', 'uploaded', '{\"state\":\"uploaded\",\"etag\":\"e1\"}', 't', 't'),
                   (2, 'SG-1', 'p', 'SG-1', 'x509-link', 'uploaded', '{\"state\":\"uploaded\",\"etag\":\"e2\"}', 't', 't'),
                   (3, 'SF-1', 'p', NULL, 'x509-link', 'failed', '{\"state\":\"failed\",\"step\":\"attest\",\"reason\":\"no answer\"}', 't', 't'),
                   (4, 'SB-1', 'p', 'SB-1', 'x509-link', 'key-ready', '{\"state\":\"key-ready\",\"registration_id\":\"SB-1\",\"material\":\"m\"}', 't', 't'),
                   (5, 'SY-1', 'p', 'sy-1', 'symmetric-group', 'failed', '{\"state\":\"failed\",\"step\":\"verify\",\"reason\":\"no proof\"}', 't', 't');
                 INSERT INTO runs (id, unit_id, fixture, started_at) VALUES (1, 1, 'f', 't'), (2, 2, 'f', 't'), (3, 3, 'f', 't'), (4, 4, 'f', 't'), (5, 5, 'f', 't');
                 INSERT INTO certificates (issuer_key_id, serial_hex, unit_id, registration_id, subject, profile, not_before, not_after, fingerprint_sha256, der, status, issued_at) VALUES
                   ('k', '0a', 1, 'SX-1', 'CN=SX-1', 'device', 't', 't', 'f1', x'3001', 'live', 't'),
                   ('k', '0b', 2, 'SG-1', 'CN=SG-1', 'device', 't', 't', 'f2', x'3002', 'live', 't'),
                   ('k', '0c', 1, 'SX-1', 'CN=SX-1', 'device', 't', 't', 'f3', x'3003', 'superseded', 't');
                 INSERT INTO enrollments (unit_id, dps_target, kind, enrollment_id, body, status, updated_at) VALUES
                   (1, 'local', 'individual', 'SX-1', '{}', 'uploaded', 't');
                 INSERT INTO outbox (destination, kind, item_key, payload, created_at, unit_id, state) VALUES
                   ('dps:local', 'dps.individual-enrollment', 'SX-1', x'7b7d', 't', 1, 'done'),
                   ('dps:local', 'dps.group-member', 'SG-1', x'7b7d', 't', 2, 'done');",
            )
            .unwrap();
        (d, s)
    }

    fn blocks(s: &Store) -> Vec<(String, outbox_dps::BlockPayload)> {
        s.conn()
            .prepare("SELECT item_key, payload FROM outbox WHERE kind = 'dps.block' ORDER BY id")
            .unwrap()
            .query_map([], |r| {
                let payload: Vec<u8> = r.get(1)?;
                Ok((r.get(0)?, serde_json::from_slice(&payload).unwrap()))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn status(s: &Store, serial_hex: &str) -> String {
        s.conn()
            .query_row(
                "SELECT status FROM certificates WHERE serial_hex = ?1",
                [serial_hex],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[test]
    fn a_unit_with_its_own_enrollment_has_it_disabled_and_its_live_certificate_revoked() {
        let (_d, mut s) = store();
        let st = StationId::new("st").unwrap();
        let done = scrap(&mut s, (&st, "sup"), "SX-1", "  cracked  ", None).unwrap();
        assert_eq!(done.from, "uploaded");
        assert_eq!(done.revoked, ["0a"]);
        assert!(done.cancelled.is_empty());
        assert_eq!(done.blocks, [("local".to_owned(), "SX-1".to_owned())]);
        assert_eq!(status(&s, "0a"), "revoked");
        assert_eq!(status(&s, "0c"), "superseded", "only live or issued ones");
        let queued = blocks(&s);
        assert_eq!(queued.len(), 1);
        assert!(
            queued[0].1.attestation.is_none(),
            "DPS holds its enrollment"
        );
        let u = units::by_serial(s.conn(), "SX-1").unwrap().unwrap();
        assert_eq!(
            u.state,
            UnitState::Scrapped {
                reason: "cracked".into(),
                from: "uploaded".into()
            }
        );
        let again = scrap(&mut s, (&st, "sup"), "SX-1", "other", None).unwrap();
        assert_eq!(again.already.as_deref(), Some("cracked"));
        assert_eq!(blocks(&s).len(), 1, "nothing queued twice");
    }

    #[test]
    fn a_group_member_gets_a_disabled_enrollment_of_its_own_made_with_its_certificate() {
        let (_d, mut s) = store();
        let st = StationId::new("st").unwrap();
        let done = scrap(&mut s, (&st, "sup"), "SG-1", "dropped", None).unwrap();
        assert_eq!(done.revoked, ["0b"]);
        let queued = blocks(&s);
        assert_eq!(queued[0].0, "SG-1");
        let a = queued[0].1.attestation.as_ref().expect("an attestation");
        let pem = a
            .x509
            .as_ref()
            .and_then(|x| x.client_certificates.as_ref())
            .and_then(|c| c.primary.as_ref())
            .and_then(|p| p.certificate.clone())
            .unwrap();
        assert_eq!(pem, crate::ca::verify::to_pem(&[&[0x30, 0x02]]));
    }

    #[test]
    fn a_group_member_that_failed_after_its_key_reached_it_is_blocked_in_its_groups_target() {
        let (_d, mut s) = store();
        let st = StationId::new("st").unwrap();
        let done = scrap(
            &mut s,
            (&st, "sup"),
            "SY-1",
            "key injected, proof failed",
            Some("local"),
        )
        .unwrap();
        assert_eq!(done.from, "failed");
        assert_eq!(done.blocks, [("local".to_owned(), "sy-1".to_owned())]);
        let queued = blocks(&s);
        let a = queued[0].1.attestation.as_ref().expect("an attestation");
        assert!(a.symmetric_key.is_some() && a.x509.is_none());
        // A unit that failed before it had a registration ID has nothing to block.
        let done = scrap(&mut s, (&st, "sup"), "SF-1", "x", Some("local")).unwrap();
        assert!(done.blocks.is_empty());
    }

    #[test]
    fn a_failed_unit_is_scrapped_with_nothing_to_block_and_a_busy_one_is_refused() {
        let (_d, mut s) = store();
        let st = StationId::new("st").unwrap();
        let done = scrap(
            &mut s,
            (&st, "sup"),
            "SF-1",
            "scrapped after rework failed",
            None,
        )
        .unwrap();
        assert_eq!(done.from, "failed");
        assert!(done.blocks.is_empty() && done.revoked.is_empty());
        let busy = scrap(&mut s, (&st, "sup"), "SB-1", "x", None).unwrap_err();
        assert_eq!(
            busy.to_string(),
            "unit SB-1 is being provisioned (state key-ready); abort or finish its run first, then scrap it"
        );
        let none = scrap(&mut s, (&st, "sup"), "NOPE", "x", None).unwrap_err();
        assert_eq!(
            none.to_string(),
            "no unit with serial \"NOPE\" in this station's database"
        );
        let long = "x".repeat(201);
        assert!(matches!(
            scrap(&mut s, (&st, "sup"), "SX-1", &long, None),
            Err(ScrapError::Reason)
        ));
        let u = units::by_serial(s.conn(), "SB-1").unwrap().unwrap();
        assert_eq!(u.state.name(), "key-ready");
        assert!(blocks(&s).is_empty());
    }
}
