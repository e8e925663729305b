//! Upstream outages (fault injection): Google's JWKS down, slow, failing or
//! lying, and STS throttling, failing, hanging or answering garbage. Each
//! test checks the status codes, that good cached state kept serving, and
//! (with a hang guard, never a speed assertion) that nothing hangs.

use std::time::Duration;

use serde_json::{Value, json};
use tokenbridge_server::{aws::cache::CacheConfig, config::FallbackRegion};
use tokenbridge_testing::{
    FAKE_ACCESS_KEY_ID, FakeSts, FakeStsMode, FaultProxy, Issuer, JwksFault, JwksServer, Moto,
    ProxyMode,
};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::common::*;

const GUARD: Duration = Duration::from_secs(30);

/// A token for `workload()` signed with the key `kid` of `issuer`.
fn token_with_kid(issuer: &Issuer, kid: &str) -> String {
    let header = json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
    let claims = Value::Object(issuer.claims(&workload(), AUDIENCE, true));
    issuer.sign_raw(&header.to_string(), &claims.to_string())
}

/// Every key lookup goes to the key set (no verified-token cache), an
/// unknown kid may refetch at once, and a hung JWKS fetch gives up quickly.
fn jwks_options(sts: &FakeSts) -> Options {
    Options {
        sts_endpoint: Some(sts.endpoint()),
        verified_token_cache_entries: 0,
        cooldown: Duration::ZERO,
        jwks_timeout: Duration::from_millis(500),
        ..Options::default()
    }
}

#[tokio::test]
async fn warm_keys_survive_every_kind_of_jwks_outage() {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    for fault in [
        JwksFault::Status(503),
        JwksFault::Status(500),
        JwksFault::Status(404),
        JwksFault::Hang,
        JwksFault::Garbage,
        JwksFault::EmptyKeySet,
        JwksFault::Oversized,
        JwksFault::DeeplyNested,
    ] {
        let issuer = Issuer::new();
        let jwks = JwksServer::start(issuer.clone(), 3600).await;
        let env = Env::start_on(issuer.clone(), jwks, jwks_options(&sts)).await;
        let old_kid = issuer.kid();
        let good = token_with_kid(&issuer, &old_kid);
        env.call(&good, ROLE_A, 0).await.unwrap();

        env.jwks.set_fault(Some(fault.clone()));
        let fetches = env.jwks.fetch_count();
        // Google rotates in a key during the outage: its tokens cannot be
        // verified yet. That is UNAVAILABLE (retry later), not UNAUTHENTICATED.
        let new_kid = issuer.rotate();
        let rotated = token_with_kid(&issuer, &new_kid);
        let status = within(GUARD, env.call(&rotated, ROLE_A, 0))
            .await
            .expect_err("a key that cannot be fetched");
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "{fault:?}: {}",
            status.message()
        );
        assert!(
            status.message().contains("signing keys are unavailable"),
            "{fault:?}: {}",
            status.message()
        );
        assert!(retry_delay(&status).is_some(), "{fault:?}: a retry hint");
        assert_no_token(status.message(), &rotated);
        assert_eq!(
            env.jwks.fetch_count(),
            fetches + 1,
            "{fault:?}: the faulty endpoint was asked once"
        );

        // The keys we had keep verifying, the service stays SERVING.
        let creds = within(GUARD, env.call(&good, ROLE_A, 0))
            .await
            .unwrap_or_else(|s| panic!("{fault:?}: {s:?}"));
        assert_eq!(creds.role_session_name, workload().unique_id);
        let health = HealthClient::new(env.channel.clone())
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(health.status, ServingStatus::Serving as i32, "{fault:?}");
        let jwks = env.server.as_ref().unwrap().jwks();
        assert!(!jwks.is_stale(), "{fault:?}: within max-age");
        assert!(jwks.key_age().is_some());
        env.jwks.set_fault(None);
        env.stop().await;
    }
}

