//! The messages of the device link: OS group commands we use, and the provisioning group.
//!
//! Both ends (station and `unit-sim`) use these types; `fixtures/PROTOCOL.md` documents them.
//! Keys are short text keys as in Zephyr's own groups; binary fields are CBOR byte strings.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use super::smp::Op;

/// Zephyr OS management group.
pub const GROUP_OS: u16 = 0;
/// OS group: echo (`{"d": text}` -> `{"r": text}`).
pub const OS_ECHO: u8 = 0;
/// OS group: MCUmgr parameters (`{}` -> `{"buf_size", "buf_count"}`).
pub const OS_PARAMS: u8 = 6;

/// The provisioning group (user groups start at 64 in Zephyr's numbering).
pub const GROUP_PROV: u16 = 64;

/// A command of the device link: group, id, op and the name used in errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// Group id.
    pub group: u16,
    /// Command id.
    pub id: u8,
    /// Request op.
    pub op: Op,
    /// Step name shown to operators.
    pub name: &'static str,
}

/// OS echo.
pub const ECHO: Command = Command {
    group: GROUP_OS,
    id: OS_ECHO,
    op: Op::Write,
    name: "echo",
};
/// OS MCUmgr parameters.
pub const PARAMS: Command = Command {
    group: GROUP_OS,
    id: OS_PARAMS,
    op: Op::Read,
    name: "mcumgr-params",
};
/// Provisioning: identify.
pub const IDENTIFY: Command = Command {
    group: GROUP_PROV,
    id: 0,
    op: Op::Read,
    name: "identify",
};
/// Provisioning: make a key pair and return a CSR.
pub const KEYGEN: Command = Command {
    group: GROUP_PROV,
    id: 1,
    op: Op::Write,
    name: "keygen",
};
/// Provisioning: write the certificate chain (chunked).
pub const PUT_CERT: Command = Command {
    group: GROUP_PROV,
    id: 2,
    op: Op::Write,
    name: "put_cert",
};
/// Provisioning: read back the stored chain's digest, signed with the unit key.
pub const GET_CERT_DIGEST: Command = Command {
    group: GROUP_PROV,
    id: 3,
    op: Op::Read,
    name: "get_cert_digest",
};
/// Provisioning: inject a symmetric key.
pub const PUT_SYMKEY: Command = Command {
    group: GROUP_PROV,
    id: 4,
    op: Op::Write,
    name: "put_symkey",
};
/// Provisioning: HMAC a station nonce with the injected key.
pub const PROVE: Command = Command {
    group: GROUP_PROV,
    id: 5,
    op: Op::Read,
    name: "prove",
};
/// Provisioning: leave provisioning mode.
pub const LOCK: Command = Command {
    group: GROUP_PROV,
    id: 6,
    op: Op::Write,
    name: "lock",
};
/// Provisioning: erase the identity and unlock (supervisor rework).
pub const FACTORY_RESET: Command = Command {
    group: GROUP_PROV,
    id: 7,
    op: Op::Write,
    name: "factory_reset",
};

/// Every command the simulated unit and the station know, for lookups by (group, id).
pub const COMMANDS: [Command; 10] = [
    ECHO,
    PARAMS,
    IDENTIFY,
    KEYGEN,
    PUT_CERT,
    GET_CERT_DIGEST,
    PUT_SYMKEY,
    PROVE,
    LOCK,
    FACTORY_RESET,
];

/// Generic MCUmgr result codes (`MGMT_ERR_*`), used in `{"rc": n}` answers.
pub mod rc {
    /// Unknown error.
    pub const EUNKNOWN: i64 = 1;
    /// Invalid argument.
    pub const EINVAL: i64 = 3;
    /// Message too large for the receive buffer.
    pub const EMSGSIZE: i64 = 7;
    /// Command not supported.
    pub const ENOTSUP: i64 = 8;
}

/// Provisioning group result codes, sent as `{"err": {"group": 64, "rc": n}}` (SMP v2).
pub mod prov_rc {
    /// The unit is locked: provisioning commands are refused.
    pub const LOCKED: u16 = 1;
    /// No key: `keygen` has not run.
    pub const NO_KEY: u16 = 2;
    /// The certificate chain was refused (unparseable, or not for the unit's key).
    pub const CERT_REJECTED: u16 = 3;
    /// No certificate stored.
    pub const NO_CERT: u16 = 4;
    /// No symmetric key stored.
    pub const NO_SYMKEY: u16 = 5;
    /// `factory_reset` named another serial.
    pub const WRONG_SERIAL: u16 = 6;
    /// A `put_cert` chunk was inconsistent (length, digest).
    pub const BAD_CHUNK: u16 = 7;
}

