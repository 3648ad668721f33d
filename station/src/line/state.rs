//! The unit state machine: an enum with data, every transition decided here and nowhere else.
//! `state.md` beside this file has the diagram. Persisting a transition (unit row + run
//! transition row + audit entry in one transaction) is the store's job; this module only says
//! which transitions exist and what a restart does with each state.

use serde::{Deserialize, Serialize};

/// The step of the flow a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Reading the scan, finding lot and operator.
    Scan,
    /// Asking the unit who it is.
    Identify,
    /// Reading the TPM, or having the unit make its key.
    Attest,
    /// Issuing the certificate.
    Issue,
    /// Writing the certificate or key to the unit.
    Inject,
    /// Reading back / proving possession.
    Verify,
    /// Writing the record.
    Record,
    /// Uploading the enrollment.
    Upload,
    /// The end-of-line registration check.
    Register,
}

impl Step {
    /// The step's name as shown and stored.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Scan => "scan",
            Step::Identify => "identify",
            Step::Attest => "attest",
            Step::Issue => "issue",
            Step::Inject => "inject",
            Step::Verify => "verify",
            Step::Record => "record",
            Step::Upload => "upload",
            Step::Register => "register",
        }
    }
}

/// Where a unit is. Stored as its tag in `units.state` and as JSON in `units.state_data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum UnitState {
    /// Scanned on a fixture; nothing asked of the unit yet.
    Scanned,
    /// The unit said who it is.
    Identified {
        /// Model the unit reported.
        model: String,
        /// Hardware revision.
        hw_rev: String,
        /// Firmware version.
        fw_version: String,
    },
    /// The identity material is in hand: an EK read (TPM), a CSR checked (X.509), or a key
    /// ready in the HSM (symmetric).
    KeyReady {
        /// The unit's registration ID.
        registration_id: String,
        /// A fingerprint of the material (EK hash, CSR public key hash, key label).
        material: String,
    },
    /// The CA signed a certificate; it is recorded but not yet confirmed on the unit.
    CertificateIssued {
        /// The certificate's row.
        certificate_id: i64,
    },
    /// The symmetric key was written to the unit.
    KeyInjected,
    /// The unit holds what it should (read-back digest equal, or HMAC proof valid; for TPM
    /// units, the EK checks passed).
    Verified,
    /// Unit, certificate/EK and enrollment are recorded.
    Recorded,
    /// The enrollment waits in the outbox.
    Queued {
        /// The outbox row.
        outbox_id: i64,
    },
    /// DPS holds the enrollment.
    Uploaded {
        /// The enrollment's etag in DPS.
        etag: String,
    },
    /// DPS assigned the unit a hub: the unit registered (at the end of the line or in the
    /// field), as `station registrations` found.
    Registered {
        /// The assigned hub.
        hub: String,
        /// The device ID in that hub.
        device_id: String,
    },
    /// The run failed.
    Failed {
        /// Where.
        step: Step,
        /// Why, as shown to the operator.
        reason: String,
    },
    /// A later run replaced this one (its certificate, if any, is no longer live).
    Superseded,
    /// Taken out of production after it passed or failed (failed a later test, destroyed):
    /// its certificates are revoked and DPS is told to refuse it (`line/scrap.rs`). Final.
    Scrapped {
        /// Why, as the supervisor gave it.
        reason: String,
        /// The state it was scrapped from.
        from: String,
    },
}

/// What happens to a unit found in a state after a crash or restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing to do: the state is final or owned by the uploader.
    Keep,
    /// Continue the flow from this state (the next step is idempotent).
    Resume,
    /// Fail the run with this reason; a retry supersedes what was made.
    Fail(Step, &'static str),
}

/// A transition that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a unit cannot go from {from} to {to}")]
pub struct BadTransition {
    /// The state it was in.
    pub from: &'static str,
    /// The state asked for.
    pub to: &'static str,
}

impl UnitState {
    /// Every state's tag, in the order of the flow.
    pub const NAMES: [&'static str; 13] = [
        "scanned",
        "identified",
        "key-ready",
        "certificate-issued",
        "key-injected",
        "verified",
        "recorded",
        "queued",
        "uploaded",
        "registered",
        "failed",
        "superseded",
        "scrapped",
    ];

