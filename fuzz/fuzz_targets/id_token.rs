//! The client crate's `IdToken::parse`: what the metadata server answers,
//! on any text (the client reads the answer as UTF-8 first). An input that
//! starts with `{` is a payload, put into a token with a fixed header and
//! signature.
//!
//! Invariants:
//! - an accepted token is the trimmed text, three non-empty base64url parts,
//!   and its `expires_at` is the payload's own integer `exp`;
//! - its `Debug` never shows the token;
//! - a refusal's reason is one of a few fixed texts, so it repeats nothing
//!   of the input.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use tokenbridge_client::IdToken;

/// Every reason `IdToken::parse` gives.
const REASONS: [&str; 6] = [
    "not three dot-separated parts",
    "a part is empty or not base64url",
    "the payload is not base64url",
    "the payload is not JSON",
    "the payload has no numeric exp",
    "the payload's exp is out of range",
];

fuzz_target!(|data: &[u8]| {
    // An input that starts with `{` is the payload JSON, so that the fuzzer
    // mutates JSON rather than base64.
    let built;
    let text = if data.first() == Some(&b'{') {
        built = format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(data)
        );
        built.as_str()
    } else {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        text
    };
    match IdToken::parse(text.to_owned()) {
        // A fixed text, so nothing of the input.
        Err(reason) => assert!(REASONS.contains(&reason.as_str()), "reason {reason:?}"),
        Ok(token) => {
            let trimmed = text.trim();
            assert_eq!(token.expose(), trimmed);
            let parts: Vec<&str> = trimmed.split('.').collect();
            assert_eq!(parts.len(), 3);
            assert!(parts.iter().all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }));
            let payload = URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url");
            let claims: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
            let exp = claims["exp"].as_u64().expect("an integer exp");
            assert_eq!(
                token.expires_at().duration_since(UNIX_EPOCH).ok(),
                Some(Duration::from_secs(exp))
            );
            let shown = format!("{token:?}");
            assert!(!shown.contains(trimmed), "Debug shows the token: {shown}");
        }
    }
});
