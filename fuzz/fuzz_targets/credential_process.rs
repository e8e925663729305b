//! The shim's `credential_process` output and its file cache.
//!
//! Each input is used twice:
//! 1. As a cache file, read by the cache-file reader (`cache::decode`, with
//!    the fixed key and clock of `tokenbridge_fuzz`). An accepted file's
//!    credentials have an expiration that parses and is more than
//!    `MIN_REMAINING` ahead; written back (`cache::encode`) they read back the
//!    same. A refusal's reason is short and repeats nothing of the file.
//! 2. As arbitrary credentials, as the client crate hands them to the shim,
//!    printed as `process` prints them (`process::json_line`): one line of
//!    JSON that parses back with `Version` 1, the same keys and tokens, an
//!    `AccountId` exactly when the ARN has one, and an `Expiration` in
//!    RFC 3339 with `Z` that humantime and the AWS SDKs read as the
//!    credentials' own second. `Debug` does not depend on the secrets. Cached with an
//!    hour left, the output reads back the same.

#![no_main]

use std::time::Duration;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokenbridge_client::account_id;
use tokenbridge_cred::{
    cache::{self, MIN_REMAINING},
    process::{self, ProcessOutput},
};
use tokenbridge_fuzz::{arbitrary_credentials, cache_key, check_expiration, now};

fuzz_target!(|data: &[u8]| {
    read_cache_file(data);
    let mut u = Unstructured::new(data);
    if let Ok(credentials) = arbitrary_credentials(&mut u) {
        emit(&credentials);
    }
});

fn same(a: &ProcessOutput, b: &ProcessOutput) -> bool {
    a.version == b.version
        && a.access_key_id == b.access_key_id
        && a.secret_access_key == b.secret_access_key
        && a.session_token == b.session_token
        && a.expiration == b.expiration
        && a.account_id == b.account_id
}

fn read_cache_file(data: &[u8]) {
    let key = cache_key();
    match cache::decode(&key, data, now()) {
        Err(reason) => {
            assert!(
                reason.len() <= 60 && !reason.contains('"') && !reason.contains('{'),
                "reason {reason:?}"
            );
        }
        Ok(output) => {
            let expiration = humantime::parse_rfc3339(&output.expiration)
                .expect("an accepted expiration parses");
            let left = expiration.duration_since(now()).expect("in the future");
            assert!(left > MIN_REMAINING, "{left:?} left");
            let text = cache::encode(&key, &output).expect("encodes");
            let again = cache::decode(&key, &text, now()).expect("reads back");
            assert!(same(&output, &again), "{output:?} became {again:?}");
        }
    }
}

fn emit(credentials: &tokenbridge_client::Credentials) {
    let output = ProcessOutput::from(credentials);
    let line =
        process::json_line(&output).unwrap_or_else(|failure| panic!("cannot print: {failure}"));
    assert!(
        line.ends_with('\n') && line.matches('\n').count() == 1,
        "not one line"
    );
    let json: Value = serde_json::from_str(&line).expect("the line is JSON");
    let object = json.as_object().expect("an object");
    for key in object.keys() {
        assert!(
            [
                "Version",
                "AccessKeyId",
                "SecretAccessKey",
                "SessionToken",
                "Expiration",
                "AccountId"
            ]
            .contains(&key.as_str()),
            "unexpected key {key}"
        );
    }
    assert_eq!(json["Version"], 1);
    assert_eq!(json["AccessKeyId"], credentials.access_key_id.as_str());
    assert_eq!(
        json["SecretAccessKey"],
        credentials.secret_access_key.expose().as_str()
    );
    assert_eq!(
        json["SessionToken"],
        credentials.session_token.expose().as_str()
    );
    let expiration = json["Expiration"].as_str().expect("a string Expiration");
    check_expiration(expiration, credentials.expiration);
    assert_eq!(
        json.get("AccountId").map(|v| v.as_str().expect("a string")),
        account_id(&credentials.assumed_role_arn)
    );

    // Debug does not depend on the secrets at all.
    let without_secrets = ProcessOutput {
        secret_access_key: String::new(),
        session_token: String::new(),
        ..output.clone()
    };
    assert_eq!(
        format!("{output:?}"),
        format!("{without_secrets:?}"),
        "Debug shows a secret"
    );

    // As the cache stores it, read back with an hour left.
    let key = cache_key();
    let stored = humantime::parse_rfc3339(expiration).expect("parses");
    if let Some(then) = stored.checked_sub(Duration::from_secs(3600)) {
        let text = cache::encode(&key, &output).expect("encodes");
        let again = cache::decode(&key, &text, then).expect("a fresh cache file reads back");
        assert!(same(&output, &again));
    }
}
