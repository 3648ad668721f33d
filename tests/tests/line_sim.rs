//! `line-sim` against a real station home: pseudo-terminal scanners, `unit-sim` on the device
//! links, swtpm with EK certificates on the TCTI port, and SoftHSM unit tokens.
//!
//! `station serve` is not part of these tests: the first test checks what line-sim puts on
//! each fixture (as the station will find it), the second runs units through a TPM fixture with
//! a stand-in for the station's TPM driver made from the station's own steps (read and judge
//! the TPM, persist the unit's states), so that line-sim's wait-remove-next loop runs for real.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use station::line::state::{Step, UnitState};
use station::line::units::{self, Begin, Facts, NewRun};
use station::link::{LinkSettings, SerialLink, Transport, UnitClient};
use station::store::Store;
use station::tpm::{self, Policy, ReadOptions};
use station::trigger::parse::{Line, LineSplitter, Scan, ScanParser};
use station_e2e::bin;

const BADGE: &str = "B4DGE-line-sim-1";
const UNIT_PIN: &str = "314159";

/// A free TCP port P with P+1 free too (the swtpm control port).
fn free_port_pair() -> u16 {
    use std::hash::{BuildHasher as _, RandomState};
    for i in 0u64..500 {
        let port = 20_000 + u16::try_from(RandomState::new().hash_one(i) % 12_000).unwrap();
        let free = |p: u16| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()
                && TcpStream::connect((Ipv4Addr::LOCALHOST, p)).is_err()
        };
        if free(port) && free(port + 1) {
            return port;
        }
    }
    panic!("no free port pair");
}

