//! Test fixture: one SoftHSM token directory per test process (SoftHSM reads
//! `SOFTHSM2_CONF` once per process), with a fresh token per test.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::config::TokenConfig;
use super::module::Hsm;
use super::session::TokenSession;
use super::softhsm;

struct Shared {
    dir: tempfile::TempDir,
    hsm: Hsm,
}

static CLEANUP: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_at_exit() {
    if let Some(dir) = CLEANUP.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let module = PathBuf::from(super::config::SOFTHSM_MODULE);
        assert!(
            module.exists(),
            "SoftHSM2 is missing: install it with `apt-get install softhsm2`"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        // A static is never dropped, so the directory would outlive the process (one per test
        // process under nextest, ~30 a run): it is removed at exit instead.
        let _ = CLEANUP.set(dir.path().to_path_buf());
        // SAFETY: `remove_at_exit` is a plain `extern "C" fn` with no arguments, as atexit
        // wants; it only reads a OnceLock set above.
        unsafe { libc::atexit(remove_at_exit) };
        softhsm::write_conf(dir.path()).expect("softhsm conf");
        // SAFETY: runs once, inside OnceLock initialisation, before this process loads SoftHSM.
        unsafe { std::env::set_var("SOFTHSM2_CONF", dir.path().join("softhsm2.conf")) };
        let hsm = Hsm::load_module(&module).expect("load SoftHSM");
        Shared { dir, hsm }
    })
}

/// The process's SoftHSM token directory (one subdirectory per token).
pub fn token_dir() -> PathBuf {
    shared().dir.path().join("tokens")
}

/// A fresh token (unique label) in the process's SoftHSM, logged in.
pub fn fresh_token(prefix: &str) -> (Hsm, TokenConfig, TokenSession) {
    let (hsm, cfg) = fresh_token_unopened(prefix);
    let session = hsm.open(&cfg, |p| p.to_path_buf()).expect("open token");
    (hsm, cfg, session)
}

/// A fresh token nobody in this process has logged in to yet.
pub fn fresh_token_unopened(prefix: &str) -> (Hsm, TokenConfig) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let s = shared();
    let label = format!("{prefix}-{}", N.fetch_add(1, Ordering::SeqCst));
    let (pin, so_pin) = softhsm::pin_paths(s.dir.path(), &label);
    // Token initialisation changes the module's slot list: one at a time.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    {
        let _g = INIT.lock().expect("lock");
        softhsm::ensure_token(&s.hsm, &label, &pin, &so_pin).expect("init token");
    }
    let cfg = TokenConfig {
        token: Some(label),
        token_serial: None,
        pin_file: Some(pin),
        pin_env: None,
    };
    (s.hsm.clone(), cfg)
}
