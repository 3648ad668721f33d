#![allow(clippy::expect_used, clippy::unwrap_used, clippy::missing_panics_doc)]
//! Helpers shared by the end-to-end tests: finding the workspace's binaries, running a simulated
//! unit, and a software CA for tests only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod crash;
pub mod line;
pub mod p11;

use base64::Engine as _;
use dps::ids::RegistrationId;
use station::link::x509::{IssueError, IssuedChain, LeafIssuer};

/// Path of a binary built in the same target directory as the running test.
///
/// Test executables live in `target/<profile>/deps/`; binaries in `target/<profile>/`.
/// Panics with a build hint if the binary is missing.
#[must_use]
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test exe has a directory")
        .to_path_buf();
    // Tests run from target/<profile>/deps, examples from target/<profile>/examples.
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found; build it first: cargo build -p fixtures -p station",
        path.display()
    );
    path
}

/// A finished command's standard output then its standard error, as one text: what a person
/// running it saw, for assertions and failure messages.
#[must_use]
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `station init --home root`, as a fresh machine has it (no SoftHSM config or log level
/// from the caller's environment).
pub fn station_init(root: &Path) {
    let out = Command::new(bin("station"))
        .args(["init", "--home"])
        .arg(root)
        .env_remove("SOFTHSM2_CONF")
        .env_remove("STATION_LOG")
        .output()
        .expect("run station init");
    assert!(
        out.status.success(),
        "station init: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `unit-sim`, killed on drop.
pub struct UnitSim {
    child: Child,
    /// The pty path it serves.
    pub pty: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
}

impl UnitSim {
    /// Starts `unit-sim` with its state in `state_dir` and extra arguments, and waits for its pty.
    pub fn start(state_dir: &Path, args: &[&str]) -> Self {
        let link_file = state_dir.with_extension(format!("link-{}", rand_suffix()));
        let _ = std::fs::remove_file(&link_file);
        let child = Command::new(bin("unit-sim"))
            .arg("--link-file")
            .arg(&link_file)
            .arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .env(
                "UNIT_SIM_LOG",
                std::env::var("UNIT_SIM_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn unit-sim");
        let mut sim = UnitSim {
            child,
            pty: PathBuf::new(),
            state_dir: state_dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(p) = std::fs::read_to_string(&link_file)
                && !p.is_empty()
            {
                sim.pty = PathBuf::from(p);
                return sim;
            }
            if let Ok(Some(status)) = sim.child.try_wait() {
                panic!("unit-sim exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "unit-sim did not write its link file"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to end by itself (after `--disconnect-after`).
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for UnitSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64 ^ rand_u64()
    )
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// TEST ONLY: a software CA (rcgen, key in memory) standing in for the HSM-backed station CA
/// until that lands. Never used outside tests.
pub struct SoftwareTestIssuer {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The issuing CA's certificate, then its parents (DER).
    chain: Vec<Vec<u8>>,
}

fn ca_params(cn: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params
}

impl SoftwareTestIssuer {
    /// A fresh self-signed test CA.
    #[must_use]
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let params = ca_params("station test CA (software, tests only)");
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        let chain = vec![ca.as_ref().der().to_vec()];
        Self { ca, chain }
    }

    /// A root and an intermediate that issues leaves: chains of three, as in production.
    #[must_use]
    pub fn two_tier() -> Self {
        let root_key = rcgen::KeyPair::generate().expect("root key");
        let root = rcgen::CertifiedIssuer::self_signed(
            ca_params("station test root (software, tests only)"),
            root_key,
        )
        .expect("root");
        let key = rcgen::KeyPair::generate().expect("intermediate key");
        let mut params = ca_params("station test intermediate (software, tests only)");
        params.use_authority_key_identifier_extension = true;
        let ca = rcgen::CertifiedIssuer::signed_by(params, key, &root).expect("intermediate");
        let chain = vec![ca.as_ref().der().to_vec(), root.as_ref().der().to_vec()];
        Self { ca, chain }
    }

    /// The CA certificate (DER).
    #[must_use]
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca.as_ref().der().to_vec()
    }
}

impl Default for SoftwareTestIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl LeafIssuer for SoftwareTestIssuer {
    fn issue(&self, csr_der: &[u8], rid: &RegistrationId) -> Result<IssuedChain, IssueError> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(csr_der);
        let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line)?);
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE REQUEST-----\n");
        // from_pem verifies the CSR's self-signature.
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&pem)?;
        // Fresh parameters: nothing is copied from the CSR but its key.
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, rid.as_str());
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = params.signed_by(&csr.public_key, &self.ca)?;
        Ok(IssuedChain {
            leaf_der: leaf.der().to_vec(),
            chain_der: self.chain.clone(),
        })
    }
}