/// Length of station nonces (keygen, read-back, prove).
pub const NONCE_LEN: usize = 16;

/// Bytes carried as a CBOR byte string.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({})", hex::encode(&self.0))
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(BytesVisitor).map(Bytes)
    }
}

/// Secret bytes (a symmetric key): zeroised on drop, redacted in Debug.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretBytes(pub Zeroizing<Vec<u8>>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([redacted; {} bytes])", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(BytesVisitor)
            .map(|v| SecretBytes(Zeroizing::new(v)))
    }
}

/// An empty map, for commands without arguments or results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// OS echo request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReq {
    /// Text to echo.
    pub d: String,
}

/// OS echo response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoRsp {
    /// The echoed text.
    pub r: String,
}

/// OS MCUmgr parameters response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamsRsp {
    /// Size of one SMP receive buffer (length field + message + CRC).
    pub buf_size: u32,
    /// Number of receive buffers.
    pub buf_count: u32,
}

/// `identify` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifyRsp {
    /// The unit's serial number.
    pub serial: String,
    /// Model.
    pub model: String,
    /// Hardware revision.
    pub hw: String,
    /// Firmware version.
    pub fw: String,
    /// Capabilities: `"x509"`, `"symkey"`.
    pub caps: Vec<String>,
    /// Whether provisioning mode has ended.
    pub locked: bool,
}

/// `keygen` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeygenReq {
    /// Registration ID the CSR's CN must carry.
    pub rid: String,
    /// Fresh station nonce; the CSR carries it hex-encoded as PKCS#9 challengePassword.
    pub nonce: Bytes,
}

/// `keygen` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeygenRsp {
    /// DER PKCS#10 CSR signed with the new key.
    pub csr: Bytes,
}

/// `put_cert` request: one chunk of the DER chain (leaf first, certificates concatenated).
///
/// No digest travels with the chain: each packet has its CRC, and the station checks the whole
/// chain end to end with the signed read-back (`get_cert_digest`) before it locks the unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutCertReq {
    /// Offset of this chunk.
    pub off: u32,
    /// Chunk bytes.
    pub data: Bytes,
    /// Total length (first chunk only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<u32>,
}

/// `put_cert` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutCertRsp {
    /// Next offset the unit expects (the total length once complete and accepted).
    pub off: u32,
}

/// `get_cert_digest` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertDigestReq {
    /// Fresh station nonce.
    pub nonce: Bytes,
}

/// `get_cert_digest` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertDigestRsp {
    /// SHA-256 of the stored chain.
    pub sha: Bytes,
    /// ECDSA P-256 signature (DER) by the unit key over [`readback_message`].
    pub sig: Bytes,
}

/// What the unit signs in `get_cert_digest`: a domain label, the nonce and the digest.
#[must_use]
pub fn readback_message(nonce: &[u8], sha: &[u8]) -> Vec<u8> {
    let mut m = b"station-readback-v1".to_vec();
    m.extend_from_slice(nonce);
    m.extend_from_slice(sha);
    m
}

/// `put_symkey` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutSymkeyReq {
    /// The symmetric key (DPS symmetric-key attestation, raw bytes).
    pub key: SecretBytes,
    /// Registration ID.
    pub rid: String,
    /// DPS ID scope.
    pub scope: String,
    /// DPS global endpoint host.
    pub ep: String,
}

/// `prove` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProveReq {
    /// Fresh station nonce.
    pub nonce: Bytes,
}

/// `prove` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProveRsp {
    /// HMAC-SHA256 of the nonce with the injected key.
    pub mac: Bytes,
}

/// `factory_reset` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactoryResetReq {
    /// The unit's serial, as a confirmation.
    pub serial: String,
}

/// An error answer: `{"rc": n}` (SMP v1 style) or `{"err": {"group": g, "rc": n}}` (v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorAnswer {
    /// Group of a v2 group error; `None` for a generic MCUmgr code.
    pub group: Option<u16>,
    /// The result code.
    pub rc: i64,
}

