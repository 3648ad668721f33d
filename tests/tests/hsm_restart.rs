//! A long-lived HSM session (the uploader's: audit seal and outbox cipher) across restarts of
//! the PKCS#11 module, with real modules and no fake:
//! - another thread restarted the module after an outage (SoftHSM, restarted in process): the
//!   session is opened again, and a payload sealed before the restart still opens;
//! - the HSM went away under the session itself (`p11-kit server` in front of SoftHSM, killed
//!   and started again): the failing call restarts the module, and the next call reconnects.
//!
//! One test per file: the p11-kit client module reads its server address from the environment
//! once per process, and a module restart ends every session of the process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cryptoki::object::ObjectClass;
use station::ca::service::{self, AuditKey};
use station::config::Config;
use station::home::Home;
use station::hsm::Hsm;
use station::hsm::restart::{self, FollowingSession};
use station::keys::OutboxCipher;

use station_e2e::p11::{P11Server, p11_kit_client};
use station_e2e::station_init;

#[test]
fn a_following_session_serves_again_after_the_module_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("H");
    station_init(&root);
    let home = Home::new(&root);
    let cfg = Config::load(&home).unwrap().config;
    let conf = root.join("hsm/softhsm2.conf");
    let sock = dir.path().join("hsm.sock");
    // SAFETY: the only test in this process, before either module is loaded.
    unsafe {
        std::env::set_var("SOFTHSM2_CONF", &conf);
        std::env::set_var(
            "P11_KIT_SERVER_ADDRESS",
            format!("unix:path={}", sock.display()),
        );
    }
    let label = cfg.ca.audit_key_label.clone();
    let following = |hsm: &'static Hsm| {
        let (home, cfg, label) = (home.clone(), cfg.clone(), label.clone());
        FollowingSession::new(
            hsm,
            move || service::open_ca_token(hsm, &home, &cfg).map_err(|e| e.to_string()),
            move |s| s.has_key(&label, ObjectClass::SECRET_KEY).is_ok(),
        )
    };

    // SoftHSM in process; another thread restarts the module (as a fixture does after an
    // outage) between a seal and the open of the same payload.
    let softhsm: &'static Hsm = Box::leak(Box::new(service::open_hsm(&home, &cfg).unwrap()));
    let session = following(softhsm);
    let sealed = session
        .with(|s| {
            OutboxCipher::new(s)
                .and_then(|c| c.seal(b"unit key"))
                .map_err(|e| e.to_string())
        })
        .unwrap();
    let before = restart::epoch();
    std::thread::scope(|t| {
        t.spawn(|| {
            let mut seen = restart::epoch();
            restart::restart_module(softhsm, &mut seen);
        });
    });
    assert_eq!(restart::epoch(), before + 1, "the module was restarted");
    let opened = session
        .with(|s| {
            OutboxCipher::new(s)
                .and_then(|c| c.open(&sealed))
                .map_err(|e| e.to_string())
        })
        .expect("the session is opened again after the restart");
    assert_eq!(opened.as_slice(), b"unit key");

    // The CA token behind p11-kit; the server dies and comes back under the open session.
    let server = P11Server::start(&conf, &sock, &["station-ca"]);
    let client: &'static Hsm = Box::leak(Box::new(Hsm::load_module(&p11_kit_client()).unwrap()));
    let session = following(client);
    let mac = |s: &station::hsm::TokenSession| {
        AuditKey::find(s, &label)
            .map_err(|e| e.to_string())
            .and_then(|k| k.mac(b"checkpoint").map_err(|e| e.to_string()))
    };
    let tag = session.with(mac).unwrap();
    drop(server);
    let _server = P11Server::start(&conf, &sock, &["station-ca"]);
    let epoch = restart::epoch();
    let lost = session
        .with(mac)
        .expect_err("the session of the dead server cannot answer");
    assert!(!lost.is_empty());
    assert_eq!(
        restart::epoch(),
        epoch + 1,
        "the failing call restarts the module"
    );
    assert_eq!(
        session.with(mac).expect("reconnected after the restart"),
        tag,
        "the same key answers"
    );
}
