//! The policy table: which Google service accounts may assume which AWS roles.
//!
//! A binding lists service accounts and role ARNs. An entry made only of
//! digits is a service account's unique ID and matches the token's `sub`; an
//! entry with an `@` is its email and matches the token's `email`, and only
//! when the token says `email_verified: true`. A service account may assume the
//! union of the roles of all bindings that name it (by ID or by email), each
//! with the largest maximum duration any of those bindings allows.
//!
//! Lookups go through two hash indexes (by `sub`, by email) built once at
//! load time, so a decision costs the same with 10 or 100,000 bindings.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    sync::Arc,
};

use serde::Deserialize;
use toml::Spanned;

use crate::diag::{Problem, Problems};

/// The shortest session STS allows.
pub const MIN_DURATION_SECONDS: u32 = 900;
/// The longest session STS allows.
pub const MAX_DURATION_SECONDS: u32 = 43_200;
/// `max_duration_seconds` when a binding does not say.
pub const DEFAULT_MAX_DURATION_SECONDS: u32 = 3_600;

/// A loaded, validated, indexed policy table.
#[derive(Debug, Default)]
pub struct Policy {
    by_sub: HashMap<String, RoleGrants>,
    by_email: HashMap<String, RoleGrants>,
    bindings: usize,
}

/// What one service account may do, per role ARN.
type RoleGrants = BTreeMap<String, Arc<Grant>>;

/// Why a service account may assume a role, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The largest `max_duration_seconds` among the bindings that grant the role.
    pub max_duration_seconds: u32,
    /// The largest `default_duration_seconds` among them.
    pub default_duration_seconds: u32,
    /// The names of the bindings that grant the role, sorted.
    pub bindings: BTreeSet<String>,
}

impl Grant {
    fn merge(&mut self, other: &Grant) {
        self.max_duration_seconds = self.max_duration_seconds.max(other.max_duration_seconds);
        self.default_duration_seconds = self
            .default_duration_seconds
            .max(other.default_duration_seconds);
        self.bindings.extend(other.bindings.iter().cloned());
    }
}

/// The caller as the policy sees it: the verified token's `sub`, and its
/// `email` only if the token marks it verified.
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    /// The service account's unique ID (`sub`).
    pub sub: &'a str,
    /// The service account's email, when `email_verified` is true.
    pub verified_email: Option<&'a str>,
}

impl Principal<'_> {
    /// How the caller is named in messages: the unique ID, and the email if any.
    pub fn describe(&self) -> String {
        match self.verified_email {
            Some(email) => format!("{} ({email})", self.sub),
            None => self.sub.to_string(),
        }
    }
}

/// The outcome of a policy lookup that found something to assume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The role the caller may assume.
    pub role_arn: String,
    /// How long for, and why.
    pub grant: Arc<Grant>,
}

