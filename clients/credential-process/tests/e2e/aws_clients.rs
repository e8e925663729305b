//! Real AWS clients against moto, through the real tokenbridge server and
//! the metadata emulator: the aws CLI and boto3 with a `credential_process`
//! profile, aws-sdk-rust's own credential_process provider, and boto3
//! through `tokenbridge-cred serve`.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, profile::ProfileFileCredentialsProvider};
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_get_caller_identity_through_credential_process() {
    let stack = Stack::start().await;
    let home = tempfile::tempdir().unwrap();
    let config = write_profile(home.path(), &stack.process_args());
    let mut aws = aws_client(&venv_bin("aws"), home.path(), &config, &stack.moto);
    aws.args([
        "sts",
        "get-caller-identity",
        "--profile",
        "tb",
        "--output",
        "json",
    ]);
    let out = output(&mut aws).await;
    assert!(
        out.status.success(),
        "aws failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let identity: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(identity["Arn"], ASSUMED_ARN);
    assert_eq!(identity["Account"], "123456789012");
    assert!(
        stack.metadata.request_count() >= 1,
        "the ID token came from the metadata server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_lists_s3_buckets_through_credential_process() {
    let stack = Stack::start().await;
    let bucket = format!("tokenbridge-cred-{}", std::process::id());
    let created = reqwest::Client::new()
        .put(format!("{}/{bucket}", stack.moto))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{}", created.status());

    let home = tempfile::tempdir().unwrap();
    let config = write_profile(home.path(), &stack.process_args());
    let script = r#"
import json, boto3
session = boto3.Session(profile_name="tb")
buckets = [b["Name"] for b in session.client("s3").list_buckets()["Buckets"]]
arn = session.client("sts").get_caller_identity()["Arn"]
print(json.dumps({"method": session.get_credentials().method, "buckets": buckets, "arn": arn}))
"#;
    let mut python = aws_client(&venv_bin("python"), home.path(), &config, &stack.moto);
    python.args(["-c", script]);
    let out = output(&mut python).await;
    assert!(
        out.status.success(),
        "boto3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["method"], "custom-process");
    assert_eq!(result["arn"], ASSUMED_ARN);
    let buckets = result["buckets"].as_array().unwrap();
    assert!(
        buckets.iter().any(|b| b == bucket.as_str()),
        "{bucket} not in {buckets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_sdk_rust_credential_process_provider() {
    let stack = Stack::start().await;
    let home = tempfile::tempdir().unwrap();
    let config = write_profile(home.path(), &stack.process_args());
    let files = EnvConfigFiles::builder()
        .with_file(EnvConfigFileKind::Config, &config)
        .build();
    let provider = ProfileFileCredentialsProvider::builder()
        .profile_files(files)
        .profile_name("tb")
        .build();
    let sts = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&stack.moto)
            .credentials_provider(provider)
            .build(),
    );
    let identity = sts
        .get_caller_identity()
        .send()
        .await
        .expect("get-caller-identity with credentials from tokenbridge-cred");
    assert_eq!(identity.arn(), Some(ASSUMED_ARN));
    assert_eq!(identity.account(), Some("123456789012"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_through_serve_container_credentials() {
    let stack = Stack::start().await;
    let mut args = stack.process_args();
    args[0] = "serve".into();
    let mut serve = shim(&args);
    serve.stdout(std::process::Stdio::piped());
    let mut child = serve.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let uri_line = lines.next_line().await.unwrap().expect("the URI line");
    let token_line = lines.next_line().await.unwrap().expect("the token line");
    let uri = uri_line
        .strip_prefix("AWS_CONTAINER_CREDENTIALS_FULL_URI=")
        .expect("AWS_CONTAINER_CREDENTIALS_FULL_URI=…")
        .to_owned();
    let token_file = token_line
        .strip_prefix("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=")
        .expect("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=…")
        .to_owned();
    assert!(uri.starts_with("http://127.0.0.1:"), "{uri}");
    // The token is in a file only this user can read, never on stdout
    // (container runtimes collect stdout into logs).
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(token.len() >= 32, "a generated token of 32 random bytes");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{token_file}: {mode:o}");
        let dir = std::path::Path::new(&token_file).parent().unwrap();
        let dir_mode = std::fs::metadata(dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o077, 0, "{}: {dir_mode:o}", dir.display());
    }
    assert!(!uri_line.contains(&token) && !token_line.contains(&token));

    // The endpoint wants exactly that Authorization value.
    let http = reqwest::Client::new();
    let none = http.get(&uri).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let wrong = http
        .get(&uri)
        .header("Authorization", "not-the-token-at-all")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let right = http
        .get(&uri)
        .header("Authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let body: serde_json::Value = right.json().await.unwrap();
    for key in ["AccessKeyId", "SecretAccessKey", "Token", "Expiration"] {
        assert!(body[key].as_str().is_some_and(|v| !v.is_empty()), "{key}");
    }
    assert!(body["Expiration"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["RoleArn"], ROLE);

    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("aws-config");
    std::fs::write(&config, "").unwrap();
    let script = r#"
import json, boto3
session = boto3.Session()
arn = session.client("sts").get_caller_identity()["Arn"]
buckets = session.client("s3").list_buckets()["Buckets"]
print(json.dumps({"method": session.get_credentials().method, "arn": arn, "n": len(buckets)}))
"#;
    let mut python = aws_client(&venv_bin("python"), home.path(), &config, &stack.moto);
    python
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri)
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file)
        .args(["-c", script]);
    let out = output(&mut python).await;
    assert!(
        out.status.success(),
        "boto3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["method"], "container-role");
    assert_eq!(result["arn"], ASSUMED_ARN);

    // SIGTERM stops it gracefully.
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("serve stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}
