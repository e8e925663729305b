//! The client library against the real tokenbridge server (with the Google
//! stand-ins and moto) and against a fake for the faults the real one cannot
//! show on demand.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::{ProvideCredentials as _, error::CredentialsError};
use aws_smithy_async::time::TimeSource;
use axum::{Router, http::StatusCode};
use tokenbridge_client::{
    Client, Config, CredentialsProvider, CredentialsRequest, Error, IdTokenSource as _,
    MetadataIdTokenSource, RetryPolicy,
    testing::{Answer, FAKE_ACCESS_KEY_ID, FakeExchange},
};
use tokenbridge_server::{
    PolicySnapshot,
    app::{self, Running},
};
use tokenbridge_testing::{Issuer, JwksServer, MetadataServer, Moto, ServiceAccount};
use tokio::net::TcpListener;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const AUDIENCE: &str = "https://tokenbridge.test";
const ROLE: &str = "arn:aws:iam::123456789012:role/RoleA";
const ASSUMED_ARN: &str = "arn:aws:sts::123456789012:assumed-role/RoleA/112233445566778899001";

fn workload() -> ServiceAccount {
    ServiceAccount::new(
        "112233445566778899001",
        "workload@demo-project.iam.gserviceaccount.com",
    )
}

struct Stack {
    metadata: MetadataServer,
    endpoint: String,
    moto: String,
    _jwks: JwksServer,
    _server: Running,
}

async fn stack() -> Stack {
    stack_with("").await
}

/// The stack with `extra` appended to the server's config.
async fn stack_with(extra: &str) -> Stack {
    let moto = Moto::shared().await.endpoint();
    let issuer = Issuer::new();
    let jwks = JwksServer::start(issuer.clone(), 3600).await;
    let metadata = MetadataServer::start(issuer, workload()).await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[google]\naudiences = [\"{AUDIENCE}\"]\n\
         jwks_uri = \"{}\"\n[aws]\nregion = \"us-east-1\"\nsts_endpoint = \"{moto}\"\n\
         [policy]\nfile = \"policy.toml\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[audit]\nsink = \"file\"\npath = \"/dev/null\"\n{extra}",
        jwks.uri()
    );
    let policy = format!(
        "[[binding]]\nname = \"w\"\nservice_accounts = [\"112233445566778899001\"]\n\
         role_arns = [\"{ROLE}\"]\n"
    );
    let config = tokenbridge_server::Config::from_toml_str(&config, Path::new("c.toml")).unwrap();
    let policy = PolicySnapshot::from_toml_str(&policy, Path::new("policy.toml")).unwrap();
    let server = app::start(config, policy).await.unwrap();
    let endpoint = format!("http://{}", server.addr);
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    while let Some(update) = watch.message().await.unwrap() {
        if update.status == ServingStatus::Serving as i32 {
            break;
        }
    }
    Stack {
        metadata,
        endpoint,
        moto,
        _jwks: jwks,
        _server: server,
    }
}

fn tokens(metadata: &MetadataServer) -> MetadataIdTokenSource {
    MetadataIdTokenSource::builder(AUDIENCE)
        .host(metadata.host())
        .build()
        .unwrap()
}

async fn some_metadata() -> MetadataServer {
    MetadataServer::start(Issuer::new(), workload()).await
}

