//! One test per token verification rule, with tokens minted by the stand-in
//! issuer and sent over real gRPC.

use serde_json::{Value, json};
use tokenbridge_testing::{Issuer, JwksServer};
use tonic::Code;

use crate::common::*;

/// Signs `header` and `payload` JSON texts with the env's issuer.
fn raw(env: &Env, header: &Value, payload: &Value) -> String {
    env.issuer
        .sign_raw(&header.to_string(), &payload.to_string())
}

fn header(env: &Env) -> Value {
    json!({"alg": "RS256", "kid": env.issuer.kid(), "typ": "JWT"})
}

#[tokio::test]
async fn valid_token_is_accepted() {
    let env = Env::start().await;
    let token = env.token(&workload());
    let creds = env.call(&token, ROLE_A, 0).await.unwrap();
    assert_eq!(creds.role_session_name, workload().unique_id);
    env.stop().await;
}

#[tokio::test]
async fn missing_authorization_metadata() {
    let env = Env::start().await;
    assert_status(
        env.call_with_auth(None, ROLE_A, 0).await,
        Code::Unauthenticated,
        "missing or repeated authorization",
        "",
    );
}

#[tokio::test]
async fn malformed_authorization_metadata() {
    let env = Env::start().await;
    let token = env.token(&workload());
    for value in [
        format!("Basic {token}"),
        token.clone(),
        "Bearer".to_string(),
    ] {
        assert_status(
            env.call_with_auth(Some(&value), ROLE_A, 0).await,
            Code::Unauthenticated,
            "authorization",
            &token,
        );
    }
}

#[tokio::test]
async fn not_a_compact_jws() {
    let env = Env::start().await;
    for token in [
        "abc",
        "a.b",
        "a.b.c.d",
        "e30.e30.",
        "e30.e30.c2ln!",
        "Zm9v.YmFy.YmF6",
    ] {
        let result = env.call(token, ROLE_A, 0).await;
        let status = result.expect_err(token);
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{token}: {}",
            status.message()
        );
        assert!(
            status.message().starts_with("token is malformed"),
            "{token}: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn bad_signature() {
    let env = Env::start().await;
    let good = env.token(&workload());
    let other = env.token(&stranger());
    // The workload's header and payload with the stranger's signature.
    let (message, _) = good.rsplit_once('.').unwrap();
    let (_, signature) = other.rsplit_once('.').unwrap();
    let forged = format!("{message}.{signature}");
    assert_status(
        env.call(&forged, ROLE_A, 0).await,
        Code::Unauthenticated,
        "signature is invalid",
        &forged,
    );
}

#[tokio::test]
async fn unknown_kid_is_refused_after_one_refetch() {
    let env = Env::start().await;
    let before = env.jwks.fetch_count();
    let mut h = header(&env);
    h["kid"] = json!("no-such-kid");
    let token = raw(&env, &h, &Value::Object(env.claims(&workload())));
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unauthenticated,
        "signing key (kid) is not one of Google's current keys",
        &token,
    );
    assert_eq!(
        env.jwks.fetch_count(),
        before + 1,
        "an unknown kid refetches the JWKS once"
    );
}

#[tokio::test]
async fn rotated_key_is_picked_up_by_the_refetch() {
    let env = Env::start().await;
    let before = env.jwks.fetch_count();
    env.issuer.rotate();
    let token = env.token(&workload());
    env.call(&token, ROLE_A, 0).await.unwrap();
    assert_eq!(env.jwks.fetch_count(), before + 1);
    // Known now: no further fetch.
    env.call(&env.token(&workload()), ROLE_A, 0).await.unwrap();
    assert_eq!(env.jwks.fetch_count(), before + 1);
}

#[tokio::test]
async fn a_flood_of_random_kids_causes_one_refetch_per_cooldown() {
    let env = Env::start().await;
    let before = env.jwks.fetch_count();
    let claims = Value::Object(env.claims(&workload()));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..64 {
        let mut h = header(&env);
        h["kid"] = json!(format!("random-kid-{i}"));
        let token = raw(&env, &h, &claims);
        let mut client = env.client.clone();
        calls.spawn(async move {
            let mut req =
                tonic::Request::new(tokenbridge_proto::v1::GetCredentialsRequest::default());
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            client.get_credentials(req).await
        });
    }
    for r in calls.join_all().await {
        assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
    }
    assert_eq!(
        env.jwks.fetch_count(),
        before + 1,
        "64 random kids, one refetch"
    );
}

#[tokio::test]
async fn algorithms_other_than_rs256_are_refused() {
    let env = Env::start().await;
    let claims = Value::Object(env.claims(&workload()));
    for alg in ["HS256", "none", "RS512", "ES256", "PS256"] {
        let mut h = header(&env);
        h["alg"] = json!(alg);
        let token = raw(&env, &h, &claims);
        assert_status(
            env.call(&token, ROLE_A, 0).await,
            Code::Unauthenticated,
            &format!("algorithm `{alg}` is not accepted"),
            &token,
        );
    }
}