fn station(home: &Path, args: &[&str]) -> String {
    let out = Command::new(bin("station"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env("BADGE", BADGE)
        .output()
        .expect("run station");
    assert!(
        out.status.success(),
        "station {args:?}: {}",
        station_e2e::text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn products_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/products")
}

/// A station home with the example products and the given fixture sections.
fn home_with(dir: &Path, fixtures: &str) -> PathBuf {
    for tool in ["softhsm2-util", "swtpm", "swtpm_setup"] {
        assert!(
            Command::new("which")
                .arg(tool)
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} not found: install the Debian packages softhsm2, swtpm and swtpm-tools"
        );
    }
    let home = dir.join("home");
    station(&home, &["init", "--actor", "test"]);
    let products = home.join("products");
    std::fs::create_dir_all(&products).unwrap();
    for e in std::fs::read_dir(products_dir()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, products.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        home.join("config.d/60-line.toml"),
        format!(
            "[tpm]\nallow_software_tpm = true\n\n[dps.targets.local]\nconnection_string_file = \"dps/connection-string\"\nid_scope = \"0ne00000001\"\n\n{fixtures}"
        ),
    )
    .unwrap();
    home
}

/// A running line-sim whose stdout lines arrive on a channel; killed on drop.
struct LineSim {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl LineSim {
    fn start(home: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(bin("line-sim"))
            .arg("--home")
            .arg(home)
            .args(args)
            .env("BADGE", BADGE)
            .env("UNIT_SE_PIN", UNIT_PIN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn line-sim");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    fn next_line(&self, within: Duration) -> String {
        self.lines
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("no line from line-sim within {within:?}: {e}"))
    }

    fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "line-sim did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for LineSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a scanner port from its path and splits it into scan lines, on a thread.
fn read_scans(port: &Path) -> mpsc::Receiver<Vec<u8>> {
    let mut f = std::fs::File::open(port).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut split = LineSplitter::new(128);
        let mut buf = [0u8; 256];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            for l in split.feed(&buf[..n]) {
                if let Line::Complete(bytes) = l
                    && tx.send(bytes).is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

fn parse(parser: &ScanParser, line: &[u8]) -> Scan {
    parser
        .parse(line)
        .unwrap_or_else(|e| panic!("scan {:?} refused: {e}", String::from_utf8_lossy(line)))
}

#[test]
fn places_a_unit_on_each_kind_of_fixture_and_takes_them_off_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_pair();
    let home = home_with(
        dir.path(),
        &format!(
            r#"
[fixtures.tpm-1]
product = "sensor-tpm"
scanner = "dev/scanner-tpm-1"
tcti = "swtpm:host=127.0.0.1,port={port}"

[fixtures.link-1]
product = "sensor-x509"
scanner = "dev/scanner-link-1"
serial_port = "dev/serial/by-id/usb-link-1"

[fixtures.sym-1]
product = "sensor-sym"
scanner = "dev/scanner-sym-1"
serial_port = "dev/serial/by-id/usb-sym-1"

[fixtures.se-1]
product = "gateway-se"
scanner = "dev/scanner-se-1"
"#
        ),
    );
    let mut sim = LineSim::start(
        &home,
        &[
            "--place-only",
            "--badge-env",
            "BADGE",
            "--serial-start",
            "41",
        ],
    );
    let mut placed = std::collections::BTreeMap::new();
    for _ in 0..4 {
        let l = sim.next_line(Duration::from_secs(30));
        let mut w = l.split_whitespace();
        assert_eq!(w.next(), Some("placed"), "{l}");
        let fixture = w.next().unwrap().to_owned();
        placed.insert(fixture, w.next().unwrap().to_owned());
    }
    let expect = [
        ("link-1", "SX-000041", "SX-[0-9]{6}"),
        ("se-1", "GW-000041", "GW-[0-9]{6}"),
        ("sym-1", "SY-000041", "SY-[0-9]{6}"),
        ("tpm-1", "ST-000041", "ST-[0-9]{6}"),
    ];
    for (fixture, serial, pattern) in expect {
        assert_eq!(placed[fixture], serial);
        // The scanner delivers the badge, then the serial, as the station's parser reads them.
        let parser = ScanParser::new(pattern, 128).unwrap();
        let scans = read_scans(&home.join(format!("dev/scanner-{fixture}")));
        let first = scans.recv_timeout(Duration::from_secs(5)).unwrap();
        match parse(&parser, &first) {
            Scan::Operator(b) => assert_eq!(b.expose(), BADGE),
            s => panic!("{fixture}: expected the badge first, got {}", s.describe()),
        }
        let second = scans.recv_timeout(Duration::from_secs(5)).unwrap();
        match parse(&parser, &second) {
            Scan::Serial(s) => assert_eq!(s.as_str(), serial),
            s => panic!("{fixture}: expected the serial, got {}", s.describe()),
        }
    }

    // Each link fixture's serial port reaches a unit-sim holding that unit's identity.
    for (fixture, serial, model) in [
        ("link-1", "SX-000041", "SX-100"),
        ("sym-1", "SY-000041", "SY-10"),
    ] {
        let path = home.join(format!("dev/serial/by-id/usb-{fixture}"));
        let s = LinkSettings::default();
        let link = SerialLink::open(&path, s.baud).unwrap();
        let mut unit = UnitClient::new(Transport::new(link, s));
        let id = unit.identify().unwrap();
        assert_eq!(id.serial, serial, "{fixture}");
        assert_eq!(id.model, model, "{fixture}");
        assert_eq!(
            (id.hw.as_str(), id.fw.as_str()),
            ("B2", "2.4.1"),
            "{fixture}"
        );
    }

    // The TPM fixture's TCTI reaches a TPM whose EK certificate chains to the trust directory.
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let read = tpm::read(&tcti, &ReadOptions::default()).unwrap();
    let trust = tpm::load_trust(Some(&home), Path::new("trust/tpm")).unwrap();
    let policy = Policy {
        require_ek_cert: true,
        allow_software_tpm: true,
    };
    let judged = tpm::assess(&read, policy, &trust);
    assert!(judged.verdict.is_ok(), "{:?}", judged.verdict);
    assert!(judged.ek_certificate.is_some());

    // The unit token exists in the station home's SoftHSM, with the product's PIN.
    let softhsm = home.join("hsm/softhsm2.conf");
    let slots = || {
        let out = Command::new("softhsm2-util")
            .arg("--show-slots")
            .env("SOFTHSM2_CONF", &softhsm)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(slots().contains("unit-GW-000041"), "{}", slots());

    // SIGTERM: every unit comes off, every link the simulator made is gone.
    sim.terminate();
    let status = sim.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(130));
    for p in [
        "dev/scanner-tpm-1",
        "dev/scanner-link-1",
        "dev/scanner-sym-1",
        "dev/scanner-se-1",
        "dev/serial/by-id/usb-link-1",
        "dev/serial/by-id/usb-sym-1",
    ] {
        assert!(
            std::fs::symlink_metadata(home.join(p)).is_err(),
            "{p} left behind"
        );
    }
    assert!(!slots().contains("unit-GW-000041"), "token left behind");
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "swtpm still listening"
    );
}

/// A stand-in for `station serve`'s TPM driver, built from the station's own steps: reads each
/// scanned unit's TPM through the fixture's TCTI, judges it, and persists the unit's states.
fn tpm_station_stand_in(home: &Path, tcti: &str, lot: &str, units: usize) -> Vec<String> {
    let cfg = station::config::Config::load(&station::home::Home::new(home))
        .unwrap()
        .config;
    let station_id = cfg.station_id();
    let mut store = Store::open(&home.join("station.db"), &cfg.store).unwrap();
    let trust = tpm::load_trust(Some(home), Path::new("trust/tpm")).unwrap();
    let policy = Policy {
        require_ek_cert: true,
        allow_software_tpm: true,
    };
    let parser = ScanParser::new("ST-[0-9]{6}", 128).unwrap();
    let scans = read_scans(&home.join("dev/scanner-tpm-1"));
    let mut ids = Vec::new();
    while ids.len() < units {
        let line = scans.recv_timeout(Duration::from_secs(60)).unwrap();
        let Scan::Serial(serial) = parse(&parser, &line) else {
            continue;
        };
        let tx = store.conn_mut().transaction().unwrap();
        let run = NewRun {
            serial: serial.as_str(),
            product: "sensor-tpm",
            lot_id: lot,
            fixture: "tpm-1",
            operator: None,
            attestation: "tpm",
        };
        let Begin::Started { unit_id, .. } = units::begin(&tx, &station_id, &run).unwrap() else {
            panic!("{serial} was not a new unit");
        };
        tx.commit().unwrap();
        let read = tpm::read(tcti, &ReadOptions::default()).unwrap();
        let judged = tpm::assess(&read, policy, &trust);
        assert!(judged.verdict.is_ok(), "{:?}", judged.verdict);
        let rid = judged.registration_id.to_string();
        let tx = store.conn_mut().transaction().unwrap();
        let facts = Facts {
            registration_id: Some(&rid),
            device_id: Some(serial.as_str()),
            model: None,
            hw_rev: None,
            fw_version: None,
        };
        for next in [
            UnitState::KeyReady {
                registration_id: rid.clone(),
                material: "tpm-ek".into(),
            },
            UnitState::Verified,
            UnitState::Recorded,
        ] {
            units::transition(&tx, &station_id, "station", unit_id, next, &facts).unwrap();
        }
        tx.commit().unwrap();
        ids.push(rid);
    }
    ids
}

#[test]
fn runs_units_one_at_a_time_until_the_station_records_each() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_pair();
    let home = home_with(
        dir.path(),
        &format!(
            "[fixtures.tpm-1]\nproduct = \"sensor-tpm\"\nscanner = \"dev/scanner-tpm-1\"\ntcti = \"swtpm:host=127.0.0.1,port={port}\"\n"
        ),
    );
    station(
        &home,
        &[
            "user",
            "add",
            "sam",
            "--role",
            "supervisor",
            "--badge-env",
            "BADGE",
            "--actor",
            "test",
        ],
    );
    station(
        &home,
        &[
            "lot",
            "open",
            "--product",
            "sensor-tpm",
            "--quantity",
            "5",
            "--id",
            "LOT-1",
            "--actor",
            "sam",
        ],
    );
    // As in the demo: the vendor CA is made and trusted before the station starts (a station
    // reads its TPM trust directory at start), then the run uses that same vendor.
    let vendor = dir.path().join("tpm-vendor");
    let vendor_arg = vendor.to_str().unwrap();
    let mut setup = LineSim::start(&home, &["--vendor-only", "--tpm-vendor", vendor_arg]);
    assert!(setup.wait(Duration::from_secs(30)).success());
    let mut sim = LineSim::start(
        &home,
        &[
            "--units",
            "3",
            "--unit-timeout-secs",
            "60",
            "--tpm-vendor",
            vendor_arg,
        ],
    );
    // The scanner link exists once line-sim has plugged it in.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::symlink_metadata(home.join("dev/scanner-tpm-1")).is_err() {
        assert!(Instant::now() < deadline, "scanner never plugged in");
        std::thread::sleep(Duration::from_millis(20));
    }
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let rids = tpm_station_stand_in(&home, &tcti, "LOT-1", 3);
    // Three different TPMs came, one after another, on the same port.
    let distinct: std::collections::BTreeSet<_> = rids.iter().collect();
    assert_eq!(distinct.len(), 3, "{rids:?}");

    let status = sim.wait(Duration::from_secs(60));
    let mut out = Vec::new();
    while let Ok(l) = sim.lines.recv_timeout(Duration::from_secs(2)) {
        out.push(l);
    }
    assert!(status.success(), "{status}: {out:#?}");
    // Serials continue after the highest the station holds (none here): ST-000001..3.
    for (i, l) in out.iter().take(3).enumerate() {
        let w: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(
            w[..3],
            ["tpm-1", &format!("ST-{:06}", i + 1), "recorded"],
            "{l}"
        );
    }
    assert_eq!(out[3], "summary:");
    assert!(
        out[4].contains("tpm-1") && out[4].contains("passed   3") && out[4].contains("failed   0"),
        "{}",
        out[4]
    );
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "swtpm still listening after the run"
    );

    // A second run continues after the highest serial the station holds, and a unit the
    // station never takes up makes the run fail, naming it.
    let mut again = LineSim::start(
        &home,
        &[
            "--units",
            "1",
            "--unit-timeout-secs",
            "1",
            "--tpm-vendor",
            vendor_arg,
        ],
    );
    let l = again.next_line(Duration::from_secs(30));
    assert!(
        l.starts_with("tpm-1")
            && l.contains("ST-000004")
            && l.contains("TIMED OUT (never seen by the station)"),
        "{l}"
    );
    assert_eq!(again.wait(Duration::from_secs(30)).code(), Some(1));
}

fn line_sim_fails(home: &Path, args: &[&str], without_pin: bool) -> String {
    let mut cmd = Command::new(bin("line-sim"));
    cmd.arg("--home").arg(home).args(args);
    if without_pin {
        cmd.env_remove("UNIT_SE_PIN");
    } else {
        cmd.env("UNIT_SE_PIN", UNIT_PIN);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    stderr
}

#[test]
fn refuses_fixtures_it_cannot_simulate_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let home = home_with(dir.path(), "");
    let config = home.join("config.d/70-case.toml");
    let case = |fixtures: &str| std::fs::write(&config, fixtures).unwrap();

    case("[fixtures.link-1]\nproduct = \"sensor-x509\"\nscanner = \"dev/s1\"\n");
    let e = line_sim_fails(&home, &[], false);
    assert!(
        e.contains("fixture link-1: product sensor-x509 (x509-link) needs a `serial_port`"),
        "{e}"
    );
    let e = line_sim_fails(&home, &["--fixture", "nope"], false);
    assert!(
        e.contains("fixture nope is not in the station configuration"),
        "{e}"
    );

    case("[fixtures.link-1]\nproduct = \"sensor-x509\"\nserial_port = \"dev/u1\"\n");
    let e = line_sim_fails(&home, &[], false);
    assert!(e.contains("fixture link-1: no `scanner` configured"), "{e}");

    // A real device (here a plain file) at the link path is never replaced.
    std::fs::create_dir_all(home.join("dev")).unwrap();
    std::fs::write(home.join("dev/u1"), b"not ours").unwrap();
    case(
        "[fixtures.link-1]\nproduct = \"sensor-x509\"\nscanner = \"dev/s1\"\nserial_port = \"dev/u1\"\n",
    );
    let e = line_sim_fails(&home, &[], false);
    assert!(e.contains("exists and is not a symlink"), "{e}");
    assert_eq!(std::fs::read(home.join("dev/u1")).unwrap(), b"not ours");

    case(
        "[fixtures.tpm-1]\nproduct = \"sensor-tpm\"\nscanner = \"dev/s2\"\ntcti = \"device:/dev/tpmrm0\"\n",
    );
    let e = line_sim_fails(&home, &[], false);
    assert!(
        e.contains("fixture tpm-1: tcti `device:/dev/tpmrm0` cannot be simulated"),
        "{e}"
    );

    case("[fixtures.se-1]\nproduct = \"gateway-se\"\nscanner = \"dev/s3\"\n");
    let e = line_sim_fails(&home, &[], true);
    assert!(
        e.contains("fixture se-1: the product's unit PIN variable UNIT_SE_PIN is not set"),
        "{e}"
    );
    case(
        "[fixtures.se-1]\nproduct = \"gateway-se\"\nscanner = \"dev/s3\"\npkcs11_module = \"/usr/lib/x86_64-linux-gnu/libykcs11.so\"\n",
    );
    let e = line_sim_fails(&home, &[], false);
    assert!(e.contains("is not SoftHSM"), "{e}");

    std::fs::write(
        home.join("products/odd.toml"),
        "serial_pattern = \"[A-Z]{2}-[0-9]{6}\"\ndps_target = \"local\"\nattestation = { kind = \"x509-link\" }\n",
    )
    .unwrap();
    case("[fixtures.odd-1]\nproduct = \"odd\"\nscanner = \"dev/s4\"\nserial_port = \"dev/u4\"\n");
    let e = line_sim_fails(&home, &[], false);
    assert!(
        e.contains("product odd: serial_pattern `[A-Z]{2}-[0-9]{6}` is not supported by line-sim"),
        "{e}"
    );
    // Nothing was left plugged in by the refused runs.
    for p in ["dev/s1", "dev/s2", "dev/s3", "dev/s4", "dev/u4"] {
        assert!(std::fs::symlink_metadata(home.join(p)).is_err(), "{p}");
    }
}

/// A stand-in for the station's link driver, built from the station's own steps: for each scan,
/// asks the unit on the fixture's serial port who it is, persists that, then fails the unit on
/// purpose (the issuing steps are the station's, not under test here).
fn link_station_stand_in(home: &Path, lot: &str, units: usize) -> Vec<String> {
    let cfg = station::config::Config::load(&station::home::Home::new(home))
        .unwrap()
        .config;
    let station_id = cfg.station_id();
    let mut store = Store::open(&home.join("station.db"), &cfg.store).unwrap();
    let parser = ScanParser::new("SX-[0-9]{6}", 128).unwrap();
    let scans = read_scans(&home.join("dev/scanner-link-1"));
    let mut seen = Vec::new();
    while seen.len() < units {
        let line = scans.recv_timeout(Duration::from_secs(60)).unwrap();
        let Scan::Serial(serial) = parse(&parser, &line) else {
            continue;
        };
        let tx = store.conn_mut().transaction().unwrap();
        let run = NewRun {
            serial: serial.as_str(),
            product: "sensor-x509",
            lot_id: lot,
            fixture: "link-1",
            operator: None,
            attestation: "x509-link",
        };
        let Begin::Started { unit_id, .. } = units::begin(&tx, &station_id, &run).unwrap() else {
            panic!("{serial} was not a new unit");
        };
        tx.commit().unwrap();
        let s = LinkSettings {
            baud: 0,
            ..LinkSettings::default()
        };
        let link = SerialLink::open(&home.join("dev/serial/by-id/usb-link-1"), 115_200).unwrap();
        let id = UnitClient::new(Transport::new(link, s)).identify().unwrap();
        let tx = store.conn_mut().transaction().unwrap();
        let facts = Facts {
            registration_id: None,
            device_id: None,
            model: Some(&id.model),
            hw_rev: Some(&id.hw),
            fw_version: Some(&id.fw),
        };
        let identified = UnitState::Identified {
            model: id.model.clone(),
            hw_rev: id.hw.clone(),
            fw_version: id.fw.clone(),
        };
        units::transition(&tx, &station_id, "station", unit_id, identified, &facts).unwrap();
        units::fail(
            &tx,
            &station_id,
            "station",
            unit_id,
            Step::Issue,
            "stand-in stops here",
        )
        .unwrap();
        tx.commit().unwrap();
        seen.push(id.serial);
    }
    seen
}

#[test]
fn repoints_the_link_to_each_new_unit_and_reports_failed_units_with_their_reason() {
    repoints_the_link_to_each_new_unit(&[]);
}

#[test]
fn units_hosted_in_line_sim_threads_follow_each_other_on_the_link_too() {
    repoints_the_link_to_each_new_unit(&["--units-in-process"]);
}

/// Three units on one link fixture, each failed by a station stand-in once it has identified
/// itself; `host` says where line-sim runs them.
fn repoints_the_link_to_each_new_unit(host: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let home = home_with(
        dir.path(),
        "[fixtures.link-1]\nproduct = \"sensor-x509\"\nscanner = \"dev/scanner-link-1\"\nserial_port = \"dev/serial/by-id/usb-link-1\"\n",
    );
    station(
        &home,
        &[
            "user",
            "add",
            "sam",
            "--role",
            "supervisor",
            "--badge-env",
            "BADGE",
            "--actor",
            "test",
        ],
    );
    station(
        &home,
        &[
            "lot",
            "open",
            "--product",
            "sensor-x509",
            "--quantity",
            "5",
            "--id",
            "LOT-X",
            "--actor",
            "sam",
        ],
    );
    let mut args = vec!["--units", "3", "--zero-wire-delay", "--serial-start", "7"];
    args.extend_from_slice(host);
    let mut sim = LineSim::start(&home, &args);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::symlink_metadata(home.join("dev/scanner-link-1")).is_err() {
        assert!(Instant::now() < deadline, "scanner never plugged in");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each scan's unit answered on the same port path: the link followed the units.
    let seen = link_station_stand_in(&home, "LOT-X", 3);
    assert_eq!(seen, ["SX-000007", "SX-000008", "SX-000009"]);

    let status = sim.wait(Duration::from_secs(30));
    let mut out = Vec::new();
    while let Ok(l) = sim.lines.recv_timeout(Duration::from_secs(2)) {
        out.push(l);
    }
    // Failed units reached a final state: the run itself succeeded.
    assert!(status.success(), "{status}: {out:#?}");
    for (i, l) in out.iter().take(3).enumerate() {
        assert!(
            l.split_whitespace()
                .take(2)
                .eq(["link-1", &format!("SX-{:06}", i + 7)])
                && l.contains("failed (issue: stand-in stops here)"),
            "{l}"
        );
    }
    assert!(
        out[4].contains("passed   0") && out[4].contains("failed   3"),
        "{}",
        out[4]
    );
    assert!(
        std::fs::symlink_metadata(home.join("dev/serial/by-id/usb-link-1")).is_err(),
        "link left behind"
    );
}
