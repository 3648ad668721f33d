//! The provisioning command group, station side: one method per command.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::debug;

use super::port::Port;
use super::proto::{
    self, Bytes, CertDigestReq, CertDigestRsp, EchoReq, EchoRsp, Empty, FactoryResetReq,
    IdentifyRsp, KeygenReq, KeygenRsp, ParamsRsp, ProveReq, ProveRsp, PutCertReq, PutCertRsp,
    PutSymkeyReq,
};
use super::smp::HEADER_LEN;
use super::transport::{LinkError, Transport, decode_answer};

/// Why a unit on the fixture may not be provisioned, whatever its exchange.
#[derive(Debug, thiserror::Error)]
pub enum IdentifyError {
    /// The `identify` command failed.
    #[error("device link failed")]
    Link(#[from] LinkError),
    /// The unit answered with another serial than the one scanned.
    #[error("identify: the unit answered serial {found:?}, expected {expected:?}")]
    WrongUnit {
        /// Scanned.
        expected: String,
        /// Answered.
        found: String,
    },
    /// The unit is already locked.
    #[error("identify: unit {serial} is locked; factory-reset it first")]
    Locked {
        /// Serial.
        serial: String,
    },
}

/// A condition the bytes of a `put_cert` blob past `at` wait for (the leaf's signature waits
/// until the certificate's record is on disk). While the unit still owes answers for chunks
/// before `at`, the station keeps reading them and asks `ready` between reads; once none is
/// owed it calls `wait`, timed as the station's own work, not the link's.
pub struct Gate<'a> {
    /// Bytes `..at` go at once.
    pub at: usize,
    /// Whether the condition holds (does not block).
    pub ready: &'a dyn Fn() -> bool,
    /// Blocks until the condition holds; called exactly once, before the first byte past
    /// `at` is sent. An error stops the upload with [`LinkError::Held`].
    pub wait: &'a mut dyn FnMut() -> Result<(), String>,
}

/// How long one read for a chunk's answer lasts while a gate is shut: the gate is asked again
/// after each.
const GATE_POLL: Duration = Duration::from_micros(200);

/// A unit on the other end of a link.
pub struct UnitClient<P: Port> {
    transport: Transport<P>,
}

impl<P: Port> UnitClient<P> {
    /// Wraps a transport.
    pub fn new(transport: Transport<P>) -> Self {
        Self { transport }
    }

    /// The transport, for its counters.
    #[must_use]
    pub fn transport(&self) -> &Transport<P> {
        &self.transport
    }

    /// OS echo: the link check.
    pub fn echo(&mut self, text: &str) -> Result<String, LinkError> {
        let rsp: EchoRsp = self
            .transport
            .call(&proto::ECHO, &EchoReq { d: text.to_owned() })?;
        Ok(rsp.r)
    }

    /// Reads the unit's MCUmgr parameters and sizes requests to its buffer.
    pub fn read_params(&mut self) -> Result<ParamsRsp, LinkError> {
        let rsp: ParamsRsp = self.transport.call(&proto::PARAMS, &Empty {})?;
        self.transport.set_unit_buf_size(rsp.buf_size as usize);
        Ok(rsp)
    }

    /// `identify`.
    pub fn identify(&mut self) -> Result<IdentifyRsp, LinkError> {
        self.transport.call(&proto::IDENTIFY, &Empty {})
    }

    /// `identify`, then the checks every exchange starts with: the unit is the one scanned
    /// (when a serial was scanned) and is not locked.
    pub fn identify_unlocked(
        &mut self,
        expected_serial: Option<&str>,
    ) -> Result<IdentifyRsp, IdentifyError> {
        let id = self.identify()?;
        if let Some(expected) = expected_serial
            && id.serial != expected
        {
            return Err(IdentifyError::WrongUnit {
                expected: expected.to_owned(),
                found: id.serial,
            });
        }
        if id.locked {
            return Err(IdentifyError::Locked { serial: id.serial });
        }
        Ok(id)
    }

    /// `keygen`: the unit makes a key and returns a DER CSR for `rid` over `nonce`.
    pub fn keygen(&mut self, rid: &str, nonce: &[u8]) -> Result<Vec<u8>, LinkError> {
        let rsp: KeygenRsp = self.transport.call(
            &proto::KEYGEN,
            &KeygenReq {
                rid: rid.to_owned(),
                nonce: Bytes(nonce.to_vec()),
            },
        )?;
        Ok(rsp.csr.0)
    }

