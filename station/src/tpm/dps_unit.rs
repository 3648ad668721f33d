//! A unit's TPM answering DPS's TPM challenge, as the Azure device SDKs drive it
//! (`shared/notes/dps-tpm.md` F2): ActivateCredential with the EK (under a PolicySecret
//! session for the endorsement hierarchy) recovers the inner key; Import under the SRK (AES-128
//! CFB) and Load give the HMAC key; the unit's SAS token is signed with TPM2_HMAC. The key is
//! kept loaded (transient) rather than persisted at 0x81000100: this unit registers, then goes.
//!
//! Used where the unit itself is simulated (`unit-register`, the tests); the same steps are
//! what a TPM unit's firmware does on its first power-up in the field.

use std::convert::TryFrom as _;

use dps::client::device::TpmUnit;
use dps::tpm::split_blob;
use tss_esapi::Context;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{
    AuthHandle, KeyHandle, ObjectHandle, PersistentTpmHandle, SessionHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, EncryptedSecret, IdObject, MaxBuffer, Private, Public, SymmetricDefinition,
    SymmetricDefinitionObject,
};
use tss_esapi::traits::UnMarshall as _;

use super::TpmError;
use super::config::SRK_HANDLE;
use super::read::{connect, create_srk, list_handles, read_persistent};

/// The RSA EK's persistent handle.
pub const EK_HANDLE: u32 = 0x8101_0001;

/// A unit's TPM, open for DPS TPM attestation.
pub struct DpsTpmUnit {
    ctx: Context,
    ek: Vec<u8>,
    srk: Vec<u8>,
    key: Option<KeyHandle>,
}

impl std::fmt::Debug for DpsTpmUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpsTpmUnit")
            .field("key_loaded", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

fn tpm_err(what: &str) -> impl Fn(tss_esapi::Error) -> String + '_ {
    move |e| format!("{what} failed: {e}")
}

impl DpsTpmUnit {
    /// Opens the TPM at `tcti`, reading its EK and SRK; an absent SRK is made with the Azure
    /// SDK's template and persisted, as the SDKs do.
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let mut ctx = connect(tcti)?;
        let persistent = list_handles(&mut ctx, 0x8100_0000).map_err(TpmError::ListHandles)?;
        if !persistent.contains(&EK_HANDLE) {
            return Err(TpmError::EkAbsent { handle: EK_HANDLE });
        }
        let ek = read_persistent(&mut ctx, EK_HANDLE)?.bytes().to_vec();
        let srk = if persistent.contains(&SRK_HANDLE) {
            read_persistent(&mut ctx, SRK_HANDLE)?
        } else {
            create_srk(&mut ctx)?
        }
        .bytes()
        .to_vec();
        Ok(Self {
            ctx,
            ek,
            srk,
            key: None,
        })
    }

    fn persistent(&mut self, handle: u32) -> Result<ObjectHandle, String> {
        let h = PersistentTpmHandle::new(handle).map_err(tpm_err("naming a handle"))?;
        self.ctx
            .tr_from_tpm_public(TpmHandle::Persistent(h))
            .map_err(tpm_err("opening a persistent key"))
    }

    /// ActivateCredential: the inner key of the challenge.
    fn activate(&mut self, id_object: Vec<u8>, secret: Vec<u8>) -> Result<Vec<u8>, String> {
        let srk = self.persistent(SRK_HANDLE)?;
        let ek = self.persistent(EK_HANDLE)?;
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(tpm_err("starting a policy session"))?
            .ok_or("the TPM gave no policy session")?;
        let result = (|| {
            let policy =
                PolicySession::try_from(session).map_err(tpm_err("making a policy session"))?;
            self.ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.policy_secret(
                        policy,
                        AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })
                .map_err(tpm_err("PolicySecret(endorsement)"))?;
            let blob = IdObject::try_from(id_object).map_err(tpm_err("reading the credential"))?;
            let secret = EncryptedSecret::try_from(secret)
                .map_err(tpm_err("reading the credential seed"))?;
            self.ctx
                .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |c| {
                    c.activate_credential(KeyHandle::from(srk), KeyHandle::from(ek), blob, secret)
                })
                .map(|d| d.value().to_vec())
                .map_err(tpm_err("ActivateCredential"))
        })();
        let _ = self.ctx.flush_context(SessionHandle::from(session).into());
        result
    }
}

impl TpmUnit for DpsTpmUnit {
    fn endorsement_key(&self) -> &[u8] {
        &self.ek
    }

    fn storage_root_key(&self) -> &[u8] {
        &self.srk
    }

    fn import_key(&mut self, blob: &[u8]) -> Result<(), String> {
        let parts = split_blob(blob).map_err(|e| e.to_string())?;
        let inner = self.activate(parts.id_object, parts.encrypted_secret)?;
        let public =
            Public::unmarshall(&parts.public).map_err(tpm_err("reading the key's public area"))?;
        let srk = self.persistent(SRK_HANDLE)?;
        let duplicate =
            Private::try_from(parts.duplicate).map_err(tpm_err("reading the duplicate"))?;
        let seed = EncryptedSecret::try_from(parts.in_sym_seed)
            .map_err(tpm_err("reading the duplicate's seed"))?;
        let wrap = Data::try_from(inner).map_err(tpm_err("reading the inner key"))?;
        let private = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.import(
                    srk,
                    Some(wrap),
                    public.clone(),
                    duplicate,
                    seed,
                    SymmetricDefinitionObject::AES_128_CFB,
                )
            })
            .map_err(tpm_err("Import"))?;
        let loaded = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.load(KeyHandle::from(srk), private, public)
            })
            .map_err(tpm_err("Load"))?;
        // swtpm has no resource manager: the previous key goes before the next is used.
        if let Some(old) = self.key.replace(loaded) {
            let _ = self.ctx.flush_context(old.into());
        }
        Ok(())
    }

    fn sign(&mut self, data: &[u8]) -> Result<Vec<u8>, String> {
        let key = self.key.ok_or("no key was imported into the TPM")?;
        let buffer = MaxBuffer::try_from(data.to_vec()).map_err(tpm_err("preparing the data"))?;
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.hmac(key.into(), buffer, HashingAlgorithm::Sha256)
            })
            .map(|d| d.value().to_vec())
            .map_err(tpm_err("HMAC"))
    }
}

impl Drop for DpsTpmUnit {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            let _ = self.ctx.flush_context(k.into());
        }
    }
}
