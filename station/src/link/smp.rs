//! The 8-byte SMP header and the message it heads (header + CBOR payload).

/// SMP operation codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read request.
    Read,
    /// Read response.
    ReadRsp,
    /// Write request.
    Write,
    /// Write response.
    WriteRsp,
}

impl Op {
    fn code(self) -> u8 {
        match self {
            Op::Read => 0,
            Op::ReadRsp => 1,
            Op::Write => 2,
            Op::WriteRsp => 3,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => Op::Read,
            1 => Op::ReadRsp,
            2 => Op::Write,
            3 => Op::WriteRsp,
            _ => return None,
        })
    }

    /// The response op answering this request op.
    #[must_use]
    pub fn response(self) -> Self {
        match self {
            Op::Read | Op::ReadRsp => Op::ReadRsp,
            Op::Write | Op::WriteRsp => Op::WriteRsp,
        }
    }

    /// Whether this op is a request.
    #[must_use]
    pub fn is_request(self) -> bool {
        matches!(self, Op::Read | Op::Write)
    }
}

/// SMP protocol version 2 (the `ver` field value), which carries group errors as `err` maps.
pub const SMP_V2: u8 = 1;
/// Length of the SMP header.
pub const HEADER_LEN: usize = 8;

/// The SMP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Operation.
    pub op: Op,
    /// Protocol version (0 = v1, 1 = v2).
    pub version: u8,
    /// Flags (unused by Zephyr; kept as received).
    pub flags: u8,
    /// Group id.
    pub group: u16,
    /// Sequence number, echoed by the responder.
    pub seq: u8,
    /// Command id within the group.
    pub command: u8,
}

/// Why a body is not an SMP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Shorter than the header.
    #[error("SMP message of {len} bytes is shorter than its 8-byte header")]
    Short {
        /// Length received.
        len: usize,
    },
    /// Unknown op code.
    #[error("SMP message has unknown op code {code}")]
    BadOp {
        /// The op code.
        code: u8,
    },
    /// Header length disagrees with the payload.
    #[error("SMP header announces {declared} payload bytes but {actual} follow")]
    LengthMismatch {
        /// From the header.
        declared: usize,
        /// Present.
        actual: usize,
    },
    /// Payload too long for the 16-bit length field.
    #[error("SMP payload of {len} bytes does not fit the header's length field")]
    TooLong {
        /// Payload length.
        len: usize,
    },
}

/// One SMP message: header and CBOR payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The header (its length field is derived from `payload`).
    pub header: Header,
    /// CBOR payload.
    pub payload: Vec<u8>,
}

/// The payload is shown by its length only: a `put_symkey` request carries a unit's
/// symmetric key in it.
impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("header", &self.header)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Message {
    /// Serialises header and payload.
    pub fn to_bytes(&self) -> Result<Vec<u8>, MessageError> {
        let len = u16::try_from(self.payload.len()).map_err(|_| MessageError::TooLong {
            len: self.payload.len(),
        })?;
        let h = &self.header;
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.push(((h.version & 0x03) << 3) | h.op.code());
        out.push(h.flags);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&h.group.to_be_bytes());
        out.push(h.seq);
        out.push(h.command);
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Parses a body produced by the framing decoder.
    pub fn from_bytes(body: &[u8]) -> Result<Self, MessageError> {
        let (head, payload) = body
            .split_at_checked(HEADER_LEN)
            .ok_or(MessageError::Short { len: body.len() })?;
        let code = head[0] & 0x07;
        let op = Op::from_code(code).ok_or(MessageError::BadOp { code })?;
        let declared = usize::from(u16::from_be_bytes([head[2], head[3]]));
        if declared != payload.len() {
            return Err(MessageError::LengthMismatch {
                declared,
                actual: payload.len(),
            });
        }
        Ok(Self {
            header: Header {
                op,
                version: (head[0] >> 3) & 0x03,
                flags: head[1],
                group: u16::from_be_bytes([head[4], head[5]]),
                seq: head[6],
                command: head[7],
            },
            payload: payload.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_round_trip(op in 0u8..4, ver in 0u8..4, flags: u8, group: u16, seq: u8, command: u8,
                             payload in proptest::collection::vec(any::<u8>(), 0..600)) {
            let m = Message {
                header: Header { op: Op::from_code(op).unwrap(), version: ver, flags, group, seq, command },
                payload,
            };
            prop_assert_eq!(Message::from_bytes(&m.to_bytes().unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn rejects_length_mismatch() {
        let mut b = Message {
            header: Header {
                op: Op::Write,
                version: SMP_V2,
                flags: 0,
                group: 0,
                seq: 1,
                command: 0,
            },
            payload: vec![0xa0],
        }
        .to_bytes()
        .unwrap();
        b.push(0);
        assert!(matches!(
            Message::from_bytes(&b),
            Err(MessageError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn debug_leaves_out_the_payload() {
        use crate::link::proto::{PutSymkeyReq, SecretBytes, to_cbor};
        let req = PutSymkeyReq {
            key: SecretBytes(zeroize::Zeroizing::new(vec![0xab; 32])),
            rid: "unit-1".into(),
            scope: "0ne00000001".into(),
            ep: "global.azure-devices-provisioning.net".into(),
        };
        let m = Message {
            header: Header {
                op: Op::Write,
                version: SMP_V2,
                flags: 0,
                group: 64,
                seq: 7,
                command: 5,
            },
            payload: to_cbor(&req).unwrap(),
        };
        let shown = format!("{m:?}");
        assert!(
            shown.contains(&format!("payload_len: {}", m.payload.len())),
            "{shown}"
        );
        assert!(!shown.contains("171, 171"), "{shown}");
        assert!(!shown.contains("unit-1"), "{shown}");
    }
}