    /// `get_cert_digest`.
    pub fn get_cert_digest(&mut self, nonce: &[u8]) -> Result<CertDigestRsp, LinkError> {
        self.transport.call(
            &proto::GET_CERT_DIGEST,
            &CertDigestReq {
                nonce: Bytes(nonce.to_vec()),
            },
        )
    }

    /// `put_symkey`.
    pub fn put_symkey(&mut self, req: &PutSymkeyReq) -> Result<(), LinkError> {
        let _: Empty = self.transport.call(&proto::PUT_SYMKEY, req)?;
        Ok(())
    }

    /// `prove`: the HMAC of `nonce` with the injected key.
    pub fn prove(&mut self, nonce: &[u8]) -> Result<Vec<u8>, LinkError> {
        let rsp: ProveRsp = self.transport.call(
            &proto::PROVE,
            &ProveReq {
                nonce: Bytes(nonce.to_vec()),
            },
        )?;
        Ok(rsp.mac.0)
    }

    /// `lock`.
    pub fn lock(&mut self) -> Result<(), LinkError> {
        let _: Empty = self.transport.call(&proto::LOCK, &Empty {})?;
        Ok(())
    }

    /// `factory_reset`, confirmed with the unit's serial.
    pub fn factory_reset(&mut self, serial: &str) -> Result<(), LinkError> {
        let _: Empty = self.transport.call(
            &proto::FACTORY_RESET,
            &FactoryResetReq {
                serial: serial.to_owned(),
            },
        )?;
        Ok(())
    }

    /// The `data` size for `put_cert` chunks: within the unit's buffer, and among the sizes that
    /// fit, the one carrying the most data per wire byte (a message that exactly fills its last
    /// frame beats a slightly longer one that starts a new frame).
    fn chunk_capacity(&self, first: bool) -> Result<usize, LinkError> {
        let probe = PutCertReq {
            off: u32::MAX,
            data: Bytes(Vec::new()),
            len: first.then_some(u32::MAX),
        };
        let empty = proto::to_cbor(&probe)
            .map_err(|source| LinkError::Encode {
                step: proto::PUT_CERT.name,
                source,
            })?
            .len();
        // CBOR byte-string heads grow from 1 byte (< 24) to 2 (< 256) to 3 (< 65536).
        let message_len = |d: usize| {
            let head_growth = match d {
                0..24 => 0,
                24..256 => 1,
                _ => 2,
            };
            HEADER_LEN + empty + head_growth + d
        };
        let max = self.transport.settings().max_message();
        let Some(cap) = (0..=max).rev().find(|&d| d > 0 && message_len(d) <= max) else {
            return Err(LinkError::TooLarge {
                step: proto::PUT_CERT.name,
                size: message_len(1),
                max,
            });
        };
        let lowest = cap.saturating_sub(super::frame::B64_PER_FRAME).max(1);
        let efficiency = |d: usize| d as f64 / super::frame::wire_len(message_len(d)) as f64;
        let best = (lowest..=cap).rev().fold(cap, |best, d| {
            if efficiency(d) > efficiency(best) {
                d
            } else {
                best
            }
        });
        Ok(best)
    }

    /// `put_cert`: writes `blob` (the DER chain, leaf first) in chunks, keeping up to
    /// `window` requests in flight. The unit answers each chunk with the next offset it expects;
    /// a lost chunk shows as an offset that did not advance, and sending resumes from there.
    pub fn put_cert(&mut self, blob: &[u8]) -> Result<(), LinkError> {
        crate::timing::hardware(|| self.put_cert_windowed(blob, None))
    }

    /// `put_cert` whose bytes past `gate.at` wait for the gate (see [`Gate`]): the first
    /// chunks travel, and the unit works on them, while the condition comes true.
    pub fn put_cert_gated(&mut self, blob: &[u8], gate: Gate<'_>) -> Result<(), LinkError> {
        crate::timing::hardware(|| self.put_cert_windowed(blob, Some(gate)))
    }

