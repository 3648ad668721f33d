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
        let mut child = Command::new(bin("dps"))
            .args(["serve", "--data"])
            .arg(dir)
            .args([
                "--listen",
                "127.0.0.1:0",
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

/// A port P with P+1 free too (the swtpm TCTI's control channel is P+1).
pub fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let a = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let p = a.local_addr().expect("addr").port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
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
        let out = self.station_env(
            &[
                "user",
                "add",
                "alice",
                "--role",
                "supervisor",
                "--badge-env",
                "T_BADGE",
                "--actor",
                "sup",
            ],
            &[("T_BADGE", badge)],
        );
        assert!(
            out.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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
