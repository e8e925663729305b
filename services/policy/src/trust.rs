//! IAM trust policies for roles that tokenbridge callers assume: the policy a
//! role needs for a binding, and a linter for existing ones.
//!
//! tokenbridge calls `AssumeRoleWithWebIdentity` with the caller's own Google
//! ID token, so the role's trust policy decides too. For Google tokens STS
//! exposes three condition keys:
//!
//! | key | token claim | what it should be |
//! | --- | --- | --- |
//! | `accounts.google.com:aud` | `azp` | the service account's unique ID |
//! | `accounts.google.com:oaud` | `aud` | tokenbridge's audience |
//! | `accounts.google.com:sub` | `sub` | the service account's unique ID |
//!
//! The names mislead: `:aud` is *not* the token's audience. Emails cannot be
//! used: STS compares the numeric unique ID (`gcloud iam service-accounts
//! describe EMAIL --format='value(uniqueId)'`).

use std::{collections::BTreeSet, fmt};

use serde_json::{Map, Value, json};

use crate::{
    binding::Binding,
    rules::{ServiceAccountRef, classify_service_account},
};

/// The principal STS uses for Google's ID tokens.
pub const GOOGLE_FEDERATED_PRINCIPAL: &str = "accounts.google.com";
/// Condition key for the token's `azp` (the service account's unique ID).
pub const KEY_AUD: &str = "accounts.google.com:aud";
/// Condition key for the token's `aud` (tokenbridge's audience).
pub const KEY_OAUD: &str = "accounts.google.com:oaud";
/// Condition key for the token's `sub` (the service account's unique ID).
pub const KEY_SUB: &str = "accounts.google.com:sub";

/// Why a trust policy cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustPolicyError {
    /// No audience was given: the policy must pin `oaud`.
    #[error("no audience: give tokenbridge's audience (one of google.audiences)")]
    NoAudience,
    /// The binding names no unique ID (only emails, which STS cannot check).
    #[error(
        "the binding names no service account unique ID; trust policies need unique IDs, not emails (gcloud iam service-accounts describe EMAIL --format='value(uniqueId)')"
    )]
    NoUniqueIds,
}

/// A generated trust policy and what it could not cover.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustPolicy {
    /// The roles that need this policy (the binding's `role_arns`).
    pub role_arns: Vec<String>,
    /// The policy document.
    pub document: Value,
    /// Service accounts named by email in the binding: they are left out
    /// until their unique IDs are given.
    pub unresolved_emails: Vec<String>,
}

/// The trust policy document for these unique IDs and audiences: one
/// statement per service account, each pinning `aud` and `sub` to its unique
/// ID and `oaud` to the audiences, with `StringEquals`.
pub fn document(unique_ids: &[String], audiences: &[String]) -> Result<Value, TrustPolicyError> {
    if audiences.is_empty() {
        return Err(TrustPolicyError::NoAudience);
    }
    let ids: BTreeSet<&String> = unique_ids.iter().collect();
    if ids.is_empty() {
        return Err(TrustPolicyError::NoUniqueIds);
    }
    let oaud = match audiences {
        [one] => json!(one),
        many => json!(many),
    };
    let statements: Vec<Value> = ids
        .into_iter()
        .map(|id| {
            json!({
                "Effect": "Allow",
                "Principal": { "Federated": GOOGLE_FEDERATED_PRINCIPAL },
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        KEY_AUD: id,
                        KEY_OAUD: oaud,
                        KEY_SUB: id,
                    }
                }
            })
        })
        .collect();
    Ok(json!({ "Version": "2012-10-17", "Statement": statements }))
}

