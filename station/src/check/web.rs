//! The operator web UI's check: whether it is on, over HTTP or HTTPS, and a warning when plain
//! HTTP (passwords and badges in the sign-in form) would cross the plant network, or when the
//! HTTPS key can be read by others.

use std::os::unix::fs::PermissionsExt as _;

use super::{CheckLine, Report};
use crate::config::Config;
use crate::home::Home;

/// Adds the web UI's line.
pub fn run(home: &Home, cfg: &Config, report: &mut Report) {
    let web = &cfg.web;
    let line = match (web.address(), &web.tls_key_file) {
        (Ok(None), _) => CheckLine::ok("web UI", "off (set [web] listen to serve it)"),
        (Ok(Some(addr)), Some(key)) => {
            let key = home.resolve(key);
            match std::fs::metadata(&key).map(|m| m.permissions().mode() & 0o777) {
                Err(e) => CheckLine::fail("web UI", format!("HTTPS key {}: {e}", key.display())),
                Ok(mode) if mode & 0o077 != 0 => CheckLine::warn(
                    "web UI",
                    format!(
                        "https://{addr}/; its key {} has mode {mode:o}: make it 0600",
                        key.display()
                    ),
                ),
                Ok(_) => CheckLine::ok("web UI", format!("https://{addr}/")),
            }
        }
        (Ok(Some(addr)), None) if addr.ip().is_loopback() => {
            CheckLine::ok("web UI", format!("http://{addr}/ (this machine only)"))
        }
        (Ok(Some(addr)), None) => CheckLine::warn(
            "web UI",
            format!(
                "http://{addr}/ is plain HTTP on the network: passwords and badges cross it in \
                 clear; set [web] tls_cert_file and tls_key_file, or listen on 127.0.0.1 behind \
                 a TLS reverse proxy"
            ),
        ),
        (Err(e), _) => CheckLine::fail("web UI", e.to_string()),
    };
    report.lines.push(line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Status;

    fn status(home: &Home, listen: Option<&str>, key: Option<&str>) -> Status {
        let mut cfg = Config::default();
        cfg.web.listen = listen.map(str::to_owned);
        cfg.web.tls_cert_file = key.map(|_| "web.pem".into());
        cfg.web.tls_key_file = key.map(Into::into);
        let mut r = Report::default();
        run(home, &cfg, &mut r);
        r.lines[0].status
    }

    #[test]
    fn plain_http_beyond_this_machine_and_a_readable_key_are_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        assert_eq!(status(&home, None, None), Status::Ok);
        assert_eq!(status(&home, Some("127.0.0.1:8480"), None), Status::Ok);
        assert_eq!(status(&home, Some("0.0.0.0:8480"), None), Status::Warn);
        assert_eq!(status(&home, Some("not an address"), None), Status::Fail);
        assert_eq!(
            status(&home, Some("0.0.0.0:8443"), Some("web.key")),
            Status::Fail
        );
        let key = dir.path().join("web.key");
        std::fs::write(&key, "k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            status(&home, Some("0.0.0.0:8443"), Some("web.key")),
            Status::Warn
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            status(&home, Some("0.0.0.0:8443"), Some("web.key")),
            Status::Ok
        );
    }
}
