//! Abusive callers: per-peer and per-subject rate limits, the global
//! concurrency limit, the request deadline and the size limits, each with
//! its status code and message, over real gRPC.

use std::time::Duration;

use tokenbridge_proto::v1::GetCredentialsRequest;
use tokenbridge_server::transport::limits::{LimitsConfig, Rate};
use tokenbridge_testing::{FakeSts, FakeStsMode};
use tonic::{Code, Request};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::common::*;

const GUARD: Duration = Duration::from_secs(30);

async fn env_with(sts: &FakeSts, limits: LimitsConfig) -> Env {
    Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        limits,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_peer_over_its_rate_is_refused_before_its_token_is_looked_at() {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = env_with(
        &sts,
        LimitsConfig {
            per_peer: Rate::new(1, 3),
            // The test client comes from loopback.
            per_peer_exempt_loopback: false,
            ..LimitsConfig::default()
        },
    )
    .await;
    // Garbage tokens count too: the limit comes before verification.
    for _ in 0..3 {
        assert_eq!(
            env.call("not-a-token", ROLE_A, 0).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    let token = env.token(&workload());
    let status = env.call(&token, ROLE_A, 0).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .starts_with("rate limit exceeded: too many requests from this address"),
        "{}",
        status.message()
    );
    let delay = retry_delay(&status).expect("a retry hint");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "{delay:?}"
    );
    assert_no_token(status.message(), &token);
    assert_eq!(sts.request_count(), 0);
    assert_eq!(env.server.as_ref().unwrap().rate_limits().tracked().0, 1);

    // Health is not rate limited.
    let health = HealthClient::new(env.channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn loopback_peers_are_exempt_by_default() {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = env_with(
        &sts,
        LimitsConfig {
            per_peer: Rate::new(1, 1),
            ..LimitsConfig::default()
        },
    )
    .await;
    let token = env.token(&workload());
    for _ in 0..5 {
        env.call(&token, ROLE_A, 0).await.unwrap();
    }
    assert_eq!(env.server.as_ref().unwrap().rate_limits().tracked().0, 0);
}

#[tokio::test]
async fn a_subject_over_its_rate_is_refused_after_verification_and_others_are_not() {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = env_with(
        &sts,
        LimitsConfig {
            per_subject: Rate::new(1, 2),
            ..LimitsConfig::default()
        },
    )
    .await;
    let token = env.token(&workload());
    env.call(&token, ROLE_A, 0).await.unwrap();
    env.call(&token, ROLE_A, 0).await.unwrap();
    let status = env.call(&token, ROLE_A, 0).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains("too many requests for this service account"),
        "{}",
        status.message()
    );
    assert!(retry_delay(&status).is_some());
    // A forged token of the same subject is refused for what it is, and
    // does not spend that subject's budget: only verified callers count.
    let (message, _) = token.rsplit_once('.').unwrap();
    let forged = format!("{message}.AAAA");
    assert_eq!(
        env.call(&forged, ROLE_A, 0).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // Another identity has its own budget.
    env.call(&env.token(&single()), "", 0).await.unwrap();
    assert_eq!(env.server.as_ref().unwrap().rate_limits().tracked().1, 2);
}

#[tokio::test]
async fn over_the_concurrency_limit_calls_are_shed_at_once_and_health_still_answers() {
    let sts = FakeSts::start(FakeStsMode::Gated).await;
    let env = env_with(
        &sts,
        LimitsConfig {
            max_concurrent_requests: 2,
            ..LimitsConfig::default()
        },
    )
    .await;
    let token = env.token(&workload());
    // Two calls held inside STS (two roles: two STS requests).
    let mut held = tokio::task::JoinSet::new();
    for role in [ROLE_A, ROLE_B] {
        let mut client = env.client.clone();
        let token = token.clone();
        held.spawn(async move {
            let mut req = Request::new(GetCredentialsRequest {
                role_arn: role.into(),
                duration_seconds: 0,
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            client.get_credentials(req).await
        });
    }
    within(GUARD, sts.wait_for_requests(2)).await;

    let status = within(GUARD, env.call(&token, ROLE_A, 0))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .starts_with("server overloaded: 2 requests"),
        "{}",
        status.message()
    );
    assert!(retry_delay(&status).is_some());
    let health = HealthClient::new(env.channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    sts.release();
    for r in within(GUARD, held.join_all()).await {
        r.unwrap();
    }
    // Capacity is back.
    env.call(&token, ROLE_A, 0).await.unwrap();
}

#[tokio::test]
async fn a_call_past_the_request_deadline_is_unavailable_with_a_retry_hint() {
    let sts = FakeSts::start(FakeStsMode::Hang).await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        sts_timeout: Duration::from_secs(20),
        limits: LimitsConfig {
            request_timeout: Duration::from_millis(300),
            ..LimitsConfig::default()
        },
        ..Options::default()
    })
    .await;
    let token = env.token(&workload());
    let status = within(GUARD, env.call(&token, ROLE_A, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status
            .message()
            .contains("did not complete within the server's 300 ms limit"),
        "{}",
        status.message()
    );
    assert!(retry_delay(&status).is_some());
}

#[tokio::test]
async fn an_oversized_request_message_is_resource_exhausted() {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = env_with(
        &sts,
        LimitsConfig {
            max_request_bytes: 256,
            ..LimitsConfig::default()
        },
    )
    .await;
    let token = env.token(&workload());
    let long_role = format!("arn:aws:iam::123456789012:role/{}", "r".repeat(1000));
    let status = env.call(&token, &long_role, 0).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status.message() == "request message is larger than the 256-byte limit",
        "{}",
        status.message()
    );
    assert_no_token(status.message(), &token);
    // Within the limit, the same service answers as usual.
    assert_eq!(
        env.call(&token, "arn:aws:iam::123456789012:role/Nope", 0)
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(sts.request_count(), 0);
}

#[test]
fn idle_callers_are_forgotten() {
    let limits = tokenbridge_server::transport::limits::RateLimits::new(&LimitsConfig {
        per_peer: Rate::new(1_000_000, 1),
        per_peer_exempt_loopback: false,
        per_subject: Rate::new(1_000_000, 1),
        ..LimitsConfig::default()
    });
    for i in 0..1000u32 {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        limits.check_peer(Some(ip.into())).unwrap();
        limits.check_subject(&i.to_string()).unwrap();
    }
    assert_eq!(limits.tracked(), (1000, 1000));
    // One request each refills within a microsecond; the janitor's pass
    // then forgets them all. (A loop, not a sleep: it ends as soon as the
    // limiter's clock has moved on.)
    let started = std::time::Instant::now();
    while limits.tracked() != (0, 0) {
        assert!(started.elapsed() < GUARD, "hung: {:?}", limits.tracked());
        limits.retain_recent();
    }
}
