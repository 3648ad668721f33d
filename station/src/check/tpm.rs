//! Checks of the TPM step: the genuineness policy, the vendor roots, and each configured TPM.

use std::time::Duration;

use super::{CheckLine, Report};
use crate::config::Config;
use crate::home::Home;
use crate::tpm::{self, TpmConfig};

pub(super) fn run(home: &Home, config: &Config, report: &mut Report) {
    let tpm = &config.tpm;
    report.lines.push(policy_line(tpm));
    trust_lines(home, tpm, report);
    if let Some(tcti) = &tpm.tcti {
        report.lines.push(tcti_line("tpm", tcti, tpm));
    }
}

fn policy_line(tpm: &TpmConfig) -> CheckLine {
    if tpm.allow_software_tpm {
        CheckLine::warn(
            "tpm rules",
            "SOFTWARE TPMs ARE ALLOWED (tpm.allow_software_tpm = true): units may leave without a hardware-protected identity; never use this in production",
        )
    } else {
        CheckLine::ok(
            "tpm rules",
            format!(
                "software TPMs refused; EK certificate {}",
                if tpm.require_ek_cert {
                    "required"
                } else {
                    "optional"
                }
            ),
        )
    }
}

fn trust_lines(home: &Home, tpm: &TpmConfig, report: &mut Report) {
    let dir = home.resolve(&tpm.trust_dir);
    match tpm::TrustStore::load(&dir) {
        Err(e) => report.lines.push(CheckLine::fail(
            "tpm trust",
            format!("{e}; run `station init`"),
        )),
        Ok(store) => {
            for w in store.warnings() {
                report.lines.push(CheckLine::warn("tpm trust", w.clone()));
            }
            report.lines.push(if store.is_empty() && tpm.require_ek_cert {
                CheckLine::warn(
                    "tpm trust",
                    format!(
                        "{} holds no TPM vendor CA certificate: every TPM unit will be refused; add your TPM vendors' EK roots",
                        dir.display()
                    ),
                )
            } else {
                CheckLine::ok(
                    "tpm trust",
                    format!("{} certificate(s) in {}", store.len(), dir.display()),
                )
            });
        }
    }
}

/// The check line of one TPM reached by `tcti`. A unit's TPM may legitimately be absent when no
/// unit sits on the fixture, so an unreachable TPM warns rather than fails.
#[must_use]
pub fn tcti_line(name: &str, tcti: &str, tpm: &TpmConfig) -> CheckLine {
    let timeout = Duration::from_secs(tpm.timeout_secs.clamp(1, 10));
    match tpm::probe(tcti, timeout) {
        Err(e) => CheckLine::warn(name, format!("{e}")),
        Ok(props) => {
            let what = format!(
                "{tcti} reachable: manufacturer {:?}, vendor {:?}",
                props.manufacturer, props.vendor
            );
            match tpm::software_tpm_sign(&props, None) {
                Some(sign) if tpm.allow_software_tpm => CheckLine::warn(
                    name,
                    format!("{what}; SOFTWARE TPM ({sign}) in use, allowed by configuration"),
                ),
                Some(sign) => CheckLine::warn(
                    name,
                    format!("{what}; SOFTWARE TPM ({sign}): its units will be refused"),
                ),
                None => CheckLine::ok(name, what),
            }
        }
    }
}
