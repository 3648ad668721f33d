//! Where a unit's time goes: the time spent waiting on hardware (the device link, the TPM, the
//! HSM and unit tokens) is summed per thread, so the line can report the station's own overhead
//! per unit (everything else, SQLite and lock waits included) next to it.

use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
    static TOTAL: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Runs `f`, a call that waits on hardware, and adds its time to this thread's hardware time.
/// Nested calls count once.
pub fn hardware<T>(f: impl FnOnce() -> T) -> T {
    let depth = DEPTH.get();
    if depth == 0 {
        STARTED.set(Some(Instant::now()));
    }
    DEPTH.set(depth + 1);
    let out = f();
    DEPTH.set(depth);
    if depth == 0
        && let Some(s) = STARTED.take()
    {
        TOTAL.set(TOTAL.get() + s.elapsed());
    }
    out
}

/// Runs `f`, station work called back from inside a hardware call (e.g. the CA issuing while a
/// unit token waits), so that its time is not counted as hardware.
pub fn station<T>(f: impl FnOnce() -> T) -> T {
    let depth = DEPTH.get();
    if depth == 0 {
        return f();
    }
    if let Some(s) = STARTED.take() {
        TOTAL.set(TOTAL.get() + s.elapsed());
    }
    DEPTH.set(0);
    let out = f();
    DEPTH.set(depth);
    STARTED.set(Some(Instant::now()));
    out
}

/// This thread's hardware time since the last call, and a fresh start.
pub fn take() -> Duration {
    TOTAL.replace(Duration::ZERO)
}

thread_local! {
    static DATABASE: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    static TURN_WAIT: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    static DISK_SYNC: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Runs `f`, a database transaction (waiting for the write turn included), and adds its time to
/// this thread's database time: part of the overhead, reported on its own.
pub fn database<T>(f: impl FnOnce() -> T) -> T {
    let s = Instant::now();
    let out = f();
    DATABASE.set(DATABASE.get() + s.elapsed());
    out
}

/// Runs `f`, a wait for the process's write turn (`store::Writer::turn`), and adds its time to
/// this thread's turn-wait time: part of its database time, reported on its own too.
pub fn turn_wait<T>(f: impl FnOnce() -> T) -> T {
    let s = Instant::now();
    let out = f();
    TURN_WAIT.set(TURN_WAIT.get() + s.elapsed());
    out
}

/// Runs `f`, a wait for a commit to reach the disk (group commit's fsync), and adds its time to
/// this thread's disk-sync time: part of the overhead, reported on its own.
pub fn disk_sync<T>(f: impl FnOnce() -> T) -> T {
    let s = Instant::now();
    let out = f();
    DISK_SYNC.set(DISK_SYNC.get() + s.elapsed());
    out
}

/// A thread's time in the store since the last `take_store`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreTime {
    /// Transactions, waiting for the write turn included.
    pub database: Duration,
    /// Of `database`, waiting for the write turn.
    pub turn_wait: Duration,
    /// Waiting for commits to reach the disk.
    pub disk_sync: Duration,
}

/// This thread's time in the store since the last call, and a fresh start.
pub fn take_store() -> StoreTime {
    StoreTime {
        database: DATABASE.replace(Duration::ZERO),
        turn_wait: TURN_WAIT.replace(Duration::ZERO),
        disk_sync: DISK_SYNC.replace(Duration::ZERO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_hardware_counts_once_and_station_callbacks_are_excluded() {
        take();
        let outer = Instant::now();
        hardware(|| {
            std::thread::sleep(Duration::from_millis(20));
            hardware(|| std::thread::sleep(Duration::from_millis(20)));
            station(|| std::thread::sleep(Duration::from_millis(50)));
        });
        let elapsed = outer.elapsed();
        let t = take();
        assert!(t >= Duration::from_millis(40), "{t:?}");
        // The 50 ms called back from inside are not hardware time, however slow the machine.
        assert!(
            t + Duration::from_millis(50) <= elapsed,
            "{t:?} of {elapsed:?}"
        );
        assert_eq!(take(), Duration::ZERO);
    }

    #[test]
    fn the_write_turn_wait_is_counted_apart_and_taken_with_the_store_time() {
        take_store();
        let turn = std::sync::Mutex::new(());
        let held = turn.lock().unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let called = database(|| {
                    let (called, got) = turn_wait(|| (Instant::now(), turn.lock().unwrap()));
                    drop(got);
                    called
                });
                (called, take_store())
            });
            std::thread::sleep(Duration::from_millis(30));
            let released = Instant::now();
            drop(held);
            let (called, time) = waiter.join().unwrap();
            // The waiter waited at least from its call until the turn was given back (nothing,
            // if it came after that).
            assert!(
                time.turn_wait >= released.saturating_duration_since(called),
                "{time:?}"
            );
            assert!(time.turn_wait <= time.database, "{time:?}");
        });
        assert_eq!(take_store(), StoreTime::default(), "taken");
    }
}
