//! Rich policy bindings: the model the admin API and the policy store share.
//!
//! A [`Binding`] is what the policy file's `[[binding]]` table says, plus three
//! optional keys that the admin API brought:
//!
//! ```toml
//! [[binding]]
//! name = "team-a-etl"
//! service_accounts = ["112233445566778899001", "etl@my-project.iam.gserviceaccount.com"]
//! role_arns = ["arn:aws:iam::111122223333:role/SharedReader"]
//! max_duration_seconds = 3600        # optional, 900..=43200, default 3600
//! default_duration_seconds = 900     # optional, 900..=max, default min(max, 3600)
//! session_policy = '{"Version":"2012-10-17","Statement":[...]}'   # optional, ≤ 2048 characters
//! managed_policy_arns = ["arn:aws:iam::aws:policy/ReadOnlyAccess"] # optional, ≤ 10
//!
//! [binding.conditions]               # optional: GCE claims of `format=full` tokens
//! project_ids = ["my-project"]       # exact
//! project_numbers = ["123456789012"] # exact
//! zones = ["us-central1-*"]          # globs
//! instance_names = ["etl-*"]         # globs
//! ```
//!
//! The existing keys keep the meaning the contract gives them. Conditions use
//! the `google.compute_engine` claim that only `format=full` ID tokens from
//! GCE VMs carry: GKE Workload Identity, Cloud Run and Cloud Functions tokens
//! carry none, so a binding with any condition never matches them. Each
//! non-empty list must contain the token's value; all non-empty lists must
//! match.
//!
//! Validation names the field of every problem (`field conditions.zones[1]:
//! invalid glob …`), which the admin API returns as INVALID_ARGUMENT.
//!
//! [`PolicySnapshot`] is the in-memory decision structure built from a set of
//! bindings and the deny list: the core grants go through the existing
//! [`Policy`] (its hash indexes), and conditions, session scoping and the deny
//! list are applied on top. [`PolicySnapshot::explain`] evaluates every
//! binding for the admin `Explain` call.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    path::Path,
    sync::Arc,
};

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

use crate::{
    diag::{Problem, line_of},
    policy::{
        self, DEFAULT_MAX_DURATION_SECONDS, Denied, MAX_DURATION_SECONDS, MIN_DURATION_SECONDS,
        Policy, Principal, check_role_arn, shorten,
    },
};

/// STS's limit on an inline session policy, in characters.
pub const MAX_SESSION_POLICY_CHARS: usize = 2048;
/// STS's limit on managed session policy ARNs.
pub const MAX_MANAGED_POLICY_ARNS: usize = 10;
/// The most values one condition list may hold.
pub const MAX_CONDITION_VALUES: usize = 100;
/// The longest glob or value in a condition.
pub const MAX_CONDITION_VALUE_LEN: usize = 128;

/// One binding: these service accounts may assume these roles, under these
/// conditions, scoped by these session policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// Unique; 1 to 128 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// Unique IDs (the token's `sub`) or emails (its verified `email`).
    pub service_accounts: Vec<String>,
    /// IAM role ARNs.
    pub role_arns: Vec<String>,
    /// 900..=43200; `None`: 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_seconds: Option<u32>,
    /// 900..=max; `None`: the smaller of the maximum and 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_duration_seconds: Option<u32>,
    /// Conditions on the token's GCE claims; empty: none.
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    /// Inline session policy for STS, a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_policy: Option<String>,
    /// Managed policy ARNs passed to STS as session policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_policy_arns: Vec<String>,
}

/// Conditions on the `google.compute_engine` claim of `format=full` tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// `project_id`, exact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub project_ids: Vec<String>,
    /// `project_number`, exact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub project_numbers: Vec<String>,
    /// `zone`, globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    /// `instance_name`, globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_names: Vec<String>,
}

impl Conditions {
    /// No condition at all: the binding matches any token.
    pub fn is_empty(&self) -> bool {
        self.project_ids.is_empty()
            && self.project_numbers.is_empty()
            && self.zones.is_empty()
            && self.instance_names.is_empty()
    }
}

impl Binding {
    /// `max_duration_seconds`, or its default.
    pub fn effective_max_duration(&self) -> u32 {
        self.max_duration_seconds
            .unwrap_or(DEFAULT_MAX_DURATION_SECONDS)
    }

    /// `default_duration_seconds`, or its default.
    pub fn effective_default_duration(&self) -> u32 {
        let max = self.effective_max_duration();
        self.default_duration_seconds
            .unwrap_or_else(|| max.min(DEFAULT_MAX_DURATION_SECONDS))
    }

