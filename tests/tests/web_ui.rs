#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The operator web UI of `station serve`, driven by Debian's chromium (playwright-core in
//! tests/browser): a supervisor opens the lot; sign-in is refused with a wrong password, then
//! done with a badge scanned into the badge box; a malformed scan is refused on the fixture's
//! banner; a unit runs from the scan box to PASS under the signed-in user's name; its record is
//! found by its registration ID; the lot shows it; sign-out. The database then holds the unit
//! with that operator and the lot opened by the supervisor, the audit chain and its keyed
//! checkpoint verify, and no password or badge is in the log. Needs chromium and `npm ci` in
//! tests/browser; fails (never skips) without them.

use std::path::PathBuf;
use std::process::Command;

use station_e2e::UnitSim;
use station_e2e::line::{LineRig, StationServe};

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// `station serve` with the web UI on a free port (`web` adds keys to `[web]`) and one X.509
/// fixture on `sim`'s link, once the UI listens; and the UI's URL.
fn serve_web(rig: &LineRig, fixture: &str, sim: &UnitSim, web: &str) -> (StationServe, String) {
    rig.config(
        "30-web.toml",
        &format!(
            "[web]\nlisten = \"127.0.0.1:0\"\nrefresh_ms = 200\n{web}\
             [fixtures.{fixture}]\nproduct = \"sensor-x509\"\nserial_port = \"{}\"\n",
            sim.pty.display()
        ),
    );
    let serve = StationServe::start(rig, &[]);
    serve.wait_logged("web UI listening", 60);
    let url = std::fs::read_to_string(rig.home.join("run/web.url")).unwrap();
    (serve, url.trim().to_owned())
}

