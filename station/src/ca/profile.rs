//! Certificate profiles: what each kind of certificate the station makes looks like.
//! Sources live in `ca/profiles/*.toml` at the repository root and are built into the binary.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::error::CaError;

/// The profiles built into the binary, as `(name, TOML source)`.
pub const EMBEDDED: [(&str, &str); 4] = [
    ("root", include_str!("../../../ca/profiles/root.toml")),
    (
        "intermediate",
        include_str!("../../../ca/profiles/intermediate.toml"),
    ),
    ("device", include_str!("../../../ca/profiles/device.toml")),
    (
        "verification",
        include_str!("../../../ca/profiles/verification.toml"),
    ),
];

/// What a certificate is in the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileKind {
    /// Self-signed trust anchor.
    Root,
    /// CA certificate signed by the root.
    Intermediate,
    /// End-entity certificate.
    Leaf,
}

/// X.509 key usage bits a profile may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyUsage {
    /// digitalSignature.
    #[serde(rename = "digitalSignature")]
    DigitalSignature,
    /// keyAgreement.
    #[serde(rename = "keyAgreement")]
    KeyAgreement,
    /// keyCertSign.
    #[serde(rename = "keyCertSign")]
    KeyCertSign,
    /// cRLSign.
    #[serde(rename = "cRLSign")]
    CrlSign,
}

/// Extended key usages a profile may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ExtendedKeyUsage {
    /// TLS client authentication (what DPS and IoT Hub require of a device).
    #[serde(rename = "clientAuth")]
    ClientAuth,
    /// TLS server authentication.
    #[serde(rename = "serverAuth")]
    ServerAuth,
}

/// Subject key types a profile may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowedKey {
    /// ECDSA on NIST P-256.
    P256,
    /// ECDSA on NIST P-384.
    P384,
    /// RSA of at least `min_rsa_bits`.
    Rsa,
}

/// Unit data a leaf profile may copy into the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitField {
    /// O.
    Organization,
    /// OU.
    OrganizationalUnit,
    /// serialNumber.
    SerialNumber,
}

/// Fixed subject fields and the unit fields a profile takes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectTemplate {
    /// Fixed CN (CA profiles); leaf CNs come from the request.
    #[serde(default)]
    pub common_name: Option<String>,
    /// Fixed O.
    #[serde(default)]
    pub organization: Option<String>,
    /// Unit data fields allowed in the subject.
    #[serde(default)]
    pub from_unit: Vec<UnitField>,
}

/// One certificate profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Profile name (the file stem).
    #[serde(skip)]
    pub name: String,
    /// Human description.
    pub description: String,
    /// Place in the hierarchy.
    pub kind: ProfileKind,
    /// Lifetime in days from issuance.
    pub validity_days: u32,
    /// pathLenConstraint for CA profiles.
    #[serde(default)]
    pub path_len: Option<u8>,
    /// Key usage bits.
    pub key_usage: Vec<KeyUsage>,
    /// Extended key usages.
    #[serde(default)]
    pub extended_key_usage: Vec<ExtendedKeyUsage>,
    /// Accepted subject key types.
    pub allowed_keys: Vec<AllowedKey>,
    /// Smallest RSA modulus accepted.
    #[serde(default = "default_min_rsa_bits")]
    pub min_rsa_bits: usize,
    /// Where relying parties fetch the issuing CA's CRL (`station ca crl`, published there by
    /// the plant): written into each certificate as its CRL distribution point. None: no
    /// such extension.
    #[serde(default)]
    pub crl_urls: Vec<String>,
    /// Subject template.
    #[serde(default)]
    pub subject: SubjectTemplate,
}

fn default_min_rsa_bits() -> usize {
    2048
}

impl Profile {
    /// Parses and checks one profile.
    pub fn parse(name: &str, text: &str) -> Result<Self, CaError> {
        let bad = |problem: String| CaError::Profile {
            name: name.to_owned(),
            problem,
        };
        let mut p: Profile = toml::from_str(text).map_err(|e| bad(e.message().to_owned()))?;
        p.name = name.to_owned();
        let ca = p.kind != ProfileKind::Leaf;
        let signs_certs = p.key_usage.contains(&KeyUsage::KeyCertSign);
        if ca && !(signs_certs && p.key_usage.contains(&KeyUsage::CrlSign)) {
            return Err(bad("a CA profile needs keyCertSign and cRLSign".into()));
        }
        if !ca && signs_certs {
            return Err(bad("a leaf profile must not have keyCertSign".into()));
        }
        if !ca && p.path_len.is_some() {
            return Err(bad("path_len is only for CA profiles".into()));
        }
        if p.validity_days == 0 {
            return Err(bad("validity_days must be at least 1".into()));
        }
        if p.allowed_keys.is_empty() {
            return Err(bad("allowed_keys is empty".into()));
        }
        if p.min_rsa_bits < 2048 {
            return Err(bad("min_rsa_bits below 2048 is not allowed".into()));
        }
        if p.kind == ProfileKind::Root && !p.crl_urls.is_empty() {
            return Err(bad(
                "crl_urls is for the certificates a CA issues; a root has no issuer's CRL".into(),
            ));
        }
        for url in &p.crl_urls {
            let scheme_ok = ["http://", "https://", "ldap://"]
                .iter()
                .any(|s| url.len() > s.len() && url.starts_with(s));
            if !scheme_ok || url.len() > 1024 || !url.chars().all(|c| c.is_ascii_graphic()) {
                return Err(bad(format!(
                    "crl_urls entry {url:?} is not a URL a relying party can fetch (http://, https:// or ldap://, printable ASCII, at most 1024 characters)"
                )));
            }
        }
        Ok(p)
    }
}

