//! The stand-ins behave like the peers they stand in for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::Jwk};
use reqwest::{StatusCode, header::CONTENT_TYPE};
use serde_json::{Value, json};
use tokenbridge_testing::{
    FAKE_ACCESS_KEY_ID, FakeSts, FakeStsMode, Issuer, JwksServer, MetadataServer, Moto,
    ServiceAccount,
};

const AUDIENCE: &str = "https://tokenbridge.example";

fn service_account() -> ServiceAccount {
    ServiceAccount::new(
        "112233445566778899000",
        "app@demo-project.iam.gserviceaccount.com",
    )
}

/// Verifies `token` against the key of `jwks` its header names, as a relying
/// party would, and returns its claims.
fn verify(token: &str, jwks: &Value, audience: &str) -> Value {
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("no key {kid} in the JWKS"));
    let jwk: Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[Issuer::GOOGLE_ISSUER]);
    let key = DecodingKey::from_jwk(&jwk).unwrap();
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims
}

fn sts_form(session: &str, token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Action", "AssumeRoleWithWebIdentity".into()),
        ("Version", "2011-06-15".into()),
        ("RoleArn", "arn:aws:iam::123456789012:role/reader".into()),
        ("RoleSessionName", session.into()),
        ("WebIdentityToken", token.into()),
        ("DurationSeconds", "900".into()),
    ]
}

#[test]
fn issuer_tokens_verify_with_the_jwks() {
    let issuer = Issuer::new();
    let sa = service_account();
    let kid = issuer.kid();
    assert_eq!(kid.len(), 40);
    assert!(kid.bytes().all(|b| b.is_ascii_hexdigit()));

    let jwks = issuer.jwks();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["alg"], "RS256");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["e"], "AQAB");
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(jwk["n"].as_str().unwrap())
            .unwrap()
            .len(),
        256
    );

    let claims = verify(&issuer.token(&sa, AUDIENCE), &jwks, AUDIENCE);
    assert_eq!(claims["sub"], sa.unique_id.as_str());
    assert_eq!(claims["azp"], sa.unique_id.as_str());
    assert_eq!(claims["email"], sa.email.as_str());
    assert_eq!(claims["email_verified"], true);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    let gce = &claims["google"]["compute_engine"];
    assert_eq!(gce["project_id"], "demo-project");
    assert_eq!(gce["project_number"], 123_456_789_012_u64);
    assert_eq!(gce["instance_confidentiality"], 0);

    assert!(!issuer.claims(&sa, AUDIENCE, false).contains_key("google"));
}

#[test]
fn keys_rotate_and_retire() {
    let issuer = Issuer::new();
    let sa = service_account();
    let old = issuer.kid();
    let old_token = issuer.token(&sa, AUDIENCE);
    let new = issuer.rotate();
    assert_ne!(old, new);
    assert_eq!(issuer.kid(), new);
    assert_eq!(issuer.jwks()["keys"].as_array().unwrap().len(), 2);

    let new_token = issuer.token(&sa, AUDIENCE);
    assert_eq!(
        jsonwebtoken::decode_header(&new_token).unwrap().kid,
        Some(new.clone())
    );
    verify(&old_token, &issuer.jwks(), AUDIENCE);
    verify(&new_token, &issuer.jwks(), AUDIENCE);

    issuer.retire(&old);
    let jwks = issuer.jwks();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks["keys"][0]["kid"], new.as_str());
}