/// Why the policy gives the caller nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No binding names this service account at all.
    NoRoles,
    /// Bindings name the service account, but none grants this role.
    RoleNotGranted,
    /// No role was requested and the caller has several; it must choose.
    Ambiguous(Vec<String>),
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, Vec<Problem>> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            vec![Problem {
                file: path.to_path_buf(),
                line: None,
                reason: format!("cannot read the policy file: {e}"),
            }]
        })?;
        Self::from_toml_str(&src, path)
    }

    /// Parses and validates policy text; `path` names the file in problems.
    pub fn from_toml_str(src: &str, path: &Path) -> Result<Policy, Vec<Problem>> {
        let mut problems = Problems::new(path, src);
        let raw: RawPolicy = match toml::from_str(src) {
            Ok(raw) => raw,
            Err(e) => {
                problems.toml(&e);
                return Err(problems.found);
            }
        };

        let mut policy = Policy::default();
        let mut names: HashMap<String, usize> = HashMap::new();
        for binding in &raw.binding {
            let b = binding.get_ref();
            let name = b.name.get_ref();
            if !valid_binding_name(name) {
                problems.at(
                    b.name.span(),
                    format!("binding name `{name}`: use 1 to 128 letters, digits, `.`, `_` or `-`"),
                );
            }
            // Byte offsets, turned into lines only for a message: counting
            // lines for every binding would be quadratic in the file size.
            if let Some(first) = names.insert(name.clone(), b.name.span().start) {
                let first = crate::diag::line_of(src, first);
                problems.at(
                    b.name.span(),
                    format!("binding name `{name}` is already used on line {first}; names must be unique"),
                );
            }

            let max = duration(
                &mut problems,
                name,
                "max_duration_seconds",
                &b.max_duration_seconds,
            )
            .unwrap_or(DEFAULT_MAX_DURATION_SECONDS);
            let default = match duration(
                &mut problems,
                name,
                "default_duration_seconds",
                &b.default_duration_seconds,
            ) {
                Some(d) if d > max => {
                    if let Some(v) = &b.default_duration_seconds {
                        problems.at(
                            v.span(),
                            format!("binding `{name}`: default_duration_seconds {d} is above max_duration_seconds {max}"),
                        );
                    }
                    max
                }
                Some(d) => d,
                None => max.min(DEFAULT_MAX_DURATION_SECONDS),
            };

            if b.service_accounts.get_ref().is_empty() {
                problems.at(
                    b.service_accounts.span(),
                    format!("binding `{name}`: service_accounts is empty"),
                );
            }
            if b.role_arns.get_ref().is_empty() {
                problems.at(
                    b.role_arns.span(),
                    format!("binding `{name}`: role_arns is empty"),
                );
            }
            let mut roles = BTreeSet::new();
            for role in b.role_arns.get_ref() {
                if let Err(reason) = check_role_arn(role.get_ref()) {
                    problems.at(role.span(), format!("binding `{name}`: {reason}"));
                } else if !roles.insert(role.get_ref().clone()) {
                    problems.at(
                        role.span(),
                        format!(
                            "binding `{name}`: role `{}` is listed twice",
                            role.get_ref()
                        ),
                    );
                }
            }
            let grant = Arc::new(Grant {
                max_duration_seconds: max,
                default_duration_seconds: default,
                bindings: BTreeSet::from([name.clone()]),
            });

            let mut seen = BTreeSet::new();
            for sa in b.service_accounts.get_ref() {
                let entry = sa.get_ref();
                let index = match classify(entry) {
                    Some(ServiceAccountRef::UniqueId) => &mut policy.by_sub,
                    Some(ServiceAccountRef::Email) => &mut policy.by_email,
                    None => {
                        problems.at(
                            sa.span(),
                            format!(
                                "binding `{name}`: `{entry}` is neither a service account unique ID (digits only, the token's `sub`) nor an email"
                            ),
                        );
                        continue;
                    }
                };
                let key = entry.to_ascii_lowercase();
                if !seen.insert(key.clone()) {
                    problems.at(
                        sa.span(),
                        format!("binding `{name}`: `{entry}` is listed twice"),
                    );
                    continue;
                }
                let grants = index.entry(key).or_default();
                for role in &roles {
                    grants
                        .entry(role.clone())
                        .and_modify(|g| Arc::make_mut(g).merge(&grant))
                        .or_insert_with(|| grant.clone());
                }
            }
            policy.bindings += 1;
        }

        if problems.found.is_empty() {
            Ok(policy)
        } else {
            Err(problems.found)
        }
    }

    /// How many bindings the table has.
    pub fn binding_count(&self) -> usize {
        self.bindings
    }

    /// Every role the caller may assume, with the merged grant for each.
    pub fn roles_for(&self, who: Principal<'_>) -> RoleGrants {
        let mut roles = self.by_sub.get(who.sub).cloned().unwrap_or_default();
        if let Some(email) = who.verified_email
            && let Some(more) = self.by_email.get(&email.to_ascii_lowercase())
        {
            for (role, grant) in more {
                roles
                    .entry(role.clone())
                    .and_modify(|g| Arc::make_mut(g).merge(grant))
                    .or_insert_with(|| grant.clone());
            }
        }
        roles
    }

    /// Decides whether the caller may assume `role_arn` (or, when it is empty,
    /// its only role).
    pub fn decide(&self, who: Principal<'_>, role_arn: &str) -> Result<Allowed, Denied> {
        if !role_arn.is_empty() {
            // The hot path: two hash lookups, no copying of the caller's grants.
            let by_sub = self.by_sub.get(who.sub);
            let by_email = who.verified_email.and_then(|email| {
                if email.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.by_email.get(&email.to_ascii_lowercase())
                } else {
                    self.by_email.get(email)
                }
            });
            let grant = match (
                by_sub.and_then(|g| g.get(role_arn)),
                by_email.and_then(|g| g.get(role_arn)),
            ) {
                (Some(a), Some(b)) => {
                    let mut merged = Grant::clone(a);
                    merged.merge(b);
                    Arc::new(merged)
                }
                (Some(g), None) | (None, Some(g)) => g.clone(),
                (None, None) if by_sub.is_none() && by_email.is_none() => {
                    return Err(Denied::NoRoles);
                }
                (None, None) => return Err(Denied::RoleNotGranted),
            };
            return Ok(Allowed {
                role_arn: role_arn.to_string(),
                grant,
            });
        }
        let mut roles = self.roles_for(who);
        if roles.is_empty() {
            return Err(Denied::NoRoles);
        }
        if role_arn.is_empty() {
            if roles.len() > 1 {
                return Err(Denied::Ambiguous(roles.into_keys().collect()));
            }
            let (role_arn, grant) = roles.pop_first().ok_or(Denied::NoRoles)?;
            return Ok(Allowed { role_arn, grant });
        }
        match roles.remove(role_arn) {
            Some(grant) => Ok(Allowed {
                role_arn: role_arn.to_string(),
                grant,
            }),
            None => Err(Denied::RoleNotGranted),
        }
    }
}

