#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `station serve` driven by a fixture's barcode scanner (a pseudo-terminal behind a by-id style
//! symlink): a unit scanned with nobody logged on is refused, an unknown badge is refused with an
//! event naming the fixture, a known badge logs its holder on, the unit then passes and records
//! its operator; SIGTERM stops the daemon cleanly. No badge code reaches a log or the database.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use station_e2e::line::LineRig;
use station_e2e::{UnitSim, bin};

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_scanner_drives_a_fixture_with_badge_logon() {
    let rig = LineRig::new();
    let badge = "BADGE-7731-alice";
    rig.add_badge_user("alice", "operator", badge);
    let sim = UnitSim::start(
        &rig.dir.path().join("sx3"),
        &[
            "--serial",
            "SX-000003",
            "--model",
            "SX-100",
            "--hw",
            "C1",
            "--fw",
            "3.0.0",
        ],
    );
    // The scanner: a pty whose slave is reached through a stable symlink, as /dev/serial/by-id.
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = nix::unistd::ttyname(&pty.slave).unwrap();
    let link = rig.dir.path().join("scanner-fx1");
    std::os::unix::fs::symlink(&slave, &link).unwrap();
    let mut scanner = std::fs::File::from(pty.master);
    rig.config(
        "30-fixtures.toml",
        &format!(
            "[line]\ndebounce_ms = 100\n[fixtures.fx1]\nproduct = \"sensor-x509\"\nscanner = \"{}\"\nserial_port = \"{}\"\n",
            link.display(),
            sim.pty.display()
        ),
    );
    rig.open_lot("sensor-x509");
    let log = rig.home.join("logs/station.log");
    let _serve = Serve(
        Command::new(bin("station"))
            .arg("--home")
            .arg(&rig.home)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let logged = |needle: &str| {
        std::fs::read_to_string(&log)
            .map(|t| t.contains(needle))
            .unwrap_or(false)
    };
    wait_for("scanner connected", Duration::from_secs(20), || {
        logged("scanner connected")
    });
    // Nobody logged on: refused.
    scanner.write_all(b"SX-000003\r\n").unwrap();
    wait_for("refusal without operator", Duration::from_secs(10), || {
        logged("fixture fx1: nobody is logged on; scan your badge first")
    });
    assert_eq!(rig.state("SX-000003"), None);
    // An unknown badge: refused, the event names the fixture.
    scanner.write_all(b"OP:NOT-A-BADGE\r\n").unwrap();
    wait_for("unknown badge refusal", Duration::from_secs(10), || {
        logged("fixture fx1: badge refused")
    });
    // Alice's badge, then the unit.
    scanner
        .write_all(format!("OP:{badge}\r\n").as_bytes())
        .unwrap();
    wait_for("logon", Duration::from_secs(10), || {
        logged("operator logged on")
    });
    std::thread::sleep(Duration::from_millis(150));
    scanner.write_all(b"SX-000003\r\n").unwrap();
    // Passed: its enrollment queued for DPS, or already uploaded (the uploader runs beside the
    // fixture and may deliver it before this looks).
    wait_for("unit passed", Duration::from_secs(30), || {
        matches!(
            rig.state("SX-000003").as_deref(),
            Some("queued" | "uploaded")
        )
    });
    let operator: String = rig
        .db()
        .query_row(
            "SELECT operator FROM units WHERE serial = 'SX-000003'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(operator, "alice");
    // Garbage on the scanner: refused, shown escaped, nothing recorded.
    scanner.write_all(b"\x01\x02zz\r\n").unwrap();
    wait_for("garbage refusal", Duration::from_secs(10), || {
        logged("\\x01\\x02zz")
    });

    // SIGTERM: the daemon stops cleanly.
    let mut serve = _serve;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = serve.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(logged("station stopped"));
    // The badge code is nowhere: log, database.
    for f in [
        log.clone(),
        rig.home.join("station.db"),
        rig.home.join("station.db-wal"),
    ] {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        assert!(
            !bytes.windows(badge.len()).any(|w| w == badge.as_bytes()),
            "badge found in {}",
            f.display()
        );
    }
}
