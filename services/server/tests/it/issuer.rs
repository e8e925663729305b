//! Issuer mode end to end: tokenbridge signs the token STS gets, a strict
//! STS stand-in (written from AWS's documentation; moto checks neither
//! tokens nor trust policies) evaluates the role's trust policy, and moto
//! issues the credentials.

use std::{path::Path, sync::Arc, time::Duration};

use tokenbridge_policy::{Binding, trust};
use tokenbridge_server::config::IssuerConfig;
use tokenbridge_testing::{Moto, Provider, StrictSts};
use tonic::Code;

use crate::common::{AUDIENCE, Env, Options, ROLE_A, ROLE_B, workload};

const ISSUER_URL: &str = "https://issuer.tokenbridge.test";

fn key_file(dir: &Path, name: &str) -> std::path::PathBuf {
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .unwrap()
        .serialize_pem();
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

fn issuer_binding() -> Binding {
    Binding {
        name: "issued".into(),
        service_accounts: vec![workload().unique_id.clone()],
        role_arns: vec![ROLE_A.into()],
        issuer: Some(true),
        session_tags: [
            ("gcp-service-account".to_string(), "{email}".to_string()),
            ("team".to_string(), "a".to_string()),
            ("via".to_string(), "{binding}".to_string()),
        ]
        .into(),
        source_identity: Some("{sub}".into()),
        ..Binding::default()
    }
}

fn passthrough_binding() -> Binding {
    Binding {
        name: "passed".into(),
        service_accounts: vec![workload().unique_id.clone()],
        role_arns: vec![ROLE_B.into()],
        session_policy: Some(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#.into()),
        ..Binding::default()
    }
}

struct World {
    env: Env,
    sts: StrictSts,
    direct: reqwest::Client,
    _dir: tempfile::TempDir,
    issuer_config: IssuerConfig,
    _discovery: tokio::task::JoinHandle<()>,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let k1 = key_file(dir.path(), "k1.pem");
    let k2 = key_file(dir.path(), "k2.pem");
    let issuer_config = IssuerConfig {
        url: ISSUER_URL.into(),
        key_files: vec![k1.clone(), k2],
        active_key_file: Some(k1),
        audience: "sts.amazonaws.com".into(),
        default: false,
        token_lifetime: Duration::from_secs(300),
        listen: None,
    };
    let moto = Moto::shared().await;
    let sts = StrictSts::start(moto.endpoint()).await;
    let policy =
        tokenbridge_policy::file::to_toml_string(&[issuer_binding(), passthrough_binding()])
            .unwrap();
    let env = Env::start_with(Options {
        policy,
        sts_endpoint: Some(sts.endpoint()),
        issuer: Some(issuer_config.clone()),
        ..Options::default()
    })
    .await;
    // The issuer's JWKS as AWS would fetch it (here over plain HTTP on
    // loopback: the stand-in is told where; AWS needs HTTPS).
    let issuer = env
        .server
        .as_ref()
        .unwrap()
        .exchange()
        .issuer()
        .unwrap()
        .clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_uri = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let app = tokenbridge_server::issuer::discovery::router(issuer)
        .into_make_service_with_connect_info::<tokenbridge_server::issuer::discovery::Peer>();
    let discovery = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    sts.trust_provider(Provider::google(env.jwks.uri()));
    sts.trust_provider(Provider::oidc(ISSUER_URL, jwks_uri, ["sts.amazonaws.com"]));
    let issued =
        trust::for_binding_issuer(&issuer_binding(), ISSUER_URL, "sts.amazonaws.com", &|_| {
            None
        })
        .unwrap();
    sts.set_trust_policy(ROLE_A, issued.document);
    let passed =
        trust::for_binding(&passthrough_binding(), &[AUDIENCE.to_string()], &|_| None).unwrap();
    sts.set_trust_policy(ROLE_B, passed.document);
    World {
        env,
        sts,
        direct: reqwest::Client::new(),
        _dir: dir,
        issuer_config,
        _discovery: discovery,
    }
}

/// A workload calling STS itself, with its own Google token: no AWS
/// credentials needed, only the token its metadata server gives it.
async fn call_sts_directly(w: &World, role: &str, token: &str) -> (u16, String) {
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role),
        ("RoleSessionName", "walk-around"),
        ("WebIdentityToken", token),
    ];
    let r = w
        .direct
        .post(w.sts.endpoint())
        .form(&form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn in_issuer_mode_sts_accepts_tokenbridges_token_and_refuses_the_workloads_own() {
    let w = world().await;
    let token = w.env.issuer.token(&workload(), AUDIENCE);

    let issued = w.env.call(&token, ROLE_A, 900).await.unwrap();
    assert!(
        issued.access_key_id.starts_with("ASIA"),
        "{}",
        issued.access_key_id
    );
    let seen = w.sts.requests().pop().unwrap();
    assert!(seen.allowed, "{seen:?}");
    assert_eq!(seen.claims["iss"], ISSUER_URL);
    assert_eq!(seen.claims["aud"], "sts.amazonaws.com");
    assert_eq!(seen.claims["sub"], workload().unique_id.as_str());
    let lifetime = seen.claims["exp"].as_u64().unwrap() - seen.claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 300);
    assert_eq!(seen.tags["team"], "a");
    assert_eq!(seen.tags["via"], "issued");
    assert_eq!(
        seen.source_identity.as_deref(),
        Some(workload().unique_id.as_str())
    );

    // The walk-around is closed: the workload's own token gets nothing.
    let (status, body) = call_sts_directly(&w, ROLE_A, &token).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("AccessDenied"), "{body}");
}

