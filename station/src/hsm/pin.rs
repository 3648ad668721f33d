//! Token PINs: read from a file or an environment variable, held as a secret.

use std::path::Path;

use cryptoki::types::AuthPin;

use super::config::PinSource;
use super::error::HsmError;

/// A token user PIN. Its Debug output is redacted and its memory zeroised on drop.
pub struct Pin(AuthPin);

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

impl Pin {
    /// Reads the PIN from its source; `resolve` turns a relative file path into a home path.
    pub fn load(
        source: &PinSource,
        token: &str,
        resolve: impl Fn(&Path) -> std::path::PathBuf,
    ) -> Result<Self, HsmError> {
        let raw = match source {
            PinSource::File(p) => {
                let path = resolve(p);
                let text =
                    zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(|source| {
                        HsmError::ReadPinFile {
                            path: path.clone(),
                            source,
                        }
                    })?);
                // First line only, so a trailing newline from `echo` does not become PIN bytes.
                text.lines().next().unwrap_or("").trim().to_owned()
            }
            PinSource::Env(var) => std::env::var(var)
                .map_err(|_| HsmError::PinEnvMissing { var: var.clone() })?
                .trim()
                .to_owned(),
        };
        if raw.is_empty() {
            return Err(HsmError::PinEmpty {
                token: token.to_owned(),
            });
        }
        Ok(Self(AuthPin::from(raw)))
    }

    /// Wraps a freshly generated PIN.
    pub fn from_secret(pin: AuthPin) -> Self {
        Self(pin)
    }

    /// The PIN in the form cryptoki takes.
    pub(crate) fn auth(&self) -> &AuthPin {
        &self.0
    }

    /// The PIN characters (tests only).
    #[cfg(test)]
    pub(crate) fn expose(&self) -> &str {
        use secrecy::ExposeSecret;
        self.0.expose_secret()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_first_line_is_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("p.pin");
        std::fs::write(&f, "s3cr3t\nignored\n").expect("write");
        let pin = Pin::load(&PinSource::File(f), "t", |p| p.to_path_buf()).expect("load");
        assert_eq!(pin.expose(), "s3cr3t");
        assert!(!format!("{pin:?}").contains("s3cr3t"));
    }

    #[test]
    fn empty_pin_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("p.pin");
        std::fs::write(&f, "\n").expect("write");
        let err =
            Pin::load(&PinSource::File(f), "station-ca", |p| p.to_path_buf()).expect_err("empty");
        assert_eq!(err.to_string(), "the PIN for token station-ca is empty");
    }
}
