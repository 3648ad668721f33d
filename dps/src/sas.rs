//! Shared access signatures: tokens, connection strings, and group-key derivation.
//!
//! A token is `SharedAccessSignature sr=<resource>&sig=<urlenc base64>&se=<unix s>[&skn=<policy>]`
//! with `sig = base64(HMAC-SHA256(base64decode(key), sr + "\n" + se))`. Clients disagree on
//! how they encode `sr` (Node sends `a/b`, Python `a%2Fb`), and each signs the text it sends,
//! so verification HMACs the `sr` substring exactly as transmitted.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The token prefix.
pub const SAS_PREFIX: &str = "SharedAccessSignature ";

/// Why SAS material was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// The key is not base64.
    #[error("shared access key is not valid base64")]
    KeyNotBase64,
    /// The key is empty.
    #[error("shared access key is empty")]
    KeyEmpty,
    /// The token does not start with `SharedAccessSignature `.
    #[error("authorization is not a SharedAccessSignature")]
    NotSas,
    /// A token field is missing.
    #[error("SAS token lacks field {0}")]
    MissingField(&'static str),
    /// A token field appears twice or cannot be decoded.
    #[error("SAS token has a malformed field {0:?}")]
    BadField(&'static str),
    /// A token field has a name other than sr, sig, se and skn (counted from 1). Its text is
    /// not shown: it may be a signature.
    #[error("SAS token field {0} is not sr, sig, se or skn")]
    UnknownField(usize),
    /// A token field is not `name=value`. Its text is not shown: it may be a signature.
    #[error("SAS token field {0} is not name=value")]
    FieldWithoutValue(usize),
    /// `se` is not a number.
    #[error("SAS token expiry is not a number")]
    BadExpiry,
    /// `sig` is not valid percent-encoded base64.
    #[error("SAS token signature is not valid base64")]
    BadSignatureEncoding,
    /// The token has expired.
    #[error("SAS token expired")]
    Expired,
    /// The signature does not match.
    #[error("SAS token signature does not match")]
    SignatureMismatch,
    /// A connection string part is missing.
    #[error("connection string lacks {0}")]
    MissingPart(&'static str),
    /// A connection string part is not `Name=value` (counted from 1). Its text is not shown:
    /// it may be a key pasted on its own.
    #[error("connection string part {0} is not Name=value")]
    BadPart(usize),
    /// A connection string names a part twice (two strings run together?).
    #[error("connection string names {0} twice")]
    DuplicatePart(&'static str),
}

/// A decoded shared access key (policy key, enrollment key or group key). Never printed.
pub struct SharedAccessKey(SecretBox<Vec<u8>>);

impl SharedAccessKey {
    /// Decodes a base64 key.
    pub fn from_base64(text: &str) -> Result<Self, SasError> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| SasError::KeyNotBase64)?;
        if bytes.is_empty() {
            return Err(SasError::KeyEmpty);
        }
        Ok(Self(SecretBox::new(Box::new(bytes))))
    }

    /// Wraps raw key bytes.
    #[must_use]
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// A fresh random 32-byte key (what DPS generates for empty symmetric keys).
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; 32];
        rand::fill(&mut bytes[..]);
        Self::from_bytes(bytes)
    }

    /// The key as base64 text (for sending or storing it on purpose).
    #[must_use]
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(B64.encode(self.0.expose_secret()))
    }

    /// base64(HMAC-SHA256(key, message)).
    #[must_use]
    pub fn sign(&self, message: &[u8]) -> String {
        B64.encode(self.mac(message).finalize().into_bytes())
    }

    /// Constant-time check of a raw HMAC-SHA256 tag.
    fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        self.mac(message).verify_slice(tag).is_ok()
    }

    fn mac(&self, message: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so new_from_slice cannot fail.
        let mut mac = match HmacSha256::new_from_slice(self.0.expose_secret()) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(message);
        mac
    }
}

impl Clone for SharedAccessKey {
    fn clone(&self) -> Self {
        Self::from_bytes(self.0.expose_secret().clone())
    }
}

