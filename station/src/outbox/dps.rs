//! Delivering outbox rows to DPS targets: individual enrollments in bulk `create` operations,
//! group members by confirming their group exists, and blocks of scrapped units (their
//! enrollment disabled, or a disabled one made for a group member) after both. Each row ends
//! a pass delivered (with the enrollment's etag), waiting for a retry (with the reason), or in
//! conflict (DPS holds an enrollment under the same registration ID that the station did not
//! make).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use dps::client::{BulkItemResult, ClientError, ServiceClient};
use dps::wire::{
    AttestationMechanism, AttestationType, BulkMode, IndividualEnrollment, ProvisioningStatus,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Kind of a row holding one individual enrollment (payload: [`IndividualPayload`]).
pub const KIND_INDIVIDUAL: &str = "dps.individual-enrollment";
/// Kind of a row for a unit covered by an enrollment group (payload: [`GroupMemberPayload`]).
pub const KIND_GROUP_MEMBER: &str = "dps.group-member";
/// Kind of a row that blocks a scrapped unit in DPS (payload: [`BlockPayload`]).
pub const KIND_BLOCK: &str = "dps.block";
/// Every kind this deliverer handles.
pub const KINDS: [&str; 3] = [KIND_INDIVIDUAL, KIND_GROUP_MEMBER, KIND_BLOCK];

/// The destination name of a DPS target's rows.
#[must_use]
pub fn destination(target: &str) -> String {
    format!("dps:{target}")
}

/// Payload of a [`KIND_INDIVIDUAL`] row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndividualPayload {
    /// The `[dps.targets.NAME]` to upload to.
    pub target: String,
    /// The enrollment as DPS should hold it (with the unit's keys for symmetric units).
    pub enrollment: IndividualEnrollment,
}

/// Payload of a [`KIND_GROUP_MEMBER`] row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupMemberPayload {
    /// The `[dps.targets.NAME]` holding the group.
    pub target: String,
    /// The enrollment group that covers the unit.
    pub group_id: String,
}

/// Payload of a [`KIND_BLOCK`] row: the unit's registration ID is to be refused by DPS from
/// now on. Its individual enrollment is disabled; a unit covered by a group gets a disabled
/// individual enrollment of its own, made with `attestation` (DPS lets an individual
/// enrollment override, and so block, one unit of a group). No secret is in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockPayload {
    /// The `[dps.targets.NAME]`.
    pub target: String,
    /// The registration ID to block.
    pub registration_id: String,
    /// For a group member: the attestation of the disabled individual enrollment to create
    /// (its certificate; for a symmetric-key unit, no keys: DPS makes its own). `None` for a
    /// unit with its own enrollment, which DPS must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<AttestationMechanism>,
}

/// How one row's delivery ended in this pass.
#[derive(Debug, Clone)]
pub(super) enum Outcome {
    /// DPS holds it; the etag of the enrollment (or group).
    Delivered {
        /// Etag.
        etag: String,
        /// Whether it was ours already in DPS (a 409 resolved by an update).
        recovered: bool,
    },
    /// Try again later.
    Retry {
        /// Why it failed (no secrets).
        error: String,
        /// The service's `Retry-After`, if it gave one.
        retry_after: Option<Duration>,
    },
    /// DPS holds something else under this ID; a supervisor must resolve it.
    Conflict {
        /// What differs and what to do.
        message: String,
        /// Audit details.
        details: serde_json::Value,
    },
}

/// The whole error chain of a client error, one line (no secrets: the client never puts
/// keys in errors).
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

fn retry(target: &str, what: &str, e: &ClientError) -> Outcome {
    Outcome::Retry {
        error: format!("DPS target {target}: {what}: {}", chain(e)),
        retry_after: e.retry_after(),
    }
}

/// Whether the failure says the target cannot be reached or is overloaded now, so the rest of
/// this pass should not call it again.
pub(super) fn target_down(e: &ClientError) -> bool {
    e.is_retryable()
}

