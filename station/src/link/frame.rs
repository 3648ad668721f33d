//! SMP serial framing (the MCUmgr "console" transport Zephyr speaks on a UART).
//!
//! A packet is `len:u16be || body || crc16:u16be`, where `len` counts `body` plus the CRC and the
//! CRC is CRC-16/XMODEM (polynomial 0x1021, initial value 0, no reflection) over `body`. The packet
//! is base64-encoded and cut into frames: the first starts with `06 09`, each continuation with
//! `04 14`, each ends with `\n` and is at most [`MAX_FRAME`] bytes long. The base64 text of one
//! packet is one stream, cut on 4-character boundaries, so both the per-frame encoding Zephyr
//! uses and the cut-one-string encoding of the Python `smp` package decode the same way.
//!
//! We wrote this ourselves instead of taking `mcumgr-smp` or `mcumgr-toolkit`: both are client
//! libraries that own the port and the request loop, while we need the bare codec on both ends
//! (station and simulated unit) plus a decoder that resynchronises on garbage.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// First bytes of the first frame of a packet.
pub const FIRST_MARKER: [u8; 2] = [0x06, 0x09];
/// First bytes of every continuation frame.
pub const CONT_MARKER: [u8; 2] = [0x04, 0x14];
/// Longest frame on the wire, markers and newline included (Zephyr `MCUMGR_SERIAL_MAX_FRAME`).
pub const MAX_FRAME: usize = 127;
/// Base64 characters per frame: the largest multiple of 4 that fits beside marker and newline.
pub const B64_PER_FRAME: usize = (MAX_FRAME - 3) / 4 * 4;
/// Bytes of a packet around the body: the length field and the CRC.
pub const PACKET_OVERHEAD: usize = 4;
/// Largest body the 16-bit length field can describe.
pub const MAX_BODY: usize = u16::MAX as usize - 2;

/// CRC-16/XMODEM as SMP serial uses it (checked against the Python `smp` package in tests).
#[must_use]
pub fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Why a body cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The body does not fit the 16-bit length field.
    #[error("SMP body of {len} bytes exceeds the {max}-byte limit of the length field")]
    TooLong {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Encodes one body (an SMP message) as the bytes to write on the line.
pub fn encode_packet(body: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let len = u16::try_from(body.len() + 2)
        .ok()
        .filter(|_| body.len() <= MAX_BODY)
        .ok_or(EncodeError::TooLong {
            len: body.len(),
            max: MAX_BODY,
        })?;
    let mut raw = Vec::with_capacity(body.len() + PACKET_OVERHEAD);
    raw.extend_from_slice(&len.to_be_bytes());
    raw.extend_from_slice(body);
    raw.extend_from_slice(&crc16_xmodem(body).to_be_bytes());
    let text = B64.encode(&raw);
    let mut out = Vec::with_capacity(wire_len(body.len()));
    for (i, chunk) in text.as_bytes().chunks(B64_PER_FRAME).enumerate() {
        out.extend_from_slice(if i == 0 { &FIRST_MARKER } else { &CONT_MARKER });
        out.extend_from_slice(chunk);
        out.push(b'\n');
    }
    Ok(out)
}

/// Bytes on the wire for a body of `body_len` bytes (what [`encode_packet`] produces).
#[must_use]
pub fn wire_len(body_len: usize) -> usize {
    let b64 = (body_len + PACKET_OVERHEAD).div_ceil(3) * 4;
    b64 + b64.div_ceil(B64_PER_FRAME) * 3
}

/// Counters of what the decoder threw away; they explain a retry in the logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeStats {
    /// Bytes outside any frame (line noise, boot banners, log output).
    pub garbage_bytes: u64,
    /// Frames longer than [`MAX_FRAME`].
    pub oversized_frames: u64,
    /// Packets whose length exceeded the decoder's limit.
    pub oversized_packets: u64,
    /// Packets with a CRC mismatch.
    pub crc_errors: u64,
    /// Frames or packets that were malformed (bad base64, continuation without start, ...).
    pub malformed: u64,
    /// Packets decoded.
    pub packets: u64,
}