    fn put_cert_windowed(
        &mut self,
        blob: &[u8],
        mut gate: Option<Gate<'_>>,
    ) -> Result<(), LinkError> {
        let cmd = proto::PUT_CERT;
        let total = u32::try_from(blob.len()).map_err(|_| LinkError::TooLarge {
            step: cmd.name,
            size: blob.len(),
            max: u32::MAX as usize,
        })?;
        let first_cap = self.chunk_capacity(true)?;
        let cap = self.chunk_capacity(false)?;
        let window = self.transport.settings().window.max(1);
        let attempts = self.transport.settings().retries + 1;
        let timeout = self
            .transport
            .settings()
            .timeout_for(&cmd, self.transport.settings().max_message())
            + self.transport.settings().wire_time(
                super::frame::wire_len(self.transport.settings().max_message()) * (window - 1),
            );

        let mut acked: usize = 0;
        let mut next: usize = 0;
        let mut inflight: VecDeque<(u8, usize)> = VecDeque::new();
        let mut failures: u32 = 0;
        // When the oldest answer owed is due (set when a wait for answers starts).
        let mut due: Option<Instant> = None;
        loop {
            let mut held = false;
            while inflight.len() < window
                && (next < blob.len() || (blob.is_empty() && next == 0 && inflight.is_empty()))
            {
                let first = next == 0;
                let mut end = (next + if first { first_cap } else { cap }).min(blob.len());
                if let Some(g) = gate.as_ref().filter(|g| next < g.at && g.at < end) {
                    // A chunk straddling the gate ends at it when that costs no extra chunk
                    // (the bytes before the gate then all go ahead); otherwise it waits.
                    let chunks_after = |from: usize| (blob.len() - from).div_ceil(cap.max(1));
                    if chunks_after(g.at) == chunks_after(end) {
                        end = g.at;
                    }
                }
                if let Some(g) = gate.as_mut().filter(|g| end > g.at) {
                    if !inflight.is_empty() && !(g.ready)() {
                        held = true;
                        break;
                    }
                    crate::timing::station(|| (g.wait)()).map_err(|reason| LinkError::Held {
                        step: cmd.name,
                        reason,
                    })?;
                    gate = None;
                }
                let req = PutCertReq {
                    off: u32::try_from(next).unwrap_or(u32::MAX),
                    data: Bytes(blob.get(next..end).unwrap_or_default().to_vec()),
                    len: first.then_some(total),
                };
                let payload = proto::to_cbor(&req).map_err(|source| LinkError::Encode {
                    step: cmd.name,
                    source,
                })?;
                let seq = self.transport.send(&cmd, &payload)?;
                inflight.push_back((seq, end));
                next = end;
                if blob.is_empty() {
                    break;
                }
            }
            let awaited: Vec<u8> = inflight.iter().map(|(s, _)| *s).collect();
            let until = *due.get_or_insert_with(|| Instant::now() + timeout);
            let read_until = if held {
                until.min(Instant::now() + GATE_POLL)
            } else {
                until
            };
            let answer = self.transport.recv(&cmd, &awaited, read_until)?;
            if answer.is_none() && read_until < until {
                // Nothing yet, and not yet overdue: ask the gate again.
                continue;
            }
            due = None;
            match answer {
                Some((seq, answer)) => {
                    let rsp: PutCertRsp = decode_answer(&cmd, &answer)?;
                    let off = rsp.off as usize;
                    if off == blob.len() {
                        return Ok(());
                    }
                    // Answers come in order: everything up to this one is settled.
                    let mut chunk_end = 0;
                    while let Some((s, e)) = inflight.pop_front() {
                        if s == seq {
                            chunk_end = e;
                            break;
                        }
                    }
                    if off > acked {
                        acked = off;
                        failures = 0;
                    }
                    if off < chunk_end {
                        // The unit missed a chunk: resume from where it is.
                        failures += 1;
                        debug!(off, chunk_end, "unit missed a chunk; resuming");
                        inflight.clear();
                        next = off;
                        acked = off;
                        self.transport.note_resume(false);
                    }
                }
                None => {
                    failures += 1;
                    inflight.clear();
                    next = acked;
                    self.transport.note_resume(true);
                    debug!(acked, "put_cert: no answer; resuming");
                }
            }
            if failures >= attempts {
                return Err(LinkError::NoAnswer {
                    step: cmd.name,
                    attempts: failures,
                });
            }
        }
    }
}
