//! `scripts/bench link`: goodput of a certificate-chain transfer (`put_cert`) to `unit-sim` at a
//! simulated line speed, against the best goodput SMP serial framing allows on that line with the
//! same unit buffer. The last line is `link: goodput/theoretical=<r>`; r > 1 exits non-zero,
//! because it would mean the simulated line is faster than the wire.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use dps::ids::RegistrationId;
use station::link::frame::{PACKET_OVERHEAD, wire_len};
use station::link::smp::HEADER_LEN;
use station::link::x509::{LeafIssuer as _, check_csr};
use station::link::{LinkSettings, SerialLink, Transport, UnitClient};
use station_e2e::{SoftwareTestIssuer, UnitSim};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("numeric argument"))
}

/// Best payload rate SMP serial framing allows: over every message size up to the buffer, the
/// share of wire bytes that is payload beyond the 8-byte SMP header (CBOR overhead counted as
/// zero), times the line's byte rate. An upper bound for any protocol on this line and buffer.
fn theoretical(baud: u64, buf_size: usize) -> (f64, usize, usize) {
    let max_msg = buf_size - PACKET_OVERHEAD;
    let (mut best, mut best_m) = (0.0, HEADER_LEN + 1);
    for m in HEADER_LEN + 1..=max_msg {
        let eff = (m - HEADER_LEN) as f64 / wire_len(m) as f64;
        if eff > best {
            best = eff;
            best_m = m;
        }
    }
    (best * baud as f64 / 10.0, best_m, wire_len(best_m))
}

fn main() -> ExitCode {
    let transfers = arg("--transfers", 20);
    let baud = arg("--baud", 115_200);
    let buf_size = arg("--buf-size", 384) as usize;

    let dir = tempfile::tempdir().unwrap();
    let (baud_s, buf_s) = (baud.to_string(), buf_size.to_string());
    let sim = UnitSim::start(
        &dir.path().join("unit"),
        &[
            "--serial",
            "SN-BENCH",
            "--baud",
            &baud_s,
            "--buf-size",
            &buf_s,
        ],
    );
    let settings = LinkSettings {
        baud: u32::try_from(baud).unwrap(),
        timeout: Duration::from_secs(2),
        unit_buf_size: buf_size,
        ..LinkSettings::default()
    };
    let port = SerialLink::open(&sim.pty, settings.baud).unwrap();
    let mut unit = UnitClient::new(Transport::new(port, settings));

    // A real chain for the unit's own key: leaf, intermediate, root.
    let rid = RegistrationId::new("bench-unit-1").unwrap();
    let nonce = [0x5au8; 16];
    let csr = unit.keygen(rid.as_str(), &nonce).unwrap();
    check_csr(&csr, &rid, &nonce).unwrap();
    let chain = SoftwareTestIssuer::two_tier().issue(&csr, &rid).unwrap();
    let blob = chain.blob();

    let before = unit.transport().stats();
    let started = Instant::now();
    for _ in 0..transfers {
        unit.put_cert(&blob).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = unit.transport().stats();
    let goodput = (blob.len() as u64 * transfers) as f64 / elapsed;
    let (theory, best_m, best_wire) = theoretical(baud, buf_size);
    let ratio = goodput / theory;

    println!(
        "link: chain of {} certificates, {} bytes; unit SMP buffer {} bytes; {} baud 8N1 ({} B/s)",
        chain.chain_der.len() + 1,
        blob.len(),
        buf_size,
        baud,
        baud / 10
    );
    println!(
        "link: {} transfers in {:.3} s: goodput {:.0} B/s ({} requests, {} retries)",
        transfers,
        elapsed,
        goodput,
        stats.requests - before.requests,
        stats.retries - before.retries
    );
    let wire_out = stats.bytes_out - before.bytes_out;
    println!(
        "link: {} wire bytes sent ({:.3} payload bytes per wire byte); line busy {:.1}% of the time",
        wire_out,
        (blob.len() as u64 * transfers) as f64 / wire_out as f64,
        100.0 * wire_out as f64 * 10.0 / baud as f64 / elapsed
    );
    println!(
        "link: theoretical SMP-framing goodput {theory:.0} B/s (best message {best_m} bytes = {best_wire} wire bytes)"
    );
    println!("link: goodput/theoretical={ratio:.3}");
    if ratio > 1.0 {
        eprintln!("link: goodput above the line's limit: the wire-time simulation is broken");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
