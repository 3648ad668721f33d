//! The x509 exchange against `unit-sim` over a pseudo-terminal, clean and with every fault.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use dps::ids::RegistrationId;
use station::link::x509::{CsrProblem, X509FlowError, provision_x509};
use station::link::{IdentifyError, LinkError, LinkSettings, SerialLink, Transport, UnitClient};
use station_e2e::{SoftwareTestIssuer, UnitSim};

fn settings() -> LinkSettings {
    LinkSettings {
        timeout: Duration::from_millis(400),
        keygen_timeout: Duration::from_secs(3),
        retries: 4,
        ..LinkSettings::default()
    }
}

fn connect(sim: &UnitSim, s: LinkSettings) -> UnitClient<SerialLink> {
    let port = SerialLink::open(&sim.pty, s.baud).expect("open pty");
    UnitClient::new(Transport::new(port, s))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

fn unit_json(sim: &UnitSim) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(sim.state_dir.join("unit.json")).unwrap()).unwrap()
}

/// The unit must not end up locked (reported provisioned) after a failed exchange.
fn assert_not_provisioned(sim: &UnitSim) {
    assert_eq!(
        unit_json(sim)["locked"],
        false,
        "unit locked after a failure"
    );
}

struct Case {
    _dir: tempfile::TempDir,
    sim: UnitSim,
}

fn start(serial: &str, args: &[&str]) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["--serial", serial];
    all.extend_from_slice(args);
    let sim = UnitSim::start(&dir.path().join("unit"), &all);
    Case { _dir: dir, sim }
}

fn rid(s: &str) -> RegistrationId {
    RegistrationId::new(s).unwrap()
}

fn run(
    case: &Case,
    serial: &str,
    s: LinkSettings,
) -> (
    Result<station::link::x509::X509Provisioned, X509FlowError>,
    UnitClient<SerialLink>,
) {
    let ca = SoftwareTestIssuer::new();
    let mut c = connect(&case.sim, s);
    let r = provision_x509(&mut c, Some(serial), &rid(&format!("reg-{serial}")), &ca);
    (r, c)
}

#[test]
fn clean_exchange_provisions_and_locks() {
    let case = start("SN-OK-1", &[]);
    let (r, mut c) = run(&case, "SN-OK-1", settings());
    let p = r.unwrap();
    assert_eq!(p.serial, "SN-OK-1");
    assert!(p.subject.contains("reg-SN-OK-1"), "{}", p.subject);
    assert_eq!(p.fingerprint_sha256.len(), 64);
    let state = unit_json(&case.sim);
    assert_eq!(state["locked"], true);
    assert_eq!(
        state["cert_chain_hex"].as_str().unwrap(),
        hex::encode(p.chain.blob())
    );
    // Locked units refuse a second provisioning, and say why.
    let ca = SoftwareTestIssuer::new();
    let e = provision_x509(&mut c, Some("SN-OK-1"), &rid("reg-SN-OK-1"), &ca).unwrap_err();
    assert!(
        matches!(e, X509FlowError::Identify(IdentifyError::Locked { .. })),
        "{e}"
    );
    // keygen itself is refused once locked.
    let e = c.keygen("reg-x", &[0; 16]).unwrap_err();
    assert!(
        matches!(e, LinkError::Refused { step: "keygen", .. }),
        "{e}"
    );
}

#[test]
fn at_a_real_baud_the_exchange_takes_at_least_the_wire_time_of_its_serial_bytes() {
    // The line is full duplex and the certificate upload keeps two chunks in flight, so the
    // unit's acknowledgements may travel while the next chunk is sent: the floor of the
    // link's time counts every byte except those. `scripts/bench line` divides by this floor.
    let baud = 115_200;
    let case = start("SN-BAUD-1", &["--baud", "115200"]);
    let s = LinkSettings { baud, ..settings() };
    let t0 = std::time::Instant::now();
    let (r, c) = run(&case, "SN-BAUD-1", s);
    let elapsed = t0.elapsed();
    r.unwrap();
    let st = c.transport().stats();
    assert!(
        st.bytes_in_overlapping > 0,
        "the windowed upload overlapped nothing: {st:?}"
    );
    assert_eq!(
        st.serial_bytes(),
        st.bytes_out + st.bytes_in - st.bytes_in_overlapping
    );
    let floor = Duration::from_secs_f64(st.serial_bytes() as f64 * 10.0 / f64::from(baud));
    assert!(
        elapsed >= floor,
        "{elapsed:?} is under the wire-time floor {floor:?} of {st:?}: the floor counts bytes a full-duplex line can overlap"
    );
}

