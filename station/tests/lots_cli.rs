//! `station lot ...` as the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use predicates::prelude::*;

use common::station_in;

#[test]
fn lots_open_close_list_show_with_clear_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("H");
    let station = || station_in(&home);
    station().arg("init").assert().success();
    // A fresh home has no product profiles: a lot cannot be opened yet, and nothing is.
    station()
        .args(["lot", "open", "--product", "sensor-a", "--quantity", "25"])
        .assert()
        .failure()
        .stderr("error: no product sensor-a at this station (its product profiles: none yet)\n");
    let products = home.join("products");
    std::fs::create_dir(&products).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/products/sensor-key.toml"),
        products.join("sensor-a.toml"),
    )
    .unwrap();
    // A mistyped product is refused, naming the ones there are.
    station()
        .args(["lot", "open", "--product", "sensor-b", "--quantity", "25"])
        .assert()
        .failure()
        .stderr("error: no product sensor-b at this station (its product profiles: sensor-a)\n");
    station()
        .args(["lot", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("sensor-").not());
    station()
        .args([
            "lot",
            "open",
            "--product",
            "sensor-a",
            "--quantity",
            "25",
            "--id",
            "WO-1001",
            "--actor",
            "sup",
        ])
        .assert()
        .success()
        .stdout("opened lot WO-1001 for 25 x sensor-a\n");
    station()
        .args(["lot", "open", "--product", "sensor-a", "--quantity", "5"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("already has an open lot, WO-1001"));
    station()
        .args(["lot", "open", "--product", "sensor-a", "--quantity", "0"])
        .assert()
        .failure();
    station()
        .args(["lot", "show", "WO-1001"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("units:    0 of 25")
                .and(predicate::str::contains("first-pass yield: -")),
        );
    station()
        .args(["lot", "close", "WO-1001"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "closed lot WO-1001 with 0 of 25 units",
        ));
    station()
        .args(["lot", "close", "WO-1001"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("lot WO-1001 is already closed"));
    station()
        .args(["lot", "show", "WO-9"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no lot WO-9"));
    let out = station()
        .args(["lot", "list", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let lots: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(lots[0]["status"], "closed");
    station()
        .args(["audit", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("lot.open").and(predicate::str::contains("lot.close")));
    // Lot changes are sealed under the HSM-keyed checkpoint, not only the hash chain.
    station()
        .args(["audit", "verify"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("keyed checkpoint intact")
                .and(predicate::str::contains("hash chain only").not()),
        );
}
