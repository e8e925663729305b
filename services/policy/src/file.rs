//! The policy file (TOML): bindings in, bindings out, every problem with
//! its file and line.

use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{
    binding::{Binding, validate_set},
    diag::{Problem, line_of},
};

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
