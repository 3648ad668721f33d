//! The routes through `Router::oneshot`, on a real SQLite store with real users and a fixture
//! whose job queue is a channel the test reads (as the fixture's hardware thread would).

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, mpsc};

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode, header};
use secrecy::SecretString;
use tower::ServiceExt as _;

use super::{WebState, router};
use crate::config::Config;
use crate::home::Home;
use crate::line::board::Board;
use crate::line::serve::FixtureJob;
use crate::line::setup::LineSetup;
use crate::operators::{BadgeKey, NewOperator, Operators, Role};
use crate::store::Store;
use crate::trigger::parse::{Badge, Scan};

const PASSWORD: &str = "a-long-password";
const BADGE: &str = "B-77-ann";

struct Rig {
    dir: tempfile::TempDir,
    app: axum::Router,
    jobs: mpsc::Receiver<FixtureJob>,
    board: Arc<Board>,
    abort: Arc<AtomicBool>,
    /// The uploader's signal, as serve gives it to the UI.
    uploader: crate::outbox::UploadSignal,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let products = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/products");
    let cfg: Config = toml::from_str(&format!(
        "[line]\nproducts_dir = \"{}\"\n[dps.targets.local]\ndelivery = \"export\"\nid_scope = \"0ne00000001\"\n\
         [fixtures.fx1]\nproduct = \"sensor-x509\"\nserial_port = \"/dev/null\"\n",
        products.display()
    ))
    .unwrap();
    let home = Home::new(dir.path());
    std::fs::create_dir_all(home.secrets_dir()).unwrap();
    std::fs::write(home.badge_key_file(), "00112233445566778899aabbccddeeff").unwrap();
    let mut store = Store::create(&home.resolve(&cfg.store.path), &cfg.store).unwrap();
    let key = BadgeKey::load(&home.badge_key_file()).unwrap();
    // ann, an operator with a password and a badge; sam, a supervisor with a password.
    for (name, role, badge) in [
        ("ann", Role::Operator, Some(BADGE)),
        ("sam", Role::Supervisor, None),
    ] {
        Operators::new(&mut store, cfg.station_id(), &key)
            .add(
                "test",
                &NewOperator {
                    username: crate::ids::Username::new(name.to_owned()).unwrap(),
                    display_name: name.to_owned(),
                    role,
                    password: Some(SecretString::from(PASSWORD)),
                    badge: badge.map(|b| Badge::new(SecretString::from(b))),
                },
            )
            .unwrap();
    }
    drop(store);
    let setup = Arc::new(LineSetup::load(&home, &cfg).unwrap());
    let board = Board::new([("fx1", "sensor-x509")]);
    let (tx, jobs) = mpsc::channel();
    let abort = Arc::new(AtomicBool::new(false));
    let uploader = crate::outbox::UploadSignal::new();
    let state = WebState::new(
        &setup,
        [("fx1", &tx, &abort)],
        &board,
        (None, Some(&uploader)),
        8480,
    )
    .unwrap();
    let app = router(state).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    Rig {
        dir,
        app,
        jobs,
        board,
        abort,
        uploader,
    }
}

async fn send(
    app: &axum::Router,
    req: Request<Body>,
) -> (StatusCode, Option<String>, String, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let location = res
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let cookie = res
        .headers()
        .get(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        location,
        cookie,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn post(uri: &str, form: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b =
        Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::from(form.to_owned())).unwrap()
}

fn get(uri: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::get(uri);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::empty()).unwrap()
}

/// Signs ann (an operator) in with her password; the session cookie as a request sends it.
async fn sign_in(app: &axum::Router) -> String {
    sign_in_as(app, "ann").await
}

/// Who the audit log says did `event` (the one entry of that event).
fn audit_actor(db: &rusqlite::Connection, event: &str) -> String {
    db.query_row(
        "SELECT actor FROM audit_log WHERE event = ?1",
        [event],
        |r| r.get(0),
    )
    .unwrap()
}

