//! The policy table (`PolicySnapshot::from_toml_str`), on any UTF-8 text.
//!
//! Invariants:
//! - a refusal has at least one problem, each naming the file, with a reason
//!   and a line inside the text; one more comment line at the top changes
//!   nothing but the lines, each one further down (but for a missing key,
//!   which stays on line 1);
//! - an accepted table, read again as plain TOML, has as many bindings as
//!   `binding_count`, and for every binding, every service account it names
//!   may assume every role it lists: unique IDs through `sub`, emails
//!   through a verified email in any letter case, with a grant naming the
//!   binding, a maximum duration at least the binding's and within STS's
//!   limits, and a default no longer than the maximum (for bindings without
//!   conditions, whose scopes do not conflict with another's);
//! - an email is never matched through `sub`, and a caller named nowhere
//!   gets no role.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tokenbridge_fuzz::{check_problems, check_shifted};
use tokenbridge_policy::{
    Caller, PolicySnapshot, Refusal,
    rules::{DEFAULT_MAX_DURATION_SECONDS, MAX_DURATION_SECONDS, MIN_DURATION_SECONDS},
};
use toml::{Table, Value};

const PATH: &str = "/etc/tokenbridge/policy.toml";
/// A `sub` no binding can name: unique IDs are digits only.
const NOBODY: &str = "not-a-unique-id";

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(PATH);
    let result = PolicySnapshot::from_toml_str(src, path);
    let shifted = (!src.starts_with('\u{feff}'))
        .then(|| PolicySnapshot::from_toml_str(&format!("# fuzz\n{src}"), path));
    match result {
        Err(problems) => {
            check_problems(&problems, path, src);
            if let Some(shifted) = shifted {
                let again = shifted.expect_err("a comment line made a bad policy good");
                check_shifted(&problems, &again);
            }
        }
        Ok(policy) => {
            if let Some(shifted) = shifted {
                assert!(shifted.is_ok(), "a comment line made a good policy bad");
            }
            check_policy(&policy, src);
        }
    }
});

fn caller(sub: &str, verified_email: Option<&str>) -> Caller {
    Caller {
        sub: sub.to_owned(),
        email: verified_email.map(str::to_owned),
        email_verified: verified_email.is_some(),
        compute_engine: None,
    }
}

fn check_policy(policy: &PolicySnapshot, src: &str) {
    let table: Table = toml::from_str(src).expect("an accepted policy is TOML");
    let bindings = match table.get("binding") {
        None => Vec::new(),
        Some(Value::Array(bindings)) => bindings.clone(),
        Some(other) => panic!("accepted binding = {other:?}"),
    };
    assert_eq!(policy.binding_count(), bindings.len());

    for binding in &bindings {
        let name = binding["name"].as_str().expect("a name");
        let strings = |key: &str| -> Vec<String> {
            binding[key]
                .as_array()
                .expect("a list")
                .iter()
                .map(|v| v.as_str().expect("a string").to_owned())
                .collect()
        };
        let max = binding
            .get("max_duration_seconds")
            .and_then(Value::as_integer)
            .map_or(DEFAULT_MAX_DURATION_SECONDS, |v| {
                u32::try_from(v).expect("an accepted duration fits u32")
            });
        for account in strings("service_accounts") {
            let unique_id = account.bytes().all(|b| b.is_ascii_digit());
            let upper = account.to_ascii_uppercase();
            let who = if unique_id {
                caller(&account, None)
            } else {
                // An email is not a sub, whatever the case.
                let as_sub = caller(&account, None);
                assert_eq!(
                    policy.decide(&as_sub, "").map(|d| d.role_arn),
                    Err(Refusal::NoRoles),
                    "email {account:?} as sub"
                );
                caller(NOBODY, Some(&upper))
            };
            if binding.get("conditions").is_some() {
                continue;
            }
            for role in strings("role_arns") {
                let grant = match policy.decide(&who, &role) {
                    Ok(grant) => grant,
                    // Another binding for the same role may scope it differently.
                    Err(Refusal::ConflictingScopes { bindings }) if bindings.contains(name) => {
                        continue;
                    }
                    Err(refusal) => panic!("{account:?} refused {role:?}: {refusal:?}"),
                };
                assert_eq!(grant.role_arn, role);
                assert!(grant.bindings.contains(name), "{grant:?}");
                assert!(grant.max_duration_seconds >= max, "{grant:?}");
                assert!(
                    (MIN_DURATION_SECONDS..=MAX_DURATION_SECONDS)
                        .contains(&grant.max_duration_seconds),
                    "{grant:?}"
                );
                assert!(
                    (MIN_DURATION_SECONDS..=grant.max_duration_seconds)
                        .contains(&grant.default_duration_seconds),
                    "{grant:?}"
                );
            }
        }
    }
    assert_eq!(
        policy.decide(&caller(NOBODY, None), "").map(|d| d.role_arn),
        Err(Refusal::NoRoles)
    );
}