    /// The STS scoping this binding asks for.
    pub fn scope(&self) -> SessionScope {
        SessionScope {
            session_policy: self.session_policy.clone(),
            managed_policy_arns: self.managed_policy_arns.clone(),
        }
    }

    /// Checks every field; returns every problem, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut err = |field: String, reason: String| errors.push(FieldError { field, reason });

        if !valid_binding_name(&self.name) {
            err(
                "name".into(),
                format!(
                    "`{}`: use 1 to 128 letters, digits, `.`, `_` or `-`",
                    shorten(&self.name)
                ),
            );
        }

        if self.service_accounts.is_empty() {
            err("service_accounts".into(), "must not be empty".into());
        }
        let mut seen = HashSet::new();
        for (i, sa) in self.service_accounts.iter().enumerate() {
            let field = format!("service_accounts[{i}]");
            if classify_service_account(sa).is_none() {
                err(
                    field,
                    format!(
                        "`{}` is neither a service account unique ID (digits only, the token's `sub`) nor an email",
                        shorten(sa)
                    ),
                );
            } else if !seen.insert(sa.to_ascii_lowercase()) {
                err(field, format!("`{}` is listed twice", shorten(sa)));
            }
        }

        if self.role_arns.is_empty() {
            err("role_arns".into(), "must not be empty".into());
        }
        let mut seen = HashSet::new();
        for (i, role) in self.role_arns.iter().enumerate() {
            let field = format!("role_arns[{i}]");
            if let Err(reason) = check_role_arn(role) {
                err(field, reason);
            } else if !seen.insert(role.as_str()) {
                err(field, format!("`{role}` is listed twice"));
            }
        }

        let range = MIN_DURATION_SECONDS..=MAX_DURATION_SECONDS;
        if let Some(max) = self.max_duration_seconds
            && !range.contains(&max)
        {
            err(
                "max_duration_seconds".into(),
                format!("{max} is outside {MIN_DURATION_SECONDS}..={MAX_DURATION_SECONDS}"),
            );
        }
        if let Some(default) = self.default_duration_seconds {
            if !range.contains(&default) {
                err(
                    "default_duration_seconds".into(),
                    format!("{default} is outside {MIN_DURATION_SECONDS}..={MAX_DURATION_SECONDS}"),
                );
            } else if default > self.effective_max_duration() {
                err(
                    "default_duration_seconds".into(),
                    format!(
                        "{default} is above max_duration_seconds {}",
                        self.effective_max_duration()
                    ),
                );
            }
        }

        if let Err(more) = CompiledConditions::new(&self.conditions) {
            errors.extend(more);
        }

        if let Some(policy) = &self.session_policy
            && let Err(reason) = check_session_policy(policy)
        {
            errors.push(FieldError {
                field: "session_policy".into(),
                reason,
            });
        }

        if self.managed_policy_arns.len() > MAX_MANAGED_POLICY_ARNS {
            errors.push(FieldError {
                field: "managed_policy_arns".into(),
                reason: format!(
                    "{} ARNs; STS accepts at most {MAX_MANAGED_POLICY_ARNS}",
                    self.managed_policy_arns.len()
                ),
            });
        }
        let mut seen = HashSet::new();
        for (i, arn) in self.managed_policy_arns.iter().enumerate() {
            let field = format!("managed_policy_arns[{i}]");
            if let Err(reason) = check_managed_policy_arn(arn) {
                errors.push(FieldError { field, reason });
            } else if !seen.insert(arn.as_str()) {
                errors.push(FieldError {
                    field,
                    reason: format!("`{arn}` is listed twice"),
                });
            }
        }

        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// One problem with one field of a binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path: `name`, `role_arns[2]`, `conditions.zones[0]`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field {}: {}", self.field, self.reason)
    }
}

/// One problem in a set of bindings: which binding (by position and name),
/// which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The binding's position in the set.
    pub index: usize,
    /// The binding's name as given (possibly invalid or empty).
    pub binding: String,
    /// The field and the reason.
    pub error: FieldError,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "binding `{}`: {}", shorten(&self.binding), self.error)
    }
}

/// Checks each binding and that names are unique across the set.
pub fn validate_set(bindings: &[Binding]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (index, b) in bindings.iter().enumerate() {
        if let Err(errors) = b.validate() {
            out.extend(errors.into_iter().map(|error| Violation {
                index,
                binding: b.name.clone(),
                error,
            }));
        }
        if let Some(first) = names.insert(b.name.as_str(), index) {
            out.push(Violation {
                index,
                binding: b.name.clone(),
                error: FieldError {
                    field: "name".into(),
                    reason: format!(
                        "`{}` is already used by binding #{}; names must be unique",
                        shorten(&b.name),
                        first + 1
                    ),
                },
            });
        }
    }
    out
}

