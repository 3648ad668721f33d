//! Helpers shared by the station's CLI tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// Every file below `root`.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `station init --home root`, as a fresh machine has it (no SoftHSM config or log level
/// from the caller's environment).
pub fn station_init(root: &Path) {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("station"))
        .args(["init", "--home"])
        .arg(root)
        .env_remove("SOFTHSM2_CONF")
        .env_remove("STATION_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "station init: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// p11-kit's client module (the PKCS#11 side of `p11-kit server`).
pub fn p11_kit_client() -> PathBuf {
    ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|a| PathBuf::from(format!("/usr/lib/{a}/pkcs11/p11-kit-client.so")))
        .find(|p| p.exists())
        .expect("p11-kit's client module is missing: apt-get install p11-kit p11-kit-modules")
}

/// `p11-kit server` serving SoftHSM tokens (SoftHSM config `conf`) on the socket `sock`, in its
/// own process group: it forks one child per client connection, and the whole group has to go
/// for the HSM to be gone. Stopped on drop too, so a failing test leaves no server behind.
pub struct P11Server(std::process::Child, bool);

impl P11Server {
    /// Starts it for the tokens labelled `tokens`; returns once its socket exists.
    pub fn start(conf: &Path, sock: &Path, tokens: &[&str]) -> Self {
        use std::os::unix::process::CommandExt as _;
        let _ = std::fs::remove_file(sock);
        let child = std::process::Command::new("p11-kit")
            .args([
                "server",
                "--provider",
                "/usr/lib/softhsm/libsofthsm2.so",
                "-f",
                "-n",
            ])
            .arg(sock)
            .args(tokens.iter().map(|t| format!("pkcs11:token={t}")))
            .env("SOFTHSM2_CONF", conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("p11-kit is missing: apt-get install p11-kit p11-kit-modules");
        let start = std::time::Instant::now();
        while !sock.exists() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(15),
                "p11-kit server did not create {}",
                sock.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self(child, false)
    }

    /// Kills the group once; after the wait the id may belong to someone else.
    pub fn stop(&mut self) {
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
        self.stop();
    }
}
