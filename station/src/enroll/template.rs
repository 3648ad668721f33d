//! Templates for registration IDs, device IDs and initial-twin values: text with `{name}`
//! placeholders from the unit's data. Placeholders are checked when a profile loads, so a typo
//! is a configuration error, not a unit failing at 3 a.m.

use std::collections::BTreeMap;

/// Every placeholder a template may use.
pub const PLACEHOLDERS: &[&str] = &[
    "serial",
    "lot",
    "product",
    "model",
    "hw_rev",
    "fw_version",
    "fixture",
    "station",
    "operator",
    "manufactured_at",
    "registration_id",
];

/// Why a template is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{name}` with a name that does not exist.
    #[error("unknown placeholder {{{name}}} (known: {known})")]
    Unknown {
        /// The name used.
        name: String,
        /// The names allowed.
        known: String,
    },
    /// A `{` without its `}`.
    #[error("unclosed {{ at position {0}")]
    Unclosed(usize),
    /// A placeholder that is allowed in general but not in this template.
    #[error("{{{0}}} cannot be used here")]
    NotHere(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(&'static str),
}

impl Template {
    /// Parses a template; `{{` and `}}` stand for literal braces.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(TemplateError::Unclosed(i));
                    }
                    let var = PLACEHOLDERS.iter().find(|p| **p == name).ok_or_else(|| {
                        TemplateError::Unknown {
                            name: name.clone(),
                            known: PLACEHOLDERS.join(", "),
                        }
                    })?;
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Var(var));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Self {
            parts,
            source: source.to_owned(),
        })
    }

    /// The template as written.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The placeholders used.
    pub fn vars(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(*v),
            Part::Text(_) => None,
        })
    }

    /// Refuses placeholders not allowed in this template (e.g. `{registration_id}` inside the
    /// registration ID template itself).
    pub fn forbid(&self, names: &[&str]) -> Result<(), TemplateError> {
        match self.vars().find(|v| names.contains(v)) {
            Some(v) => Err(TemplateError::NotHere(v.to_owned())),
            None => Ok(()),
        }
    }

    /// Fills the placeholders; a value missing from `values` renders as empty text.
    #[must_use]
    pub fn render(&self, values: &BTreeMap<&str, String>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => out.push_str(values.get(v).map_or("", String::as_str)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_render() {
        let t = Template::parse("{product}-{serial}{{x}}").unwrap();
        let mut v = BTreeMap::new();
        v.insert("product", "sa".to_owned());
        v.insert("serial", "001".to_owned());
        assert_eq!(t.render(&v), "sa-001{x}");
        assert_eq!(t.vars().collect::<Vec<_>>(), vec!["product", "serial"]);
        assert!(matches!(
            Template::parse("{serail}"),
            Err(TemplateError::Unknown { .. })
        ));
        let e = Template::parse("{serail}").unwrap_err().to_string();
        assert!(e.contains("{serail}") && e.contains("serial, lot"), "{e}");
        assert_eq!(
            Template::parse("ab{serial"),
            Err(TemplateError::Unclosed(2))
        );
        let t = Template::parse("{registration_id}").unwrap();
        assert!(t.forbid(&["registration_id"]).is_err());
    }
}