impl fmt::Debug for SharedAccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedAccessKey(<redacted>)")
    }
}

/// Derives a unit's key from a group key: `base64(HMAC-SHA256(groupKey, registrationId))`.
#[must_use]
pub fn derive_device_key(group_key: &SharedAccessKey, registration_id: &str) -> SharedAccessKey {
    SharedAccessKey::from_bytes(
        group_key
            .mac(registration_id.as_bytes())
            .finalize()
            .into_bytes()
            .to_vec(),
    )
}

/// Builds a token for `resource` expiring at `expiry` (unix seconds). `resource` is written
/// into `sr` as given and signed as written.
#[must_use]
pub fn generate_token(
    resource: &str,
    key: &SharedAccessKey,
    key_name: Option<&str>,
    expiry: u64,
) -> SecretString {
    let sig = key.sign(format!("{resource}\n{expiry}").as_bytes());
    token_text(resource, &sig, key_name, expiry)
}

/// Builds a token for `resource` whose HMAC-SHA256 `signature` over `resource\nexpiry` was
/// computed elsewhere (in a TPM, for TPM units).
#[must_use]
pub fn token_with_signature(
    resource: &str,
    signature: &[u8],
    key_name: Option<&str>,
    expiry: u64,
) -> SecretString {
    token_text(resource, &B64.encode(signature), key_name, expiry)
}

fn token_text(resource: &str, sig_b64: &str, key_name: Option<&str>, expiry: u64) -> SecretString {
    let sig = urlencoding::encode(sig_b64);
    let mut t = format!("{SAS_PREFIX}sr={resource}&sig={sig}");
    if let Some(n) = key_name {
        t.push_str("&skn=");
        t.push_str(n);
    }
    t.push_str(&format!("&se={expiry}"));
    SecretString::from(t)
}