/// A resynchronising SMP serial decoder: feed it any bytes, in any split, and take bodies out.
///
/// It never fails: anything it cannot use is counted in [`DecodeStats`] and skipped, and the
/// next frame marker starts over. Markers cannot occur inside base64 text, so a marker found in
/// the middle of a line always begins a new frame.
pub struct Decoder {
    max_packet: usize,
    line: Vec<u8>,
    line_overflow: bool,
    prev: Option<u8>,
    /// Base64 text of the packet being assembled; `None` when waiting for a first frame.
    packet_text: Option<Vec<u8>>,
    stats: DecodeStats,
}

/// The bytes being assembled are shown by their length only: a `put_symkey` request carries a
/// unit's key.
impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("max_packet", &self.max_packet)
            .field("line_len", &self.line.len())
            .field("packet_text_len", &self.packet_text.as_ref().map(Vec::len))
            .field("stats", &self.stats)
            .finish()
    }
}

impl Decoder {
    /// A decoder accepting packets (length field + body + CRC) up to `max_packet` bytes.
    #[must_use]
    pub fn new(max_packet: usize) -> Self {
        Self {
            max_packet,
            line: Vec::with_capacity(MAX_FRAME),
            line_overflow: false,
            prev: None,
            packet_text: None,
            stats: DecodeStats::default(),
        }
    }

    /// What has been skipped so far.
    #[must_use]
    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// Forgets any partial frame or packet (after a timeout, before a retry).
    pub fn reset(&mut self) {
        self.stats.garbage_bytes += self.line.len() as u64;
        self.line.clear();
        self.line_overflow = false;
        self.prev = None;
        self.packet_text = None;
    }