/// What kind of service account reference an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAccountRef {
    /// Digits: the token's `sub`.
    UniqueId,
    /// An email: the token's verified `email`.
    Email,
}

/// The same rule as the policy file's (`policy.rs`): 1 to 64 digits is a
/// unique ID; one `@` with a dotted domain and no white space is an email.
pub fn classify_service_account(entry: &str) -> Option<ServiceAccountRef> {
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

/// Checks an inline session policy: a JSON object with a `Statement`, at most
/// 2048 characters (STS's limit, white space included).
pub fn check_session_policy(policy: &str) -> Result<(), String> {
    let chars = policy.chars().count();
    if chars > MAX_SESSION_POLICY_CHARS {
        return Err(format!(
            "{chars} characters; STS accepts at most {MAX_SESSION_POLICY_CHARS}"
        ));
    }
    if policy.trim().is_empty() {
        return Err("empty; leave the field out for no session policy".into());
    }
    let value: serde_json::Value =
        serde_json::from_str(policy).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err("must be a JSON object (an IAM policy document)".into());
    };
    if !object.contains_key("Statement") {
        return Err("an IAM policy document needs a `Statement`".into());
    }
    Ok(())
}

/// Checks an IAM managed policy ARN:
/// `arn:PARTITION:iam::(ACCOUNT|aws):policy/[PATH/]NAME`.
pub fn check_managed_policy_arn(arn: &str) -> Result<(), String> {
    crate::policy::check_iam_arn(
        arn,
        "policy",
        128,
        |account| {
            account == "aws" || (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()))
        },
        "the account must be 12 digits, or `aws` for an AWS managed policy",
    )
}

/// The `google.compute_engine` claim of a `format=full` ID token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeEngine {
    /// The VM's project ID.
    #[serde(default)]
    pub project_id: Option<String>,
    /// The VM's project number (a JSON number in Google's tokens; a string
    /// of digits is accepted too).
    #[serde(default, deserialize_with = "number_or_string")]
    pub project_number: Option<String>,
    /// The VM's zone, e.g. `us-central1-a`.
    #[serde(default)]
    pub zone: Option<String>,
    /// The VM's name.
    #[serde(default)]
    pub instance_name: Option<String>,
    /// The VM's numeric ID.
    #[serde(default, deserialize_with = "number_or_string")]
    pub instance_id: Option<String>,
}

fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(u64),
        Str(String),
    }
    Ok(Option::<NumOrStr>::deserialize(d)?.map(|v| match v {
        NumOrStr::Num(n) => n.to_string(),
        NumOrStr::Str(s) => s,
    }))
}

/// Conditions with their globs compiled, ready to match claims.
#[derive(Debug, Clone, Default)]
pub struct CompiledConditions {
    source: Conditions,
    project_ids: HashSet<String>,
    project_numbers: HashSet<String>,
    zones: Option<GlobSet>,
    instance_names: Option<GlobSet>,
}

/// The outcome of matching conditions against claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionOutcome {
    /// Every condition is met (trivially, with none).
    pub met: bool,
    /// One line per condition checked.
    pub details: Vec<String>,
}

