//! Tests of the TPM step against real swtpm instances (one per test, so they run in parallel).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // each includer uses a different part of the fixture
#[path = "../../../fixtures/src/swtpm.rs"]
mod swtpm;

use std::path::Path;
use std::process::Command;
use std::str::FromStr as _;
use std::time::Duration;

use swtpm::Swtpm;
use tss_esapi::Context;
use tss_esapi::tcti_ldr::TctiNameConf;

use super::*;

fn start() -> Swtpm {
    // tpm2-tss logs provoked failures to stderr; run with TSS2_LOG=all+none to quiet it
    // (not set here: changing the environment of a multi-threaded test process is unsound).
    Swtpm::start().expect("starting swtpm (install swtpm, swtpm-tools, tpm2-tools)")
}

fn allow_sw() -> Policy {
    Policy {
        allow_software_tpm: true,
        ..Policy::default()
    }
}

fn trust(t: &Swtpm) -> TrustStore {
    TrustStore::load(&t.trust_dir()).unwrap()
}

fn read_default(t: &Swtpm) -> TpmRead {
    read(&t.tcti(), &ReadOptions::default()).unwrap()
}

/// sha256sum | base32 over `tpm2_readpublic -o` output: the rule computed by other tools.
fn registration_id_by_coreutils(t: &Swtpm, handle: &str) -> (Vec<u8>, String) {
    let file = t.dir().join(format!("{handle}.pub"));
    t.tpm2("readpublic", &["-c", handle, "-o", file.to_str().unwrap()])
        .unwrap();
    let script = format!(
        "sha256sum -b '{}' | cut -d' ' -f1 | xxd -r -p | base32 -w0 | tr -d = | tr A-Z a-z",
        file.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "coreutils/xxd pipeline failed");
    (
        std::fs::read(&file).unwrap(),
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
    )
}

