#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The HSM disappearing mid-lot: the station's CA token is served by `p11-kit server` (SoftHSM
//! behind it) and reached through p11-kit's client module, and the server is killed while a
//! unit runs. The fixture says once that the HSM is unavailable, the unit in progress keeps its
//! recorded state with a reason (never reported as done), scans are refused while it is gone;
//! when the server is back the same `station serve` reopens its session, resumes the unit and
//! takes the next one.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use station_e2e::UnitSim;
use station_e2e::line::{LineRig, StationServe, plug, wait_until};

const BADGE: &str = "BADGE-9031-alice";
const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn p11_kit_client() -> PathBuf {
    ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|a| PathBuf::from(format!("/usr/lib/{a}/pkcs11/p11-kit-client.so")))
        .find(|p| p.exists())
        .expect("p11-kit's client module is missing: apt-get install p11-kit p11-kit-modules")
}

/// `p11-kit server` serving the station's tokens on `sock`, in its own process group (it
/// forks per client; the whole group goes when the HSM "disappears"). Killed on drop.
struct P11Server(Child, bool);

impl P11Server {
    fn start(conf: &Path, sock: &Path) -> Self {
        let _ = std::fs::remove_file(sock);
        let child = Command::new("p11-kit")
            .args(["server", "--provider", SOFTHSM, "-f", "-n"])
            .arg(sock)
            .args(["pkcs11:token=station-ca", "pkcs11:token=station-root"])
            .env("SOFTHSM2_CONF", conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("p11-kit is missing: apt-get install p11-kit p11-kit-modules");
        wait_until("the p11-kit server socket", 15, || sock.exists());
        Self(child, false)
    }

    fn kill(&mut self) {
        if self.1 {
            return;
        }
        self.1 = true;
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.wait();
    }
}

impl Drop for P11Server {
    fn drop(&mut self) {
        self.kill();
    }
}

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

#[test]
fn the_hsm_disappearing_mid_lot_stops_the_fixture_and_work_resumes_when_it_is_back() {
    let client = p11_kit_client();
    let rig = LineRig::new();
    let out = rig.station_env(
        &[
            "user",
            "add",
            "alice",
            "--role",
            "operator",
            "--badge-env",
            "T_BADGE",
            "--actor",
            "sup",
        ],
        &[("T_BADGE", BADGE)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rig.open_lot("sensor-x509");
    let sock = rig.dir.path().join("hsm.sock");
    let mut server = P11Server::start(&rig.softhsm_conf(), &sock);
    let scanner_link = rig.dir.path().join("scanner-fx1");
    let port = rig.dir.path().join("unit-port-fx1");
    rig.config(
        "30-fixtures.toml",
        &format!(
            "[hsm]\nmodule = \"{}\"\n[line]\ndebounce_ms = 100\n[fixtures.fx1]\nproduct = \"sensor-x509\"\nscanner = \"{}\"\nserial_port = \"{}\"\n",
            client.display(),
            scanner_link.display(),
            port.display()
        ),
    );
    let address = format!("unix:path={}", sock.display());
    let a = sim(&rig, "SX-000031", &[]);
    plug(&port, &a.pty);
    let mut scanner = TestScanner::plug(&scanner_link);
    let mut serve = StationServe::start(&rig, &[("P11_KIT_SERVER_ADDRESS", &address)]);
    serve.wait_logged("scanner connected", 30);
    scanner.scan(&format!("OP:{BADGE}"));
    serve.wait_logged("operator logged on", 10);
    std::thread::sleep(std::time::Duration::from_millis(150));
    scanner.scan("SX-000031");
    serve.wait_state(&rig, "SX-000031", "queued|uploaded", 30);

    // The HSM goes away while a (slowed) unit runs.
    let b = sim(&rig, "SX-000032", &["--delay-ms", "200"]);
    plug(&port, &b.pty);
    std::thread::sleep(std::time::Duration::from_millis(150));
    scanner.scan("SX-000032");
    serve.wait_logged("unit started fixture=fx1 serial=SX-000032", 10);
    server.kill();
    serve.wait_logged("fixture fx1: HSM unavailable: ", 30);
    // The unit in progress is not reported done: it keeps a state short of queued (or failed
    // with its reason), without a live certificate.
    let state = rig.state("SX-000032").unwrap();
    assert!(
        !["queued", "uploaded", "verified", "recorded"].contains(&state.as_str()),
        "{state}"
    );
    assert_eq!(rig.live_certs("SX-000032"), 0);
    let log = serve.log_text();
    assert!(
        log.contains("fixture fx1: the station failed during unit SX-000032")
            || log.contains("FAIL SX-000032"),
        "the unit's stop was not shown:\n{log}"
    );
    // While it is gone: a scan is refused with the reason, and the outage is said once.
    let c = sim(&rig, "SX-000033", &[]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    scanner.scan("SX-000033");
    serve.wait_logged(
        "fixture fx1: unit SX-000033 refused: the HSM is unavailable; scan it again when the HSM is back",
        10,
    );
    assert_eq!(rig.state("SX-000033"), None);
    assert_eq!(serve.count("HSM unavailable: "), 1);

    // The HSM is back: the same daemon reopens its session, finishes the interrupted unit
    // and takes the next scan.
    let _server = P11Server::start(&rig.softhsm_conf(), &sock);
    serve.wait_logged("fixture fx1: HSM back", 30);
    assert!(serve.running(), "station serve must not have restarted");
    serve.wait_state(&rig, "SX-000032", "queued|uploaded|failed", 30);
    if rig.state("SX-000032").as_deref() == Some("failed") {
        // Failed with its reason at a step that cannot be repeated: the operator retries it.
        scanner.scan("CMD:RETRY");
        serve.wait_state(&rig, "SX-000032", "queued|uploaded", 30);
    }
    assert_eq!(rig.live_certs("SX-000032"), 1);
    plug(&port, &c.pty);
    std::thread::sleep(std::time::Duration::from_millis(150));
    scanner.scan("SX-000033");
    serve.wait_state(&rig, "SX-000033", "queued|uploaded", 30);
    assert_eq!(rig.live_certs("SX-000033"), 1);
    assert!(serve.running());
    drop(serve);
    // Nothing lost: every unit's record stands and the audit chain verifies (through the HSM).
    let out = rig.station_env(
        &["audit", "verify"],
        &[("P11_KIT_SERVER_ADDRESS", &address)],
    );
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
