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

/// Runs `f`, a wait for a commit to reach the disk (group commit's fsync), and adds its time to
/// this thread's disk-sync time: part of the overhead, reported on its own.
pub fn disk_sync<T>(f: impl FnOnce() -> T) -> T {
    let s = Instant::now();
    let out = f();
    DISK_SYNC.set(DISK_SYNC.get() + s.elapsed());
    out
}

/// This thread's database and disk-sync time since the last call, and a fresh start.
pub fn take_store() -> (Duration, Duration) {
    (
        DATABASE.replace(Duration::ZERO),
        DISK_SYNC.replace(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_hardware_counts_once_and_station_callbacks_are_excluded() {
        take();
        hardware(|| {
            std::thread::sleep(Duration::from_millis(20));
            hardware(|| std::thread::sleep(Duration::from_millis(20)));
            station(|| std::thread::sleep(Duration::from_millis(50)));
        });
        let t = take();
        assert!(t >= Duration::from_millis(40), "{t:?}");
        assert!(t < Duration::from_millis(90), "{t:?}");
        assert_eq!(take(), Duration::ZERO);
    }
}
