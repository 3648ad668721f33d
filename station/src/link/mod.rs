//! The device link: MCUmgr SMP over a serial line, and the provisioning command group.
//!
//! Layers, bottom up: [`frame`] (SMP serial framing, CRC16, the resynchronising decoder),
//! [`smp`] (the 8-byte header), [`proto`] (CBOR messages of the OS and provisioning groups),
//! [`port`] (serial ports by path), [`transport`] (sequence matching, timeouts, retries),
//! [`client`] (one method per command), then the exchanges [`x509`] and [`symkey`].
//! The simulated unit (`fixtures`, `unit-sim`) uses the same codec and messages.

pub mod client;
pub mod frame;
pub mod port;
pub mod proto;
pub mod smp;
pub mod symkey;
pub mod transport;
pub mod x509;

pub use client::{Gate, IdentifyError, UnitClient};
pub use port::{Port, SerialLink};
pub use transport::{LinkError, LinkSettings, Transport};