#[test]
fn state_survives_restart_and_factory_reset_unlocks() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("unit");
    {
        let sim = UnitSim::start(&state, &["--serial", "SN-RESTART"]);
        let case_ca = SoftwareTestIssuer::new();
        let mut c = connect(&sim, settings());
        provision_x509(&mut c, Some("SN-RESTART"), &rid("reg-restart"), &case_ca).unwrap();
    }
    // --serial only names new units: the stored one wins.
    let sim = UnitSim::start(&state, &["--serial", "OTHER"]);
    let mut c = connect(&sim, settings());
    let id = c.identify().unwrap();
    assert_eq!(id.serial, "SN-RESTART");
    assert!(id.locked);
    assert!(c.factory_reset("WRONG").is_err());
    c.factory_reset("SN-RESTART").unwrap();
    assert!(!c.identify().unwrap().locked);
    let ca = SoftwareTestIssuer::new();
    provision_x509(&mut c, Some("SN-RESTART"), &rid("reg-restart-2"), &ca).unwrap();
}

#[test]
fn transient_drops_end_in_success_after_retries() {
    let case = start("SN-DROP", &["--drop-rate", "0.25", "--seed", "7"]);
    let (r, c) = run(&case, "SN-DROP", settings());
    r.unwrap();
    assert!(
        c.transport().stats().timeouts > 0 || c.transport().stats().requests > 6,
        "no fault was exercised"
    );
}

#[test]
fn transient_corruption_ends_in_success_after_retries() {
    let case = start("SN-CORRUPT", &["--corrupt-rate", "0.3", "--seed", "3"]);
    let (r, c) = run(&case, "SN-CORRUPT", settings());
    r.unwrap();
    assert!(c.transport().stats().retries > 0);
    let d = c.transport().decode_stats();
    assert!(d.crc_errors + d.malformed > 0, "no corruption seen: {d:?}");
}

#[test]
fn garbage_and_partial_frames_are_skipped() {
    let case = start("SN-GARBAGE", &["--garbage", "--seed", "5"]);
    let (r, c) = run(&case, "SN-GARBAGE", settings());
    r.unwrap();
    assert!(c.transport().decode_stats().garbage_bytes > 0);
}

#[test]
fn short_delay_is_tolerated() {
    let case = start("SN-DELAY", &["--delay-ms", "100"]);
    let (r, _) = run(&case, "SN-DELAY", settings());
    r.unwrap();
}

#[test]
fn long_delay_fails_naming_the_step() {
    let case = start("SN-SLOW", &["--delay-ms", "1500"]);
    let s = LinkSettings {
        retries: 1,
        ..settings()
    };
    let (r, _) = run(&case, "SN-SLOW", s);
    let e = r.unwrap_err();
    assert!(
        chain(&e).contains("identify: no answer from the unit after 2 attempts"),
        "{}",
        chain(&e)
    );
    assert_not_provisioned(&case.sim);
}

#[test]
fn hang_fails_naming_the_step() {
    // identify and keygen are answered; the unit hangs during put_cert.
    let case = start("SN-HANG", &["--hang-after", "2"]);
    let (r, _) = run(&case, "SN-HANG", settings());
    let e = r.unwrap_err();
    assert!(chain(&e).contains("put_cert: no answer"), "{}", chain(&e));
    assert_not_provisioned(&case.sim);
}

#[test]
fn disconnect_fails_naming_the_step() {
    let mut case = start("SN-DISC", &["--disconnect-after", "2"]);
    let (r, _) = run(&case, "SN-DISC", settings());
    let e = r.unwrap_err();
    let msg = chain(&e);
    assert!(msg.starts_with("device link failed: put_cert:"), "{msg}");
    assert!(
        case.sim.wait(Duration::from_secs(5)).is_some(),
        "unit-sim did not exit"
    );
    assert_not_provisioned(&case.sim);
}

#[test]
fn wrong_key_is_caught_by_signed_readback() {
    let case = start("SN-WRONGKEY", &["--wrong-key"]);
    let (r, _) = run(&case, "SN-WRONGKEY", settings());
    let e = r.unwrap_err();
    assert!(matches!(e, X509FlowError::ReadbackKey), "{e}");
    assert!(e.to_string().starts_with("read-back:"));
    assert_not_provisioned(&case.sim);
}

