//! Fuzz the SMP serial decoder: it must never panic, must give the same bodies however the
//! input is split across reads, and every body it yields must survive a re-encode round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use station::link::frame::{Decoder, encode_packet};
use station::link::smp::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut whole = Decoder::new(1024);
    let mut a = Vec::new();
    whole.push(rest, &mut a);

    let cut = usize::from(split) * rest.len() / 255;
    let mut parts = Decoder::new(1024);
    let mut b = Vec::new();
    parts.push(&rest[..cut], &mut b);
    parts.push(&rest[cut..], &mut b);
    assert_eq!(a, b, "split at {cut} changed the result");

    for body in &a {
        let _ = Message::from_bytes(body);
        let wire = encode_packet(body).expect("decoded bodies fit the length field");
        let mut again = Decoder::new(1024);
        let mut c = Vec::new();
        again.push(&wire, &mut c);
        assert_eq!(c, vec![body.clone()]);
    }
});
