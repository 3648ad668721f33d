//! A fixture's barcode scanner on a serial port (a serial-mode scanner, or a pseudo-terminal in
//! tests), read on a thread of its own because serial I/O blocks.
//!
//! A scanner that disappears (USB unplugged: the port errors or vanishes) is reported once and
//! reopened by its path as soon as it is back, so a `/dev/serial/by-id/...` name keeps working
//! across replugs without restarting the station.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::parse::{Debouncer, Line, LineSplitter, Scan, ScanParser, ScanRejected, escape};
use crate::ids::FixtureName;

/// Where and how to read one scanner.
#[derive(Debug, Clone)]
pub struct ScannerSettings {
    /// The port path (`/dev/serial/by-id/...`, `/dev/ttyACM0`, a pty).
    pub port: PathBuf,
    /// Baud rate (serial-mode scanners default to 9600).
    pub baud: u32,
    /// Identical scans closer together than this are one scan.
    pub debounce: Duration,
    /// Longest line accepted.
    pub max_line: usize,
    /// How often to try reopening a vanished scanner.
    pub reopen_every: Duration,
}

/// What a scanner reports to its fixture.
#[derive(Debug, Clone)]
pub enum ScannerEvent {
    /// The port is open (first time or after a replug).
    Connected {
        /// Which fixture.
        fixture: FixtureName,
        /// The port.
        port: PathBuf,
    },
    /// The port went away; it is being reopened.
    Disconnected {
        /// Which fixture.
        fixture: FixtureName,
        /// Why, as the OS said it.
        reason: String,
    },
    /// A scan that was understood.
    Scan {
        /// Which fixture.
        fixture: FixtureName,
        /// What it was.
        scan: Scan,
    },
    /// A scan that was refused; the message shows what was read, escaped.
    Rejected {
        /// Which fixture.
        fixture: FixtureName,
        /// Why.
        reason: ScanRejected,
    },
    /// A repeat of the previous scan inside the debounce window, ignored.
    Repeated {
        /// Which fixture.
        fixture: FixtureName,
    },
}

/// A running scanner reader; stopped on drop.
pub struct Scanner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Scanner {
    /// Starts reading `settings.port` for `fixture`, sending events to `events`.
    pub fn spawn(
        fixture: FixtureName,
        settings: ScannerSettings,
        parser: ScanParser,
        events: UnboundedSender<ScannerEvent>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("scanner-{fixture}"))
            .spawn(move || run(&fixture, &settings, &parser, &events, &flag))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the reader and waits for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    /// Tells the reader to stop without waiting for it: it ends within its read timeout or
    /// its wait before reopening the port (up to `reopen_every`). [`Scanner::stop`] or a
    /// drop then waits.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn halt(&mut self) {
        self.request_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(
    fixture: &FixtureName,
    settings: &ScannerSettings,
    parser: &ScanParser,
    events: &UnboundedSender<ScannerEvent>,
    stop: &AtomicBool,
) {
    let mut debounce = Debouncer::new(settings.debounce);
    // What was last reported about a port that would not open: a new reason is reported
    // again (a port that was missing and is now held by another process says so).
    let mut reported_down: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let port = serialport::new(settings.port.to_string_lossy(), settings.baud)
            .timeout(Duration::from_millis(100))
            .open();
        let mut port = match port {
            Ok(p) => p,
            Err(e) => {
                let reason = e.to_string();
                if reported_down.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(%fixture, port = %settings.port.display(), error = %e, "scanner unavailable");
                    let _ = events.send(ScannerEvent::Disconnected {
                        fixture: fixture.clone(),
                        reason: reason.clone(),
                    });
                    reported_down = Some(reason);
                }
                std::thread::sleep(settings.reopen_every);
                continue;
            }
        };
        tracing::info!(%fixture, port = %settings.port.display(), "scanner connected");
        let _ = events.send(ScannerEvent::Connected {
            fixture: fixture.clone(),
            port: settings.port.clone(),
        });
        let mut splitter = LineSplitter::new(settings.max_line);
        let mut buf = [0u8; 256];
        let reason = loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match port.read(&mut buf) {
                Ok(0) => break "end of file".to_owned(),
                Ok(n) => {
                    for line in splitter.feed(&buf[..n]) {
                        let event = handle(fixture, parser, &mut debounce, line);
                        let _ = events.send(event);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break e.to_string(),
            }
        };
        tracing::warn!(%fixture, port = %settings.port.display(), %reason, "scanner disconnected");
        let _ = events.send(ScannerEvent::Disconnected {
            fixture: fixture.clone(),
            reason: reason.clone(),
        });
        reported_down = Some(reason);
        std::thread::sleep(settings.reopen_every);
    }
}

