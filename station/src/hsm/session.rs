//! A logged-in session on one token, and the key operations the station needs.

use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;

use super::error::HsmError;
use super::module::Hsm;
use super::pin::Pin;

/// DER of the OID prime256v1 (1.2.840.10045.3.1.7), the value of CKA_EC_PARAMS for P-256.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A logged-in session on one token. `Send` but not `Sync`: one per worker thread.
pub struct TokenSession {
    pub(super) session: Session,
    token: String,
    /// Session copies of the token keys this session uses again and again (see
    /// [`TokenSession::handle_for`]).
    hot: std::cell::RefCell<HotKeys>,
}

/// The label of a key's session copy: never one the station searches for, so a copy is
/// never mistaken for the token key it was made from (its CKA_ID is empty too).
pub(super) const SESSION_COPY_LABEL: &[u8] = b"station session copy";

/// Token keys used once so far, remembered to copy them on their second use.
const SEEN_ONCE: usize = 8;

#[derive(Default)]
struct HotKeys {
    /// Secret keys found by label (see `find_secret_key`).
    found: Vec<(String, ObjectHandle)>,
    /// Token key -> its session copy, or `None` where the module refused to copy it.
    copies: Vec<(ObjectHandle, Option<ObjectHandle>)>,
    /// Token keys used once (the last few).
    seen: std::collections::VecDeque<ObjectHandle>,
}

impl std::fmt::Debug for TokenSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSession")
            .field("token", &self.token)
            .finish()
    }
}

/// An EC key pair on the token: handles plus the public point read from it.
#[derive(Debug, Clone)]
pub struct EcKey {
    /// CKA_LABEL of both halves.
    pub label: String,
    /// CKA_ID shared by both halves.
    pub id: Vec<u8>,
    /// The private key object.
    pub private: ObjectHandle,
    /// Uncompressed SEC1 point `04 || X || Y`.
    pub point: Vec<u8>,
}

/// The protection attributes of a private key, as read one by one from the token.
/// `None` means the token did not report the attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyProtection {
    /// CKA_SENSITIVE.
    pub sensitive: Option<bool>,
    /// CKA_ALWAYS_SENSITIVE.
    pub always_sensitive: Option<bool>,
    /// CKA_EXTRACTABLE.
    pub extractable: Option<bool>,
    /// CKA_NEVER_EXTRACTABLE.
    pub never_extractable: Option<bool>,
    /// CKA_DECRYPT.
    pub decrypt: Option<bool>,
}

impl KeyProtection {
    /// What makes the key unfit for a CA (empty when it is fit).
    pub fn problems(&self) -> Vec<&'static str> {
        let mut p = Vec::new();
        if self.sensitive != Some(true) {
            p.push("not sensitive");
        }
        if self.extractable != Some(false) {
            p.push("extractable");
        }
        if self.never_extractable != Some(true) {
            p.push("was extractable once (never-extractable is false)");
        }
        p
    }

    /// One-line summary for `ca show` and `check`.
    pub fn summary(&self) -> String {
        let f = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unreported",
        };
        format!(
            "sensitive={} always-sensitive={} extractable={} never-extractable={} decrypt={}",
            f(self.sensitive),
            f(self.always_sensitive),
            f(self.extractable),
            f(self.never_extractable),
            f(self.decrypt)
        )
    }
}

impl TokenSession {
    /// Opens a read-write session on `slot` and logs in as the user, once.
    pub(crate) fn open(hsm: &Hsm, slot: Slot, token: &str, pin: &Pin) -> Result<Self, HsmError> {
        let session =
            hsm.context()
                .open_rw_session(slot)
                .map_err(|source| HsmError::OpenSession {
                    token: token.to_owned(),
                    source,
                })?;
        // One attempt only: a retry loop would burn the token's PIN counter and lock it.
        match session.login(UserType::User, Some(pin.auth())) {
            Ok(()) => {}
            // Login state is per application: another session of this process logged in.
            Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(P11Error::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(HsmError::PinIncorrect {
                    token: token.to_owned(),
                });
            }
            Err(P11Error::Pkcs11(RvError::PinLocked, _)) => {
                return Err(HsmError::PinLocked {
                    token: token.to_owned(),
                });
            }
            Err(source) => {
                return Err(HsmError::Login {
                    token: token.to_owned(),
                    source,
                });
            }
        }
        Ok(Self {
            session,
            token: token.to_owned(),
            hot: std::cell::RefCell::default(),
        })
    }

