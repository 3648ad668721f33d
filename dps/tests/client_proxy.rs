//! The client honours HTTPS_PROXY and NO_PROXY. The proxy here is a minimal real HTTP
//! CONNECT tunnel written for the test (no proxy package is a test dependency); it counts
//! the tunnels it opened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::{Service, dps_bin};

/// Starts a CONNECT proxy on a free port; returns its port and tunnel counter.
fn connect_proxy() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                }
                let target = first.split_whitespace().nth(1).unwrap().to_owned();
                assert!(first.starts_with("CONNECT "), "{first}");
                let upstream =
                    TcpStream::connect(target.replace("localhost", "127.0.0.1")).unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let mut client = client;
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (mut cr, mut cw) = (client.try_clone().unwrap(), client);
                let (mut ur, mut uw) = (upstream.try_clone().unwrap(), upstream);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut cr, &mut uw);
                    let _ = uw.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut ur, &mut cw);
                let _ = cw.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, count)
}

fn list(svc: &Service, env: &[(&str, String)]) -> bool {
    let mut cmd = Command::new(dps_bin());
    cmd.args(["enrollment", "list", "--data"]).arg(&svc.dir);
    for v in [
        "HTTPS_PROXY",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    out.status.success()
}

#[test]
fn https_proxy_is_used_and_no_proxy_bypasses_it() {
    let svc = Service::start(&[]);
    let (port, tunnels) = connect_proxy();
    let proxy = format!("http://127.0.0.1:{port}");
    assert!(list(&svc, &[("HTTPS_PROXY", proxy.clone())]));
    assert!(
        tunnels.load(Ordering::SeqCst) >= 1,
        "the request did not go through the proxy"
    );
    let before = tunnels.load(Ordering::SeqCst);
    assert!(list(
        &svc,
        &[("HTTPS_PROXY", proxy), ("NO_PROXY", "localhost".to_owned())]
    ));
    assert_eq!(
        tunnels.load(Ordering::SeqCst),
        before,
        "NO_PROXY was ignored"
    );
}
