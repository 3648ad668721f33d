//! Identifiers that validate on construction and cannot be mixed up.
//!
//! `RegistrationId` and `DeviceId` carry the DPS rules and live in the `dps` crate; the
//! station's own identifiers are here. A serial number may become a registration ID through a
//! template (`{serial}`), so its alphabet is a subset of the registration ID alphabet.

pub use dps::ids::{DeviceId, EnrollmentGroupId, IdError, RegistrationId};

/// Why a station identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?} is not valid: {rule}")]
pub struct BadId {
    /// Which identifier.
    pub kind: &'static str,
    /// The value as given (identifiers are never secret).
    pub value: String,
    /// The rule it broke.
    pub rule: &'static str,
}

fn check(
    kind: &'static str,
    s: &str,
    max: usize,
    extra: &[char],
    rule: &'static str,
) -> Result<(), BadId> {
    let bad = || BadId {
        kind,
        value: s.to_owned(),
        rule,
    };
    let first_last_ok = s
        .chars()
        .next()
        .zip(s.chars().last())
        .is_some_and(|(a, b)| a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric());
    if s.is_empty()
        || s.len() > max
        || !first_last_ok
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    {
        return Err(bad());
    }
    Ok(())
}

/// A station identifier: 1 to `$max` ASCII letters, digits and `$extra`, starting and ending
/// with a letter or digit.
macro_rules! station_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $extra:expr, $rule:literal) => {
        dps::validated_id!($(#[$doc])* $name, BadId, |s: &str| check(
            $kind, s, $max, $extra, $rule
        ));
    };
}

station_id!(
    /// A unit's manufacturing serial number, as scanned from its label.
    SerialNumber,
    "serial number",
    64,
    &['-', '.', '_', ':'],
    "1 to 64 ASCII letters, digits and - . _ :, starting and ending with a letter or digit"
);

station_id!(
    /// A lot (work order) identifier.
    LotId,
    "lot ID",
    64,
    &['-', '.', '_'],
    "1 to 64 ASCII letters, digits and - . _, starting and ending with a letter or digit"
);

station_id!(
    /// The name of a fixture (one test/provisioning position on the line).
    FixtureName,
    "fixture name",
    32,
    &['-', '_'],
    "1 to 32 ASCII letters, digits and - _, starting and ending with a letter or digit"
);

station_id!(
    /// The name of this station, recorded in every audit entry.
    StationId,
    "station ID",
    64,
    &['-', '.', '_'],
    "1 to 64 ASCII letters, digits and - . _, starting and ending with a letter or digit"
);

station_id!(
    /// The name of a product profile.
    ProductName,
    "product name",
    64,
    &['-', '.', '_'],
    "1 to 64 ASCII letters, digits and - . _, starting and ending with a letter or digit"
);

station_id!(
    /// An operator's login name.
    Username,
    "user name",
    32,
    &['-', '.', '_'],
    "1 to 32 ASCII letters, digits and - . _, starting and ending with a letter or digit"
);

impl StationId {
    /// The ID used when neither the configuration nor the host name gives a valid one.
    #[must_use]
    pub fn fallback() -> Self {
        Self("station".to_owned())
    }
}

impl SerialNumber {
    /// The serial as a registration ID (the default `{serial}` template). Always valid: the
    /// serial alphabet is a subset of the registration ID alphabet and 64 < 128.
    pub fn to_registration_id(&self) -> Result<RegistrationId, IdError> {
        RegistrationId::new(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials() {
        assert!(SerialNumber::new("SN-0001").is_ok());
        assert!(SerialNumber::new("A").is_ok());
        assert!(SerialNumber::new("").is_err());
        assert!(SerialNumber::new("SN 1").is_err());
        assert!(SerialNumber::new("-SN1").is_err());
        assert!(SerialNumber::new("x".repeat(65)).is_err());
        assert!(SerialNumber::new("SN\u{1b}[2J").is_err());
        let sn = SerialNumber::new("SN:42.a_b").unwrap();
        assert_eq!(sn.to_registration_id().unwrap().as_str(), "SN:42.a_b");
    }

    #[test]
    fn names_do_not_mix() {
        assert!(FixtureName::new("fx-1").is_ok());
        assert!(FixtureName::new("fx.1").is_err());
        assert!(LotId::new("L-2026.11").is_ok());
        assert!(StationId::new("line3_station").is_ok());
        let err = FixtureName::new("bad name").unwrap_err();
        assert!(
            err.to_string().contains("fixture name \"bad name\""),
            "{err}"
        );
    }
}
