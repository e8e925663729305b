//! The demo: the whole exchange on one machine, with nothing from outside.
//!
//! Starts the Google stand-ins (an ID token issuer with its JWKS and a GCE
//! metadata server), moto for STS, and `tokenbridge-server serve` with a
//! generated config and `deploy/demo/policy.toml`; asks the metadata server
//! for an ID token as a workload would; calls `GetCredentials`; prints the
//! assumed role, session name and expiration (never the secrets); shows a
//! refused caller; runs the aws CLI with a profile whose `credential_process`
//! is `tokenbridge-cred`, with no AWS keys anywhere; stops everything.
//!
//! Run it with `scripts/demo`, which builds the binaries and installs moto
//! and the aws CLI.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::Parser;
use tokenbridge_proto::v1::{GetCredentialsRequest, token_exchange_client::TokenExchangeClient};
use tokenbridge_testing::{
    Issuer, JwksServer, MetadataServer, Moto, Pki, Provider, ServiceAccount, StrictSts,
};
use tonic::Request;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const AUDIENCE: &str = "https://tokenbridge.example.com";
const ROLE: &str = "arn:aws:iam::123456789012:role/RoleForAccessFromGCPTeamA";
/// The demo policy's issuer-mode role.
const ISSUER_ROLE: &str = "arn:aws:iam::123456789012:role/RoleForIssuerModeTeamA";

/// Runs the tokenbridge demo.
#[derive(Parser)]
struct Args {
    /// The `tokenbridge-server` binary to run.
    #[arg(long)]
    server_bin: PathBuf,
    /// The `tokenbridge-cred` binary the aws CLI profile runs.
    #[arg(long)]
    cred_bin: PathBuf,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");

    step(
        "starting the Google stand-ins (ID token issuer + JWKS, GCE metadata server) and moto (STS)",
    );
    let issuer = Issuer::new();
    let jwks = JwksServer::start(issuer.clone(), 3600).await;
    let vm = ServiceAccount::new(
        "112233445566778899001",
        "demo-workload@demo-project.iam.gserviceaccount.com",
    );
    let metadata = MetadataServer::start(issuer.clone(), vm.clone()).await;
    let moto = Moto::start().await;
    // moto issues credentials but checks neither tokens nor trust policies:
    // StrictSts, a stand-in written from AWS's documentation, does, in front.
    let sts = StrictSts::start(moto.endpoint()).await;
    println!("  JWKS      {}", jwks.uri());
    println!("  metadata  http://{}", metadata.host());
    println!(
        "  STS       {} (trust policies checked as AWS documents) -> {} (moto)",
        sts.endpoint(),
        moto.endpoint()
    );

