//! Shared by the integration tests: a real `dps serve` process over TLS in a temp dir.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dps::client::{ClientOptions, RetryPolicy, ServiceClient};
use dps::sas::ConnectionString;

/// The `dps` binary under test.
pub fn dps_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dps")
}

/// A running local service; killed on drop.
pub struct Service {
    pub child: Child,
    pub dir: PathBuf,
    pub port: u16,
    /// The device API's MQTT port, when started with `--mqtt-listen`.
    pub mqtt_port: Option<u16>,
    _tmp: Option<tempfile::TempDir>,
}

impl Service {
    /// Starts on a fresh data dir with the given extra args.
    pub fn start(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = Self::start_in(&dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts on `dir` (kept by the caller).
    pub fn start_in(dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(dps_bin())
            .args(["serve", "--data"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let mut mqtt_port = None;
        let port = loop {
            let line = lines
                .next()
                .expect("dps serve exited before listening")
                .unwrap();
            if let Some(addr) = line.strip_prefix("mqtts listening on ") {
                mqtt_port = Some(addr.rsplit(':').next().unwrap().parse().unwrap());
            }
            if let Some(addr) = line.strip_prefix("https listening on ") {
                break addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        };
        // Keep draining stdout so the service never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            dir: dir.to_owned(),
            port,
            mqtt_port,
            _tmp: None,
        }
    }

    /// The owner connection string.
    pub fn connection_string(&self) -> ConnectionString {
        std::fs::read_to_string(self.dir.join("connection-string"))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// A client with fast retries (tests must not wait 5 s back-offs).
    pub fn client(&self) -> ServiceClient {
        self.client_with(self.connection_string(), fast_retry())
    }

    /// A client with the given connection string and options.
    pub fn client_with(&self, cs: ConnectionString, mut opts: ClientOptions) -> ServiceClient {
        opts.extra_ca_file = Some(self.dir.join("ca.pem"));
        ServiceClient::new(cs, opts).unwrap()
    }

    /// A raw HTTPS client trusting the service CA.
    pub fn http(&self) -> reqwest::Client {
        let pem = std::fs::read(self.dir.join("ca.pem")).unwrap();
        reqwest::Client::builder()
            .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
            .build()
            .unwrap()
    }

    /// `https://localhost:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// An owner SAS token valid for an hour.
    pub fn token(&self) -> String {
        token_for(&self.connection_string(), 3600)
    }

    /// A service on a data directory of its own holding a symmetric-key individual enrollment
    /// for `id`, then started again on the same data with `extra` (faults armed for its first
    /// calls, which making the enrollment must not use up). The unit's primary key.
    pub async fn with_enrollment_then(id: &str, extra: &[&str]) -> (Self, String) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let primary = new_key();
        let first = Self::start_in(&dir, &[]);
        first
            .client()
            .create_or_update_enrollment(
                &dps::wire::IndividualEnrollment::new(rid(id), sym(&primary, &new_key())),
                None,
            )
            .await
            .unwrap();
        first.stop();
        let mut svc = Self::start_in(&dir, extra);
        svc._tmp = Some(tmp);
        (svc, primary)
    }

    /// Its ID scope.
    pub fn id_scope(&self) -> String {
        std::fs::read_to_string(self.dir.join("id-scope"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Stops the service (SIGTERM) and waits for it.
    pub fn stop(mut self) {
        self.terminate();
    }

    /// Stops the service but keeps its data dir for inspection.
    pub fn stop_keep(&mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        send_sigterm(self.child.id());
        for _ in 0..100 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send_sigterm(pid: u32) {
    // `kill -TERM` keeps the tests free of unsafe code.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

/// Retries fast enough for tests.
pub fn fast_retry() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            max_attempts: 20,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            default_retry_after: Duration::from_millis(100),
        },
        ..ClientOptions::default()
    }
}

/// A token for `cs` expiring `secs` from now (negative: already expired).
pub fn token_for(cs: &ConnectionString, secs: i64) -> String {
    let exp = u64::try_from(chrono::Utc::now().timestamp() + secs).unwrap();
    secrecy::ExposeSecret::expose_secret(&cs.token(exp)).to_owned()
}

/// Runs the `dps` binary with args; returns (success, stdout, stderr).
pub fn run_dps(args: &[&str]) -> (bool, String, String) {
    run_dps_env(args, &[])
}

/// Runs the `dps` binary with args and these environment variables; returns (success,
/// stdout, stderr).
pub fn run_dps_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(dps_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A symmetric-key enrollment body.
pub fn sym_enrollment(id: &str) -> serde_json::Value {
    serde_json::json!({
        "registrationId": id,
        "attestation": {"type": "symmetricKey", "symmetricKey": {}}
    })
}

/// A self-signed leaf certificate in PEM with CN = `cn`.
pub fn cert_pem(cn: &str, ca: bool) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    if ca {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    p.self_signed(&key).unwrap().pem()
}

/// A registration ID.
pub fn rid(s: &str) -> dps::RegistrationId {
    dps::RegistrationId::new(s).unwrap()
}

/// A fresh symmetric key, base64.
pub fn new_key() -> String {
    secrecy::ExposeSecret::expose_secret(&dps::sas::SharedAccessKey::generate().to_base64())
        .to_owned()
}

/// A symmetric-key attestation with these keys.
pub fn sym(primary: &str, secondary: &str) -> dps::wire::AttestationMechanism {
    dps::wire::AttestationMechanism::symmetric_key(
        Some(dps::wire::KeyText::new(primary)),
        Some(dps::wire::KeyText::new(secondary)),
    )
}

/// A certificate issuer of the tests.
pub type TestIssuer = rcgen::Issuer<'static, rcgen::KeyPair>;

/// A CA certificate (self-signed when `issuer` is None) and its issuer handle.
pub fn ca(cn: &str, issuer: Option<&TestIssuer>) -> (String, TestIssuer) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.use_authority_key_identifier_extension = issuer.is_some();
    let cert = match issuer {
        Some(i) => p.signed_by(&key, i).unwrap(),
        None => p.self_signed(&key).unwrap(),
    };
    (cert.pem(), rcgen::Issuer::new(p, key))
}

/// A unit's leaf (CN = `cn`, EKU clientAuth) signed by `issuer`, or self-signed: (cert PEM,
/// key PEM).
pub fn leaf(cn: &str, issuer: Option<&TestIssuer>) -> (String, String) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = issuer.is_some();
    let cert = match issuer {
        Some(i) => p.signed_by(&key, i).unwrap(),
        None => p.self_signed(&key).unwrap(),
    };
    (cert.pem(), key.serialize_pem())
}
