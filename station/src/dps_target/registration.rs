//! What DPS holds as a unit's registration record: asked of each target the unit was enrolled
//! with, once each (an unreachable DPS is reported, not waited for). For the engineer asking
//! why unit 4711 did not register: `station unit show --dps` and the unit's web page.

use crate::config::Config;
use crate::home::Home;
use crate::line::worker::error_text;

/// One target's answer about a unit, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationLine {
    /// The DPS target.
    pub target: String,
    /// `assigned to HUB as device D (substatus), last TIME`, `none: ... has not registered
    /// yet`, `disabled: why`, or why DPS could not be asked.
    pub text: String,
}

impl std::fmt::Display for RegistrationLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.target, self.text)
    }
}

/// The registration record of `registration_id` in each of `targets`.
pub async fn registration_lines(
    home: &Home,
    cfg: &Config,
    registration_id: &str,
    targets: &[String],
) -> Vec<RegistrationLine> {
    let id = match dps::RegistrationId::new(registration_id) {
        Ok(id) => id,
        Err(e) => {
            return vec![RegistrationLine {
                target: "-".into(),
                text: format!("{registration_id} is not a DPS registration ID: {e}"),
            }];
        }
    };
    let mut out = Vec::new();
    for target in targets {
        let text = match super::client_with(home, cfg, target, |o| o.retry.max_attempts = 1) {
            Err(e) => format!("not asked: {}", error_text(&e)),
            Ok(client) => match client.get_registration_state(&id).await {
                Ok(rec) => describe(&rec),
                Err(e) if e.status() == Some(404) => {
                    format!("none: {registration_id} has not registered yet")
                }
                Err(e) => format!("could not be read: {}", error_text(&e)),
            },
        };
        out.push(RegistrationLine {
            target: target.clone(),
            text,
        });
    }
    out
}

/// A registration record in words: `STATUS[ to HUB as device D (substatus)][, last TIME][: why]`.
pub(crate) fn describe(rec: &dps::wire::DeviceRegistrationState) -> String {
    let mut line = rec.status.map_or("unknown", |s| s.as_str()).to_owned();
    if let Some(place) = rec.placement() {
        line.push_str(&format!(" to {place}"));
    }
    if let Some(at) = rec.last_updated_date_time_utc {
        line.push_str(&format!(", last {}", at.format("%Y-%m-%d %H:%M:%S UTC")));
    }
    if let Some(m) = &rec.error_message {
        line.push_str(&format!(": {m}"));
    }
    line
}