impl CompiledConditions {
    /// Validates and compiles; problems name their field
    /// (`conditions.zones[1]`).
    pub fn new(c: &Conditions) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut exact = |key: &str, values: &[String], ok: &dyn Fn(&str) -> bool, rule: &str| {
            check_list_len(&mut errors, key, values.len());
            let mut set = HashSet::new();
            for (i, v) in values.iter().enumerate() {
                let field = format!("conditions.{key}[{i}]");
                if !ok(v) {
                    errors.push(FieldError {
                        field,
                        reason: format!("`{}`: {rule}", shorten(v)),
                    });
                } else if !set.insert(v.clone()) {
                    errors.push(FieldError {
                        field,
                        reason: format!("`{v}` is listed twice"),
                    });
                }
            }
            set
        };
        let project_ids = exact(
            "project_ids",
            &c.project_ids,
            &valid_project_id,
            "a project ID is 1 to 128 of a-z 0-9 - . : (as in `my-project` or `example.com:my-project`)",
        );
        let project_numbers = exact(
            "project_numbers",
            &c.project_numbers,
            &|v: &str| (1..=20).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()),
            "a project number is 1 to 20 digits",
        );
        let zones = compile_globs(&mut errors, "zones", &c.zones);
        let instance_names = compile_globs(&mut errors, "instance_names", &c.instance_names);
        if errors.is_empty() {
            Ok(Self {
                source: c.clone(),
                project_ids,
                project_numbers,
                zones,
                instance_names,
            })
        } else {
            Err(errors)
        }
    }

    /// No condition: matches every token.
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// Matches the token's `google.compute_engine` claim, if any.
    pub fn evaluate(&self, gce: Option<&ComputeEngine>) -> ConditionOutcome {
        if self.is_empty() {
            return ConditionOutcome {
                met: true,
                details: vec!["no conditions".into()],
            };
        }
        let Some(gce) = gce else {
            return ConditionOutcome {
                met: false,
                details: vec![
                    "the token carries no google.compute_engine claim (only format=full tokens from GCE VMs do; GKE Workload Identity and Cloud Run tokens never do)".into(),
                ],
            };
        };
        let mut met = true;
        let mut details = Vec::new();
        let mut check = |claim: &str,
                         value: Option<&String>,
                         wanted: &[String],
                         matches: &dyn Fn(&str) -> bool| {
            if wanted.is_empty() {
                return;
            }
            let list = wanted.join(", ");
            match value {
                None => {
                    met = false;
                    details.push(format!(
                        "{claim}: the token has none; wanted one of [{list}]"
                    ));
                }
                Some(v) if matches(v) => {
                    details.push(format!("{claim} `{}` matches [{list}]", shorten(v)));
                }
                Some(v) => {
                    met = false;
                    details.push(format!("{claim} `{}` matches none of [{list}]", shorten(v)));
                }
            }
        };
        check(
            "project_id",
            gce.project_id.as_ref(),
            &self.source.project_ids,
            &|v| self.project_ids.contains(v),
        );
        check(
            "project_number",
            gce.project_number.as_ref(),
            &self.source.project_numbers,
            &|v| self.project_numbers.contains(v),
        );
        check("zone", gce.zone.as_ref(), &self.source.zones, &|v| {
            glob_match(self.zones.as_ref(), v)
        });
        check(
            "instance_name",
            gce.instance_name.as_ref(),
            &self.source.instance_names,
            &|v| glob_match(self.instance_names.as_ref(), v),
        );
        ConditionOutcome { met, details }
    }

    /// Whether the claims meet every condition (the hot path: no messages).
    pub fn is_met(&self, gce: Option<&ComputeEngine>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(gce) = gce else {
            return false;
        };
        let exact = |wanted: &HashSet<String>, v: &Option<String>| {
            wanted.is_empty() || v.as_ref().is_some_and(|v| wanted.contains(v))
        };
        let glob = |set: &Option<GlobSet>, v: &Option<String>| match set {
            None => true,
            Some(set) => v.as_ref().is_some_and(|v| glob_match(Some(set), v)),
        };
        exact(&self.project_ids, &gce.project_id)
            && exact(&self.project_numbers, &gce.project_number)
            && glob(&self.zones, &gce.zone)
            && glob(&self.instance_names, &gce.instance_name)
    }
}

fn glob_match(set: Option<&GlobSet>, value: &str) -> bool {
    set.is_some_and(|s| s.is_match_candidate(&Candidate::from_bytes(value.as_bytes())))
}

fn check_list_len(errors: &mut Vec<FieldError>, key: &str, len: usize) {
    if len > MAX_CONDITION_VALUES {
        errors.push(FieldError {
            field: format!("conditions.{key}"),
            reason: format!("{len} values; at most {MAX_CONDITION_VALUES}"),
        });
    }
}

fn valid_project_id(v: &str) -> bool {
    (1..=MAX_CONDITION_VALUE_LEN).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b))
}

/// Compiles globs with `globset`: `*`, `?`, `[a-z]`, `{a,b}`. Values are
/// case-sensitive (GCE zone and instance names are lower case).
fn compile_globs(errors: &mut Vec<FieldError>, key: &str, globs: &[String]) -> Option<GlobSet> {
    if globs.is_empty() {
        return None;
    }
    check_list_len(errors, key, globs.len());
    let mut builder = GlobSetBuilder::new();
    let mut seen = HashSet::new();
    for (i, g) in globs.iter().enumerate() {
        let field = format!("conditions.{key}[{i}]");
        if g.is_empty() || g.len() > MAX_CONDITION_VALUE_LEN {
            errors.push(FieldError {
                field,
                reason: format!("a glob is 1 to {MAX_CONDITION_VALUE_LEN} characters"),
            });
            continue;
        }
        if g.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            errors.push(FieldError {
                field,
                reason: format!(
                    "`{}`: white space, control characters and `/` never occur in {key}",
                    shorten(g)
                ),
            });
            continue;
        }
        if !seen.insert(g.as_str()) {
            errors.push(FieldError {
                field,
                reason: format!("`{g}` is listed twice"),
            });
            continue;
        }
        match GlobBuilder::new(g).literal_separator(true).build() {
            Ok(glob) => {
                builder.add(glob);
            }
            Err(e) => errors.push(FieldError {
                field,
                reason: format!("invalid glob `{}`: {}", shorten(g), e.kind()),
            }),
        }
    }
    match builder.build() {
        Ok(set) => Some(set),
        Err(e) => {
            errors.push(FieldError {
                field: format!("conditions.{key}"),
                reason: format!("invalid globs: {}", e.kind()),
            });
            None
        }
    }
}

