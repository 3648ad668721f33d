//! The write turn's priority ceiling: a thread holding the shared writer's turn
//! ([`super::Writer::turn`]) runs at real-time priority (`SCHED_FIFO`, priority 1) until it
//! gives the turn back, then returns to its own policy (its nice value is kept).
//!
//! Why: on a busy station every fixture queues for the one write turn. A holder that a normal
//! thread preempts (another fixture woken by its unit, the uploader, the simulated line in
//! `scripts/bench line`) keeps the turn while it waits for a core, and every fixture behind it
//! waits too: about half of a long hold was the holder in the run queue. A real-time holder is
//! not preempted by normal threads, so a turn lasts about as long as its transaction's work.
//! In `scripts/bench line` (8 fixtures, 2 cores, four paired runs) the write-turn wait p99 fell
//! from 2.0-4.8 to 1.1-2.3 ms and the overhead p99 from 7.2-9.0 to 5.1-6.7 ms.
//!
//! A turn is one SQLite transaction: bounded work. A holder that blocks (disk, SQLite's busy
//! handler waiting on another process) sleeps as any thread does and leaves the core. Only the
//! fsync wait of a durable commit is outside the turn, at normal priority: waiting on it at
//! real-time priority made the syncs' tail worse.
//!
//! Needs `CAP_SYS_NICE` (root) or an `RLIMIT_RTPRIO` of at least 1 (`LimitRTPRIO=1` in a
//! systemd unit). Refused, the turn works as before, `station serve` logs the refusal once
//! and `station check` warns; `[store] realtime_write_turn = false` turns the ceiling off.

use std::sync::atomic::{AtomicBool, Ordering};

/// The real-time priority a holder runs at: the lowest, above every normal thread and below
/// any real-time thread the system has (interrupt threads, audio, ...).
const PRIORITY: libc::c_int = 1;

/// Set once the system refused real-time priority: no further attempts.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Real-time priority for the calling thread until dropped (see the module).
#[derive(Debug)]
#[must_use = "the priority drops back when this is dropped"]
pub struct Raised {
    /// The policy to return to; `None` when nothing was changed.
    restore: Option<libc::c_int>,
    /// Dropped on the thread it was raised on.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Raised {
    /// No change.
    pub const NOTHING: Self = Self {
        restore: None,
        _thread: std::marker::PhantomData,
    };
}

/// The calling thread's scheduling policy.
pub fn current_policy() -> libc::c_int {
    raw_policy() & !libc::SCHED_RESET_ON_FORK
}

/// The calling thread's scheduling policy with its reset-on-fork flag.
fn raw_policy() -> libc::c_int {
    // SAFETY: a system call on the calling thread (pid 0) with no pointers.
    unsafe { libc::sched_getscheduler(0) }
}

/// Raises the calling thread to real-time priority. Changes nothing for a thread that already
/// runs under a policy other than the normal or batch ones (real-time, idle), or once the
/// system has refused.
pub fn raise() -> Raised {
    if REFUSED.load(Ordering::Relaxed) {
        return Raised::NOTHING;
    }
    let own = raw_policy();
    let base = own & !libc::SCHED_RESET_ON_FORK;
    if base != libc::SCHED_OTHER && base != libc::SCHED_BATCH {
        return Raised::NOTHING;
    }
    let Err(error) = to_real_time() else {
        return Raised {
            restore: Some(own),
            _thread: std::marker::PhantomData,
        };
    };
    if !REFUSED.swap(true, Ordering::Relaxed) {
        // At info: `station serve` logs it; a one-off command (`station provision`) does not
        // print it at every run. `station check` warns.
        tracing::info!(
            %error,
            "the database write turn runs at normal priority: real-time priority was refused \
             (it needs CAP_SYS_NICE or an RTPRIO limit of at least 1, e.g. LimitRTPRIO=1 in a \
             systemd unit); under load units wait longer for the database. \
             [store] realtime_write_turn = false stops trying"
        );
    }
    Raised::NOTHING
}

/// Whether the system refused real-time priority to this process.
#[must_use]
pub fn refused() -> bool {
    REFUSED.load(Ordering::Relaxed)
}

/// Moves the calling thread to `SCHED_FIFO` at [`PRIORITY`]. A process it started would not
/// inherit the priority (reset on fork; none is started while the turn is held).
fn to_real_time() -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: PRIORITY,
    };
    // SAFETY: a system call on the calling thread (pid 0); `param` outlives it.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) }
        == 0
    {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether this process may raise a thread to real-time priority, found by trying on a
/// short-lived thread of its own (`station check`; the thread ends right after).
pub fn available() -> Result<(), std::io::Error> {
    std::thread::spawn(to_real_time)
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the probe thread panicked")))
}

impl Drop for Raised {
    fn drop(&mut self) {
        if let Some(policy) = self.restore {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: a system call on the calling thread (pid 0); `param` outlives it. The
            // kernel keeps the thread's nice value for the normal policies.
            unsafe { libc::sched_setscheduler(0, policy, &param) };
        }
    }
}
