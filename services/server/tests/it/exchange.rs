//! The happy path against moto, the service surface (health, reflection),
//! and how STS failures reach the caller (fault injection with a fake STS).

use std::time::{Duration, SystemTime};

use aws_sdk_sts::config::{BehaviorVersion, Region};
use tokenbridge_testing::{FakeSts, FakeStsMode, Moto};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::common::*;

#[tokio::test]
async fn credentials_from_moto_work_with_aws_sts() {
    let env = Env::start().await;
    let sa = workload();
    let creds = env.call(&env.token(&sa), ROLE_A, 1800).await.unwrap();
    assert_eq!(creds.role_session_name, sa.unique_id);
    assert_eq!(
        creds.assumed_role_arn,
        format!(
            "arn:aws:sts::123456789012:assumed-role/RoleA/{}",
            sa.unique_id
        )
    );
    let expiration = creds.expiration.unwrap();
    let expires =
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(expiration.seconds).unwrap());
    let lifetime = expires.duration_since(SystemTime::now()).unwrap();
    assert!(
        lifetime > Duration::from_secs(1700) && lifetime <= Duration::from_secs(1800),
        "{lifetime:?}"
    );

    // The credentials are accepted by STS itself (signed with SigV4 by aws-sdk-rust).
    let credentials = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        Some(creds.session_token.clone()),
        None,
        "tokenbridge-test",
    );
    let sts = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(Moto::shared().await.endpoint())
            .credentials_provider(credentials)
            .build(),
    );
    let me = sts.get_caller_identity().send().await.unwrap();
    assert_eq!(me.arn(), Some(creds.assumed_role_arn.as_str()));
    assert_eq!(me.account(), Some("123456789012"));
    env.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let env = Env::start().await;
    let mut health = HealthClient::new(env.channel.clone());
    for service in ["", "tokenbridge.v1.TokenExchange"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, 1, "{service:?} is SERVING");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.Such".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(env.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"tokenbridge.v1.TokenExchange".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

async fn with_sts_mode(mode: FakeStsMode, sts_timeout: Duration) -> (Env, FakeSts) {
    let sts = FakeSts::start(mode).await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        sts_timeout,
        ..Options::default()
    })
    .await;
    (env, sts)
}

fn sts_error(status: u16, code: &str) -> FakeStsMode {
    FakeStsMode::Error {
        status,
        code: code.into(),
        message: format!("fake {code}"),
    }
}

#[tokio::test]
async fn sts_rejections_map_to_the_contract_codes() {
    let (env, sts) = with_sts_mode(FakeStsMode::Success, Duration::from_secs(3)).await;
    let token = env.token(&workload());
    for (mode, code, needle) in [
        (
            sts_error(400, "InvalidIdentityToken"),
            Code::Unauthenticated,
            "STS rejected the identity token: fake InvalidIdentityToken",
        ),
        (
            sts_error(400, "ExpiredTokenException"),
            Code::Unauthenticated,
            "expired",
        ),
        (
            sts_error(403, "AccessDenied"),
            Code::PermissionDenied,
            "STS denied access to the role",
        ),
        (
            sts_error(403, "IDPRejectedClaim"),
            Code::PermissionDenied,
            "rejected a claim",
        ),
        (
            sts_error(400, "IDPCommunicationError"),
            Code::Unavailable,
            "could not reach the identity provider",
        ),
        (
            sts_error(400, "Throttling"),
            Code::Unavailable,
            "throttling",
        ),
        (
            sts_error(503, "ServiceUnavailable"),
            Code::Unavailable,
            "STS is unavailable",
        ),
        (
            sts_error(500, "InternalFailure"),
            Code::Unavailable,
            "STS is unavailable",
        ),
        (
            FakeStsMode::Garbage,
            Code::Unavailable,
            "STS is unavailable",
        ),
        (
            sts_error(400, "ValidationError"),
            Code::FailedPrecondition,
            "STS refused the request: ValidationError",
        ),
    ] {
        sts.set_mode(mode.clone());
        let result = env.call(&token, ROLE_A, 0).await;
        let status = result.expect_err("STS failed");
        assert_eq!(status.code(), code, "{mode:?}: {}", status.message());
        assert!(
            status.message().contains(needle),
            "{mode:?}: {}",
            status.message()
        );
        assert_no_token(status.message(), &token);
    }
}

#[tokio::test]
async fn a_hanging_sts_fails_within_the_timeout_as_unavailable() {
    let (env, _sts) = with_sts_mode(FakeStsMode::Hang, Duration::from_millis(400)).await;
    let token = env.token(&workload());
    assert_status(
        env.call(&token, ROLE_A, 0).await,
        Code::Unavailable,
        "timed out",
        &token,
    );
}

#[tokio::test]
async fn the_callers_own_token_goes_to_sts() {
    let (env, sts) = with_sts_mode(FakeStsMode::Success, Duration::from_secs(3)).await;
    let token = env.token(&workload());
    env.call(&token, ROLE_A, 0).await.unwrap();
    let form = sts.last_form().unwrap();
    assert_eq!(form["Action"], "AssumeRoleWithWebIdentity");
    assert_eq!(form["WebIdentityToken"], token);
}
