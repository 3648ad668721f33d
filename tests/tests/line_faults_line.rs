#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Faults on the line itself, with `station serve`, scanners on pseudo-terminals behind stable
//! symlinks (as /dev/serial/by-id) and simulated units: the same serial scanned on two fixtures
//! at once, a scanner unplugged mid-unit, a device link unplugged mid-unit.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use station_e2e::UnitSim;
use station_e2e::line::{LineRig, StationServe, plug, wait_until};

const BADGE: &str = "BADGE-4410-alice";

/// A scanner: a pty whose slave is reached through `link`.
struct TestScanner {
    master: File,
    _slave: std::os::fd::OwnedFd,
}

impl TestScanner {
    fn plug(link: &Path) -> Self {
        let pty = nix::pty::openpty(None, None).unwrap();
        // Not inherited by the processes the test starts: an unplug must close the line.
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .unwrap();
        }
        let slave = nix::unistd::ttyname(&pty.slave).unwrap();
        plug(link, &slave);
        Self {
            master: File::from(pty.master),
            _slave: pty.slave,
        }
    }

    fn scan(&mut self, text: &str) {
        self.master
            .write_all(format!("{text}\r\n").as_bytes())
            .unwrap();
    }
}

fn rig_with_operator() -> LineRig {
    let rig = LineRig::new();
    rig.add_badge_user("alice", "operator", BADGE);
    rig.open_lot("sensor-x509");
    rig
}

fn fixtures(rig: &LineRig, names: &[&str]) -> Vec<(PathBuf, PathBuf)> {
    let mut cfg = String::from("[line]\ndebounce_ms = 100\n");
    let mut ports = Vec::new();
    for n in names {
        let scanner = rig.dir.path().join(format!("scanner-{n}"));
        let port = rig.dir.path().join(format!("unit-port-{n}"));
        cfg.push_str(&format!(
            "[fixtures.{n}]\nproduct = \"sensor-x509\"\nscanner = \"{}\"\nserial_port = \"{}\"\nlink_timeout_ms = 500\nlink_retries = 1\n",
            scanner.display(),
            port.display()
        ));
        ports.push((scanner, port));
    }
    rig.config("30-fixtures.toml", &cfg);
    ports
}

fn sim(rig: &LineRig, dir: &str, serial: &str, extra: &[&str]) -> UnitSim {
    let mut args = vec!["--serial", serial, "--model", "SX-100"];
    args.extend_from_slice(extra);
    UnitSim::start(&rig.dir.path().join(dir), &args)
}