    let dir = tempfile::tempdir().expect("a temporary directory");
    // Issuer mode: a signing key, and TLS for the discovery listener.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let ca = Pki::new("tokenbridge demo CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let issuer_key = dir.path().join("issuer.pem");
    std::fs::write(
        &issuer_key,
        rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .unwrap()
            .serialize_pem(),
    )
    .unwrap();
    let discovery_port = free();
    let issuer_url = format!("https://localhost:{discovery_port}");
    let issuer_host = format!("localhost:{discovery_port}");
    sts.trust_provider(Provider::google(jwks.uri()));
    sts.trust_provider(Provider {
        ca_pem: Some(ca.ca_pem()),
        ..Provider::oidc(
            issuer_url.clone(),
            format!("{issuer_url}/.well-known/jwks.json"),
            ["sts.amazonaws.com"],
        )
    });
    // The trust policies `tokenbridge-admin trust-policy` prints: Google's
    // for the pass-through role, tokenbridge's issuer for the other.
    sts.set_trust_policy(
        ROLE,
        serde_json::json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Federated": "accounts.google.com"},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {
                "accounts.google.com:aud": vm.unique_id, "accounts.google.com:oaud": AUDIENCE,
                "accounts.google.com:sub": vm.unique_id}}}]}),
    );
    sts.set_trust_policy(
        ISSUER_ROLE,
        serde_json::json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": format!("arn:aws:iam::123456789012:oidc-provider/{issuer_host}")},
            "Action": ["sts:AssumeRoleWithWebIdentity", "sts:TagSession", "sts:SetSourceIdentity"],
            "Condition": {"StringEquals": {
                format!("{issuer_host}:aud"): "sts.amazonaws.com",
                format!("{issuer_host}:sub"): vm.unique_id}}}]}),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let policy = root
        .join("deploy/demo/policy.toml")
        .canonicalize()
        .expect("deploy/demo/policy.toml");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{listen}\"\n\n[google]\naudiences = [\"{AUDIENCE}\"]\njwks_uri = \"{}\"\n\n\
             [aws]\nregion = \"us-east-1\"\nsts_endpoint = \"{}\"\n\n[policy]\nfile = \"{}\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [tls]\nlisten = \"127.0.0.1:{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n\
             [issuer]\nurl = \"{issuer_url}\"\nkey_files = [\"{}\"]\nlisten = \"127.0.0.1:{discovery_port}\"\n",
            jwks.uri(),
            sts.endpoint(),
            policy.display(),
            free(),
            cert.display(),
            key.display(),
            issuer_key.display(),
        ),
    )
    .unwrap();

    step(&format!(
        "starting tokenbridge-server on {listen} (policy: deploy/demo/policy.toml)"
    ));
    let mut server = Command::new(&args.server_bin)
        .args(["serve", "--config"])
        .arg(&config)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tokenbridge-server");
    let stderr = server.stderr.take().unwrap();
    // Pass the server's log lines through, indented.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("  [server] {line}");
        }
    });
    let channel = connect(&listen).await;
    let mut health = HealthClient::new(channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    while let Some(update) = watch.message().await.unwrap() {
        if update.status == ServingStatus::Serving as i32 {
            break;
        }
    }
    println!("  health: SERVING");

    step("the workload asks its metadata server for an ID token (format=full)");
    let token = reqwest::Client::new()
        .get(format!(
            "http://{}/computeMetadata/v1/instance/service-accounts/default/identity",
            metadata.host()
        ))
        .query(&[("audience", AUDIENCE), ("format", "full")])
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("metadata server")
        .text()
        .await
        .unwrap();
    println!(
        "  got a {}-byte ID token for {} (sub {})",
        token.len(),
        vm.email,
        vm.unique_id
    );

    step("GetCredentials: verify the token, apply the policy, AssumeRoleWithWebIdentity");
    let mut client = TokenExchangeClient::new(channel.clone());
    let mut req = Request::new(GetCredentialsRequest {
        role_arn: ROLE.into(),
        duration_seconds: 0,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let creds = client
        .get_credentials(req)
        .await
        .expect("GetCredentials")
        .into_inner();
    let expiration = creds.expiration.unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    println!("  assumed role ARN   {}", creds.assumed_role_arn);
    println!("  role session name  {}", creds.role_session_name);
    println!(
        "  expiration         {} (in {} min)",
        humantime::format_rfc3339_seconds(
            UNIX_EPOCH + Duration::from_secs(expiration.seconds.max(0) as u64)
        ),
        (expiration.seconds - now) / 60
    );
    println!("  access key ID      {}", creds.access_key_id);
    println!(
        "  secret access key  ** redacted ** ({} chars)",
        creds.secret_access_key.len()
    );
    println!(
        "  session token      ** redacted ** ({} chars)",
        creds.session_token.len()
    );

    step("issuer mode: tokenbridge signs the token STS gets (binding `demo-team-a-issuer`)");
    let mut req = Request::new(GetCredentialsRequest {
        role_arn: ISSUER_ROLE.into(),
        duration_seconds: 0,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let issued = client
        .get_credentials(req)
        .await
        .expect("GetCredentials in issuer mode")
        .into_inner();
    let seen = sts.requests().pop().expect("STS saw the call");
    println!("  assumed role ARN   {}", issued.assumed_role_arn);
    println!(
        "  STS got a token with iss {} sub {} aud {}",
        seen.claims["iss"], seen.claims["sub"], seen.claims["aud"]
    );
    println!("  session tags       {:?}", seen.tags);
    println!(
        "  source identity    {}",
        seen.source_identity.as_deref().unwrap_or("-")
    );

    step("the workload calls STS itself with its own Google token (no tokenbridge)");
    let direct = |role: &'static str| {
        let (endpoint, token) = (sts.endpoint(), token.clone());
        async move {
            let r = reqwest::Client::new()
                .post(endpoint)
                .form(&[
                    ("Action", "AssumeRoleWithWebIdentity"),
                    ("Version", "2011-06-15"),
                    ("RoleArn", role),
                    ("RoleSessionName", "walk-around"),
                    ("WebIdentityToken", token.as_str()),
                ])
                .send()
                .await
                .expect("STS");
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            let code = body
                .split("<Code>")
                .nth(1)
                .and_then(|rest| rest.split('<').next())
                .unwrap_or("none");
            (status, code.to_owned())
        }
    };
    let (status, code) = direct(ISSUER_ROLE).await;
    println!("  issuer-mode role:  HTTP {status} {code} (STS trusts only tokenbridge's issuer)");
    let (status, code) = direct(ROLE).await;
    println!(
        "  pass-through role: HTTP {status} {} (the trust policy alone decides: tokenbridge's policy is walked around; README, \"Issuer mode\")",
        if status.is_success() {
            "credentials"
        } else {
            code.as_str()
        }
    );

    step("a service account with no binding is refused");
    let stranger = ServiceAccount::new(
        "555555555555555555555",
        "stranger@demo-project.iam.gserviceaccount.com",
    );
    let mut req = Request::new(GetCredentialsRequest {
        role_arn: ROLE.into(),
        duration_seconds: 0,
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", issuer.token(&stranger, AUDIENCE))
            .parse()
            .unwrap(),
    );
    let status = client.get_credentials(req).await.expect_err("refused");
    println!("  {:?}: {}", status.code(), status.message());

    aws_cli(
        &args.cred_bin,
        &root,
        &listen,
        &metadata.host(),
        &moto.endpoint(),
    )
    .await;
    drop(sts);

    step("stopping (SIGTERM: health NOT_SERVING, in-flight calls drain)");
    drop(client);
    drop(watch);
    drop(health);
    drop(channel);
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let exit = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap()
        .unwrap();
    println!("  tokenbridge-server exited: {exit}");
    drop(moto);
    println!("\ndemo finished");
}

/// `aws sts get-caller-identity` with a profile backed by `tokenbridge-cred`,
/// as on a GCE VM: no AWS keys in the environment or in any file.
async fn aws_cli(
    cred_bin: &std::path::Path,
    root: &std::path::Path,
    listen: &str,
    metadata_host: &str,
    sts: &str,
) {
    step("the aws CLI with a tokenbridge-cred profile, and no AWS keys anywhere");
    let venv =
        std::env::var_os("TOKENBRIDGE_VENV").map_or_else(|| root.join(".venv"), PathBuf::from);
    let aws = venv.join("bin/aws");
    assert!(
        aws.exists(),
        "{} is missing: run scripts/demo",
        aws.display()
    );
    let cred_bin = cred_bin
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", cred_bin.display()));
    let home = tempfile::tempdir().expect("a temporary HOME");
    let config = home.path().join("config");
    let profile = format!(
        "[profile tokenbridge-demo]\nregion = us-east-1\ncredential_process = {} process \
         --endpoint http://{listen} --audience {AUDIENCE} --role-arn {ROLE}\n",
        cred_bin.display()
    );
    std::fs::write(&config, &profile).unwrap();
    println!("  AWS config ({}):", config.display());
    for line in profile.lines() {
        println!("    {line}");
    }
    println!("  environment: GCE_METADATA_HOST={metadata_host} AWS_ENDPOINT_URL_STS={sts} (moto)");
    println!("  no AWS_ACCESS_KEY_ID, no AWS_SECRET_ACCESS_KEY, no credentials file");
    println!("  $ aws sts get-caller-identity --profile tokenbridge-demo");
    // A clean environment: nothing AWS-related leaks in from the caller's.
    let output = tokio::process::Command::new(&aws)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home.path())
        .env("AWS_CONFIG_FILE", &config)
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.path().join("credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_STS", sts)
        .env("GCE_METADATA_HOST", metadata_host)
        .args([
            "sts",
            "get-caller-identity",
            "--profile",
            "tokenbridge-demo",
            "--output",
            "json",
        ])
        .output()
        .await
        .expect("run the aws CLI");
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!("  {line}");
    }
    assert!(
        output.status.success(),
        "the aws CLI failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn step(text: &str) {
    println!("\n==> {text}");
}

/// Connects once the server listens (it binds right after reading its config).
async fn connect(listen: &str) -> tonic::transport::Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{listen}")).unwrap();
    for _ in 0..100 {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("tokenbridge-server did not start listening on {listen}");
}