/// Delivers up to `batch` individual enrollments of one target with one bulk create; returns
/// one outcome per item, in order, and whether the target is down for the rest of the pass.
async fn deliver_individuals(
    client: &ServiceClient,
    target: &str,
    items: &[IndividualEnrollment],
    bulk_calls: &mut usize,
) -> (Vec<Outcome>, Option<String>) {
    *bulk_calls += 1;
    let results = match client.bulk_enrollments(BulkMode::Create, items).await {
        Ok(r) => r,
        Err(e) => {
            let o = retry(target, "bulk create", &e);
            return (vec![o; items.len()], Some(chain(&e)));
        }
    };
    // A call-level failure carries the HTTP status (< 1000); item errors carry DPS codes.
    let call_failed = results.first().and_then(|r| r.outcome.as_ref().err());
    if let Some(err) = call_failed
        && err.code.is_none_or(|c| c < 1000)
    {
        if err.retryable {
            let o = Outcome::Retry {
                error: format!("DPS target {target}: bulk create failed: {}", err.message),
                retry_after: err.retry_after,
            };
            return (vec![o; items.len()], Some(err.message.clone()));
        }
        // A 400 refuses the whole call for one bad item; any other refusal (401, 403)
        // concerns the call itself and would refuse each item alike.
        if err.code != Some(400) {
            let o = Outcome::Retry {
                error: format!("DPS target {target}: bulk create refused: {}", err.message),
                retry_after: None,
            };
            return (vec![o; items.len()], Some(err.message.clone()));
        }
        if items.len() > 1 {
            // The service refuses a whole bulk call for one bad item: send each alone so the
            // good ones go through and the bad one is named.
            let mut out = Vec::with_capacity(items.len());
            for one in items {
                let (mut o, down) = Box::pin(deliver_individuals(
                    client,
                    target,
                    std::slice::from_ref(one),
                    bulk_calls,
                ))
                .await;
                out.append(&mut o);
                if let Some(d) = down {
                    let rest = items.len() - out.len();
                    let o = Outcome::Retry {
                        error: format!("DPS target {target}: not reached: {d}"),
                        retry_after: None,
                    };
                    out.extend(std::iter::repeat_n(o, rest));
                    return (out, Some(d));
                }
            }
            return (out, None);
        }
    }
    let mut out = Vec::with_capacity(items.len());
    let mut down = None;
    for (e, r) in items.iter().zip(results) {
        if let Some(d) = &down {
            out.push(Outcome::Retry {
                error: format!("DPS target {target}: not reached: {d}"),
                retry_after: None,
            });
            continue;
        }
        let o = after_create(client, target, e, &r).await;
        if let Err(d) = &o {
            down = Some(d.1.clone());
        }
        out.push(o.unwrap_or_else(|(o, _)| o));
    }
    (out, down)
}

/// The rest of one item after its bulk create: read its etag, or resolve a 409.
async fn after_create(
    client: &ServiceClient,
    target: &str,
    ours: &IndividualEnrollment,
    r: &BulkItemResult,
) -> Result<Outcome, (Outcome, String)> {
    let rid = &ours.registration_id;
    match &r.outcome {
        Ok(()) => match client.get_enrollment(rid).await {
            Ok(e) => Ok(delivered(target, rid.as_str(), e.etag, false)),
            // Created but not read back: the next pass gets a 409, finds it ours, and
            // records it then.
            Err(e) if target_down(&e) => Err((
                retry(target, &format!("reading back enrollment {rid}"), &e),
                chain(&e),
            )),
            Err(e) => Ok(retry(target, &format!("reading back enrollment {rid}"), &e)),
        },
        Err(err) if err.code.is_some_and(|c| c / 1000 == 409) => {
            resolve_conflict(client, target, ours).await
        }
        Err(err) => Ok(Outcome::Retry {
            error: format!(
                "DPS target {target}: creating enrollment {rid} failed: {}{}",
                err.message,
                err.code
                    .map(|c| format!(" (DPS error {c})"))
                    .unwrap_or_default()
            ),
            retry_after: None,
        }),
    }
}

fn delivered(target: &str, id: &str, etag: Option<String>, recovered: bool) -> Outcome {
    match etag {
        Some(etag) => Outcome::Delivered { etag, recovered },
        None => Outcome::Retry {
            error: format!("DPS target {target}: {id} came back without an etag"),
            retry_after: None,
        },
    }
}

