//! Real peers: our framing against the PyPI `smp` package, and `smpclient` driving `unit-sim`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::TestRunner;
use station::link::frame::{Decoder, crc16_xmodem, encode_packet};
use station::link::proto::{self, EchoReq};
use station::link::smp::{Header, Message, Op};
use station_e2e::UnitSim;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's Python with `smp` and `smpclient`; fails (never skips) when it is missing.
fn python() -> PathBuf {
    let py = repo().join(".venv/bin/python");
    let ok = py.exists()
        && Command::new(&py)
            .args(["-c", "import smp, smpclient, serial"])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the PyPI peers are missing: run `python3 -m venv .venv && .venv/bin/pip install -r tests/smp/requirements.txt` \
         in the repository root (scripts/test-deps does this)"
    );
    py
}

fn message(group: u16, command: u8, seq: u8, payload: Vec<u8>) -> Vec<u8> {
    Message {
        header: Header {
            op: Op::Write,
            version: 1,
            flags: 0,
            group,
            seq,
            command,
        },
        payload,
    }
    .to_bytes()
    .unwrap()
}

#[test]
fn framing_matches_the_python_smp_package() {
    // Real messages plus arbitrary bodies of every size class (one frame, many frames).
    let mut bodies = vec![
        message(
            0,
            0,
            1,
            proto::to_cbor(&EchoReq { d: "hello".into() }).unwrap(),
        ),
        message(64, 2, 200, vec![0xa1; 370]),
        Vec::new(),
        vec![0],
    ];
    let mut runner = TestRunner::deterministic();
    let strategy = proptest::collection::vec(any::<u8>(), 0..2500);
    for _ in 0..60 {
        bodies.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    let cases: Vec<_> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| serde_json::json!({"body": hex::encode(b), "wire": hex::encode(encode_packet(b).unwrap()), "message": i < 2}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cases.json");
    std::fs::write(&input, serde_json::json!({ "cases": cases }).to_string()).unwrap();
    let out = Command::new(python())
        .arg(repo().join("tests/smp/frames.py"))
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), bodies.len());
    for (body, r) in bodies.iter().zip(results) {
        assert_eq!(
            r["encode_equal"],
            true,
            "encoding differs for {} bytes",
            body.len()
        );
        assert_eq!(
            r["decoded_equal"],
            true,
            "smp could not decode our {} bytes",
            body.len()
        );
        assert_eq!(r["crc"].as_u64().unwrap(), u64::from(crc16_xmodem(body)));
    }
    // The header fields as the Python package reads them.
    let h = &results[0]["header"];
    assert_eq!(
        (
            h["op"].as_u64(),
            h["version"].as_u64(),
            h["group"].as_u64(),
            h["seq"].as_u64(),
            h["command"].as_u64()
        ),
        (Some(2), Some(1), Some(0), Some(1), Some(0))
    );
    assert_eq!(h["length"].as_u64().unwrap() as usize, bodies[0].len() - 8);

    // And the Python package's own echo requests through our decoder and message types.
    for w in v["python_wires"].as_array().unwrap() {
        let wire = hex::decode(w["wire"].as_str().unwrap()).unwrap();
        let mut dec = Decoder::new(4096);
        let mut got = Vec::new();
        dec.push(&wire, &mut got);
        assert_eq!(got.len(), 1, "{w}");
        let m = Message::from_bytes(&got[0]).unwrap();
        assert_eq!(
            (m.header.op, m.header.group, m.header.command),
            (Op::Write, 0, 0)
        );
        assert_eq!(u64::from(m.header.seq), w["seq"].as_u64().unwrap());
        let req: EchoReq = proto::from_cbor(&m.payload).unwrap();
        assert_eq!(req.d, w["d"].as_str().unwrap());
    }
}

#[test]
fn smpclient_echoes_through_unit_sim() {
    let py = python();
    let dir = tempfile::tempdir().unwrap();
    let sim = UnitSim::start(&dir.path().join("unit"), &["--serial", "SN-PY"]);
    let text = "hello from smpclient over a pty";
    let out = Command::new(py)
        .arg(repo().join("tests/smp/echo_client.py"))
        .arg(&sim.pty)
        .arg(text)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["echo"], text);
    assert_eq!(v["buf_size"], 384);
}
