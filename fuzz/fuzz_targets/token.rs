//! The server's whole pre-signature token path
//! (`tokenbridge_server::google::jwt::check_untrusted`): size limit, compact-JWS
//! shape, header rules, strict duplicate-refusing JSON parse of header and
//! payload, claim types.
//!
//! Input: an input that starts with `{` is `HEADER_JSON 0xFF PAYLOAD_JSON
//! [0xFF SIGNATURE]`, each part base64url-encoded into a token (so the
//! fuzzer works on the JSON, not on base64); anything else is the token
//! itself (lossy UTF-8).
//!
//! Invariants:
//! - every refusal's message is one line of printable ASCII, at most 200
//!   bytes, and repeats at most 40 characters of the input;
//! - `TooLarge` exactly when the token is over `MAX_TOKEN_BYTES`;
//! - an accepted token has three parts whose header and payload plain
//!   serde_json also reads as objects: `alg` is `RS256`, `kid` a non-empty
//!   string, no `crit`; every claim returned is the payload's own, of the
//!   right JSON type; `sub` is 1 to 255 bytes;
//! - an accepted token with one more `kid` in its header, or one more `sub`
//!   in its payload, is refused as a duplicate.

#![no_main]

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tokenbridge_server::google::jwt::{Claims, MAX_TOKEN_BYTES, VerifyError, check_untrusted};

fuzz_target!(|data: &[u8]| {
    let (token, parts) = if data.first() == Some(&b'{') {
        let mut parts = data.split(|&b| b == 0xff);
        let header = parts.next().unwrap_or_default();
        let payload = parts.next().unwrap_or_default();
        let signature = parts.next().unwrap_or(b"signature");
        let token = [header, payload, signature]
            .map(|part| URL_SAFE_NO_PAD.encode(part))
            .join(".");
        (token, Some((header.to_vec(), payload.to_vec())))
    } else {
        (String::from_utf8_lossy(data).into_owned(), None)
    };

    match check_untrusted(&token) {
        Err(error) => check_refusal(&token, &error),
        Ok(claims) => {
            check_accepted(&token, &claims);
            if let Some((header, payload)) = parts {
                check_duplicates_refused(&header, &payload);
            }
        }
    }
});

fn check_refusal(token: &str, error: &VerifyError) {
    let message = error.to_string();
    assert!(
        message.len() <= 200 && message.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
        "unclear message: {message:?}"
    );
    // At most 40 characters of the input are repeated, and only in these.
    match error {
        VerifyError::Algorithm(echo)
        | VerifyError::DuplicateHeader(echo)
        | VerifyError::DuplicateClaim(echo) => {
            assert!(echo.chars().count() <= 40, "echoes {echo:?}");
        }
        _ => {}
    }
    assert_eq!(
        matches!(error, VerifyError::TooLarge(_)),
        token.len() > MAX_TOKEN_BYTES,
        "{message}"
    );
}

fn check_accepted(token: &str, claims: &Claims) {
    assert!(token.len() <= MAX_TOKEN_BYTES);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted a token that is not three parts");
    let object = |part: &str| -> Map<String, Value> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .expect("accepted a part that is not base64url");
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => map,
            other => panic!("accepted a part that is not a JSON object: {other:?}"),
        }
    };
    let header = object(parts[0]);
    assert_eq!(header.get("alg"), Some(&Value::from("RS256")));
    assert!(
        matches!(header.get("kid"), Some(Value::String(kid)) if !kid.is_empty()),
        "accepted a header without a kid"
    );
    assert!(!header.contains_key("crit"), "accepted a crit header");

    let payload = object(parts[1]);
    let string = |name: &str| payload.get(name).and_then(Value::as_str);
    let integer = |name: &str| payload.get(name).and_then(Value::as_u64);
    assert_eq!(string("iss"), Some(claims.iss.as_str()));
    assert_eq!(string("aud"), Some(claims.aud.as_str()));
    assert_eq!(string("sub"), Some(claims.sub.as_str()));
    assert!((1..=255).contains(&claims.sub.len()));
    assert_eq!(string("azp"), claims.azp.as_deref());
    assert_eq!(payload.contains_key("azp"), claims.azp.is_some());
    assert_eq!(string("email"), claims.email.as_deref());
    assert_eq!(payload.contains_key("email"), claims.email.is_some());
    match payload.get("email_verified") {
        None => assert!(!claims.email_verified),
        Some(Value::Bool(verified)) => assert_eq!(*verified, claims.email_verified),
        Some(other) => panic!("accepted email_verified {other}"),
    }
    assert_eq!(integer("iat"), Some(claims.iat));
    assert_eq!(integer("exp"), Some(claims.exp));
    assert_eq!(integer("nbf"), claims.nbf);
    assert_eq!(payload.contains_key("nbf"), claims.nbf.is_some());
}

/// Appends `,"NAME":"dup"` inside the closing brace of an accepted object.
fn with_duplicate(json: &[u8], name: &str) -> Vec<u8> {
    let text = json.trim_ascii_end();
    let body = text
        .strip_suffix(b"}")
        .expect("an accepted object ends with }");
    [body, format!(r#","{name}":"dup"}}"#).as_bytes()].concat()
}

fn check_duplicates_refused(header: &[u8], payload: &[u8]) {
    let token = |h: &[u8], p: &[u8]| {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(h),
            URL_SAFE_NO_PAD.encode(p)
        )
    };
    let twice_kid = token(&with_duplicate(header, "kid"), payload);
    if twice_kid.len() <= MAX_TOKEN_BYTES {
        assert_eq!(
            check_untrusted(&twice_kid),
            Err(VerifyError::DuplicateHeader("kid".into()))
        );
    }
    let twice_sub = token(header, &with_duplicate(payload, "sub"));
    if twice_sub.len() <= MAX_TOKEN_BYTES {
        assert_eq!(
            check_untrusted(&twice_sub),
            Err(VerifyError::DuplicateClaim("sub".into()))
        );
    }
}
