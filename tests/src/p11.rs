//! `p11-kit server` in front of SoftHSM: an HSM the tests can take away (kill the server) and
//! bring back, with no fake module.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// SoftHSM's PKCS#11 module, as Debian installs it.
pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// p11-kit's client module (the PKCS#11 side of `p11-kit server`).
#[must_use]
pub fn p11_kit_client() -> PathBuf {
    ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|a| PathBuf::from(format!("/usr/lib/{a}/pkcs11/p11-kit-client.so")))
        .find(|p| p.exists())
        .expect("p11-kit's client module is missing: apt-get install p11-kit p11-kit-modules")
}

/// `p11-kit server` serving the SoftHSM tokens of config `conf` on the socket `sock`, in its
/// own process group: it forks one child per client connection, and the whole group has to go
/// for the HSM to be gone. Killed on drop too, so a failing test leaves no server behind.
pub struct P11Server {
    child: Child,
    gone: bool,
}

impl P11Server {
    /// Starts it for the tokens labelled `tokens`; returns once its socket exists.
    pub fn start(conf: &Path, sock: &Path, tokens: &[&str]) -> Self {
        use std::os::unix::process::CommandExt as _;
        let _ = std::fs::remove_file(sock);
        let child = Command::new("p11-kit")
            .args(["server", "--provider", SOFTHSM, "-f", "-n"])
            .arg(sock)
            .args(tokens.iter().map(|t| format!("pkcs11:token={t}")))
            .env("SOFTHSM2_CONF", conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("p11-kit is missing: apt-get install p11-kit p11-kit-modules");
        crate::line::wait_until("the p11-kit server socket", 15, || sock.exists());
        Self { child, gone: false }
    }

    /// Kills the whole group (the HSM disappears); only once, as the process group id may
    /// belong to someone else after the wait.
    pub fn kill(&mut self) {
        if self.gone {
            return;
        }
        self.gone = true;
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
    }
}

impl Drop for P11Server {
    fn drop(&mut self) {
        self.kill();
    }
}
