//! The official Azure DPS Node service client (azure-iot-provisioning-service 1.11.2)
//! against `dps serve`. Needs Node and `npm ci` in tests/interop; fails (never skips)
//! without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{Service, cert_pem};

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("interop")
}

#[test]
fn official_node_service_client_works_against_the_local_service() {
    let dir = interop_dir();
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        node_ok,
        "Node.js is missing: install nodejs (Debian package `nodejs`, Node 18 or 20)"
    );
    assert!(
        dir.join("node_modules/azure-iot-provisioning-service/package.json")
            .exists(),
        "the pinned npm packages are missing: run `cd tests/interop && npm ci`"
    );
    let svc = Service::start(&["--link-hub", "hub-a.example.test"]);
    let tmp = tempfile::tempdir().unwrap();
    let leaf = tmp.path().join("leaf.pem");
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&leaf, cert_pem("interop-x509-1", false)).unwrap();
    std::fs::write(&ca, cert_pem("Interop CA", true)).unwrap();
    let cs = std::fs::read_to_string(svc.dir.join("connection-string")).unwrap();
    let out = Command::new("node")
        .arg(dir.join("service-client.js"))
        .current_dir(&dir)
        .env("DPS_CONNECTION_STRING", cs.trim())
        .env("DPS_CA_FILE", svc.dir.join("ca.pem"))
        .env("DPS_X509_LEAF_PEM", &leaf)
        .env("DPS_X509_CA_PEM", &ca)
        .env("DPS_HUB", "hub-a.example.test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "node failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("interop: ok"), "{stdout}\n{stderr}");
    // Cross-check from our side: what the Node client wrote is there.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let all = rt.block_on(svc.client().list_enrollments(100)).unwrap();
    assert_eq!(all.len(), 25);
    let groups = rt.block_on(svc.client().list_groups(100)).unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].enrollment_group_id.as_str(), "interop-grp-sym");
}