#[test]
fn bad_readback_fails() {
    let case = start("SN-BADRB", &["--bad-readback"]);
    let (r, _) = run(&case, "SN-BADRB", settings());
    let e = r.unwrap_err();
    assert!(matches!(e, X509FlowError::ReadbackDigest), "{e}");
    assert_not_provisioned(&case.sim);
}

#[test]
fn rejected_cert_fails_at_put_cert() {
    let case = start("SN-REJECT", &["--reject-cert"]);
    let (r, _) = run(&case, "SN-REJECT", settings());
    let e = r.unwrap_err();
    assert!(
        matches!(
            &e,
            X509FlowError::Link(LinkError::Refused {
                step: "put_cert",
                ..
            })
        ),
        "{}",
        chain(&e)
    );
    assert_not_provisioned(&case.sim);
}

#[test]
fn replayed_csr_is_rejected() {
    let case = start("SN-REPLAY", &["--replay-csr"]);
    let mut c = connect(&case.sim, settings());
    // An earlier exchange leaves a CSR over an old nonce in the unit.
    c.keygen("reg-SN-REPLAY", &[0x11; 16]).unwrap();
    let ca = SoftwareTestIssuer::new();
    let e = provision_x509(&mut c, Some("SN-REPLAY"), &rid("reg-SN-REPLAY"), &ca).unwrap_err();
    assert!(
        matches!(e, X509FlowError::Csr(CsrProblem::OldNonce)),
        "{}",
        chain(&e)
    );
    assert!(chain(&e).contains("old nonce"));
    assert_not_provisioned(&case.sim);
}

#[test]
fn csr_without_nonce_is_rejected() {
    let case = start("SN-NONONCE", &["--csr-no-nonce"]);
    let (r, _) = run(&case, "SN-NONONCE", settings());
    let e = r.unwrap_err();
    assert!(
        matches!(e, X509FlowError::Csr(CsrProblem::NoNonce)),
        "{}",
        chain(&e)
    );
    assert_not_provisioned(&case.sim);
}

#[test]
fn csr_with_wrong_cn_is_rejected() {
    let case = start("SN-CN", &["--csr-cn", "someone-else"]);
    let (r, _) = run(&case, "SN-CN", settings());
    let e = r.unwrap_err();
    assert!(
        matches!(e, X509FlowError::Csr(CsrProblem::WrongCn { .. })),
        "{}",
        chain(&e)
    );
    assert!(chain(&e).contains("someone-else"));
    assert_not_provisioned(&case.sim);
}

#[test]
fn unit_with_another_serial_is_refused() {
    let case = start("SN-B", &[]);
    let (r, _) = run(&case, "SN-A", settings());
    let e = r.unwrap_err();
    assert!(
        matches!(&e, X509FlowError::Identify(IdentifyError::WrongUnit { found, .. }) if found == "SN-B"),
        "{e}"
    );
    assert_not_provisioned(&case.sim);
    // Nothing was generated on the wrong unit either.
    assert!(unit_json(&case.sim)["key_pem"].is_null());
}

#[test]
fn small_unit_buffer_still_works_by_chunking() {
    let case = start("SN-SMALLBUF", &["--buf-size", "128"]);
    let ca = SoftwareTestIssuer::new();
    let mut c = connect(&case.sim, settings());
    assert_eq!(c.read_params().unwrap().buf_size, 128);
    provision_x509(&mut c, Some("SN-SMALLBUF"), &rid("reg-small"), &ca).unwrap();
}