    /// The token's label (or serial) as configured.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The handle to sign, MAC or seal with `key` (a token key): from its second use in this
    /// session on, a copy of it as a session object.
    ///
    /// SoftHSM re-reads a token object's file (open, lock, read, close) on every operation
    /// that uses it, in case another process changed it; a session object lives in the
    /// module's memory. On this project's VM an ECDSA P-256 sign with the CA key took 86 µs
    /// through the token object and 75 µs through its copy, an HMAC-SHA256 audit seal 28 and
    /// 9 µs. The copy keeps the key's protection: PKCS#11 lets C_CopyObject only tighten
    /// CKA_SENSITIVE and CKA_EXTRACTABLE, so the copy is as unexportable as the key, it never
    /// leaves the module, and it is gone when the session closes. Keys used once (a unit's
    /// own key in its secure element) are not copied. Where the module refuses the copy (no
    /// C_CopyObject, or a key made CKA_COPYABLE false), the token key is used as before.
    fn handle_for(&self, key: ObjectHandle) -> ObjectHandle {
        let mut hot = self.hot.borrow_mut();
        if let Some((_, copy)) = hot.copies.iter().find(|(k, _)| *k == key) {
            return copy.unwrap_or(key);
        }
        if !hot.seen.contains(&key) {
            if hot.seen.len() == SEEN_ONCE {
                hot.seen.pop_front();
            }
            hot.seen.push_back(key);
            return key;
        }
        hot.seen.retain(|k| *k != key);
        let template = [
            Attribute::Token(false),
            Attribute::Label(SESSION_COPY_LABEL.to_vec()),
            Attribute::Id(Vec::new()),
        ];
        let copy = match crate::timing::hardware(|| self.session.copy_object(key, &template)) {
            Ok(copy) => Some(copy),
            Err(e) => {
                tracing::debug!(token = %self.token, "key used through the token object (no session copy: {e})");
                None
            }
        };
        hot.copies.push((key, copy));
        copy.unwrap_or(key)
    }

    /// Forgets a token key this session found or copied (about to be destroyed, or found
    /// gone), and destroys its session copy.
    fn forget(&self, key: ObjectHandle) {
        let mut hot = self.hot.borrow_mut();
        hot.found.retain(|(_, k)| *k != key);
        hot.seen.retain(|k| *k != key);
        if let Some(i) = hot.copies.iter().position(|(k, _)| *k == key)
            && let (_, Some(copy)) = hot.copies.remove(i)
        {
            // Best effort: the copy goes with the session anyway.
            let _ = self.session.destroy_object(copy);
        }
    }

    fn find(&self, template: &[Attribute]) -> Result<Vec<ObjectHandle>, HsmError> {
        self.session
            .find_objects(template)
            .map_err(|source| HsmError::FindObjects {
                token: self.token.clone(),
                source,
            })
    }

    fn one(&self, found: Vec<ObjectHandle>, label: &str) -> Result<ObjectHandle, HsmError> {
        match found.as_slice() {
            [] => Err(HsmError::KeyNotFound {
                token: self.token.clone(),
                label: label.to_owned(),
            }),
            [h] => Ok(*h),
            many => Err(HsmError::KeyAmbiguous {
                token: self.token.clone(),
                label: label.to_owned(),
                count: many.len(),
            }),
        }
    }

