//! The shim's container credentials endpoint (`serve::respond`): what it
//! answers for any state (credentials or none, any last error) at any time.
//!
//! Invariants:
//! - credentials that expire after `now` are served: 200, JSON, the same
//!   keys and tokens, an `Expiration` in RFC 3339 with `Z` that humantime and
//!   the AWS SDKs read as the credentials' own second, an `AccountId`
//!   exactly when the ARN has one, a `RoleArn` exactly when one was asked
//!   for, and nothing else;
//! - otherwise 503, JSON, `Code` `CredentialsUnavailable` and the last error
//!   (or "no credentials yet") as `Message`, and no credential at all.

#![no_main]

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use arbitrary::{Result, Unstructured};
use axum::http::{StatusCode, header::CONTENT_TYPE};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokenbridge_client::{Credentials, account_id};
use tokenbridge_cred::serve::{Current, respond};
use tokenbridge_fuzz::{arbitrary_credentials, arbitrary_time, check_expiration};

struct Input {
    state: Current,
    role_arn: Option<String>,
    now: SystemTime,
}

fn input(u: &mut Unstructured<'_>) -> Result<Input> {
    let credentials = if u.arbitrary()? {
        Some(arbitrary_credentials(u)?)
    } else {
        None
    };
    // Mostly near the expiration, on either side of it.
    let now = match &credentials {
        Some(c) if u.arbitrary()? => {
            let offset = Duration::from_secs(u.int_in_range(0..=7200)?);
            let later = u.arbitrary()?;
            let near = if later {
                c.expiration.checked_add(offset)
            } else {
                c.expiration.checked_sub(offset)
            };
            near.unwrap_or(c.expiration)
        }
        _ => arbitrary_time(u)?,
    };
    Ok(Input {
        state: Current {
            credentials: credentials.map(Arc::new),
            last_error: u.arbitrary()?,
            fetches: u.arbitrary()?,
        },
        role_arn: u.arbitrary()?,
        now,
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(Input {
        state,
        role_arn,
        now,
    }) = input(&mut Unstructured::new(data))
    else {
        return;
    };
    let response = respond(&state, role_arn.as_deref(), now);
    let status = response.status();
    assert_eq!(
        response.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    let body = runtime()
        .block_on(axum::body::to_bytes(response.into_body(), 1 << 24))
        .expect("a body");
    let json: Value = serde_json::from_slice(&body).expect("the body is JSON");
    match state.credentials.as_deref() {
        Some(credentials) if credentials.expiration > now => {
            assert_eq!(status, StatusCode::OK);
            served(&json, credentials, role_arn.as_deref());
        }
        _ => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            let expected = serde_json::json!({
                "Code": "CredentialsUnavailable",
                "Message": state.last_error.as_deref().unwrap_or("no credentials yet"),
            });
            assert_eq!(json, expected);
        }
    }
});

fn served(json: &Value, credentials: &Credentials, role_arn: Option<&str>) {
    let object = json.as_object().expect("an object");
    for key in object.keys() {
        assert!(
            [
                "AccessKeyId",
                "SecretAccessKey",
                "Token",
                "Expiration",
                "AccountId",
                "RoleArn"
            ]
            .contains(&key.as_str()),
            "unexpected key {key}"
        );
    }
    assert_eq!(json["AccessKeyId"], credentials.access_key_id.as_str());
    assert_eq!(
        json["SecretAccessKey"],
        credentials.secret_access_key.expose().as_str()
    );
    assert_eq!(json["Token"], credentials.session_token.expose().as_str());
    check_expiration(
        json["Expiration"].as_str().expect("a string Expiration"),
        credentials.expiration,
    );
    assert_eq!(
        json.get("AccountId").map(|v| v.as_str().expect("a string")),
        account_id(&credentials.assumed_role_arn)
    );
    assert_eq!(
        json.get("RoleArn").map(|v| v.as_str().expect("a string")),
        role_arn
    );
}
