//! Issuer mode's per-binding session identity: whether STS gets a token
//! tokenbridge signs, and the session tags and source identity that token
//! carries, as templates over the verified caller.
//!
//! Placeholders: `{sub}`, `{email}` (only a verified email), `{project_id}`,
//! `{project_number}`, `{zone}`, `{instance_name}` (the GCE claims of
//! `format=full` tokens) and `{binding}`. A tag whose placeholder the
//! caller's token lacks is left out; a source identity whose placeholder is
//! missing is left out too.
//!
//! STS's limits (AssumeRoleWithWebIdentity, "Passing session tags"): at most
//! 50 tags, keys 1 to 128 and values at most 256 characters of letters,
//! digits, spaces and `_ . : / = + - @`, keys not starting with `aws:`; a
//! source identity 2 to 64 characters of letters, digits and `+ = , . @ -`.
//! Templates are checked when the binding is written; an expanded value over
//! a limit refuses the call (never a silently shortened tag).

use std::collections::BTreeMap;

use crate::{binding::FieldError, caller::Caller, rules::shorten};

/// Most session tags STS accepts.
pub const MAX_SESSION_TAGS: usize = 50;
/// Longest tag key.
pub const MAX_TAG_KEY_CHARS: usize = 128;
/// Longest tag value.
pub const MAX_TAG_VALUE_CHARS: usize = 256;
/// Source identity length bounds.
pub const SOURCE_IDENTITY_CHARS: std::ops::RangeInclusive<usize> = 2..=64;

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 7] = [
    "sub",
    "email",
    "project_id",
    "project_number",
    "zone",
    "instance_name",
    "binding",
];

/// What a grant asks of the STS session in issuer mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionIdentity {
    /// `issuer`: `Some(true)` issuer mode, `Some(false)` pass-through,
    /// `None` the server's `[issuer] default`.
    pub issuer: Option<bool>,
    /// `session_tags`: key -> value template.
    pub session_tags: BTreeMap<String, String>,
    /// `source_identity`: a template.
    pub source_identity: Option<String>,
}

impl SessionIdentity {
    /// Whether it sends anything only a signed token can carry.
    pub fn needs_issuer(&self) -> bool {
        !self.session_tags.is_empty() || self.source_identity.is_some()
    }
}

/// Tags and source identity for one call, expanded from the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ExpandedSession {
    /// Tag key -> value.
    pub tags: BTreeMap<String, String>,
    /// The source identity.
    pub source_identity: Option<String>,
}

/// Why an expanded session cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A tag value became longer than STS accepts.
    #[error(
        "session tag `{key}` would be {len} characters; STS accepts at most {MAX_TAG_VALUE_CHARS}"
    )]
    TagTooLong {
        /// The tag key.
        key: String,
        /// The expanded length.
        len: usize,
    },
    /// A tag value holds a character STS refuses.
    #[error("session tag `{key}`: the caller's claims give a character STS refuses in tag values")]
    TagCharacters {
        /// The tag key.
        key: String,
    },
    /// The source identity is outside STS's rules.
    #[error(
        "source identity would be {len} characters or use characters STS refuses; it must be 2 to 64 of letters, digits and _ + = , . @ -"
    )]
    SourceIdentity {
        /// The expanded length.
        len: usize,
    },
}

fn tag_char(c: char) -> bool {
    c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c)
}

fn source_identity_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// One piece of a template: text as written, or a placeholder's name.
enum Segment<'a> {
    Literal(&'a str),
    Placeholder(&'a str),
}

/// `template` split into literal text and placeholders, or why it is
/// malformed: the one parser of the template syntax.
fn segments(template: &str) -> Result<Vec<Segment<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("a `}` without its `{`".into());
        }
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err("a `{` without its `}`".into());
        };
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder `{{{}}}`; use one of {}",
                shorten(name),
                PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
            ));
        }
        out.push(Segment::Literal(&rest[..open]));
        out.push(Segment::Placeholder(name));
        rest = &after[close + 1..];
    }
    out.push(Segment::Literal(rest));
    Ok(out)
}

