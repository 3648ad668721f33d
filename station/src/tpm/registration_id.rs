//! The TPM registration ID rule of Azure's device SDKs.

use dps::ids::RegistrationId;
use sha2::{Digest, Sha256};

/// `lowercase(base32(SHA-256(EK TPM2B_PUBLIC)))` without `=` padding: 52 characters.
///
/// This is what the C and Node SDKs compute on the device (`load_registration_id()`,
/// `getRegistrationId()`), so the enrollment the station makes matches the unit's first
/// registration without the unit being told its ID.
#[must_use]
pub fn registration_id(ek_tpm2b_public: &[u8]) -> RegistrationId {
    let digest = Sha256::digest(ek_tpm2b_public);
    let text = data_encoding::BASE32_NOPAD
        .encode(&digest)
        .to_ascii_lowercase();
    // Base32 of 32 bytes is 52 characters of [a-z2-7]: always a valid registration ID.
    RegistrationId::new(text).unwrap_or_else(|_| unreachable!("base32 text is a valid id"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn check(ek_base64: &str, expected: &str) {
        let ek = base64::engine::general_purpose::STANDARD
            .decode(ek_base64)
            .unwrap();
        assert_eq!(ek.len(), 316, "an RSA-2048 EK TPM2B_PUBLIC is 316 bytes");
        assert_eq!(registration_id(&ek).as_str(), expected);
    }

    /// The EK and registration ID a C SDK device sent in azure-iot-sdk-c issue 271
    /// (`dps-protocol.md`).
    #[test]
    fn sdk_c_issue_271_vector() {
        check(
            "AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAgAAAAAAAEAopqgkUBwtpr1sCgVJcEZxsJtpmtOAt9K7SjGFe4hsp6DJ/dd2E5UFzBC+Jp8Fzqf5ukRBkqrAgIuAvHRsruIedk1uarJSLhbDpFLHxFd7iDNcYfrvdgVNT2T9zrvkh2y04WuRQg2D5qf0tZF82jeTjR/YJK7uWhaRwWOwZ3b1XD9l6wFOrwK/Ic0PEsjneFXQzL0n9uKyuHmHNz+wHppmOiMAabvnXXEin9ou7/iowY/+YhFm3j7atsVvxMI5HEM3Mq+W4imUuzPxVX7fZH+oWPKP5ofpWBTf+MdttGby1AjGnv8JE69JriOYoZG2/4qbsfv9M7a7NFrBlaW7Rt36w==",
            "6rek5qncnygnkzflohxz4u6zlfly6ktm4klsc7xrbgvesqyllnfa",
        );
    }

    /// A second device-side pair, from azure-iot-sdk-c issue 2286 (the SDK's
    /// `tpm_device_provision` tool output).
    #[test]
    fn sdk_c_issue_2286_vector() {
        check(
            "AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAgAAAAAAAEAtKEADl/sNRgmYAjP6gXmbccRaJoTnVixisUaek0OwAzFGN70xt9ZOYp6fhIwfcft3fdVKOrKpXYcTe72CGNkGJGlQz5ti9n2pQ0uJhcX8aefh4Onm7lVlUCQAVp1K0r6zI8vkEXWsBIvwvxk0eMJbFaq146kbTkJHIGczb89RkFH2TX+CgXeZOG9oXQzUNwktmTUacspamune5Wywc/ce8HsDFYchyUHogFhrZ/LPnzyTDXO8sSC5z5dvsUBtUME3iRYDyKgZOfBtmRMqQewD+4iH+ZEJjtsyJiWR8hFhyKROnOuqXfNFwjd5IcNU4wtlKO0cLyXmTOfQK6Da1pr5Q==",
            "y5wivfciikcievvnsbpkhzcahwm4chuzx6v4hnqnlqfs3fjf6rxa",
        );
    }
}
