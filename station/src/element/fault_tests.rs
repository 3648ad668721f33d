//! Element provisioning against real SoftHSM tokens and a real CA and store, with the faults
//! SoftHSM cannot produce injected by one named fake.

use std::cell::RefCell;
use std::error::Error as _;

use cryptoki::context::Function;
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::object::ObjectHandle;

use super::{ElementError, ElementToken, KEY_LABEL, provision_on};
use crate::ca::authority::{Authority, create_root};
use crate::ca::service::{AuditKey, RecordContext, commit_issued};
use crate::ca::{Profiles, SubjectKey, UnitSubject};
use crate::hsm::test_token::fresh_token;
use crate::hsm::{EcKey, HsmError, KeyProtection, TokenSession};
use crate::store::Store;

/// The one misbehaviour a [`FaultInjectingElement`] adds to a real token.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Ignores CKA_SENSITIVE=true / CKA_EXTRACTABLE=false: the key it makes can be exported.
    IgnoresKeyProtection,
    /// Refuses to store the certificate (out of memory, as a small element would).
    CertificateWriteFails,
    /// Stores other bytes than it was given: the certificate read back differs.
    CorruptsCertificate,
}

/// A FAKE element for faults SoftHSM cannot produce: a real SoftHSM token session with
/// exactly one misbehaviour injected. Everything else goes to the real token, so what the
/// element holds afterwards is read from SoftHSM itself.
struct FaultInjectingElement<'a> {
    real: &'a TokenSession,
    fault: Fault,
}

impl ElementToken for FaultInjectingElement<'_> {
    fn objects_labelled(&self, label: &str) -> Result<Vec<ObjectHandle>, HsmError> {
        self.real.objects_labelled(label)
    }

    fn destroy_labelled(&self, label: &str) -> Result<usize, HsmError> {
        self.real.destroy_labelled(label)
    }

    fn generate_p256(&self, label: &str) -> Result<EcKey, HsmError> {
        match self.fault {
            // The element "honours" the request by making an exportable key on the real token.
            Fault::IgnoresKeyProtection => Ok(self.real.generate_extractable_p256_for_test(label)),
            _ => self.real.generate_p256(label),
        }
    }

    fn key_protection(&self, key: &EcKey) -> Result<KeyProtection, HsmError> {
        self.real.key_protection(key)
    }

    fn store_certificate(
        &self,
        key: &EcKey,
        der: &[u8],
        subject_der: &[u8],
    ) -> Result<(), HsmError> {
        match self.fault {
            Fault::CertificateWriteFails => Err(HsmError::CreateObject {
                token: self.real.token().to_owned(),
                label: key.label.clone(),
                source: P11Error::Pkcs11(RvError::DeviceMemory, Function::CreateObject),
            }),
            Fault::CorruptsCertificate => {
                let mut other = der.to_vec();
                if let Some(last) = other.last_mut() {
                    *last ^= 0x01;
                }
                ElementToken::store_certificate(self.real, key, &other, subject_der)
            }
            Fault::IgnoresKeyProtection => {
                ElementToken::store_certificate(self.real, key, der, subject_der)
            }
        }
    }

    fn certificates_with_id(&self, id: &[u8]) -> Result<Vec<Vec<u8>>, HsmError> {
        self.real.certificates_with_id(id)
    }
}

/// The station side: a real CA key and certificate in SoftHSM, its audit key, and a SQLite
/// store in a temp dir.
struct Station {
    ca_session: TokenSession,
    ca_der: Vec<u8>,
    profiles: Profiles,
    store: RefCell<Store>,
    _dir: tempfile::TempDir,
}

impl Station {
    fn new() -> Self {
        let profiles = Profiles::embedded().expect("profiles");
        let (_hsm, _cfg, ca_session) = fresh_token("element-ca");
        let ca_der =
            create_root(&ca_session, "ca-key", profiles.get("root").expect("p")).expect("root");
        ca_session.generate_hmac_key("audit").expect("audit key");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create(
            &dir.path().join("station.db"),
            &crate::config::StoreConfig::default(),
        )
        .expect("store");
        Self {
            ca_session,
            ca_der,
            profiles,
            store: RefCell::new(store),
            _dir: dir,
        }
    }

    /// Provisions `element` (named `token`) the way `station pkcs11 provision` does: issue,
    /// record, then release to the element. Returns the outcome and the serial issued, if any.
    fn provision(
        &self,
        element: &impl ElementToken,
        token: &str,
    ) -> (Result<super::Provisioned, ElementError>, Option<String>) {
        let ca =
            Authority::load(&self.ca_session, "ca-key", self.ca_der.clone(), "ca").expect("ca");
        let audit_key = AuditKey::find(&self.ca_session, "audit").expect("audit key");
        let profile = self.profiles.get("device").expect("device profile");
        let station = crate::ids::StationId::new("st-1").expect("id");
        let mut serial = None;
        let result = provision_on(element, token, false, |spki| {
            let key = SubjectKey::from_spki(spki).map_err(|e| e.to_string())?;
            let cert = ca
                .issue(profile, &key, "GW-000001", &UnitSubject::default())
                .map_err(|e| e.to_string())?;
            let rec = RecordContext {
                station: &station,
                actor: "line-1",
                event: "ca.issue",
                registration_id: Some("GW-000001"),
                unit_id: None,
            };
            commit_issued(&mut self.store.borrow_mut(), &ca, &audit_key, &cert, &rec)
                .map_err(|e| e.to_string())?;
            serial = Some(cert.serial.hex());
            Ok(cert.der)
        });
        (result, serial)
    }

