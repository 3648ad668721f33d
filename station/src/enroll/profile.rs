//! Product profiles: one TOML file per product (`H/products/<name>.toml`; examples in
//! `fixtures/products/`). A profile says how units of the product get their identity and
//! what their enrollment in DPS looks like.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

use super::template::{Template, TemplateError};
use crate::ids::ProductName;

/// Why a profile is not valid. Names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read product profile {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Syntax, unknown key, wrong type or bad value.
    #[error("{path}: key `{key}`: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Dotted key path.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The file name is not a valid product name.
    #[error("{path}: the file name must be a product name: {message}")]
    Name {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// How units of the product prove who they are.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Attestation {
    /// The unit's TPM: EK (and SRK) read through the fixture's TCTI.
    Tpm,
    /// The unit makes a key over the serial link and gets a certificate from the station CA.
    X509Link,
    /// The unit's PKCS#11 secure element makes the key; the station CA certifies it.
    X509Pkcs11 {
        /// The element's PKCS#11 module.
        module: PathBuf,
        /// Token label pattern (a regex); empty: the only token present.
        #[serde(default)]
        token: String,
        /// File holding the element's user PIN (relative to the home).
        #[serde(default)]
        pin_file: Option<PathBuf>,
        /// Environment variable holding the element's user PIN.
        #[serde(default)]
        pin_env: Option<String>,
    },
    /// A per-unit random symmetric key from the HSM, injected over the link.
    SymmetricIndividual,
    /// A per-unit key derived in the HSM from the enrollment group's key, injected over the link.
    SymmetricGroup,
}

impl Attestation {
    /// The kind as written in profiles.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Attestation::Tpm => "tpm",
            Attestation::X509Link => "x509-link",
            Attestation::X509Pkcs11 { .. } => "x509-pkcs11",
            Attestation::SymmetricIndividual => "symmetric-individual",
            Attestation::SymmetricGroup => "symmetric-group",
        }
    }
}

/// Individual enrollment per unit, or one group for all units.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Enrollment {
    /// One individual enrollment per unit.
    Individual,
    /// One enrollment group the station creates and keeps up to date.
    Group {
        /// The group's ID in DPS.
        group_id: String,
    },
}

/// DPS allocation policy.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AllocationPolicy {
    /// Evenly weighted hash over the hubs (the DPS default).
    #[default]
    Hashed,
    /// Lowest latency.
    GeoLatency,
    /// Exactly one hub.
    Static,
    /// A webhook decides.
    Custom,
}

/// `[allocation]`
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    /// The policy.
    #[serde(default)]
    pub policy: AllocationPolicy,
    /// Hubs to allocate among; empty: every linked hub.
    #[serde(default)]
    pub iot_hubs: Vec<String>,
    /// Webhook for `custom`.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Webhook API version for `custom` (default `2021-10-01`, the service API the station
    /// speaks; the same for individual enrollments and groups).
    #[serde(default)]
    pub webhook_api_version: Option<String>,
}

/// What DPS does when a unit registers again.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Reprovision {
    /// Move to the new hub and migrate the twin (DPS default).
    #[default]
    Migrate,
    /// Move and reset the twin to the initial twin.
    Reset,
    /// Never move.
    Never,
}

/// Whether the enrollment is active.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ProvisioningStatus {
    /// Units may register.
    #[default]
    Enabled,
    /// Units are refused.
    Disabled,
}

/// `[initial_twin]`: tags and desired properties; string values may hold placeholders, other
/// TOML types (integers, floats, booleans, arrays, tables) keep their type.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InitialTwin {
    /// Twin tags.
    #[serde(default)]
    pub tags: toml::Table,
    /// Desired properties.
    #[serde(default)]
    pub desired: toml::Table,
}

/// One product profile as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductProfile {
    /// The product's model name (shown and available as `{model}` unless the unit reports one).
    #[serde(default)]
    pub model: String,
    /// Regex that every serial of this product matches (whole scan).
    pub serial_pattern: String,
    /// The DPS target (a `[dps.targets.NAME]` of the station config).
    pub dps_target: String,
    /// Whether units may run with nobody logged on at the fixture.
    #[serde(default)]
    pub anonymous_runs: bool,
    /// How units prove who they are.
    pub attestation: Attestation,
    /// Individual or group enrollment.
    #[serde(default = "default_enrollment")]
    pub enrollment: Enrollment,
    /// Registration ID template; for `tpm` the default is the TPM rule (base32 of the EK hash).
    #[serde(default)]
    pub registration_id: Option<String>,
    /// Device ID template; default: the registration ID.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Enrollment provisioning status.
    #[serde(default)]
    pub provisioning_status: ProvisioningStatus,
    /// Whether units are IoT Edge devices.
    #[serde(default)]
    pub iot_edge: bool,
    /// Reprovision policy.
    #[serde(default)]
    pub reprovision: Reprovision,
    /// Allocation.
    #[serde(default)]
    pub allocation: Allocation,
    /// Initial twin.
    #[serde(default)]
    pub initial_twin: InitialTwin,
}