fn handle(
    fixture: &FixtureName,
    parser: &ScanParser,
    debounce: &mut Debouncer,
    line: Line,
) -> ScannerEvent {
    let fixture = fixture.clone();
    match line {
        Line::TooLong { len, start } => ScannerEvent::Rejected {
            fixture,
            reason: ScanRejected::TooLong {
                len,
                max: parser.max_len(),
                start: escape(&start),
            },
        },
        Line::Complete(bytes) => {
            if !debounce.accept(bytes.trim_ascii(), Instant::now()) {
                return ScannerEvent::Repeated { fixture };
            }
            match parser.parse(&bytes) {
                Ok(scan) => ScannerEvent::Scan { fixture, scan },
                // Logged by whoever receives the event (`station serve`), once.
                Err(reason) => ScannerEvent::Rejected { fixture, reason },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    use super::*;

    /// A pseudo-terminal pair standing in for a USB scanner; the scanner is reached through a
    /// symlink, as through `/dev/serial/by-id/...`.
    struct FakeUsbPort {
        master: std::fs::File,
        _slave: std::os::fd::OwnedFd,
    }

    fn plug(link: &std::path::Path) -> FakeUsbPort {
        let pty = nix::pty::openpty(None, None).unwrap();
        let name = nix::unistd::ttyname(&pty.slave).unwrap();
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&name, link).unwrap();
        assert!(pty.master.as_raw_fd() >= 0);
        FakeUsbPort {
            master: std::fs::File::from(pty.master),
            _slave: pty.slave,
        }
    }

    fn next(rx: &mut UnboundedReceiver<ScannerEvent>) -> ScannerEvent {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(e) = rx.try_recv() {
                return e;
            }
            assert!(Instant::now() < deadline, "no scanner event within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn next_non_repeat(rx: &mut UnboundedReceiver<ScannerEvent>) -> ScannerEvent {
        loop {
            match next(rx) {
                ScannerEvent::Repeated { .. } => {}
                e => return e,
            }
        }
    }

    #[test]
    fn reads_scans_rejects_noise_and_survives_a_replug() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("usb-Scanner_1234-if00");
        let mut port = plug(&link);
        let (tx, mut rx) = unbounded_channel();
        let fixture = FixtureName::new("fx-1").unwrap();
        let settings = ScannerSettings {
            port: link.clone(),
            baud: 9600,
            debounce: Duration::from_millis(300),
            max_line: 64,
            reopen_every: Duration::from_millis(50),
        };
        let parser = ScanParser::new(r"SN-[0-9]{4}", 64).unwrap();
        let scanner = Scanner::spawn(fixture, settings, parser, tx).unwrap();
        assert!(matches!(next(&mut rx), ScannerEvent::Connected { .. }));

        port.master.write_all(b"SN-0001\r").unwrap();
        assert!(
            matches!(next(&mut rx), ScannerEvent::Scan { scan: Scan::Serial(s), .. } if s.as_str() == "SN-0001")
        );
        // A double read of the same label is one scan.
        port.master.write_all(b"SN-0001\r\n").unwrap();
        assert!(matches!(next(&mut rx), ScannerEvent::Repeated { .. }));

        port.master.write_all(b"\x00\x07\xfe\xff\r").unwrap();
        match next(&mut rx) {
            ScannerEvent::Rejected { fixture, reason } => {
                assert_eq!(fixture.as_str(), "fx-1");
                assert_eq!(
                    reason.to_string(),
                    r#"scan contains binary data: "\x00\x07\xfe\xff""#
                );
            }
            e => panic!("expected a rejection, got {e:?}"),
        }
        port.master.write_all(&[b'9'; 100]).unwrap();
        port.master.write_all(b"\n").unwrap();
        assert!(matches!(
            next(&mut rx),
            ScannerEvent::Rejected {
                reason: ScanRejected::TooLong { len: 100, .. },
                ..
            }
        ));
        port.master.write_all(b"SN-12\r").unwrap();
        assert!(matches!(
            next(&mut rx),
            ScannerEvent::Rejected {
                reason: ScanRejected::Pattern { .. },
                ..
            }
        ));

        // Unplug: the pty goes away and the link dangles.
        drop(port);
        std::fs::remove_file(&link).unwrap();
        assert!(matches!(
            next_non_repeat(&mut rx),
            ScannerEvent::Disconnected { .. }
        ));
        // Plug back in (a new device node behind the same by-id name).
        let mut port = plug(&link);
        loop {
            match next(&mut rx) {
                ScannerEvent::Connected { .. } => break,
                ScannerEvent::Disconnected { .. } => {}
                e => panic!("unexpected {e:?}"),
            }
        }
        port.master.write_all(b"CMD:ABORT\r").unwrap();
        assert!(matches!(
            next(&mut rx),
            ScannerEvent::Scan {
                scan: Scan::Abort,
                ..
            }
        ));
        scanner.stop();
    }

    #[test]
    fn a_port_another_process_holds_is_reported_as_such_after_it_was_missing() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("usb-Scanner_5678-if00");
        let (tx, mut rx) = unbounded_channel();
        let settings = ScannerSettings {
            port: link.clone(),
            baud: 9600,
            debounce: Duration::from_millis(300),
            max_line: 64,
            reopen_every: Duration::from_millis(20),
        };
        let parser = ScanParser::new(r"SN-[0-9]{4}", 64).unwrap();
        let scanner =
            Scanner::spawn(FixtureName::new("fx-2").unwrap(), settings, parser, tx).unwrap();
        // Not plugged in yet.
        assert!(matches!(
            next(&mut rx),
            ScannerEvent::Disconnected { reason, .. } if reason.contains("No such file")
        ));
        // Plugged in, but another process (a second station, a terminal program) holds it
        // exclusively, as the scanner's own open does: that is reported, not hidden behind the
        // first reason.
        let pty = nix::pty::openpty(None, None).unwrap();
        let name = nix::unistd::ttyname(&pty.slave).unwrap();
        let held = serialport::new(name.to_string_lossy(), 9600)
            .open()
            .unwrap();
        std::os::unix::fs::symlink(&name, &link).unwrap();
        match next(&mut rx) {
            ScannerEvent::Disconnected { reason, .. } => {
                assert!(reason.contains("exclusive lock"), "{reason}");
            }
            e => panic!("unexpected {e:?}"),
        }
        // Released: the scanner connects.
        drop(held);
        assert!(matches!(next(&mut rx), ScannerEvent::Connected { .. }));
        drop(pty);
        scanner.stop();
    }
}
