//! The credentials cache through the whole service: one STS call per
//! identity and role, and the policy decided before the cache every time.

use tokenbridge_server::PolicySnapshot;
use tokenbridge_testing::{FakeSts, FakeStsMode};
use tonic::Code;

use crate::common::*;

#[tokio::test]
async fn hundreds_of_concurrent_cold_requests_make_one_sts_call() {
    let sts = FakeSts::start(FakeStsMode::Gated).await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        ..Options::default()
    })
    .await;
    let token = env.token(&workload());
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let mut client = env.client.clone();
        let token = token.clone();
        calls.spawn(async move {
            let mut req = tonic::Request::new(tokenbridge_proto::v1::GetCredentialsRequest {
                role_arn: ROLE_A.into(),
                duration_seconds: 0,
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            client
                .get_credentials(req)
                .await
                .map(|r| r.into_inner().access_key_id)
        });
    }
    sts.wait_for_requests(1).await;
    sts.release();
    let keys = calls.join_all().await;
    assert!(
        keys.iter()
            .all(|k| matches!(k, Ok(id) if id == tokenbridge_testing::FAKE_ACCESS_KEY_ID))
    );
    assert_eq!(sts.request_count(), 1, "300 callers, one STS call");
}

#[tokio::test]
async fn repeated_requests_are_served_from_the_cache_per_identity_and_role() {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        ..Options::default()
    })
    .await;
    let token = env.token(&workload());
    for _ in 0..5 {
        env.call(&token, ROLE_A, 0).await.unwrap();
    }
    assert_eq!(sts.request_count(), 1);
    // Another role, another duration, another identity: each its own call.
    env.call(&token, ROLE_B, 0).await.unwrap();
    env.call(&token, ROLE_A, 7200).await.unwrap();
    env.call(&env.token(&single()), "", 0).await.unwrap();
    assert_eq!(sts.request_count(), 4);
    // A fresh token of the same identity still hits the cache.
    env.call(&env.token(&workload()), ROLE_A, 0).await.unwrap();
    assert_eq!(sts.request_count(), 4);
}

#[tokio::test]
async fn removing_a_binding_denies_at_once_even_with_credentials_cached() {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        ..Options::default()
    })
    .await;
    let token = env.token(&workload());
    env.call(&token, ROLE_A, 0).await.unwrap();
    env.call(&token, ROLE_A, 0).await.unwrap();
    assert_eq!(sts.request_count(), 1, "cached");

    // The same policy without the `by-id` binding.
    let without = policy_toml()
        .replace("name = \"by-id\"", "name = \"gone\"")
        .replace(
            "service_accounts = [\"112233445566778899001\"]",
            "service_accounts = [\"444444444444444444444\"]",
        );
    env.server
        .as_ref()
        .unwrap()
        .exchange()
        .set_policy(PolicySnapshot::from_toml_str(&without, "p.toml".as_ref()).unwrap());
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::PermissionDenied,
        "no binding grants role",
        &token,
    );
    assert_eq!(sts.request_count(), 1);
}

#[tokio::test]
async fn sts_failures_are_not_cached() {
    let sts = FakeSts::start(FakeStsMode::Error {
        status: 503,
        code: "ServiceUnavailable".into(),
        message: "down".into(),
    })
    .await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        ..Options::default()
    })
    .await;
    let token = env.token(&workload());
    assert_eq!(
        env.call(&token, ROLE_A, 0).await.unwrap_err().code(),
        Code::Unavailable
    );
    sts.set_mode(FakeStsMode::Success);
    env.call(&token, ROLE_A, 0).await.unwrap();
}

/// One authorised caller cannot drive unbounded STS calls: short durations
/// (within the cache margin) are served from the cache, and STS calls per
/// identity and role are budgeted, beyond which the caller gets
/// RESOURCE_EXHAUSTED with RetryInfo (STS quotas are per account).
#[tokio::test]
async fn one_identity_cannot_make_sts_throttle_the_account() {
    let env = Env::start_with(Options {
        cache: tokenbridge_server::config::CacheConfig {
            sts_calls_per_minute: 3,
            sts_burst: 3,
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let token = env.token(&workload());
    // 900 s is inside the 20-minute margin: once bypassed on every call,
    // now cached while two thirds of its life remain.
    let first = env.call(&token, ROLE_A, 900).await.unwrap();
    let again = env.call(&token, ROLE_A, 900).await.unwrap();
    assert_eq!(again.access_key_id, first.access_key_id);

    // Distinct durations are distinct STS calls: the budget (3, one spent)
    // allows two more, then refuses with a delay to wait.
    env.call(&token, ROLE_A, 3600).await.unwrap();
    env.call(&token, ROLE_A, 3601).await.unwrap();
    let refused = env.call(&token, ROLE_A, 3602).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("too many STS calls"),
        "{}",
        refused.message()
    );
    assert!(tokenbridge_proto::status::retry_after(&refused).is_some());
    // What is cached is still served.
    env.call(&token, ROLE_A, 3600).await.unwrap();
}
