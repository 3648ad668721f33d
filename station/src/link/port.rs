//! Serial ports opened by path (`/dev/ttyUSB0`, `/dev/serial/by-id/...`, a pseudo-terminal).

use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serialport::SerialPort as _;

/// A byte link to a unit: what the transport needs from a serial port.
pub trait Port: Send {
    /// Writes all bytes.
    fn write_all_bytes(&mut self, data: &[u8]) -> io::Result<()>;
    /// Reads what is available within `timeout`; `Ok(0)` when nothing came.
    fn read_some(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize>;
}

/// Why a port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The path does not resolve (a by-id link whose device is unplugged, a typo).
    #[error("serial port {path} does not exist")]
    Missing {
        /// As given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The device refused to open or configure.
    #[error("opening serial port {path}")]
    Open {
        /// As given.
        path: PathBuf,
        /// Why.
        #[source]
        source: serialport::Error,
    },
}

/// An open serial port.
pub struct SerialLink {
    port: serialport::TTYPort,
    device: PathBuf,
}

impl std::fmt::Debug for SerialLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialLink")
            .field("device", &self.device)
            .finish()
    }
}

impl SerialLink {
    /// Opens `path` at `baud`, 8N1, raw. Symlinks such as `/dev/serial/by-id/...` are followed,
    /// so a unit keeps its name across re-plugs while the ttyUSBn number changes.
    pub fn open(path: &Path, baud: u32) -> Result<Self, OpenError> {
        let device = std::fs::canonicalize(path).map_err(|source| OpenError::Missing {
            path: path.to_owned(),
            source,
        })?;
        let port = serialport::new(device.to_string_lossy(), baud)
            .timeout(Duration::from_millis(100))
            .open_native()
            .map_err(|source| OpenError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self { port, device })
    }

    /// The device the path resolved to.
    #[must_use]
    pub fn device(&self) -> &Path {
        &self.device
    }
}

impl Port for SerialLink {
    fn write_all_bytes(&mut self, data: &[u8]) -> io::Result<()> {
        self.port.write_all(data)?;
        self.port.flush()
    }

    fn read_some(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        self.port
            .set_timeout(timeout.max(Duration::from_millis(1)))
            .map_err(io::Error::other)?;
        match self.port.read(buf) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "serial port closed",
            )),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(0),
            Err(e) => Err(e),
        }
    }
}