enum ServiceAccountRef {
    UniqueId,
    Email,
}

/// Google service account unique IDs are 21 decimal digits; we accept any
/// run of 1 to 64 digits. Emails have one `@` with something on each side
/// and no white space.
fn classify(entry: &str) -> Option<ServiceAccountRef> {
    if !entry.is_empty() && entry.len() <= 64 && entry.bytes().all(|b| b.is_ascii_digit()) {
        return Some(ServiceAccountRef::UniqueId);
    }
    let (local, domain) = entry.split_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && entry.len() <= 254
        && !entry.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then_some(ServiceAccountRef::Email)
}

fn valid_binding_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn duration(
    problems: &mut Problems<'_>,
    name: &str,
    key: &str,
    value: &Option<Spanned<i64>>,
) -> Option<u32> {
    let v = value.as_ref()?;
    let range = i64::from(MIN_DURATION_SECONDS)..=i64::from(MAX_DURATION_SECONDS);
    if range.contains(v.get_ref()) {
        u32::try_from(*v.get_ref()).ok()
    } else {
        problems.at(
            v.span(),
            format!(
                "binding `{name}`: {key} {} is outside {MIN_DURATION_SECONDS}..={MAX_DURATION_SECONDS}",
                v.get_ref()
            ),
        );
        None
    }
}

/// Checks that `arn` is an IAM role ARN:
/// `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`, with a 12-digit account,
/// a role name of 1 to 64 characters from `[A-Za-z0-9+=,.@_-]`, and a path of
/// the same characters and `/`.
pub fn check_role_arn(arn: &str) -> Result<(), String> {
    check_iam_arn(
        arn,
        "role",
        64,
        twelve_digits,
        "the account ID must be 12 digits",
    )
}

fn twelve_digits(account: &str) -> bool {
    account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())
}

/// Checks an IAM ARN `arn:PARTITION:iam::ACCOUNT:KIND/[PATH/]NAME`: the
/// shape, an `aws*` partition, the account (`account_ok`, else
/// `account_why`), a name of 1 to `max_name` characters of
/// `[A-Za-z0-9+=,.@_-]` and a path of those and `/`. Role and managed
/// policy ARNs differ only in KIND, the name length and the account rule.
pub(crate) fn check_iam_arn(
    arn: &str,
    kind: &str,
    max_name: usize,
    account_ok: fn(&str) -> bool,
    account_why: &str,
) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "`{}` is not an IAM {kind} ARN: {why}",
            shorten(arn)
        ))
    };
    if arn.len() > 2048 {
        return bad("longer than 2048 characters");
    }
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return bad(&format!("expected arn:aws:iam::ACCOUNT_ID:{kind}/NAME"));
    };
    if !partition.starts_with("aws")
        || !partition
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-')
    {
        return bad("unknown partition");
    }
    if !account_ok(account) {
        return bad(account_why);
    }
    let Some(path_and_name) = resource
        .strip_prefix(kind)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return bad(&format!("the resource must be {kind}/NAME"));
    };
    let name = path_and_name.rsplit('/').next().unwrap_or_default();
    let name_char = |b: u8| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b);
    if name.is_empty() || name.len() > max_name || !name.bytes().all(name_char) {
        return bad(&format!(
            "the {kind} name must be 1 to {max_name} characters of A-Z a-z 0-9 + = , . @ _ -"
        ));
    }
    if path_and_name.len() > 512 || !path_and_name.bytes().all(|b| name_char(b) || b == b'/') {
        return bad(&format!(
            "the {kind} path has characters IAM does not allow"
        ));
    }
    Ok(())
}