fn transient_handles(t: &Swtpm) -> String {
    let out = t.tpm2("getcap", &["handles-transient"]).unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Replaces the contents of the NV index `index` with `data`, as a TPM maker would write it.
fn write_nv(t: &Swtpm, index: u32, data: &[u8]) {
    let idx = format!("{index:#x}");
    let _ = t.tpm2("nvundefine", &["-C", "p", &idx]);
    let file = t.dir().join("nv.bin");
    std::fs::write(&file, data).unwrap();
    let size = data.len().to_string();
    t.tpm2(
        "nvdefine",
        &[
            "-C",
            "p",
            "-s",
            &size,
            "-a",
            "ppwrite|ppread|ownerread|authread|no_da|platformcreate",
            &idx,
        ],
    )
    .unwrap();
    t.tpm2("nvwrite", &["-C", "p", "-i", file.to_str().unwrap(), &idx])
        .unwrap();
}

/// An EK certificate from the fixture's own CA, but for a freshly generated RSA key.
fn cert_for_other_key(t: &Swtpm) -> Vec<u8> {
    let key = t.dir().join("other.key");
    let ok = Command::new("openssl")
        .args(["genrsa", "-out", key.to_str().unwrap(), "2048"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "openssl genrsa failed");
    let m = Command::new("openssl")
        .args(["rsa", "-in", key.to_str().unwrap(), "-modulus", "-noout"])
        .output()
        .unwrap();
    let modulus = String::from_utf8(m.stdout).unwrap();
    let modulus = modulus.trim().trim_start_matches("Modulus=");
    let out_dir = t.dir().join("other-cert");
    std::fs::create_dir_all(&out_dir).unwrap();
    let st = Command::new("swtpm_localca")
        .args([
            "--type",
            "ek",
            "--ek",
            modulus,
            "--dir",
            out_dir.to_str().unwrap(),
        ])
        .args(["--tpm-spec-family", "2.0", "--tpm-spec-level", "0"])
        .args([
            "--tpm-spec-revision",
            "164",
            "--tpm-manufacturer",
            "id:00001014",
        ])
        .args([
            "--tpm-model",
            "swtpm",
            "--tpm-version",
            "id:20191023",
            "--tpm2",
        ])
        .arg("--configfile")
        .arg(t.localca_config())
        .arg("--optsfile")
        .arg(t.localca_options())
        .output()
        .unwrap();
    assert!(st.status.success(), "swtpm_localca failed");
    std::fs::read(out_dir.join("ek.cert")).unwrap()
}

#[test]
fn reads_and_accepts_a_swtpm_when_software_tpms_are_allowed() {
    let t = start();
    let r = read_default(&t);
    assert_eq!(r.ek_handle, 0x8101_0001);
    assert!(!r.ek_created);
    assert_eq!(r.endorsement_key.bytes().len(), 316);
    assert!(r.storage_root_key.is_none(), "swtpm_setup makes no SRK");
    assert_eq!(r.ek_certificate_index, 0x01c0_0002);
    assert_eq!(r.properties.manufacturer, "IBM");
    assert_eq!(r.properties.vendor, "SW TPM");
    assert_eq!(r.properties.nv_buffer_max, 1024);

    let a = assess(&r, allow_sw(), &trust(&t));
    assert_eq!(a.verdict, Ok(()));
    let info = a.ek_certificate.clone().unwrap();
    assert_eq!(info.issuer, "CN=swtpm-localca");
    assert_eq!(info.manufacturer.as_deref(), Some("id:00001014"));
    assert_eq!(info.model.as_deref(), Some("swtpm"));
    assert_eq!(info.version.as_deref(), Some("id:20191023"));
    assert!(a.software_tpm.is_some());
    assert!(a.warnings.iter().any(|w| w.contains("SOFTWARE TPM")));
    assert!(a.warnings.iter().any(|w| w.contains("no SRK")));

    // The registration ID and endorsement key equal what tpm2-tools and coreutils give.
    let (ek_file, expected) = registration_id_by_coreutils(&t, "0x81010001");
    assert_eq!(r.endorsement_key.bytes(), ek_file.as_slice());
    assert_eq!(a.registration_id.as_str(), expected);
    assert_eq!(expected.len(), 52);

    let att = serde_json::to_value(Assessment::attestation(&r)).unwrap();
    assert_eq!(att["type"], "tpm");
    assert_eq!(att["tpm"]["endorsementKey"], r.endorsement_key.to_base64());
    assert!(att["tpm"].get("storageRootKey").is_none());
    assert_eq!(
        transient_handles(&t).trim(),
        "",
        "no transient object may be left"
    );
}

#[test]
fn software_tpm_is_refused_by_default() {
    let t = start();
    let a = assess(&read_default(&t), Policy::default(), &trust(&t));
    let Err(Refusal::SoftwareTpm(sign)) = &a.verdict else {
        panic!("expected a software TPM refusal, got {:?}", a.verdict);
    };
    assert!(sign.contains("SW TPM"));
    assert!(
        a.verdict
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("allow_software_tpm")
    );
}

#[test]
fn reads_the_ecc_ek_and_its_p384_certificate() {
    let t = start();
    let opts = ReadOptions {
        ek_handle: swtpm::ECC_EK_HANDLE,
        ..ReadOptions::default()
    };
    let r = read(&t.tcti(), &opts).unwrap();
    assert!(matches!(
        r.endorsement_key.key(),
        PublicKey::Ecc {
            curve: public::Curve::P384,
            ..
        }
    ));
    assert_eq!(r.ek_certificate_index, swtpm::ECC_EK_CERT_INDEX);
    let a = assess(&r, allow_sw(), &trust(&t));
    assert_eq!(a.verdict, Ok(()));
    let (_, expected) = registration_id_by_coreutils(&t, "0x81010016");
    assert_eq!(a.registration_id.as_str(), expected);
}

#[test]
fn srk_is_created_with_the_azure_template_only_when_configured() {
    let t = start();
    let create = ReadOptions {
        srk: SrkPolicy::CreateIfAbsent,
        ..ReadOptions::default()
    };
    let first = read(&t.tcti(), &create).unwrap();
    assert!(first.srk_created);
    let srk = first.storage_root_key.clone().unwrap();
    assert_eq!(srk.bytes().len(), 284);
    // TPM2B size, type, nameAlg, then the attributes word.
    assert_eq!(&srk.bytes()[6..10], &0x0003_0472u32.to_be_bytes());
    assert_eq!(transient_handles(&t).trim(), "");

    let again = read(&t.tcti(), &ReadOptions::default()).unwrap();
    assert!(!again.srk_created);
    assert_eq!(again.storage_root_key, Some(srk));
    let (srk_file, _) = registration_id_by_coreutils(&t, "0x81000001");
    assert_eq!(again.storage_root_key.unwrap().bytes(), srk_file.as_slice());
}

#[test]
fn missing_ek_is_an_error_unless_creation_is_configured() {
    let t = start();
    let original = read_default(&t).endorsement_key;
    t.tpm2("evictcontrol", &["-C", "o", "-c", "0x81010001"])
        .unwrap();

    let err = read(&t.tcti(), &ReadOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            TpmError::EkAbsent {
                handle: 0x8101_0001
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("create-if-absent"));

    let create = ReadOptions {
        ek: EkPolicy::CreateIfAbsent,
        ..ReadOptions::default()
    };
    let r = read(&t.tcti(), &create).unwrap();
    assert!(r.ek_created);
    // swtpm made its EK from the same TCG template and endorsement seed: same key again.
    assert_eq!(r.endorsement_key, original);
    assert_eq!(assess(&r, allow_sw(), &trust(&t)).verdict, Ok(()));
    assert_eq!(transient_handles(&t).trim(), "");
}

#[test]
fn untrusted_ca_is_refused() {
    let t = start();
    let other = start();
    let r = read_default(&t);
    let empty = tempfile::tempdir().unwrap();
    for store in [TrustStore::load(empty.path()).unwrap(), trust(&other)] {
        let a = assess(&r, allow_sw(), &store);
        assert!(
            matches!(
                a.verdict,
                Err(Refusal::EkCertificate(EkCertProblem::Untrusted(_)))
            ),
            "{:?}",
            a.verdict
        );
    }
}

#[test]
fn trust_dir_skips_private_keys_with_a_warning() {
    let t = start();
    let dir = tempfile::tempdir().unwrap();
    for name in ["swtpm-localca-rootca-cert.pem", "issuercert.pem"] {
        std::fs::copy(t.trust_dir().join(name), dir.path().join(name)).unwrap();
    }
    std::fs::copy(
        t.localca_dir().join("signkey.pem"),
        dir.path().join("oops-signkey.pem"),
    )
    .unwrap();
    std::fs::write(dir.path().join("README"), "vendor roots go here\n").unwrap();
    let store = TrustStore::load(dir.path()).unwrap();
    assert_eq!(store.len(), 2);
    assert_eq!(store.warnings().len(), 2, "{:?}", store.warnings());
    assert!(
        store
            .warnings()
            .iter()
            .any(|w| w.contains("oops-signkey.pem"))
    );
    assert!(!store.warnings().iter().any(|w| w.contains("BEGIN")));
    assert_eq!(
        assess(&read_default(&t), allow_sw(), &store).verdict,
        Ok(())
    );
}

#[test]
fn missing_ek_certificate_is_refused_when_required() {
    let t = start();
    t.tpm2("nvundefine", &["-C", "p", "0x01c00002"]).unwrap();
    let r = read_default(&t);
    assert!(r.ek_certificate.is_none());
    let a = assess(&r, allow_sw(), &trust(&t));
    assert_eq!(a.verdict, Err(Refusal::NoEkCertificate(0x01c0_0002)));
    let lenient = Policy {
        require_ek_cert: false,
        allow_software_tpm: true,
    };
    let a = assess(&r, lenient, &trust(&t));
    assert_eq!(a.verdict, Ok(()));
    assert!(a.warnings.iter().any(|w| w.contains("no EK certificate")));
}

#[test]
fn malformed_der_in_nv_is_refused() {
    let t = start();
    write_nv(&t, 0x01c0_0002, b"\x30\x82\x03\xe8 this is not DER at all");
    let r = read_default(&t);
    let a = assess(&r, allow_sw(), &trust(&t));
    assert_eq!(
        a.verdict,
        Err(Refusal::EkCertificate(EkCertProblem::Malformed))
    );
    assert!(a.ek_certificate.is_none());
}

#[test]
fn certificate_for_another_key_is_refused() {
    let t = start();
    let cert = cert_for_other_key(&t);
    write_nv(&t, 0x01c0_0002, &cert);
    let r = read_default(&t);
    assert_eq!(r.ek_certificate.as_deref(), Some(cert.as_slice()));
    let a = assess(&r, allow_sw(), &trust(&t));
    assert_eq!(
        a.verdict,
        Err(Refusal::EkCertificate(EkCertProblem::KeyMismatch))
    );
}

#[test]
fn unreachable_tcti_is_a_clear_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let err = read(&tcti, &ReadOptions::default()).unwrap_err();
    assert!(matches!(err, TpmError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&tcti));
    let err = read("nonsense-tcti:xyz", &ReadOptions::default()).unwrap_err();
    assert!(
        matches!(err, TpmError::ParseTcti { .. } | TpmError::Connect { .. }),
        "{err:?}"
    );
}

#[test]
fn tpm_in_use_by_another_client_times_out_clearly() {
    let t = start();
    // swtpm serves one client at a time: hold its only client slot with a raw connection.
    let _holder = std::net::TcpStream::connect(("127.0.0.1", t.port())).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let opts = ReadOptions {
        timeout: Duration::from_secs(2),
        ..ReadOptions::default()
    };
    let started = std::time::Instant::now();
    let err = read(&t.tcti(), &opts).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(err, TpmError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("in use by another client"));
}

#[test]
fn nv_reads_are_chunked_and_handle_lists_paged() {
    let t = start();
    let data: Vec<u8> = (0..1500u32).map(|i| (i * 7 % 251) as u8).collect();
    write_nv(&t, 0x01c1_0000, &data);
    let mut ctx = Context::new(TctiNameConf::from_str(&t.tcti()).unwrap()).unwrap();
    let max = ctx
        .get_tpm_property(tss_esapi::constants::PropertyTag::NvBufferMax)
        .unwrap()
        .unwrap();
    assert!(
        (max as usize) < data.len(),
        "the test needs more than one chunk"
    );
    assert_eq!(read::read_nv(&mut ctx, 0x01c1_0000, max).unwrap(), data);
    // A smaller buffer than the TPM's: more chunks, same bytes.
    assert_eq!(read::read_nv(&mut ctx, 0x01c1_0000, 100).unwrap(), data);

    let all = read::list_handles(&mut ctx, 0x0100_0000).unwrap();
    let paged = read::list_handles_paged(&mut ctx, 0x0100_0000, 1).unwrap();
    assert_eq!(all, paged);
    for h in [0x01c0_0002, 0x01c0_0016, 0x01c0_8000, 0x01c1_0000] {
        assert!(all.contains(&h), "{h:#x} in {all:x?}");
    }
    let persistent = read::list_handles_paged(&mut ctx, 0x8100_0000, 1).unwrap();
    assert_eq!(persistent, vec![0x8101_0001, 0x8101_0016]);
}

#[test]
fn trust_dir_relative_to_home() {
    let t = start();
    let home = t.dir();
    let store = load_trust(Some(home), Path::new("trust")).unwrap();
    assert_eq!(store.len(), 2);
}

fn store_with_units(dir: &Path, serials: &[&str]) -> crate::store::Store {
    let store = crate::store::Store::create(
        &dir.join("station.db"),
        &crate::config::StoreConfig::default(),
    )
    .unwrap();
    for s in serials {
        store
            .conn()
            .execute(
                "INSERT INTO units (serial, product, state, created_at, updated_at)
                 VALUES (?1, 'widget', 'identified', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
                [s],
            )
            .unwrap();
    }
    store
}

fn unit_id(store: &crate::store::Store, serial: &str) -> i64 {
    store
        .conn()
        .query_row("SELECT id FROM units WHERE serial = ?1", [serial], |r| {
            r.get(0)
        })
        .unwrap()
}

#[test]
fn duplicate_ek_is_refused_naming_the_other_unit() {
    let t = start();
    let dir = tempfile::tempdir().unwrap();
    let mut store = store_with_units(dir.path(), &["SN-0001", "SN-0002"]);
    let (a, b) = (unit_id(&store, "SN-0001"), unit_id(&store, "SN-0002"));

    let ek = read_default(&t).endorsement_key;
    let tx = store.conn_mut().transaction().unwrap();
    assert_eq!(record_endorsement_key(&tx, a, &ek).unwrap(), Recorded::New);
    tx.commit().unwrap();
    // A retried run of the same unit with the same TPM is fine.
    assert_eq!(
        record_endorsement_key(store.conn(), a, &ek).unwrap(),
        Recorded::AlreadyRecorded
    );

    // The same TPM shows up on a second unit (read again from the TPM, as a fixture would).
    let again = read_default(&t).endorsement_key;
    let tx = store.conn_mut().transaction().unwrap();
    let err = record_endorsement_key(&tx, b, &again).unwrap_err();
    assert!(
        matches!(&err, EkRecordError::Duplicate { other_unit_id, other_serial } if *other_unit_id == a && other_serial == "SN-0001"),
        "{err:?}"
    );
    assert!(err.to_string().contains("SN-0001"));
    drop(tx);

    // The guard is the UNIQUE constraint itself, not only the function's lookup.
    let raw = store.conn().execute(
        "INSERT INTO tpm_endorsement_keys (unit_id, ek_sha256, ek_public, recorded_at)
         VALUES (?1, ?2, 'x', 'now')",
        rusqlite::params![b, record::ek_sha256(&again)],
    );
    assert!(raw.is_err());
    let rows: i64 = store
        .conn()
        .query_row("SELECT count(*) FROM tpm_endorsement_keys", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(rows, 1);

    // Unit A presenting a different EK (its ECC one here) is refused too.
    let other_ek = read(
        &t.tcti(),
        &ReadOptions {
            ek_handle: swtpm::ECC_EK_HANDLE,
            ..ReadOptions::default()
        },
    )
    .unwrap()
    .endorsement_key;
    let err = record_endorsement_key(store.conn(), a, &other_ek).unwrap_err();
    assert!(
        matches!(err, EkRecordError::Changed { unit_id } if unit_id == a),
        "{err:?}"
    );
}

/// Miller-Rabin with fixed bases: enough to build test keys, never used by the station.
fn probably_prime(n: &num_bigint::BigUint) -> bool {
    use num_bigint::BigUint;
    for p in [3u32, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53] {
        if (n % p) == BigUint::from(0u32) {
            return false;
        }
    }
    let one = BigUint::from(1u32);
    let n1 = n - &one;
    let s = n1.trailing_zeros().unwrap_or(0);
    let d = &n1 >> s;
    'bases: for a in [2u32, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        let mut x = BigUint::from(a).modpow(&d, n);
        if x == one || x == n1 {
            continue;
        }
        for _ in 1..s {
            x = &x * &x % n;
            if x == n1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

/// A 1024-bit prime shaped like Infineon RSALib's: `k·M + (65537^a mod M)`, with `M` the
/// product of the small primes the ROCA fingerprint tests.
fn rsalib_prime(rng: &mut impl rand::RngCore) -> num_bigint::BigUint {
    use num_bigint::BigUint;
    let m = [
        3u32, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89,
        97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
    ]
    .iter()
    .fold(BigUint::from(2u32), |acc, &p| acc * p);
    loop {
        let a = rng.next_u64() % 1_000_000 + 1;
        let base = BigUint::from(65537u32).modpow(&BigUint::from(a), &m);
        let mut k = vec![0u8; 128 - (m.bits() as usize).div_ceil(8) + 1];
        rng.fill_bytes(&mut k);
        let p = BigUint::from_bytes_be(&k) * &m + base;
        if p.bits() == 1024 && probably_prime(&p) {
            return p;
        }
    }
}

#[test]
fn roca_vulnerable_rsa_ek_is_refused() {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    let t = start();
    let mut rng = rand::rng();
    // A 2048-bit modulus exactly, as an RSA-2048 EK has.
    let (p, q) = loop {
        let (p, q) = (rsalib_prime(&mut rng), rsalib_prime(&mut rng));
        if (&p * &q).bits() == 2048 {
            break (p, q);
        }
    };
    let big = |b: &num_bigint::BigUint| rsa::BigUint::from_bytes_be(&b.to_bytes_be());
    let key = rsa::RsaPrivateKey::from_p_q(big(&p), big(&q), rsa::BigUint::from(65537u32)).unwrap();
    let pem = key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let d = t.dir();
    let file = |n: &str| d.join(n).to_str().unwrap().to_owned();
    std::fs::write(d.join("roca.pem"), pem.as_bytes()).unwrap();
    // Put the weak key where the EK lives, as a TPM with RSALib firmware would have it.
    t.tpm2("createprimary", &["-C", "o", "-c", &file("parent.ctx")])
        .unwrap();
    t.tpm2("flushcontext", &["-t"]).unwrap();
    t.tpm2(
        "import",
        &[
            "-C",
            &file("parent.ctx"),
            "-G",
            "rsa",
            "-i",
            &file("roca.pem"),
            "-u",
            &file("roca.pub"),
            "-r",
            &file("roca.priv"),
        ],
    )
    .unwrap();
    // swtpm has no resource manager: each tool leaves its objects loaded.
    t.tpm2("flushcontext", &["-t"]).unwrap();
    t.tpm2(
        "load",
        &[
            "-C",
            &file("parent.ctx"),
            "-u",
            &file("roca.pub"),
            "-r",
            &file("roca.priv"),
            "-c",
            &file("roca.ctx"),
        ],
    )
    .unwrap();
    t.tpm2("evictcontrol", &["-C", "o", "-c", "0x81010001"])
        .unwrap();
    t.tpm2(
        "evictcontrol",
        &["-C", "o", "-c", &file("roca.ctx"), "0x81010001"],
    )
    .unwrap();
    t.tpm2("flushcontext", &["-t"]).unwrap();

    let r = read_default(&t);
    let PublicKey::Rsa { modulus, .. } = r.endorsement_key.key() else {
        panic!("expected an RSA key");
    };
    assert_eq!(
        public::significant(modulus),
        (p * q).to_bytes_be().as_slice()
    );
    let a = assess(&r, allow_sw(), &trust(&t));
    assert_eq!(a.verdict, Err(Refusal::Roca));
    assert!(
        a.verdict
            .unwrap_err()
            .to_string()
            .contains("CVE-2017-15361")
    );
}
