//! The `tokenbridge-server` binary: `check`, refusing bad config, SIGTERM
//! draining, and logs at trace level that carry no secret.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokenbridge_proto::v1::{GetCredentialsRequest, token_exchange_client::TokenExchangeClient};
use tokenbridge_testing::{FakeSts, FakeStsMode, Issuer, JwksServer, Moto};
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_tokenbridge-server");

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn write_config(
    dir: &Path,
    listen: &str,
    jwks_uri: &str,
    sts_endpoint: &str,
) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            r#"[server]
listen = "{listen}"

[google]
audiences = ["{AUDIENCE}"]
jwks_uri = "{jwks_uri}"

[aws]
region = "us-east-1"
sts_endpoint = "{sts_endpoint}"

[policy]
file = "policy.toml"

[admin]
listen = "127.0.0.1:0"
"#
        ),
    )
    .unwrap();
    std::fs::write(dir.join("policy.toml"), policy_toml()).unwrap();
    path
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary runs on jemalloc with the settings `.cargo/config.toml`
/// compiles in (issue 16: two arenas, pages returned after a second), not on
/// jemalloc's defaults, whose RSS is over the 64 MiB goal. jemalloc prints
/// the options in force at exit when asked to.
#[test]
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
fn the_binary_runs_on_jemalloc_with_the_configured_settings() {
    let out = Command::new(BIN)
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stats = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    for option in [
        "opt.narenas: 2",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(
            stats.lines().any(|l| l.trim_start().starts_with(option)),
            "jemalloc does not report `{option}`; its statistics:\n{stats}"
        );
    }
}

#[test]
fn check_accepts_the_sample_config() {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(workspace_root().join("deploy/config.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok (2 bindings"), "{stdout}");
}

/// Every config that ships in `deploy/` (the GKE base and overlays, Cloud
/// Run) is one the server accepts, with the policy beside it.
#[test]
fn check_accepts_every_deployment_config() {
    for config in [
        "deploy/gke/base/config.toml",
        "deploy/gke/overlays/dev/config.toml",
        "deploy/gke/overlays/prod/config.toml",
        "deploy/cloudrun/config/config.toml",
    ] {
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(workspace_root().join(config))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{config}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(": ok ("), "{config}: {stdout}");
    }
}

#[test]
fn check_reports_every_config_and_policy_problem_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"localhost\"\n\n[google]\naudiences = []\n\n[aws]\nregion = \"us-east-1\"\nsts_endpoint = \"http://sts.example.com\"\n\n[policy]\nfile = \"policy.toml\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    let file = config.display().to_string();
    for expected in [
        format!("{file}:2: server.listen"),
        format!("{file}:5: google.audiences"),
        format!("{file}:9: aws.sts_endpoint"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in\n{stderr}"
        );
    }

    // A good config naming a broken policy: the policy's problems, with lines.
    write_config(
        dir.path(),
        "127.0.0.1:50051",
        "http://127.0.0.1:1/certs",
        "http://127.0.0.1:1",
    );
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[binding]]\nname = \"a\"\nservice_accounts = [\"bob\"]\nrole_arns = [\"arn:aws:iam::1:role/x\"]\n\n[[binding]]\nname = \"a\"\nservice_accounts = [\"1\"]\nrole_arns = [\"arn:aws:iam::111122223333:role/x\"]\nmax_duration_seconds = 99999\nsurprise = true\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    let file = policy.display().to_string();
    // `surprise` is an unknown key: a shape error, reported alone with its line.
    assert!(
        stderr.contains(&format!("{file}:11: invalid TOML")),
        "{stderr}"
    );
    assert!(stderr.contains("surprise"), "{stderr}");

    std::fs::write(
        &policy,
        "[[binding]]\nname = \"a\"\nservice_accounts = [\"bob\"]\nrole_arns = [\"arn:aws:iam::1:role/x\"]\n\n[[binding]]\nname = \"a\"\nservice_accounts = [\"1\"]\nrole_arns = [\"arn:aws:iam::111122223333:role/x\"]\nmax_duration_seconds = 99999\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for expected in [
        format!("{file}:3: binding `a`: field service_accounts[0]: `bob` is neither"),
        format!(
            "{file}:4: binding `a`: field role_arns[0]: `arn:aws:iam::1:role/x` is not an IAM role ARN"
        ),
        format!("{file}:7: binding `a`: field name: `a` is already used by binding #1"),
        format!("{file}:10: binding `a`: field max_duration_seconds: 99999 is outside 900..=43200"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in\n{stderr}"
        );
    }
    assert!(stderr.contains("4 problem(s) found"), "{stderr}");
}

