//! Binding conditions on the caller's GCE claims, compiled once per policy
//! revision: exact sets for project IDs and numbers, `globset` globs for zones
//! and instance names.

use std::collections::HashSet;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::{
    binding::{Conditions, FieldError},
    caller::ComputeEngine,
    rules::{MAX_CONDITION_VALUE_LEN, MAX_CONDITION_VALUES, shorten},
};

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
