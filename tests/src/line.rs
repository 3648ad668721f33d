//! A line rig for end-to-end tests: a station home made by `station init` with the example
//! products, a real `dps serve` over TLS as its DPS target, lots and fixtures in config.d.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::bin;

/// A running `dps serve`, killed on drop.
pub struct DpsService {
    child: Child,
    /// Its data directory.
    pub dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl DpsService {
    /// Starts `dps serve` on `dir` with two linked hubs and the given extra options.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_at(dir, "127.0.0.1:0", extra)
    }

    /// Starts `dps serve` on `dir` listening on `listen` (to bring a stopped service back on
    /// its old port, its data kept).
    pub fn start_at(dir: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(bin("dps"))
            .args(["serve", "--data"])
            .arg(dir)
            .args([
                "--listen",
                listen,
                "--link-hub",
                "hub-a.local",
                "--link-hub",
                "hub-b.local",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dps serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("dps serve exited before listening")
                .expect("read dps serve output");
            if let Some(addr) = line.strip_prefix("https listening on ") {
                break addr
                    .rsplit(':')
                    .next()
                    .expect("port")
                    .parse()
                    .expect("port number");
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            dir: dir.to_owned(),
            port,
        }
    }

    /// Stops the service (the data directory stays).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A client for checking what the service holds.
    pub fn client(&self) -> dps::client::ServiceClient {
        let cs: dps::sas::ConnectionString =
            std::fs::read_to_string(self.dir.join("connection-string"))
                .expect("connection string")
                .trim()
                .parse()
                .expect("parse connection string");
        dps::client::ServiceClient::new(
            cs,
            dps::client::ClientOptions {
                extra_ca_file: Some(self.dir.join("ca.pem")),
                ..dps::client::ClientOptions::default()
            },
        )
        .expect("client")
    }
}

impl Drop for DpsService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A station home wired to a local DPS, with the example products.
pub struct LineRig {
    /// Holds everything.
    pub dir: tempfile::TempDir,
    /// The station home.
    pub home: PathBuf,
    /// The local DPS.
    pub dps: Option<DpsService>,
}

impl LineRig {
    /// `station init`, the example products, a DPS target `local` pointing at a fresh
    /// `dps serve`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("station");
        let out = Command::new(bin("station"))
            .arg("--home")
            .arg(&home)
            .args(["init", "--actor", "test"])
            .output()
            .expect("station init");
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let products = home.join("products");
        std::fs::create_dir_all(&products).expect("products dir");
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/products");
        for e in std::fs::read_dir(&examples).expect("examples") {
            let p = e.expect("entry").path();
            std::fs::copy(&p, products.join(p.file_name().expect("name"))).expect("copy product");
        }
        let dps_dir = dir.path().join("dps");
        let dps = DpsService::start(&dps_dir, &[]);
        let id_scope = std::fs::read_to_string(dps_dir.join("id-scope")).expect("id-scope");
        std::fs::write(
            home.join("config.d/20-dps.toml"),
            format!(
                "[dps.targets.local]\nconnection_string_file = \"{}\"\nid_scope = \"{}\"\nglobal_endpoint = \"127.0.0.1:{}\"\nca_file = \"{}\"\n",
                dps_dir.join("connection-string").display(),
                id_scope.trim(),
                dps.port,
                dps_dir.join("ca.pem").display()
            ),
        )
        .expect("dps target");
        Self {
            dir,
            home,
            dps: Some(dps),
        }
    }

    /// Runs `station --home H args...`.
    pub fn station(&self, args: &[&str]) -> Output {
        self.station_env(args, &[])
    }

    /// Runs `station --home H args...` with extra environment.
    pub fn station_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(bin("station"));
        c.arg("--home").arg(&self.home).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run station")
    }

    /// Appends a config.d file.
    pub fn config(&self, name: &str, text: &str) {
        std::fs::write(self.home.join("config.d").join(name), text).expect("write config.d");
    }

