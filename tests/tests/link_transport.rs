//! Link-level behaviour against `unit-sim`: ports by path, echo, buffer limits, stale answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use station::link::frame;
use station::link::{LinkError, LinkSettings, Port as _, SerialLink, Transport, UnitClient};
use station_e2e::UnitSim;

fn settings() -> LinkSettings {
    LinkSettings {
        timeout: Duration::from_millis(400),
        retries: 2,
        ..LinkSettings::default()
    }
}

#[test]
fn port_opens_through_a_by_id_style_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let sim = UnitSim::start(&dir.path().join("unit"), &["--serial", "SN-BYID"]);
    let by_id = dir.path().join("usb-ACME_Unit_SN-BYID-if00");
    std::os::unix::fs::symlink(&sim.pty, &by_id).unwrap();
    let port = SerialLink::open(&by_id, 115_200).unwrap();
    assert_eq!(port.device(), std::fs::canonicalize(&sim.pty).unwrap());
    let mut c = UnitClient::new(Transport::new(port, settings()));
    assert_eq!(c.echo("hello unit").unwrap(), "hello unit");
    let p = c.read_params().unwrap();
    assert_eq!((p.buf_size, p.buf_count), (384, 4));
    assert_eq!(c.identify().unwrap().serial, "SN-BYID");
}

#[test]
fn missing_port_is_a_clear_error() {
    let e = SerialLink::open(
        std::path::Path::new("/dev/serial/by-id/no-such-unit"),
        115_200,
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn oversized_request_is_refused_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let sim = UnitSim::start(&dir.path().join("unit"), &[]);
    let port = SerialLink::open(&sim.pty, 115_200).unwrap();
    let mut c = UnitClient::new(Transport::new(port, settings()));
    let e = c.echo(&"x".repeat(500)).unwrap_err();
    assert!(
        matches!(
            e,
            LinkError::TooLarge {
                step: "echo",
                max: 380,
                ..
            }
        ),
        "{e}"
    );
    // The largest echo that fits goes through.
    assert_eq!(c.echo(&"y".repeat(360)).unwrap().len(), 360);
}

#[test]
fn unit_drops_oversized_packets_and_frames_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let sim = UnitSim::start(&dir.path().join("unit"), &[]);
    let mut port = SerialLink::open(&sim.pty, 115_200).unwrap();
    // A frame longer than 127 bytes, then a continuation without a start: both dropped.
    let mut junk = frame::FIRST_MARKER.to_vec();
    junk.extend(std::iter::repeat_n(b'Q', 200));
    junk.push(b'\n');
    junk.extend_from_slice(&frame::CONT_MARKER);
    junk.extend_from_slice(b"QUJD\n");
    port.write_all_bytes(&junk).unwrap();
    // Lie about the unit's buffer so the station sends a packet the unit cannot hold.
    let lying = LinkSettings {
        unit_buf_size: 4096,
        ..settings()
    };
    let mut c = UnitClient::new(Transport::new(port, lying));
    let e = c.echo(&"z".repeat(1000)).unwrap_err();
    assert!(
        matches!(
            e,
            LinkError::NoAnswer {
                step: "echo",
                attempts: 3
            }
        ),
        "{e}"
    );
    assert_eq!(c.echo("still there?").unwrap(), "still there?");
}

#[test]
fn late_answers_to_earlier_attempts_are_not_taken_for_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let sim = UnitSim::start(&dir.path().join("unit"), &["--delay-ms", "450"]);
    let port = SerialLink::open(&sim.pty, 115_200).unwrap();
    let s = LinkSettings {
        timeout: Duration::from_millis(250),
        retries: 2,
        ..LinkSettings::default()
    };
    let mut c = UnitClient::new(Transport::new(port, s));
    let e = c.echo("late").unwrap_err();
    assert!(matches!(e, LinkError::NoAnswer { .. }), "{e}");
    assert!(
        c.transport().stats().stale >= 1,
        "{:?}",
        c.transport().stats()
    );
}

#[test]
fn unknown_command_is_refused_with_enotsup() {
    use station::link::proto::{Command, Empty};
    use station::link::smp::Op;
    let dir = tempfile::tempdir().unwrap();
    let sim = UnitSim::start(&dir.path().join("unit"), &[]);
    let port = SerialLink::open(&sim.pty, 115_200).unwrap();
    let mut t = Transport::new(port, settings());
    let cmd = Command {
        group: 64,
        id: 42,
        op: Op::Read,
        name: "nonexistent",
    };
    let e = t.call::<Empty, Empty>(&cmd, &Empty {}).unwrap_err();
    assert!(
        matches!(
            e,
            LinkError::Refused {
                group: None,
                rc: 8,
                ..
            }
        ),
        "{e}"
    );
}
