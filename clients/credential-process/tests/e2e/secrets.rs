//! No token, secret access key or session token reaches stderr, even at
//! RUST_LOG=trace, on success or failure, for `process` and `serve`.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_of_process_hold_no_secrets() {
    let stack = Stack::start().await;
    let cache = tempfile::tempdir().unwrap();

    let mut success = shim(stack.process_args());
    success
        .env("RUST_LOG", "trace")
        .arg("--cache-dir")
        .arg(cache.path());
    let ok = output(&mut success).await;
    let json = expect_credentials(&ok);
    let secret = json["SecretAccessKey"].as_str().unwrap().to_owned();
    let session = json["SessionToken"].as_str().unwrap().to_owned();
    let ok_log = String::from_utf8_lossy(&ok.stderr).into_owned();
    assert!(
        ok_log.lines().count() > 10,
        "trace logging is on (a quiet log would prove nothing): {ok_log}"
    );

    // Served from the cache, at trace level too.
    let mut hit = shim(stack.process_args());
    hit.env("RUST_LOG", "trace")
        .arg("--cache-dir")
        .arg(cache.path());
    let hit = output(&mut hit).await;
    expect_credentials(&hit);

    let mut failure = shim(stack.process_args());
    failure
        .env("RUST_LOG", "trace")
        .args(["--role-arn", UNBOUND_ROLE]);
    let refused = output(&mut failure).await;
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty());
    let refused_log = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(refused_log.contains("PERMISSION_DENIED"), "{refused_log}");

    for log in [
        &ok_log,
        &String::from_utf8_lossy(&hit.stderr).into_owned(),
        &refused_log,
    ] {
        assert_no_secrets(log, &[&secret, &session]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_of_serve_hold_no_secrets() {
    let stack = Stack::start().await;
    let mut args = stack.process_args();
    args[0] = "serve".into();
    let mut command = shim(&args);
    command
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let uri = lines.next_line().await.unwrap().unwrap();
    let uri = uri.split_once('=').unwrap().1.to_owned();
    let token_line = lines.next_line().await.unwrap().unwrap();
    let token_file = token_line.split_once('=').unwrap().1.to_owned();
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(!token_line.contains(&token), "the token was printed");

    let http = reqwest::Client::new();
    let body: serde_json::Value = http
        .get(&uri)
        .header("Authorization", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = body["SecretAccessKey"].as_str().unwrap().to_owned();
    let session = body["Token"].as_str().unwrap().to_owned();
    let denied = http
        .get(&uri)
        .header("Authorization", "a-wrong-token-of-some-length")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let log = log.await.unwrap();
    assert!(log.lines().count() > 10, "trace logging is on: {log}");
    assert_no_secrets(&log, &[&secret, &session, &token]);
}
