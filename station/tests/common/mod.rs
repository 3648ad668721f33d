//! Helpers shared by the station's CLI tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// What the caller's environment may set that a fresh machine has not: a home, a SoftHSM
/// configuration, a log level.
pub const CALLER_ENV: [&str; 3] = ["STATION_HOME", "SOFTHSM2_CONF", "STATION_LOG"];

/// The station binary, run as on a fresh machine (without [`CALLER_ENV`]).
pub fn station() -> Command {
    let mut c = Command::cargo_bin("station").unwrap();
    for var in CALLER_ENV {
        c.env_remove(var);
    }
    c
}

/// [`station`] for the station home `home` (`STATION_HOME`).
pub fn station_in(home: &Path) -> Command {
    let mut c = station();
    c.env("STATION_HOME", home);
    c
}

/// `station --home home args...`: whether it succeeded, its stdout and its stderr.
pub fn run(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = station()
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`run`], which must succeed: its stdout.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let (good, out, err) = run(home, args);
    assert!(good, "station {args:?} failed:\n{out}\n{err}");
    out
}

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
    let (good, out, err) = run(root, &["init"]);
    assert!(good, "station init: {out}{err}");
}
