//! `station group sync|show` against a real local DPS over TLS (in this process) and the real
//! SoftHSM token that `station init` makes. The station runs as its own binary; this process
//! opens the same token (through the station library) to check what the commands left there.
//! One test function: SoftHSM reads its configuration once per process, so one home per process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use dps::client::{ClientOptions, RetryPolicy, ServiceClient};
use dps::server::{ServeOptions, Server};
use secrecy::{ExposeSecret, SecretString};

use common::{ok, run};

const SYM: &str = r#"
model = "SY-10"
serial_pattern = "SY-[0-9]{6}"
dps_target = "local"
attestation = { kind = "symmetric-group" }
enrollment = { kind = "group", group_id = "sy-10-fleet" }
registration_id = "sy-{serial}"
reprovision = "reset"

[allocation]
policy = "hashed"

[initial_twin.tags]
family = "SY-10"
product = "{product}"
model = "{model}"
made_by = "{station}"
serial = "{serial}"
"#;

const X509: &str = r#"
model = "SX-100"
serial_pattern = "SX-[0-9]{6}"
dps_target = "local"
attestation = { kind = "x509-link" }
enrollment = { kind = "group", group_id = "sx-fleet" }
iot_edge = true

[initial_twin.desired]
interval_s = 60
"#;

/// An owner client of the local service with fast retries.
fn dps_client(dir: &dps::server::setup::DataDir) -> ServiceClient {
    let cs = std::fs::read_to_string(dir.connection_string())
        .unwrap()
        .parse()
        .unwrap();
    ServiceClient::new(
        cs,
        ClientOptions {
            extra_ca_file: Some(dir.ca_pem()),
            retry: RetryPolicy {
                max_attempts: 2,
                min_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(100),
                default_retry_after: Duration::from_millis(50),
            },
            ..ClientOptions::default()
        },
    )
    .unwrap()
}

fn pem_ders(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let b64: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    B64.decode(b64).unwrap()
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.trim_start().starts_with(key))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{out}"))
        .trim()
}