// ---------------------------------------------------------------------------
// The policy file (TOML): import and export.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    binding: Vec<Spanned<Binding>>,
}

#[derive(Serialize)]
struct OutFile<'a, B: Serialize> {
    binding: &'a [B],
}

/// Parses a policy file in the extended shape (the contract's keys plus
/// `conditions`, `session_policy` and `managed_policy_arns`) and validates
/// every binding. Problems carry the file and line of the binding.
pub fn from_toml_str(src: &str, path: &Path) -> Result<Vec<Binding>, Vec<Problem>> {
    let raw: RawFile = toml::from_str(src).map_err(|e| {
        vec![Problem {
            file: path.to_path_buf(),
            line: e.span().map(|s| line_of(src, s.start)),
            reason: format!("invalid TOML: {}", e.message().trim()),
        }]
    })?;
    // serde's span of an array-of-tables entry is its header; the entry's
    // keys run to the next header (or the end of the file).
    let starts: Vec<usize> = raw.binding.iter().map(|b| b.span().start).collect();
    let spans: Vec<std::ops::Range<usize>> = starts
        .iter()
        .enumerate()
        .map(|(i, &start)| start..starts.get(i + 1).copied().unwrap_or(src.len()))
        .collect();
    let bindings: Vec<Binding> = raw.binding.into_iter().map(Spanned::into_inner).collect();
    let problems: Vec<Problem> = validate_set(&bindings)
        .into_iter()
        .map(|v| Problem {
            file: path.to_path_buf(),
            line: spans
                .get(v.index)
                .map(|span| field_line(src, span.clone(), &v.error.field)),
            reason: v.to_string(),
        })
        .collect();
    if problems.is_empty() {
        Ok(bindings)
    } else {
        Err(problems)
    }
}

/// The line of `field` (`role_arns[1]`, `conditions.zones[0]`) within the
/// binding at `span`: the line of its key, most specific first, else the
/// binding's first line. (serde gives spans per binding, not per field.)
fn field_line(src: &str, span: std::ops::Range<usize>, field: &str) -> usize {
    let start = span.start.min(src.len());
    let end = span.end.clamp(start, src.len());
    let text = src.get(start..end).unwrap_or_default();
    let keys: Vec<&str> = field
        .split('.')
        .map(|part| part.split('[').next().unwrap_or(part))
        .rev()
        .collect();
    for key in keys {
        let mut offset = start;
        for line in text.split_inclusive('\n') {
            let trimmed = line.trim_start();
            let is_key = trimmed
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
                || trimmed.starts_with(&format!("{{ {key}"))
                || line.contains(&format!("{{ {key} ="))
                || line.contains(&format!(", {key} ="));
            if is_key {
                return line_of(src, offset);
            }
            offset += line.len();
        }
    }
    line_of(src, start)
}

/// Writes bindings as a policy file that [`from_toml_str`] reads back to the
/// same bindings. Bindings that use none of the new keys come out in the
/// contract's shape, which [`Policy::from_toml_str`] reads too.
pub fn to_toml_string(bindings: &[Binding]) -> Result<String, toml::ser::Error> {
    toml::to_string(&OutFile { binding: bindings })
}

/// The contract's keys only.
#[derive(Serialize)]
struct CoreBinding<'a> {
    name: &'a str,
    service_accounts: &'a [String],
    role_arns: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    max_duration_seconds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_duration_seconds: Option<u32>,
}

/// Builds the exchange's [`Policy`] (service account → role grants) from
/// bindings through its public parser. Conditions, session scoping and the
/// deny list are not part of [`Policy`]: use [`PolicySnapshot`], which
/// applies them on top.
pub fn core_policy(bindings: &[Binding], source: &Path) -> Result<Policy, Vec<Problem>> {
    let core: Vec<CoreBinding<'_>> = bindings
        .iter()
        .map(|b| CoreBinding {
            name: &b.name,
            service_accounts: &b.service_accounts,
            role_arns: &b.role_arns,
            max_duration_seconds: b.max_duration_seconds,
            default_duration_seconds: b.default_duration_seconds,
        })
        .collect();
    let text = toml::to_string(&OutFile { binding: &core }).map_err(|e| {
        vec![Problem {
            file: source.to_path_buf(),
            line: None,
            reason: format!("cannot render the policy: {e}"),
        }]
    })?;
    Policy::from_toml_str(&text, source)
}

