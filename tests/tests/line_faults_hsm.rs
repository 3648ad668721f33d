#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The HSM disappearing mid-lot: the station's CA token is served by `p11-kit server` (SoftHSM
//! behind it) and reached through p11-kit's client module, and the server is killed while a
//! unit runs. The fixture says once that the HSM is unavailable, the unit in progress keeps its
//! recorded state with a reason (never reported as done), scans are refused while it is gone;
//! when the server is back the same `station serve` reopens its session, resumes the unit and
//! takes the next one.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use station_e2e::UnitSim;
use station_e2e::line::{LineRig, StationServe, plug, wait_until};
use station_e2e::p11::{P11Server, p11_kit_client};

const BADGE: &str = "BADGE-9031-alice";
/// The station's tokens, served by p11-kit.
const STATION_TOKENS: &[&str] = &["station-ca", "station-root"];

/// A scanner: a pty (the slave end is kept open so the line stays up) behind a stable name.
struct TestScanner {
    master: File,
    _slave: std::os::fd::OwnedFd,
}

impl TestScanner {
    fn plug(link: &Path) -> Self {
        let pty = nix::pty::openpty(None, None).unwrap();
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .unwrap();
        }
        plug(link, &nix::unistd::ttyname(&pty.slave).unwrap());
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

fn sim(rig: &LineRig, serial: &str, extra: &[&str]) -> UnitSim {
    let mut args = vec!["--serial", serial, "--model", "SX-100"];
    args.extend_from_slice(extra);
    UnitSim::start(&rig.dir.path().join(serial), &args)
}

/// A line of one fixture `fx1` for `product`, its CA token behind `p11-kit server`: an
/// operator is logged on at the scanner of a running `station serve`.
struct HsmLine {
    rig: LineRig,
    server: P11Server,
    sock: PathBuf,
    address: String,
    port: PathBuf,
    scanner: TestScanner,
    serve: StationServe,
}

impl HsmLine {
    /// Everything but `station serve`: the rig, the p11-kit server, the fixture's config.
    fn rig(product: &str) -> (LineRig, P11Server, PathBuf, String, PathBuf, PathBuf) {
        let client = p11_kit_client();
        let rig = LineRig::new();
        rig.add_badge_user("alice", "operator", BADGE);
        rig.open_lot(product);
        let sock = rig.dir.path().join("hsm.sock");
        let server = P11Server::start(&rig.softhsm_conf(), &sock, STATION_TOKENS);
        let scanner_link = rig.dir.path().join("scanner-fx1");
        let port = rig.dir.path().join("unit-port-fx1");
        rig.config(
            "30-fixtures.toml",
            &format!(
                "[hsm]\nmodule = \"{}\"\n[line]\ndebounce_ms = 100\n[fixtures.fx1]\nproduct = \"{product}\"\nscanner = \"{}\"\nserial_port = \"{}\"\n",
                client.display(),
                scanner_link.display(),
                port.display()
            ),
        );
        let address = format!("unix:path={}", sock.display());
        (rig, server, sock, address, port, scanner_link)
    }

    fn start(product: &str) -> Self {
        let (rig, server, sock, address, port, scanner_link) = Self::rig(product);
        let mut scanner = TestScanner::plug(&scanner_link);
        let serve = StationServe::start(&rig, &[("P11_KIT_SERVER_ADDRESS", &address)]);
        serve.wait_logged("scanner connected", 30);
        scanner.scan(&format!("OP:{BADGE}"));
        serve.wait_logged("operator logged on", 10);
        Self {
            rig,
            server,
            sock,
            address,
            port,
            scanner,
            serve,
        }
    }

    /// Puts `unit` on the fixture and scans `serial`.
    fn scan_unit(&mut self, unit: &UnitSim, serial: &str) {
        plug(&self.port, &unit.pty);
        std::thread::sleep(std::time::Duration::from_millis(150));
        self.scanner.scan(serial);
    }

