//! The decision snapshot: bindings indexed by service account, compiled
//! conditions, the deny list and the store's revocations of cached
//! credentials, built once per policy revision and swapped whole. `decide`
//! is the exchange's hot path; `explain` evaluates every binding for the
//! admin `Explain` call.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    path::Path,
    sync::Arc,
};

use crate::session::SessionIdentity;
use crate::{
    binding::{Binding, SessionScope, validate_set},
    caller::Caller,
    conditions::CompiledConditions,
    diag::Problem,
    file,
    revocation::Revocations,
    rules::DEFAULT_MAX_DURATION_SECONDS,
    rules::{ServiceAccountRef, classify_service_account},
};

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
    /// Every grant the matching bindings make, least scoped first; `scope`,
    /// `bindings` and `default_duration_seconds` above are the first's,
    /// `max_duration_seconds` the largest of all (for messages). A request
    /// for a duration takes [`Decision::for_duration`].
    pub grants: Vec<Grant>,
    /// Issuer mode, session tags and source identity: the same for every
    /// matching binding (bindings that differ refuse with
    /// [`Refusal::ConflictingScopes`]).
    pub session: SessionIdentity,
    /// The binding `{binding}` names in session templates: the first
    /// matching one by name.
    pub session_binding: String,
}

/// One whole grant: a session scope and the durations the bindings that
/// give it allow (bindings with the same scope share one grant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// What STS gets as session policies.
    pub scope: SessionScope,
    /// The largest maximum among its bindings.
    pub max_duration_seconds: u32,
    /// The largest default among them.
    pub default_duration_seconds: u32,
    /// Its bindings.
    pub bindings: BTreeSet<String>,
}

impl Decision {
    /// The least-scoped grant that allows `requested` seconds. Scope and
    /// duration always come from one grant: a duration only a scoped grant
    /// allows gets that grant's session policy. Errors: no grant allows it
    /// ([`DurationRefusal::TooLong`]), or several differently scoped grants
    /// do and none is unscoped ([`DurationRefusal::Conflicting`]).
    pub fn for_duration(&self, requested: u32) -> Result<&Grant, DurationRefusal> {
        let mut allowing = self
            .grants
            .iter()
            .filter(|g| requested <= g.max_duration_seconds);
        let Some(first) = allowing.next() else {
            return Err(DurationRefusal::TooLong {
                max: self.max_duration_seconds,
            });
        };
        if first.scope.is_unscoped() {
            return Ok(first);
        }
        let others: Vec<&Grant> = allowing.collect();
        if others.is_empty() {
            Ok(first)
        } else {
            Err(DurationRefusal::Conflicting {
                bindings: std::iter::once(first)
                    .chain(others)
                    .flat_map(|g| g.bindings.iter().cloned())
                    .collect(),
            })
        }
    }

    /// This decision narrowed to `grant` (for the audit record and STS).
    pub fn with_grant(&self, grant: &Grant) -> Decision {
        Decision {
            scope: grant.scope.clone(),
            bindings: grant.bindings.clone(),
            max_duration_seconds: grant.max_duration_seconds,
            default_duration_seconds: grant.default_duration_seconds,
            ..self.clone()
        }
    }
}

/// Why a decision allows no grant for a requested duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationRefusal {
    /// Above every grant's maximum (the largest given).
    TooLong {
        /// The largest maximum.
        max: u32,
    },
    /// Several differently scoped grants allow it and none is unscoped.
    Conflicting {
        /// Their bindings.
        bindings: BTreeSet<String>,
    },
}

/// Why the caller gets nothing. Each maps to PERMISSION_DENIED, except
/// `Ambiguous` (INVALID_ARGUMENT, as in the contract).
#[derive(Debug, Clone, PartialEq, Eq)]
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
                "bindings {} grant the role with different session policies, or differ in issuer mode, session tags or source identity",
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

/// Per service account: role ARN → the bindings that grant it, in name order.
type Grants = HashMap<String, Vec<Arc<Compiled>>>;