#[test]
fn sign_raw_signs_the_exact_texts_with_the_named_key() {
    let issuer = Issuer::new();
    let old = issuer.kid();
    issuer.rotate();
    let header = format!(r#"{{"alg":"RS256","kid":"{old}","typ":"JWT"}}"#);
    let payload = r#"{"iss":"https://accounts.google.com","aud":"x","aud":"y"}"#;
    let token = issuer.sign_raw(&header, payload);

    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(URL_SAFE_NO_PAD.decode(parts[0]).unwrap(), header.as_bytes());
    assert_eq!(
        URL_SAFE_NO_PAD.decode(parts[1]).unwrap(),
        payload.as_bytes()
    );

    // Signed with the old key: only it verifies the signature.
    let key_of = |kid: &str| {
        let jwks = issuer.jwks();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|key| key["kid"] == kid)
            .cloned()
            .unwrap();
        DecodingKey::from_jwk(&serde_json::from_value(jwk).unwrap()).unwrap()
    };
    let message = format!("{}.{}", parts[0], parts[1]);
    let verifies = |kid: &str| {
        jsonwebtoken::crypto::verify(parts[2], message.as_bytes(), &key_of(kid), Algorithm::RS256)
            .unwrap()
    };
    assert!(verifies(&old));
    assert!(!verifies(&issuer.kid()));
}

#[tokio::test]
async fn jwks_server_serves_the_jwks_with_google_cache_control() {
    let issuer = Issuer::new();
    let extra = json!({"kty": "RSA", "kid": "foreign", "n": "AQAB", "e": "AQAB"});
    let server = JwksServer::start_with_extra_keys(issuer.clone(), 21_600, vec![extra]).await;
    assert!(server.uri().ends_with("/oauth2/v3/certs"));
    assert_eq!(server.fetch_count(), 0);

    let response = reqwest::get(server.uri()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=21600, must-revalidate, no-transform"
    );
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    let jwks: Value = response.json().await.unwrap();
    assert_eq!(jwks["keys"][0]["kid"], issuer.kid().as_str());
    assert_eq!(jwks["keys"][1]["kid"], "foreign");
    assert_eq!(server.fetch_count(), 1);

    // Rotations show at once.
    let new = issuer.rotate();
    let jwks: Value = reqwest::get(server.uri())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][1]["kid"], new.as_str());
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 3);
    assert_eq!(server.fetch_count(), 2);
}

#[tokio::test]
async fn metadata_server_hands_out_id_tokens_like_gce() {
    let issuer = Issuer::new();
    let sa = service_account();
    let server = MetadataServer::start(issuer.clone(), sa.clone()).await;
    let base = format!(
        "http://{}/computeMetadata/v1/instance/service-accounts/default",
        server.host()
    );
    let client = reqwest::Client::new();
    let get = |path: &str, flavor: bool| {
        let request = client.get(format!("{base}/{path}"));
        if flavor {
            request.header("Metadata-Flavor", "Google")
        } else {
            request
        }
        .send()
    };

    let refused = get(&format!("identity?audience={AUDIENCE}"), false)
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(refused.headers()["metadata-flavor"], "Google");

    let no_audience = get("identity", true).await.unwrap();
    assert_eq!(no_audience.status(), StatusCode::BAD_REQUEST);
    let empty_audience = get("identity?audience=", true).await.unwrap();
    assert_eq!(empty_audience.status(), StatusCode::BAD_REQUEST);

    let full = get(
        &format!("identity?audience={AUDIENCE}&format=full&licenses=FALSE"),
        true,
    )
    .await
    .unwrap();
    assert_eq!(full.status(), StatusCode::OK);
    assert_eq!(full.headers()["metadata-flavor"], "Google");
    let claims = verify(&full.text().await.unwrap(), &issuer.jwks(), AUDIENCE);
    assert_eq!(claims["sub"], sa.unique_id.as_str());
    assert_eq!(
        claims["google"]["compute_engine"]["instance_name"],
        "demo-vm"
    );

    let standard = get(&format!("identity?audience={AUDIENCE}"), true)
        .await
        .unwrap();
    let claims = verify(&standard.text().await.unwrap(), &issuer.jwks(), AUDIENCE);
    assert_eq!(claims["email"], sa.email.as_str());
    assert!(claims.get("google").is_none());

    let email = get("email", true).await.unwrap().text().await.unwrap();
    assert_eq!(email, sa.email);
    assert_eq!(server.request_count(), 6);
}

