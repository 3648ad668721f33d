//! The operator web UI's check: whether it is on, and a warning when its plain HTTP (passwords
//! and badges in the sign-in form) would cross the plant network.

use super::{CheckLine, Report};
use crate::config::Config;

/// Adds the web UI's line.
pub fn run(cfg: &Config, report: &mut Report) {
    let line = match cfg.web.address() {
        Ok(None) => CheckLine::ok("web UI", "off (set [web] listen to serve it)"),
        Ok(Some(addr)) if addr.ip().is_loopback() => {
            CheckLine::ok("web UI", format!("http://{addr}/ (this machine only)"))
        }
        Ok(Some(addr)) => CheckLine::warn(
            "web UI",
            format!(
                "http://{addr}/ is plain HTTP on the network: passwords and badges cross it in \
                 clear; put a TLS reverse proxy in front and listen on 127.0.0.1"
            ),
        ),
        Err(e) => CheckLine::fail("web UI", e.to_string()),
    };
    report.lines.push(line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Status;

    fn status(listen: Option<&str>) -> Status {
        let mut cfg = Config::default();
        cfg.web.listen = listen.map(str::to_owned);
        let mut r = Report::default();
        run(&cfg, &mut r);
        r.lines[0].status
    }

    #[test]
    fn plain_http_beyond_this_machine_is_a_warning() {
        assert_eq!(status(None), Status::Ok);
        assert_eq!(status(Some("127.0.0.1:8480")), Status::Ok);
        assert_eq!(status(Some("0.0.0.0:8480")), Status::Warn);
        assert_eq!(status(Some("not an address")), Status::Fail);
    }
}