/// A 409 on create: DPS already holds an enrollment with this registration ID. Ours (the
/// same attestation: the station made it and crashed before recording it) is updated over
/// its etag and counts as delivered; anything else is a conflict for a supervisor.
async fn resolve_conflict(
    client: &ServiceClient,
    target: &str,
    ours: &IndividualEnrollment,
) -> Result<Outcome, (Outcome, String)> {
    let rid = &ours.registration_id;
    let what = format!("resolving the 409 on enrollment {rid}");
    // A 412 means someone changed it between our read and our write: read again.
    for _ in 0..3 {
        let held = match client.get_enrollment(rid).await {
            Ok(e) => e,
            Err(e) if target_down(&e) => return Err((retry(target, &what, &e), chain(&e))),
            Err(e) => return Ok(retry(target, &what, &e)),
        };
        let theirs = match client.enrollment_attestation(rid).await {
            Ok(a) => a,
            Err(e) if target_down(&e) => return Err((retry(target, &what, &e), chain(&e))),
            Err(e) => return Ok(retry(target, &what, &e)),
        };
        if let Some(diff) = differs(&ours.attestation, &theirs) {
            return Ok(conflict(target, rid.as_str(), &held, &diff));
        }
        if !held
            .registration_id
            .as_str()
            .eq_ignore_ascii_case(rid.as_str())
        {
            let diff = Difference {
                dps: format!("registration ID {}", held.registration_id),
                station: format!("registration ID {rid}"),
            };
            return Ok(conflict(target, rid.as_str(), &held, &diff));
        }
        let Some(etag) = held.etag.as_deref() else {
            return Ok(delivered(target, rid.as_str(), None, true));
        };
        match client.create_or_update_enrollment(ours, Some(etag)).await {
            Ok(e) => return Ok(delivered(target, rid.as_str(), e.etag, true)),
            Err(e) if e.status() == Some(412) => {
                tracing::info!(target, registration_id = %rid, "etag changed while updating our enrollment; reading it again");
            }
            Err(e) if target_down(&e) => return Err((retry(target, &what, &e), chain(&e))),
            Err(e) => return Ok(retry(target, &what, &e)),
        }
    }
    Ok(Outcome::Retry {
        error: format!(
            "DPS target {target}: enrollment {rid} changed under every update (412 three times); retrying later"
        ),
        retry_after: None,
    })
}

/// What DPS holds against what the station holds.
struct Difference {
    dps: String,
    station: String,
}

fn conflict(target: &str, rid: &str, held: &IndividualEnrollment, d: &Difference) -> Outcome {
    Outcome::Conflict {
        message: format!(
            "DPS target {target} already holds enrollment {rid} with {}, but the station holds {}: \
             the station did not make it; a supervisor must resolve it (remove or correct the \
             enrollment in DPS",
            d.dps, d.station
        ),
        details: serde_json::json!({
            "target": target,
            "registration_id": rid,
            "dps_holds": d.dps,
            "station_holds": d.station,
            "dps_etag": held.etag,
            "dps_created": held.created_date_time_utc,
        }),
    }
}

fn short_sha256(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

fn describe_kind(k: AttestationType) -> &'static str {
    match k {
        AttestationType::Tpm => "a TPM attestation",
        AttestationType::X509 => "an X.509 attestation",
        AttestationType::SymmetricKey => "a symmetric-key attestation",
        AttestationType::None => "no attestation",
    }
}

/// SHA-256 thumbprints (upper-case hex) of the client certificates, primary then secondary.
fn thumbprints(a: &AttestationMechanism) -> Vec<Option<String>> {
    let Some(certs) = a.x509.as_ref().and_then(|x| x.client_certificates.as_ref()) else {
        return Vec::new();
    };
    [certs.primary.as_ref(), certs.secondary.as_ref()]
        .into_iter()
        .map(|c| {
            let c = c?;
            if let Some(pem) = &c.certificate
                && let Ok((_, p)) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            {
                return Some(hex::encode_upper(Sha256::digest(&p.contents)));
            }
            c.info
                .as_ref()
                .map(|i| i.sha256_thumbprint.to_ascii_uppercase())
        })
        .collect()
}

fn decoded(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .unwrap_or_else(|_| b64.as_bytes().to_vec())
}