/// A serial link that counts the bytes the station writes through it.
struct Counting {
    inner: SerialLink,
    out: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl station::link::Port for Counting {
    fn write_all_bytes(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.out
            .fetch_add(data.len(), std::sync::atomic::Ordering::SeqCst);
        self.inner.write_all_bytes(data)
    }

    fn read_some(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize> {
        self.inner.read_some(buf, timeout)
    }
}

/// Identify and keygen on a counting link; the chain the test CA issues for the unit's key.
fn keyed(
    case: &Case,
    serial: &str,
) -> (
    UnitClient<Counting>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    station::link::x509::CheckedCsr,
    station::link::x509::IssuedChain,
) {
    use station::link::x509::{LeafIssuer as _, identify_for_x509, keygen_checked};
    let out = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = settings();
    let port = Counting {
        inner: SerialLink::open(&case.sim.pty, s.baud).expect("open pty"),
        out: std::sync::Arc::clone(&out),
    };
    let mut c = UnitClient::new(Transport::new(port, s));
    identify_for_x509(&mut c, Some(serial)).unwrap();
    let rid = rid(&format!("reg-{serial}"));
    let csr = keygen_checked(&mut c, &rid).unwrap();
    let chain = SoftwareTestIssuer::new().issue(&csr.csr_der, &rid).unwrap();
    (c, out, csr, chain)
}

#[test]
fn a_gated_upload_holds_the_leafs_signature_until_the_gate_opens_then_completes() {
    use std::sync::atomic::Ordering;
    let case = start("SN-GATE-1", &[]);
    let (mut c, out, csr, chain) = keyed(&case, "SN-GATE-1");
    let before = out.load(Ordering::SeqCst);
    let mut at_gate = Vec::new();
    // Never ready on its own: the station reads the unit's answers, then waits for the gate.
    station::link::x509::deliver_gated(&mut c, &chain, &csr.spki_der, &|| false, &mut || {
        at_gate.push(out.load(Ordering::SeqCst) - before);
        // Nothing more may be sent while the gate is shut.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(out.load(Ordering::SeqCst) - before, at_gate[0]);
        Ok(())
    })
    .unwrap();
    let upload = out.load(Ordering::SeqCst) - before;
    assert_eq!(at_gate.len(), 1, "the gate is waited for exactly once");
    // The first chunk (within the leaf's to-be-signed part) went ahead; most of the chain,
    // the leaf's signature with it, waited.
    assert!(
        at_gate[0] > 0 && at_gate[0] * 2 < upload,
        "{} of {upload} bytes sent before the gate opened",
        at_gate[0]
    );
    assert_eq!(
        unit_json(&case.sim)["cert_chain_hex"].as_str().unwrap(),
        hex::encode(chain.blob())
    );
}

#[test]
fn a_gate_that_fails_stops_the_upload_before_the_leafs_signature() {
    let case = start("SN-GATE-2", &[]);
    let (mut c, _, csr, issued) = keyed(&case, "SN-GATE-2");
    let e =
        station::link::x509::deliver_gated(&mut c, &issued, &csr.spki_der, &|| false, &mut || {
            Err("disk I/O error".into())
        })
        .unwrap_err();
    assert!(
        matches!(&e, X509FlowError::Link(LinkError::Held { step: "put_cert", reason }) if reason == "disk I/O error"),
        "{}",
        chain(&e)
    );
    assert!(
        chain(&e).contains("put_cert: stopped before the rest was sent: disk I/O error"),
        "{}",
        chain(&e)
    );
    assert!(
        unit_json(&case.sim)["cert_chain_hex"].is_null(),
        "the unit holds a chain"
    );
    assert_not_provisioned(&case.sim);
}

#[test]
fn the_gate_costs_no_extra_chunk_on_the_wire() {
    use std::sync::atomic::Ordering;
    let case = start("SN-GATE-3", &[]);
    let (mut c, out, _, chain) = keyed(&case, "SN-GATE-3");
    let blob = chain.blob();
    // Each upload starts over at offset 0: the same chain, plain and then gated at one place
    // after another within the first chunk (open at once, so only the chunking differs).
    let before = out.load(Ordering::SeqCst);
    c.put_cert(&blob).unwrap();
    let plain = out.load(Ordering::SeqCst) - before;
    for at in (20..=320).step_by(60) {
        let before = out.load(Ordering::SeqCst);
        let mut waits = 0;
        c.put_cert_gated(
            &blob,
            station::link::Gate {
                at,
                ready: &|| true,
                wait: &mut || {
                    waits += 1;
                    Ok(())
                },
            },
        )
        .unwrap();
        let gated = out.load(Ordering::SeqCst) - before;
        assert_eq!(waits, 1, "gate at {at}");
        // A chunk more would add its frame and request header (~40 bytes and up); moving a
        // chunk boundary changes a length field or a base64 pad at most.
        assert!(
            gated <= plain + 8,
            "gate at {at}: {gated} bytes against {plain} without the gate"
        );
        assert_eq!(
            unit_json(&case.sim)["cert_chain_hex"].as_str().unwrap(),
            hex::encode(&blob)
        );
    }
}
