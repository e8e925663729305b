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
//! issuer = true                      # optional: issuer mode (README, "Issuer mode")
//! session_tags = { team = "a", sa = "{email}" }   # optional, issuer mode: ≤ 50 tags
//! source_identity = "{email}"        # optional, issuer mode
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
//! [`PolicySnapshot`](crate::PolicySnapshot) is the decision structure built
//! from a set of bindings and the deny list.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
};

use serde::{Deserialize, Serialize};

use crate::{
    conditions::CompiledConditions,
    rules::{
        DEFAULT_MAX_DURATION_SECONDS, MAX_DURATION_SECONDS, MAX_MANAGED_POLICY_ARNS,
        MIN_DURATION_SECONDS, check_managed_policy_arn, check_role_arn, check_session_policy,
        classify_service_account, shorten, valid_binding_name, valid_duration,
    },
    session::{self, SessionIdentity},
};

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
    /// Issuer mode: `true` STS gets a token tokenbridge signs, `false` the
    /// caller's own Google token, unset the server's `[issuer] default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<bool>,
    /// Session tags (issuer mode): key -> value template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub session_tags: BTreeMap<String, String>,
    /// Source identity (issuer mode): a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_identity: Option<String>,
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

    /// What this binding asks of the STS session in issuer mode.
    pub fn session_identity(&self) -> SessionIdentity {
        SessionIdentity {
            issuer: self.issuer,
            session_tags: self.session_tags.clone(),
            source_identity: self.source_identity.clone(),
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

        if let Some(max) = self.max_duration_seconds
            && !valid_duration(max)
        {
            err(
                "max_duration_seconds".into(),
                format!("{max} is outside {MIN_DURATION_SECONDS}..={MAX_DURATION_SECONDS}"),
            );
        }
        if let Some(default) = self.default_duration_seconds {
            if !valid_duration(default) {
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

        session::validate(&self.session_identity(), &mut errors);

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