#[test]
fn serve_refuses_bad_config_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        "http://127.0.0.1:1/certs",
        "http://127.0.0.1:1",
    );
    std::fs::write(
        dir.path().join("policy.toml"),
        "[[binding]]\nname = \"x\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("policy.toml:1:"), "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
}

/// The server binary running in the background, its stderr collected.
pub(crate) struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
    ready: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Server {
    pub(crate) fn spawn(config: &Path, addr: String, rust_log: &str) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, ready) = tokio::sync::mpsc::unbounded_channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                sink.lock().unwrap().push(line);
            }
        });
        Server {
            child,
            addr,
            log,
            ready,
        }
    }

    /// Waits for the "serving" log line, then for health SERVING.
    pub(crate) async fn wait_serving(&mut self) -> Channel {
        let wait = async {
            while let Some(line) = self.ready.recv().await {
                if line.contains("tokenbridge serving") {
                    return;
                }
            }
            panic!(
                "the server exited before serving: {:?}",
                self.log.lock().unwrap()
            );
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .expect("server start");
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        wait_for_health(channel.clone(), ServingStatus::Serving).await;
        channel
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for a log line containing `needle`.
    async fn wait_log(&mut self, needle: &str) {
        let wait = async {
            while let Some(line) = self.ready.recv().await {
                if line.contains(needle) {
                    return;
                }
            }
            panic!(
                "the server exited before logging {needle:?}: {:?}",
                self.log.lock().unwrap()
            );
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .expect("log line");
    }

    pub(crate) fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub(crate) async fn wait_exit(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::task::spawn_blocking(move || {
            let status = self.child.wait().unwrap();
            (status, self)
        })
        .await
        .unwrap();
        let (status, me) = status;
        // The reader thread ends at EOF; the log is complete once it has.
        let log = me.log.lock().unwrap().join("\n");
        (status, log)
    }
}

pub(crate) fn request(token: &str, role: &str) -> Request<GetCredentialsRequest> {
    let mut req = Request::new(GetCredentialsRequest {
        role_arn: role.into(),
        duration_seconds: 0,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

#[tokio::test]
async fn sigterm_turns_health_not_serving_and_drains_in_flight_calls() {
    let issuer = Issuer::new();
    let jwks = JwksServer::start(issuer.clone(), 3600).await;
    let sts = FakeSts::start(FakeStsMode::Gated).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = write_config(dir.path(), &addr, &jwks.uri(), &sts.endpoint());
    let mut server = Server::spawn(&config, addr, "info");
    let channel = server.wait_serving().await;

    // A call in flight, held inside STS.
    let mut client = TokenExchangeClient::new(channel.clone());
    let token = issuer.token(&workload(), AUDIENCE);
    let in_flight =
        tokio::spawn(async move { client.get_credentials(request(&token, ROLE_A)).await });
    sts.wait_for_requests(1).await;

    // A watcher that never lets go: it must not hold the shutdown open.
    let mut watcher = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watcher.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    server.sigterm();
    let update = watcher.message().await.unwrap().unwrap();
    assert_eq!(update.status, ServingStatus::NotServing as i32);
    assert!(
        watcher.message().await.unwrap().is_none(),
        "the watch stream ends on shutdown"
    );
    assert!(!in_flight.is_finished());

    sts.release();
    let creds = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes")
        .into_inner();
    assert_eq!(creds.role_session_name, workload().unique_id);
    drop(channel);
    let (status, log) = server.wait_exit().await;
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("tokenbridge stopped"), "{log}");
    assert!(!log.contains("drain timeout reached"), "{log}");
}

#[tokio::test]
async fn trace_logs_carry_no_token_secret_key_or_session_token() {
    let issuer = Issuer::new();
    let jwks = JwksServer::start(issuer.clone(), 3600).await;
    let moto = Moto::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = write_config(dir.path(), &addr, &jwks.uri(), &moto.endpoint());
    let mut server = Server::spawn(&config, addr, "trace");
    let channel = server.wait_serving().await;
    let mut client = TokenExchangeClient::new(channel.clone());

    let token = issuer.token(&workload(), AUDIENCE);
    let creds = client
        .get_credentials(request(&token, ROLE_A))
        .await
        .unwrap()
        .into_inner();
    // Failures: a bad signature, a refused role, an unknown kid.
    let (message, _) = token.rsplit_once('.').unwrap();
    let forged = format!(
        "{message}.{}",
        issuer
            .token(&stranger(), AUDIENCE)
            .rsplit_once('.')
            .unwrap()
            .1
    );
    let denied = issuer.token(&stranger(), AUDIENCE);
    let other_issuer = Issuer::new();
    let unknown_kid = other_issuer.token(&workload(), AUDIENCE);
    for (bad, code) in [
        (&forged, Code::Unauthenticated),
        (&denied, Code::PermissionDenied),
        (&unknown_kid, Code::Unauthenticated),
    ] {
        let status = client
            .get_credentials(request(bad, ROLE_A))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{}", status.message());
    }
    drop(client);
    drop(channel);
    server.sigterm();
    let (status, log) = server.wait_exit().await;
    assert!(status.success(), "{status:?}");

    // The log is not empty: it recorded both outcomes at trace level.
    assert!(log.contains("credentials issued"), "{log}");
    assert!(log.contains("exchange refused"), "{log}");
    assert!(log.contains("TRACE"), "trace level was on");
    for t in [&token, &forged, &denied, &unknown_kid] {
        assert_no_token(&log, t);
    }
    assert!(
        !log.contains(&creds.secret_access_key),
        "the secret access key leaked"
    );
    assert!(
        !log.contains(&creds.session_token),
        "the session token leaked"
    );
    assert!(
        log.contains(&creds.access_key_id),
        "the access key ID is logged (it is not secret)"
    );
}

#[tokio::test]
async fn sighup_reloads_the_policy_and_refuses_a_broken_one() {
    let issuer = Issuer::new();
    let jwks = JwksServer::start(issuer.clone(), 3600).await;
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = write_config(dir.path(), &addr, &jwks.uri(), &sts.endpoint());
    let mut server = Server::spawn(&config, addr, "info");
    let channel = server.wait_serving().await;
    let mut client = TokenExchangeClient::new(channel.clone());
    let token = issuer.token(&workload(), AUDIENCE);
    client
        .get_credentials(request(&token, ROLE_A))
        .await
        .unwrap();

    // Drop the binding that grants ROLE_A, reload: denied at once (the
    // credentials are cached, the decision is not).
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        policy_toml().replace("[\"112233445566778899001\"]", "[\"444444444444444444444\"]"),
    )
    .unwrap();
    server.hangup();
    server.wait_log("policy reloaded").await;
    let status = client
        .get_credentials(request(&token, ROLE_A))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );

    // A broken file is refused whole; the last good policy stays.
    std::fs::write(&policy, "[[binding]]\nname = 7\n").unwrap();
    server.hangup();
    server.wait_log("policy reload refused").await;
    let status = client
        .get_credentials(request(&token, ROLE_A))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    client
        .get_credentials(request(&token, ROLE_B))
        .await
        .unwrap();
    drop(client);
    drop(channel);
    server.sigterm();
    let (status, _) = server.wait_exit().await;
    assert!(status.success());
}

#[tokio::test]
async fn sigkill_mid_request_is_unavailable_and_a_restart_serves_again() {
    use std::os::unix::process::ExitStatusExt as _;
    use tokenbridge_client::{
        Client, Config as ClientConfig, CredentialsRequest, IdToken, RetryPolicy,
    };

    let issuer = Issuer::new();
    let jwks = JwksServer::start(issuer.clone(), 3600).await;
    let sts = FakeSts::start(FakeStsMode::Gated).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = write_config(dir.path(), &addr, &jwks.uri(), &sts.endpoint());
    let mut server = Server::spawn(&config, addr.clone(), "info");
    server.wait_serving().await;
    // The real client crate, retries off: what a caller sees on each try.
    let client =
        Client::new(&ClientConfig::new(format!("http://{addr}")).with_retry(RetryPolicy::none()))
            .unwrap();
    let token = IdToken::parse(issuer.token(&workload(), AUDIENCE)).unwrap();
    let request = CredentialsRequest::role(ROLE_A);

    // A call held inside STS when the process dies.
    let in_flight = {
        let (client, token, request) = (client.clone(), token.clone(), request.clone());
        tokio::spawn(async move { client.get_credentials(&token, &request).await })
    };
    within(Duration::from_secs(60), sts.wait_for_requests(1)).await;
    let status = Command::new("kill")
        .args(["-KILL", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let err = within(Duration::from_secs(60), in_flight)
        .await
        .unwrap()
        .expect_err("the process died mid-call");
    assert!(err.is_unavailable(), "{err:?}");
    let (exit, _) = server.wait_exit().await;
    assert_eq!(exit.signal(), Some(9), "{exit:?}");
    // While it is down, calls fail fast as UNAVAILABLE (nothing listens).
    let err = within(
        Duration::from_secs(60),
        client.get_credentials(&token, &request),
    )
    .await
    .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");

    // Restarted on the same address, it serves the same client again.
    sts.set_mode(FakeStsMode::Success);
    let mut server = Server::spawn(&config, addr, "info");
    let channel = server.wait_serving().await;
    let creds = within(
        Duration::from_secs(60),
        client.get_credentials(&token, &request),
    )
    .await
    .unwrap();
    assert!(creds.access_key_id.starts_with("ASIA"));
    drop((client, channel));
    server.sigterm();
    let (status, log) = server.wait_exit().await;
    assert!(status.success(), "{status:?}\n{log}");
}

#[test]
fn check_reports_unusable_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "127.0.0.1:50051",
        "http://127.0.0.1:1/certs",
        "http://127.0.0.1:1",
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[tls]\nlisten = \"127.0.0.1:50443\"\ncert_file = \"tls/cert.pem\"\nkey_file = \"tls/key.pem\"\n",
    );
    std::fs::write(&config, &text).unwrap();
    let check = || {
        Command::new(BIN)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("cannot read the certificate file") && stderr.contains("tls/cert.pem"),
        "{stderr}"
    );

    // A certificate with another certificate's key: refused too.
    let ca = tokenbridge_testing::Pki::new("check CA");
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/cert.pem"), ca.server().cert).unwrap();
    std::fs::write(dir.path().join("tls/key.pem"), ca.server().key).unwrap();
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("cannot be used together"), "{stderr}");

    // The matching pair: ok.
    let pair = ca.server();
    std::fs::write(dir.path().join("tls/cert.pem"), &pair.cert).unwrap();
    std::fs::write(dir.path().join("tls/key.pem"), &pair.key).unwrap();
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rsa_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .unwrap()
            .serialize_pem(),
    )
    .unwrap();
    path
}