/// The literal text of a parsed template and whether it has placeholders.
fn literal(segments: &[Segment<'_>]) -> (String, bool) {
    let mut text = String::new();
    let mut placeholders = false;
    for s in segments {
        match s {
            Segment::Literal(t) => text.push_str(t),
            Segment::Placeholder(_) => placeholders = true,
        }
    }
    (text, placeholders)
}

/// Checks a binding's `issuer`, `session_tags` and `source_identity`.
pub fn validate(identity: &SessionIdentity, errors: &mut Vec<FieldError>) {
    let mut err = |field: String, reason: String| errors.push(FieldError { field, reason });
    if identity.issuer == Some(false) && identity.needs_issuer() {
        err(
            "issuer".into(),
            "session tags and a source identity need issuer mode (`issuer = true`): only a token tokenbridge signs can carry them".into(),
        );
    }
    if identity.session_tags.len() > MAX_SESSION_TAGS {
        err(
            "session_tags".into(),
            format!(
                "{} tags; STS accepts at most {MAX_SESSION_TAGS}",
                identity.session_tags.len()
            ),
        );
    }
    let mut lower = std::collections::HashSet::new();
    for (key, value) in &identity.session_tags {
        let field = format!("session_tags.{}", shorten(key));
        let chars = key.chars().count();
        if chars == 0 || chars > MAX_TAG_KEY_CHARS {
            err(
                field.clone(),
                format!("the key is {chars} characters; STS accepts 1 to {MAX_TAG_KEY_CHARS}"),
            );
        } else if !key.chars().all(tag_char) {
            err(
                field.clone(),
                "the key may hold letters, digits, spaces and _ . : / = + - @ only".into(),
            );
        } else if key.to_ascii_lowercase().starts_with("aws:") {
            err(field.clone(), "keys starting with `aws:` are AWS's".into());
        } else if !lower.insert(key.to_lowercase()) {
            err(
                field.clone(),
                "differs from another key only in letter case; STS treats tag keys case-insensitively".into(),
            );
        }
        let len = value.chars().count();
        if len > MAX_TAG_VALUE_CHARS {
            err(
                field.clone(),
                format!("the value is {len} characters; STS accepts at most {MAX_TAG_VALUE_CHARS}"),
            );
        }
        match segments(value) {
            Err(reason) => err(field, reason),
            Ok(parts) => {
                let (literal, _) = literal(&parts);
                if !literal.chars().all(tag_char) {
                    err(
                        field,
                        "the value may hold letters, digits, spaces and _ . : / = + - @ only"
                            .into(),
                    );
                }
            }
        }
    }
    if let Some(source) = &identity.source_identity {
        match segments(source) {
            Err(reason) => err("source_identity".into(), reason),
            Ok(parts) => {
                let (literal, placeholders) = literal(&parts);
                if !literal.chars().all(source_identity_char) {
                    err(
                        "source_identity".into(),
                        "may hold letters, digits and _ + = , . @ - only".into(),
                    );
                } else if (!placeholders && !SOURCE_IDENTITY_CHARS.contains(&literal.len()))
                    || literal.len() > *SOURCE_IDENTITY_CHARS.end()
                {
                    err(
                        "source_identity".into(),
                        format!("{} characters; STS accepts 2 to 64", literal.len()),
                    );
                }
            }
        }
    }
}

/// The value of one placeholder for `caller`, if its token has it.
fn claim<'a>(caller: &'a Caller, binding: &'a str, name: &str) -> Option<&'a str> {
    let gce = caller.compute_engine.as_ref();
    match name {
        "sub" => Some(caller.sub.as_str()),
        "email" => caller.verified_email(),
        "project_id" => gce?.project_id.as_deref(),
        "project_number" => gce?.project_number.as_deref(),
        "zone" => gce?.zone.as_deref(),
        "instance_name" => gce?.instance_name.as_deref(),
        "binding" => Some(binding),
        _ => None,
    }
}

/// Fills `template` from the caller; `None` if a placeholder's claim is
/// missing (or the template is malformed, which validation prevents).
pub fn expand(template: &str, caller: &Caller, binding: &str) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    for s in segments(template).ok()? {
        out.push_str(match s {
            Segment::Literal(text) => text,
            Segment::Placeholder(name) => claim(caller, binding, name)?,
        });
    }
    Some(out)
}