    /// `station user add NAME --role ROLE` with a badge (given through the environment).
    pub fn add_badge_user(&self, name: &str, role: &str, badge: &str) {
        self.add_user(name, role, None, Some(badge));
    }

    /// `station user add NAME --role ROLE` with a password and/or a badge (given through the
    /// environment, as they must be).
    pub fn add_user(&self, name: &str, role: &str, password: Option<&str>, badge: Option<&str>) {
        let mut args = vec!["user", "add", name, "--role", role, "--actor", "sup"];
        let mut env = Vec::new();
        if let Some(pw) = password {
            args.extend(["--password-env", "T_PW"]);
            env.push(("T_PW", pw));
        }
        if let Some(b) = badge {
            args.extend(["--badge-env", "T_BADGE"]);
            env.push(("T_BADGE", b));
        }
        let out = self.station_env(&args, &env);
        assert!(
            out.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Opens a lot for `product`.
    pub fn open_lot(&self, product: &str) {
        let out = self.station(&[
            "lot",
            "open",
            "--product",
            product,
            "--quantity",
            "50",
            "--actor",
            "sup",
        ]);
        assert!(
            out.status.success(),
            "lot open: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A fixture `fx1` that makes `sensor-x509` units over the device link, with their lot
    /// open. Its port is a stable name re-pointed at each unit as it is plugged in ([`plug`]);
    /// returns it.
    pub fn x509_fixture(&self) -> PathBuf {
        self.open_lot("sensor-x509");
        let port = self.dir.path().join("unit-port");
        self.config(
            "30-fixtures.toml",
            &format!(
                "[fixtures.fx1]\nproduct = \"sensor-x509\"\nserial_port = \"{}\"\n",
                port.display()
            ),
        );
        port
    }

    /// `station provision --fixture fx1 --serial SERIAL --actor alice`: one unit from the
    /// command line.
    pub fn provision(&self, serial: &str) -> Output {
        self.station(&[
            "provision",
            "--fixture",
            "fx1",
            "--serial",
            serial,
            "--actor",
            "alice",
        ])
    }

    /// The station database.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.home.join("station.db")).expect("open db")
    }

    /// The SoftHSM configuration of the home (unit tokens of the simulated line live there).
    pub fn softhsm_conf(&self) -> PathBuf {
        self.home.join("hsm/softhsm2.conf")
    }

    /// `station upload --now`, which must deliver everything.
    pub fn upload_now(&self) {
        let out = self.station(&["upload", "--now"]);
        assert!(
            out.status.success(),
            "upload --now: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a DPS client call against the rig's service.
    pub fn dps<T, F: std::future::Future<Output = T>>(
        &self,
        f: impl FnOnce(dps::client::ServiceClient) -> F,
    ) -> T {
        let client = self.dps.as_ref().expect("dps running").client();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f(client))
    }

    /// The enrollment DPS holds for `rid`, and its attestation mechanism (with keys/certs).
    pub fn dps_enrollment(
        &self,
        rid: &str,
    ) -> (
        dps::wire::IndividualEnrollment,
        dps::wire::AttestationMechanism,
    ) {
        let rid = dps::RegistrationId::new(rid.to_owned()).expect("rid");
        self.dps(|c| async move {
            let e = c.get_enrollment(&rid).await.expect("get enrollment");
            let a = c.enrollment_attestation(&rid).await.expect("attestation");
            (e, a)
        })
    }

    /// One unit's state tag.
    pub fn state(&self, serial: &str) -> Option<String> {
        self.db()
            .query_row("SELECT state FROM units WHERE serial = ?1", [serial], |r| {
                r.get(0)
            })
            .ok()
    }
}

impl Default for LineRig {
    fn default() -> Self {
        Self::new()
    }
}

/// A port P with P+1 free too (the swtpm TCTI's control channel is P+1). Chosen below Linux's
/// ephemeral range (32768 and up), so that no outgoing connection of a parallel test takes it
/// between now and the moment swtpm binds it.
pub fn free_port_pair() -> u16 {
    use std::hash::{BuildHasher as _, Hasher as _};
    for _ in 0..500 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let p = 20_000 + 2 * u16::try_from(h.finish() % 6_000).unwrap_or(0);
        let a = std::net::TcpListener::bind(("127.0.0.1", p));
        let b = std::net::TcpListener::bind(("127.0.0.1", p + 1));
        if a.is_ok() && b.is_ok() {
            return p;
        }
    }
    panic!("no free port pair");
}

impl LineRig {
    /// The demo's line: four fixtures (TPM, X.509 over the link, symmetric group over the
    /// link, X.509 in unit tokens reached through their own SoftHSM module copy), an operator
    /// with the badge `badge`, a lot per product, the group synced, the TPM vendor trusted.
    /// Unit tokens take their PIN from UNIT_SE_PIN (the product's `pin_env`).
    pub fn demo_line(&self, badge: &str) {
        let dev = self.home.join("dev");
        std::fs::create_dir_all(&dev).expect("dev dir");
        std::fs::copy(
            "/usr/lib/softhsm/libsofthsm2.so",
            dev.join("unit-element-softhsm2.so"),
        )
        .expect("copy SoftHSM (install softhsm2)");
        let port = free_port_pair();
        self.config(
            "40-line.toml",
            &format!(
                "[tpm]\nallow_software_tpm = true\n\
                 [fixtures.tpm-1]\nproduct = \"sensor-tpm\"\nscanner = \"dev/scanner-tpm-1\"\ntcti = \"swtpm:host=127.0.0.1,port={port}\"\n\
                 [fixtures.link-1]\nproduct = \"sensor-x509\"\nscanner = \"dev/scanner-link-1\"\nserial_port = \"dev/unit-link-1\"\n\
                 [fixtures.sym-1]\nproduct = \"sensor-sym\"\nscanner = \"dev/scanner-sym-1\"\nserial_port = \"dev/unit-sym-1\"\n\
                 [fixtures.se-1]\nproduct = \"gateway-se\"\nscanner = \"dev/scanner-se-1\"\npkcs11_module = \"dev/unit-element-softhsm2.so\"\n"
            ),
        );
        let vendor = self.dir.path().join("tpm-vendor");
        let out = Command::new(bin("line-sim"))
            .arg("--home")
            .arg(&self.home)
            .arg("--vendor-only")
            .arg("--tpm-vendor")
            .arg(&vendor)
            .output()
            .expect("line-sim --vendor-only");
        assert!(
            out.status.success(),
            "vendor: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.add_badge_user("alice", "supervisor", badge);
        for p in ["sensor-tpm", "sensor-x509", "sensor-sym", "gateway-se"] {
            self.open_lot(p);
        }
        let out = self.station(&["group", "sync", "--actor", "sup"]);
        assert!(
            out.status.success(),
            "group sync: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl LineRig {
    /// The demo line ([`LineRig::demo_line`]) with an uploader polling every 200 ms, a
    /// `station serve` on it, and `line-sim` run through `units` units (unit tokens made with
    /// PIN 864209), which must all pass. The station keeps serving.
    pub fn run_demo_lot(&self, badge: &str, units: i64) -> StationServe {
        const UNIT_PIN: &str = "864209";
        self.demo_line(badge);
        self.config(
            "60-upload.toml",
            "[upload]\ninterval_ms = 200\nmin_backoff_ms = 200\nmax_backoff_ms = 1000\n",
        );
        let serve = StationServe::start(self, &[("UNIT_SE_PIN", UNIT_PIN)]);
        let out = self
            .line_sim(units, badge, UNIT_PIN)
            .output()
            .expect("line-sim");
        assert!(
            out.status.success(),
            "line-sim: {}\nstation log:\n{}",
            crate::text(&out),
            serve.log_text()
        );
        serve
    }

    /// `line-sim` for the demo line ([`LineRig::demo_line`]): `units` units at zero wire
    /// delay, scanned in by the operator with `badge`, unit tokens made with `unit_pin`, its
    /// work under the rig's directory. Add arguments, then run it.
    pub fn line_sim(&self, units: i64, badge: &str, unit_pin: &str) -> Command {
        let mut c = Command::new(bin("line-sim"));
        c.arg("--home")
            .arg(&self.home)
            .args([
                "--units",
                &units.to_string(),
                "--badge-env",
                "T_BADGE",
                "--zero-wire-delay",
            ])
            .arg("--work-dir")
            .arg(self.dir.path().join("line"))
            .arg("--tpm-vendor")
            .arg(self.dir.path().join("tpm-vendor"))
            .env("T_BADGE", badge)
            .env("UNIT_SE_PIN", unit_pin)
            .stdin(Stdio::null());
        c
    }
}

/// A running `station serve`, killed on drop.
pub struct StationServe {
    child: Child,
    /// Its log file (H/logs/station.log).
    pub log: PathBuf,
}

impl StationServe {
    /// Starts `station --home H serve` with extra environment.
    pub fn start(rig: &LineRig, env: &[(&str, &str)]) -> Self {
        let mut c = Command::new(bin("station"));
        c.arg("--home")
            .arg(&rig.home)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        Self {
            child: c.spawn().expect("spawn station serve"),
            log: rig.home.join("logs/station.log"),
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the log holds `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log_text().contains(needle)
    }

    /// How often the log holds `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log_text().matches(needle).count()
    }

    /// Waits until the log holds `needle`, failing with the log's tail after `secs`.
    pub fn wait_logged(&self, needle: &str, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !self.logged(needle) {
            if std::time::Instant::now() > deadline {
                let t = self.log_text();
                let tail: String = t
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!("timed out waiting for {needle:?} in the station log; its end:\n{tail}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits until unit `serial` is in one of `states` ("queued|uploaded"), failing with the
    /// log after `secs`.
    pub fn wait_state(&self, rig: &LineRig, serial: &str, states: &str, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !rig
            .state(serial)
            .is_some_and(|s| states.split('|').any(|w| w == s))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {serial} to be {states} (it is {:?}); the station log:\n{}",
                rig.state(serial),
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Whether the daemon still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for StationServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `f` holds, failing with `what` after `secs`.
pub fn wait_until(what: &str, secs: u64, f: impl FnMut() -> bool) {
    assert!(poll_until(secs, f), "timed out waiting for {what}");
}

/// Waits until `f` holds or `secs` pass; whether it held.
pub fn poll_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    true
}

/// Points the symlink `link` at `target` (a fixture's stable port name, as /dev/serial/by-id,
/// re-pointed when a device is plugged in).
pub fn plug(link: &Path, target: &Path) {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).expect("symlink port");
}

impl LineRig {
    /// Live certificates of unit `serial`.
    pub fn live_certs(&self, serial: &str) -> i64 {
        self.db()
            .query_row(
                "SELECT count(*) FROM certificates c JOIN units u ON u.id = c.unit_id WHERE u.serial = ?1 AND c.status = 'live'",
                [serial],
                |r| r.get(0),
            )
            .expect("count live certificates")
    }

    /// `station audit verify` must pass.
    pub fn audit_verify(&self) {
        let out = self.station(&["audit", "verify"]);
        assert!(
            out.status.success(),
            "audit verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The primary symmetric key an attestation from DPS holds, decoded; `None` when it holds none
/// (or not in base64).
#[must_use]
pub fn dps_primary_key(a: dps::wire::AttestationMechanism) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let key = a.symmetric_key?.primary_key?;
    base64::engine::general_purpose::STANDARD
        .decode(key.expose())
        .ok()
}