/// Everything the exchange decides with, built once per policy revision:
/// two hash indexes (by unique ID, by lower-case email) from a service
/// account to the bindings that grant each role, compiled conditions per
/// binding, and the deny list. A decision costs the same with 10 or 100,000
/// bindings. Cheap to share behind an `Arc` and swap on change.
#[derive(Debug, Default)]
pub struct PolicySnapshot {
    /// The store revision it was built from (0 for a file).
    pub revision: u64,
    by_sub: HashMap<String, Grants>,
    by_email: HashMap<String, Grants>,
    bindings: BTreeMap<String, Arc<Compiled>>,
    denied: HashSet<String>,
    revocations: Revocations,
}

impl PolicySnapshot {
    /// Builds a snapshot from bindings, validating them with the one rule
    /// set; `source` names the origin in problems.
    pub fn build(
        revision: u64,
        bindings: Vec<Binding>,
        denied: impl IntoIterator<Item = String>,
        source: &Path,
    ) -> Result<Self, Vec<Problem>> {
        let violations = validate_set(&bindings);
        if !violations.is_empty() {
            return Err(violations
                .into_iter()
                .map(|v| Problem {
                    file: source.to_path_buf(),
                    line: None,
                    reason: v.to_string(),
                })
                .collect());
        }
        let mut snapshot = Self {
            revision,
            denied: denied.into_iter().map(|s| s.to_ascii_lowercase()).collect(),
            ..Self::default()
        };
        for binding in bindings {
            // Validated above, so the conditions compile.
            let conditions = CompiledConditions::new(&binding.conditions).map_err(|errors| {
                errors
                    .into_iter()
                    .map(|e| Problem {
                        file: source.to_path_buf(),
                        line: None,
                        reason: format!("binding `{}`: {e}", binding.name),
                    })
                    .collect::<Vec<_>>()
            })?;
            let compiled = Arc::new(Compiled {
                binding,
                conditions,
            });
            for sa in &compiled.binding.service_accounts {
                let index = match classify_service_account(sa) {
                    Some(ServiceAccountRef::UniqueId) => &mut snapshot.by_sub,
                    Some(ServiceAccountRef::Email) => &mut snapshot.by_email,
                    None => continue,
                };
                let grants = index.entry(sa.to_ascii_lowercase()).or_default();
                for role in &compiled.binding.role_arns {
                    grants
                        .entry(role.clone())
                        .or_default()
                        .push(compiled.clone());
                }
            }
            snapshot
                .bindings
                .insert(compiled.binding.name.clone(), compiled);
        }
        for grants in snapshot
            .by_sub
            .values_mut()
            .chain(snapshot.by_email.values_mut())
        {
            for granting in grants.values_mut() {
                granting.sort_by(|a, b| a.binding.name.cmp(&b.binding.name));
            }
        }
        Ok(snapshot)
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
        Self::build(0, file::from_toml_str(src, path)?, [], path)
    }

    /// This snapshot carrying the policy store's revocations of cached
    /// credentials (the exchange hands them to its credential cache).
    pub fn with_revocations(mut self, revocations: Revocations) -> Self {
        self.revocations = revocations;
        self
    }

