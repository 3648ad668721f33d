//! Restarting the station's PKCS#11 module after the HSM went away, and sessions that follow
//! the module across restarts.
//!
//! A module whose connection or device went away (p11-kit's client after its server died, a
//! network HSM after a link loss) keeps failing every call until it is finalized and
//! initialized again. Every thread of the process shares the one module, so restarts are
//! counted: of the threads that lost the HSM together only one restarts it per outage, and
//! none restarts it under sessions another thread opened after the restart. A session opened
//! before a restart is never closed: its handle may by then number another thread's session.

use std::cell::RefCell;

use cryptoki::context::{CInitializeArgs, CInitializeFlags};
use cryptoki::error::{Error as P11Error, RvError};

use super::{Hsm, TokenSession};

static EPOCH: std::sync::Mutex<u64> = std::sync::Mutex::new(0);

/// The current module epoch (a thread notes it when its session opens).
#[must_use]
pub fn epoch() -> u64 {
    EPOCH.lock().map(|e| *e).unwrap_or_default()
}

/// Restarts the module (C_Finalize, C_Initialize) unless another thread already did since
/// epoch `seen`; `seen` becomes the epoch the caller's next session belongs to.
pub fn restart_module(hsm: &Hsm, seen: &mut u64) {
    let Ok(mut epoch) = EPOCH.lock() else {
        return;
    };
    if *epoch == *seen {
        let _ = hsm.context().clone().finalize();
        match hsm
            .context()
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                *epoch += 1;
            }
            Err(_) => {}
        }
    }
    *seen = *epoch;
}

/// A failure of a [`FollowingSession`] call, as text (the HSM's answer included).
pub type FollowError = String;

/// A session on one token for a long-lived thread that uses the HSM now and then (the
/// uploader): opened on first use, opened again after the module was restarted by any thread,
/// and when a call fails because the HSM itself is gone (`alive` fails too), the module is
/// restarted so that the next call reconnects. Single-threaded, like a session.
pub struct FollowingSession<'a> {
    hsm: &'a Hsm,
    open: Box<dyn Fn() -> Result<TokenSession, FollowError> + 'a>,
    alive: Box<dyn Fn(&TokenSession) -> bool + 'a>,
    state: RefCell<(u64, Option<TokenSession>)>,
}

impl std::fmt::Debug for FollowingSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.borrow();
        f.debug_struct("FollowingSession")
            .field("epoch", &st.0)
            .field("open", &st.1.is_some())
            .finish()
    }
}

impl<'a> FollowingSession<'a> {
    /// `open` opens (and logs in to) the token; `alive` is a cheap call that fails only when
    /// the HSM does not answer (an object search).
    pub fn new(
        hsm: &'a Hsm,
        open: impl Fn() -> Result<TokenSession, FollowError> + 'a,
        alive: impl Fn(&TokenSession) -> bool + 'a,
    ) -> Self {
        Self {
            hsm,
            open: Box::new(open),
            alive: Box::new(alive),
            state: RefCell::new((epoch(), None)),
        }
    }

    /// Runs `f` on the current session, opening one first if needed.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&TokenSession) -> Result<T, FollowError>,
    ) -> Result<T, FollowError> {
        let mut st = self.state.borrow_mut();
        let now = epoch();
        if st.0 != now {
            if let Some(old) = st.1.take() {
                std::mem::forget(old);
            }
            st.0 = now;
        }
        if st.1.is_none() {
            st.1 = Some((self.open)()?);
        }
        let Some(session) = st.1.as_ref() else {
            return Err("no HSM session".into());
        };
        let out = f(session);
        if out.is_err() && !(self.alive)(session) {
            if let Some(old) = st.1.take() {
                std::mem::forget(old);
            }
            let mut seen = st.0;
            restart_module(self.hsm, &mut seen);
            st.0 = seen;
        }
        out
    }
}