/// The trust policy the roles of `binding` need. `resolved` maps emails to
/// unique IDs, for bindings that name service accounts by email.
pub fn for_binding(
    binding: &Binding,
    audiences: &[String],
    resolved: &dyn Fn(&str) -> Option<String>,
) -> Result<TrustPolicy, TrustPolicyError> {
    let mut ids = Vec::new();
    let mut unresolved = Vec::new();
    for sa in &binding.service_accounts {
        match classify_service_account(sa) {
            Some(ServiceAccountRef::UniqueId) => ids.push(sa.clone()),
            Some(ServiceAccountRef::Email) => match resolved(sa) {
                Some(id) => ids.push(id),
                None => unresolved.push(sa.clone()),
            },
            None => {}
        }
    }
    Ok(TrustPolicy {
        role_arns: binding.role_arns.clone(),
        document: document(&ids, audiences)?,
        unresolved_emails: unresolved,
    })
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Works, but weaker or more fragile than it should be.
    Warning,
    /// Lets the wrong callers in, or keeps the right ones out.
    Error,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LintKind {
    /// Not JSON, not an object, or no `Statement`.
    InvalidDocument,
    /// No statement allows `sts:AssumeRoleWithWebIdentity` for Google.
    NoGoogleStatement,
    /// `Principal` is `*` (or `{"AWS": "*"}`, `{"Federated": "*"}`).
    WildcardPrincipal,
    /// A web identity statement whose federated principal is not Google.
    NotGooglePrincipal,
    /// A Google statement with no `Condition` at all.
    NoConditions,
    /// No `accounts.google.com:aud` condition.
    MissingAud,
    /// No `accounts.google.com:sub` condition.
    MissingSub,
    /// No `accounts.google.com:oaud` condition.
    MissingOaud,
    /// `:aud` holds the audience and/or `:oaud` holds a unique ID.
    AudOaudSwapped,
    /// An email in `:aud` or `:sub`, where STS compares the unique ID.
    EmailForUniqueId,
    /// `:aud` or `:sub` is neither a unique ID nor an email.
    NotAUniqueId,
    /// `StringLike` with `*` or `?` on a Google key.
    WildcardStringLike,
    /// `:aud` and `:sub` pin different unique IDs; no service account token
    /// has `azp` ≠ `sub`, so the statement matches nothing.
    AudSubDiffer,
    /// Issuer mode: a statement trusting tokenbridge's issuer (an IAM OIDC
    /// provider) without a condition on `ISSUER:aud`.
    IssuerMissingAud,
    /// Issuer mode: no condition on `ISSUER:sub` and none on
    /// `aws:RequestTag/…`: every identity the issuer signs for gets the role.
    IssuerUnpinned,
    /// A Google statement beside an issuer statement: workloads can still
    /// call STS with their own Google token and walk around tokenbridge.
    GoogleBesideIssuer,
    /// A pass-through binding whose session policies, conditions or
    /// duration cap a workload walks around by calling STS itself.
    PassThroughBypass,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lint {
    /// How bad.
    pub severity: Severity,
    /// What kind.
    pub kind: LintKind,
    /// The statement (0-based), when the finding is about one.
    pub statement: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Lint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.statement {
            Some(i) => write!(f, "{severity}: Statement[{i}]: {}", self.message),
            None => write!(f, "{severity}: {}", self.message),
        }
    }
}

/// Reads a trust policy document and reports the usual mistakes, errors
/// first. An empty result means none was found.
pub fn lint(text: &str) -> Vec<Lint> {
    let mut out = Vec::new();
    let invalid = |message: String| Lint {
        severity: Severity::Error,
        kind: LintKind::InvalidDocument,
        statement: None,
        message,
    };
    let doc: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return vec![invalid(format!("not valid JSON: {e}"))],
    };
    let Some(statements) = doc.get("Statement") else {
        return vec![invalid("no `Statement`".into())];
    };
    let statements: Vec<&Value> = match statements {
        Value::Array(items) => items.iter().collect(),
        one @ Value::Object(_) => vec![one],
        _ => return vec![invalid("`Statement` must be an object or an array".into())],
    };

    let mut google_statements = 0;
    let mut issuer_statements = 0;
    for (i, st) in statements.iter().enumerate() {
        let mut push = |severity, kind, message: String| {
            out.push(Lint {
                severity,
                kind,
                statement: Some(i),
                message,
            });
        };
        let allows = st
            .get("Effect")
            .and_then(Value::as_str)
            .is_some_and(|e| e == "Allow");
        if !allows {
            continue;
        }
        let principal = st.get("Principal");
        if principal.is_some_and(is_wildcard_principal) {
            push(
                Severity::Error,
                LintKind::WildcardPrincipal,
                "`Principal` is `*`: anyone can assume the role; use {\"Federated\": \"accounts.google.com\"}".into(),
            );
            continue;
        }
        if !strings(st.get("Action"))
            .iter()
            .any(|a| action_covers_web_identity(a))
        {
            continue;
        }
        let federated = strings(principal.and_then(|p| p.get("Federated")));
        if federated.is_empty() {
            continue;
        }
        if let Some(prefix) = federated
            .iter()
            .find_map(|f| f.split_once(":oidc-provider/").map(|(_, p)| p.to_owned()))
        {
            // Issuer mode: tokenbridge's issuer behind an IAM OIDC provider.
            issuer_statements += 1;
            let condition = st.get("Condition").and_then(Value::as_object);
            let keyed = |suffix: &str| {
                condition.is_some_and(|c| {
                    c.values().filter_map(Value::as_object).any(|m| {
                        m.keys()
                            .any(|k| k.eq_ignore_ascii_case(&format!("{prefix}:{suffix}")))
                    })
                })
            };
            let by_tag = condition.is_some_and(|c| {
                c.values()
                    .filter_map(Value::as_object)
                    .any(|m| m.keys().any(|k| k.starts_with("aws:RequestTag/")))
            });
            if !keyed("aud") {
                push(
                    Severity::Error,
                    LintKind::IssuerMissingAud,
                    format!(
                        "no condition on `{prefix}:aud`: pin it to tokenbridge's [issuer] audience (sts.amazonaws.com)"
                    ),
                );
            }
            if !keyed("sub") && !by_tag {
                push(
                    Severity::Error,
                    LintKind::IssuerUnpinned,
                    format!(
                        "no condition on `{prefix}:sub` or on aws:RequestTag/…: every service account tokenbridge signs for can assume the role"
                    ),
                );
            }
            continue;
        }
        if !federated
            .iter()
            .any(|f| f.eq_ignore_ascii_case(GOOGLE_FEDERATED_PRINCIPAL))
        {
            push(
                Severity::Warning,
                LintKind::NotGooglePrincipal,
                format!(
                    "the federated principal {} is not `{GOOGLE_FEDERATED_PRINCIPAL}`; Google ID tokens cannot assume the role through this statement, and it is not an IAM OIDC provider for tokenbridge's issuer",
                    federated.join(", ")
                ),
            );
            continue;
        }
        google_statements += 1;

        let Some(condition) = st.get("Condition").and_then(Value::as_object) else {
            push(
                Severity::Error,
                LintKind::NoConditions,
                format!(
                    "no `Condition`: any Google-signed ID token, of any service account and for any audience, can assume the role; add StringEquals on {KEY_AUD}, {KEY_OAUD} and {KEY_SUB}"
                ),
            );
            continue;
        };
        let keys = google_keys(condition);
        if keys.is_empty() {
            push(
                Severity::Error,
                LintKind::NoConditions,
                format!(
                    "no condition on {KEY_AUD}, {KEY_OAUD} or {KEY_SUB}: any Google service account can assume the role"
                ),
            );
            continue;
        }
        let values_of = |key: &str| -> Vec<String> {
            keys.iter()
                .filter(|k| k.key == key)
                .flat_map(|k| k.values.clone())
                .collect()
        };

        for k in &keys {
            if k.operator.eq_ignore_ascii_case("StringLike")
                && k.values.iter().any(|v| v.contains('*') || v.contains('?'))
            {
                push(
                    Severity::Error,
                    LintKind::WildcardStringLike,
                    format!(
                        "StringLike with a wildcard on {}: matches more than the intended service account or audience; use StringEquals with exact values",
                        k.key
                    ),
                );
            }
        }

        let aud = values_of(KEY_AUD);
        let oaud = values_of(KEY_OAUD);
        let sub = values_of(KEY_SUB);
        let is_id = |v: &String| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
        let is_email = |v: &String| v.contains('@');

        let swapped = (!aud.is_empty() && aud.iter().any(|v| looks_like_audience(v)))
            || (!oaud.is_empty() && oaud.iter().all(is_id));
        if swapped {
            push(
                Severity::Error,
                LintKind::AudOaudSwapped,
                format!(
                    "{KEY_AUD} and {KEY_OAUD} look swapped: {KEY_AUD} is the token's `azp`, the service account's unique ID; {KEY_OAUD} is the token's `aud`, tokenbridge's audience (found aud = [{}], oaud = [{}])",
                    aud.join(", "),
                    oaud.join(", ")
                ),
            );
        }
        for (key, values) in [(KEY_AUD, &aud), (KEY_SUB, &sub)] {
            for v in values.iter() {
                if is_email(v) {
                    push(
                        Severity::Error,
                        LintKind::EmailForUniqueId,
                        format!(
                            "{key} is `{v}`, an email; STS compares the numeric unique ID (gcloud iam service-accounts describe {v} --format='value(uniqueId)')"
                        ),
                    );
                } else if !(is_id(v) || v.contains('*') || (key == KEY_AUD && swapped)) {
                    push(
                        Severity::Error,
                        LintKind::NotAUniqueId,
                        format!(
                            "{key} is `{v}`, which is not a service account unique ID (digits)"
                        ),
                    );
                }
            }
        }
        if aud.is_empty() {
            push(
                Severity::Error,
                LintKind::MissingAud,
                format!(
                    "no {KEY_AUD} condition: STS requires it for Google, and it pins the service account (the token's azp)"
                ),
            );
        }
        if sub.is_empty() {
            push(
                Severity::Error,
                LintKind::MissingSub,
                format!(
                    "no {KEY_SUB} condition: pin the service account's unique ID, so only that identity can assume the role"
                ),
            );
        }
        if oaud.is_empty() {
            push(
                Severity::Warning,
                LintKind::MissingOaud,
                format!(
                    "no {KEY_OAUD} condition: a token the service account got for any other audience can be replayed here; pin tokenbridge's audience"
                ),
            );
        }
        let aud_ids: BTreeSet<&String> = aud.iter().filter(|v| is_id(v)).collect();
        let sub_ids: BTreeSet<&String> = sub.iter().filter(|v| is_id(v)).collect();
        if !aud_ids.is_empty() && !sub_ids.is_empty() && aud_ids.is_disjoint(&sub_ids) {
            push(
                Severity::Warning,
                LintKind::AudSubDiffer,
                "aud and sub pin different unique IDs; a service account's token has azp = sub, so this statement matches no token".into(),
            );
        }
    }
    if google_statements > 0 && issuer_statements > 0 {
        out.push(Lint {
            severity: Severity::Warning,
            kind: LintKind::GoogleBesideIssuer,
            statement: None,
            message: "the role trusts both Google and tokenbridge's issuer: until the Google statement is removed, workloads can call STS with their own Google token and walk around tokenbridge's policy (fine while moving a role to issuer mode)".into(),
        });
    }
    if google_statements == 0
        && issuer_statements == 0
        && !out.iter().any(|l| l.kind == LintKind::WildcardPrincipal)
    {
        out.push(Lint {
            severity: Severity::Error,
            kind: LintKind::NoGoogleStatement,
            statement: None,
            message: format!(
                "no statement allows sts:AssumeRoleWithWebIdentity for the federated principal `{GOOGLE_FEDERATED_PRINCIPAL}`: tokenbridge's callers cannot assume this role"
            ),
        });
    }
    out.sort_by_key(|l| std::cmp::Reverse(l.severity));
    out
}