/// A parsed SAS token. Holds `sr` exactly as transmitted.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    sr_raw: String,
    sig: Vec<u8>,
    expiry: u64,
    key_name: Option<String>,
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasToken")
            .field("sr", &self.sr_raw)
            .field("se", &self.expiry)
            .field("skn", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl SasToken {
    /// Parses an `Authorization` value (or MQTT password).
    pub fn parse(text: &str) -> Result<Self, SasError> {
        let body = text
            .trim()
            .strip_prefix(SAS_PREFIX)
            .ok_or(SasError::NotSas)?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for (i, part) in body.split('&').enumerate() {
            let (name, value) = part
                .split_once('=')
                .ok_or(SasError::FieldWithoutValue(i + 1))?;
            let (slot, name) = match name {
                "sr" => (&mut sr, "sr"),
                "sig" => (&mut sig, "sig"),
                "se" => (&mut se, "se"),
                "skn" => (&mut skn, "skn"),
                _ => return Err(SasError::UnknownField(i + 1)),
            };
            if slot.replace(value).is_some() {
                return Err(SasError::BadField(name));
            }
        }
        let sr = sr.ok_or(SasError::MissingField("sr"))?;
        let sig = sig.ok_or(SasError::MissingField("sig"))?;
        let se = se.ok_or(SasError::MissingField("se"))?;
        let sig = urlencoding::decode(sig).map_err(|_| SasError::BadSignatureEncoding)?;
        let sig = B64
            .decode(sig.as_bytes())
            .map_err(|_| SasError::BadSignatureEncoding)?;
        let expiry = se.parse().map_err(|_| SasError::BadExpiry)?;
        let key_name = match skn {
            Some(n) => Some(
                urlencoding::decode(n)
                    .map_err(|_| SasError::BadField("skn"))?
                    .into_owned(),
            ),
            None => None,
        };
        Ok(Self {
            sr_raw: sr.to_owned(),
            sig,
            expiry,
            key_name,
        })
    }

    /// `sr` exactly as sent.
    #[must_use]
    pub fn resource_raw(&self) -> &str {
        &self.sr_raw
    }

    /// `sr` percent-decoded and lower-cased, for deciding which resource is meant.
    #[must_use]
    pub fn resource(&self) -> String {
        urlencoding::decode(&self.sr_raw)
            .map(|s| s.into_owned())
            .unwrap_or_else(|_| self.sr_raw.clone())
            .to_ascii_lowercase()
    }

    /// The policy (`skn`), if any.
    #[must_use]
    pub fn key_name(&self) -> Option<&str> {
        self.key_name.as_deref()
    }

    /// Expiry, unix seconds.
    #[must_use]
    pub fn expiry(&self) -> u64 {
        self.expiry
    }

    /// Checks the signature with `key` (over `sr` as sent) and the expiry against `now`.
    pub fn verify(&self, key: &SharedAccessKey, now: u64) -> Result<(), SasError> {
        let message = format!("{}\n{}", self.sr_raw, self.expiry);
        if !key.verify(message.as_bytes(), &self.sig) {
            return Err(SasError::SignatureMismatch);
        }
        if self.expiry <= now {
            return Err(SasError::Expired);
        }
        Ok(())
    }
}

/// `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`. The key never shows in
/// Debug or Display; [`ConnectionString::to_secret_string`] gives the full text on purpose.
#[derive(Clone)]
pub struct ConnectionString {
    host_name: String,
    key_name: String,
    key: SharedAccessKey,
}

impl ConnectionString {
    /// Builds one from its parts.
    #[must_use]
    pub fn new(
        host_name: impl Into<String>,
        key_name: impl Into<String>,
        key: SharedAccessKey,
    ) -> Self {
        Self {
            host_name: host_name.into(),
            key_name: key_name.into(),
            key,
        }
    }

    /// `HostName` (may carry `:port` for a local service).
    #[must_use]
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// `SharedAccessKeyName` (the policy).
    #[must_use]
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The policy key.
    #[must_use]
    pub fn key(&self) -> &SharedAccessKey {
        &self.key
    }

    /// A service token for this host, valid until `expiry`.
    #[must_use]
    pub fn token(&self, expiry: u64) -> SecretString {
        generate_token(&self.host_name, &self.key, Some(&self.key_name), expiry)
    }

    /// The full text including the key, for writing the `connection-string` file.
    #[must_use]
    pub fn to_secret_string(&self) -> SecretString {
        SecretString::from(format!(
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            self.host_name,
            self.key_name,
            self.key.to_base64().expose_secret()
        ))
    }
}

impl FromStr for ConnectionString {
    type Err = SasError;

    fn from_str(s: &str) -> Result<Self, SasError> {
        let (mut host, mut name, mut key) = (None, None, None);
        fn once<T>(slot: &mut Option<T>, part: &'static str, v: T) -> Result<(), SasError> {
            match slot.replace(v) {
                Some(_) => Err(SasError::DuplicatePart(part)),
                None => Ok(()),
            }
        }
        for (i, part) in s.trim().split(';').filter(|p| !p.is_empty()).enumerate() {
            // Split at the first '=' only: base64 keys end in '='.
            let (k, v) = part.split_once('=').ok_or(SasError::BadPart(i + 1))?;
            match k.trim() {
                "HostName" => once(&mut host, "HostName", v.trim().to_owned())?,
                "SharedAccessKeyName" => {
                    once(&mut name, "SharedAccessKeyName", v.trim().to_owned())?
                }
                "SharedAccessKey" => once(
                    &mut key,
                    "SharedAccessKey",
                    SharedAccessKey::from_base64(v)?,
                )?,
                // Other parts (e.g. DeviceId) belong to other connection strings: ignore.
                _ => {}
            }
        }
        Ok(Self {
            host_name: host
                .filter(|h| !h.is_empty())
                .ok_or(SasError::MissingPart("HostName"))?,
            key_name: name
                .filter(|n| !n.is_empty())
                .ok_or(SasError::MissingPart("SharedAccessKeyName"))?,
            key: key.ok_or(SasError::MissingPart("SharedAccessKey"))?,
        })
    }
}

impl fmt::Display for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HostName={};SharedAccessKeyName={};SharedAccessKey=<redacted>",
            self.host_name, self.key_name
        )
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionString({self})")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const KEY7: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

    #[test]
    fn vector_from_dps_protocol_notes() {
        let key =
            SharedAccessKey::from_base64("O+H9VTcdJP0Tqkl7bh4nVG0OJNrAataMpuWB54D0VEc=").unwrap();
        let sr = "0ne000EEBBD%2fregistrations%2fFirstDevice";
        assert_eq!(
            key.sign(format!("{sr}\n1591921306").as_bytes()),
            "hwgBlMB6G2Zg5ZcYtwmtLVKRbifiSCPfUMyscbVWa8o="
        );
        let token = generate_token(sr, &key, None, 1_591_921_306);
        let parsed = SasToken::parse(token.expose_secret()).unwrap();
        assert!(parsed.verify(&key, 1_591_921_000).is_ok());
        assert_eq!(parsed.resource(), "0ne000eebbd/registrations/firstdevice");
    }

    #[test]
    fn captured_node_service_token_verifies() {
        let key = SharedAccessKey::from_base64(KEY7).unwrap();
        let t = SasToken::parse("SharedAccessSignature sr=localhost:18443&sig=eYxQ78AKdG3mTm1TdO8XCT82RKRXocTsn0RwIzg1D%2F4%3D&skn=provisioningserviceowner&se=1795913507").unwrap();
        assert_eq!(t.key_name(), Some("provisioningserviceowner"));
        assert_eq!(t.resource(), "localhost:18443");
        assert!(t.verify(&key, 1_795_913_000).is_ok());
        assert_eq!(t.verify(&key, 1_795_913_507), Err(SasError::Expired));
    }

    #[test]
    fn captured_node_device_token_verifies_with_literal_slashes() {
        let key = SharedAccessKey::from_base64(KEY7).unwrap();
        let t = SasToken::parse("SharedAccessSignature sr=0ne0000CAP1/registrations/dev-mqtt-1&sig=WaLyp%2BETCTtWnSzDcFiU4syM9W2RCaYoUHdkggk9cnQ%3D&skn=registration&se=1795913509").unwrap();
        assert!(t.verify(&key, 0).is_ok());
        assert_eq!(t.resource_raw(), "0ne0000CAP1/registrations/dev-mqtt-1");
    }

    #[test]
    fn captured_python_device_token_verifies_with_encoded_sr_and_no_skn() {
        let key = SharedAccessKey::from_base64(KEY7).unwrap();
        let t = SasToken::parse("SharedAccessSignature sr=0ne0000CAP1%2Fregistrations%2Fpy-dev-1&sig=l6%2BNtaqenwQzzEp05ON4OAP0gmwQiGUki4hxkr5AML8%3D&se=1795913537").unwrap();
        assert_eq!(t.key_name(), None);
        assert!(t.verify(&key, 0).is_ok());
        assert_eq!(t.resource(), "0ne0000cap1/registrations/py-dev-1");
    }

    #[test]
    fn re_encoding_sr_breaks_the_signature() {
        // The Python token's signature does not verify over the decoded sr: proof that
        // the server must HMAC the text as sent.
        let key = SharedAccessKey::from_base64(KEY7).unwrap();
        let t = SasToken::parse("SharedAccessSignature sr=0ne0000CAP1/registrations/py-dev-1&sig=l6%2BNtaqenwQzzEp05ON4OAP0gmwQiGUki4hxkr5AML8%3D&se=1795913537").unwrap();
        assert_eq!(t.verify(&key, 0), Err(SasError::SignatureMismatch));
    }

    #[test]
    fn wrong_key_and_malformed_tokens_are_refused() {
        let key = SharedAccessKey::from_base64(KEY7).unwrap();
        let other = SharedAccessKey::generate();
        let token = generate_token("host", &key, Some("p"), 2_000_000_000);
        let t = SasToken::parse(token.expose_secret()).unwrap();
        assert_eq!(t.verify(&other, 0), Err(SasError::SignatureMismatch));
        assert_eq!(SasToken::parse("Bearer x"), Err(SasError::NotSas));
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&se=1"),
            Err(SasError::MissingField("sig"))
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&sig=AA%3D%3D&se=soon"),
            Err(SasError::BadExpiry)
        );
    }

    #[test]
    fn group_key_derivation() {
        // Known answer computed independently with:
        // printf 'FirstDevice' | openssl dgst -sha256 -mac HMAC -macopt hexkey:$(base64 -d <<<KEY | xxd -p -c64) -binary | base64
        let group =
            SharedAccessKey::from_base64("O+H9VTcdJP0Tqkl7bh4nVG0OJNrAataMpuWB54D0VEc=").unwrap();
        let dev = derive_device_key(&group, "FirstDevice");
        assert_eq!(dev.to_base64().expose_secret(), DERIVED_FIRST_DEVICE);
        // Registration IDs are case-insensitive in DPS, but the derivation uses the text as is.
        let other = derive_device_key(&group, "firstdevice");
        assert_ne!(other.to_base64().expose_secret(), DERIVED_FIRST_DEVICE);
    }

    const DERIVED_FIRST_DEVICE: &str = include_str!("../tests/vectors/derived-first-device.txt");

    #[test]
    fn connection_string_round_trip_and_redaction() {
        let text = format!(
            "HostName=localhost:8443;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={KEY7}"
        );
        let cs: ConnectionString = text.parse().unwrap();
        assert_eq!(cs.host_name(), "localhost:8443");
        assert_eq!(cs.key_name(), "provisioningserviceowner");
        assert_eq!(cs.to_secret_string().expose_secret(), text);
        let shown = format!("{cs} {cs:?} {:?}", cs.key());
        assert!(!shown.contains(KEY7), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert_eq!(
            "SharedAccessKeyName=x;SharedAccessKey=AA=="
                .parse::<ConnectionString>()
                .err(),
            Some(SasError::MissingPart("HostName"))
        );
        assert_eq!(
            "HostName=h;SharedAccessKeyName=x;SharedAccessKey=!!"
                .parse::<ConnectionString>()
                .err(),
            Some(SasError::KeyNotBase64)
        );
    }

    #[test]
    fn connection_string_errors_never_show_a_key() {
        // A key pasted on its own, or run into the string without its name.
        let bare = KEY7.trim_end_matches('=');
        for text in [
            KEY7.to_owned(),
            bare.to_owned(),
            format!("HostName=h;SharedAccessKeyName=x;{bare}"),
        ] {
            let shown = text.parse::<ConnectionString>().err().unwrap().to_string();
            assert!(!shown.contains(bare), "{shown}");
        }
        assert_eq!(
            format!("HostName=h;SharedAccessKeyName=x;{bare}")
                .parse::<ConnectionString>()
                .err(),
            Some(SasError::BadPart(3))
        );
        // Two strings run together: refused, not the last one's parts quietly winning.
        let one = format!("HostName=h;SharedAccessKeyName=x;SharedAccessKey={KEY7}");
        assert_eq!(
            format!("{one};{one}").parse::<ConnectionString>().err(),
            Some(SasError::DuplicatePart("HostName"))
        );
        // A signature pasted without its name, with or without its padding.
        assert_eq!(
            SasToken::parse(&format!("SharedAccessSignature sr=a&{KEY7}&se=1")),
            Err(SasError::UnknownField(2))
        );
        assert_eq!(
            SasToken::parse(&format!("SharedAccessSignature sr=a&{bare}&se=1")),
            Err(SasError::FieldWithoutValue(2))
        );
        assert_eq!(
            SasError::FieldWithoutValue(2).to_string(),
            "SAS token field 2 is not name=value"
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&sr=b&sig=AA%3D%3D&se=1"),
            Err(SasError::BadField("sr"))
        );
    }
}