/// `None` when DPS holds the same attestation as the station; else what differs (never a key).
fn differs(ours: &AttestationMechanism, theirs: &AttestationMechanism) -> Option<Difference> {
    if ours.kind != theirs.kind {
        return Some(Difference {
            dps: describe_kind(theirs.kind).into(),
            station: describe_kind(ours.kind).into(),
        });
    }
    match ours.kind {
        AttestationType::Tpm => {
            let ek = |a: &AttestationMechanism| {
                a.tpm
                    .as_ref()
                    .map(|t| decoded(&t.endorsement_key))
                    .unwrap_or_default()
            };
            let (o, t) = (ek(ours), ek(theirs));
            (o != t).then(|| Difference {
                dps: format!("TPM EK sha256:{}", short_sha256(&t)),
                station: format!("TPM EK sha256:{}", short_sha256(&o)),
            })
        }
        AttestationType::X509 => {
            let (o, t) = (thumbprints(ours), thumbprints(theirs));
            let show = |v: &[Option<String>]| {
                v.first()
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| "none".into())
            };
            (o != t).then(|| Difference {
                dps: format!("X.509 client certificate thumbprint {}", show(&t)),
                station: format!("X.509 client certificate thumbprint {}", show(&o)),
            })
        }
        AttestationType::SymmetricKey => {
            let keys = |a: &AttestationMechanism| {
                a.symmetric_key
                    .as_ref()
                    .map(|s| (s.primary_key.clone(), s.secondary_key.clone()))
            };
            (keys(ours) != keys(theirs)).then(|| Difference {
                dps: "other symmetric keys (not shown)".into(),
                station: "the unit's symmetric keys".into(),
            })
        }
        AttestationType::None => None,
    }
}

/// One bulk of individual enrollments in a pass over a target: delivered with one bulk create,
/// or, once the target is known to be down (`down`), not tried. A failure that says the target
/// is down sets `down` for the rest of the pass. One outcome per item, in order.
pub(super) async fn deliver_bulk(
    client: &ServiceClient,
    target: &str,
    items: &[IndividualEnrollment],
    down: &mut Option<String>,
    bulk_calls: &mut usize,
) -> Vec<Outcome> {
    if let Some(d) = down {
        return vec![super::uploader::not_reached(target, d); items.len()];
    }
    let (outcomes, now_down) = deliver_individuals(client, target, items, bulk_calls).await;
    *down = now_down;
    outcomes
}

/// Blocks one unit (a [`KIND_BLOCK`] row): its enrollment in DPS read with its attestation
/// and written back disabled over its etag (a 412, someone else's write in between, reads it
/// again); where DPS holds none, a disabled individual enrollment made with the payload's
/// attestation. An enrollment already disabled counts as delivered. Also whether the target
/// is down for the rest of the pass.
async fn block(
    client: &ServiceClient,
    target: &str,
    p: &BlockPayload,
) -> (Outcome, Option<String>) {
    let what = format!("blocking {}", p.registration_id);
    let rid = match dps::RegistrationId::new(&p.registration_id) {
        Ok(r) => r,
        Err(e) => {
            let o = Outcome::Conflict {
                message: format!(
                    "DPS target {target}: cannot block {:?}: {e}",
                    p.registration_id
                ),
                details: serde_json::json!({"target": target, "registration_id": p.registration_id}),
            };
            return (o, None);
        }
    };
    let down = |e: &ClientError| target_down(e).then(|| chain(e));
    for _ in 0..3 {
        let (held, theirs) = match client.get_enrollment(&rid).await {
            Ok(held) => match client.enrollment_attestation(&rid).await {
                Ok(a) => (Some(held), a),
                Err(e) => return (retry(target, &what, &e), down(&e)),
            },
            Err(e) if e.status() == Some(404) => match &p.attestation {
                Some(a) => (None, a.clone()),
                None => {
                    let o = Outcome::Retry {
                        error: format!(
                            "DPS target {target}: {what}: DPS does not hold enrollment {rid} (yet): \
                             the block waits until its enrollment has been delivered"
                        ),
                        retry_after: None,
                    };
                    return (o, None);
                }
            },
            Err(e) => return (retry(target, &what, &e), down(&e)),
        };
        let etag = held.as_ref().and_then(|h| h.etag.clone());
        let mut disabled = match held {
            Some(h) if h.provisioning_status == Some(ProvisioningStatus::Disabled) => {
                return (delivered(target, rid.as_str(), h.etag, false), None);
            }
            Some(h) => h,
            None => IndividualEnrollment::new(rid.clone(), theirs.clone()),
        };
        disabled.attestation = theirs;
        disabled.provisioning_status = Some(ProvisioningStatus::Disabled);
        // Fields DPS sets are not sent back.
        disabled.registration_state = None;
        disabled.etag = None;
        disabled.created_date_time_utc = None;
        disabled.last_updated_date_time_utc = None;
        match client
            .create_or_update_enrollment(&disabled, etag.as_deref())
            .await
        {
            Ok(e) => return (delivered(target, rid.as_str(), e.etag, false), None),
            Err(e) if e.status() == Some(412) => {
                tracing::info!(target, registration_id = %rid, "enrollment changed while blocking it; reading it again");
            }
            Err(e) => return (retry(target, &what, &e), down(&e)),
        }
    }
    let o = Outcome::Retry {
        error: format!(
            "DPS target {target}: enrollment {rid} changed under every write while blocking it (412 three times); retrying later"
        ),
        retry_after: None,
    };
    (o, None)
}