fn certs_of(rig: &LineRig, serial: &str) -> i64 {
    rig.db()
        .query_row(
            "SELECT count(*) FROM certificates c JOIN units u ON u.id = c.unit_id WHERE u.serial = ?1",
            [serial],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn the_same_serial_scanned_on_two_fixtures_runs_once() {
    let rig = rig_with_operator();
    let ports = fixtures(&rig, &["fa", "fb"]);
    // Two units wearing the same label, each on its fixture; answers are slowed so both scans
    // land while the first run is still going.
    let a = sim(&rig, "a", "SX-000001", &["--delay-ms", "150"]);
    let b = sim(&rig, "b", "SX-000001", &["--delay-ms", "150"]);
    plug(&ports[0].1, &a.pty);
    plug(&ports[1].1, &b.pty);
    let mut sa = TestScanner::plug(&ports[0].0);
    let mut sb = TestScanner::plug(&ports[1].0);
    let serve = StationServe::start(&rig, &[]);
    wait_until("both scanners connected", 30, || {
        serve.count("scanner connected") >= 2
    });
    sa.scan(&format!("OP:{BADGE}"));
    sb.scan(&format!("OP:{BADGE}"));
    wait_until("both logons", 10, || serve.count("operator logged on") >= 2);
    std::thread::sleep(std::time::Duration::from_millis(150));
    sa.scan("SX-000001");
    sb.scan("SX-000001");
    serve.wait_state(&rig, "SX-000001", "queued|uploaded", 60);
    let log = serve.log_text();
    let a_refused = log.contains("fixture fa: unit SX-000001 is being provisioned on fixture fb");
    let b_refused = log.contains("fixture fb: unit SX-000001 is being provisioned on fixture fa");
    assert!(
        a_refused ^ b_refused,
        "exactly one fixture must refuse, naming the other:\n{log}"
    );
    // One unit, one run, one certificate (live), one enrollment record.
    let db = rig.db();
    let one = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        one("SELECT count(*) FROM units WHERE serial = 'SX-000001'"),
        1
    );
    assert_eq!(
        one(
            "SELECT count(*) FROM runs r JOIN units u ON u.id = r.unit_id WHERE u.serial = 'SX-000001'"
        ),
        1
    );
    assert_eq!(certs_of(&rig, "SX-000001"), 1);
    assert_eq!(rig.live_certs("SX-000001"), 1);
    assert_eq!(
        one(
            "SELECT count(*) FROM enrollments e JOIN units u ON u.id = e.unit_id WHERE u.serial = 'SX-000001'"
        ),
        1
    );
    rig.audit_verify();
}

#[test]
fn a_scanner_unplugged_mid_unit_comes_back_and_the_unit_completes() {
    let rig = rig_with_operator();
    let ports = fixtures(&rig, &["fx1"]);
    let (scanner_link, port) = &ports[0];
    let a = sim(&rig, "a", "SX-000011", &["--delay-ms", "150"]);
    plug(port, &a.pty);
    let mut scanner = TestScanner::plug(scanner_link);
    let serve = StationServe::start(&rig, &[]);
    serve.wait_logged("scanner connected", 30);
    scanner.scan(&format!("OP:{BADGE}"));
    serve.wait_logged("operator logged on", 10);
    std::thread::sleep(std::time::Duration::from_millis(150));
    scanner.scan("SX-000011");
    serve.wait_logged("unit started", 10);
    // Unplugged: the device node goes away and its line closes.
    std::fs::remove_file(scanner_link).unwrap();
    drop(scanner);
    serve.wait_logged("scanner disconnected; waiting for it to come back", 10);
    // The unit in progress does not depend on the scanner: it completes.
    serve.wait_state(&rig, "SX-000011", "queued|uploaded", 60);
    assert_eq!(rig.live_certs("SX-000011"), 1);
    // Plugged back (a new device node behind the same name): the next scan works, the
    // operator is still logged on.
    let b = sim(&rig, "b", "SX-000012", &[]);
    plug(port, &b.pty);
    let mut scanner = TestScanner::plug(scanner_link);
    wait_until("scanner reconnected", 20, || {
        serve.count("scanner connected") >= 2
    });
    std::thread::sleep(std::time::Duration::from_millis(150));
    scanner.scan("SX-000012");
    serve.wait_state(&rig, "SX-000012", "queued|uploaded", 15);
    assert_eq!(rig.live_certs("SX-000012"), 1);
    rig.audit_verify();
}

#[test]
fn a_device_link_unplugged_mid_unit_fails_naming_fixture_step_and_port_and_retry_passes() {
    let rig = rig_with_operator();
    let ports = fixtures(&rig, &["fx1"]);
    let (scanner_link, port) = &ports[0];
    // The unit's line closes after a few answers, mid-unit.
    let mut a = sim(&rig, "a", "SX-000021", &["--disconnect-after", "3"]);
    plug(port, &a.pty);
    let mut scanner = TestScanner::plug(scanner_link);
    let serve = StationServe::start(&rig, &[]);
    serve.wait_logged("scanner connected", 30);
    scanner.scan(&format!("OP:{BADGE}"));
    serve.wait_logged("operator logged on", 10);
    std::thread::sleep(std::time::Duration::from_millis(150));
    scanner.scan("SX-000021");
    serve.wait_state(&rig, "SX-000021", "failed", 60);
    assert!(a.wait(std::time::Duration::from_secs(5)).is_some());
    let log = serve.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("FAIL SX-000021 at "))
        .unwrap_or_else(|| panic!("no failure shown:\n{log}"));
    eprintln!("the operator sees: {line}");
    assert!(line.contains("fx1"), "{line}");
    assert!(
        line.contains(&format!("fixture fx1: device link {}", port.display())),
        "{line}"
    );
    let reason: String = rig
        .db()
        .query_row(
            "SELECT fail_reason FROM runs r JOIN units u ON u.id = r.unit_id WHERE u.serial = 'SX-000021'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(reason.contains(&port.display().to_string()), "{reason}");
    assert_eq!(rig.live_certs("SX-000021"), 0);

    // Re-plugged: the same unit (its state kept) behind the same port name; CMD:RETRY passes.
    let b = sim(&rig, "a", "SX-000021", &[]);
    plug(port, &b.pty);
    std::thread::sleep(std::time::Duration::from_millis(150));
    scanner.scan("CMD:RETRY");
    serve.wait_state(&rig, "SX-000021", "queued|uploaded", 60);
    assert_eq!(rig.live_certs("SX-000021"), 1);
    rig.audit_verify();
}