/// Signs `user` in with the password.
async fn sign_in_as(app: &axum::Router, user: &str) -> String {
    let (status, location, cookie, _) = send(
        app,
        post("/login", &format!("user={user}&password={PASSWORD}"), None),
    )
    .await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/"))
    );
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn pages_need_a_session_and_a_wrong_password_says_so() {
    let r = rig();
    for uri in [
        "/",
        "/board",
        "/fixtures/fx1",
        "/units",
        "/lots",
        "/units/SX-000001",
    ] {
        let (status, location, _, _) = send(&r.app, get(uri, None)).await;
        assert_eq!(
            (status, location.as_deref()),
            (StatusCode::SEE_OTHER, Some("/login")),
            "{uri}"
        );
    }
    let (status, _, cookie, body) = send(
        &r.app,
        post("/login", "user=ann&password=wrong-password", None),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(cookie.is_empty(), "no session for a wrong password");
    assert!(body.contains("Wrong user name or password."), "{body}");
    assert!(
        !body.contains("wrong-password"),
        "the password is not echoed"
    );
    // A made-up session token is no session.
    let (_, location, _, _) = send(&r.app, get("/", Some("station_session_8480=forged"))).await;
    assert_eq!(location.as_deref(), Some("/login"));
}

#[tokio::test]
async fn a_badge_signs_in_and_a_wrong_one_is_refused_without_showing_it() {
    let r = rig();
    let (status, location, cookie, _) =
        send(&r.app, post("/login", &format!("badge=OP%3A{BADGE}"), None)).await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/"))
    );
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let (_, _, cookie, body) = send(&r.app, post("/login", "badge=OP%3Anot-a-badge-9", None)).await;
    assert!(cookie.is_empty());
    assert!(body.contains("Unknown badge"), "{body}");
    assert!(!body.contains("not-a-badge-9"));
    // An empty form says what to do.
    let (_, _, cookie, body) = send(&r.app, post("/login", "badge=&user=&password=", None)).await;
    assert!(cookie.is_empty());
    assert!(
        body.contains("Scan your badge, or enter your user name and password."),
        "{body}"
    );
}

#[tokio::test]
async fn repeated_wrong_passwords_lock_the_name_out() {
    let r = rig();
    for _ in 0..5 {
        send(
            &r.app,
            post("/login", "user=ann&password=wrong-password", None),
        )
        .await;
    }
    // Even the right password waits now.
    let (_, _, cookie, body) = send(
        &r.app,
        post("/login", &format!("user=ann&password={PASSWORD}"), None),
    )
    .await;
    assert!(cookie.is_empty());
    assert!(body.contains("Too many wrong attempts"), "{body}");
}

#[tokio::test]
async fn a_scan_goes_to_the_fixture_under_the_users_name_and_a_bad_one_to_the_banner() {
    let r = rig();
    let c = sign_in(&r.app).await;
    let (status, location, _, _) = send(
        &r.app,
        post("/fixtures/fx1/scan", "code=SX-000042", Some(&c)),
    )
    .await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/fixtures/fx1"))
    );
    match r.jobs.try_recv() {
        Ok(FixtureJob::Scan {
            scan: Scan::Serial(s),
            operator,
        }) => assert_eq!(
            (s.as_str(), operator.as_deref()),
            ("SX-000042", Some("ann"))
        ),
        other => panic!(
            "expected the serial on the fixture's queue, got {:?}",
            other.is_ok()
        ),
    }
    // The same label again within the debounce window (a scanner's double read) is dropped.
    send(
        &r.app,
        post("/fixtures/fx1/scan", "code=SX-000042", Some(&c)),
    )
    .await;
    assert!(r.jobs.try_recv().is_err(), "a double read runs nothing");
    // Not this product's serial: nothing reaches the fixture; the banner says why.
    send(&r.app, post("/fixtures/fx1/scan", "code=XX-1", Some(&c))).await;
    assert!(r.jobs.try_recv().is_err());
    let (_, _, _, body) = send(&r.app, get("/fixtures/fx1/status", Some(&c))).await;
    assert!(
        body.contains("REFUSED") && body.contains("XX-1") && body.contains("SX-[0-9]{6}"),
        "{body}"
    );
    // CMD:RETRY from the button.
    send(&r.app, post("/fixtures/fx1/retry", "", Some(&c))).await;
    assert!(matches!(
        r.jobs.try_recv(),
        Ok(FixtureJob::Scan {
            scan: Scan::Retry,
            ..
        })
    ));
    // Abort with nothing running says so, and queues nothing.
    send(&r.app, post("/fixtures/fx1/abort", "", Some(&c))).await;
    assert!(r.jobs.try_recv().is_err());
    assert_eq!(
        r.board.snapshot()["fx1"]
            .last
            .as_ref()
            .map(|m| m.text.clone())
            .as_deref(),
        Some("CMD:ABORT: no unit running")
    );
    // What the fixture threads put on the board shows on the fixture's page and the line's.
    r.board
        .hsm("fx1", Some("the module does not answer".into()));
    r.board
        .scanner("fx1", Some("No such file or directory".into()));
    r.board.started("fx1", "SX-000042");
    let (_, _, _, body) = send(&r.app, get("/fixtures/fx1/status", Some(&c))).await;
    assert!(
        body.contains("HSM unavailable: the module does not answer")
            && body.contains("Scanner disconnected: No such file or directory")
            && body.contains("RUNNING"),
        "{body}"
    );
    let (_, _, _, body) = send(&r.app, get("/board", Some(&c))).await;
    assert!(
        body.contains("HSM unavailable") && body.contains("SX-000042"),
        "{body}"
    );
    // Abort while a unit runs raises the flag the unit checks at its next step.
    assert!(!r.abort.load(std::sync::atomic::Ordering::Relaxed));
    send(&r.app, post("/fixtures/fx1/abort", "", Some(&c))).await;
    assert!(r.abort.load(std::sync::atomic::Ordering::Relaxed));
    assert!(r.jobs.try_recv().is_err());
    // A fixture this station does not run.
    let (status, _, _, body) = send(
        &r.app,
        post("/fixtures/fx9/scan", "code=SX-000001", Some(&c)),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no fixture called fx9"), "{body}");
}