    /// The state's tag, as stored in `units.state`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            UnitState::Scanned => "scanned",
            UnitState::Identified { .. } => "identified",
            UnitState::KeyReady { .. } => "key-ready",
            UnitState::CertificateIssued { .. } => "certificate-issued",
            UnitState::KeyInjected => "key-injected",
            UnitState::Verified => "verified",
            UnitState::Recorded => "recorded",
            UnitState::Queued { .. } => "queued",
            UnitState::Uploaded { .. } => "uploaded",
            UnitState::Registered { .. } => "registered",
            UnitState::Failed { .. } => "failed",
            UnitState::Superseded => "superseded",
            UnitState::Scrapped { .. } => "scrapped",
        }
    }

    /// Whether the unit may be scrapped now: it passed, or failed and was not retried (it is
    /// off its fixture and not scrapped already).
    #[must_use]
    pub fn scrappable(&self) -> bool {
        self.passed() || matches!(self, UnitState::Failed { .. })
    }

    /// Whether the unit passed the line (identity made, recorded; upload may still be pending).
    #[must_use]
    pub fn passed(&self) -> bool {
        matches!(
            self,
            UnitState::Recorded
                | UnitState::Queued { .. }
                | UnitState::Uploaded { .. }
                | UnitState::Registered { .. }
        )
    }

    /// Checks a transition and returns the new state. Every allowed edge is listed here.
    pub fn to(&self, next: UnitState) -> Result<UnitState, BadTransition> {
        use UnitState as S;
        let ok = match (self, &next) {
            // Any unfinished state may fail; a failed unit is superseded by its retry.
            (s, S::Failed { .. }) => !matches!(s, S::Failed { .. } | S::Superseded) && !s.passed(),
            (S::Failed { .. }, S::Superseded) => true,
            (S::Scanned, S::Identified { .. } | S::KeyReady { .. }) => true,
            (S::Identified { .. }, S::KeyReady { .. }) => true,
            (S::KeyReady { .. }, S::CertificateIssued { .. } | S::KeyInjected | S::Verified) => {
                true
            }
            (S::CertificateIssued { .. } | S::KeyInjected, S::Verified) => true,
            (S::Verified, S::Recorded) => true,
            (S::Recorded, S::Queued { .. }) => true,
            (S::Queued { .. }, S::Uploaded { .. }) => true,
            // A re-upload (after a 412 refetch, or a twin update) gives a new etag.
            (S::Uploaded { .. }, S::Uploaded { .. } | S::Registered { .. }) => true,
            // Registered again elsewhere (re-registration under another allocation).
            (S::Registered { .. }, S::Registered { .. }) => true,
            (s, S::Scrapped { .. }) => s.scrappable(),
            _ => false,
        };
        if ok {
            Ok(next)
        } else {
            Err(BadTransition {
                from: self.name(),
                to: next.name(),
            })
        }
    }

    /// Whether a resumed run (after a restart) may re-enter `next` from this state: the flow
    /// runs again from identify, so the early states repeat; nothing past verification does.
    #[must_use]
    pub fn resumes_to(&self, next: &UnitState) -> bool {
        matches!(
            self,
            UnitState::Identified { .. } | UnitState::KeyReady { .. } | UnitState::KeyInjected
        ) && matches!(
            next,
            UnitState::Identified { .. } | UnitState::KeyReady { .. }
        )
    }

    /// What a restart does with a unit in this state.
    #[must_use]
    pub fn recovery(&self) -> Recovery {
        match self {
            // Asking the unit again, reading the TPM again, or re-checking a CSR is harmless.
            UnitState::Scanned | UnitState::Identified { .. } | UnitState::KeyReady { .. } => {
                Recovery::Resume
            }
            // The certificate may or may not have reached the unit: it stays recorded, the run
            // fails, and a retry supersedes it, so a unit never has two live certificates.
            UnitState::CertificateIssued { .. } => Recovery::Fail(
                Step::Inject,
                "the station stopped after issuing the certificate and before the unit confirmed it; retry the unit",
            ),
            // The key is deterministic (derived) or kept encrypted: proving it again is harmless.
            UnitState::KeyInjected | UnitState::Verified => Recovery::Resume,
            // Recorded units are queued by the same transaction that resumes them.
            UnitState::Recorded => Recovery::Resume,
            UnitState::Queued { .. }
            | UnitState::Uploaded { .. }
            | UnitState::Registered { .. }
            | UnitState::Failed { .. }
            | UnitState::Superseded
            | UnitState::Scrapped { .. } => Recovery::Keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_ready() -> UnitState {
        UnitState::KeyReady {
            registration_id: "SX-000001".into(),
            material: "sha256:ab".into(),
        }
    }

    #[test]
    fn names_lists_every_state_once_in_the_order_of_the_flow() {
        let every = [
            UnitState::Scanned,
            UnitState::Identified {
                model: "m".into(),
                hw_rev: "1".into(),
                fw_version: "1".into(),
            },
            key_ready(),
            UnitState::CertificateIssued { certificate_id: 1 },
            UnitState::KeyInjected,
            UnitState::Verified,
            UnitState::Recorded,
            UnitState::Queued { outbox_id: 1 },
            UnitState::Uploaded { etag: "e".into() },
            UnitState::Registered {
                hub: "h".into(),
                device_id: "d".into(),
            },
            UnitState::Failed {
                step: Step::Scan,
                reason: "r".into(),
            },
            UnitState::Superseded,
            UnitState::Scrapped {
                reason: "r".into(),
                from: "uploaded".into(),
            },
        ];
        let names: Vec<&str> = every.iter().map(UnitState::name).collect();
        assert_eq!(names, UnitState::NAMES);
    }

    #[test]
    fn only_a_unit_off_the_fixture_may_be_scrapped_and_scrapping_is_final() {
        let scrapped = || UnitState::Scrapped {
            reason: "failed final test".into(),
            from: "x".into(),
        };
        for from in [
            UnitState::Recorded,
            UnitState::Queued { outbox_id: 1 },
            UnitState::Uploaded { etag: "e".into() },
            UnitState::Registered {
                hub: "h".into(),
                device_id: "d".into(),
            },
            UnitState::Failed {
                step: Step::Attest,
                reason: "r".into(),
            },
        ] {
            assert!(from.to(scrapped()).is_ok(), "{}", from.name());
        }
        for busy in [
            UnitState::Scanned,
            key_ready(),
            UnitState::Verified,
            UnitState::Superseded,
        ] {
            assert!(busy.to(scrapped()).is_err(), "{}", busy.name());
        }
        let done = scrapped();
        assert!(!done.passed());
        assert_eq!(done.recovery(), Recovery::Keep);
        assert!(done.to(scrapped()).is_err());
        assert!(done.to(UnitState::Scanned).is_err());
        assert!(done.to(UnitState::Superseded).is_err());
    }

    #[test]
    fn a_registered_unit_may_be_registered_again_elsewhere_but_not_go_back() {
        let at = |hub: &str| UnitState::Registered {
            hub: hub.into(),
            device_id: "SX-000001".into(),
        };
        let uploaded = UnitState::Uploaded { etag: "e1".into() };
        let registered = uploaded.to(at("hub-a.local")).unwrap();
        assert_eq!(registered.to(at("hub-b.local")).unwrap(), at("hub-b.local"));
        assert!(registered.to(uploaded).is_err());
        assert!(registered.passed());
        assert_eq!(registered.recovery(), Recovery::Keep);
        assert!(
            registered
                .to(UnitState::Failed {
                    step: Step::Register,
                    reason: "x".into()
                })
                .is_err()
        );
    }

    #[test]
    fn the_x509_path_and_the_symmetric_path_are_allowed() {
        let s = UnitState::Scanned
            .to(UnitState::Identified {
                model: "m".into(),
                hw_rev: "1".into(),
                fw_version: "2".into(),
            })
            .unwrap()
            .to(key_ready())
            .unwrap()
            .to(UnitState::CertificateIssued { certificate_id: 7 })
            .unwrap()
            .to(UnitState::Verified)
            .unwrap()
            .to(UnitState::Recorded)
            .unwrap()
            .to(UnitState::Queued { outbox_id: 1 })
            .unwrap()
            .to(UnitState::Uploaded {
                etag: "\"1\"".into(),
            })
            .unwrap();
        assert!(s.passed());
        assert!(
            key_ready()
                .to(UnitState::KeyInjected)
                .unwrap()
                .to(UnitState::Verified)
                .is_ok()
        );
        // TPM units: EK read is the key-ready state; the checks are the verification.
        assert!(
            UnitState::Scanned
                .to(key_ready())
                .unwrap()
                .to(UnitState::Verified)
                .is_ok()
        );
    }

    #[test]
    fn skipping_steps_and_failing_a_passed_unit_are_refused() {
        let e = UnitState::Scanned.to(UnitState::Recorded).unwrap_err();
        assert_eq!(e.to_string(), "a unit cannot go from scanned to recorded");
        assert!(
            UnitState::Recorded
                .to(UnitState::Failed {
                    step: Step::Upload,
                    reason: "x".into()
                })
                .is_err()
        );
        assert!(key_ready().to(UnitState::Superseded).is_err());
        let failed = UnitState::Failed {
            step: Step::Verify,
            reason: "digest differs".into(),
        };
        assert!(failed.to(UnitState::Superseded).is_ok());
        assert!(failed.to(UnitState::Scanned).is_err());
    }

    #[test]
    fn recovery_never_reissues_a_certificate() {
        assert_eq!(UnitState::Scanned.recovery(), Recovery::Resume);
        assert!(matches!(
            UnitState::CertificateIssued { certificate_id: 1 }.recovery(),
            Recovery::Fail(Step::Inject, _)
        ));
        assert_eq!(
            UnitState::Queued { outbox_id: 3 }.recovery(),
            Recovery::Keep
        );
    }

    #[test]
    fn states_round_trip_through_json() {
        let s = UnitState::Failed {
            step: Step::Attest,
            reason: "no EK".into(),
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"state":"failed","step":"attest","reason":"no EK"}"#);
        assert_eq!(serde_json::from_str::<UnitState>(&j).unwrap(), s);
    }
}