#[tokio::test]
async fn in_pass_through_mode_the_workloads_own_token_walks_around_the_session_policy() {
    let w = world().await;
    let token = w.env.issuer.token(&workload(), AUDIENCE);
    // Through tokenbridge, STS gets the session policy.
    w.env.call(&token, ROLE_B, 900).await.unwrap();
    let through = w.sts.requests().pop().unwrap();
    assert!(through.form.contains_key("Policy"), "{through:?}");
    // Directly, the same token gets the role with no session policy: what
    // the README says pass-through mode cannot prevent.
    let (status, body) = call_sts_directly(&w, ROLE_B, &token).await;
    assert_eq!(status, 200, "{body}");
    let direct = w.sts.requests().pop().unwrap();
    assert!(
        direct.allowed && !direct.form.contains_key("Policy"),
        "{direct:?}"
    );
}

#[tokio::test]
async fn keys_rotate_with_no_failed_call() {
    let w = world().await;
    let issuer: Arc<_> = w
        .env
        .server
        .as_ref()
        .unwrap()
        .exchange()
        .issuer()
        .unwrap()
        .clone();
    let token = w.env.issuer.token(&workload(), AUDIENCE);
    let before = issuer.jwks();
    assert_eq!(before.keys.len(), 2, "both keys are published");
    // Distinct durations: each call reaches STS (no cache hit).
    w.env.call(&token, ROLE_A, 900).await.unwrap();
    let first_kid = w.sts.requests().pop().unwrap();
    let mut rotated = w.issuer_config.clone();
    rotated.active_key_file = Some(rotated.key_files[1].clone());
    let kid = issuer.reload_with(&rotated).unwrap();
    w.env.call(&token, ROLE_A, 1000).await.unwrap();
    let second = w.sts.requests().pop().unwrap();
    assert!(first_kid.allowed && second.allowed);
    assert_eq!(issuer.jwks().keys.len(), 2);
    assert!(issuer.jwks().find(&kid).is_some());
    // A key file that does not load leaves the keys in use alone.
    let mut broken = rotated.clone();
    std::fs::write(&broken.key_files[0], "not a key").unwrap();
    broken.active_key_file = None;
    assert!(issuer.reload_with(&broken).is_err());
    w.env.call(&token, ROLE_A, 1100).await.unwrap();
}

#[tokio::test]
async fn an_issuer_mode_binding_on_a_server_without_issuer_fails_closed() {
    let policy = tokenbridge_policy::file::to_toml_string(&[issuer_binding()]).unwrap();
    let env = Env::start_with(Options {
        policy,
        ..Options::default()
    })
    .await;
    let token = env.issuer.token(&workload(), AUDIENCE);
    let err = env.call(&token, ROLE_A, 900).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("no [issuer]"), "{}", err.message());
    assert!(!err.message().contains(&token));
}