// ---------------------------------------------------------------------------
// The decision with conditions, scoping and the deny list.

/// The scoping passed to STS with `AssumeRoleWithWebIdentity`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SessionScope {
    /// `Policy`: an inline session policy.
    pub session_policy: Option<String>,
    /// `PolicyArns`: managed session policies.
    pub managed_policy_arns: Vec<String>,
}

impl SessionScope {
    /// No scoping: the role's own permissions.
    pub fn is_unscoped(&self) -> bool {
        self.session_policy.is_none() && self.managed_policy_arns.is_empty()
    }
}

/// The caller as a verified token describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// `sub`: the service account's unique ID.
    pub sub: String,
    /// `email`, if the token has one.
    pub email: Option<String>,
    /// `email_verified`.
    pub email_verified: bool,
    /// `google.compute_engine`, in `format=full` tokens from GCE VMs.
    pub compute_engine: Option<ComputeEngine>,
}

impl Caller {
    fn principal(&self) -> Principal<'_> {
        Principal {
            sub: &self.sub,
            verified_email: self.verified_email(),
        }
    }

    fn verified_email(&self) -> Option<&str> {
        self.email.as_deref().filter(|_| self.email_verified)
    }

    /// The unique ID, and the email if any, for messages.
    pub fn describe(&self) -> String {
        match &self.email {
            Some(email) => format!("{} ({email})", self.sub),
            None => self.sub.clone(),
        }
    }
}

/// What the caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The role to assume.
    pub role_arn: String,
    /// The largest maximum among the matching bindings.
    pub max_duration_seconds: u32,
    /// The largest default among them.
    pub default_duration_seconds: u32,
    /// The matching bindings, sorted.
    pub bindings: BTreeSet<String>,
    /// What STS gets as session policies.
    pub scope: SessionScope,
}

/// Why the caller gets nothing. Each maps to PERMISSION_DENIED, except
/// `Ambiguous` (INVALID_ARGUMENT, as in the contract).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The service account (its `sub` or its email) is on the deny list.
    ServiceAccountDenied,
    /// No binding names the service account.
    NoRoles,
    /// Bindings name it, but none grants this role.
    RoleNotGranted,
    /// Bindings grant the role, but the token meets none's conditions.
    ConditionsNotMet {
        /// The bindings whose conditions failed.
        bindings: BTreeSet<String>,
    },
    /// Several matching bindings grant the role with different session
    /// scoping, and none is unscoped: the union cannot be expressed to STS.
    ConflictingScopes {
        /// The bindings that disagree.
        bindings: BTreeSet<String>,
    },
    /// No role was requested and the caller has several.
    Ambiguous(Vec<String>),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |b: &BTreeSet<String>| b.iter().cloned().collect::<Vec<_>>().join(", ");
        match self {
            Refusal::ServiceAccountDenied => f.write_str("the service account is on the deny list"),
            Refusal::NoRoles => f.write_str("no binding names the service account"),
            Refusal::RoleNotGranted => {
                f.write_str("no binding grants the role to the service account")
            }
            Refusal::ConditionsNotMet { bindings } => write!(
                f,
                "the token does not meet the conditions of the bindings that grant the role ({})",
                names(bindings)
            ),
            Refusal::ConflictingScopes { bindings } => write!(
                f,
                "bindings {} grant the role with different session policies",
                names(bindings)
            ),
            Refusal::Ambiguous(roles) => write!(
                f,
                "the service account may assume several roles ({}); request one",
                roles.join(", ")
            ),
        }
    }
}

/// How one binding relates to a caller and a role (for `Explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Names the caller, grants the role, conditions met.
    Matched,
    /// Does not name the caller's unique ID or verified email.
    ServiceAccountNotListed,
    /// Names the caller but not the requested role.
    RoleNotListed,
    /// Names the caller and the role, but a condition is not met.
    ConditionNotMet,
}

/// One binding's evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The binding's name.
    pub binding: String,
    /// The outcome.
    pub outcome: Outcome,
    /// One line per check.
    pub details: Vec<String>,
}

/// The whole explanation: the decision and every binding's evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// What the exchange would do.
    pub decision: Result<Decision, Refusal>,
    /// The caller is on the deny list.
    pub denied: bool,
    /// Every binding, in name order.
    pub evaluations: Vec<Evaluation>,
}

#[derive(Debug)]
struct Compiled {
    binding: Binding,
    conditions: CompiledConditions,
}