    /// Finds the EC key pair with this label (private key by CKA_LABEL, public key by its CKA_ID).
    pub fn find_ec_key(&self, label: &str) -> Result<EcKey, HsmError> {
        let private = self.one(
            self.find(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Label(label.as_bytes().to_vec()),
            ])?,
            label,
        )?;
        let attrs = self
            .session
            .get_attributes(private, &[AttributeType::Id])
            .map_err(|source| HsmError::ReadAttributes {
                label: label.to_owned(),
                source,
            })?;
        let id = attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::Id(v) => Some(v),
                _ => None,
            })
            .unwrap_or_default();
        let public = self.one(
            self.find(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Id(id.clone()),
            ])?,
            label,
        )?;
        let point = self.ec_point(public, label)?;
        Ok(EcKey {
            label: label.to_owned(),
            id,
            private,
            point,
        })
    }

    /// Whether an object of this class (private or secret key) with this label exists.
    pub fn has_key(&self, label: &str, class: ObjectClass) -> Result<bool, HsmError> {
        Ok(!self
            .find(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ])?
            .is_empty())
    }

    fn ec_point(&self, public: ObjectHandle, label: &str) -> Result<Vec<u8>, HsmError> {
        let attrs = self
            .session
            .get_attributes(public, &[AttributeType::EcPoint, AttributeType::EcParams])
            .map_err(|source| HsmError::ReadAttributes {
                label: label.to_owned(),
                source,
            })?;
        let mut point = None;
        let mut params = None;
        for a in attrs {
            match a {
                Attribute::EcPoint(v) => point = Some(v),
                Attribute::EcParams(v) => params = Some(v),
                _ => {}
            }
        }
        let bad = || HsmError::PublicKeyFormat {
            label: label.to_owned(),
        };
        if params.as_deref() != Some(&P256_PARAMS[..]) {
            return Err(bad());
        }
        let raw = point.ok_or_else(bad)?;
        // CKA_EC_POINT is a DER OCTET STRING around the SEC1 point (04 41 04 X Y for P-256).
        let inner = match raw.as_slice() {
            [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest.to_vec(),
            // Some modules return the bare point; accept that too.
            [0x04, ..] if raw.len() == 65 => raw.clone(),
            _ => return Err(bad()),
        };
        if inner.first() != Some(&0x04) {
            return Err(bad());
        }
        Ok(inner)
    }

    /// Reads CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_NEVER_EXTRACTABLE etc. one at a time, because
    /// a batched read may silently drop attributes the token will not report.
    pub fn key_protection(&self, key: &EcKey) -> Result<KeyProtection, HsmError> {
        let read = |t: AttributeType| -> Result<Option<bool>, HsmError> {
            let attrs = self
                .session
                .get_attributes(key.private, &[t])
                .map_err(|source| HsmError::ReadAttributes {
                    label: key.label.clone(),
                    source,
                })?;
            Ok(attrs.into_iter().find_map(|a| match a {
                Attribute::Sensitive(b)
                | Attribute::AlwaysSensitive(b)
                | Attribute::Extractable(b)
                | Attribute::NeverExtractable(b)
                | Attribute::Decrypt(b) => Some(b),
                _ => None,
            }))
        };
        Ok(KeyProtection {
            sensitive: read(AttributeType::Sensitive)?,
            always_sensitive: read(AttributeType::AlwaysSensitive)?,
            extractable: read(AttributeType::Extractable)?,
            never_extractable: read(AttributeType::NeverExtractable)?,
            decrypt: read(AttributeType::Decrypt)?,
        })
    }

    /// Refuses a key that could leave the token.
    pub fn require_protected(&self, key: &EcKey) -> Result<KeyProtection, HsmError> {
        let prot = self.key_protection(key)?;
        let problems = prot.problems();
        if problems.is_empty() {
            Ok(prot)
        } else {
            Err(HsmError::KeyNotProtected {
                label: key.label.clone(),
                problems: problems.join(", "),
            })
        }
    }

    fn random(&self, len: u32) -> Result<Vec<u8>, HsmError> {
        self.session
            .generate_random_vec(len)
            .map_err(|source| HsmError::Random {
                token: self.token.clone(),
                source,
            })
    }

    /// Generates a P-256 key pair that is sensitive, never extractable and sign-only.
    pub fn generate_p256(&self, label: &str) -> Result<EcKey, HsmError> {
        if self.has_key(label, ObjectClass::PRIVATE_KEY)? {
            return Err(HsmError::KeyExists {
                token: self.token.clone(),
                label: label.to_owned(),
            });
        }
        let id = self.random(16)?;
        let lbl = label.as_bytes().to_vec();
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Label(lbl.clone()),
            Attribute::Id(id.clone()),
        ];
        // SoftHSM turns on decrypt/unwrap/derive for EC keys unless told otherwise.
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(lbl),
            Attribute::Id(id),
        ];
        self.session
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .map_err(|source| HsmError::GenerateKey {
                token: self.token.clone(),
                label: label.to_owned(),
                source,
            })?;
        self.find_ec_key(label)
    }

    /// Every object (any class) with this label: keys, certificates, data.
    pub fn objects_labelled(&self, label: &str) -> Result<Vec<ObjectHandle>, HsmError> {
        self.find(&[Attribute::Label(label.as_bytes().to_vec())])
    }

    /// Deletes every object with this label (supervisor rework of a unit's element).
    pub fn destroy_labelled(&self, label: &str) -> Result<usize, HsmError> {
        let found = self.objects_labelled(label)?;
        for h in &found {
            self.forget(*h);
            self.session
                .destroy_object(*h)
                .map_err(|source| HsmError::DestroyObject {
                    token: self.token.clone(),
                    label: label.to_owned(),
                    source,
                })?;
        }
        Ok(found.len())
    }

    /// Stores an X.509 certificate as a token object under the key's CKA_ID and label, so
    /// the unit's software finds certificate and key together.
    pub fn store_certificate(
        &self,
        key: &EcKey,
        der: &[u8],
        subject_der: &[u8],
    ) -> Result<ObjectHandle, HsmError> {
        let template = [
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(cryptoki::object::CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(key.label.as_bytes().to_vec()),
            Attribute::Id(key.id.clone()),
            Attribute::Subject(subject_der.to_vec()),
            Attribute::Value(der.to_vec()),
        ];
        self.session
            .create_object(&template)
            .map_err(|source| HsmError::CreateObject {
                token: self.token.clone(),
                label: key.label.clone(),
                source,
            })
    }

    /// The DER of every certificate object stored under this CKA_ID.
    pub fn certificates_with_id(&self, id: &[u8]) -> Result<Vec<Vec<u8>>, HsmError> {
        let found = self.find(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Id(id.to_vec()),
        ])?;
        let mut out = Vec::new();
        for h in found {
            let attrs = self
                .session
                .get_attributes(h, &[AttributeType::Value])
                .map_err(|source| HsmError::ReadAttributes {
                    label: hex::encode(id),
                    source,
                })?;
            out.extend(attrs.into_iter().filter_map(|a| match a {
                Attribute::Value(v) => Some(v),
                _ => None,
            }));
        }
        Ok(out)
    }

    /// Raw ECDSA over a SHA-256 digest computed by the caller (SoftHSM has only CKM_ECDSA);
    /// returns the token's `r || s`.
    pub fn sign_digest(&self, key: &EcKey, digest: &[u8]) -> Result<Vec<u8>, HsmError> {
        let out = crate::timing::hardware(|| {
            self.session
                .sign(&Mechanism::Ecdsa, self.handle_for(key.private), digest)
        });
        self.used(key.private, out)
            .map_err(|source| HsmError::Sign {
                label: key.label.clone(),
                source,
            })
    }

    /// Finds the generic secret key used for HMAC with this label.
    ///
    /// Found once per session: SoftHSM's C_FindObjects re-reads every object's file of the
    /// token (133 µs on a token of four keys, on this project's VM), and the uploader and
    /// the fixtures look up the audit, outbox and group keys on every unit or pass. The
    /// station never destroys a secret key while it runs; a key found gone when used is
    /// looked up again next time (see `used`), and a session is opened anew after an HSM
    /// restart.
    pub fn find_secret_key(&self, label: &str) -> Result<ObjectHandle, HsmError> {
        if let Some((_, key)) = self.hot.borrow().found.iter().find(|(l, _)| l == label) {
            return Ok(*key);
        }
        let key = self.one(
            self.find(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])?,
            label,
        )?;
        self.hot.borrow_mut().found.push((label.to_owned(), key));
        Ok(key)
    }

    /// Passes on the result of an operation with `key`, forgetting the key where the module
    /// answered that it is gone (deleted by another tool): the next lookup finds it anew.
    fn used<T>(&self, key: ObjectHandle, out: Result<T, P11Error>) -> Result<T, P11Error> {
        if let Err(P11Error::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _)) =
            &out
        {
            self.forget(key);
        }
        out
    }

    /// Generates a 256-bit non-extractable HMAC-SHA256 key (sign/verify only).
    pub fn generate_hmac_key(&self, label: &str) -> Result<ObjectHandle, HsmError> {
        if self.has_key(label, ObjectClass::SECRET_KEY)? {
            return Err(HsmError::KeyExists {
                token: self.token.clone(),
                label: label.to_owned(),
            });
        }
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        self.session
            .generate_key(&Mechanism::GenericSecretKeyGen, &template)
            .map_err(|source| HsmError::GenerateKey {
                token: self.token.clone(),
                label: label.to_owned(),
                source,
            })
    }

    /// HMAC-SHA256 of `data` computed inside the token.
    pub fn hmac_sha256(
        &self,
        key: ObjectHandle,
        label: &str,
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let out = crate::timing::hardware(|| {
            self.session
                .sign(&Mechanism::Sha256Hmac, self.handle_for(key), data)
        });
        self.used(key, out).map_err(|source| HsmError::Sign {
            label: label.to_owned(),
            source,
        })
    }
}

