//! Identifiers with the DPS character and length rules enforced on construction.
//!
//! Rules (Microsoft DPS documentation, see `shared/notes/dps-protocol.md`):
//! - registration ID and enrollment group ID: at most 128 characters, ASCII alphanumerics and
//!   `- . _ :`, no special character first or last; compared case-insensitively by DPS.
//! - device ID: at most 128 ASCII characters, alphanumerics and `- . % _ * ? ! ( ) , : = @ $ '`;
//!   case-sensitive.

/// Longest registration, group or device ID DPS accepts.
pub const MAX_ID_LEN: usize = 128;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is empty.
    #[error("{kind} is empty")]
    Empty {
        /// Which identifier.
        kind: &'static str,
    },
    /// The identifier is longer than allowed.
    #[error("{kind} is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// Which identifier.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The identifier holds a character outside the allowed set.
    #[error("{kind} {value:?} contains {ch:?} at position {pos}; allowed: {allowed}")]
    BadChar {
        /// Which identifier.
        kind: &'static str,
        /// The identifier as given.
        value: String,
        /// The offending character.
        ch: char,
        /// Its position (0-based, in characters).
        pos: usize,
        /// What is allowed.
        allowed: &'static str,
    },
    /// The identifier starts or ends with a special character.
    #[error("{kind} {value:?} must start and end with a letter or digit")]
    BadEdge {
        /// Which identifier.
        kind: &'static str,
        /// The identifier as given.
        value: String,
    },
}

fn check_registration_like(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    let len = s.chars().count();
    if len > max {
        return Err(IdError::TooLong { kind, len, max });
    }
    for (pos, ch) in s.chars().enumerate() {
        if !(ch.is_ascii_alphanumeric() || matches!(ch, '-' | '.' | '_' | ':')) {
            return Err(IdError::BadChar {
                kind,
                value: s.to_owned(),
                ch,
                pos,
                allowed: "ASCII letters, digits and - . _ :",
            });
        }
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(s.chars().next()) || !edge_ok(s.chars().last()) {
        return Err(IdError::BadEdge {
            kind,
            value: s.to_owned(),
        });
    }
    Ok(())
}

fn check_device_id(s: &str) -> Result<(), IdError> {
    const KIND: &str = "device ID";
    if s.is_empty() {
        return Err(IdError::Empty { kind: KIND });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind: KIND,
            len: s.chars().count(),
            max: MAX_ID_LEN,
        });
    }
    for (pos, ch) in s.chars().enumerate() {
        let ok = ch.is_ascii_alphanumeric()
            || matches!(
                ch,
                '-' | '.'
                    | '%'
                    | '_'
                    | '*'
                    | '?'
                    | '!'
                    | '('
                    | ')'
                    | ','
                    | ':'
                    | '='
                    | '@'
                    | '$'
                    | '\''
            );
        if !ok {
            return Err(IdError::BadChar {
                kind: KIND,
                value: s.to_owned(),
                ch,
                pos,
                allowed: "ASCII letters, digits and - . % _ * ? ! ( ) , : = @ $ '",
            });
        }
    }
    Ok(())
}

/// Declares a string identifier that is validated on construction: `new` (and `FromStr`,
/// and serde's `Deserialize`) run `$check`, which returns `Result<(), $err>`; `Display`,
/// `AsRef<str>` and `Serialize` give the text as given, `Debug` names the type. Also used by
/// the station for its own identifiers (serial numbers, fixture names...). The using crate
/// depends on `serde`.
#[macro_export]
macro_rules! validated_id {
    ($(#[$doc:meta])* $name:ident, $err:ty, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(s: impl Into<String>) -> Result<Self, $err> {
                let s = s.into();
                ($check)(&s)?;
                Ok(Self(s))
            }

            /// The identifier as given.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $err;
            fn from_str(s: &str) -> Result<Self, $err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as ::serde::Deserialize>::deserialize(d)?;
                Self::new(s).map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }
    };
}

validated_id!(
    /// A unit's registration ID within a DPS instance (case-insensitive in DPS; the key of an
    /// individual enrollment and, for X.509 units, the leaf certificate's CN).
    RegistrationId,
    IdError,
    |s: &str| check_registration_like("registration ID", s, MAX_ID_LEN)
);

validated_id!(
    /// The ID of an enrollment group.
    EnrollmentGroupId,
    IdError,
    |s: &str| check_registration_like("enrollment group ID", s, MAX_ID_LEN)
);

validated_id!(
    /// A unit's device ID in its assigned IoT hub (case-sensitive).
    DeviceId,
    IdError,
    check_device_id
);

impl RegistrationId {
    /// The form DPS compares by: registration IDs are case-insensitive.
    #[must_use]
    pub fn canonical(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl EnrollmentGroupId {
    /// The form DPS compares by: group IDs are case-insensitive like registration IDs.
    #[must_use]
    pub fn canonical(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn registration_ids_follow_dps_rules() {
        assert!(RegistrationId::new("unit-0001").is_ok());
        assert!(RegistrationId::new("a.b_c:d-e").is_ok());
        assert!(RegistrationId::new("x".repeat(128)).is_ok());
        assert!(matches!(
            RegistrationId::new("x".repeat(129)),
            Err(IdError::TooLong { len: 129, .. })
        ));
        assert!(matches!(
            RegistrationId::new(""),
            Err(IdError::Empty { .. })
        ));
        assert!(matches!(
            RegistrationId::new("unit 1"),
            Err(IdError::BadChar {
                ch: ' ',
                pos: 4,
                ..
            })
        ));
        assert!(matches!(
            RegistrationId::new("-unit"),
            Err(IdError::BadEdge { .. })
        ));
        assert!(matches!(
            RegistrationId::new("unit."),
            Err(IdError::BadEdge { .. })
        ));
        assert!(RegistrationId::new("unité").is_err());
    }

    #[test]
    fn device_ids_allow_the_wider_set() {
        assert!(DeviceId::new("dev(1)@site=7$'x'").is_ok());
        assert!(DeviceId::new("a/b").is_err());
        assert!(DeviceId::new("x".repeat(129)).is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: RegistrationId = serde_json::from_str("\"Unit-1\"").unwrap();
        assert_eq!(ok.canonical(), "unit-1");
        assert!(serde_json::from_str::<RegistrationId>("\"bad id\"").is_err());
    }
}