/// Everything the exchange decides with, built once per policy revision:
/// the core [`Policy`] (hash indexes), compiled conditions per binding, and
/// the deny list. Cheap to share behind an `Arc` and swap on change.
#[derive(Debug, Default)]
pub struct PolicySnapshot {
    /// The store revision it was built from (0 for a file).
    pub revision: u64,
    policy: Policy,
    bindings: BTreeMap<String, Arc<Compiled>>,
    denied: HashSet<String>,
}

impl PolicySnapshot {
    /// Builds a snapshot; `source` names the origin in problems.
    pub fn build(
        revision: u64,
        bindings: Vec<Binding>,
        denied: impl IntoIterator<Item = String>,
        source: &Path,
    ) -> Result<Self, Vec<Problem>> {
        let problem = |reason: String| Problem {
            file: source.to_path_buf(),
            line: None,
            reason,
        };
        let violations = validate_set(&bindings);
        if !violations.is_empty() {
            return Err(violations
                .into_iter()
                .map(|v| problem(v.to_string()))
                .collect());
        }
        let policy = core_policy(&bindings, source)?;
        let mut compiled = BTreeMap::new();
        for binding in bindings {
            let conditions = CompiledConditions::new(&binding.conditions).map_err(|errors| {
                errors
                    .into_iter()
                    .map(|e| problem(format!("binding `{}`: {e}", binding.name)))
                    .collect::<Vec<_>>()
            })?;
            compiled.insert(
                binding.name.clone(),
                Arc::new(Compiled {
                    binding,
                    conditions,
                }),
            );
        }
        Ok(Self {
            revision,
            policy,
            bindings: compiled,
            denied: denied.into_iter().map(|s| s.to_ascii_lowercase()).collect(),
        })
    }