/// Which AES key length `generate_aes256_key` makes, in bytes.
const AES256_BYTES: u64 = 32;

/// Length of the AES-GCM tag the station asks for, in bits (the full 128).
const GCM_TAG_BITS: u64 = 128;

/// Key type and length of a secret key, as the token reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretKeyInfo {
    /// CKA_KEY_TYPE.
    pub key_type: Option<KeyType>,
    /// CKA_VALUE_LEN in bytes.
    pub value_len: Option<u64>,
}

// The operations of the symmetric-key line (group keys, derived unit keys, outbox sealing).
// Added as new methods so the CA's existing ones stay untouched.
impl TokenSession {
    /// `len` bytes from the token's RNG (C_GenerateRandom), into a buffer wiped on drop.
    pub fn random_bytes(&self, len: usize) -> Result<zeroize::Zeroizing<Vec<u8>>, HsmError> {
        let mut buf = zeroize::Zeroizing::new(vec![0u8; len]);
        crate::timing::hardware(|| self.session.generate_random_slice(&mut buf)).map_err(
            |source| HsmError::Random {
                token: self.token.clone(),
                source,
            },
        )?;
        Ok(buf)
    }

    /// Imports `value` as a token secret key (CKK_GENERIC_SECRET) that is sensitive, not
    /// extractable and good for HMAC signing only (no verify, encrypt, wrap or derive).
    /// PKCS#11 marks an imported key never-extractable = false and always-sensitive = false:
    /// it was in the clear once, which is true of a DPS group key in transit.
    pub fn import_hmac_key(
        &self,
        label: &str,
        id: &[u8],
        value: &[u8],
    ) -> Result<ObjectHandle, HsmError> {
        if self.has_key(label, ObjectClass::SECRET_KEY)? {
            return Err(HsmError::KeyExists {
                token: self.token.clone(),
                label: label.to_owned(),
            });
        }
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Verify(false),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Modifiable(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
            Attribute::Value(value.to_vec()),
        ];
        self.session
            .create_object(&template)
            .map_err(|source| HsmError::CreateObject {
                token: self.token.clone(),
                label: label.to_owned(),
                source,
            })
    }

