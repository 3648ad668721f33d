//! Checks of the HSM and the CA: module, tokens, login, keys and their protection, the CA
//! certificates against the keys, the chain, expiry, and the keyed audit checkpoint.

use super::{CheckLine, Report};
use crate::ca::service::{self, AuditKey, SealCheck};
use crate::ca::verify;
use crate::config::Config;
use crate::home::Home;
use crate::hsm::{Hsm, TokenSession};
use crate::store::Store;

/// Error text with its causes, for a check line's detail.
fn chain_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

pub(super) fn run(home: &Home, cfg: &Config, report: &mut Report) {
    let lines = &mut report.lines;
    let hsm = match Hsm::load(&cfg.hsm, |p| home.resolve(p)) {
        Ok(h) => {
            let desc = h.description().unwrap_or_default();
            lines.push(CheckLine::ok(
                "hsm module",
                format!("{} ({desc})", h.module().display()),
            ));
            h
        }
        Err(e) => {
            lines.push(CheckLine::fail("hsm module", chain_text(&e)));
            return;
        }
    };
    let Some(ca) = token(&hsm, home, &cfg.hsm.ca_token(), "ca", lines) else {
        return;
    };
    let root = match &cfg.hsm.root {
        Some(r) => token(&hsm, home, r, "root", lines),
        None => None,
    };
    key_lines(&ca, &cfg.ca.key_label, "ca", lines);
    if let Some(r) = &root {
        key_lines(r, &cfg.ca.root_key_label, "root", lines);
    }
    let cert_ok = match service::load_issuing(&ca, home, cfg) {
        Ok(a) => {
            lines.push(CheckLine::ok(
                "ca certificate",
                format!(
                    "{} matches HSM key {:?}",
                    service::cert_path(home, cfg).display(),
                    cfg.ca.key_label
                ),
            ));
            Some(a.cert_der().to_vec())
        }
        Err(e) => {
            lines.push(CheckLine::fail(
                "ca certificate",
                format!("{}; refusing to issue", chain_text(&e)),
            ));
            None
        }
    };
    if let Some(r) = &root
        && let Err(e) = service::load_root(r, home, cfg)
    {
        lines.push(CheckLine::fail("root certificate", chain_text(&e)));
    }
    if let Some(cert) = cert_ok {
        chain_lines(home, cfg, &cert, lines);
    }
    audit_key_line(home, cfg, &ca, lines);
    outbox_key_line(&ca, lines);
}

/// The AES key that seals key material in the outbox: present, AES-256, and unable to leave
/// the token.
fn outbox_key_line(ca: &TokenSession, lines: &mut Vec<CheckLine>) {
    use crate::keys::OUTBOX_KEY_LABEL;
    let name = "outbox key";
    let key = match ca.find_secret_key(OUTBOX_KEY_LABEL) {
        Ok(k) => k,
        Err(crate::hsm::HsmError::KeyNotFound { .. }) => {
            lines.push(CheckLine::fail(
                name,
                format!(
                    "{OUTBOX_KEY_LABEL:?} absent from token {}; run `station init` to create it",
                    ca.token()
                ),
            ));
            return;
        }
        Err(e) => {
            lines.push(CheckLine::fail(name, chain_text(&e)));
            return;
        }
    };
    let info = match ca.secret_key_info(key, OUTBOX_KEY_LABEL) {
        Ok(i) => i,
        Err(e) => {
            lines.push(CheckLine::fail(name, chain_text(&e)));
            return;
        }
    };
    if info.key_type != Some(cryptoki::object::KeyType::AES) || info.value_len != Some(32) {
        lines.push(CheckLine::fail(
            name,
            format!("{OUTBOX_KEY_LABEL:?} is not an AES-256 key; refusing to seal with it"),
        ));
        return;
    }
    match ca.object_protection(key, OUTBOX_KEY_LABEL) {
        Ok(p) if p.problems().is_empty() => {
            match crate::keys::OutboxCipher::new(ca).and_then(|c| c.self_test()) {
                Ok(()) => lines.push(CheckLine::ok(
                    name,
                    format!(
                        "{OUTBOX_KEY_LABEL:?} AES-256 in token {}, seals and opens with AES-GCM ({})",
                        ca.token(),
                        p.summary()
                    ),
                )),
                // Only products with per-unit symmetric keys need it; their fixtures refuse
                // to start on this HSM.
                Err(e) => lines.push(CheckLine::warn(
                    name,
                    format!(
                        "{OUTBOX_KEY_LABEL:?} cannot seal with AES-GCM in token {} ({}); products with attestation symmetric-individual cannot run on this HSM",
                        ca.token(),
                        chain_text(&e)
                    ),
                )),
            }
        }
        Ok(p) => lines.push(CheckLine::fail(
            name,
            format!(
                "{}; refusing to seal with it ({})",
                p.problems().join(", "),
                p.summary()
            ),
        )),
        Err(e) => lines.push(CheckLine::fail(name, chain_text(&e))),
    }
}

