//! Request/response over the framing: sequence matching, per-command timeouts, bounded retries.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::debug;

use super::frame::{self, Decoder, PACKET_OVERHEAD};
use super::port::Port;
use super::proto::{self, CborError, Command, ErrorAnswer};
use super::smp::{HEADER_LEN, Header, Message, SMP_V2};

/// Zephyr's default SMP buffer (`CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE`, formerly `MCUMGR_BUF_SIZE`).
pub const ZEPHYR_DEFAULT_BUF_SIZE: usize = 384;

/// Link tuning: how long to wait, how often to retry, how big the unit's buffer is.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Line speed, used to add wire time to timeouts.
    pub baud: u32,
    /// Wait for an answer to an ordinary command (on top of wire time).
    pub timeout: Duration,
    /// Wait for `keygen` (key generation on a small MCU takes a while).
    pub keygen_timeout: Duration,
    /// Retries after the first attempt for transient faults (no answer, corrupt answer).
    pub retries: u32,
    /// The unit's SMP receive buffer: length field + message + CRC.
    pub unit_buf_size: usize,
    /// Requests in flight during chunked transfers (the unit has several receive buffers).
    pub window: usize,
}

impl Default for LinkSettings {
    fn default() -> Self {
        Self {
            baud: 115_200,
            timeout: Duration::from_secs(2),
            keygen_timeout: Duration::from_secs(15),
            retries: 4,
            unit_buf_size: ZEPHYR_DEFAULT_BUF_SIZE,
            window: 2,
        }
    }
}

impl LinkSettings {
    /// Largest SMP message (header + CBOR) the unit accepts.
    #[must_use]
    pub fn max_message(&self) -> usize {
        self.unit_buf_size.saturating_sub(PACKET_OVERHEAD)
    }

    /// Time `bytes` take on the line at 8N1.
    #[must_use]
    pub fn wire_time(&self, bytes: usize) -> Duration {
        let bits = bytes as u64 * 10;
        Duration::from_micros(bits * 1_000_000 / u64::from(self.baud.max(1)))
    }

    /// The timeout for one attempt of `cmd` with a request of `req_len` message bytes.
    #[must_use]
    pub fn timeout_for(&self, cmd: &Command, req_len: usize) -> Duration {
        let base = if *cmd == proto::KEYGEN {
            self.keygen_timeout
        } else {
            self.timeout
        };
        // Answers are at most a buffer long; count both directions.
        base + self.wire_time(frame::wire_len(req_len) + frame::wire_len(self.max_message()))
    }
}