    /// Feeds bytes; appends every complete body to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Vec<u8>>) {
        for &b in data {
            let prev = self.prev.replace(b);
            if let Some(p) = prev
                && ([p, b] == FIRST_MARKER || [p, b] == CONT_MARKER)
            {
                // A marker always starts a frame: whatever was in the line before was noise.
                let dropped = self.line.len().saturating_sub(1);
                self.stats.garbage_bytes += dropped as u64;
                if self.line_overflow {
                    self.stats.oversized_frames += 1;
                }
                self.line.clear();
                self.line.extend_from_slice(&[p, b]);
                self.line_overflow = false;
                continue;
            }
            if b == b'\n' {
                self.end_line(out);
                self.prev = None;
                continue;
            }
            if self.line.len() < MAX_FRAME {
                self.line.push(b);
            } else {
                self.line_overflow = true;
            }
        }
    }

    fn end_line(&mut self, out: &mut Vec<Vec<u8>>) {
        let line = std::mem::take(&mut self.line);
        let overflow = std::mem::replace(&mut self.line_overflow, false);
        // +1: the newline itself counts towards the frame limit.
        if overflow || line.len() + 1 > MAX_FRAME {
            if line.starts_with(&FIRST_MARKER) || line.starts_with(&CONT_MARKER) {
                self.stats.oversized_frames += 1;
                // A lost frame makes the rest of its packet useless.
                self.packet_text = None;
            } else {
                self.stats.garbage_bytes += line.len() as u64 + 1;
            }
            return;
        }
        let Some(marker) = line.get(..2) else {
            self.stats.garbage_bytes += line.len() as u64 + 1;
            return;
        };
        let text = line.get(2..).unwrap_or_default();
        if marker == FIRST_MARKER {
            if self.packet_text.is_some() {
                self.stats.malformed += 1;
            }
            self.packet_text = Some(text.to_vec());
        } else if marker == CONT_MARKER {
            match self.packet_text.as_mut() {
                Some(t) => t.extend_from_slice(text),
                None => {
                    self.stats.malformed += 1;
                    return;
                }
            }
        } else {
            self.stats.garbage_bytes += line.len() as u64 + 1;
            return;
        }
        self.try_finish(out);
    }

    fn try_finish(&mut self, out: &mut Vec<Vec<u8>>) {
        let Some(text) = self.packet_text.as_ref() else {
            return;
        };
        // The length field is in the first 4 base64 characters (3 bytes).
        let Some(head) = text.get(..4) else {
            return;
        };
        let Ok(head) = B64.decode(head) else {
            self.stats.malformed += 1;
            self.packet_text = None;
            return;
        };
        let (Some(&h0), Some(&h1)) = (head.first(), head.get(1)) else {
            return;
        };
        let declared = usize::from(u16::from_be_bytes([h0, h1]));
        let total = declared + 2;
        if declared < 2 || total > self.max_packet {
            if declared < 2 {
                self.stats.malformed += 1;
            } else {
                self.stats.oversized_packets += 1;
            }
            self.packet_text = None;
            return;
        }
        let needed_text = total.div_ceil(3) * 4;
        if text.len() < needed_text {
            return;
        }
        let text = self.packet_text.take().unwrap_or_default();
        if text.len() > needed_text {
            self.stats.malformed += 1;
            return;
        }
        let Ok(raw) = B64.decode(&text) else {
            self.stats.malformed += 1;
            return;
        };
        let Some(payload) = raw.get(2..total) else {
            self.stats.malformed += 1;
            return;
        };
        let (body, crc) = payload.split_at(payload.len() - 2);
        let crc = u16::from_be_bytes([crc[0], crc[1]]);
        if crc16_xmodem(body) != crc {
            self.stats.crc_errors += 1;
            return;
        }
        self.stats.packets += 1;
        out.push(body.to_vec());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn decode_all(dec: &mut Decoder, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        dec.push(data, &mut out);
        out
    }

    #[test]
    fn debug_leaves_out_the_bytes_being_assembled() {
        let wire = encode_packet(&[0xab; 40]).unwrap();
        let mut d = Decoder::new(512);
        let mut out = Vec::new();
        d.push(&wire[..wire.len() - 1], &mut out);
        assert!(out.is_empty());
        let shown = format!("{d:?}");
        assert!(shown.contains("line_len: "), "{shown}");
        // The body's base64 (0xab bytes read "q6ur"), as text or as the bytes a derived Debug
        // would list.
        let listed = format!("{:?}", b"q6ur".as_slice());
        let listed = listed.trim_matches(|c| c == '[' || c == ']');
        assert!(
            !shown.contains("q6ur") && !shown.contains(listed),
            "{shown}"
        );
    }

    #[test]
    fn crc_check_value() {
        // The CRC-16/XMODEM check value from the CRC catalogue.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
    }

    #[test]
    fn frames_respect_limit_and_markers() {
        let body: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let wire = encode_packet(&body).unwrap();
        assert_eq!(wire.len(), wire_len(body.len()));
        let frames: Vec<&[u8]> = wire.split_inclusive(|&b| b == b'\n').collect();
        assert!(frames.len() > 1);
        for (i, f) in frames.iter().enumerate() {
            assert!(f.len() <= MAX_FRAME, "frame {i} is {} bytes", f.len());
            let marker = if i == 0 { FIRST_MARKER } else { CONT_MARKER };
            assert_eq!(&f[..2], &marker);
        }
        assert_eq!(decode_all(&mut Decoder::new(2000), &wire), vec![body]);
    }

    #[test]
    fn resyncs_after_garbage_and_partial_frames() {
        let a = encode_packet(b"first").unwrap();
        let b = encode_packet(b"second").unwrap();
        let mut data = b"boot banner\r\n\x00\xff".to_vec();
        data.extend_from_slice(&a[..a.len() / 2]); // a partial frame, never finished
        data.extend_from_slice(&b);
        data.extend_from_slice(b"noise without newline");
        data.extend_from_slice(&a);
        let mut dec = Decoder::new(512);
        assert_eq!(
            decode_all(&mut dec, &data),
            vec![b"second".to_vec(), b"first".to_vec()]
        );
        assert!(dec.stats().garbage_bytes > 0);
    }

    #[test]
    fn rejects_bad_crc() {
        let mut wire = encode_packet(b"hello world").unwrap();
        // Flip one base64 character into another valid one.
        wire[5] = if wire[5] == b'A' { b'B' } else { b'A' };
        let mut dec = Decoder::new(512);
        assert!(decode_all(&mut dec, &wire).is_empty());
        assert_eq!(dec.stats().crc_errors + dec.stats().malformed, 1);
        // And the next good packet still goes through.
        assert_eq!(
            decode_all(&mut dec, &encode_packet(b"ok").unwrap()),
            vec![b"ok".to_vec()]
        );
    }

    #[test]
    fn rejects_oversized_frame_and_packet() {
        let mut line = FIRST_MARKER.to_vec();
        line.extend(std::iter::repeat_n(b'A', MAX_FRAME));
        line.push(b'\n');
        let mut dec = Decoder::new(512);
        assert!(decode_all(&mut dec, &line).is_empty());
        assert_eq!(dec.stats().oversized_frames, 1);

        let big = encode_packet(&[7u8; 600]).unwrap();
        assert!(decode_all(&mut dec, &big).is_empty());
        assert_eq!(dec.stats().oversized_packets, 1);
        assert_eq!(
            decode_all(&mut dec, &encode_packet(b"ok").unwrap()),
            vec![b"ok".to_vec()]
        );
    }

    #[test]
    fn continuation_without_start_is_dropped() {
        let wire = encode_packet(&[1u8; 300]).unwrap();
        let second = wire.iter().position(|&b| b == b'\n').unwrap() + 1;
        let mut dec = Decoder::new(512);
        assert!(decode_all(&mut dec, &wire[second..]).is_empty());
        assert!(dec.stats().malformed > 0);
    }

    proptest! {
        #[test]
        fn round_trip_any_body_any_split(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1500), 1..4),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let mut wire = Vec::new();
            for b in &bodies {
                wire.extend(encode_packet(b).unwrap());
            }
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.push(0);
            points.push(wire.len());
            points.sort_unstable();
            let mut dec = Decoder::new(4096);
            let mut out = Vec::new();
            for w in points.windows(2) {
                dec.push(&wire[w[0]..w[1]], &mut out);
            }
            prop_assert_eq!(out, bodies);
            prop_assert_eq!(dec.stats().garbage_bytes, 0);
        }

        #[test]
        fn garbage_then_packet_still_decodes(
            garbage in proptest::collection::vec(any::<u8>(), 0..300),
            body in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut data = garbage;
            // A newline ends whatever the garbage started, as a real line would.
            data.push(b'\n');
            data.extend(encode_packet(&body).unwrap());
            let mut dec = Decoder::new(4096);
            let mut out = Vec::new();
            dec.push(&data, &mut out);
            prop_assert_eq!(out.last(), Some(&body));
        }

        #[test]
        fn any_bytes_decode_the_same_however_split(
            data in proptest::collection::vec(any::<u8>(), 0..1500),
            cut in any::<prop::sample::Index>(),
        ) {
            // Mix in real frames so the decoder state machine is exercised beyond noise.
            let mut data = data;
            let at = cut.index(data.len() + 1);
            data.splice(at..at, encode_packet(&data.clone()[..at.min(200)]).unwrap());
            let mut whole = Decoder::new(1024);
            let mut a = Vec::new();
            whole.push(&data, &mut a);
            let mut parts = Decoder::new(1024);
            let mut b = Vec::new();
            let cut = cut.index(data.len() + 1);
            parts.push(&data[..cut], &mut b);
            parts.push(&data[cut..], &mut b);
            prop_assert_eq!(a, b);
            prop_assert_eq!(whole.stats(), parts.stats());
        }

        #[test]
        fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut dec = Decoder::new(1024);
            let mut out = Vec::new();
            dec.push(&data, &mut out);
        }
    }
}
