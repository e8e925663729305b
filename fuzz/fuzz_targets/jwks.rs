//! The JWKS document as the server parses a fetched body
//! (`tokenbridge_server::google::jwks::parse_untrusted`).
//!
//! Invariants:
//! - a body plain serde_json cannot read, or that is valid JSON but neither
//!   an object nor an array, is refused with a "not a JWKS document" message
//!   (unless all that is wrong is a lone surrogate escape inside a member
//!   the server ignores; bytes that are not UTF-8 are refused anywhere);
//!   an object is accepted exactly when it has one `keys` member and that
//!   is an array;
//! - the usable keys counted are at most the distinct `kid`s of the entries
//!   that could be usable (`kty` RSA, a non-empty `kid`, a base64url modulus
//!   of at least 2048 bits, an odd exponent of at least 3), and at least the
//!   distinct `kid`s of the entries that are plainly good (only `kty`, `kid`,
//!   `n`, `e`, and `alg` RS256 and `use` sig if given);
//! - adding one good key under a new `kid` counts exactly one more.

#![no_main]

use std::collections::HashSet;
use std::fmt;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use serde::Deserializer as _;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::{Value, json};
use tokenbridge_server::google::jwks::{MIN_RSA_BITS, parse_untrusted};

/// A `kid` no input can already have (checked before it is used).
const FRESH_KID: &str = "fuzz-fresh-kid-0f1e2d3c4b5a";

fuzz_target!(|data: &[u8]| {
    let result = parse_untrusted(data);
    let value = match serde_json::from_slice::<Value>(data) {
        Ok(value) => value,
        Err(_) => match &result {
            Err(message) => {
                assert!(message.starts_with("not a JWKS document"), "{message}");
                return;
            }
            // serde_json skips the members it ignores without decoding their
            // `\u` escapes, so a lone surrogate there goes unnoticed.
            Ok(_) if data.windows(2).any(|w| w == b"\\u") => return,
            // Bytes that are not UTF-8 are refused before parsing.
            Ok(_) => panic!("accepted a body that is not JSON"),
        },
    };
    let entries = match (&value, &result) {
        (Value::Object(doc), _) => match doc.get("keys") {
            Some(Value::Array(entries)) => entries,
            _ => {
                let message = result.expect_err("accepted an object without a keys array");
                assert!(message.starts_with("not a JWKS document"), "{message}");
                return;
            }
        },
        // serde reads a one-field struct from an array too: `[[key, ...]]`.
        (Value::Array(outer), Ok(_)) => match outer.first() {
            Some(Value::Array(entries)) => entries,
            _ => panic!("accepted an array that does not hold a key array"),
        },
        (Value::Array(_), Err(_)) => return,
        (_, Ok(_)) => panic!("accepted a JSON scalar as a JWKS document"),
        (_, Err(message)) => {
            assert!(message.starts_with("not a JWKS document"), "{message}");
            return;
        }
    };
    let usable = match result {
        Ok(usable) => usable,
        // serde_json's `Value` keeps the last of several `keys` members;
        // serde refuses such a document, with "duplicate field `keys`", or
        // with "invalid type" when an earlier one is not an array.
        Err(message) if keys_members(data) > 1 => {
            assert!(message.starts_with("not a JWKS document"), "{message}");
            return;
        }
        Err(message) => panic!("refused an object with a keys array: {message}"),
    };

    let could_be: HashSet<&str> = entries.iter().filter_map(could_be_usable).collect();
    let plainly_good: HashSet<&str> = entries.iter().filter_map(plainly_good).collect();
    assert!(
        usable <= could_be.len(),
        "{usable} usable keys, but only {} could be",
        could_be.len()
    );
    assert!(
        usable >= plainly_good.len(),
        "{usable} usable keys, but {} are plainly good",
        plainly_good.len()
    );

    // Re-encoding sorts members by name, and serde_json (its `raw_value`
    // feature is on in this build) reads an object whose first member is
    // its private `$serde_json::private::RawValue` as raw JSON text: such a
    // document cannot be re-encoded faithfully.
    if value.is_object() && !could_be.contains(FRESH_KID) && !has_magic_member(&value) {
        let mut more = value.clone();
        if let Some(Value::Array(keys)) = more.get_mut("keys") {
            keys.push(good_key(FRESH_KID));
        }
        let body = serde_json::to_vec(&more).expect("re-encode");
        assert_eq!(parse_untrusted(&body), Ok(usable + 1), "a new good key");
    }
});

/// How many members named `keys` (after unescaping) the top-level object
/// in `data` has; 0 if it is not an object.
fn keys_members(data: &[u8]) -> usize {
    struct Count;
    impl<'de> Visitor<'de> for Count {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
            let mut count = 0;
            while let Some(name) = map.next_key::<String>()? {
                count += usize::from(name == "keys");
                map.next_value::<IgnoredAny>()?;
            }
            Ok(count)
        }
    }
    serde_json::Deserializer::from_slice(data)
        .deserialize_map(Count)
        .unwrap_or(0)
}

fn has_magic_member(value: &Value) -> bool {
    match value {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.starts_with("$serde_json::private::") || has_magic_member(v)),
        Value::Array(items) => items.iter().any(has_magic_member),
        _ => false,
    }
}

fn good_key(kid: &str) -> Value {
    let modulus = URL_SAFE_NO_PAD.encode([0xc5_u8; 256]);
    json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": modulus, "e": "AQAB"})
}

/// The `kid` of an entry that meets every necessary condition for use.
fn could_be_usable(entry: &Value) -> Option<&str> {
    let kid = entry.get("kid")?.as_str().filter(|kid| !kid.is_empty())?;
    (entry.get("kty")? == "RSA"
        && modulus_ok(entry.get("n")?.as_str()?)
        && exponent_ok(entry.get("e")?.as_str()?))
    .then_some(kid)
}

/// The `kid` of an entry that is a good key in the plainest form.
fn plainly_good(entry: &Value) -> Option<&str> {
    let map = entry.as_object()?;
    let allowed = ["kty", "kid", "n", "e", "alg", "use"];
    let plain = map.keys().all(|k| allowed.contains(&k.as_str()))
        && map.get("alg").is_none_or(|alg| alg == "RS256")
        && map.get("use").is_none_or(|u| u == "sig");
    plain.then_some(())?;
    could_be_usable(entry)
}

fn modulus_ok(n: &str) -> bool {
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(n) else {
        return false;
    };
    let significant: Vec<u8> = bytes.into_iter().skip_while(|&b| b == 0).collect();
    significant
        .first()
        .is_some_and(|first| significant.len() * 8 - first.leading_zeros() as usize >= MIN_RSA_BITS)
}

fn exponent_ok(e: &str) -> bool {
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(e) else {
        return false;
    };
    let significant: Vec<u8> = bytes.into_iter().skip_while(|&b| b == 0).collect();
    if significant.len() > 8 {
        return false;
    }
    let value = significant
        .iter()
        .fold(0_u64, |acc, &b| (acc << 8) | u64::from(b));
    value >= 3 && value % 2 == 1
}
