//! Which linked IoT hub a registering unit is assigned to, as DPS allocates:
//! - the enrollment's `iotHubs`, or when it names none, every linked hub that takes part in
//!   allocation (`applyAllocationPolicy`);
//! - `hashed` (the default): a hub chosen by a hash of the registration ID, weighted by each
//!   linked hub's `allocationWeight`, so a unit lands on the same hub each time while the hub
//!   set is unchanged;
//! - `geoLatency`: every hub here is equally near, so ties are broken by the weighted hash, as
//!   DPS breaks them;
//! - `static`: exactly one hub;
//! - `custom` (a webhook) is not served by the local service, and says so.

use sha2::{Digest as _, Sha256};

use super::store::LinkedHub;
use crate::wire::AllocationPolicy;

/// Why no hub could be chosen; the message goes into the registration's `errorMessage`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AllocationError(pub String);

/// The hub for `registration_key` (the lower-case registration ID).
pub fn allocate(
    policy: Option<AllocationPolicy>,
    iot_hubs: Option<&[String]>,
    linked: &[LinkedHub],
    registration_key: &str,
) -> Result<String, AllocationError> {
    let candidates: Vec<&LinkedHub> = match iot_hubs.filter(|h| !h.is_empty()) {
        Some(named) => named
            .iter()
            .map(|h| {
                linked
                    .iter()
                    .find(|l| l.host_name.eq_ignore_ascii_case(h))
                    .ok_or_else(|| {
                        AllocationError(format!(
                            "the enrollment names IoT hub {h}, which is not linked to this service"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?,
        None => linked
            .iter()
            .filter(|l| l.apply_allocation_policy)
            .collect(),
    };
    if candidates.is_empty() {
        return Err(AllocationError(
            "no IoT hub is linked to this service (dps linked-hub add)".into(),
        ));
    }
    match policy.unwrap_or(AllocationPolicy::Hashed) {
        AllocationPolicy::Static => match candidates.as_slice() {
            [one] => Ok(one.host_name.clone()),
            _ => Err(AllocationError(format!(
                "static allocation needs exactly one IoT hub, the enrollment allows {}",
                candidates.len()
            ))),
        },
        AllocationPolicy::Hashed | AllocationPolicy::GeoLatency => {
            Ok(weighted_hash(&candidates, registration_key))
        }
        AllocationPolicy::Custom => Err(AllocationError(
            "custom allocation (a webhook) is not served by the local DPS service".into(),
        )),
    }
}

/// The hub whose weighted share of a 64-bit hash of the registration ID holds it.
fn weighted_hash(candidates: &[&LinkedHub], registration_key: &str) -> String {
    let total: u64 = candidates
        .iter()
        .map(|h| u64::from(h.allocation_weight.max(1)))
        .sum();
    let digest = Sha256::digest(registration_key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let mut point = u64::from_be_bytes(first) % total;
    for h in candidates {
        let w = u64::from(h.allocation_weight.max(1));
        if point < w {
            return h.host_name.clone();
        }
        point -= w;
    }
    // Unreachable: point < total, the sum of the weights.
    candidates
        .last()
        .map(|h| h.host_name.clone())
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn hub(name: &str, weight: u32, apply: bool) -> LinkedHub {
        LinkedHub {
            host_name: name.into(),
            allocation_weight: weight,
            apply_allocation_policy: apply,
        }
    }

    #[test]
    fn hashed_is_stable_and_follows_the_weights() {
        let linked = [
            hub("a", 1, true),
            hub("b", 3, true),
            hub("off", 1000, false),
        ];
        let mut counts = std::collections::HashMap::new();
        for i in 0..4000 {
            let id = format!("unit-{i}");
            let h = allocate(None, None, &linked, &id).unwrap();
            assert_eq!(h, allocate(None, None, &linked, &id).unwrap());
            *counts.entry(h).or_insert(0u32) += 1;
        }
        assert!(!counts.contains_key("off"), "{counts:?}");
        let (a, b) = (counts["a"], counts["b"]);
        assert!(
            (800..1200).contains(&a) && (2800..3200).contains(&b),
            "{counts:?}"
        );
    }

    #[test]
    fn the_enrollments_hubs_limit_the_choice() {
        let linked = [hub("a", 1, true), hub("b", 1, true), hub("c", 1, false)];
        let named = ["c".to_owned()];
        for i in 0..50 {
            let got = allocate(None, Some(&named), &linked, &format!("u{i}")).unwrap();
            assert_eq!(got, "c");
        }
        let got = allocate(Some(AllocationPolicy::Static), Some(&named), &linked, "u").unwrap();
        assert_eq!(got, "c");
    }

    #[test]
    fn refusals_say_why() {
        let linked = [hub("a", 1, true), hub("b", 1, true)];
        let e = allocate(Some(AllocationPolicy::Static), None, &linked, "u").unwrap_err();
        assert!(e.0.contains("exactly one IoT hub"), "{e}");
        let e = allocate(None, Some(&["z".to_owned()]), &linked, "u").unwrap_err();
        assert!(e.0.contains("z, which is not linked"), "{e}");
        let e = allocate(None, None, &[], "u").unwrap_err();
        assert!(e.0.contains("no IoT hub is linked"), "{e}");
        let e = allocate(Some(AllocationPolicy::Custom), None, &linked, "u").unwrap_err();
        assert!(e.0.contains("custom allocation"), "{e}");
    }
}