#[tokio::test]
async fn rotated_keys_are_picked_up_once_the_jwks_is_back() {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = Env::start_with(jwks_options(&sts)).await;
    env.jwks.set_fault(Some(JwksFault::Status(503)));
    let new_kid = env.issuer.rotate();
    let rotated = token_with_kid(&env.issuer, &new_kid);
    assert_eq!(
        env.call(&rotated, ROLE_A, 0).await.unwrap_err().code(),
        Code::Unavailable
    );
    env.jwks.set_fault(None);
    // The request path refetches at most once per second after a failure;
    // the next refetch (a fetch the server counts) brings the new key.
    let fetched = env.jwks.fetch_count();
    let recovered = within(GUARD, async {
        loop {
            match env.call(&rotated, ROLE_A, 0).await {
                Ok(creds) => return creds,
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
                    tokio::task::yield_now().await;
                }
            }
        }
    })
    .await;
    assert_eq!(recovered.role_session_name, workload().unique_id);
    assert!(env.jwks.fetch_count() > fetched);
    // And a kid that is not Google's, with the endpoint healthy, is
    // UNAUTHENTICATED again.
    let stranger_kid = token_with_kid(&Issuer::new(), "not-a-google-kid");
    assert_eq!(
        env.call(&stranger_kid, ROLE_A, 0).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn cold_start_with_the_jwks_down_is_not_serving_and_unavailable_until_keys_arrive() {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let issuer = Issuer::new();
    let jwks = JwksServer::start(issuer.clone(), 3600).await;
    jwks.set_fault(Some(JwksFault::Status(503)));
    let env = Env::start_on(
        issuer,
        jwks,
        Options {
            wait_ready: false,
            ..jwks_options(&sts)
        },
    )
    .await;
    // The start-up fetch has failed at least once.
    within(GUARD, env.jwks.wait_for_fetches(1)).await;
    let health = HealthClient::new(env.channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::NotServing as i32);
    let token = env.token(&workload());
    let status = env.call(&token, ROLE_A, 0).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(retry_delay(&status).is_some());
    assert_eq!(sts.request_count(), 0);

    env.jwks.set_fault(None);
    within(
        GUARD,
        wait_for_health(env.channel.clone(), ServingStatus::Serving),
    )
    .await;
    env.call(&token, ROLE_A, 0).await.unwrap();
}

/// Credentials cached for an hour are inside their refresh window at once:
/// every cache hit also starts a background refresh.
fn refresh_at_once() -> CacheConfig {
    CacheConfig {
        margin: Duration::from_secs(600),
        refresh_window: Duration::from_secs(7000),
        ..CacheConfig::default()
    }
}

#[tokio::test]
async fn cached_credentials_keep_being_served_through_every_kind_of_sts_failure() {
    for mode in [
        FakeStsMode::Error {
            status: 400,
            code: "Throttling".into(),
            message: "Rate exceeded".into(),
        },
        FakeStsMode::Error {
            status: 503,
            code: "ServiceUnavailable".into(),
            message: "down".into(),
        },
        FakeStsMode::Error {
            status: 500,
            code: "InternalFailure".into(),
            message: "oops".into(),
        },
        FakeStsMode::Garbage,
        FakeStsMode::WrongXml,
        FakeStsMode::Hang,
    ] {
        let sts = FakeSts::start(FakeStsMode::Success).await;
        let env = Env::start_with(Options {
            sts_endpoint: Some(sts.endpoint()),
            sts_timeout: Duration::from_millis(600),
            cache: refresh_at_once(),
            ..Options::default()
        })
        .await;
        let token = env.token(&workload());
        let first = env.call(&token, ROLE_A, 0).await.unwrap();
        assert_eq!(first.access_key_id, FAKE_ACCESS_KEY_ID);
        assert_eq!(sts.request_count(), 1);

        sts.set_mode(mode.clone());
        // A hit: served at once, and a background refresh starts and fails.
        let hit = within(GUARD, env.call(&token, ROLE_A, 0)).await.unwrap();
        assert_eq!(hit.access_key_id, first.access_key_id, "{mode:?}");
        within(GUARD, sts.wait_for_requests(2)).await;
        // Still served after the failed refresh.
        let again = within(GUARD, env.call(&token, ROLE_A, 0)).await.unwrap();
        assert_eq!(again.access_key_id, first.access_key_id, "{mode:?}");
        assert_eq!(again.session_token, first.session_token);

        // What is not cached fails with UNAVAILABLE and a retry hint.
        let status = within(GUARD, env.call(&token, ROLE_B, 0))
            .await
            .expect_err("nothing cached for this role");
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "{mode:?}: {}",
            status.message()
        );
        assert!(status.message().contains("STS"), "{}", status.message());
        assert!(retry_delay(&status).is_some(), "{mode:?}");
        assert_no_token(status.message(), &token);
    }
}