fn default_enrollment() -> Enrollment {
    Enrollment::Individual
}

/// A checked profile, ready to use.
#[derive(Debug, Clone)]
pub struct Product {
    /// The product's name (the file stem).
    pub name: ProductName,
    /// The profile as written.
    pub profile: ProductProfile,
    /// Compiled serial pattern.
    pub serial_pattern: Regex,
    /// Registration ID template; `None` for the TPM rule.
    pub registration_id: Option<Template>,
    /// Device ID template.
    pub device_id: Template,
    /// Where it was read from.
    pub path: PathBuf,
}

fn key_error(path: &Path, key: &str, message: impl Into<String>) -> ProfileError {
    ProfileError::Key {
        path: path.to_path_buf(),
        key: key.to_owned(),
        message: message.into(),
    }
}

fn check_twin_strings(path: &Path, prefix: &str, table: &toml::Table) -> Result<(), ProfileError> {
    for (k, v) in table {
        let key = format!("{prefix}.{k}");
        check_twin_value(path, &key, v)?;
    }
    Ok(())
}

fn check_twin_value(path: &Path, key: &str, v: &toml::Value) -> Result<(), ProfileError> {
    match v {
        toml::Value::String(s) => Template::parse(s)
            .map(|_| ())
            .map_err(|e| key_error(path, key, e.to_string())),
        toml::Value::Table(t) => check_twin_strings(path, key, t),
        toml::Value::Array(a) => a
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_twin_value(path, &format!("{key}[{i}]"), v)),
        toml::Value::Datetime(_) => Err(key_error(
            path,
            key,
            "TOML dates are not twin values; write the date as a string",
        )),
        _ => Ok(()),
    }
}

impl Product {
    /// Reads and checks `path`; the product's name is the file stem.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = ProductName::new(stem).map_err(|e| ProfileError::Name {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let value: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| key_error(path, "(syntax)", e.to_string().trim()))?;
        let profile: ProductProfile = serde_path_to_error::deserialize(toml::Value::Table(value))
            .map_err(|e| {
            let key = e.path().to_string();
            key_error(path, &key, e.into_inner().to_string())
        })?;
        Self::check(name, profile, path)
    }

    fn check(
        name: ProductName,
        profile: ProductProfile,
        path: &Path,
    ) -> Result<Self, ProfileError> {
        let serial_pattern = Regex::new(&format!("^(?:{})$", profile.serial_pattern))
            .map_err(|e| key_error(path, "serial_pattern", e.to_string()))?;
        let registration_id = match (&profile.registration_id, &profile.attestation) {
            (None, Attestation::Tpm) => None,
            (None, _) => Some(
                Template::parse("{serial}")
                    .map_err(|e| key_error(path, "registration_id", e.to_string()))?,
            ),
            (Some(t), _) => {
                let t = Template::parse(t)
                    .and_then(|t| {
                        t.forbid(&["registration_id", "manufactured_at", "operator"])
                            .map(|()| t)
                    })
                    .map_err(|e| key_error(path, "registration_id", e.to_string()))?;
                Some(t)
            }
        };
        let device_id =
            Template::parse(profile.device_id.as_deref().unwrap_or("{registration_id}"))
                .map_err(|e: TemplateError| key_error(path, "device_id", e.to_string()))?;
        if let Enrollment::Group { group_id } = &profile.enrollment {
            dps::EnrollmentGroupId::new(group_id.clone())
                .map_err(|e| key_error(path, "enrollment.group_id", e.to_string()))?;
            if matches!(
                profile.attestation,
                Attestation::Tpm | Attestation::SymmetricIndividual
            ) {
                return Err(key_error(
                    path,
                    "enrollment",
                    format!(
                        "{} units need individual enrollments (DPS has no TPM groups; symmetric-individual keys are per unit); use attestation symmetric-group, x509-link or x509-pkcs11 for a group",
                        profile.attestation.kind()
                    ),
                ));
            }
        } else if profile.attestation == Attestation::SymmetricGroup {
            return Err(key_error(
                path,
                "enrollment",
                "symmetric-group attestation needs `enrollment = { kind = \"group\", group_id = \"...\" }`",
            ));
        }
        let a = &profile.allocation;
        match a.policy {
            AllocationPolicy::Static if a.iot_hubs.len() != 1 => {
                return Err(key_error(
                    path,
                    "allocation.iot_hubs",
                    format!(
                        "static allocation needs exactly one hub, not {}",
                        a.iot_hubs.len()
                    ),
                ));
            }
            AllocationPolicy::Custom if a.webhook_url.is_none() => {
                return Err(key_error(
                    path,
                    "allocation.webhook_url",
                    "custom allocation needs a webhook URL",
                ));
            }
            _ => {}
        }
        if a.webhook_url.is_some() && a.policy != AllocationPolicy::Custom {
            return Err(key_error(
                path,
                "allocation.webhook_url",
                "a webhook is only used with policy = \"custom\"",
            ));
        }
        check_twin_strings(path, "initial_twin.tags", &profile.initial_twin.tags)?;
        check_twin_strings(path, "initial_twin.desired", &profile.initial_twin.desired)?;
        Ok(Self {
            name,
            serial_pattern,
            registration_id,
            device_id,
            path: path.to_path_buf(),
            profile,
        })
    }

    /// Renders the initial twin for a unit: placeholders filled, other types kept.
    #[must_use]
    pub fn render_twin(
        &self,
        values: &BTreeMap<&str, String>,
    ) -> (serde_json::Value, serde_json::Value) {
        let render = |t: &toml::Table| serde_json::Value::Object(render_table(t, values));
        (
            render(&self.profile.initial_twin.tags),
            render(&self.profile.initial_twin.desired),
        )
    }
}