#[tokio::test]
async fn a_post_from_another_site_is_refused() {
    let r = rig();
    let c = sign_in(&r.app).await;
    let req = Request::post("/fixtures/fx1/scan")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, &c)
        .header(header::HOST, "127.0.0.1:8480")
        .header(header::ORIGIN, "http://evil.example")
        .body(Body::from("code=SX-000042"))
        .unwrap();
    let (status, _, _, body) = send(&r.app, req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("another site"));
    assert!(r.jobs.try_recv().is_err(), "nothing reached the fixture");
}

#[tokio::test]
async fn units_and_lots_read_the_database() {
    let r = rig();
    let c = sign_in(&r.app).await;
    let (status, _, _, body) = send(&r.app, get("/units/SX-404404", Some(&c))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("No unit with serial SX-404404"), "{body}");
    let (status, location, _, body) = send(&r.app, get("/units?q=SX-404404", Some(&c))).await;
    assert_eq!((status, location), (StatusCode::OK, None));
    assert!(
        body.contains("No unit with serial, registration ID or device ID SX-404404"),
        "{body}"
    );
    let (status, _, _, body) = send(&r.app, get("/lots", Some(&c))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("No lot yet"), "{body}");
    let (status, _, _, body) = send(&r.app, get("/", Some(&c))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("id=\"fixture-fx1\"") && body.contains("READY"),
        "{body}"
    );
    // Signing out ends the session.
    let (_, location, cleared, _) = send(&r.app, post("/logout", "", Some(&c))).await;
    assert_eq!(location.as_deref(), Some("/login"));
    assert!(
        cleared.contains("Max-Age=0") || cleared.contains("Expires"),
        "{cleared}"
    );
    let (_, location, _, _) = send(&r.app, get("/", Some(&c))).await;
    assert_eq!(location.as_deref(), Some("/login"));
}