fn fast_retries(config: Config) -> Config {
    config.with_retry(RetryPolicy::new(
        3,
        Duration::from_millis(1),
        Duration::from_millis(10),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_sdk_through_the_credentials_provider() {
    let stack = stack().await;
    let provider = CredentialsProvider::new(
        Config::new(&stack.endpoint),
        tokens(&stack.metadata),
        CredentialsRequest::role(ROLE),
    )
    .unwrap();
    let aws = aws_config::defaults(BehaviorVersion::latest())
        .credentials_provider(provider.clone())
        .region(Region::new("us-east-1"))
        .endpoint_url(&stack.moto)
        .load()
        .await;
    let identity = aws_sdk_sts::Client::new(&aws)
        .get_caller_identity()
        .send()
        .await
        .expect("get-caller-identity with credentials from tokenbridge");
    assert_eq!(identity.arn(), Some(ASSUMED_ARN));

    // The provider's own credentials: an account, an expiry, and the ID
    // token reused from the first load.
    let credentials = provider.provide_credentials().await.unwrap();
    assert_eq!(
        credentials.account_id().map(|a| a.as_str()),
        Some("123456789012")
    );
    assert!(credentials.expiry().unwrap() > SystemTime::now() + Duration::from_secs(900));
    assert_eq!(stack.metadata.request_count(), 1, "the ID token was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_the_status_code_and_message() {
    let stack = stack().await;
    let client = Client::new(&Config::new(&stack.endpoint)).unwrap();
    let token = tokens(&stack.metadata).id_token().await.unwrap();
    let unbound = "arn:aws:iam::123456789012:role/NotBound";
    let error = client
        .get_credentials(&token, &CredentialsRequest::role(unbound))
        .await
        .unwrap_err();
    let Error::Refused { code, message, .. } = &error else {
        panic!("a refusal expected, got {error:?}")
    };
    assert_eq!(*code, Code::PermissionDenied);
    assert!(message.contains(unbound), "{message}");
    assert!(!error.retry_may_help());
    assert!(!error.to_string().contains(token.expose()));

    let credentials = client
        .get_credentials(&token, &CredentialsRequest::role(ROLE))
        .await
        .unwrap();
    assert_eq!(credentials.assumed_role_arn, ASSUMED_ARN);
    assert_eq!(credentials.account_id(), Some("123456789012"));
    let shown = format!("{credentials:?}");
    assert!(!shown.contains(credentials.secret_access_key.expose().as_str()));
    assert!(!shown.contains(credentials.session_token.expose().as_str()));
}

#[tokio::test]
async fn unavailable_is_retried_until_it_passes() {
    let fake = FakeExchange::start(vec![
        Answer::Refuse(Code::Unavailable, "STS is down".into()),
        Answer::Refuse(Code::Unavailable, "STS is down".into()),
        Answer::Grant(Duration::from_secs(3600)),
    ])
    .await;
    let metadata = some_metadata().await;
    let client = Client::new(&fast_retries(Config::new(fake.endpoint()))).unwrap();
    let token = tokens(&metadata).id_token().await.unwrap();
    let credentials = client
        .get_credentials(&token, &CredentialsRequest::role(ROLE))
        .await
        .unwrap();
    assert_eq!(credentials.access_key_id, FAKE_ACCESS_KEY_ID);
    let calls = fake.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(
        calls[0].authorization.as_deref(),
        Some(format!("Bearer {}", token.expose()).as_str())
    );
}

#[tokio::test]
async fn unavailable_is_retried_a_bounded_number_of_times() {
    let fake = FakeExchange::start(vec![Answer::Refuse(
        Code::Unavailable,
        "STS is down".into(),
    )])
    .await;
    let metadata = some_metadata().await;
    let config = Config::new(fake.endpoint()).with_retry(RetryPolicy::new(
        2,
        Duration::from_millis(1),
        Duration::from_millis(5),
    ));
    let client = Client::new(&config).unwrap();
    let token = tokens(&metadata).id_token().await.unwrap();
    let error = client
        .get_credentials(&token, &CredentialsRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Refused { code: Code::Unavailable, message, .. } if message == "STS is down"),
        "{error:?}"
    );
    assert_eq!(fake.calls().len(), 3, "one attempt and two retries");
}

#[tokio::test]
async fn other_refusals_are_not_retried() {
    for code in [
        Code::PermissionDenied,
        Code::Unauthenticated,
        Code::InvalidArgument,
        Code::ResourceExhausted,
    ] {
        let fake = FakeExchange::start(vec![Answer::Refuse(code, "no".into())]).await;
        let metadata = some_metadata().await;
        let client = Client::new(&fast_retries(Config::new(fake.endpoint()))).unwrap();
        let token = tokens(&metadata).id_token().await.unwrap();
        let error = client
            .get_credentials(&token, &CredentialsRequest::default())
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Refused { code: c, .. } if c == code));
        assert_eq!(fake.calls().len(), 1, "{code:?} is not retried");
    }
}

#[tokio::test]
async fn an_unreachable_service_is_a_connect_error() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let metadata = some_metadata().await;
    let client = Client::new(&fast_retries(Config::new(&endpoint))).unwrap();
    let token = tokens(&metadata).id_token().await.unwrap();
    let error = client
        .get_credentials(&token, &CredentialsRequest::default())
        .await
        .unwrap_err();
    let Error::Connect {
        endpoint: shown,
        reason,
    } = &error
    else {
        panic!("a connect error expected, got {error:?}")
    };
    assert_eq!(shown, &endpoint);
    assert!(reason.contains("Connection refused"), "{reason}");
    assert!(error.is_unavailable() && error.retry_may_help());
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_connect_error_and_a_ca_file_fixes_it() {
    let fake = FakeExchange::start_tls(vec![]).await;
    let metadata = some_metadata().await;
    let token = tokens(&metadata).id_token().await.unwrap();
    let client =
        Client::new(&Config::new(fake.endpoint()).with_retry(RetryPolicy::none())).unwrap();
    let error = client
        .get_credentials(&token, &CredentialsRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Connect { reason, .. } if reason.contains("certificate")),
        "{error:?}"
    );
    assert!(fake.calls().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, fake.ca_pem().unwrap()).unwrap();
    let client = Client::new(&Config::new(fake.endpoint()).with_ca_file(&ca)).unwrap();
    let credentials = client
        .get_credentials(&token, &CredentialsRequest::default())
        .await
        .unwrap();
    assert_eq!(credentials.access_key_id, FAKE_ACCESS_KEY_ID);
}

#[tokio::test]
async fn a_service_that_does_not_answer_times_out() {
    let fake = FakeExchange::start(vec![Answer::Hang]).await;
    let metadata = some_metadata().await;
    let token = tokens(&metadata).id_token().await.unwrap();
    let config = Config::new(fake.endpoint()).with_request_timeout(Duration::from_millis(200));
    let error = Client::new(&config)
        .unwrap()
        .get_credentials(&token, &CredentialsRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Timeout { timeout, .. } if timeout == Duration::from_millis(200)),
        "{error:?}"
    );
    assert_eq!(fake.calls().len(), 1, "a timeout is not retried");
}

