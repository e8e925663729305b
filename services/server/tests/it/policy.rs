//! Policy rules over real gRPC: sub vs email matching, `email_verified`, the
//! union of roles, durations and argument checks. STS is a fake here so the
//! tests can read exactly what was asked of it.

use serde_json::json;
use tokenbridge_testing::{FakeSts, FakeStsMode};
use tonic::Code;

use crate::common::*;

async fn env_with_fake_sts() -> (Env, FakeSts) {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        ..Options::default()
    })
    .await;
    (env, sts)
}

#[tokio::test]
async fn unique_id_entries_match_sub() {
    let (env, sts) = env_with_fake_sts().await;
    let creds = env.call(&env.token(&workload()), ROLE_A, 0).await.unwrap();
    assert!(
        creds
            .assumed_role_arn
            .ends_with("/RoleA/112233445566778899001"),
        "{}",
        creds.assumed_role_arn
    );
    let form = sts.last_form().unwrap();
    assert_eq!(form["RoleArn"], ROLE_A);
    assert_eq!(form["RoleSessionName"], "112233445566778899001");
}

#[tokio::test]
async fn email_entries_match_a_verified_email() {
    let (env, sts) = env_with_fake_sts().await;
    env.call(&env.token(&workload()), ROLE_B, 0).await.unwrap();
    assert_eq!(sts.last_form().unwrap()["RoleArn"], ROLE_B);
}

#[tokio::test]
async fn email_entries_do_not_match_an_unverified_email() {
    let (env, sts) = env_with_fake_sts().await;
    let mut c = env.claims(&workload());
    c.insert("email_verified".into(), json!(false));
    let token = env.issuer.sign(&c);
    assert_status(
        env.call(&token, ROLE_B, 0).await,
        Code::PermissionDenied,
        "no binding grants role",
        &token,
    );
    // Without the claim at all, likewise.
    c.remove("email_verified");
    let token = env.issuer.sign(&c);
    assert_status(
        env.call(&token, ROLE_B, 0).await,
        Code::PermissionDenied,
        "no binding grants role",
        &token,
    );
    // The sub binding still works.
    env.call(&token, ROLE_A, 0).await.unwrap();
    assert_eq!(sts.request_count(), 1);
}

#[tokio::test]
async fn an_email_does_not_match_a_unique_id_entry() {
    let (env, _sts) = env_with_fake_sts().await;
    // Same email as the workload, different sub: only the email binding applies.
    let mut impostor = workload();
    impostor.unique_id = "777777777777777777777".into();
    let token = env.token(&impostor);
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::PermissionDenied,
        "no binding grants role",
        &token,
    );
    env.call(&token, ROLE_B, 0).await.unwrap();
}

#[tokio::test]
async fn roles_are_the_union_of_all_bindings() {
    let (env, _sts) = env_with_fake_sts().await;
    let token = env.token(&workload());
    env.call(&token, ROLE_A, 0).await.unwrap();
    env.call(&token, ROLE_B, 0).await.unwrap();
    // With two roles, an empty role_arn is ambiguous and the message lists them.
    let status = env.call(&token, "", 0).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains(ROLE_A) && status.message().contains(ROLE_B),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn empty_role_means_the_only_role() {
    let (env, sts) = env_with_fake_sts().await;
    let creds = env.call(&env.token(&single()), "", 0).await.unwrap();
    assert!(
        creds.assumed_role_arn.contains("/RoleC/"),
        "{}",
        creds.assumed_role_arn
    );
    assert_eq!(sts.last_form().unwrap()["RoleArn"], ROLE_C);
}

#[tokio::test]
async fn no_binding_is_permission_denied() {
    let (env, sts) = env_with_fake_sts().await;
    let token = env.token(&stranger());
    assert_status(
        env.call(&token, "", 0).await,
        Code::PermissionDenied,
        "no binding grants any role to service account 555555555555555555555",
        &token,
    );
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::PermissionDenied,
        "no binding grants any role to service account 555555555555555555555 (stranger@",
        &token,
    );
    let token = env.token(&single());
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::PermissionDenied,
        &format!("no binding grants role {ROLE_A} to service account 998877665544332211009"),
        &token,
    );
    assert_eq!(
        sts.request_count(),
        0,
        "STS is never called for a denied request"
    );
}

#[tokio::test]
async fn malformed_role_arn_is_invalid_argument() {
    let (env, _sts) = env_with_fake_sts().await;
    let token = env.token(&workload());
    for bad in [
        "RoleA",
        "arn:aws:iam::123:role/RoleA",
        "arn:aws:s3:::bucket",
        "arn:aws:iam::123456789012:user/bob",
    ] {
        assert_status(
            env.call(&token, bad, 0).await,
            Code::InvalidArgument,
            "is not an IAM role ARN",
            &token,
        );
    }
}

