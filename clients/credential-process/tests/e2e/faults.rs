//! Bad input and faults: each ends in a non-zero exit, nothing on stdout and
//! one line on stderr that names the step and the reason.

use std::net::{Ipv4Addr, SocketAddr};

use axum::{Router, http::StatusCode};
use tokenbridge_client::testing::{Answer, FAKE_ACCESS_KEY_ID, FakeExchange};
use tokio::net::TcpListener;

use crate::common::*;

/// A loopback port that nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    listener.local_addr().unwrap()
}

/// An HTTP server that answers every request with `status` and `body`.
async fn answering(status: StatusCode, body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().fallback(move || async move { (status, body) });
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A server that accepts connections and never answers.
async fn silent() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

/// `process` flags with this endpoint and metadata host.
fn args(endpoint: &str, metadata_host: &str) -> Vec<String> {
    [
        "process",
        "--endpoint",
        endpoint,
        "--audience",
        AUDIENCE,
        "--role-arn",
        ROLE,
        "--metadata-host",
        metadata_host,
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::test]
async fn metadata_server_down() {
    let metadata = closed_port().await.to_string();
    let out = output(&mut shim(args("http://127.0.0.1:1", &metadata))).await;
    expect_failure(
        &out,
        &[
            &format!("metadata server {metadata}: cannot connect"),
            "refused",
        ],
    );
}

#[tokio::test]
async fn metadata_server_slow() {
    let metadata = silent().await.to_string();
    let mut command = shim(args("http://127.0.0.1:1", &metadata));
    command.args(["--metadata-timeout", "300ms"]);
    let out = output(&mut command).await;
    expect_failure(
        &out,
        &[&format!(
            "metadata server {metadata}: no answer within 300 ms"
        )],
    );
}

#[tokio::test]
async fn metadata_server_slow_against_the_overall_limit() {
    let metadata = silent().await.to_string();
    let mut command = shim(args("http://127.0.0.1:1", &metadata));
    command.args(["--metadata-timeout", "10s", "--timeout", "300ms"]);
    let out = output(&mut command).await;
    expect_failure(
        &out,
        &[&format!(
            "metadata server {metadata}: no answer within the overall time limit of 300 ms \
             (--timeout)"
        )],
    );
}

#[tokio::test]
async fn metadata_server_403() {
    let metadata = answering(
        StatusCode::FORBIDDEN,
        "Request had a X-Forwarded-For header and was rejected\n",
    )
    .await
    .to_string();
    let out = output(&mut shim(args("http://127.0.0.1:1", &metadata))).await;
    expect_failure(
        &out,
        &[&format!(
            "metadata server {metadata}: HTTP 403: Request had a X-Forwarded-For header"
        )],
    );
}

#[tokio::test]
async fn metadata_server_garbage() {
    let metadata = answering(StatusCode::OK, "<html>captive portal: eyJ-looking</html>")
        .await
        .to_string();
    let out = output(&mut shim(args("http://127.0.0.1:1", &metadata))).await;
    let line = expect_failure(
        &out,
        &[&format!(
            "metadata server {metadata}: the answer is not an ID token"
        )],
    );
    assert!(
        !line.contains("captive"),
        "the answer is not echoed: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_unreachable() {
    let stack = Stack::start().await;
    let endpoint = format!("http://{}", closed_port().await);
    let out = output(&mut shim(args(&endpoint, &stack.metadata.host()))).await;
    expect_failure(
        &out,
        &[&format!("connecting to {endpoint}: "), "Connection refused"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_refuses_an_unbound_role() {
    let stack = Stack::start().await;
    let mut command = shim(args(&stack.endpoint, &stack.metadata.host()));
    command.args(["--role-arn", UNBOUND_ROLE]);
    let out = output(&mut command).await;
    expect_failure(
        &out,
        &[
            "tokenbridge refused the request: PERMISSION_DENIED: ",
            UNBOUND_ROLE,
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_refuses_a_token_for_another_audience() {
    let stack = Stack::start().await;
    let mut command = shim(args(&stack.endpoint, &stack.metadata.host()));
    command.args(["--audience", "https://somewhere-else.example.com"]);
    let out = output(&mut command).await;
    expect_failure(
        &out,
        &["tokenbridge refused the request: UNAUTHENTICATED: "],
    );
}

#[tokio::test]
async fn service_hangs() {
    let fake = FakeExchange::start(vec![Answer::Hang]).await;
    let stack_metadata = metadata_only().await;
    let mut command = shim(args(&fake.endpoint(), &stack_metadata.host()));
    command.args(["--timeout", "500ms"]);
    let out = output(&mut command).await;
    expect_failure(
        &out,
        &[&format!(
            "tokenbridge at {} did not answer within 500 ms",
            fake.endpoint()
        )],
    );
}

#[tokio::test]
async fn service_presents_an_untrusted_certificate() {
    let fake = FakeExchange::start_tls(vec![]).await;
    let metadata = metadata_only().await;
    let out = output(&mut shim(args(&fake.endpoint(), &metadata.host()))).await;
    expect_failure(
        &out,
        &[
            &format!("connecting to {}: ", fake.endpoint()),
            "certificate",
        ],
    );
    assert!(fake.calls().is_empty(), "no call got through");

    // The same server is trusted with its certificate as --ca-file.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, fake.ca_pem().unwrap()).unwrap();
    let mut command = shim(args(&fake.endpoint(), &metadata.host()));
    command.arg("--ca-file").arg(&ca);
    let json = expect_credentials(&output(&mut command).await);
    assert_eq!(json["AccessKeyId"], FAKE_ACCESS_KEY_ID);
    assert_eq!(json["AccountId"], "123456789012");
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0]
            .authorization
            .as_deref()
            .is_some_and(|value| value.starts_with("Bearer eyJ")),
        "the ID token is sent as a bearer token"
    );
    assert_eq!(calls[0].role_arn, ROLE);
}

#[tokio::test]
async fn unreadable_ca_file_is_a_usage_error() {
    let out = output(
        shim(args("https://127.0.0.1:1", "127.0.0.1:2")).args(["--ca-file", "/nonexistent/ca.pem"]),
    )
    .await;
    expect_failure(
        &out,
        &["invalid configuration: cannot read the CA file /nonexistent/ca.pem"],
    );
    assert_eq!(out.status.code(), Some(64));
}

/// Tokens go out and AWS secret keys come back over the connection: plain
/// HTTP to another host needs an explicit opt-in.
#[tokio::test]
async fn plaintext_to_a_remote_host_is_refused_without_an_opt_in() {
    let out = output(&mut shim(args(
        "http://tokenbridge.example.com:50051",
        "127.0.0.1:2",
    )))
    .await;
    expect_failure(
        &out,
        &["invalid configuration", "not loopback", "--insecure-http"],
    );
    assert_eq!(out.status.code(), Some(64));
    // With the opt-in it goes on (and fails later: nothing listens there).
    let out = output(
        shim(args("http://tokenbridge.invalid:50051", "127.0.0.1:2"))
            .env("TOKENBRIDGE_INSECURE_HTTP", "true"),
    )
    .await;
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not loopback"));
}

#[tokio::test]
async fn missing_flags_are_a_one_line_usage_error() {
    let out = output(&mut shim(["process", "--audience", AUDIENCE])).await;
    expect_failure(&out, &["usage: ", "--endpoint"]);
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn flags_come_from_the_environment() {
    let fake = FakeExchange::start(vec![]).await;
    let metadata = metadata_only().await;
    let out = output(
        shim(["process"])
            .env("TOKENBRIDGE_ENDPOINT", fake.endpoint())
            .env("TOKENBRIDGE_AUDIENCE", AUDIENCE)
            .env("TOKENBRIDGE_ROLE_ARN", ROLE)
            .env("TOKENBRIDGE_DURATION_SECONDS", "1800")
            .env("GCE_METADATA_HOST", metadata.host()),
    )
    .await;
    let json = expect_credentials(&out);
    assert_eq!(json["AccessKeyId"], FAKE_ACCESS_KEY_ID);
    let calls = fake.calls();
    assert_eq!(calls[0].role_arn, ROLE);
    assert_eq!(calls[0].duration_seconds, 1800);
    assert!(metadata.request_count() >= 1);
}

/// A metadata server for the workload (tokens nobody verifies).
async fn metadata_only() -> tokenbridge_testing::MetadataServer {
    let issuer = tokenbridge_testing::Issuer::new();
    tokenbridge_testing::MetadataServer::start(issuer, workload()).await
}