/// The profiles in use, by name.
#[derive(Debug, Clone)]
pub struct Profiles {
    by_name: BTreeMap<String, Profile>,
}

impl Profiles {
    /// The profiles built into the binary.
    pub fn embedded() -> Result<Self, CaError> {
        let mut by_name = BTreeMap::new();
        for (name, text) in EMBEDDED {
            by_name.insert(name.to_owned(), Profile::parse(name, text)?);
        }
        Ok(Self { by_name })
    }

    /// The embedded profiles, overridden by any `*.toml` in `dir` (the home's copy, which an
    /// operator may edit). A missing directory means the embedded set.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let mut me = Self::embedded()?;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(me),
            Err(source) => {
                return Err(CaError::ReadFile {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        };
        for entry in entries {
            let path = entry
                .map_err(|source| CaError::ReadFile {
                    path: dir.to_path_buf(),
                    source,
                })?
                .path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|source| CaError::ReadFile {
                path: path.clone(),
                source,
            })?;
            me.by_name
                .insert(name.to_owned(), Profile::parse(name, &text)?);
        }
        Ok(me)
    }

    /// The profile with this name.
    pub fn get(&self, name: &str) -> Result<&Profile, CaError> {
        self.by_name
            .get(name)
            .ok_or_else(|| CaError::UnknownProfile {
                name: name.to_owned(),
                known: self.by_name.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// Writes the embedded profiles into `dir`, each only if absent. Returns how many were written.
    pub fn write_embedded(dir: &Path) -> Result<usize, CaError> {
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::WriteFile { path, source }
        };
        std::fs::create_dir_all(dir).map_err(werr(dir))?;
        let mut n = 0;
        for (name, text) in EMBEDDED {
            let path = dir.join(format!("{name}.toml"));
            if !path.exists() {
                std::fs::write(&path, text).map_err(werr(&path))?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn embedded_profiles_parse_and_follow_the_rules() {
        let p = Profiles::embedded().expect("embedded");
        let dev = p.get("device").expect("device");
        assert_eq!(dev.kind, ProfileKind::Leaf);
        assert!(
            dev.extended_key_usage
                .contains(&ExtendedKeyUsage::ClientAuth)
        );
        assert_eq!(p.get("root").expect("root").path_len, Some(1));
        assert_eq!(p.get("intermediate").expect("int").path_len, Some(0));
        let err = p.get("nope").expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "no certificate profile named \"nope\" (known: device, intermediate, root, verification)"
        );
    }

    #[test]
    fn leaf_with_keycertsign_is_refused() {
        let err = Profile::parse(
            "bad",
            "description = \"x\"\nkind = \"leaf\"\nvalidity_days = 1\nkey_usage = [\"keyCertSign\"]\nallowed_keys = [\"p256\"]\n",
        )
        .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "certificate profile \"bad\" is invalid: a leaf profile must not have keyCertSign"
        );
    }

    #[test]
    fn crl_urls_must_be_fetchable_and_not_on_a_root() {
        let leaf = |urls: &str| {
            Profile::parse(
                "dev",
                &format!(
                    "description = \"x\"\nkind = \"leaf\"\nvalidity_days = 1\nkey_usage = [\"digitalSignature\"]\nallowed_keys = [\"p256\"]\ncrl_urls = {urls}\n"
                ),
            )
        };
        let ok = leaf("[\"http://pki.example.com/station-ca.crl\"]").expect("fine");
        assert_eq!(ok.crl_urls, ["http://pki.example.com/station-ca.crl"]);
        for bad in [
            "[\"pki.example.com/ca.crl\"]",
            "[\"http://a b\"]",
            "[\"http://\"]",
        ] {
            let e = leaf(bad).expect_err(bad).to_string();
            assert!(
                e.contains("is not a URL a relying party can fetch"),
                "{bad}: {e}"
            );
        }
        let root = Profile::parse(
            "root",
            "description = \"x\"\nkind = \"root\"\nvalidity_days = 1\nkey_usage = [\"keyCertSign\", \"cRLSign\"]\nallowed_keys = [\"p256\"]\ncrl_urls = [\"http://x/y.crl\"]\n",
        )
        .expect_err("refused");
        assert!(
            root.to_string().contains("a root has no issuer's CRL"),
            "{root}"
        );
    }

    #[test]
    fn home_copy_overrides_and_init_writes_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Profiles::write_embedded(dir.path()).expect("write"), 4);
        assert_eq!(Profiles::write_embedded(dir.path()).expect("write"), 0);
        let text = std::fs::read_to_string(dir.path().join("device.toml"))
            .expect("read")
            .replace("validity_days = 3650", "validity_days = 365");
        std::fs::write(dir.path().join("device.toml"), text).expect("write");
        let p = Profiles::load(dir.path()).expect("load");
        assert_eq!(p.get("device").expect("device").validity_days, 365);
    }
}
