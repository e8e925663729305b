//! The policy table (`Policy::from_toml_str`), on any UTF-8 text.
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
//!   limits, and a default no longer than the maximum;
//! - an email is never matched through `sub`, and a caller named nowhere
//!   gets no role.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tokenbridge_fuzz::{check_problems, check_shifted};
use tokenbridge_server::{
    Policy,
    policy::{
        DEFAULT_MAX_DURATION_SECONDS, Denied, MAX_DURATION_SECONDS, MIN_DURATION_SECONDS, Principal,
    },
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
    let result = Policy::from_toml_str(src, path);
    let shifted = (!src.starts_with('\u{feff}'))
        .then(|| Policy::from_toml_str(&format!("# fuzz\n{src}"), path));
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

fn check_policy(policy: &Policy, src: &str) {
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
                Principal {
                    sub: &account,
                    verified_email: None,
                }
            } else {
                // An email is not a sub, whatever the case.
                let as_sub = Principal {
                    sub: &account,
                    verified_email: None,
                };
                assert!(
                    policy.roles_for(as_sub).is_empty(),
                    "email {account:?} as sub"
                );
                Principal {
                    sub: NOBODY,
                    verified_email: Some(&upper),
                }
            };
            for role in strings("role_arns") {
                let allowed = policy
                    .decide(who, &role)
                    .unwrap_or_else(|denied| panic!("{account:?} denied {role:?}: {denied:?}"));
                let grant = &allowed.grant;
                assert_eq!(allowed.role_arn, role);
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
    let nobody = Principal {
        sub: NOBODY,
        verified_email: None,
    };
    assert_eq!(policy.decide(nobody, ""), Err(Denied::NoRoles));
}