/// Why a command over the link failed. Each variant names the step (the command).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No (valid) answer within the timeout, after every retry.
    #[error("{step}: no answer from the unit after {attempts} attempts")]
    NoAnswer {
        /// Command.
        step: &'static str,
        /// Attempts made.
        attempts: u32,
    },
    /// Writing to the port failed.
    #[error("{step}: writing to the serial port failed")]
    Write {
        /// Command.
        step: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading from the port failed: the unit or adapter went away.
    #[error("{step}: the serial link was lost")]
    Read {
        /// Command.
        step: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The request does not fit the unit's receive buffer.
    #[error("{step}: request of {size} bytes exceeds the unit's {max}-byte SMP buffer")]
    TooLarge {
        /// Command.
        step: &'static str,
        /// Message size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The unit answered with an error code.
    #[error("{step}: the unit refused (group {group:?}, rc {rc})")]
    Refused {
        /// Command.
        step: &'static str,
        /// Group of a group error.
        group: Option<u16>,
        /// Result code.
        rc: i64,
    },
    /// The answer could not be read.
    #[error("{step}: malformed answer from the unit")]
    Malformed {
        /// Command.
        step: &'static str,
        /// Why.
        #[source]
        source: CborError,
    },
    /// The station stopped an upload half-way: what it waited for before sending the rest
    /// failed (the certificate's record could not be made durable).
    #[error("{step}: stopped before the rest was sent: {reason}")]
    Held {
        /// Command.
        step: &'static str,
        /// Why.
        reason: String,
    },
    /// The request could not be encoded.
    #[error("{step}: encoding the request failed")]
    Encode {
        /// Command.
        step: &'static str,
        /// Why.
        #[source]
        source: CborError,
    },
}

impl LinkError {
    /// The group error code, when the unit refused with one.
    #[must_use]
    pub fn refused_rc(&self) -> Option<(Option<u16>, i64)> {
        match self {
            LinkError::Refused { group, rc, .. } => Some((*group, *rc)),
            _ => None,
        }
    }
}

/// Counters for logs and benches.
#[derive(Debug, Default, Clone, Copy)]
pub struct TransportStats {
    /// Requests written (retries included).
    pub requests: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
    /// Requests sent again (after a timeout, or a chunk the unit missed).
    pub retries: u64,
    /// Answers ignored because their sequence number was not awaited.
    pub stale: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes read while a later request of ours was in flight too (a windowed transfer): on a
    /// full-duplex line they can arrive while that request is still being sent.
    pub bytes_in_overlapping: u64,
}

impl TransportStats {
    /// The bytes whose wire time no exchange can hide: all bytes, less those read while a
    /// later request was being sent. Their wire time at the line's baud is the floor of the
    /// link's time.
    #[must_use]
    pub fn serial_bytes(&self) -> u64 {
        self.bytes_out + self.bytes_in - self.bytes_in_overlapping
    }
}

/// The station end of a device link.
pub struct Transport<P: Port> {
    port: P,
    decoder: Decoder,
    next_seq: u8,
    settings: LinkSettings,
    stats: TransportStats,
    ready: VecDeque<Message>,
}

/// Largest packet the station accepts from a unit (units answer within their buffer; this only
/// bounds memory against a babbling line).
const STATION_MAX_PACKET: usize = 8192;

impl<P: Port> Transport<P> {
    /// Wraps an open port.
    pub fn new(port: P, settings: LinkSettings) -> Self {
        Self {
            port,
            decoder: Decoder::new(STATION_MAX_PACKET),
            next_seq: rand::random(),
            settings,
            stats: TransportStats::default(),
            ready: VecDeque::new(),
        }
    }

    /// The port.
    #[must_use]
    pub fn port(&self) -> &P {
        &self.port
    }

    /// The settings in use.
    #[must_use]
    pub fn settings(&self) -> &LinkSettings {
        &self.settings
    }

    /// Changes the unit's buffer size (after reading its MCUmgr parameters).
    pub fn set_unit_buf_size(&mut self, size: usize) {
        self.settings.unit_buf_size = size;
    }

    /// Records a resumed transfer (the caller resends from the unit's position).
    pub fn note_resume(&mut self, timed_out: bool) {
        self.stats.retries += 1;
        if timed_out {
            self.stats.timeouts += 1;
            self.decoder.reset();
        }
    }

    /// Counters so far.
    #[must_use]
    pub fn stats(&self) -> TransportStats {
        self.stats
    }

    /// What the decoder skipped so far.
    #[must_use]
    pub fn decode_stats(&self) -> frame::DecodeStats {
        self.decoder.stats()
    }

    /// Sends one request; returns its sequence number.
    pub fn send(&mut self, cmd: &Command, payload: &[u8]) -> Result<u8, LinkError> {
        let size = HEADER_LEN + payload.len();
        let max = self.settings.max_message();
        if size > max {
            return Err(LinkError::TooLarge {
                step: cmd.name,
                size,
                max,
            });
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let msg = Message {
            header: Header {
                op: cmd.op,
                version: SMP_V2,
                flags: 0,
                group: cmd.group,
                seq,
                command: cmd.id,
            },
            payload: payload.to_vec(),
        };
        let body = msg.to_bytes().map_err(|e| LinkError::Write {
            step: cmd.name,
            source: io::Error::other(e),
        })?;
        let wire = frame::encode_packet(&body).map_err(|e| LinkError::Write {
            step: cmd.name,
            source: io::Error::other(e),
        })?;
        // One write per packet: a write per frame fragment would cost a syscall each.
        self.port
            .write_all_bytes(&wire)
            .map_err(|source| LinkError::Write {
                step: cmd.name,
                source,
            })?;
        self.stats.requests += 1;
        self.stats.bytes_out += wire.len() as u64;
        Ok(seq)
    }

    /// Waits until `deadline` for the answer to `cmd` with one of the sequence numbers in
    /// `awaited`; answers to anything else are stale (a retried request answered late) and dropped.
    pub fn recv(
        &mut self,
        cmd: &Command,
        awaited: &[u8],
        deadline: Instant,
    ) -> Result<Option<(u8, Vec<u8>)>, LinkError> {
        let want_op = cmd.op.response();
        let mut buf = [0u8; 1024];
        loop {
            while let Some(m) = self.ready.pop_front() {
                let h = &m.header;
                if h.op == want_op
                    && h.group == cmd.group
                    && h.command == cmd.id
                    && awaited.contains(&h.seq)
                {
                    return Ok(Some((h.seq, m.payload)));
                }
                self.stats.stale += 1;
                debug!(
                    seq = h.seq,
                    group = h.group,
                    command = h.command,
                    "stale answer dropped"
                );
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let n = self
                .port
                .read_some(&mut buf, deadline - now)
                .map_err(|source| LinkError::Read {
                    step: cmd.name,
                    source,
                })?;
            self.stats.bytes_in += n as u64;
            if awaited.len() > 1 {
                self.stats.bytes_in_overlapping += n as u64;
            }
            let mut bodies = Vec::new();
            self.decoder
                .push(buf.get(..n).unwrap_or_default(), &mut bodies);
            for b in bodies {
                match Message::from_bytes(&b) {
                    Ok(m) if !m.header.op.is_request() => self.ready.push_back(m),
                    Ok(_) => self.stats.stale += 1,
                    Err(e) => debug!(error = %e, "undecodable SMP message dropped"),
                }
            }
        }
    }

    /// Sends `payload` and waits for its answer, retrying transient faults.
    pub fn call_raw(&mut self, cmd: &Command, payload: &[u8]) -> Result<Vec<u8>, LinkError> {
        // The whole exchange is the link's time (wire and unit), not the station's.
        crate::timing::hardware(|| self.call_raw_timed(cmd, payload))
    }

    fn call_raw_timed(&mut self, cmd: &Command, payload: &[u8]) -> Result<Vec<u8>, LinkError> {
        let attempts = self.settings.retries + 1;
        let timeout = self.settings.timeout_for(cmd, HEADER_LEN + payload.len());
        for attempt in 1..=attempts {
            let seq = self.send(cmd, payload)?;
            if let Some((_, answer)) = self.recv(cmd, &[seq], Instant::now() + timeout)? {
                return Ok(answer);
            }
            self.stats.timeouts += 1;
            if attempt < attempts {
                self.stats.retries += 1;
            }
            // A half-received answer must not be glued to the next one.
            self.decoder.reset();
            debug!(step = cmd.name, attempt, "no answer; retrying");
        }
        Err(LinkError::NoAnswer {
            step: cmd.name,
            attempts,
        })
    }

    /// Sends a typed request and decodes the typed answer; error answers become [`LinkError::Refused`].
    pub fn call<Req: Serialize, Rsp: DeserializeOwned>(
        &mut self,
        cmd: &Command,
        req: &Req,
    ) -> Result<Rsp, LinkError> {
        let payload = proto::to_cbor(req).map_err(|source| LinkError::Encode {
            step: cmd.name,
            source,
        })?;
        let answer = self.call_raw(cmd, &payload)?;
        decode_answer(cmd, &answer)
    }
}

/// Decodes an answer payload for `cmd`.
pub fn decode_answer<Rsp: DeserializeOwned>(
    cmd: &Command,
    answer: &[u8],
) -> Result<Rsp, LinkError> {
    match proto::parse_answer::<Rsp>(answer) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(ErrorAnswer { group, rc })) => Err(LinkError::Refused {
            step: cmd.name,
            group,
            rc,
        }),
        Err(source) => Err(LinkError::Malformed {
            step: cmd.name,
            source,
        }),
    }
}