fn render_table(
    t: &toml::Table,
    values: &BTreeMap<&str, String>,
) -> serde_json::Map<String, serde_json::Value> {
    t.iter()
        .map(|(k, v)| (k.clone(), render_value(v, values)))
        .collect()
}

fn render_value(v: &toml::Value, values: &BTreeMap<&str, String>) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::String(
            Template::parse(s).map_or_else(|_| s.clone(), |t| t.render(values)),
        ),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Value::from(*f),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Array(a) => {
            serde_json::Value::Array(a.iter().map(|v| render_value(v, values)).collect())
        }
        toml::Value::Table(t) => serde_json::Value::Object(render_table(t, values)),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
    }
}

/// Loads every `*.toml` in a directory, sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<Product>, ProfileError> {
    let read = |source| ProfileError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| Product::load(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, text: &str) -> Result<Product, ProfileError> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        Product::load(&p)
    }

    const GOOD: &str = r#"
model = "SA-100"
serial_pattern = "SA-[0-9]{6}"
dps_target = "local"
attestation = { kind = "x509-link" }
device_id = "{product}-{serial}"
reprovision = "reset"

[allocation]
policy = "hashed"
iot_hubs = ["hub-a.local", "hub-b.local"]

[initial_twin.tags]
lot = "{lot}"
site = "plant 7"
line = 3

[initial_twin.desired]
telemetry = { interval_s = 60, enabled = true }
fw_expected = "{fw_version}"
"#;

    #[test]
    fn a_full_profile_loads_and_renders_a_typed_twin() {
        let p = load("sensor-a", GOOD).unwrap();
        assert_eq!(p.name.as_str(), "sensor-a");
        assert!(p.serial_pattern.is_match("SA-000001"));
        assert!(!p.serial_pattern.is_match("xSA-000001"));
        assert_eq!(p.registration_id.as_ref().unwrap().source(), "{serial}");
        let mut v = BTreeMap::new();
        v.insert("lot", "L1".to_owned());
        v.insert("fw_version", "1.2.3".to_owned());
        let (tags, desired) = p.render_twin(&v);
        assert_eq!(
            tags,
            serde_json::json!({"lot": "L1", "site": "plant 7", "line": 3})
        );
        assert_eq!(
            desired,
            serde_json::json!({"telemetry": {"interval_s": 60, "enabled": true}, "fw_expected": "1.2.3"})
        );
        assert_eq!(p.profile.reprovision, Reprovision::Reset);
    }

    #[test]
    fn tpm_defaults_to_the_ek_rule() {
        let p = load(
            "tpm-unit",
            "serial_pattern = \".+\"\ndps_target = \"local\"\nattestation = { kind = \"tpm\" }\n",
        )
        .unwrap();
        assert!(p.registration_id.is_none());
    }

    #[test]
    fn bad_profiles_name_the_key() {
        let cases = [
            (GOOD.replace("x509-link", "x509-usb"), "attestation"),
            (
                GOOD.replace("\"{lot}\"", "\"{lott}\""),
                "initial_twin.tags.lot",
            ),
            (GOOD.replace("SA-[0-9]{6}", "SA-[0-9"), "serial_pattern"),
            (
                GOOD.replace("policy = \"hashed\"", "policy = \"static\""),
                "allocation.iot_hubs",
            ),
            (format!("colour = \"red\"\n{GOOD}"), "colour"),
            (
                GOOD.replace("{ kind = \"x509-link\" }", "{ kind = \"symmetric-group\" }"),
                "enrollment",
            ),
        ];
        for (text, key) in cases {
            let e = load("p", &text).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
            assert!(e.contains("p.toml"), "{e}");
        }
        let e = load("bad name", GOOD).unwrap_err().to_string();
        assert!(e.contains("product name"), "{e}");
    }
}

#[cfg(test)]
mod examples {
    /// The example profiles shipped in `fixtures/products/` load and pass every check.
    #[test]
    fn shipped_examples_load() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/products");
        let products = super::load_dir(&dir).unwrap();
        let kinds: Vec<&str> = products
            .iter()
            .map(|p| p.profile.attestation.kind())
            .collect();
        assert_eq!(
            kinds,
            vec![
                "x509-pkcs11",
                "symmetric-individual",
                "symmetric-group",
                "tpm",
                "x509-link"
            ]
        );
    }
}