#[test]
fn groups_are_created_kept_updated_and_their_keys_live_only_in_the_hsm() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("H");
    ok(&home, &["init", "--actor", "tester"]);

    // The local DPS, in this process, over TLS.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(Server::bind(ServeOptions {
            data: tmp.path().join("dps"),
            listen: "127.0.0.1:0".parse().unwrap(),
            mqtt_listen: None,
            link_hubs: vec![],
            ops_per_min: None,
            fail_rate: 0.0,
            latency: Duration::ZERO,
            faults: Default::default(),
        }))
        .unwrap();
    let files = server.data_dir().clone();
    let scope = server.id_scope().to_owned();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(server.run_until(async {
        let _ = stop_rx.await;
    }));
    std::fs::write(
        home.join("config.d").join("50-dps.toml"),
        format!(
            "[station]\nid = \"line-7\"\n\n[dps.targets.local]\nconnection_string_file = {:?}\nid_scope = {scope:?}\nca_file = {:?}\n",
            files.connection_string(),
            files.ca_pem()
        ),
    )
    .unwrap();
    let products = home.join("products");
    std::fs::create_dir(&products).unwrap();
    std::fs::write(products.join("sensor-sym.toml"), SYM).unwrap();
    std::fs::write(products.join("sensor-x509g.toml"), X509).unwrap();
    // An individually enrolled product is not touched by a sync of all products.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/products/sensor-tpm.toml"),
        products.join("sensor-tpm.toml"),
    )
    .unwrap();

    // Before the first sync: absent in DPS, no key in the HSM.
    let shown = ok(&home, &["group", "show", "--product", "sensor-sym"]);
    assert!(
        shown.contains("absent (run `station group sync`)"),
        "{shown}"
    );
    assert!(line(&shown, "hsm key:").contains("absent"), "{shown}");

    // First sync: both groups created, the symmetric key imported.
    let first = ok(&home, &["group", "sync", "--actor", "tester"]);
    assert!(
        first.contains("group sy-10-fleet (product sensor-sym, target local): created"),
        "{first}"
    );
    assert!(
        first.contains("group sx-fleet (product sensor-x509g, target local): created"),
        "{first}"
    );
    assert!(!first.contains("sensor-tpm"), "{first}");
    assert_eq!(first.matches("hsm key:     imported").count(), 1, "{first}");
    assert_eq!(first.matches("hsm key:     not used").count(), 1, "{first}");

    let client = dps_client(&files);
    let sym_id: dps::EnrollmentGroupId = "sy-10-fleet".parse().unwrap();
    let x_id: dps::EnrollmentGroupId = "sx-fleet".parse().unwrap();
    let sym = rt.block_on(client.get_group(&sym_id)).unwrap();
    let etag1 = sym.etag.clone().unwrap();
    assert!(first.contains(&format!("etag:        {etag1}")), "{first}");
    assert_eq!(
        sym.attestation.kind,
        dps::wire::AttestationType::SymmetricKey
    );
    // Product-level placeholders rendered; per-unit ones empty.
    let tags = sym.initial_twin.as_ref().unwrap().tags.clone().unwrap();
    assert_eq!(tags["product"], "sensor-sym");
    assert_eq!(tags["model"], "SY-10");
    assert_eq!(tags["made_by"], "line-7");
    assert_eq!(tags["serial"], "");
    assert_eq!(
        sym.reprovision_policy.unwrap(),
        dps::wire::ReprovisionPolicy {
            update_hub_assignment: true,
            migrate_device_data: false
        }
    );
    // The x509 group's signing certificate is the station's issuing CA.
    let xg = rt.block_on(client.get_group(&x_id)).unwrap();
    let info = xg
        .attestation
        .x509
        .unwrap()
        .signing_certificates
        .unwrap()
        .primary
        .unwrap()
        .info
        .unwrap();
    use sha2::Digest as _;
    let ca_der = pem_ders(&home.join("ca").join("intermediate.pem"));
    assert_eq!(
        info.sha256_thumbprint,
        hex::encode_upper(sha2::Sha256::digest(&ca_der))
    );
    assert!(xg.capabilities.unwrap().iot_edge);

    // The key DPS generated, read the way the field SDKs' operators would.
    let att = rt.block_on(client.group_attestation(&sym_id)).unwrap();
    let group_key = att
        .symmetric_key
        .unwrap()
        .primary_key
        .unwrap()
        .expose()
        .to_owned();

    // Derivation in the HSM equals DPS's rule over the key DPS holds.
    {
        let loaded = station::config::Config::load(&station::home::Home::new(&home)).unwrap();
        let h = station::home::Home::new(&home);
        let hsm = station::ca::service::open_hsm(&h, &loaded.config).unwrap();
        let s = station::ca::service::open_ca_token(&hsm, &h, &loaded.config).unwrap();
        let gk = dps::sas::SharedAccessKey::from_base64(&group_key).unwrap();
        for rid in ["sy-SY-000001", "sy-SY-000002"] {
            let k = station::keys::derive_device_key(&s, "sy-10-fleet", rid).unwrap();
            assert_eq!(
                k.to_base64().expose_secret(),
                dps::sas::derive_device_key(&gk, rid)
                    .to_base64()
                    .expose_secret()
            );
        }
        let handle = s
            .find_secret_key(&station::keys::group_key_label("sy-10-fleet"))
            .unwrap();
        let p = s.object_protection(handle, "group").unwrap();
        assert_eq!((p.sensitive, p.extractable), (Some(true), Some(false)));
        assert!(!s.secret_value_readable(handle));
    }

    // Second sync: nothing changes, in DPS or the HSM.
    let second = ok(&home, &["group", "sync", "--actor", "tester"]);
    assert!(
        second.contains("sy-10-fleet (product sensor-sym, target local): unchanged"),
        "{second}"
    );
    assert!(
        second.contains("sx-fleet (product sensor-x509g, target local): unchanged"),
        "{second}"
    );
    assert!(second.contains("hsm key:     present"), "{second}");
    assert_eq!(
        rt.block_on(client.get_group(&sym_id))
            .unwrap()
            .etag
            .unwrap(),
        etag1
    );

    // A profile change updates the group, keeping DPS's keys.
    std::fs::write(
        products.join("sensor-sym.toml"),
        SYM.replace("reprovision = \"reset\"", "reprovision = \"never\"")
            .replace("family = \"SY-10\"", "family = \"SY-10b\""),
    )
    .unwrap();
    let third = ok(
        &home,
        &[
            "group",
            "sync",
            "--product",
            "sensor-sym",
            "--actor",
            "tester",
        ],
    );
    assert!(
        third.contains("sy-10-fleet (product sensor-sym, target local): updated (initialTwin, reprovisionPolicy)"),
        "{third}"
    );
    assert!(!third.contains("sx-fleet"), "{third}");
    let after = rt.block_on(client.get_group(&sym_id)).unwrap();
    assert_ne!(after.etag.as_deref(), Some(etag1.as_str()));
    assert_eq!(
        after.initial_twin.unwrap().tags.unwrap()["family"],
        "SY-10b"
    );
    assert!(!after.reprovision_policy.unwrap().update_hub_assignment);
    let att2 = rt.block_on(client.group_attestation(&sym_id)).unwrap();
    assert_eq!(
        att2.symmetric_key.unwrap().primary_key.unwrap().expose(),
        group_key,
        "an update must keep the group key DPS generated"
    );
    assert!(third.contains("hsm key:     present"), "{third}");
    let shown = ok(&home, &["group", "show", "--product", "sensor-sym"]);
    assert!(shown.contains("profile:     in step"), "{shown}");
    assert!(line(&shown, "hsm key:").contains("present"), "{shown}");
    assert!(
        shown.contains(&format!("etag:        {}", after.etag.unwrap())),
        "{shown}"
    );

    // A different key under the group's label is refused, not overwritten.
    let other = B64.encode([0x5au8; 32]);
    {
        let h = station::home::Home::new(&home);
        let loaded = station::config::Config::load(&h).unwrap();
        let hsm = station::ca::service::open_hsm(&h, &loaded.config).unwrap();
        let s = station::ca::service::open_ca_token(&hsm, &h, &loaded.config).unwrap();
        assert_eq!(
            s.destroy_labelled(&station::keys::group_key_label("sy-10-fleet"))
                .unwrap(),
            1
        );
        station::keys::import_group_key(&s, "sy-10-fleet", &SecretString::from(other.clone()))
            .unwrap();
    }
    let (good, out, err) = run(
        &home,
        &[
            "group",
            "sync",
            "--product",
            "sensor-sym",
            "--actor",
            "tester",
        ],
    );
    assert!(
        !good,
        "a sync over a different key must fail:\n{out}\n{err}"
    );
    assert!(out.contains("hsm key:     refused"), "{out}");
    assert!(err.contains("different key"), "{err}");

    // The audit log has every sync, without secrets.
    let audit = ok(&home, &["audit", "list", "--json"]);
    assert_eq!(
        audit.matches("\"group.sync\"").count(),
        2 + 2 + 1 + 1,
        "{audit}"
    );
    ok(&home, &["audit", "verify"]);

    // No key material anywhere in the home (database, logs, configuration, token files),
    // nor in what the commands printed.
    let raw = B64.decode(&group_key).unwrap();
    let printed = format!("{first}{second}{third}{shown}{out}{err}{audit}");
    assert!(!printed.contains(&group_key));
    for f in common::walk(&home) {
        let bytes = std::fs::read(&f).unwrap();
        for needle in [
            group_key.as_bytes(),
            &raw[..],
            other.as_bytes(),
            &[0x5au8; 32][..],
        ] {
            assert!(
                !common::contains(&bytes, needle),
                "key material in {}",
                f.display()
            );
        }
    }

    stop_tx.send(()).unwrap();
    rt.block_on(task).unwrap();
}