#[tokio::test]
async fn missing_kid_is_refused() {
    let env = Env::start().await;
    let token = raw(
        &env,
        &json!({"alg": "RS256", "typ": "JWT"}),
        &Value::Object(env.claims(&workload())),
    );
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unauthenticated,
        "no `kid`",
        &token,
    );
}

#[tokio::test]
async fn crit_header_is_refused() {
    let env = Env::start().await;
    let mut h = header(&env);
    h["crit"] = json!(["exp"]);
    let token = raw(&env, &h, &Value::Object(env.claims(&workload())));
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unauthenticated,
        "`crit`",
        &token,
    );
}

#[tokio::test]
async fn key_hints_in_the_header_are_never_used() {
    let env = Env::start().await;
    // An attacker's own key, advertised in every way a header can.
    let attacker = Issuer::new();
    let attacker_jwks = JwksServer::start(attacker.clone(), 60).await;
    let jwk = attacker.jwks()["keys"][0].clone();
    let claims = Value::Object(env.claims(&workload()));
    for kid in [attacker.kid(), env.issuer.kid()] {
        let h = json!({
            "alg": "RS256", "kid": kid, "typ": "JWT",
            "jku": attacker_jwks.uri(), "x5u": attacker_jwks.uri(), "jwk": jwk,
        });
        // Signed with the attacker's key whatever the kid says.
        let (h_b64, p_b64) = (b64(&h.to_string()), b64(&claims.to_string()));
        let sig = attacker.sign_raw(&h.to_string(), &claims.to_string());
        let sig = sig.rsplit_once('.').unwrap().1.to_string();
        let forged = format!("{h_b64}.{p_b64}.{sig}");
        let status = env.call(&forged, ROLE_A, 0).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
        assert_no_token(status.message(), &forged);
    }
    assert_eq!(
        attacker_jwks.fetch_count(),
        0,
        "the attacker's jku/x5u was never fetched"
    );
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn expired_token_is_refused() {
    let env = Env::start().await;
    let mut c = env.claims(&workload());
    c.insert("iat".into(), json!(now() - 3000));
    c.insert("exp".into(), json!(now() - 61 - 5));
    let token = env.issuer.sign(&c);
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unauthenticated,
        "token expired",
        &token,
    );
}

#[tokio::test]
async fn expiry_within_the_skew_is_accepted() {
    let env = Env::start().await;
    let mut c = env.claims(&workload());
    c.insert("iat".into(), json!(now() - 3000));
    c.insert("exp".into(), json!(now() - 30));
    env.call(&env.issuer.sign(&c), ROLE_A, 0).await.unwrap();
}

#[tokio::test]
async fn iat_in_the_future_is_refused() {
    let env = Env::start().await;
    let mut c = env.claims(&workload());
    c.insert("iat".into(), json!(now() + 300));
    c.insert("exp".into(), json!(now() + 1800));
    let token = env.issuer.sign(&c);
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unauthenticated,
        "`iat` is in the future",
        &token,
    );
}

#[tokio::test]
async fn nbf_in_the_future_is_refused() {
    let env = Env::start().await;
    let mut c = env.claims(&workload());
    c.insert("nbf".into(), json!(now() + 300));
    let token = env.issuer.sign(&c);
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unauthenticated,
        "not valid yet",
        &token,
    );
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let env = Env::start().await;
    let mut c = env.claims(&workload());
    c.insert("iss".into(), json!("https://evil.example.com"));
    let token = env.issuer.sign(&c);
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unauthenticated,
        "issuer is not accepted",
        &token,
    );
}

#[tokio::test]
async fn both_google_issuer_spellings_are_accepted() {
    let env = Env::start().await;
    let mut c = env.claims(&workload());
    c.insert("iss".into(), json!("accounts.google.com"));
    env.call(&env.issuer.sign(&c), ROLE_A, 0).await.unwrap();
}

#[tokio::test]
async fn unconfigured_audience_is_refused() {
    let env = Env::start().await;
    let token = env
        .issuer
        .token(&workload(), "https://someone-else.example.com");
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unauthenticated,
        "audience is not accepted",
        &token,
    );
}

#[tokio::test]
async fn array_audience_and_issuer_are_refused() {
    let env = Env::start().await;
    let mut c = env.claims(&workload());
    c.insert("aud".into(), json!([AUDIENCE, "https://other.example.com"]));
    let token = env.issuer.sign(&c);
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unauthenticated,
        "claim `aud` has the wrong type",
        &token,
    );

    let mut c = env.claims(&workload());
    c.insert("iss".into(), json!([Issuer::GOOGLE_ISSUER]));
    let token = env.issuer.sign(&c);
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unauthenticated,
        "claim `iss` has the wrong type",
        &token,
    );
}

#[tokio::test]
async fn missing_required_claims_are_refused() {
    let env = Env::start().await;
    for claim in ["exp", "iat", "sub", "iss", "aud"] {
        let mut c = env.claims(&workload());
        c.remove(claim);
        let token = env.issuer.sign(&c);
        assert_status(
            env.call(&token, ROLE_A, 0).await,
            Code::Unauthenticated,
            &format!("no `{claim}` claim"),
            &token,
        );
    }
}