fn is_wildcard_principal(p: &Value) -> bool {
    match p {
        Value::String(s) => s == "*",
        Value::Object(m) => m
            .values()
            .any(|v| strings(Some(v)).iter().any(|s| s == "*")),
        _ => false,
    }
}

fn action_covers_web_identity(action: &str) -> bool {
    let a = action.to_ascii_lowercase();
    a == "*" || a == "sts:*" || a == "sts:assumerolewithwebidentity"
}

/// A string or an array of strings, as IAM allows almost everywhere.
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// An audience rather than a unique ID: a URL or anything with a dot or colon.
fn looks_like_audience(v: &str) -> bool {
    !v.contains('@') && (v.contains("://") || v.contains('.') || v.contains(':'))
}

struct GoogleKey {
    operator: String,
    /// Lower-cased: IAM condition keys are case-insensitive.
    key: String,
    values: Vec<String>,
}

/// Every condition on a Google key, under any operator that tests equality
/// or likeness (negated operators do not pin anything).
fn google_keys(condition: &Map<String, Value>) -> Vec<GoogleKey> {
    let mut out = Vec::new();
    for (operator, tests) in condition {
        let base = operator
            .rsplit(':')
            .next()
            .unwrap_or(operator)
            .trim_end_matches("IfExists");
        let pins = ["StringEquals", "StringLike", "StringEqualsIgnoreCase"]
            .iter()
            .any(|o| o.eq_ignore_ascii_case(base));
        if !pins {
            continue;
        }
        let Some(tests) = tests.as_object() else {
            continue;
        };
        for (key, values) in tests {
            let key = key.to_ascii_lowercase();
            if [KEY_AUD, KEY_OAUD, KEY_SUB].contains(&key.as_str()) {
                out.push(GoogleKey {
                    operator: base.to_string(),
                    key,
                    values: strings(Some(values)),
                });
            }
        }
    }
    out
}

