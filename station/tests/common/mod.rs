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