#[tokio::test]
async fn claims_of_the_wrong_type_are_refused() {
    let env = Env::start().await;
    for (claim, value) in [
        ("exp", json!((now() + 600).to_string())),
        ("iat", json!(1.5)),
        (
            "sub",
            json!(
                112233445566778899001u128
                    .to_string()
                    .parse::<f64>()
                    .unwrap()
            ),
        ),
        ("email_verified", json!("true")),
        ("nbf", json!("yesterday")),
    ] {
        let mut c = env.claims(&workload());
        c.insert(claim.into(), value);
        let token = env.issuer.sign(&c);
        assert_status(
            env.call(&token, ROLE_A, 0).await,
            Code::Unauthenticated,
            &format!("claim `{claim}` has the wrong type"),
            &token,
        );
    }
}

#[tokio::test]
async fn duplicate_claims_are_refused() {
    let env = Env::start().await;
    let c = env.claims(&workload());
    // The same claims, then `sub` once more: serde would keep the last one.
    let body = Value::Object(c).to_string();
    let payload = format!(
        "{},\"sub\":\"998877665544332211009\"}}",
        &body[..body.len() - 1]
    );
    let token = env.issuer.sign_raw(&header(&env).to_string(), &payload);
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unauthenticated,
        "duplicate claim `sub`",
        &token,
    );
}

#[tokio::test]
async fn lifetime_over_an_hour_is_refused() {
    let env = Env::start().await;
    let mut c = env.claims(&workload());
    c.insert("exp".into(), json!(now() + 2 * 3600));
    let token = env.issuer.sign(&c);
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unauthenticated,
        "lifetime",
        &token,
    );
}

#[tokio::test]
async fn oversized_token_is_refused_before_parsing() {
    let env = Env::start().await;
    let mut c = env.claims(&workload());
    c.insert("padding".into(), json!("x".repeat(17 * 1024)));
    let token = env.issuer.sign(&c);
    assert!(token.len() > 16 * 1024);
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unauthenticated,
        "over the 16384-byte limit",
        &token,
    );
}

#[tokio::test]
async fn unusable_keys_in_the_jwks_are_skipped_not_fatal() {
    use base64::Engine as _;
    let small_n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xc5u8; 128]);
    let issuer = Issuer::new();
    let jwks = JwksServer::start_with_extra_keys(
        issuer.clone(),
        3600,
        vec![
            json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "weak-1024", "n": small_n, "e": "AQAB"}),
            json!({"kty": "EC", "crv": "P-256", "kid": "ec", "x": "AA", "y": "AA"}),
            json!({"kty": "RSA", "kid": "garbage", "n": "!!", "e": "AQAB"}),
            json!("not a key"),
        ],
    )
    .await;
    let env = Env::start_on(issuer, jwks, Options::default()).await;
    env.call(&env.token(&workload()), ROLE_A, 0).await.unwrap();
}

#[tokio::test]
async fn unreachable_jwks_with_no_cached_key_is_unavailable() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = Env::start_with(Options {
        jwks_uri: Some(format!("http://127.0.0.1:{port}/oauth2/v3/certs")),
        wait_ready: false,
        ..Options::default()
    })
    .await;
    let token = env.token(&workload());
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unavailable,
        "signing keys are unavailable",
        &token,
    );
}

#[tokio::test]
async fn a_remembered_token_does_not_vouch_for_a_forgery_of_it() {
    let env = Env::start().await;
    let good = env.token(&workload());
    env.call(&good, ROLE_A, 0).await.unwrap();
    env.call(&good, ROLE_A, 0).await.unwrap();
    // Same header and payload, someone else's signature.
    let (message, _) = good.rsplit_once('.').unwrap();
    let other = env.token(&stranger());
    let forged = format!("{message}.{}", other.rsplit_once('.').unwrap().1);
    assert_status(
        env.call(&forged, ROLE_A, 0).await,
        Code::Unauthenticated,
        "signature is invalid",
        &forged,
    );
    // And the good one still works.
    env.call(&good, ROLE_A, 0).await.unwrap();
}

#[tokio::test]
async fn verification_without_the_token_cache_behaves_the_same() {
    let issuer = Issuer::new();
    let jwks = JwksServer::start(issuer.clone(), 3600).await;
    let env = Env::start_on(
        issuer,
        jwks,
        Options {
            verified_token_cache_entries: 0,
            ..Options::default()
        },
    )
    .await;
    let good = env.token(&workload());
    env.call(&good, ROLE_A, 0).await.unwrap();
    let mut c = env.claims(&workload());
    c.insert("exp".into(), json!(now() - 120));
    c.insert("iat".into(), json!(now() - 1000));
    let expired = env.issuer.sign(&c);
    assert_status(
        env.call(&expired, ROLE_A, 0).await,
        Code::Unauthenticated,
        "token expired",
        &expired,
    );
}