#[tokio::test]
async fn a_supervisor_opens_and_closes_lots_and_an_operator_may_not() {
    let r = rig();
    let db = || rusqlite::Connection::open(r.dir.path().join("station.db")).unwrap();
    let lots = || -> Vec<(String, String)> {
        db().prepare("SELECT id, status FROM lots ORDER BY id")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let ann = sign_in(&r.app).await;
    let (_, location, _, _) = send(
        &r.app,
        post(
            "/lots",
            "product=sensor-x509&quantity=10&id=WO-1",
            Some(&ann),
        ),
    )
    .await;
    assert_eq!(location.as_deref(), Some("/lots"));
    let (_, _, _, body) = send(&r.app, get("/lots", Some(&ann))).await;
    assert!(body.contains("Only a supervisor can open a lot"), "{body}");
    assert!(!body.contains("id=\"open-lot\""), "no form for an operator");
    assert!(lots().is_empty());

    let sam = sign_in_as(&r.app, "sam").await;
    send(
        &r.app,
        post(
            "/lots",
            "product=sensor-x509&quantity=10&id=WO-1",
            Some(&sam),
        ),
    )
    .await;
    let (_, _, _, body) = send(&r.app, get("/lots", Some(&sam))).await;
    assert!(body.contains("Opened lot WO-1 for 10"), "{body}");
    assert_eq!(lots(), [("WO-1".to_owned(), "open".to_owned())]);
    // The message shows once.
    let (_, _, _, body) = send(&r.app, get("/lots", Some(&sam))).await;
    assert!(!body.contains("Opened lot WO-1"));
    // Refusals say why and change nothing.
    for (form, says) in [
        ("product=sensor-x509&quantity=5&id=WO-2", "already"),
        (
            "product=sensor-x509&quantity=ten&id=WO-3",
            "not a whole number",
        ),
        ("product=sensor-x509&quantity=5&id=bad%20id", "Lot ID"),
    ] {
        send(&r.app, post("/lots", form, Some(&sam))).await;
        let (_, _, _, body) = send(&r.app, get("/lots", Some(&sam))).await;
        assert!(
            body.contains("class=\"banner refused\"") && body.contains(says),
            "{form}: {body}"
        );
    }
    assert_eq!(lots().len(), 1);
    send(&r.app, post("/lots/WO-1/close", "", Some(&sam))).await;
    assert_eq!(lots(), [("WO-1".to_owned(), "closed".to_owned())]);
    // Each change has its audit entry, by the web user.
    let audited: Vec<(String, String)> = db()
        .prepare("SELECT actor, event FROM audit_log WHERE event LIKE 'lot.%' ORDER BY seq")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        audited,
        [
            ("sam".to_owned(), "lot.open".to_owned()),
            ("sam".to_owned(), "lot.close".to_owned())
        ]
    );
    // A requeue of a row that is not in conflict is refused with the reason.
    send(&r.app, post("/outbox/12345/requeue", "", Some(&sam))).await;
    let (status, _, _, body) = send(&r.app, get("/outbox", Some(&sam))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("Outbox row #12345 is not in conflict."),
        "{body}"
    );
    send(&r.app, post("/outbox/12345/requeue", "", Some(&ann))).await;
    let (_, _, _, body) = send(&r.app, get("/outbox", Some(&ann))).await;
    assert!(body.contains("Only a supervisor can requeue"), "{body}");
}