/// One block, as the uploader and an export's delivery send it: not tried once the target is
/// known to be down (`down`, updated when this call finds it down).
pub(super) async fn deliver_block(
    client: &ServiceClient,
    target: &str,
    p: &BlockPayload,
    down: &mut Option<String>,
) -> Outcome {
    if let Some(d) = down {
        return super::uploader::not_reached(target, d);
    }
    let (outcome, now_down) = block(client, target, p).await;
    *down = now_down;
    outcome
}

/// The outcome for each of these group members (by its group id, in order): each group read
/// once; when the target is already known to be down (`down`), not tried.
pub(super) async fn member_outcomes(
    client: &ServiceClient,
    target: &str,
    group_ids: &[&str],
    down: Option<&str>,
) -> Vec<Outcome> {
    let groups: Vec<String> = group_ids
        .iter()
        .map(|g| (*g).to_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let found: HashMap<String, Outcome> = match down {
        Some(d) => groups
            .into_iter()
            .map(|g| (g, super::uploader::not_reached(target, d)))
            .collect(),
        None => group_etags(client, target, &groups).await.0,
    };
    group_ids
        .iter()
        .map(|g| {
            found
                .get(*g)
                .cloned()
                .unwrap_or_else(|| super::uploader::not_reached(target, "no answer"))
        })
        .collect()
}

/// Confirms each group exists in the target; one GET per group, shared by its members.
async fn group_etags(
    client: &ServiceClient,
    target: &str,
    groups: &[String],
) -> (HashMap<String, Outcome>, Option<String>) {
    let mut out = HashMap::new();
    let mut down: Option<String> = None;
    for g in groups {
        if let Some(d) = &down {
            out.insert(
                g.clone(),
                Outcome::Retry {
                    error: format!("DPS target {target}: not reached: {d}"),
                    retry_after: None,
                },
            );
            continue;
        }
        let id = match g.parse::<dps::ids::EnrollmentGroupId>() {
            Ok(id) => id,
            Err(e) => {
                out.insert(
                    g.clone(),
                    Outcome::Retry {
                        error: format!("enrollment group id {g:?} is not valid: {e}"),
                        retry_after: None,
                    },
                );
                continue;
            }
        };
        let o = match client.get_group(&id).await {
            Ok(grp) => delivered(target, g, grp.etag, false),
            Err(e) if e.status() == Some(404) => Outcome::Retry {
                error: format!(
                    "DPS target {target} has no enrollment group {g}: the unit is not covered until \
                     the group exists (the station creates it from the product profile)"
                ),
                retry_after: None,
            },
            Err(e) => {
                if target_down(&e) {
                    down = Some(chain(&e));
                }
                retry(target, &format!("reading enrollment group {g}"), &e)
            }
        };
        out.insert(g.clone(), o);
    }
    (out, down)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use dps::wire::KeyText;

    #[test]
    fn attestations_compare_by_identity_and_never_show_keys() {
        let tpm = |ek: &[u8]| {
            AttestationMechanism::tpm(base64::engine::general_purpose::STANDARD.encode(ek))
        };
        assert!(differs(&tpm(b"ek-1"), &tpm(b"ek-1")).is_none());
        let d = differs(&tpm(b"ek-1"), &tpm(b"ek-2")).unwrap();
        assert!(d.dps.starts_with("TPM EK sha256:") && d.dps != d.station);
        let sym = |k: &str| AttestationMechanism::symmetric_key(Some(KeyText::new(k)), None);
        assert!(differs(&sym("c2VjcmV0LWE="), &sym("c2VjcmV0LWE=")).is_none());
        let d = differs(&sym("c2VjcmV0LWE="), &sym("c2VjcmV0LWI=")).unwrap();
        assert!(!d.dps.contains("c2VjcmV0") && !d.station.contains("c2VjcmV0"));
        let d = differs(&tpm(b"ek-1"), &sym("c2VjcmV0LWE=")).unwrap();
        assert_eq!(d.dps, "a symmetric-key attestation");
    }
}