    /// The recorded status of every certificate issued so far, by serial.
    fn statuses(&self) -> Vec<(String, String)> {
        let store = self.store.borrow();
        let mut st = store
            .conn()
            .prepare("SELECT serial_hex, status FROM certificates ORDER BY id")
            .expect("prepare");
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }
}

fn unit_token() -> (String, TokenSession) {
    let (_hsm, cfg, session) = fresh_token("unit-GW");
    (cfg.token.expect("label"), session)
}

/// The whole error chain, as the CLI prints it.
fn chain(e: &ElementError) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[test]
fn without_a_fault_the_same_harness_provisions_the_element() {
    let station = Station::new();
    let (label, unit) = unit_token();
    let (result, serial) = station.provision(&unit, &label);
    let done = result.expect("provisioned");
    let serial = serial.expect("issued");
    assert_eq!(done.token, label);
    let id = hex::decode(&done.key_id).expect("hex id");
    assert_eq!(
        unit.certificates_with_id(&id).expect("read"),
        vec![done.certificate]
    );
    assert_eq!(station.statuses(), vec![(serial, "issued".to_owned())]);
}

#[test]
fn an_element_that_ignores_key_protection_is_refused_and_its_key_deleted() {
    let station = Station::new();
    let (label, unit) = unit_token();
    let fake = FaultInjectingElement {
        real: &unit,
        fault: Fault::IgnoresKeyProtection,
    };
    let (result, serial) = station.provision(&fake, &label);
    let err = result.expect_err("an exportable key must be refused");
    assert!(matches!(err, ElementError::NotProtected { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "unit element {label}: check key protection failed: the element made a key that is \
             not sensitive, extractable, was extractable once (never-extractable is false); \
             the key was deleted"
        )
    );
    // Nothing was certified, and the real token no longer holds the weak key.
    assert_eq!(serial, None);
    assert!(station.statuses().is_empty());
    assert!(
        unit.objects_labelled(KEY_LABEL).expect("list").is_empty(),
        "the refused key is still in the element"
    );
}

#[test]
fn a_certificate_write_that_fails_leaves_the_identity_not_done() {
    let station = Station::new();
    let (label, unit) = unit_token();
    let fake = FaultInjectingElement {
        real: &unit,
        fault: Fault::CertificateWriteFails,
    };
    let (result, serial) = station.provision(&fake, &label);
    let err = result.expect_err("a failed write must fail the provisioning");
    assert_eq!(
        err.to_string(),
        format!("unit element {label}: write certificate failed")
    );
    let full = chain(&err);
    assert!(
        full.contains(&format!(
            "cannot write object \"{KEY_LABEL}\" to token {label}"
        )),
        "{full}"
    );
    // The CA recorded what it issued; it stays 'issued', never 'live'.
    let serial = serial.expect("the CA issued before the write");
    assert_eq!(station.statuses(), vec![(serial, "issued".to_owned())]);
    // The element holds the key but no certificate.
    let key = unit.find_ec_key(KEY_LABEL).expect("key still there");
    assert!(unit.certificates_with_id(&key.id).expect("read").is_empty());
}

#[test]
fn a_certificate_read_back_that_differs_leaves_the_identity_not_done() {
    let station = Station::new();
    let (label, unit) = unit_token();
    let fake = FaultInjectingElement {
        real: &unit,
        fault: Fault::CorruptsCertificate,
    };
    let (result, serial) = station.provision(&fake, &label);
    let err = result.expect_err("a differing read-back must fail the provisioning");
    assert!(matches!(err, ElementError::ReadBack { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "unit element {label}: read back certificate failed: the certificate read back (SHA-256 "
        )) && msg.contains("differs from the one written"),
        "{msg}"
    );
    let serial = serial.expect("the CA issued before the write");
    assert_eq!(station.statuses(), vec![(serial, "issued".to_owned())]);
    // What the real token holds is indeed not the issued certificate.
    let key = unit.find_ec_key(KEY_LABEL).expect("key");
    let stored = unit.certificates_with_id(&key.id).expect("read");
    let issued: Vec<u8> = station
        .store
        .borrow()
        .conn()
        .query_row("SELECT der FROM certificates", [], |r| r.get(0))
        .expect("der");
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], issued);
}