/// At most 200 characters of an untrusted value, for messages.
pub(crate) fn shorten(value: &str) -> String {
    const LIMIT: usize = 200;
    let clean: String = value
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if clean.chars().count() <= LIMIT {
        clean
    } else {
        let head: String = clean.chars().take(LIMIT).collect();
        format!("{head}…")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    binding: Vec<Spanned<RawBinding>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    name: Spanned<String>,
    service_accounts: Spanned<Vec<Spanned<String>>>,
    role_arns: Spanned<Vec<Spanned<String>>>,
    max_duration_seconds: Option<Spanned<i64>>,
    default_duration_seconds: Option<Spanned<i64>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE_A: &str = "arn:aws:iam::111122223333:role/RoleA";
    const ROLE_B: &str = "arn:aws:iam::111122223333:role/team/RoleB";

    fn policy(src: &str) -> Policy {
        Policy::from_toml_str(src, Path::new("policy.toml")).unwrap()
    }

    fn by_sub(sub: &str) -> Principal<'_> {
        Principal {
            sub,
            verified_email: None,
        }
    }

    #[test]
    fn unique_id_matches_sub_and_email_matches_verified_email() {
        let p = policy(&format!(
            r#"
[[binding]]
name = "a"
service_accounts = ["112233445566778899001"]
role_arns = ["{ROLE_A}"]

[[binding]]
name = "b"
service_accounts = ["ETL@my-project.iam.gserviceaccount.com"]
role_arns = ["{ROLE_B}"]
max_duration_seconds = 7200
"#
        ));
        assert_eq!(
            p.decide(by_sub("112233445566778899001"), "")
                .unwrap()
                .role_arn,
            ROLE_A
        );
        assert_eq!(p.decide(by_sub("999"), ROLE_A), Err(Denied::NoRoles));
        // An email entry never matches a sub, and vice versa.
        assert_eq!(
            p.decide(by_sub("etl@my-project.iam.gserviceaccount.com"), ""),
            Err(Denied::NoRoles)
        );
        let etl = Principal {
            sub: "42",
            verified_email: Some("etl@my-project.iam.gserviceaccount.com"),
        };
        let allowed = p.decide(etl, ROLE_B).unwrap();
        assert_eq!(allowed.grant.max_duration_seconds, 7200);
        assert_eq!(allowed.grant.default_duration_seconds, 3600);
        assert_eq!(p.decide(etl, ROLE_A), Err(Denied::RoleNotGranted));
    }

    #[test]
    fn roles_are_the_union_of_bindings_with_the_largest_maximum() {
        let p = policy(&format!(
            r#"
[[binding]]
name = "one"
service_accounts = ["1", "svc@p.iam.gserviceaccount.com"]
role_arns = ["{ROLE_A}"]
max_duration_seconds = 1800

[[binding]]
name = "two"
service_accounts = ["1"]
role_arns = ["{ROLE_A}", "{ROLE_B}"]
max_duration_seconds = 43200
"#
        ));
        let who = Principal {
            sub: "1",
            verified_email: Some("svc@p.iam.gserviceaccount.com"),
        };
        let roles = p.roles_for(who);
        assert_eq!(roles.len(), 2);
        let a = &roles[ROLE_A];
        assert_eq!(a.max_duration_seconds, 43200);
        assert_eq!(
            a.bindings,
            BTreeSet::from(["one".to_string(), "two".to_string()])
        );
        assert_eq!(
            p.decide(who, ""),
            Err(Denied::Ambiguous(vec![
                ROLE_A.to_string(),
                ROLE_B.to_string()
            ]))
        );
    }

    #[test]
    fn every_problem_has_a_line() {
        let src = r#"
[[binding]]
name = "dup"
service_accounts = ["not an id"]
role_arns = ["arn:aws:iam::1:role/x"]
max_duration_seconds = 60

[[binding]]
name = "dup"
service_accounts = []
role_arns = ["arn:aws:s3:::bucket"]
default_duration_seconds = 50000
"#;
        let problems = Policy::from_toml_str(src, Path::new("p.toml")).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let has = |prefix: &str, needle: &str| {
            shown
                .iter()
                .any(|p| p.starts_with(prefix) && p.contains(needle))
        };
        assert!(
            has("p.toml:4:", "neither a service account unique ID"),
            "{shown:?}"
        );
        assert!(has("p.toml:5:", "12 digits"), "{shown:?}");
        assert!(has("p.toml:6:", "max_duration_seconds 60"), "{shown:?}");
        assert!(has("p.toml:9:", "already used on line 3"), "{shown:?}");
        assert!(has("p.toml:10:", "service_accounts is empty"), "{shown:?}");
        assert!(has("p.toml:11:", "not an IAM role ARN"), "{shown:?}");
        assert!(
            has("p.toml:12:", "default_duration_seconds 50000"),
            "{shown:?}"
        );
    }

    #[test]
    fn role_arns() {
        assert!(check_role_arn(ROLE_A).is_ok());
        assert!(check_role_arn(ROLE_B).is_ok());
        assert!(check_role_arn("arn:aws-us-gov:iam::111122223333:role/a/b/c").is_ok());
        for bad in [
            "",
            "role/x",
            "arn:aws:iam::111122223333:user/x",
            "arn:aws:iam::11112222333:role/x",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:iam::111122223333:role/has space",
            "arn:aws:sts::111122223333:role/x",
            "arn:AWS:iam::111122223333:role/x",
        ] {
            assert!(check_role_arn(bad).is_err(), "{bad}");
        }
    }
}