    /// Reads a policy file (the contract's keys plus the extended ones) into
    /// a snapshot with no deny list. Problems carry the file and line.
    pub fn load(path: &Path) -> Result<Self, Vec<Problem>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![Problem {
                file: path.to_path_buf(),
                line: None,
                reason: format!("cannot read the policy file: {e}"),
            }]
        })?;
        Self::from_toml_str(&text, path)
    }

    /// [`load`](Self::load) from text; `path` names the source in problems.
    pub fn from_toml_str(src: &str, path: &Path) -> Result<Self, Vec<Problem>> {
        Self::build(0, from_toml_str(src, path)?, [], path)
    }

    /// Every binding, in name order.
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values().map(|c| &c.binding)
    }

    /// How many service accounts are on the deny list.
    pub fn denied_count(&self) -> usize {
        self.denied.len()
    }

    /// The core policy (service account → roles), without conditions,
    /// scoping or the deny list.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// How many bindings.
    pub fn binding_count(&self) -> usize {
        self.bindings.len()
    }

    /// Whether the caller's `sub` or email is on the deny list.
    pub fn is_denied(&self, caller: &Caller) -> bool {
        if self.denied.is_empty() {
            return false;
        }
        // Fail closed: an email on the deny list matches whether or not the
        // token marks it verified.
        self.denied.contains(&caller.sub)
            || caller
                .email
                .as_ref()
                .is_some_and(|e| self.denied.contains(&e.to_ascii_lowercase()))
    }

    /// The decision for `role_arn` (empty: the caller's only role).
    pub fn decide(&self, caller: &Caller, role_arn: &str) -> Result<Decision, Refusal> {
        if self.is_denied(caller) {
            return Err(Refusal::ServiceAccountDenied);
        }
        let who = caller.principal();
        if !role_arn.is_empty() {
            let allowed = self.policy.decide(who, role_arn).map_err(refusal)?;
            return self.finish(caller, role_arn, &allowed.grant.bindings);
        }
        // No role named: the caller's only role among those whose
        // conditions it meets.
        let roles = self.policy.roles_for(who);
        if roles.is_empty() {
            return Err(Refusal::NoRoles);
        }
        let mut usable = Vec::new();
        let mut first_refusal = None;
        for (role, grant) in &roles {
            match self.finish(caller, role, &grant.bindings) {
                Ok(d) => usable.push(d),
                Err(r) => {
                    first_refusal.get_or_insert(r);
                }
            }
        }
        match usable.len() {
            1 => Ok(usable.remove(0)),
            0 => Err(first_refusal.unwrap_or(Refusal::NoRoles)),
            _ => Err(Refusal::Ambiguous(
                usable.into_iter().map(|d| d.role_arn).collect(),
            )),
        }
    }

    /// Applies conditions and merges limits and scoping over the bindings
    /// that grant `role_arn` to the caller.
    fn finish(
        &self,
        caller: &Caller,
        role_arn: &str,
        granting: &BTreeSet<String>,
    ) -> Result<Decision, Refusal> {
        let gce = caller.compute_engine.as_ref();
        let matching: Vec<&Compiled> = granting
            .iter()
            .filter_map(|name| self.bindings.get(name))
            .filter(|c| c.conditions.is_met(gce))
            .map(|c| &**c)
            .collect();
        if matching.is_empty() {
            return Err(Refusal::ConditionsNotMet {
                bindings: granting.clone(),
            });
        }
        let scopes: BTreeSet<_> = matching
            .iter()
            .map(|c| {
                (
                    c.binding.session_policy.clone(),
                    c.binding.managed_policy_arns.clone(),
                )
            })
            .collect();
        let scope = if matching.iter().any(|c| c.binding.scope().is_unscoped()) {
            // The union of an unscoped grant and anything is the whole role.
            SessionScope::default()
        } else if scopes.len() == 1 {
            matching[0].binding.scope()
        } else {
            return Err(Refusal::ConflictingScopes {
                bindings: matching.iter().map(|c| c.binding.name.clone()).collect(),
            });
        };
        Ok(Decision {
            role_arn: role_arn.to_string(),
            max_duration_seconds: matching
                .iter()
                .map(|c| c.binding.effective_max_duration())
                .max()
                .unwrap_or(DEFAULT_MAX_DURATION_SECONDS),
            default_duration_seconds: matching
                .iter()
                .map(|c| c.binding.effective_default_duration())
                .max()
                .unwrap_or(DEFAULT_MAX_DURATION_SECONDS),
            bindings: matching.iter().map(|c| c.binding.name.clone()).collect(),
            scope,
        })
    }

    /// Evaluates every binding for the caller and the role (empty: any
    /// role), and the decision.
    pub fn explain(&self, caller: &Caller, role_arn: &str) -> Explanation {
        let verified = caller.verified_email().map(str::to_ascii_lowercase);
        let gce = caller.compute_engine.as_ref();
        let evaluations = self
            .bindings
            .values()
            .map(|c| {
                let b = &c.binding;
                let mut details = Vec::new();
                let by_sub = b.service_accounts.iter().any(|sa| sa == &caller.sub);
                let by_email = verified.as_ref().is_some_and(|e| {
                    b.service_accounts
                        .iter()
                        .any(|sa| sa.eq_ignore_ascii_case(e))
                });
                if by_sub {
                    details.push(format!("names the unique ID {}", caller.sub));
                }
                if by_email {
                    details.push(format!(
                        "names the verified email {}",
                        verified.as_deref().unwrap_or_default()
                    ));
                }
                if !by_sub && !by_email {
                    let unverified = caller.email.as_ref().filter(|e| {
                        !caller.email_verified
                            && b.service_accounts
                                .iter()
                                .any(|sa| sa.eq_ignore_ascii_case(e))
                    });
                    details.push(match unverified {
                        Some(e) => {
                            format!("names the email {e}, but the token does not mark it verified")
                        }
                        None => format!("does not name {}", caller.describe()),
                    });
                    return Evaluation {
                        binding: b.name.clone(),
                        outcome: Outcome::ServiceAccountNotListed,
                        details,
                    };
                }
                if !role_arn.is_empty() {
                    if b.role_arns.iter().any(|r| r == role_arn) {
                        details.push(format!("grants {role_arn}"));
                    } else {
                        details.push(format!(
                            "does not grant {role_arn} (grants {})",
                            b.role_arns.join(", ")
                        ));
                        return Evaluation {
                            binding: b.name.clone(),
                            outcome: Outcome::RoleNotListed,
                            details,
                        };
                    }
                }
                let conditions = c.conditions.evaluate(gce);
                details.extend(conditions.details);
                Evaluation {
                    binding: b.name.clone(),
                    outcome: if conditions.met {
                        Outcome::Matched
                    } else {
                        Outcome::ConditionNotMet
                    },
                    details,
                }
            })
            .collect();
        Explanation {
            decision: self.decide(caller, role_arn),
            denied: self.is_denied(caller),
            evaluations,
        }
    }

    /// The binding named `name`, if any.
    pub fn binding(&self, name: &str) -> Option<&Binding> {
        self.bindings.get(name).map(|c| &c.binding)
    }
}

fn refusal(d: Denied) -> Refusal {
    match d {
        policy::Denied::NoRoles => Refusal::NoRoles,
        policy::Denied::RoleNotGranted => Refusal::RoleNotGranted,
        policy::Denied::Ambiguous(roles) => Refusal::Ambiguous(roles),
    }
}

#[cfg(test)]
mod tests;