fn token(
    hsm: &Hsm,
    home: &Home,
    t: &crate::hsm::TokenConfig,
    which: &str,
    lines: &mut Vec<CheckLine>,
) -> Option<TokenSession> {
    let name = format!("hsm {which} token");
    let selector = match t.selector() {
        Ok(s) => s,
        Err(e) => {
            lines.push(CheckLine::fail(&name, e.to_string()));
            return None;
        }
    };
    match hsm.find_token(&selector) {
        Ok(_) => lines.push(CheckLine::ok(&name, format!("found by {selector}"))),
        Err(e) => {
            lines.push(CheckLine::fail(&name, chain_text(&e)));
            return None;
        }
    }
    let login = format!("hsm {which} login");
    match hsm.open(t, |p| home.resolve(p)) {
        Ok(s) => {
            lines.push(CheckLine::ok(&login, "PIN accepted"));
            Some(s)
        }
        Err(e) => {
            lines.push(CheckLine::fail(&login, chain_text(&e)));
            None
        }
    }
}

fn key_lines(s: &TokenSession, label: &str, which: &str, lines: &mut Vec<CheckLine>) {
    let name = format!("{which} key");
    let key = match s.find_ec_key(label) {
        Ok(k) => {
            lines.push(CheckLine::ok(
                &name,
                format!("{label:?} present in token {}", s.token()),
            ));
            k
        }
        Err(e) => {
            lines.push(CheckLine::fail(&name, chain_text(&e)));
            return;
        }
    };
    let attrs = format!("{which} key attributes");
    match s.key_protection(&key) {
        Ok(p) if p.problems().is_empty() => lines.push(CheckLine::ok(&attrs, p.summary())),
        Ok(p) => lines.push(CheckLine::fail(
            &attrs,
            format!(
                "{}; refusing to issue with it ({})",
                p.problems().join(", "),
                p.summary()
            ),
        )),
        Err(e) => lines.push(CheckLine::fail(&attrs, chain_text(&e))),
    }
}

fn chain_lines(home: &Home, cfg: &Config, cert: &[u8], lines: &mut Vec<CheckLine>) {
    let upper = match std::fs::read(service::root_path(home, cfg)) {
        Ok(b) => verify::from_pem_bundle(&b),
        Err(e) => {
            lines.push(CheckLine::fail(
                "ca chain",
                format!(
                    "cannot read {}: {e}",
                    service::root_path(home, cfg).display()
                ),
            ));
            return;
        }
    };
    match verify::chain(cert, &upper) {
        Ok(()) => lines.push(CheckLine::ok(
            "ca chain",
            format!("verifies to the root ({} certificates)", upper.len() + 1),
        )),
        Err(e) => lines.push(CheckLine::fail("ca chain", chain_text(&e))),
    }
    let mut all = vec![cert.to_vec()];
    all.extend(upper);
    let mut soonest: Option<(i64, String)> = None;
    for der in &all {
        if let Ok(c) = verify::parse(der, "chain") {
            let d = verify::days_to_expiry(&c);
            if soonest.as_ref().is_none_or(|(s, _)| d < *s) {
                soonest = Some((d, c.subject().to_string()));
            }
        }
    }
    if let Some((days, subject)) = soonest {
        let detail = format!("{subject} expires first, in {days} days");
        lines.push(if days < i64::from(cfg.ca.expiry_warn_days) {
            CheckLine::warn("ca expiry", format!("{detail}: renew the CA"))
        } else {
            CheckLine::ok("ca expiry", detail)
        });
    }
}

fn audit_key_line(home: &Home, cfg: &Config, ca: &TokenSession, lines: &mut Vec<CheckLine>) {
    let key = match AuditKey::find(ca, &cfg.ca.audit_key_label) {
        Ok(k) => k,
        Err(e) => {
            lines.push(CheckLine::fail("audit key", chain_text(&e)));
            return;
        }
    };
    let Ok(store) = Store::open_unmigrated(&home.resolve(&cfg.store.path), &cfg.store) else {
        // The database checks already report why it cannot be opened.
        return;
    };
    match service::check_seal(&store, &key) {
        Ok(SealCheck::Valid { seq, unsealed }) => lines.push(CheckLine::ok(
            "audit key",
            format!(
                "keyed checkpoint over entry {seq} verifies in the HSM ({unsealed} newer entries)"
            ),
        )),
        Ok(SealCheck::Empty) => lines.push(CheckLine::ok("audit key", "present; log empty")),
        Ok(SealCheck::Broken(why)) => lines.push(CheckLine::fail("audit key", why)),
        Err(e) => lines.push(CheckLine::fail("audit key", chain_text(&e))),
    }
}
