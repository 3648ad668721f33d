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
