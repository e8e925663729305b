//! The harness: the real tokenbridge server in-process with the Google
//! stand-ins and moto, the built `tokenbridge-cred`, and the Python AWS
//! clients of the project virtualenv.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
};

use tokenbridge_server::{
    Config, PolicySnapshot,
    app::{self, Running},
};
use tokenbridge_testing::{Issuer, JwksServer, MetadataServer, Moto, ServiceAccount};
use tokio::process::Command;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub const AUDIENCE: &str = "https://tokenbridge.test";
/// Bound to the workload; moto's default account.
pub const ROLE: &str = "arn:aws:iam::123456789012:role/RoleA";
/// Bound to no one.
pub const UNBOUND_ROLE: &str = "arn:aws:iam::123456789012:role/NotBound";
pub const WORKLOAD_ID: &str = "112233445566778899001";
/// The ARN moto reports for the workload's session.
pub const ASSUMED_ARN: &str = "arn:aws:sts::123456789012:assumed-role/RoleA/112233445566778899001";

pub fn workload() -> ServiceAccount {
    ServiceAccount::new(WORKLOAD_ID, "workload@demo-project.iam.gserviceaccount.com")
}

/// The real service with its stand-ins: a JWKS, a metadata server for the
/// workload, moto as STS.
pub struct Stack {
    pub metadata: MetadataServer,
    pub endpoint: String,
    pub moto: String,
    _jwks: JwksServer,
    _server: Running,
}

impl Stack {
    pub async fn start() -> Stack {
        let moto = Moto::shared().await.endpoint();
        let issuer = Issuer::new();
        let jwks = JwksServer::start(issuer.clone(), 3600).await;
        let metadata = MetadataServer::start(issuer.clone(), workload()).await;
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:0"

[google]
audiences = ["{AUDIENCE}"]
jwks_uri = "{jwks}"

[aws]
region = "us-east-1"
sts_endpoint = "{moto}"

[policy]
file = "policy.toml"

[admin]
listen = "127.0.0.1:0"

[audit]
sink = "file"
path = "/dev/null"
"#,
            jwks = jwks.uri(),
        );
        let policy = format!(
            r#"
[[binding]]
name = "workload"
service_accounts = ["{WORKLOAD_ID}"]
role_arns = ["{ROLE}"]
"#
        );
        let config = Config::from_toml_str(&config, Path::new("config.toml")).unwrap();
        let policy = PolicySnapshot::from_toml_str(&policy, Path::new("policy.toml")).unwrap();
        let server = app::start(config, policy).await.unwrap();
        let endpoint = format!("http://{}", server.addr);
        wait_serving(&endpoint).await;
        Stack {
            metadata,
            endpoint,
            moto,
            _jwks: jwks,
            _server: server,
        }
    }

    /// `process` flags for the workload's bound role.
    pub fn process_args(&self) -> Vec<String> {
        vec![
            "process".into(),
            "--endpoint".into(),
            self.endpoint.clone(),
            "--audience".into(),
            AUDIENCE.into(),
            "--role-arn".into(),
            ROLE.into(),
            "--metadata-host".into(),
            self.metadata.host(),
        ]
    }
}

/// Waits (on the health Watch stream, no polling) until the service has
/// Google's keys.
async fn wait_serving(endpoint: &str) {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut stream = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    while let Some(update) = stream.message().await.unwrap() {
        if update.status == ServingStatus::Serving as i32 {
            return;
        }
    }
    panic!("the health stream ended before SERVING");
}

/// The built shim, with an empty environment (no AWS keys, no
/// `GCE_METADATA_HOST`, no `TOKENBRIDGE_*`) but `PATH`.
pub fn shim<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(shim_path());
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

pub fn shim_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tokenbridge-cred"))
}

pub async fn output(command: &mut Command) -> Output {
    command.output().await.expect("run the command")
}

/// Asserts the shim succeeded and printed exactly the credential_process
/// JSON; returns it.
#[track_caller]
pub fn expect_credentials(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the shim failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    assert_eq!(json["Version"], 1);
    for key in [
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
    ] {
        assert!(
            json[key].as_str().is_some_and(|v| !v.is_empty()),
            "{key} missing"
        );
    }
    let expiration = json["Expiration"].as_str().unwrap();
    assert!(
        expiration.ends_with('Z') && humantime::parse_rfc3339(expiration).is_ok(),
        "Expiration {expiration:?} is not strict RFC 3339 with Z"
    );
    json
}

/// Asserts the shim failed the contract's way: non-zero exit, nothing on
/// stdout, exactly one line on stderr, which contains every needle. Returns
/// that line.
#[track_caller]
pub fn expect_failure(output: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "the shim should fail; stderr: {stderr}"
    );
    assert_eq!(
        output.stdout, b"",
        "stdout must be empty on failure; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got {stderr:?}");
    let line = lines[0];
    eprintln!("the shim said: {line}");
    assert!(line.starts_with("tokenbridge-cred: "), "{line}");
    for needle in needles {
        assert!(line.contains(needle), "{line:?} should contain {needle:?}");
    }
    line.to_owned()
}

/// A program of the project virtualenv (`$TOKENBRIDGE_VENV`, default
/// `<workspace>/.venv`); panics, never skips, when it is missing.
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("TOKENBRIDGE_VENV").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../.venv")
                .canonicalize()
                .unwrap_or_else(|_| PathBuf::from("/nonexistent/.venv"))
        },
        PathBuf::from,
    );
    let program = venv.join("bin").join(name);
    assert!(
        program.exists(),
        "{} is missing: run scripts/test (it installs the pinned moto, boto3 and awscli into \
         .venv) or set TOKENBRIDGE_VENV",
        program.display()
    );
    program
}

/// An AWS client process with a clean environment: no AWS keys, a temporary
/// HOME, this config file, every service endpoint at moto, no IMDS.
pub fn aws_client(program: &Path, home: &Path, config: &Path, moto: &str) -> Command {
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", config)
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"))
        .env("AWS_ENDPOINT_URL", moto)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// An AWS config file with one profile, `tb`, whose credential_process runs
/// the shim with `args`.
pub fn write_profile(dir: &Path, args: &[String]) -> PathBuf {
    let mut line = shim_path().display().to_string();
    for arg in args {
        assert!(
            !arg.contains(char::is_whitespace),
            "{arg:?} needs quoting in credential_process"
        );
        line.push(' ');
        line.push_str(arg);
    }
    let path = dir.join("aws-config");
    std::fs::write(
        &path,
        format!("[profile tb]\nregion = us-east-1\ncredential_process = {line}\n"),
    )
    .unwrap();
    path
}

/// Asserts `text` holds none of `secrets` and nothing shaped like a JWT
/// (every JWT starts with the base64 of `{"`: `eyJ`).
#[track_caller]
pub fn assert_no_secrets(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            secret.len() >= 8,
            "a secret to look for must be long enough"
        );
        assert!(!text.contains(secret), "a secret leaked into the output");
    }
    assert!(!text.contains("eyJ"), "a JWT leaked into the output");
}
