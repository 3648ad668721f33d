//! Signed-in browsers: a random token in an HttpOnly, SameSite=Strict cookie names a session
//! held in memory (a restart of `station serve` signs everyone out). Repeated wrong passwords
//! or badges lock the name out for a minute. POSTs from another origin are refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use cookie::{Cookie, SameSite};

use super::WebState;
use crate::operators::Role;

/// Wrong attempts in a row before a name is locked out.
const MAX_FAILURES: u32 = 5;
/// How long a lock-out lasts.
const LOCKOUT: Duration = Duration::from_secs(60);

struct Session {
    user: String,
    role: Role,
    last_seen: Instant,
    flash: Option<Flash>,
}

/// What an action said, shown once on the next page of the same session (a message put in
/// the redirect's URL could be forged by a link).
#[derive(Debug, Clone)]
pub struct Flash {
    /// Whether it worked.
    pub ok: bool,
    /// What to show.
    pub text: String,
}

/// The sessions of one `station serve`.
pub struct Sessions {
    idle: Duration,
    map: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Sessions {
    /// No session yet; one is dropped after `idle` without a request.
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            map: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// A new session for `user`; its token.
    pub fn create(&self, user: &str, role: Role) -> String {
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let idle = self.idle;
        map.retain(|_, s| s.last_seen.elapsed() < idle);
        map.insert(
            token.clone(),
            Session {
                user: user.to_owned(),
                role,
                last_seen: Instant::now(),
                flash: None,
            },
        );
        token
    }

    fn touch(&self, token: &str) -> Option<(String, Role)> {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = map.get_mut(token)?;
        if s.last_seen.elapsed() >= self.idle {
            map.remove(token);
            return None;
        }
        s.last_seen = Instant::now();
        Some((s.user.clone(), s.role))
    }

    /// Leaves a message for the session's next page.
    pub fn flash(&self, token: &str, ok: bool, text: String) {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = map.get_mut(token) {
            s.flash = Some(Flash { ok, text });
        }
    }

    /// The message left for this page, once.
    pub fn take_flash(&self, token: &str) -> Option<Flash> {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get_mut(token).and_then(|s| s.flash.take())
    }

    /// Ends a session.
    pub fn remove(&self, token: &str) {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(token);
    }

    /// How long `key` (a user name, or "badge") stays locked out, if it is.
    pub fn locked(&self, key: &str) -> Option<Duration> {
        let f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (n, last) = f.get(key)?;
        (*n >= MAX_FAILURES && last.elapsed() < LOCKOUT).then(|| LOCKOUT - last.elapsed())
    }

    /// Counts a wrong attempt for `key`.
    pub fn failed(&self, key: &str) {
        let mut f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = f.entry(key.to_owned()).or_insert((0, Instant::now()));
        if e.1.elapsed() >= LOCKOUT {
            e.0 = 0;
        }
        e.0 += 1;
        e.1 = Instant::now();
    }

    /// Forgets the wrong attempts for `key`.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

/// The session cookie for `token` (`secure`: over HTTPS only).
pub fn cookie(name: &str, token: &str, secure: bool) -> String {
    Cookie::build((name.to_owned(), token.to_owned()))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .path("/")
        .build()
        .to_string()
}

/// A cookie that clears the session cookie.
pub fn cleared(name: &str) -> String {
    let mut c = Cookie::build((name.to_owned(), String::new()))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .build();
    c.make_removal();
    c.to_string()
}

/// The session token a request carries, if any.
pub fn token(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

impl SignedIn {
    /// Whether the user may act as a supervisor (lots, conflicts).
    #[must_use]
    pub fn supervises(&self) -> bool {
        matches!(self.role, Role::Supervisor | Role::Admin)
    }
}

/// A signed-in user; a request without one is sent to the sign-in page.
pub struct SignedIn {
    /// User name.
    pub user: String,
    /// Role.
    pub role: Role,
    /// The session's token.
    pub token: String,
}

impl FromRequestParts<Arc<WebState>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<WebState>,
    ) -> Result<Self, Self::Rejection> {
        let token = token(&parts.headers, &state.cookie_name);
        match token.and_then(|t| state.sessions.touch(&t).map(|(u, r)| (t, u, r))) {
            Some((token, user, role)) => Ok(Self { user, role, token }),
            None => Err(Redirect::to("/login").into_response()),
        }
    }
}

/// Refuses a POST whose `Origin` is another site (a page elsewhere posting a form to the
/// station); the SameSite cookie already keeps the session out of such a request.
pub async fn same_origin(req: Request, next: Next) -> Response {
    if req.method() == Method::POST {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok());
        if let Some(origin) = origin {
            let origin_host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            if origin_host != host {
                return (
                    StatusCode::FORBIDDEN,
                    "refused: this form was sent from another site",
                )
                    .into_response();
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_lock_out_after_repeated_failures() {
        let s = Sessions::new(Duration::from_millis(50));
        let t = s.create("ann", Role::Operator);
        assert_eq!(s.touch(&t).map(|(u, _)| u).as_deref(), Some("ann"));
        assert!(s.touch("not-a-token").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.touch(&t).is_none(), "an idle session ends");

        for _ in 0..MAX_FAILURES - 1 {
            s.failed("bob");
        }
        assert!(s.locked("bob").is_none());
        s.failed("bob");
        assert!(s.locked("bob").is_some());
        assert!(s.locked("ann").is_none());
        s.succeeded("bob");
        assert!(s.locked("bob").is_none());
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site_strict() {
        let c = cookie("station_session_1", "abc", false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/"));
        assert!(!c.contains("Secure"));
        assert!(cookie("station_session_1", "abc", true).contains("Secure"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "other=1; station_session_1=abc"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(token(&h, "station_session_1").as_deref(), Some("abc"));
        assert_eq!(token(&h, "station_session_2"), None);
    }
}