/// The upload page says where the uploaded units stand with DPS, as the checks recorded it:
/// counts, DPS's last answers per target, and the refused units with DPS's reason.
#[tokio::test]
async fn the_upload_page_shows_registrations_and_the_units_dps_refused_with_its_reason() {
    let r = rig();
    let c = sign_in(&r.app).await;
    let (_, _, _, body) = send(&r.app, get("/outbox", Some(&c))).await;
    assert!(
        body.contains("0 unit(s) registered with DPS; 0 uploaded and not registered yet.")
            && body.contains("every 300 s"),
        "{body}"
    );
    let db = rusqlite::Connection::open(r.dir.path().join("station.db")).unwrap();
    db.execute_batch(
        "INSERT INTO units (id, serial, product, registration_id, state, state_data, created_at, updated_at) VALUES
           (1, 'SX-000001', 'sensor-x509', 'sx-000001', 'registered', '{\"hub\":\"hub-a\",\"device_id\":\"sx-000001\"}', 't', 't'),
           (2, 'SX-000002', 'sensor-x509', 'sx-000002', 'uploaded', '{\"etag\":\"e\"}', 't', 't'),
           (3, 'SX-000003', 'sensor-x509', 'sx-000003', 'uploaded', '{\"etag\":\"e\"}', 't', 't');
         INSERT INTO dps_registrations (unit_id, dps_target, registration_id, status, assigned_hub, device_id, error_message, checked_at) VALUES
           (1, 'local', 'sx-000001', 'assigned', 'hub-a', 'sx-000001', NULL, '2026-12-01T10:00:00Z'),
           (2, 'local', 'sx-000002', 'none', NULL, NULL, NULL, '2026-12-01T10:00:01Z'),
           (3, 'local', 'sx-000003', 'disabled', NULL, NULL, 'the individual enrollment <sx-000003> is disabled', '2026-12-01T10:00:02Z');",
    )
    .unwrap();
    let (status, _, _, body) = send(&r.app, get("/outbox", Some(&c))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("1 unit(s) registered with DPS; 2 uploaded and not registered yet."),
        "{body}"
    );
    for row in [
        "<td>local</td><td>assigned</td><td>1</td><td>2026-12-01T10:00:00Z</td>",
        "<td>local</td><td>disabled</td><td>1</td><td>2026-12-01T10:00:02Z</td>",
        "<td>local</td><td>not registered yet</td><td>1</td><td>2026-12-01T10:00:01Z</td>",
    ] {
        assert!(body.contains(row), "{row} in {body}");
    }
    let refused = &body[body
        .find("id=\"registration-refused\"")
        .expect("refused table")..];
    assert!(
        refused.contains("<a href=\"/units/SX-000003\">SX-000003</a>")
            && refused.contains("the individual enrollment &#60;sx-000003&#62; is disabled"),
        "{refused}"
    );
    assert!(!refused.contains("SX-000002"), "{refused}");
}

/// "Ask DPS now" on the upload page: a supervisor's check of the uploaded units, recorded
/// under their name; an operator may not. (The rig's only DPS target is delivered by export,
/// so the answer says to ask by file.)
#[tokio::test]
async fn a_supervisor_asks_dps_now_and_an_operator_may_not() {
    let r = rig();
    let sam = sign_in_as(&r.app, "sam").await;
    let (_, _, _, body) = send(&r.app, get("/outbox", Some(&sam))).await;
    assert!(body.contains("id=\"ask-dps\""), "{body}");
    send(&r.app, post("/outbox/registrations", "", Some(&sam))).await;
    let (_, _, _, body) = send(&r.app, get("/outbox", Some(&sam))).await;
    assert!(
        body.contains("No unit to ask DPS about: none is uploaded and waiting to register."),
        "{body}"
    );
    let db = rusqlite::Connection::open(r.dir.path().join("station.db")).unwrap();
    db.execute_batch(
        "INSERT INTO units (id, serial, product, registration_id, state, state_data, created_at, updated_at) VALUES
           (1, 'SX-000001', 'sensor-x509', 'sx-000001', 'uploaded', '{\"etag\":\"e\"}', 't', 't');
         INSERT INTO enrollments (unit_id, dps_target, kind, enrollment_id, body, status, updated_at) VALUES
           (1, 'local', 'individual', 'sx-000001', '{}', 'uploaded', 't');",
    )
    .unwrap();
    send(&r.app, post("/outbox/registrations", "", Some(&sam))).await;
    let (_, _, _, body) = send(&r.app, get("/outbox", Some(&sam))).await;
    assert!(
        body.contains("Asked DPS about 1 unit(s): 0 newly registered, 0 refused, 0 not registered yet, 1 in a target delivered by export"),
        "{body}"
    );
    let ann = sign_in(&r.app).await;
    let (_, _, _, body) = send(&r.app, get("/outbox", Some(&ann))).await;
    assert!(!body.contains("id=\"ask-dps\""), "{body}");
    send(&r.app, post("/outbox/registrations", "", Some(&ann))).await;
    let (_, _, _, body) = send(&r.app, get("/outbox", Some(&ann))).await;
    assert!(
        body.contains("Only a supervisor can ask DPS which units registered"),
        "{body}"
    );
}