#[tokio::test]
async fn durations() {
    let (env, sts) = env_with_fake_sts().await;
    let token = env.token(&workload());
    // 0: the binding's default (3600, as the binding sets no default).
    env.call(&token, ROLE_A, 0).await.unwrap();
    assert_eq!(sts.last_form().unwrap()["DurationSeconds"], "3600");
    // Up to the binding's maximum of 7200.
    env.call(&token, ROLE_A, 7200).await.unwrap();
    assert_eq!(sts.last_form().unwrap()["DurationSeconds"], "7200");
    assert_status(
        env.call(&token, ROLE_A, 7201).await,
        Code::InvalidArgument,
        "above the maximum of 7200 seconds",
        &token,
    );
    // ROLE_B's binding has the default maximum, 3600.
    assert_status(
        env.call(&token, ROLE_B, 3601).await,
        Code::InvalidArgument,
        "above the maximum of 3600 seconds",
        &token,
    );
    // Outside what STS allows at all.
    assert_status(
        env.call(&token, ROLE_A, 899).await,
        Code::InvalidArgument,
        "outside 900..=43200",
        &token,
    );
    assert_status(
        env.call(&token, ROLE_A, 43201).await,
        Code::InvalidArgument,
        "outside 900..=43200",
        &token,
    );
    // A binding whose maximum is below 3600 defaults to its maximum.
    env.call(&env.token(&single()), "", 0).await.unwrap();
    assert_eq!(sts.last_form().unwrap()["DurationSeconds"], "1800");
}

#[tokio::test]
async fn the_largest_maximum_of_the_bindings_granting_a_role_applies() {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let policy = format!(
        r#"
[[binding]]
name = "short"
service_accounts = ["112233445566778899001"]
role_arns = ["{ROLE_A}"]
max_duration_seconds = 900

[[binding]]
name = "long"
service_accounts = ["workload@demo-project.iam.gserviceaccount.com"]
role_arns = ["{ROLE_A}"]
max_duration_seconds = 43200
"#
    );
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        policy,
        ..Options::default()
    })
    .await;
    env.call(&env.token(&workload()), ROLE_A, 43200)
        .await
        .unwrap();
    assert_eq!(sts.last_form().unwrap()["DurationSeconds"], "43200");
}

/// Binding A scopes the role and allows 12 h, binding B does not scope it
/// and allows 1 h: a request gets one whole grant, never A's duration with
/// B's missing scope (the contract, "Several bindings for one service
/// account and role").
#[tokio::test]
async fn two_bindings_for_one_role_never_grant_more_than_either() {
    let moto = tokenbridge_testing::Moto::shared().await;
    let sts = tokenbridge_testing::StrictSts::start(moto.endpoint()).await;
    let jwks = {
        let issuer = tokenbridge_testing::Issuer::new();
        let jwks = tokenbridge_testing::JwksServer::start(issuer.clone(), 3600).await;
        (issuer, jwks)
    };
    sts.trust_provider(tokenbridge_testing::Provider::google(jwks.1.uri()));
    let sa = workload();
    sts.set_trust_policy(
        ROLE_A,
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"Federated": "accounts.google.com"},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {"accounts.google.com:sub": sa.unique_id}}}]}),
    );
    let policy = format!(
        r#"
[[binding]]
name = "scoped-long"
service_accounts = ["{id}"]
role_arns = ["{ROLE_A}"]
max_duration_seconds = 43200
session_policy = '{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}}]}}'

[[binding]]
name = "whole-short"
service_accounts = ["{id}"]
role_arns = ["{ROLE_A}"]
max_duration_seconds = 3600
"#,
        id = sa.unique_id
    );
    let env = Env::start_on(
        jwks.0,
        jwks.1,
        Options {
            sts_endpoint: Some(sts.endpoint()),
            policy,
            ..Options::default()
        },
    )
    .await;
    let token = env.token(&sa);

    // Within the unscoped grant: the whole role, no session policy.
    env.call(&token, ROLE_A, 3600).await.unwrap();
    let seen = sts.requests().pop().unwrap();
    assert!(seen.allowed, "{seen:?}");
    assert!(!seen.form.contains_key("Policy"), "{seen:?}");

    // Longer than the unscoped grant allows: only the scoped grant, with
    // its session policy (before: 12 h with no session policy at all).
    env.call(&token, ROLE_A, 43200).await.unwrap();
    let seen = sts.requests().pop().unwrap();
    assert_eq!(seen.form["DurationSeconds"], "43200");
    assert!(seen.form["Policy"].contains("s3:GetObject"), "{seen:?}");

    // The default is the least-scoped grant's (3600 s, unscoped): the very
    // credentials of the first call, from the cache, without STS.
    let first = env.call(&token, ROLE_A, 3600).await.unwrap();
    let by_default = env.call(&token, ROLE_A, 0).await.unwrap();
    assert_eq!(by_default.access_key_id, first.access_key_id);
    assert_eq!(sts.requests().len(), 2);
}