/// Runs `script` of tests/browser with `env`; what it saw, as JSON. A failed run fails the
/// test with its output and the station's log.
fn browse(script: &str, env: &[(&str, &str)], serve: &StationServe) -> serde_json::Value {
    let dir = browser_dir();
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: run scripts/bootstrap (Debian package `chromium`)"
    );
    assert!(
        dir.join("node_modules/playwright-core/package.json")
            .exists(),
        "the pinned npm packages are missing: run scripts/test-deps (npm ci in tests/browser)"
    );
    let out = Command::new("node")
        .arg(dir.join(script))
        .current_dir(&dir)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser run failed:\n{stdout}\n{}\nstation log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        serve.log_text()
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn an_operator_runs_a_unit_from_the_browser() {
    let rig = LineRig::new();
    let badge = "BADGE-5512-ann";
    let password = "pw-for-ann-4711";
    rig.add_user("ann", "operator", Some(password), Some(badge));
    rig.add_user("sam", "supervisor", Some("pw-for-sam-1234"), None);
    let serial = "SX-000211";
    let sim = UnitSim::start(
        &rig.dir.path().join("unit"),
        &["--serial", serial, "--model", "SX-100"],
    );
    let (serve, url) = serve_web(&rig, "bench-3", &sim, "");
    let search = serial.to_lowercase();
    let seen = browse(
        "operator-ui.js",
        &[
            ("STATION_URL", url.as_str()),
            ("SUPERVISOR", "sam"),
            ("SUPERVISOR_PASSWORD", "pw-for-sam-1234"),
            ("PRODUCT", "sensor-x509"),
            ("LOT", "WO-77"),
            ("WEB_USER", "ann"),
            ("WEB_PASSWORD", password),
            ("WEB_BADGE", badge),
            ("FIXTURE", "bench-3"),
            ("SERIAL", serial),
            // Its registration ID (the serial, by the product's template) as DPS may print
            // it: IDs compare without case there, and here.
            ("SEARCH", search.as_str()),
            ("BAD_SCAN", "SX-12"),
        ],
        &serve,
    );
    let text = |k: &str| seen[k].as_str().unwrap_or_default().to_owned();

    assert_eq!(text("unsignedPath"), "/login");
    assert!(
        text("lotOpened").starts_with("Opened lot WO-77 for 50"),
        "{seen}"
    );
    assert_eq!(text("wrongPassword"), "Wrong user name or password.");
    assert_eq!(text("signedInAs"), "ann");
    assert_eq!(seen["scanFocused"], true);
    assert_eq!(seen["stayedOnPage"], true);
    let refused = text("refused");
    assert!(
        refused.starts_with("REFUSED")
            && refused.contains("\"SX-12\"")
            && refused.contains("SX-[0-9]{6}"),
        "{refused}"
    );
    let outcome = text("outcome");
    assert!(
        outcome.starts_with("PASS") && outcome.contains(serial),
        "{outcome}\nstation log:\n{}",
        serve.log_text()
    );
    assert!(text("recent").contains(&format!("PASS {serial}")), "{seen}");
    assert!(
        text("unitState").starts_with("queued") || text("unitState").starts_with("uploaded"),
        "{seen}"
    );
    assert_eq!(text("unitOperator"), "ann");
    assert!(seen["unitSteps"].as_u64().unwrap() >= 4, "{seen}");
    assert_eq!(text("foundBySearch"), format!("/units/{serial}"));
    let lots = text("lots");
    assert!(
        lots.contains("1 of 50 units") && lots.contains("sensor-x509"),
        "{lots}"
    );
    assert_eq!(text("afterSignOutPath"), "/login");

    // The record: the unit passed on that fixture under the web user's name.
    let (state, operator, fixture, lot): (String, String, String, String) = rig
        .db()
        .query_row(
            "SELECT u.state, u.operator, u.fixture, l.id || ' ' || l.opened_by FROM units u
             JOIN lots l ON l.id = u.lot_id WHERE u.serial = ?1",
            [serial],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert!(state == "queued" || state == "uploaded", "{state}");
    assert_eq!(
        (operator.as_str(), fixture.as_str(), lot.as_str()),
        ("ann", "bench-3", "WO-77 sam")
    );
    // The lot's audit entry is under the keyed checkpoint like every other.
    drop(serve);
    let out = rig.station(&["audit", "verify"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && said.contains("keyed checkpoint intact")
            && !said.contains("hash chain only"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The malformed scan started nothing.
    let units: i64 = rig
        .db()
        .query_row("SELECT count(*) FROM units", [], |r| r.get(0))
        .unwrap();
    assert_eq!(units, 1);
    // Sign-ins are logged, secrets are not.
    let log = std::fs::read_to_string(rig.home.join("logs/station.log")).unwrap();
    assert!(log.contains("signed in to the web UI") && log.contains("web sign-in refused"));
    for secret in [password, badge, "not-the-password", "pw-for-sam-1234"] {
        assert!(!log.contains(secret), "{secret} is in the station log");
    }
}

/// A CA and a server certificate for 127.0.0.1 it signed: (chain PEM, key PEM, CA PEM).
fn server_cert() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "plant IT test CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let leaf = params.signed_by(&key, &ca).unwrap();
    let ca_pem = ca.as_ref().pem();
    (
        format!("{}{}", leaf.pem(), ca_pem),
        key.serialize_pem(),
        ca_pem,
    )
}

/// Node's own HTTPS client (no browser): signs in and prints the answer, or the TLS error.
const HTTPS_SIGN_IN: &str = r"
const https = require('https');
const fs = require('fs');
const ca = process.env.CA_FILE ? fs.readFileSync(process.env.CA_FILE) : undefined;
const req = https.request(process.env.STATION_URL + 'login', {
  method: 'POST', ca, agent: false,
  headers: { 'content-type': 'application/x-www-form-urlencoded', connection: 'close' },
}, (res) => {
  res.resume();
  console.log(JSON.stringify({ status: res.statusCode, location: res.headers.location,
    cookie: (res.headers['set-cookie'] || []).join(';') }));
});
req.on('error', (e) => console.log(JSON.stringify({ error: e.code || e.message })));
req.end('user=ann&password=' + encodeURIComponent(process.env.WEB_PASSWORD));
";

#[test]
fn the_web_ui_serves_https_with_the_plants_certificate_and_refuses_a_key_that_is_not_its() {
    let rig = LineRig::new();
    let password = "pw-for-ann-over-tls";
    rig.add_user("ann", "operator", Some(password), None);
    let (chain, key, ca) = server_cert();
    let web = rig.home.join("web");
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(web.join("cert.pem"), &chain).unwrap();
    std::fs::write(web.join("key.pem"), &key).unwrap();
    std::fs::write(web.join("ca.pem"), &ca).unwrap();
    std::fs::set_permissions(
        web.join("key.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // station check sees HTTPS, and the key kept to its owner.
    rig.config(
        "30-web.toml",
        "[web]\nlisten = \"0.0.0.0:0\"\ntls_cert_file = \"web/cert.pem\"\ntls_key_file = \"web/key.pem\"\n",
    );
    let checked = String::from_utf8_lossy(&rig.station(&["check"]).stdout).into_owned();
    let line = checked
        .lines()
        .find(|l| l.starts_with("web UI"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.contains(" ok ") && line.contains("https://0.0.0.0:0/"),
        "{checked}"
    );
    let sim = UnitSim::start(&rig.dir.path().join("unit"), &["--serial", "SX-000300"]);
    let (serve, url) = serve_web(
        &rig,
        "bench-4",
        &sim,
        "tls_cert_file = \"web/cert.pem\"\ntls_key_file = \"web/key.pem\"\n",
    );
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let sign_in = |ca: Option<&std::path::Path>| -> serde_json::Value {
        let mut c = Command::new("node");
        c.arg("-e")
            .arg(HTTPS_SIGN_IN)
            .env("STATION_URL", &url)
            .env("WEB_PASSWORD", password);
        if let Some(ca) = ca {
            c.env("CA_FILE", ca);
        }
        let out = c.output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    // A client that trusts the plant's CA signs in; the session cookie never goes over HTTP.
    let ok = sign_in(Some(&web.join("ca.pem")));
    assert_eq!(
        (ok["status"].as_u64(), ok["location"].as_str()),
        (Some(303), Some("/")),
        "{ok}"
    );
    let cookie = ok["cookie"].as_str().unwrap();
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // One that does not trust it stops at the certificate.
    let refused = sign_in(None);
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("CERT") || e.contains("SIGNED")),
        "{refused}"
    );
    drop(serve);

    // A key that is not the certificate's: the daemon does not start, and says which file.
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(web.join("key.pem"), other.serialize_pem()).unwrap();
    let out = rig.station(&["serve"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("HTTPS key") && said.contains("key.pem"),
        "{said}"
    );
    assert!(!said.contains("PRIVATE KEY"), "{said}");
}

#[test]
fn abort_stops_a_running_unit_from_the_browser_and_retry_runs_it_again() {
    let rig = LineRig::new();
    let password = "pw-for-bo-2718";
    rig.add_user("bo", "operator", Some(password), None);
    rig.open_lot("sensor-x509");
    let serial = "SX-000401";
    // Every answer of the unit waits 150 ms: a unit takes seconds, time enough to abort it.
    let sim = UnitSim::start(
        &rig.dir.path().join("slow"),
        &["--serial", serial, "--model", "SX-100", "--delay-ms", "150"],
    );
    let (serve, url) = serve_web(&rig, "bench-5", &sim, "");
    let seen = browse(
        "abort-retry.js",
        &[
            ("STATION_URL", url.as_str()),
            ("WEB_USER", "bo"),
            ("WEB_PASSWORD", password),
            ("FIXTURE", "bench-5"),
            ("SERIAL", serial),
        ],
        &serve,
    );
    let text = |k: &str| seen[k].as_str().unwrap_or_default().to_owned();
    assert!(
        text("running").starts_with(&format!("RUNNING {serial}")),
        "{seen}"
    );
    assert!(
        text("aborted").starts_with(&format!("FAIL {serial}"))
            && text("aborted").contains("aborted by the operator (CMD:ABORT)"),
        "{seen}"
    );
    assert!(
        text("retried").starts_with(&format!("PASS {serial}")),
        "{seen}"
    );
    // Newest first: the retry's PASS above the aborted run's FAIL with its reason.
    let recent = text("recent");
    let (pass, fail) = (
        recent.find(&format!("PASS {serial}")),
        recent.find(&format!("FAIL {serial}")),
    );
    assert!(pass.is_some() && fail.is_some() && pass < fail, "{recent}");
    assert!(recent.contains("aborted by the operator"), "{recent}");
    // The record: two runs, the first failed by the abort, one live certificate.
    let db = rig.db();
    let runs: i64 = db
        .query_row(
            "SELECT count(*) FROM runs r JOIN units u ON u.id = r.unit_id WHERE u.serial = ?1",
            [serial],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(runs, 2);
    let aborted: i64 = db
        .query_row(
            "SELECT count(*) FROM run_transitions t JOIN runs r ON r.id = t.run_id
             JOIN units u ON u.id = r.unit_id
             WHERE u.serial = ?1 AND t.to_state = 'failed' AND t.data LIKE '%CMD:ABORT%'",
            [serial],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(aborted, 1);
    assert_eq!(rig.live_certs(serial), 1);
    assert!(matches!(
        rig.state(serial).as_deref(),
        Some("queued" | "uploaded")
    ));
    drop(serve);
    rig.audit_verify();
}