#[tokio::test]
async fn fake_sts_answers_as_told() {
    let issuer = Issuer::new();
    let token = issuer.token(&service_account(), AUDIENCE);
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let client = reqwest::Client::new();
    let post = |session: &str| {
        client
            .post(sts.endpoint())
            .form(&sts_form(session, &token))
            .send()
    };

    let success = post("s1").await.unwrap();
    assert_eq!(success.status(), StatusCode::OK);
    let body = success.text().await.unwrap();
    assert!(body.contains(&format!("<AccessKeyId>{FAKE_ACCESS_KEY_ID}</AccessKeyId>")));
    assert!(body.contains("<Arn>arn:aws:sts::111122223333:assumed-role/reader/s1</Arn>"));
    assert!(body.contains("<SubjectFromWebIdentityToken>112233445566778899000<"));
    assert!(body.contains(&format!("<Audience>{AUDIENCE}</Audience>")));
    assert!(body.contains("<Provider>accounts.google.com</Provider>"));
    let form = sts.last_form().unwrap();
    assert_eq!(form["RoleSessionName"], "s1");
    assert_eq!(form["DurationSeconds"], "900");

    sts.set_mode(FakeStsMode::Error {
        status: 400,
        code: "InvalidIdentityToken".into(),
        message: "Token <expired> & rejected".into(),
    });
    let error = post("s2").await.unwrap();
    assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error.headers()[CONTENT_TYPE], "text/xml");
    let body = error.text().await.unwrap();
    assert!(
        body.starts_with(r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">"#)
    );
    assert!(body.contains("<Type>Sender</Type><Code>InvalidIdentityToken</Code>"));
    assert!(body.contains("<Message>Token &lt;expired&gt; &amp; rejected</Message>"));

    sts.set_mode(FakeStsMode::Garbage);
    let garbage = post("s3").await.unwrap();
    assert_eq!(garbage.status(), StatusCode::OK);
    assert!(!garbage.text().await.unwrap().contains("<AccessKeyId>"));
    assert_eq!(sts.request_count(), 3);
}

#[tokio::test]
async fn fake_sts_gates_requests_until_released() {
    let sts = FakeSts::start(FakeStsMode::Gated).await;
    let client = reqwest::Client::new();
    let requests: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|session| {
            tokio::spawn(
                client
                    .post(sts.endpoint())
                    .form(&sts_form(session, "t"))
                    .send(),
            )
        })
        .collect();
    sts.wait_for_requests(2).await;
    assert_eq!(sts.request_count(), 2);
    assert!(requests.iter().all(|request| !request.is_finished()));

    sts.release();
    for request in requests {
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn fake_sts_hangs_until_dropped() {
    let sts = FakeSts::start(FakeStsMode::Hang).await;
    let request = tokio::spawn(
        reqwest::Client::new()
            .post(sts.endpoint())
            .form(&sts_form("s", "t"))
            .send(),
    );
    sts.wait_for_requests(1).await;
    assert!(!request.is_finished());
    drop(sts);
    // Dropping the server ends the request one way or another.
    let _ = request.await.unwrap();
}

#[tokio::test]
async fn moto_assumes_roles_with_web_identity() {
    let moto = Moto::shared().await;
    let response = reqwest::Client::new()
        .post(moto.endpoint())
        .form(&sts_form("moto-session", "not-even-a-jwt"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.text().await.unwrap();
    assert!(body.contains("<AccessKeyId>ASIA"), "{body}");
    assert!(
        body.contains("<Arn>arn:aws:sts::123456789012:assumed-role/reader/moto-session</Arn>"),
        "{body}"
    );
}

#[tokio::test]
async fn dropping_moto_stops_it() {
    let moto = Moto::start().await;
    let addr = ("127.0.0.1", moto.port());
    TcpStream::connect(addr).unwrap();
    drop(moto);
    assert!(TcpStream::connect(addr).is_err());
}