/// A clock the test moves.
#[derive(Debug, Clone)]
struct TestClock(Arc<Mutex<SystemTime>>);

impl TimeSource for TestClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

#[tokio::test]
async fn id_tokens_are_reused_until_shortly_before_they_expire() {
    let metadata = some_metadata().await;
    let clock = TestClock(Arc::new(Mutex::new(SystemTime::now())));
    let source = MetadataIdTokenSource::builder(AUDIENCE)
        .host(metadata.host())
        .refresh_margin(Duration::from_secs(300))
        .time_source(clock.clone())
        .build()
        .unwrap();
    let first = source.id_token().await.unwrap();
    let again = source.id_token().await.unwrap();
    assert_eq!(again.expose(), first.expose());
    assert_eq!(metadata.request_count(), 1);

    // The emulator's tokens last an hour: 6 minutes before exp, still reused;
    // 4 minutes before, inside the 5-minute margin, replaced.
    *clock.0.lock().unwrap() = first.expires_at() - Duration::from_secs(360);
    source.id_token().await.unwrap();
    assert_eq!(metadata.request_count(), 1);
    *clock.0.lock().unwrap() = first.expires_at() - Duration::from_secs(240);
    source.id_token().await.unwrap();
    assert_eq!(metadata.request_count(), 2);
}

async fn answering(status: StatusCode, body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().fallback(move || async move { (status, body) });
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

#[tokio::test]
async fn metadata_server_failures_name_the_step() {
    let source = |host: String| {
        MetadataIdTokenSource::builder(AUDIENCE)
            .host(host)
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap()
    };
    let down = {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let error = source(down.clone()).id_token().await.unwrap_err();
    assert!(
        matches!(&error, Error::MetadataUnreachable { host, .. } if *host == down),
        "{error:?}"
    );
    assert!(error.retry_may_help());

    let forbidden = answering(StatusCode::FORBIDDEN, "Missing Metadata-Flavor\nmore\n").await;
    let error = source(forbidden.to_string()).id_token().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("metadata server {forbidden}: HTTP 403: Missing Metadata-Flavor")
    );
    assert!(!error.retry_may_help());

    let garbage = answering(StatusCode::OK, "hello").await;
    let error = source(garbage.to_string()).id_token().await.unwrap_err();
    assert!(matches!(error, Error::MetadataInvalid { .. }), "{error:?}");
}

#[tokio::test]
async fn the_provider_reports_errors_to_the_sdk() {
    let fake = FakeExchange::start(vec![Answer::Refuse(
        Code::PermissionDenied,
        "no binding grants role R".into(),
    )])
    .await;
    let metadata = some_metadata().await;
    let provider = CredentialsProvider::new(
        Config::new(fake.endpoint()),
        tokens(&metadata),
        CredentialsRequest::role(ROLE),
    )
    .unwrap();
    let error = provider.provide_credentials().await.unwrap_err();
    assert!(
        matches!(error, CredentialsError::ProviderError(_)),
        "{error:?}"
    );
    let source = std::error::Error::source(&error)
        .and_then(|s| s.downcast_ref::<Error>())
        .expect("the tokenbridge error is the source");
    assert!(matches!(
        source,
        Error::Refused {
            code: Code::PermissionDenied,
            ..
        }
    ));

    let bad = CredentialsProvider::new(
        Config::new("ftp://tokenbridge"),
        tokens(&metadata),
        CredentialsRequest::default(),
    )
    .unwrap_err();
    assert!(matches!(bad, Error::Config { .. }), "{bad:?}");
}

/// The server's RetryInfo decides: a rate-limited call is retried after the
/// delay the server asks for (longer than this client's own backoff) and
/// succeeds; an oversized request's RESOURCE_EXHAUSTED carries none and is
/// not worth retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_the_servers_retry_info() {
    let stack =
        stack_with("[limits]\nper_subject_requests_per_second = 5\nper_subject_burst = 1\n").await;
    let client = Client::new(&fast_retries(Config::new(&stack.endpoint))).unwrap();
    let token = tokens(&stack.metadata).id_token().await.unwrap();
    client
        .get_credentials(&token, &CredentialsRequest::role(ROLE))
        .await
        .unwrap();
    // The burst is spent: the server answers RESOURCE_EXHAUSTED with
    // RetryInfo (~200 ms), beyond the client's 10 ms backoff; the client
    // waits as asked and the retry is served.
    client
        .get_credentials(&token, &CredentialsRequest::role(ROLE))
        .await
        .expect("retried after the server's RetryInfo delay");

    let oversized = format!("arn:aws:iam::123456789012:role/{}", "a".repeat(5000));
    let error = client
        .get_credentials(&token, &CredentialsRequest::role(&oversized))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Refused {
                code: Code::ResourceExhausted,
                retry_after: None,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        !error.retry_may_help(),
        "an oversized request is not retryable"
    );
}
