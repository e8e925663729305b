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
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        sts_timeout: Duration::from_secs(20),
        limits: LimitsConfig {
            request_timeout: Duration::from_millis(300),
            ..LimitsConfig::default()
        },
        audit: tokenbridge_server::observability::audit::AuditConfig {
            sink: tokenbridge_server::observability::audit::AuditSink::File(audit.clone()),
            gcp_project_id: None,
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
    // The handler, not only the guard, saw the deadline (one timer serves
    // both): the call has its audit record, with who asked and why it ended.
    env.stop().await;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["outcome"], "deadline_exceeded", "{}", lines[0]);
    assert_eq!(lines[0]["code"], "UNAVAILABLE", "{}", lines[0]);
    assert_eq!(
        lines[0]["sub"],
        workload().unique_id.as_str(),
        "{}",
        lines[0]
    );
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

/// Opens an HTTP/2 connection to `addr` by hand and starts `n`
/// `GetCredentials` streams whose headers (with a valid token) are sent but
/// whose message never is. Returns the client and the streams' pending
/// responses (the send halves are kept open, as a stalling caller would).
pub(crate) async fn stalled_streams(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    n: usize,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    Vec<(h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>)>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut streams = Vec::new();
    for _ in 0..n {
        let request = http::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        let mut ready = client.clone().ready().await.unwrap();
        let (response, send) = ready.send_request(request, false).unwrap();
        streams.push((response, send));
    }
    (client, streams)
}

/// The `grpc-status` and `grpc-message` of a trailers-only answer.
pub(crate) fn grpc_status_of(response: &http::Response<h2::RecvStream>) -> (String, String) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (header("grpc-status"), header("grpc-message"))
}

/// Issue 15, item 1: a connection that opens as many streams as there are
/// concurrency permits and never sends their messages used to lock every
/// caller out, indefinitely. Now the deadline covers the message: each
/// stalled stream ends with DEADLINE_EXCEEDED and frees its permit, and the
/// listener advertises its per-connection stream limit.
#[tokio::test]
async fn streams_that_never_send_their_message_end_at_the_deadline_and_free_their_places() {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = env_with(
        &sts,
        LimitsConfig {
            max_concurrent_requests: 4,
            request_timeout: Duration::from_millis(500),
            max_concurrent_streams: 8,
            ..LimitsConfig::default()
        },
    )
    .await;
    let token = env.token(&workload());
    let addr = env.server.as_ref().unwrap().addr;
    let (client, streams) = stalled_streams(
        addr,
        "/tokenbridge.v1.TokenExchange/GetCredentials",
        &token,
        4,
    )
    .await;
    for (response, _send) in streams {
        let response = within(GUARD, response).await.unwrap();
        let (code, message) = grpc_status_of(&response);
        assert_eq!(
            code,
            (Code::DeadlineExceeded as i32).to_string(),
            "{message}"
        );
        assert!(
            message.contains("did%20not%20arrive") || message.contains("did not arrive"),
            "{message}"
        );
        assert_no_token(&message, &token);
    }
    assert_eq!(client.current_max_send_streams(), 8);
    // Every place is free again: an honest caller is served.
    within(GUARD, env.call(&token, ROLE_A, 0)).await.unwrap();
}

/// Issue 15, item 1: the plain HTTP listeners (here the admin listener)
/// close a connection whose request headers do not arrive in time.
#[tokio::test]
async fn the_admin_listener_closes_a_connection_whose_headers_never_finish() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = env_with(&sts, LimitsConfig::default()).await;
    let admin = env.server.as_ref().unwrap().admin_addr.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: tokenbridge\r\nX-Slow: ")
        .await
        .unwrap();
    // The server gives up on the headers and closes (EOF or a reset).
    let mut buf = Vec::new();
    let read = within(
        tokenbridge_server::transport::http::HEADER_TIMEOUT + GUARD,
        tcp.read_to_end(&mut buf),
    )
    .await;
    assert!(
        read.is_err() || read.is_ok_and(|n| !String::from_utf8_lossy(&buf[..n]).contains("200 OK")),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}