#[tokio::test]
async fn sts_that_refuses_connections_or_hangs_fails_fast_and_recovers() {
    let moto = Moto::shared().await;
    let proxy = FaultProxy::start(
        format!("127.0.0.1:{}", moto.port()).parse().unwrap(),
        ProxyMode::Close,
    )
    .await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(proxy.endpoint()),
        sts_timeout: Duration::from_millis(800),
        cache: CacheConfig {
            enabled: false,
            ..CacheConfig::default()
        },
        ..Options::default()
    })
    .await;
    let token = env.token(&workload());

    let status = within(GUARD, env.call(&token, ROLE_A, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(retry_delay(&status).is_some());
    assert!(proxy.connection_count() >= 1);

    proxy.set_mode(ProxyMode::Hang);
    let status = within(GUARD, env.call(&token, ROLE_A, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status.message().contains("timed out"),
        "{}",
        status.message()
    );

    proxy.set_mode(ProxyMode::Forward);
    let creds = within(GUARD, env.call(&token, ROLE_A, 0)).await.unwrap();
    assert!(
        creds
            .assumed_role_arn
            .ends_with("/RoleA/112233445566778899001")
    );
}

#[tokio::test]
async fn a_fallback_region_answers_when_the_primary_fails_with_a_retryable_error() {
    let primary = FakeSts::start(FakeStsMode::Error {
        status: 503,
        code: "ServiceUnavailable".into(),
        message: "regional outage".into(),
    })
    .await;
    let fallback = FakeSts::start(FakeStsMode::Success).await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(primary.endpoint()),
        fallback_regions: vec![FallbackRegion {
            region: "us-west-2".into(),
            sts_endpoint: Some(fallback.endpoint()),
        }],
        cache: CacheConfig {
            enabled: false,
            ..CacheConfig::default()
        },
        ..Options::default()
    })
    .await;
    let token = env.token(&workload());
    let creds = within(GUARD, env.call(&token, ROLE_A, 0)).await.unwrap();
    assert_eq!(creds.access_key_id, FAKE_ACCESS_KEY_ID);
    assert!(primary.request_count() >= 1);
    assert_eq!(fallback.request_count(), 1);

    // Throttling falls back too.
    primary.set_mode(FakeStsMode::Error {
        status: 400,
        code: "Throttling".into(),
        message: "Rate exceeded".into(),
    });
    within(GUARD, env.call(&token, ROLE_A, 0)).await.unwrap();
    assert_eq!(fallback.request_count(), 2);

    // A refusal is final: no other region is asked.
    primary.set_mode(FakeStsMode::Error {
        status: 403,
        code: "AccessDenied".into(),
        message: "Not authorized to perform sts:AssumeRoleWithWebIdentity".into(),
    });
    let status = within(GUARD, env.call(&token, ROLE_A, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(retry_delay(&status), None);
    assert_eq!(fallback.request_count(), 2);

    // Every region down: UNAVAILABLE with a retry hint.
    primary.set_mode(FakeStsMode::Garbage);
    fallback.set_mode(FakeStsMode::Error {
        status: 503,
        code: "ServiceUnavailable".into(),
        message: "also down".into(),
    });
    let status = within(GUARD, env.call(&token, ROLE_A, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(retry_delay(&status).is_some());
}