#[derive(Serialize)]
struct GroupErr {
    group: u16,
    rc: u16,
}

#[derive(Serialize)]
struct GroupErrAnswer {
    err: GroupErr,
}

#[derive(Serialize)]
struct RcAnswer {
    rc: i64,
}

/// Why CBOR could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CborError {
    /// Serialisation failed.
    #[error("encoding CBOR")]
    Encode(#[source] ciborium::ser::Error<std::io::Error>),
    /// The bytes are not CBOR.
    #[error("decoding CBOR")]
    Decode(#[source] ciborium::de::Error<std::io::Error>),
    /// The CBOR does not have the expected shape.
    #[error("CBOR payload has an unexpected shape")]
    Shape(#[source] ciborium::value::Error),
}

/// Encodes a value as CBOR.
pub fn to_cbor<T: Serialize>(v: &T) -> Result<Vec<u8>, CborError> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).map_err(CborError::Encode)?;
    Ok(out)
}

/// Decodes CBOR into a value.
pub fn from_cbor<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, CborError> {
    ciborium::from_reader(b).map_err(CborError::Decode)
}

/// The payload of a group error answer.
pub fn group_error(group: u16, rc: u16) -> Result<Vec<u8>, CborError> {
    to_cbor(&GroupErrAnswer {
        err: GroupErr { group, rc },
    })
}

/// The payload of a generic error answer.
pub fn rc_error(rc: i64) -> Result<Vec<u8>, CborError> {
    to_cbor(&RcAnswer { rc })
}

/// Splits a response payload into an error answer or the typed result.
pub fn parse_answer<T: serde::de::DeserializeOwned>(
    payload: &[u8],
) -> Result<Result<T, ErrorAnswer>, CborError> {
    let value: ciborium::Value = from_cbor(payload)?;
    if let Some(map) = value.as_map() {
        let get = |k: &str| {
            map.iter()
                .find(|(key, _)| key.as_text() == Some(k))
                .map(|(_, v)| v)
        };
        if let Some(err) = get("err").and_then(|v| v.as_map()) {
            let field = |k: &str| {
                err.iter()
                    .find(|(key, _)| key.as_text() == Some(k))
                    .and_then(|(_, v)| v.as_integer())
                    .and_then(|i| i64::try_from(i).ok())
            };
            let rc = field("rc").unwrap_or(rc::EUNKNOWN);
            let group = field("group").and_then(|g| u16::try_from(g).ok());
            if rc != 0 {
                return Ok(Err(ErrorAnswer { group, rc }));
            }
        }
        if let Some(rc) = get("rc")
            .and_then(|v| v.as_integer())
            .and_then(|i| i64::try_from(i).ok())
            && rc != 0
        {
            return Ok(Err(ErrorAnswer { group: None, rc }));
        }
    }
    value.deserialized().map(Ok).map_err(CborError::Shape)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn answers_split_errors_from_results() {
        let ok = to_cbor(&EchoRsp { r: "hi".into() }).unwrap();
        assert_eq!(
            parse_answer::<EchoRsp>(&ok).unwrap(),
            Ok(EchoRsp { r: "hi".into() })
        );
        let e = group_error(GROUP_PROV, prov_rc::LOCKED).unwrap();
        assert_eq!(
            parse_answer::<EchoRsp>(&e).unwrap(),
            Err(ErrorAnswer {
                group: Some(GROUP_PROV),
                rc: i64::from(prov_rc::LOCKED)
            })
        );
        let e = rc_error(rc::ENOTSUP).unwrap();
        assert_eq!(
            parse_answer::<EchoRsp>(&e).unwrap(),
            Err(ErrorAnswer {
                group: None,
                rc: rc::ENOTSUP
            })
        );
    }

    #[test]
    fn secret_is_redacted_and_bytes_are_byte_strings() {
        let req = PutSymkeyReq {
            key: SecretBytes(Zeroizing::new(vec![0xAB; 32])),
            rid: "r".into(),
            scope: "s".into(),
            ep: "e".into(),
        };
        assert!(!format!("{req:?}").contains("ab"));
        let cbor = to_cbor(&req).unwrap();
        // 0x58 0x20: a 32-byte CBOR byte string, not an array of integers.
        assert!(cbor.windows(2).any(|w| w == [0x58, 0x20]));
        assert_eq!(from_cbor::<PutSymkeyReq>(&cbor).unwrap(), req);
    }
}
