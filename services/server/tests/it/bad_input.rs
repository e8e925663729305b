//! Hostile input: tokens and metadata values that are huge, binary, or
//! deeply nested JSON. Each gets the contract's status and a clear message;
//! never INTERNAL or UNKNOWN, never a panic (the server keeps answering),
//! never a hang.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tokenbridge_proto::v1::GetCredentialsRequest;
use tonic::{
    Code, Request,
    metadata::{AsciiMetadataValue, BinaryMetadataValue},
};

use crate::common::*;

const GUARD: Duration = Duration::from_secs(30);

/// Calls with `authorization` set to exactly these bytes, and `extra`
/// metadata.
async fn call_raw(
    env: &Env,
    authorization: Option<AsciiMetadataValue>,
    extra: &[(&'static str, AsciiMetadataValue)],
) -> Result<(), tonic::Status> {
    let mut req = Request::new(GetCredentialsRequest {
        role_arn: ROLE_A.into(),
        duration_seconds: 0,
    });
    if let Some(v) = authorization {
        req.metadata_mut().insert("authorization", v);
    }
    for (k, v) in extra {
        req.metadata_mut().insert(*k, v.clone());
    }
    within(GUARD, env.client.clone().get_credentials(req))
        .await
        .map(|_| ())
}

/// The server is still well: a good token still works.
async fn still_serving(env: &Env) {
    let creds = within(GUARD, env.call(&env.token(&workload()), ROLE_A, 0))
        .await
        .expect("the server still serves");
    assert_eq!(creds.role_session_name, workload().unique_id);
}

#[track_caller]
fn assert_clean_refusal(status: &tonic::Status, code: Code, needle: &str) {
    assert_ne!(status.code(), Code::Internal, "{status:?}");
    assert_ne!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status.message().contains(needle),
        "{:?} should contain {needle:?}",
        status.message()
    );
}

#[tokio::test]
async fn huge_tokens_are_refused_by_size() {
    let env = Env::start().await;
    // Over the token limit but within the header limit: the verifier says so.
    let mut claims = env.claims(&workload());
    claims.insert("padding".into(), json!("x".repeat(40 * 1024)));
    let token = env.issuer.sign(&claims);
    let status = env.call(&token, ROLE_A, 0).await.unwrap_err();
    assert_clean_refusal(&status, Code::Unauthenticated, "-byte limit");
    assert_no_token(status.message(), &token);

    // Over the metadata limit (64 KiB): refused before the token is parsed.
    let huge = format!("Bearer {}", "A".repeat(100 * 1024));
    let status = call_raw(&env, Some(huge.parse().unwrap()), &[])
        .await
        .unwrap_err();
    assert_clean_refusal(
        &status,
        Code::ResourceExhausted,
        "over the 65536-byte limit",
    );
    assert!(status.message().starts_with("request metadata is"));
    assert_eq!(retry_delay(&status), None);

    // Far over it: the HTTP/2 layer refuses the header block as it arrives
    // (GOAWAY ENHANCE_YOUR_CALM), without buffering it for the service.
    let huge = format!("Bearer {}", "A".repeat(4 * 1024 * 1024));
    let status = call_raw(&env, Some(huge.parse().unwrap()), &[])
        .await
        .unwrap_err();
    assert_ne!(status.code(), Code::Internal, "{status:?}");
    assert_ne!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    still_serving(&env).await;
}

#[tokio::test]
async fn huge_metadata_besides_the_token_is_refused_by_size() {
    let env = Env::start().await;
    let token = env.token(&workload());
    let bearer: AsciiMetadataValue = format!("Bearer {token}").parse().unwrap();
    // Large, but within the header limit: irrelevant metadata is ignored.
    let big: AsciiMetadataValue = "x".repeat(30 * 1024).parse().unwrap();
    call_raw(&env, Some(bearer.clone()), &[("x-padding", big)])
        .await
        .unwrap();
    // Over it, spread over many entries.
    let mut extra = Vec::new();
    for name in ["x-a", "x-b", "x-c", "x-d"] {
        extra.push((name, "y".repeat(20 * 1024).parse().unwrap()));
    }
    let status = call_raw(&env, Some(bearer.clone()), &extra)
        .await
        .unwrap_err();
    assert_clean_refusal(
        &status,
        Code::ResourceExhausted,
        "over the 65536-byte limit",
    );
    // Far over it.
    let huge: AsciiMetadataValue = "x".repeat(4 * 1024 * 1024).parse().unwrap();
    let status = call_raw(&env, Some(bearer), &[("x-padding", huge)])
        .await
        .unwrap_err();
    assert_ne!(status.code(), Code::Internal, "{status:?}");
    assert_ne!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    still_serving(&env).await;
}

#[tokio::test]
async fn binary_authorization_values_are_refused_clearly() {
    let env = Env::start().await;
    // Bytes 0x80-0xFF are legal in an HTTP header value, not in a token.
    let binary = AsciiMetadataValue::try_from(&b"Bearer \xff\xfe\x80binary"[..]).unwrap();
    let status = call_raw(&env, Some(binary), &[]).await.unwrap_err();
    assert_clean_refusal(&status, Code::Unauthenticated, "not ASCII text");

    // The token only as binary metadata (`authorization-bin`): there is no
    // `authorization`.
    let mut req = Request::new(GetCredentialsRequest::default());
    req.metadata_mut().insert_bin(
        "authorization-bin",
        BinaryMetadataValue::from_bytes(&[0, 1, 2, 0xff, 0xfe]),
    );
    let status = within(GUARD, env.client.clone().get_credentials(req))
        .await
        .unwrap_err();
    assert_clean_refusal(&status, Code::Unauthenticated, "missing or repeated");

    // A well-shaped token whose parts decode to random bytes.
    let random =
        |n: usize| URL_SAFE_NO_PAD.encode((0..n).map(|_| rand::random::<u8>()).collect::<Vec<_>>());
    let token = format!("{}.{}.{}", random(40), random(200), random(256));
    let status = env.call(&token, ROLE_A, 0).await.unwrap_err();
    assert_clean_refusal(&status, Code::Unauthenticated, "token is malformed");
    assert_no_token(status.message(), &token);

    // Signed JSON with control characters and invalid UTF-8 in the payload.
    let header = json!({"alg": "RS256", "kid": env.issuer.kid(), "typ": "JWT"}).to_string();
    let mut payload = Value::Object(env.claims(&workload()))
        .to_string()
        .into_bytes();
    payload.extend_from_slice(b"\xff\x00");
    let signed = env
        .issuer
        .sign_raw(&header, &String::from_utf8_lossy(&payload));
    let status = env.call(&signed, ROLE_A, 0).await.unwrap_err();
    assert_clean_refusal(&status, Code::Unauthenticated, "token is malformed");
    still_serving(&env).await;
}

/// `levels` arrays nested in the claim `deep`, signed.
fn nested_claim(env: &Env, levels: usize) -> String {
    let header = json!({"alg": "RS256", "kid": env.issuer.kid(), "typ": "JWT"}).to_string();
    let claims = Value::Object(env.claims(&workload())).to_string();
    let payload = format!(
        r#"{},"deep":{}1{}}}"#,
        claims.trim_end_matches('}'),
        "[".repeat(levels),
        "]".repeat(levels)
    );
    env.issuer.sign_raw(&header, &payload)
}

#[tokio::test]
async fn deeply_nested_json_in_a_token_is_refused_clearly() {
    let env = Env::start().await;
    // 10,000 nested arrays do not even fit in a token.
    let token = nested_claim(&env, 10_000);
    let status = within(GUARD, env.call(&token, ROLE_A, 0))
        .await
        .unwrap_err();
    assert_clean_refusal(&status, Code::Unauthenticated, "-byte limit");

    // 5,000 fit: the parser refuses them by depth, with no recursion to speak of.
    let token = nested_claim(&env, 5_000);
    assert!(token.len() < 16 * 1024);
    let status = within(GUARD, env.call(&token, ROLE_A, 0))
        .await
        .unwrap_err();
    assert_clean_refusal(
        &status,
        Code::Unauthenticated,
        "token is malformed: the payload nests JSON arrays or objects more than 32 levels deep",
    );

    // Deep objects in the header, likewise.
    let header = format!(
        r#"{{"alg":"RS256","kid":"{}","x":{}1{}}}"#,
        env.issuer.kid(),
        r#"{"a":"#.repeat(1500),
        "}".repeat(1500)
    );
    let claims = Value::Object(env.claims(&workload())).to_string();
    let token = env.issuer.sign_raw(&header, &claims);
    let status = within(GUARD, env.call(&token, ROLE_A, 0))
        .await
        .unwrap_err();
    assert_clean_refusal(&status, Code::Unauthenticated, "the header nests JSON");

    // Nesting within the bound (like Google's `google.compute_engine`) is fine.
    env.call(&nested_claim(&env, 8), ROLE_A, 0).await.unwrap();
    still_serving(&env).await;
}

#[tokio::test]
async fn many_tokens_of_garbage_at_once_leave_the_server_serving() {
    let env = Env::start().await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..100usize {
        let env_token = match i % 4 {
            0 => "x".repeat(20_000),
            1 => nested_claim(&env, 3000),
            2 => format!("{}.{}.{}", "e30", "A".repeat(i * 50 + 1), "A"),
            _ => ".".repeat(i + 1),
        };
        let mut client = env.client.clone();
        calls.spawn(async move {
            let mut req = Request::new(GetCredentialsRequest::default());
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {env_token}").parse().unwrap(),
            );
            client.get_credentials(req).await
        });
    }
    for r in within(GUARD, calls.join_all()).await {
        let status = r.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    still_serving(&env).await;
}
