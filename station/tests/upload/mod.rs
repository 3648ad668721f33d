//! Shared by the upload tests: a station home made by `station init`, the local DPS service
//! in process over TLS (stoppable and restartable on the same port), queued units walked
//! through the real state machine, and an AES-256-GCM software cipher.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use dps::client::{ClientOptions, RetryPolicy, ServiceClient};
use dps::server::gate::Faults;
use dps::server::store::LinkedHub;
use dps::server::{ServeOptions, Server};
use dps::wire::{AttestationMechanism, IndividualEnrollment, KeyText};
use station::config::Config;
use station::home::Home;
use station::ids::StationId;
use station::line::state::UnitState;
use station::line::units::{self, Begin, Facts, NewRun};
use station::outbox::dps::{
    GroupMemberPayload, IndividualPayload, KIND_GROUP_MEMBER, KIND_INDIVIDUAL, destination,
};
use station::outbox::{self, CipherError, NewItem, PayloadCipher};
use station::store::Store;
use zeroize::Zeroizing;

pub const TARGET: &str = "local";

/// The local DPS service running in process on its own thread and runtime.
pub struct LocalDps {
    pub data: PathBuf,
    pub port: u16,
    pub faults: Arc<Faults>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalDps {
    /// Starts on `data`, on `port` (0: a free one).
    pub fn start(data: &Path, port: u16) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let dir = data.to_owned();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = Server::bind(ServeOptions {
                    data: dir,
                    listen: SocketAddr::from(([127, 0, 0, 1], port)),
                    mqtt_listen: None,
                    link_hubs: vec![LinkedHub {
                        host_name: "hub-a.azure-devices.net".into(),
                        allocation_weight: 1,
                        apply_allocation_policy: true,
                    }],
                    ops_per_min: None,
                    fail_rate: 0.0,
                    latency: Duration::ZERO,
                    faults: Arc::default(),
                })
                .await
                .unwrap();
                ready_tx
                    .send((server.local_addr().port(), server.faults()))
                    .unwrap();
                server
                    .run_until(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
            // Dropping the runtime ends every open connection: the service is gone.
        });
        let (port, faults) = ready_rx.recv().unwrap();
        Self {
            data: data.to_owned(),
            port,
            faults,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops the service (its port closes).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// A service client (fast retries) for test set-up and checks.
    pub fn client(&self) -> ServiceClient {
        let cs = std::fs::read_to_string(self.data.join("connection-string"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        ServiceClient::new(
            cs,
            ClientOptions {
                extra_ca_file: Some(self.data.join("ca.pem")),
                retry: RetryPolicy {
                    max_attempts: 3,
                    min_backoff: Duration::from_millis(20),
                    max_backoff: Duration::from_millis(100),
                    default_retry_after: Duration::from_millis(20),
                },
                ..ClientOptions::default()
            },
        )
        .unwrap()
    }

    /// Runs a future of the test (client calls) to completion.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }
}

impl Drop for LocalDps {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A station home made by `station init`, with a DPS target pointing at `dps` and quick
/// back-offs.
pub struct Station {
    pub _tmp: tempfile::TempDir,
    pub home: Home,
    pub config: Config,
    pub station: StationId,
}

impl Station {
    pub fn new(dps: &LocalDps, batch: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("H");
        let (good, _, err) = crate::common::run(&root, &["init", "--actor", "tester"]);
        assert!(
            good,
            "station init failed (needs softhsm2: apt-get install softhsm2 opensc): {err}"
        );
        let scope = std::fs::read_to_string(dps.data.join("id-scope"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "0ne00000001".into());
        std::fs::write(
            root.join("config.d/50-upload-test.toml"),
            format!(
                "[dps.targets.{TARGET}]\nconnection_string_file = {:?}\nid_scope = {scope:?}\nca_file = {:?}\n\n\
                 [upload]\ninterval_ms = 50\nbatch = {batch}\nmin_backoff_ms = 20\nmax_backoff_ms = 200\n",
                dps.data.join("connection-string"),
                dps.data.join("ca.pem"),
            ),
        )
        .unwrap();
        let home = Home::new(&root);
        let config = Config::load(&home).unwrap().config;
        let station = config.station_id();
        let s = Self {
            _tmp: tmp,
            home,
            config,
            station,
        };
        s.store()
            .conn()
            .execute(
                "INSERT INTO lots (id, product, quantity, status, opened_at, opened_by)
                 VALUES ('L1', 'sensor-sym', 1000, 'open', 't', 'tester')",
                [],
            )
            .unwrap();
        s
    }

    pub fn store(&self) -> Store {
        Store::open(
            &self.home.resolve(&self.config.store.path),
            &self.config.store,
        )
        .unwrap()
    }

    pub fn db_path(&self) -> PathBuf {
        self.home.resolve(&self.config.store.path)
    }

    /// Walks a new unit through the line to Queued with its enrollment in the outbox, as the
    /// line does in one transaction. Returns (unit id, outbox id).
    pub fn queue_unit(
        &self,
        enrollment: &IndividualEnrollment,
        cipher: Option<&dyn PayloadCipher>,
    ) -> (i64, i64) {
        // The recorded body never holds the keys.
        let mut public = enrollment.clone();
        if let Some(sk) = public.attestation.symmetric_key.as_mut() {
            sk.primary_key = None;
            sk.secondary_key = None;
        }
        let payload = serde_json::to_vec(&IndividualPayload {
            target: TARGET.into(),
            enrollment: enrollment.clone(),
        })
        .unwrap();
        self.queue_with(
            enrollment.registration_id.as_str(),
            KIND_INDIVIDUAL,
            &payload,
            &serde_json::to_string(&public).unwrap(),
            cipher,
        )
    }

    /// A unit of a symmetric-key group: its row only asks DPS to confirm the group.
    pub fn queue_member(&self, rid: &str, group_id: &str) -> (i64, i64) {
        let payload = serde_json::to_vec(&GroupMemberPayload {
            target: TARGET.into(),
            group_id: group_id.into(),
        })
        .unwrap();
        self.queue_with(rid, KIND_GROUP_MEMBER, &payload, "{}", None)
    }

    fn queue_with(
        &self,
        rid: &str,
        kind: &str,
        payload: &[u8],
        body: &str,
        cipher: Option<&dyn PayloadCipher>,
    ) -> (i64, i64) {
        let rid = rid.to_owned();
        let mut store = self.store();
        // Immediate, as the line's writer: a deferred transaction that reads and then writes
        // fails at once (SQLITE_BUSY) if the uploader committed in between.
        let tx = store
            .conn_mut()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        let st = &self.station;
        let Begin::Started { unit_id, .. } = units::begin(
            &tx,
            st,
            &NewRun {
                serial: &rid,
                product: "sensor-sym",
                lot_id: "L1",
                fixture: "fx1",
                operator: Some("tester"),
                attestation: "symmetric-individual",
            },
        )
        .unwrap() else {
            panic!("unit {rid} did not start")
        };
        let facts = Facts {
            registration_id: Some(&rid),
            ..Facts::default()
        };
        for next in [
            UnitState::Identified {
                model: "S-1".into(),
                hw_rev: "A".into(),
                fw_version: "1.0".into(),
            },
            UnitState::KeyReady {
                registration_id: rid.clone(),
                material: "test".into(),
            },
            UnitState::KeyInjected,
            UnitState::Verified,
            UnitState::Recorded,
        ] {
            units::transition(&tx, st, "tester", unit_id, next, &facts).unwrap();
        }
        // A group member's enrollment row is its group's, per unit.
        let (ekind, eid) = if kind == KIND_INDIVIDUAL {
            ("individual", rid.clone())
        } else {
            ("group", format!("member-{rid}"))
        };
        tx.execute(
            "INSERT INTO enrollments (unit_id, dps_target, kind, enrollment_id, body, status, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'queued', 't')",
            rusqlite::params![unit_id, TARGET, ekind, eid, body],
        )
        .unwrap();
        let outbox_id = outbox::enqueue(
            &tx,
            &NewItem {
                destination: &destination(TARGET),
                kind,
                item_key: &rid,
                unit_id: Some(unit_id),
                payload,
            },
            cipher,
        )
        .unwrap();
        units::transition(
            &tx,
            st,
            "tester",
            unit_id,
            UnitState::Queued { outbox_id },
            &Facts::default(),
        )
        .unwrap();
        tx.commit().unwrap();
        (unit_id, outbox_id)
    }

    pub fn unit_state(&self, unit_id: i64) -> UnitState {
        units::by_id(self.store().conn(), unit_id)
            .unwrap()
            .unwrap()
            .state
    }

    pub fn row(&self, id: i64) -> outbox::Item {
        outbox::get(self.store().conn(), id).unwrap().unwrap()
    }

    pub fn enrollment_row(&self, unit_id: i64) -> (Option<String>, String) {
        self.store()
            .conn()
            .query_row(
                "SELECT etag, status FROM enrollments WHERE unit_id = ?1",
                [unit_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    }

    pub fn audit_events(&self, event: &str) -> Vec<String> {
        let store = self.store();
        let mut st = store
            .conn()
            .prepare(
                "SELECT subject || ' ' || details FROM audit_log WHERE event = ?1 ORDER BY seq",
            )
            .unwrap();
        st.query_map([event], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

/// A random base64 key of 32 bytes.
pub fn random_key() -> String {
    let mut k = [0u8; 32];
    aws_lc_rs::rand::fill(&mut k).unwrap();
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// A symmetric-key individual enrollment with fresh keys.
pub fn symmetric(rid: &str) -> IndividualEnrollment {
    IndividualEnrollment::new(
        rid.parse().unwrap(),
        AttestationMechanism::symmetric_key(
            Some(KeyText::new(random_key())),
            Some(KeyText::new(random_key())),
        ),
    )
}

/// The primary key of a symmetric-key enrollment made by [`symmetric`], as its text.
pub fn primary_key(e: &IndividualEnrollment) -> String {
    e.attestation
        .symmetric_key
        .as_ref()
        .and_then(|k| k.primary_key.as_ref())
        .expect("a symmetric-key enrollment")
        .expose()
        .to_owned()
}

/// A TPM individual enrollment with a made-up EK (the service does not check its structure).
pub fn tpm(rid: &str, ek: &[u8]) -> IndividualEnrollment {
    IndividualEnrollment::new(
        rid.parse().unwrap(),
        AttestationMechanism::tpm(base64::engine::general_purpose::STANDARD.encode(ek)),
    )
}

/// A real AES-256-GCM software cipher for the tests (the station's own cipher keeps its key
/// in the HSM); nonce || ciphertext || tag.
pub struct SoftwareTestCipher {
    key: LessSafeKey,
}

impl SoftwareTestCipher {
    pub fn new() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(k.as_mut()).unwrap();
        Self {
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k.as_ref()).unwrap()),
        }
    }
}

impl PayloadCipher for SoftwareTestCipher {
    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, CipherError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| CipherError("no random".into()))?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .map_err(|_| CipherError("seal failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    fn open(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CipherError> {
        if sealed.len() < NONCE_LEN {
            return Err(CipherError("sealed payload too short".into()));
        }
        let (n, ct) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(n).map_err(|_| CipherError("bad nonce".into()))?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .map_err(|_| CipherError("open failed (wrong key or altered payload)".into()))?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