/// The unit page's end-of-line registration (`station unit register`): offered to a supervisor
/// for a symmetric-key unit DPS holds, never for an X.509 unit or to an operator, and its
/// refusal reaches the page. (The rig's only DPS target is delivered by export, so the station
/// says the unit cannot register from here; the registration itself is tested against the
/// local DPS in the end-to-end tests.)
#[tokio::test]
async fn a_supervisor_registers_a_symmetric_unit_from_its_page_and_an_operator_may_not() {
    let r = rig();
    let db = rusqlite::Connection::open(r.dir.path().join("station.db")).unwrap();
    db.execute_batch(
        "INSERT INTO units (id, serial, product, registration_id, attestation, state, state_data, created_at, updated_at) VALUES
           (1, 'SK-000001', 'sensor-key', 'SK-000001', 'symmetric-individual', 'uploaded', '{\"etag\":\"e\"}', 't', 't'),
           (2, 'SX-000001', 'sensor-x509', 'sx-000001', 'x509-link', 'uploaded', '{\"etag\":\"e\"}', 't', 't');
         INSERT INTO enrollments (unit_id, dps_target, kind, enrollment_id, body, status, updated_at) VALUES
           (1, 'local', 'individual', 'SK-000001', '{}', 'uploaded', 't'),
           (2, 'local', 'individual', 'sx-000001', '{}', 'uploaded', 't');",
    )
    .unwrap();
    let sam = sign_in_as(&r.app, "sam").await;
    let (_, _, _, body) = send(&r.app, get("/units/SK-000001", Some(&sam))).await;
    assert!(
        body.contains("action=\"/units/SK-000001/register\"")
            && body.contains("id=\"register-dps\""),
        "{body}"
    );
    let (_, _, _, body) = send(&r.app, get("/units/SX-000001", Some(&sam))).await;
    assert!(!body.contains("id=\"register-dps\""), "{body}");

    let (status, location, _, _) =
        send(&r.app, post("/units/SK-000001/register", "", Some(&sam))).await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/units/SK-000001"))
    );
    let (_, _, _, body) = send(&r.app, get("/units/SK-000001", Some(&sam))).await;
    assert!(
        body.contains("class=\"banner refused\" id=\"flash\">DPS target local has delivery = &#34;export&#34;: DPS is not reachable from this station, so unit SK-000001 cannot register from here"),
        "{body}"
    );
    // Nothing was recorded.
    let audited: i64 = db
        .query_row(
            "SELECT count(*) FROM audit_log WHERE event = 'unit.register'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(audited, 0);

    let ann = sign_in(&r.app).await;
    let (_, _, _, body) = send(&r.app, get("/units/SK-000001", Some(&ann))).await;
    assert!(!body.contains("id=\"register-dps\""), "{body}");
    send(&r.app, post("/units/SK-000001/register", "", Some(&ann))).await;
    let (_, _, _, body) = send(&r.app, get("/units/SK-000001", Some(&ann))).await;
    assert!(
        body.contains("Only a supervisor can register a unit with DPS"),
        "{body}"
    );
}