    /// Stops `station serve`; nothing is lost: the audit chain verifies (through the HSM).
    fn finish(self) {
        let Self {
            rig,
            serve,
            address,
            server,
            ..
        } = self;
        drop(serve);
        let out = rig.station_env(
            &["audit", "verify"],
            &[("P11_KIT_SERVER_ADDRESS", &address)],
        );
        assert!(
            out.status.success(),
            "audit verify: {}",
            station_e2e::text(&out)
        );
        drop(server);
    }
}

#[test]
fn the_hsm_disappearing_mid_lot_stops_the_fixture_and_work_resumes_when_it_is_back() {
    let mut line = HsmLine::start("sensor-x509");
    let a = sim(&line.rig, "SX-000031", &[]);
    line.scan_unit(&a, "SX-000031");
    line.serve
        .wait_state(&line.rig, "SX-000031", "queued|uploaded", 30);

    // The HSM goes away while a (slowed) unit runs.
    let b = sim(&line.rig, "SX-000032", &["--delay-ms", "200"]);
    line.scan_unit(&b, "SX-000032");
    line.serve
        .wait_logged("unit started fixture=fx1 serial=SX-000032", 10);
    line.server.kill();
    line.serve.wait_logged("fixture fx1: HSM unavailable: ", 30);
    // The unit in progress is not reported done: it keeps a state short of queued (or failed
    // with its reason), without a live certificate.
    let state = line.rig.state("SX-000032").unwrap();
    assert!(
        !["queued", "uploaded", "verified", "recorded"].contains(&state.as_str()),
        "{state}"
    );
    assert_eq!(line.rig.live_certs("SX-000032"), 0);
    let log = line.serve.log_text();
    assert!(
        log.contains("fixture fx1: the station failed during unit SX-000032")
            || log.contains("FAIL SX-000032"),
        "the unit's stop was not shown:\n{log}"
    );
    // While it is gone: a scan is refused with the reason, and the outage is said once.
    let c = sim(&line.rig, "SX-000033", &[]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    line.scanner.scan("SX-000033");
    line.serve.wait_logged(
        "fixture fx1: unit SX-000033 refused: the HSM is unavailable; scan it again when the HSM is back",
        10,
    );
    assert_eq!(line.rig.state("SX-000033"), None);
    assert_eq!(line.serve.count("HSM unavailable: "), 1);

    // The HSM is back: the same daemon reopens its session, finishes the interrupted unit
    // and takes the next scan.
    line.server = P11Server::start(&line.rig.softhsm_conf(), &line.sock, STATION_TOKENS);
    line.serve.wait_logged("fixture fx1: HSM back", 30);
    assert!(
        line.serve.running(),
        "station serve must not have restarted"
    );
    line.serve
        .wait_state(&line.rig, "SX-000032", "queued|uploaded|failed", 30);
    if line.rig.state("SX-000032").as_deref() == Some("failed") {
        // Failed with its reason at a step that cannot be repeated: the operator retries it.
        line.scanner.scan("CMD:RETRY");
        line.serve
            .wait_state(&line.rig, "SX-000032", "queued|uploaded", 30);
    }
    assert_eq!(line.rig.live_certs("SX-000032"), 1);
    line.scan_unit(&c, "SX-000033");
    line.serve
        .wait_state(&line.rig, "SX-000033", "queued|uploaded", 30);
    assert_eq!(line.rig.live_certs("SX-000033"), 1);
    assert!(line.serve.running());
    line.finish();
}

/// A product whose units' keys wait in the outbox sealed with AES-GCM inside the HSM, on an
/// HSM that cannot seal that way (p11-kit's RPC forwards AES-GCM only from 0.25 on; Debian 12
/// has 0.24): the fixture does not start and says why. Found at the first unit's record step
/// instead, that unit's key would already be in the unit and nowhere else.
#[test]
fn a_fixture_whose_units_keys_are_sealed_does_not_start_on_an_hsm_that_cannot_seal() {
    let (rig, _server, _sock, address, port, scanner_link) = HsmLine::rig("sensor-key");
    let sim = UnitSim::start(
        &rig.dir.path().join("SK-000041"),
        &["--serial", "SK-000041", "--model", "SK-20"],
    );
    plug(&port, &sim.pty);
    let _scanner = TestScanner::plug(&scanner_link);
    let mut serve = StationServe::start(&rig, &[("P11_KIT_SERVER_ADDRESS", &address)]);
    serve.wait_logged(
        "product sensor-key keeps each unit's key in the outbox sealed with AES-256-GCM inside the HSM, and the HSM cannot do that: ",
        60,
    );
    let log = serve.log_text();
    assert!(
        log.contains("EncryptInit: PKCS11 error: An invalid mechanism")
            && log.contains("use a PKCS#11 module with CKM_AES_GCM"),
        "the HSM's answer and the way out must be shown:\n{log}"
    );
    wait_until("station serve to give up", 60, || !serve.running());
    // `station check` says so too, as a warning: the HSM serves every other product.
    let out = rig.station_env(&["check"], &[("P11_KIT_SERVER_ADDRESS", &address)]);
    let check = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = check
        .lines()
        .find(|l| l.starts_with("outbox key"))
        .unwrap_or_else(|| panic!("no outbox key line:\n{check}"));
    assert!(
        line.contains("cannot seal with AES-GCM")
            && line.contains("symmetric-individual cannot run on this HSM"),
        "{line}"
    );
    assert!(!log.contains("scanner connected"), "{log}");
    // No unit was touched and nothing was written for one.
    assert_eq!(rig.state("SK-000041"), None);
    let unit = std::fs::read_to_string(sim.state_dir.join("unit.json")).unwrap_or_default();
    assert!(!unit.contains("symkey_hex\":\""), "{unit}");
}