impl SessionIdentity {
    /// The tags and source identity for one call by `caller` through
    /// `binding`, checked against STS's limits.
    pub fn expand(&self, caller: &Caller, binding: &str) -> Result<ExpandedSession, SessionError> {
        let mut tags = BTreeMap::new();
        for (key, template) in &self.session_tags {
            let Some(value) = expand(template, caller, binding) else {
                continue;
            };
            let len = value.chars().count();
            if len > MAX_TAG_VALUE_CHARS {
                return Err(SessionError::TagTooLong {
                    key: key.clone(),
                    len,
                });
            }
            if !value.chars().all(tag_char) {
                return Err(SessionError::TagCharacters { key: key.clone() });
            }
            tags.insert(key.clone(), value);
        }
        let source_identity = match &self.source_identity {
            None => None,
            Some(template) => match expand(template, caller, binding) {
                None => None,
                Some(value) => {
                    if !SOURCE_IDENTITY_CHARS.contains(&value.len())
                        || !value.chars().all(source_identity_char)
                    {
                        return Err(SessionError::SourceIdentity { len: value.len() });
                    }
                    Some(value)
                }
            },
        };
        Ok(ExpandedSession {
            tags,
            source_identity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::ComputeEngine;

    fn caller() -> Caller {
        Caller {
            sub: "112233".into(),
            email: Some("etl@p.iam.gserviceaccount.com".into()),
            email_verified: true,
            compute_engine: Some(ComputeEngine {
                project_id: Some("p".into()),
                zone: Some("us-central1-a".into()),
                ..ComputeEngine::default()
            }),
        }
    }

    fn identity(tags: &[(&str, &str)], source: Option<&str>) -> SessionIdentity {
        SessionIdentity {
            issuer: Some(true),
            session_tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            source_identity: source.map(str::to_owned),
        }
    }

    fn problems(identity: &SessionIdentity) -> Vec<String> {
        let mut errors = Vec::new();
        validate(identity, &mut errors);
        errors.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn templates_expand_from_the_caller_and_missing_claims_leave_the_tag_out() {
        let id = identity(
            &[
                ("sa", "{email}"),
                ("where", "{project_id}/{zone}"),
                ("vm", "{instance_name}"),
                ("team", "a"),
                ("via", "{binding}"),
            ],
            Some("{email}"),
        );
        let got = id.expand(&caller(), "etl").unwrap();
        assert_eq!(got.tags["sa"], "etl@p.iam.gserviceaccount.com");
        assert_eq!(got.tags["where"], "p/us-central1-a");
        assert_eq!(got.tags["team"], "a");
        assert_eq!(got.tags["via"], "etl");
        assert!(!got.tags.contains_key("vm"), "{got:?}");
        assert_eq!(
            got.source_identity.as_deref(),
            Some("etl@p.iam.gserviceaccount.com")
        );
        let mut unverified = caller();
        unverified.email_verified = false;
        let got = id.expand(&unverified, "etl").unwrap();
        assert!(!got.tags.contains_key("sa") && got.source_identity.is_none());
    }

    #[test]
    fn limits_and_bad_templates_are_refused_with_the_field() {
        let many: Vec<(String, String)> = (0..51).map(|i| (format!("k{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(problems(&identity(&many, None))[0].contains("51 tags"));
        let long_key = "k".repeat(129);
        assert!(problems(&identity(&[(&long_key, "v")], None))[0].contains("1 to 128"));
        let long_value = "v".repeat(257);
        assert!(problems(&identity(&[("k", &long_value)], None))[0].contains("at most 256"));
        assert!(problems(&identity(&[("k", "{nope}")], None))[0].contains("unknown placeholder"));
        assert!(problems(&identity(&[("aws:x", "v")], None))[0].contains("AWS's"));
        assert!(problems(&identity(&[("k", "a{")], None))[0].contains("without its"));
        assert!(problems(&identity(&[], Some("x")))[0].contains("2 to 64"));
        assert!(problems(&identity(&[], Some("a b")))[0].contains("+ = , . @ -"));
        let mut passthrough = identity(&[("k", "v")], None);
        passthrough.issuer = Some(false);
        assert!(problems(&passthrough)[0].starts_with("field issuer:"));
        assert!(problems(&identity(&[("team", "{email}-x")], Some("{email}"))).is_empty());
    }

    #[test]
    fn an_expansion_over_a_limit_refuses_rather_than_shortens() {
        let mut long = caller();
        long.email = Some(format!("{}@p.iam.gserviceaccount.com", "a".repeat(60)));
        let err = identity(&[], Some("{email}"))
            .expand(&long, "b")
            .unwrap_err();
        assert!(matches!(err, SessionError::SourceIdentity { .. }));
    }
}
