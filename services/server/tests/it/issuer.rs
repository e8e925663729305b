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
    let app = tokenbridge_server::issuer::discovery::router(issuer);
    let discovery = tokio::spawn(async move {
        tokenbridge_server::transport::http::serve(listener, app, std::future::pending())
            .await
            .unwrap();
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

/// Verifies `tokens` with PyJWT (the test virtualenv), fetching discovery
/// and the JWKS from tokenbridge's own HTTPS discovery listener. Runs on a
/// blocking thread: the listener serves on this test's runtime.
async fn pyjwt_verify(base: &str, ca_file: &Path, tokens: &[String]) -> Vec<serde_json::Value> {
    let (base, ca_file, tokens) = (base.to_owned(), ca_file.to_owned(), tokens.to_vec());
    tokio::task::spawn_blocking(move || pyjwt_verify_blocking(&base, &ca_file, &tokens))
        .await
        .unwrap()
}

fn pyjwt_verify_blocking(base: &str, ca_file: &Path, tokens: &[String]) -> Vec<serde_json::Value> {
    use std::io::Write as _;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/py/verify_oidc.py");
    let mut child = std::process::Command::new(tokenbridge_testing::venv_python())
        .arg(script)
        .args([
            base,
            ca_file.to_str().unwrap(),
            ISSUER_URL,
            "sts.amazonaws.com",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the test virtualenv's python (scripts/test installs it)");
    let mut stdin = child.stdin.take().unwrap();
    for t in tokens {
        writeln!(stdin, "{t}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "verify_oidc.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn pyjwt_accepts_every_token_from_the_https_discovery_listener_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tokenbridge_testing::Pki::new("tokenbridge test CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let k1 = key_file(dir.path(), "k1.pem");
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let k2 = dir.path().join("k2.pem");
    std::fs::write(&k2, ec).unwrap();
    let config = IssuerConfig {
        url: ISSUER_URL.into(),
        key_files: vec![k1.clone(), k2.clone()],
        active_key_file: Some(k1),
        audience: "sts.amazonaws.com".into(),
        default: false,
        token_lifetime: Duration::from_secs(300),
        listen: Some("127.0.0.1:0".parse().unwrap()),
    };
    let env = Env::start_with(Options {
        sts_endpoint: Some(Moto::shared().await.endpoint()),
        issuer: Some(config.clone()),
        tls: Some(tokenbridge_server::config::TlsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert_file: cert,
            key_file: key,
            client_ca_file: None,
            reload_interval: Duration::from_secs(3600),
        }),
        ..Options::default()
    })
    .await;
    let running = env.server.as_ref().unwrap();
    let base = format!(
        "https://localhost:{}",
        running.discovery_addr.unwrap().port()
    );
    let issuer = running.exchange().issuer().unwrap().clone();
    let sa = workload();
    let mint = || {
        issuer
            .token_for(&sa.unique_id, Some(&sa.email), Default::default())
            .mint()
            .unwrap()
            .into_exposed()
    };
    let rsa_token = mint();
    let rsa_kid = jsonwebtoken::decode_header(&rsa_token).unwrap().kid;
    let before = pyjwt_verify(&base, &ca_file, std::slice::from_ref(&rsa_token)).await;
    assert_eq!(before[0]["sub"], sa.unique_id.as_str(), "{before:?}");
    assert_eq!(before[0]["email"], sa.email.as_str());

    let mut rotated = config.clone();
    rotated.active_key_file = Some(k2);
    issuer.reload_with(&rotated).unwrap();
    let ec_token = mint();
    assert_eq!(
        jsonwebtoken::decode_header(&ec_token).unwrap().alg,
        jsonwebtoken::Algorithm::ES256
    );
    // Both keys stay published: the token signed before the rotation and
    // the one after both verify.
    let after = pyjwt_verify(&base, &ca_file, &[rsa_token, ec_token]).await;
    assert!(
        after.iter().all(|c| c["sub"] == sa.unique_id.as_str()),
        "{after:?}"
    );

    // A forged token (signed by a key the issuer never published) fails.
    let forged = {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .unwrap()
            .serialize_pem();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = rsa_kid;
        jsonwebtoken::encode(
            &header,
            &serde_json::json!({"iss": ISSUER_URL, "sub": "1", "aud": "sts.amazonaws.com",
                "iat": 1, "exp": 4_000_000_000u64, "jti": "x"}),
            &jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let forged = pyjwt_verify(&base, &ca_file, &[forged]).await;
    let error = forged[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("Signature"), "{forged:?}");
}