    /// Generates a 256-bit AES key that is sensitive, never extractable, and good for
    /// encrypt/decrypt only.
    pub fn generate_aes256_key(&self, label: &str) -> Result<ObjectHandle, HsmError> {
        if self.has_key(label, ObjectClass::SECRET_KEY)? {
            return Err(HsmError::KeyExists {
                token: self.token.clone(),
                label: label.to_owned(),
            });
        }
        let id = self.random(16)?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(AES256_BYTES.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id),
        ];
        self.session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|source| HsmError::GenerateKey {
                token: self.token.clone(),
                label: label.to_owned(),
                source,
            })
    }

    /// AES-GCM encryption inside the token with a 128-bit tag appended to the ciphertext.
    /// Returns the module's error as is: the caller names the operation in its own error.
    pub fn aes_gcm_encrypt(
        &self,
        key: ObjectHandle,
        iv: &[u8],
        aad: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, P11Error> {
        // GcmParams wants a mutable IV (some modules write a generated IV back).
        let mut iv = iv.to_vec();
        let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into())?;
        let handle = self.handle_for(key);
        let out = crate::timing::hardware(|| {
            self.session
                .encrypt(&Mechanism::AesGcm(params), handle, plain)
        });
        self.used(key, out)
    }

    /// AES-GCM decryption inside the token; fails when the tag does not authenticate the
    /// ciphertext and `aad`. The plaintext comes back in a buffer wiped on drop.
    pub fn aes_gcm_decrypt(
        &self,
        key: ObjectHandle,
        iv: &[u8],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, P11Error> {
        let mut iv = iv.to_vec();
        let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into())?;
        let out = self
            .session
            .decrypt(&Mechanism::AesGcm(params), self.handle_for(key), sealed);
        self.used(key, out).map(zeroize::Zeroizing::new)
    }

    /// The protection attributes of any key object, read one at a time (see `key_protection`).
    pub fn object_protection(
        &self,
        key: ObjectHandle,
        label: &str,
    ) -> Result<KeyProtection, HsmError> {
        let read = |t: AttributeType| -> Result<Option<bool>, HsmError> {
            let attrs = self.session.get_attributes(key, &[t]).map_err(|source| {
                HsmError::ReadAttributes {
                    label: label.to_owned(),
                    source,
                }
            })?;
            Ok(attrs.into_iter().find_map(|a| match a {
                Attribute::Sensitive(b)
                | Attribute::AlwaysSensitive(b)
                | Attribute::Extractable(b)
                | Attribute::NeverExtractable(b)
                | Attribute::Decrypt(b) => Some(b),
                _ => None,
            }))
        };
        Ok(KeyProtection {
            sensitive: read(AttributeType::Sensitive)?,
            always_sensitive: read(AttributeType::AlwaysSensitive)?,
            extractable: read(AttributeType::Extractable)?,
            never_extractable: read(AttributeType::NeverExtractable)?,
            decrypt: read(AttributeType::Decrypt)?,
        })
    }

    /// Key type and length of a secret key.
    pub fn secret_key_info(
        &self,
        key: ObjectHandle,
        label: &str,
    ) -> Result<SecretKeyInfo, HsmError> {
        let attrs = self
            .session
            .get_attributes(key, &[AttributeType::KeyType, AttributeType::ValueLen])
            .map_err(|source| HsmError::ReadAttributes {
                label: label.to_owned(),
                source,
            })?;
        let mut info = SecretKeyInfo {
            key_type: None,
            value_len: None,
        };
        for a in attrs {
            match a {
                Attribute::KeyType(t) => info.key_type = Some(t),
                Attribute::ValueLen(n) => info.value_len = Some(u64::from(n)),
                _ => {}
            }
        }
        Ok(info)
    }

    /// Whether the secret key may be read out in the clear: true if the token would hand
    /// over CKA_VALUE. Used by tests and `check` to prove it does not.
    pub fn secret_value_readable(&self, key: ObjectHandle) -> bool {
        matches!(
            self.session.get_attributes(key, &[AttributeType::Value]),
            Ok(attrs) if attrs.iter().any(|a| matches!(a, Attribute::Value(_)))
        )
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
impl TokenSession {
    /// Test-only: an EC key that was generated extractable and not sensitive, the kind of
    /// key a careless import leaves behind, so the refusal can be shown.
    pub(crate) fn generate_extractable_p256_for_test(&self, label: &str) -> EcKey {
        let id = self.random(16).expect("random");
        let lbl = label.as_bytes().to_vec();
        let public = [
            Attribute::Token(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Verify(true),
            Attribute::Label(lbl.clone()),
            Attribute::Id(id.clone()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Sign(true),
            Attribute::Label(lbl),
            Attribute::Id(id),
        ];
        self.session
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .expect("generate extractable key");
        self.find_ec_key(label).expect("find")
    }
}
