//! Benchmark of the station's TPM step per unit against the raw tss-esapi calls it needs
//! (ReadPublic of the EK + NV read of its certificate), in the same run against one swtpm.
//! Run by `scripts/bench tpm`; prints figures, then `tpm: station/raw=<r>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // each includer uses a different part of the fixture
#[path = "../../fixtures/src/swtpm.rs"]
mod swtpm;

use std::str::FromStr as _;
use std::time::{Duration, Instant};

use station::tpm::{self, Policy, ReadOptions, TrustStore};
use tss_esapi::Context;
use tss_esapi::handles::{KeyHandle, NvIndexTpmHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::PublicBuffer;
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall as _;

/// The least a unit's TPM read takes: connect, ReadPublic of the EK, read the EK certificate.
fn raw(tcti: &str) -> (Vec<u8>, Vec<u8>) {
    let mut ctx = Context::new(TctiNameConf::from_str(tcti).unwrap()).unwrap();
    let ek = TpmHandle::Persistent(PersistentTpmHandle::new(0x8101_0001).unwrap());
    let mut obj = ctx.tr_from_tpm_public(ek).unwrap();
    let (public, _, _) = ctx.read_public(KeyHandle::from(obj)).unwrap();
    ctx.tr_close(&mut obj).unwrap();
    let ek_bytes = PublicBuffer::try_from(public).unwrap().marshall().unwrap();

    let nv = TpmHandle::NvIndex(NvIndexTpmHandle::new(0x01c0_0002).unwrap());
    let mut nv_obj = ctx.tr_from_tpm_public(nv).unwrap();
    let (nv_public, _) = ctx.nv_read_public(nv_obj.into()).unwrap();
    let size = nv_public.data_size();
    let mut cert = Vec::with_capacity(size);
    while cert.len() < size {
        // 1024 bytes: the smallest NV buffer a TPM may have, and swtpm's.
        let n = (size - cert.len()).min(1024) as u16;
        let part = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.nv_read(
                    NvAuth::NvIndex(nv_obj.into()),
                    nv_obj.into(),
                    n,
                    cert.len() as u16,
                )
            })
            .unwrap();
        cert.extend_from_slice(&part);
    }
    ctx.tr_close(&mut nv_obj).unwrap();
    (ek_bytes, cert)
}

fn main() {
    let units: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let t = swtpm::Swtpm::start().expect("starting swtpm (install swtpm, swtpm-tools, tpm2-tools)");
    let tcti = t.tcti();
    let trust = TrustStore::load(&t.trust_dir()).unwrap();
    let opts = ReadOptions::default();
    let policy = Policy {
        allow_software_tpm: true,
        ..Policy::default()
    };
    // Both paths must read the same bytes, or the comparison is meaningless.
    let (r, a) = tpm::read_and_assess(&tcti, &opts, policy, &trust).unwrap();
    assert_eq!(a.verdict, Ok(()));
    let (ek, cert) = raw(&tcti);
    assert_eq!(r.endorsement_key.bytes(), ek.as_slice());
    assert_eq!(r.ek_certificate.as_deref(), Some(cert.as_slice()));

    // Interleaved unit by unit, so drift of the machine hits both alike.
    let (mut station_total, mut raw_total) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..units {
        let s = Instant::now();
        let (_, a) = tpm::read_and_assess(&tcti, &opts, policy, &trust).unwrap();
        station_total += s.elapsed();
        assert!(a.verdict.is_ok());
        let s = Instant::now();
        std::hint::black_box(raw(&tcti));
        raw_total += s.elapsed();
    }
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / units as f64;
    println!(
        "station TPM step (connect, EK, SRK, EK cert, chain, ROCA, registration ID): {:.2} ms/unit, {:.0} units/s",
        per(station_total),
        units as f64 / station_total.as_secs_f64()
    );
    println!(
        "raw tss-esapi (connect, ReadPublic EK, NV read EK cert):                    {:.2} ms/unit, {:.0} units/s",
        per(raw_total),
        units as f64 / raw_total.as_secs_f64()
    );
    println!("units: {units} against one swtpm");
    if std::env::var_os("BENCH_TPM_DETAIL").is_some() {
        let s = Instant::now();
        for _ in 0..units {
            drop(Context::new(TctiNameConf::from_str(&tcti).unwrap()).unwrap());
        }
        println!("detail: connect+close {:.3} ms", per(s.elapsed()));
        let s = Instant::now();
        for _ in 0..units {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || tx.send(1u8));
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        println!("detail: thread round trip {:.3} ms", per(s.elapsed()));
        let (jtx, jrx) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<u8>>();
        std::thread::spawn(move || {
            while let Ok(reply) = jrx.recv() {
                let _ = reply.send(1);
            }
        });
        let s = Instant::now();
        for _ in 0..units {
            let (tx, rx) = std::sync::mpsc::channel();
            jtx.send(tx).unwrap();
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        println!("detail: worker round trip {:.3} ms", per(s.elapsed()));
        let mut ctx = Context::new(TctiNameConf::from_str(&tcti).unwrap()).unwrap();
        let s = Instant::now();
        for _ in 0..units {
            ctx.get_capability(
                tss_esapi::constants::CapabilityType::Handles,
                0x8100_0000,
                64,
            )
            .unwrap();
        }
        println!("detail: one command {:.3} ms", per(s.elapsed()));
        drop(ctx);
        let s = Instant::now();
        for _ in 0..units {
            std::hint::black_box(tpm::read(&tcti, &opts).unwrap());
        }
        println!("detail: read only {:.3} ms", per(s.elapsed()));
        let s = Instant::now();
        for _ in 0..units {
            std::hint::black_box(raw(&tcti));
        }
        println!("detail: raw again {:.3} ms", per(s.elapsed()));
        let (r, _) = tpm::read_and_assess(&tcti, &opts, policy, &trust).unwrap();
        let s = Instant::now();
        for _ in 0..units {
            std::hint::black_box(tpm::assess(&r, policy, &trust));
        }
        println!("detail: assess {:.3} ms", per(s.elapsed()));
    }
    println!(
        "tpm: station/raw={:.2}",
        station_total.as_secs_f64() / raw_total.as_secs_f64()
    );
}
