//! Recognising software TPMs.

use super::ek_cert::EkCertInfo;
use super::read::TpmProperties;

/// Why this TPM looks like a software TPM, or `None` when nothing says so.
///
/// libtpms (behind swtpm) reports vendor string "SW TPM"; the TCG/Microsoft reference
/// implementation behind the `mssim` simulators reports manufacturer "IBM", which no discrete
/// TPM ships with; swtpm's certificate tool writes model "swtpm" into EK certificates.
#[must_use]
pub fn software_tpm_sign(props: &TpmProperties, cert: Option<&EkCertInfo>) -> Option<String> {
    let vendor = props.vendor.to_ascii_uppercase().replace(' ', "");
    if vendor == "SWTPM" {
        return Some(format!("TPM vendor string \"{}\"", props.vendor));
    }
    if props.manufacturer == "IBM" {
        return Some("TPM manufacturer \"IBM\" (reference simulator)".into());
    }
    if let Some(model) = cert.and_then(|c| c.model.as_deref())
        && model.eq_ignore_ascii_case("swtpm")
    {
        return Some(format!("EK certificate model \"{model}\""));
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn props(manufacturer: &str, vendor: &str) -> TpmProperties {
        TpmProperties {
            manufacturer: manufacturer.into(),
            vendor: vendor.into(),
            firmware_version: (0, 0),
            nv_buffer_max: 1024,
        }
    }

    #[test]
    fn hardware_vendors_pass() {
        assert_eq!(software_tpm_sign(&props("IFX", "SLB9670"), None), None);
        assert_eq!(software_tpm_sign(&props("STM", "ST33"), None), None);
    }

    #[test]
    fn software_signs_are_named() {
        assert!(
            software_tpm_sign(&props("IBM", "SW TPM"), None)
                .unwrap()
                .contains("SW TPM")
        );
        assert!(
            software_tpm_sign(&props("IBM", "xCG fTPM"), None)
                .unwrap()
                .contains("IBM")
        );
        let info = EkCertInfo {
            subject: String::new(),
            issuer: String::new(),
            not_after: String::new(),
            manufacturer: None,
            model: Some("swtpm".into()),
            version: None,
        };
        assert!(
            software_tpm_sign(&props("XYZ", "Z"), Some(&info))
                .unwrap()
                .contains("swtpm")
        );
    }
}