/// The unit page's Scrap form (`station unit scrap`): a supervisor's needs a reason, then
/// scraps the unit in one audited transaction and says what follows; an operator is refused
/// and never sees the form.
#[tokio::test]
async fn a_supervisor_scraps_a_unit_from_its_page_with_a_reason_and_an_operator_may_not() {
    let r = rig();
    let db = rusqlite::Connection::open(r.dir.path().join("station.db")).unwrap();
    db.execute_batch(
        "INSERT INTO units (id, serial, product, registration_id, attestation, state, state_data, created_at, updated_at) VALUES
           (1, 'SK-000001', 'sensor-key', 'SK-000001', 'symmetric-individual', 'uploaded', '{\"state\":\"uploaded\",\"etag\":\"e\"}', 't', 't');
         INSERT INTO runs (id, unit_id, fixture, started_at) VALUES (1, 1, 'key-1', 't');
         INSERT INTO enrollments (unit_id, dps_target, kind, enrollment_id, body, status, updated_at) VALUES
           (1, 'local', 'individual', 'SK-000001', '{}', 'uploaded', 't');
         INSERT INTO outbox (destination, kind, item_key, payload, created_at, unit_id, state) VALUES
           ('dps:local', 'dps.individual-enrollment', 'SK-000001', NULL, 't', 1, 'done');",
    )
    .unwrap();
    let ann = sign_in(&r.app).await;
    let (_, _, _, body) = send(&r.app, get("/units/SK-000001", Some(&ann))).await;
    assert!(!body.contains("id=\"scrap-unit\""), "{body}");
    send(
        &r.app,
        post("/units/SK-000001/scrap", "reason=x", Some(&ann)),
    )
    .await;
    let (_, _, _, body) = send(&r.app, get("/units/SK-000001", Some(&ann))).await;
    assert!(
        body.contains("Only a supervisor can scrap a unit"),
        "{body}"
    );

    let sam = sign_in_as(&r.app, "sam").await;
    let (_, _, _, body) = send(&r.app, get("/units/SK-000001", Some(&sam))).await;
    assert!(
        body.contains("action=\"/units/SK-000001/scrap\"") && body.contains("id=\"scrap-unit\""),
        "{body}"
    );
    send(
        &r.app,
        post("/units/SK-000001/scrap", "reason=+", Some(&sam)),
    )
    .await;
    let (_, _, _, body) = send(&r.app, get("/units/SK-000001", Some(&sam))).await;
    assert!(
        body.contains("class=\"banner refused\" id=\"flash\">give the reason the unit is scrapped"),
        "{body}"
    );
    let state = |db: &rusqlite::Connection| -> String {
        db.query_row("SELECT state FROM units WHERE id = 1", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(state(&db), "uploaded");
    let woken = |r: &Rig| {
        let waited = std::pin::pin!(r.uploader.woken());
        waited
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
            .is_ready()
    };
    assert!(!woken(&r), "nothing was queued");

    let (status, location, _, _) = send(
        &r.app,
        post(
            "/units/SK-000001/scrap",
            "reason=failed+burn-in",
            Some(&sam),
        ),
    )
    .await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/units/SK-000001"))
    );
    let (_, _, _, body) = send(&r.app, get("/units/SK-000001", Some(&sam))).await;
    assert!(
        body.contains("class=\"banner pass\" id=\"flash\">Unit SK-000001 scrapped: failed burn-in. DPS (local) will refuse it once the upload delivers the block."),
        "{body}"
    );
    assert!(
        body.contains("scrapped (was uploaded): failed burn-in"),
        "{body}"
    );
    assert!(!body.contains("id=\"scrap-unit\""), "scrapped once: {body}");
    assert_eq!(state(&db), "scrapped");
    assert!(
        woken(&r),
        "the block goes now, not at the uploader's next interval"
    );
    let audited = audit_actor(&db, "unit.scrap");
    assert_eq!(audited, "sam");
}

/// The Upload page's backups: where they stand, and a supervisor's "Back up now" (`station
/// backup`), audited under their name; an operator is refused.
#[tokio::test]
async fn a_supervisor_backs_up_the_database_from_the_upload_page() {
    let r = rig();
    let ann = sign_in(&r.app).await;
    let (_, _, _, body) = send(&r.app, get("/outbox", Some(&ann))).await;
    assert!(
        body.contains("id=\"backup-status\">none in ") && !body.contains("id=\"backup-now\""),
        "{body}"
    );
    send(&r.app, post("/outbox/backup", "", Some(&ann))).await;
    let (_, _, _, body) = send(&r.app, get("/outbox", Some(&ann))).await;
    assert!(
        body.contains("Only a supervisor can back up the database"),
        "{body}"
    );
    let backups = r.dir.path().join("backups");
    assert!(crate::store::backup::in_dir(&backups).unwrap().is_empty());

    let sam = sign_in_as(&r.app, "sam").await;
    let (status, location, _, _) = send(&r.app, post("/outbox/backup", "", Some(&sam))).await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/outbox"))
    );
    let (_, _, _, body) = send(&r.app, get("/outbox", Some(&sam))).await;
    let made = crate::store::backup::in_dir(&backups).unwrap();
    assert_eq!(made.len(), 1, "{body}");
    let name = made[0]
        .0
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        body.contains(&format!(
            "class=\"banner pass\" id=\"flash\">Backup {name} written: 0 unit(s), 0 certificate(s); integrity ok, audit chain intact, keyed checkpoint not checked (the station HSM is not open)."
        )),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "id=\"backup-status\">newest {name}, 0 h old, 1 kept in"
        )),
        "{body}"
    );
    let db = rusqlite::Connection::open(r.dir.path().join("station.db")).unwrap();
    let actor = audit_actor(&db, "store.backup");
    assert_eq!(actor, "sam");
}