/// What a binding asks that a workload calling STS directly with its own
/// Google token walks around, when the binding is in pass-through mode
/// (`issuer_default` is the server's `[issuer] default`): the role's trust
/// policy alone decides such a call. Empty in issuer mode.
pub fn bypassable(binding: &Binding, issuer_default: bool) -> Vec<&'static str> {
    if binding.issuer.unwrap_or(issuer_default) {
        return Vec::new();
    }
    let mut out = Vec::new();
    if binding.session_policy.is_some() || !binding.managed_policy_arns.is_empty() {
        out.push("session policies");
    }
    if !binding.conditions.is_empty() {
        out.push("GCE conditions");
    }
    if binding
        .max_duration_seconds
        .is_some_and(|m| m < crate::rules::MAX_DURATION_SECONDS)
        || binding.max_duration_seconds.is_none()
    {
        out.push("the maximum duration");
    }
    out
}

/// The issuer-mode trust policy the roles of `binding` need: STS trusts
/// tokenbridge's issuer (`Federated` = the account's IAM OIDC provider for
/// `issuer_url`), `ISSUER:aud` pinned to `audience` and `ISSUER:sub` to the
/// service accounts' unique IDs; `sts:TagSession` and
/// `sts:SetSourceIdentity` when the binding sends tags or a source identity.
/// One statement per AWS account among the binding's roles.
pub fn for_binding_issuer(
    binding: &Binding,
    issuer_url: &str,
    audience: &str,
    resolved: &dyn Fn(&str) -> Option<String>,
) -> Result<TrustPolicy, TrustPolicyError> {
    let pass_through = for_binding(binding, &[audience.to_owned()], resolved)?;
    let ids: BTreeSet<String> = binding
        .service_accounts
        .iter()
        .filter_map(|sa| match classify_service_account(sa) {
            Some(ServiceAccountRef::UniqueId) => Some(sa.clone()),
            Some(ServiceAccountRef::Email) => resolved(sa),
            None => None,
        })
        .collect();
    let prefix = issuer_url.strip_prefix("https://").unwrap_or(issuer_url);
    let mut actions = vec!["sts:AssumeRoleWithWebIdentity"];
    if !binding.session_tags.is_empty() {
        actions.push("sts:TagSession");
    }
    if binding.source_identity.is_some() {
        actions.push("sts:SetSourceIdentity");
    }
    let accounts: BTreeSet<&str> = binding
        .role_arns
        .iter()
        .filter_map(|arn| arn.split(':').nth(4))
        .collect();
    let subs = match ids.len() {
        1 => json!(ids.iter().next()),
        _ => json!(ids),
    };
    let statements: Vec<Value> = accounts
        .into_iter()
        .map(|account| {
            json!({
                "Effect": "Allow",
                "Principal": { "Federated": format!("arn:aws:iam::{account}:oidc-provider/{prefix}") },
                "Action": actions,
                "Condition": {
                    "StringEquals": {
                        format!("{prefix}:aud"): audience,
                        format!("{prefix}:sub"): subs,
                    }
                }
            })
        })
        .collect();
    Ok(TrustPolicy {
        role_arns: binding.role_arns.clone(),
        document: json!({ "Version": "2012-10-17", "Statement": statements }),
        unresolved_emails: pass_through.unresolved_emails,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "112233445566778899001";
    const AUD: &str = "https://tokenbridge.example.com";

    fn kinds(text: &str) -> Vec<LintKind> {
        lint(text).into_iter().map(|l| l.kind).collect()
    }

    fn policy_with(statement: Value) -> String {
        json!({ "Version": "2012-10-17", "Statement": [statement] }).to_string()
    }

    fn google_statement(condition: Value) -> Value {
        json!({
            "Effect": "Allow",
            "Principal": { "Federated": "accounts.google.com" },
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": condition,
        })
    }

    #[test]
    fn generated_policy_pins_aud_oaud_and_sub_and_lints_clean() {
        let doc = document(&[ID.to_string()], &[AUD.to_string()]).unwrap();
        let st = &doc["Statement"][0];
        assert_eq!(st["Principal"]["Federated"], "accounts.google.com");
        assert_eq!(st["Action"], "sts:AssumeRoleWithWebIdentity");
        assert_eq!(st["Effect"], "Allow");
        let eq = &st["Condition"]["StringEquals"];
        assert_eq!(eq[KEY_AUD], ID);
        assert_eq!(eq[KEY_OAUD], AUD);
        assert_eq!(eq[KEY_SUB], ID);
        assert!(
            lint(&doc.to_string()).is_empty(),
            "{:?}",
            lint(&doc.to_string())
        );
    }

    #[test]
    fn generated_policy_has_one_statement_per_service_account() {
        let binding = Binding {
            name: "b".into(),
            service_accounts: vec![
                "2".into(),
                "1".into(),
                "etl@p.iam.gserviceaccount.com".into(),
                "other@p.iam.gserviceaccount.com".into(),
            ],
            role_arns: vec!["arn:aws:iam::111122223333:role/R".into()],
            ..Binding::default()
        };
        let resolve =
            |email: &str| (email == "etl@p.iam.gserviceaccount.com").then(|| "3".to_string());
        let tp = for_binding(&binding, &[AUD.into(), "aud2".into()], &resolve).unwrap();
        assert_eq!(tp.role_arns, binding.role_arns);
        assert_eq!(tp.unresolved_emails, ["other@p.iam.gserviceaccount.com"]);
        let statements = tp.document["Statement"].as_array().unwrap();
        let subs: Vec<&str> = statements
            .iter()
            .map(|s| s["Condition"]["StringEquals"][KEY_SUB].as_str().unwrap())
            .collect();
        assert_eq!(subs, ["1", "2", "3"]);
        assert_eq!(
            statements[0]["Condition"]["StringEquals"][KEY_OAUD],
            json!([AUD, "aud2"])
        );
        assert!(lint(&tp.document.to_string()).is_empty());
    }

    #[test]
    fn generation_needs_an_audience_and_a_unique_id() {
        assert_eq!(
            document(&[ID.into()], &[]),
            Err(TrustPolicyError::NoAudience)
        );
        let only_email = Binding {
            service_accounts: vec!["a@p.iam.gserviceaccount.com".into()],
            ..Binding::default()
        };
        assert_eq!(
            for_binding(&only_email, &[AUD.into()], &|_| None).unwrap_err(),
            TrustPolicyError::NoUniqueIds
        );
    }

    #[test]
    fn aud_oaud_swap_is_an_error() {
        let text = policy_with(google_statement(json!({
            "StringEquals": { KEY_AUD: AUD, KEY_OAUD: ID, KEY_SUB: ID }
        })));
        let lints = lint(&text);
        assert_eq!(lints[0].kind, LintKind::AudOaudSwapped, "{lints:?}");
        assert_eq!(lints[0].severity, Severity::Error);
        assert!(lints[0].message.contains("azp"), "{}", lints[0].message);
        assert!(!kinds(&text).contains(&LintKind::NotAUniqueId));
    }

    #[test]
    fn email_where_the_unique_id_belongs_is_an_error() {
        let email = "etl@p.iam.gserviceaccount.com";
        let text = policy_with(google_statement(json!({
            "StringEquals": { KEY_AUD: ID, KEY_OAUD: AUD, KEY_SUB: email }
        })));
        let lints = lint(&text);
        assert_eq!(kinds(&text), [LintKind::EmailForUniqueId], "{lints:?}");
        assert!(lints[0].message.contains("uniqueId"));
        assert!(lints[0].to_string().starts_with("error: Statement[0]: "));
    }

    #[test]
    fn no_conditions_is_an_error() {
        let mut st = google_statement(json!({}));
        st.as_object_mut().unwrap().remove("Condition");
        assert_eq!(kinds(&policy_with(st)), [LintKind::NoConditions]);
        // Conditions that pin nothing Google-specific count as none.
        let st = google_statement(json!({ "StringEquals": { "aws:SourceIp": "10.0.0.1" } }));
        assert_eq!(kinds(&policy_with(st)), [LintKind::NoConditions]);
    }

    #[test]
    fn wildcard_principal_is_an_error() {
        for principal in [
            json!("*"),
            json!({ "AWS": "*" }),
            json!({ "Federated": ["*"] }),
        ] {
            let text = policy_with(json!({
                "Effect": "Allow",
                "Principal": principal,
                "Action": "sts:AssumeRoleWithWebIdentity",
            }));
            assert_eq!(kinds(&text), [LintKind::WildcardPrincipal], "{principal}");
        }
    }

    #[test]
    fn missing_sub_aud_and_oaud_are_reported() {
        let text = policy_with(google_statement(json!({
            "StringEquals": { KEY_AUD: ID, KEY_OAUD: AUD }
        })));
        assert_eq!(kinds(&text), [LintKind::MissingSub]);
        let text = policy_with(google_statement(json!({
            "StringEquals": { KEY_OAUD: AUD, KEY_SUB: ID }
        })));
        assert_eq!(kinds(&text), [LintKind::MissingAud]);
        let text = policy_with(google_statement(json!({
            "StringEquals": { KEY_AUD: ID, KEY_SUB: ID }
        })));
        let lints = lint(&text);
        assert_eq!(kinds(&text), [LintKind::MissingOaud]);
        assert_eq!(lints[0].severity, Severity::Warning);
    }

    #[test]
    fn string_like_with_wildcards_is_an_error() {
        let text = policy_with(google_statement(json!({
            "StringEquals": { KEY_AUD: ID, KEY_OAUD: AUD },
            "StringLike": { KEY_SUB: "1122*" }
        })));
        let lints = lint(&text);
        assert_eq!(kinds(&text), [LintKind::WildcardStringLike], "{lints:?}");
        assert!(lints[0].message.contains(KEY_SUB));
        // StringLike with exact values is fine.
        let text = policy_with(google_statement(json!({
            "StringEquals": { KEY_AUD: ID, KEY_OAUD: AUD },
            "StringLike": { KEY_SUB: ID }
        })));
        assert!(lint(&text).is_empty());
    }

    #[test]
    fn keys_are_case_insensitive_and_values_may_be_arrays() {
        let text = policy_with(google_statement(json!({
            "StringEquals": {
                "Accounts.Google.Com:AUD": [ID],
                "accounts.google.com:OAUD": [AUD],
                "accounts.google.com:Sub": [ID]
            }
        })));
        assert!(lint(&text).is_empty(), "{:?}", lint(&text));
    }

    #[test]
    fn aud_and_sub_naming_different_ids_is_a_warning() {
        let text = policy_with(google_statement(json!({
            "StringEquals": { KEY_AUD: "1", KEY_OAUD: AUD, KEY_SUB: "2" }
        })));
        assert_eq!(kinds(&text), [LintKind::AudSubDiffer]);
    }

    #[test]
    fn a_value_that_is_neither_id_nor_email_is_an_error() {
        let text = policy_with(google_statement(json!({
            "StringEquals": { KEY_AUD: ID, KEY_OAUD: AUD, KEY_SUB: "my-service-account" }
        })));
        assert_eq!(kinds(&text), [LintKind::NotAUniqueId]);
    }

    #[test]
    fn documents_without_a_google_statement_or_not_json() {
        assert_eq!(kinds("not json"), [LintKind::InvalidDocument]);
        assert_eq!(kinds("{}"), [LintKind::InvalidDocument]);
        let ec2 = policy_with(json!({
            "Effect": "Allow",
            "Principal": { "Service": "ec2.amazonaws.com" },
            "Action": "sts:AssumeRole",
        }));
        assert_eq!(kinds(&ec2), [LintKind::NoGoogleStatement]);
        let other_idp = policy_with(json!({
            "Effect": "Allow",
            "Principal": { "Federated": "cognito-identity.amazonaws.com" },
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": { "StringEquals": { "cognito-identity.amazonaws.com:aud": "x" } }
        }));
        assert_eq!(
            kinds(&other_idp),
            [LintKind::NoGoogleStatement, LintKind::NotGooglePrincipal]
        );
    }

    #[test]
    fn issuer_mode_policies_are_linted_as_such() {
        let b = Binding {
            name: "b".into(),
            service_accounts: vec!["112233".into()],
            role_arns: vec!["arn:aws:iam::111122223333:role/R".into()],
            issuer: Some(true),
            session_tags: [("team".to_string(), "a".to_string())].into(),
            ..Binding::default()
        };
        let printed =
            for_binding_issuer(&b, "https://i.example", "sts.amazonaws.com", &|_| None).unwrap();
        let st = &printed.document["Statement"][0];
        assert_eq!(
            st["Principal"]["Federated"],
            "arn:aws:iam::111122223333:oidc-provider/i.example"
        );
        assert_eq!(
            st["Action"],
            json!(["sts:AssumeRoleWithWebIdentity", "sts:TagSession"])
        );
        assert_eq!(st["Condition"]["StringEquals"]["i.example:sub"], "112233");
        assert!(
            lint(&printed.document.to_string()).is_empty(),
            "{:?}",
            lint(&printed.document.to_string())
        );
        let open = json!({"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
            "Principal": {"Federated": "arn:aws:iam::111122223333:oidc-provider/i.example"}}]});
        let kinds: Vec<LintKind> = lint(&open.to_string())
            .into_iter()
            .map(|l| l.kind)
            .collect();
        assert_eq!(
            kinds,
            [LintKind::IssuerMissingAud, LintKind::IssuerUnpinned]
        );
        let google = for_binding(&b, &["aud".into()], &|_| None)
            .unwrap()
            .document;
        let both = json!({"Statement": [google["Statement"][0].clone(), st.clone()]});
        let kinds: Vec<LintKind> = lint(&both.to_string())
            .into_iter()
            .map(|l| l.kind)
            .collect();
        assert_eq!(kinds, [LintKind::GoogleBesideIssuer]);
        assert_eq!(bypassable(&b, false), Vec::<&str>::new());
        let mut passed = b.clone();
        passed.issuer = None;
        passed.session_tags.clear();
        passed.max_duration_seconds = Some(43_200);
        assert!(bypassable(&passed, false).is_empty());
        passed.session_policy = Some("{}".into());
        assert_eq!(bypassable(&passed, false), ["session policies"]);
        assert!(bypassable(&passed, true).is_empty());
    }
}