    /// The store's revocations of cached credentials (none for a file).
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Every binding, in name order.
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values().map(|c| &c.binding)
    }

    /// How many service accounts are on the deny list.
    pub fn denied_count(&self) -> usize {
        self.denied.len()
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

    /// The caller's grants by unique ID and by verified email.
    fn grants(&self, caller: &Caller) -> (Option<&Grants>, Option<&Grants>) {
        let by_sub = self.by_sub.get(&caller.sub);
        let by_email = caller.verified_email().and_then(|email| {
            if email.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_email.get(&email.to_ascii_lowercase())
            } else {
                self.by_email.get(email)
            }
        });
        (by_sub, by_email)
    }

    /// The decision for `role_arn` (empty: the caller's only role).
    pub fn decide(&self, caller: &Caller, role_arn: &str) -> Result<Decision, Refusal> {
        if self.is_denied(caller) {
            return Err(Refusal::ServiceAccountDenied);
        }
        let (by_sub, by_email) = self.grants(caller);
        if by_sub.is_none() && by_email.is_none() {
            return Err(Refusal::NoRoles);
        }
        if !role_arn.is_empty() {
            // The hot path: two hash lookups, then the granting bindings.
            let granting = granting(
                by_sub.and_then(|g| g.get(role_arn)),
                by_email.and_then(|g| g.get(role_arn)),
            );
            if granting.is_empty() {
                return Err(Refusal::RoleNotGranted);
            }
            return finish(caller, role_arn, &granting);
        }
        // No role named: the caller's only role among those whose
        // conditions it meets.
        let mut roles: BTreeSet<&str> = BTreeSet::new();
        for grants in [by_sub, by_email].into_iter().flatten() {
            roles.extend(grants.keys().map(String::as_str));
        }
        let mut usable = Vec::new();
        let mut first_refusal = None;
        for role in roles {
            let granting = granting(
                by_sub.and_then(|g| g.get(role)),
                by_email.and_then(|g| g.get(role)),
            );
            match finish(caller, role, &granting) {
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

/// The bindings that grant one role through the unique ID and through the
/// email, in name order, each once (a binding may name both).
fn granting<'a>(
    by_sub: Option<&'a Vec<Arc<Compiled>>>,
    by_email: Option<&'a Vec<Arc<Compiled>>>,
) -> Vec<&'a Compiled> {
    let mut out: Vec<&Compiled> = by_sub
        .into_iter()
        .chain(by_email)
        .flatten()
        .map(|c| &**c)
        .collect();
    if by_sub.is_some() && by_email.is_some() {
        out.sort_by(|a, b| a.binding.name.cmp(&b.binding.name));
        out.dedup_by(|a, b| a.binding.name == b.binding.name);
    }
    out
}

/// Applies conditions and merges limits and scoping over the bindings
/// that grant `role_arn` to the caller.
fn finish(caller: &Caller, role_arn: &str, granting: &[&Compiled]) -> Result<Decision, Refusal> {
    let gce = caller.compute_engine.as_ref();
    let matching: Vec<&Compiled> = granting
        .iter()
        .copied()
        .filter(|c| c.conditions.is_met(gce))
        .collect();
    if matching.is_empty() {
        return Err(Refusal::ConditionsNotMet {
            bindings: granting.iter().map(|c| c.binding.name.clone()).collect(),
        });
    }
    // Each binding grants a whole (scope, maximum duration): bindings with
    // the same scope form one grant (the union: the largest maximum); grants
    // are never mixed. Least scoped first: an unscoped grant, then the rest.
    let mut by_scope: BTreeMap<(Option<String>, Vec<String>), Grant> = BTreeMap::new();
    for c in &matching {
        let b = &c.binding;
        let grant = by_scope
            .entry((b.session_policy.clone(), b.managed_policy_arns.clone()))
            .or_insert_with(|| Grant {
                scope: b.scope(),
                max_duration_seconds: 0,
                default_duration_seconds: 0,
                bindings: BTreeSet::new(),
            });
        grant.max_duration_seconds = grant.max_duration_seconds.max(b.effective_max_duration());
        grant.default_duration_seconds = grant
            .default_duration_seconds
            .max(b.effective_default_duration());
        grant.bindings.insert(b.name.clone());
    }
    let mut grants: Vec<Grant> = by_scope.into_values().collect();
    grants.sort_by_key(|g| !g.scope.is_unscoped());
    // Scoped grants that differ cannot be ranked (STS takes one session
    // policy): with no unscoped grant among them, refuse.
    if grants.len() > 1 && !grants[0].scope.is_unscoped() {
        return Err(Refusal::ConflictingScopes {
            bindings: matching.iter().map(|c| c.binding.name.clone()).collect(),
        });
    }
    let first = grants[0].clone();
    // Issuer mode and what the signed token carries are not merged: the
    // matching bindings must agree, or the call is refused.
    let sessions: BTreeSet<SessionIdentity> = matching
        .iter()
        .map(|c| c.binding.session_identity())
        .collect();
    if sessions.len() > 1 {
        return Err(Refusal::ConflictingScopes {
            bindings: matching.iter().map(|c| c.binding.name.clone()).collect(),
        });
    }
    let session = sessions.into_iter().next().unwrap_or_default();
    let session_binding = matching
        .iter()
        .map(|c| c.binding.name.as_str())
        .min()
        .unwrap_or_default()
        .to_owned();
    Ok(Decision {
        role_arn: role_arn.to_string(),
        max_duration_seconds: grants
            .iter()
            .map(|g| g.max_duration_seconds)
            .max()
            .unwrap_or(DEFAULT_MAX_DURATION_SECONDS),
        default_duration_seconds: first.default_duration_seconds,
        bindings: first.bindings,
        scope: first.scope,
        grants,
        session,
        session_binding,
    })
}