#[test]
fn check_reports_issuer_problems_with_file_and_line_and_warns_about_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "127.0.0.1:0",
        "http://127.0.0.1:1/certs",
        "http://127.0.0.1:1",
    );
    rsa_key(dir.path(), "good.pem");
    std::fs::write(
        dir.path().join("weak.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let base = std::fs::read_to_string(&config).unwrap();
    let bad = format!(
        "{base}\n[issuer]\nurl = \"http://issuer.example.com\"\nkey_files = [\"good.pem\", \"weak.pem\", \"missing.pem\"]\nactive_key_file = \"other.pem\"\ntoken_lifetime_seconds = 5\nlisten = \"0.0.0.0:8443\"\n"
    );
    std::fs::write(&config, &bad).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let file = config.display().to_string();
    for (line, needle) in [
        (
            19,
            "issuer.url: `http://issuer.example.com` is not an https:// URL",
        ),
        (
            21,
            "issuer.active_key_file: `other.pem` is not one of issuer.key_files",
        ),
        (22, "issuer.token_lifetime_seconds: 5 is outside 60..=900"),
        (23, "issuer.listen: needs the [tls] section"),
    ] {
        assert!(
            err.contains(&format!("{file}:{line}: {needle}")),
            "line {line}: {needle}\n{err}"
        );
    }
    assert!(err.contains("weak.pem`: not a PEM private key"), "{err}");
    // A real RSA key of 1024 bits (a test fixture, never used elsewhere).
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/weak-rsa-1024.pem"),
        dir.path().join("weak.pem"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let again = String::from_utf8_lossy(&out.stderr);
    assert!(
        again.contains(
            "weak.pem`: not a PEM private key tokenbridge can sign with: RSA of at least 2048 bits"
        ),
        "{again}"
    );
    assert!(
        err.contains("missing.pem`: cannot read the issuer key"),
        "{err}"
    );
    assert!(!err.contains("good.pem"), "{err}");

    // A good [issuer]; a pass-through binding with a session policy is
    // warned about, and an issuer-mode binding is not.
    std::fs::write(
        &config,
        format!(
            "{base}\n[issuer]\nurl = \"https://issuer.example.com\"\nkey_files = [\"good.pem\"]\n"
        ),
    )
    .unwrap();
    let mut policy = std::fs::read_to_string(dir.path().join("policy.toml")).unwrap();
    policy.push_str(
        "\n[[binding]]\nname = \"scoped\"\nservice_accounts = [\"123\"]\nrole_arns = [\"arn:aws:iam::123456789012:role/S\"]\nsession_policy = '{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"s3:GetObject\",\"Resource\":\"*\"}]}'\n\n[[binding]]\nname = \"issued\"\nservice_accounts = [\"124\"]\nrole_arns = [\"arn:aws:iam::123456789012:role/S\"]\nissuer = true\nsession_policy = '{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"s3:GetObject\",\"Resource\":\"*\"}]}'\nsession_tags = { team = \"a\" }\n",
    );
    std::fs::write(dir.path().join("policy.toml"), &policy).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("binding `scoped` is in pass-through mode: its session policies"),
        "{err}"
    );
    assert!(!err.contains("binding `issued`"), "{err}");

    // Without [issuer], an issuer-mode binding is a problem, not a fallback.
    std::fs::write(&config, &base).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("binding `issued`: needs issuer mode"), "{err}");
}

#[test]
fn check_refuses_a_remote_store_that_does_not_verify_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let base = "[google]\naudiences = [\"a\"]\n\n[aws]\nregion = \"us-east-1\"\n\n[store]\n";
    let check = |store: &str| {
        std::fs::write(&config, format!("{base}{store}")).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check("url = \"postgres://tb:s3cret@db.internal:5432/tb?sslmode=require\"\n");
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains(":8: store.url: host `db.internal` is not loopback"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "a password was echoed: {err}");
    for ok in [
        "url = \"postgres://tb@db.internal/tb?sslmode=verify-full\"\n",
        "url = \"postgres://tb@127.0.0.1:5432/tb\"\n",
        "url = \"postgres://tb@localhost/tb\"\n",
        "url = \"postgres://tb@/tb?host=/var/run/postgresql\"\n",
        "url = \"postgres://tb@db.internal/tb\"\nallow_unverified_tls = true\n",
    ] {
        let (code, err) = check(ok);
        assert_eq!(code, Some(0), "{ok}: {err}");
    }
}
