//! Metrics, probes and the audit log of a service started in-process: the
//! admin listener scraped and parsed with a Prometheus text-format parser
//! after known traffic, the probes through start-up and shutdown, and the
//! audit file parsed line by line, including a sink that cannot be written.

use std::{net::SocketAddr, path::Path, time::Duration};

use prometheus_parse::{Scrape, Value};
use tokenbridge_server::{
    app::AppError,
    observability::audit::{AuditConfig, AuditSink},
    transport::limits::{LimitsConfig, Rate},
};
use tokenbridge_testing::{
    FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, FAKE_SESSION_TOKEN, FakeSts, FakeStsMode,
    JwksFault, JwksServer,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// `/metrics`, parsed by a Prometheus text-format parser.
async fn scrape(env: &Env) -> Scrape {
    let addr = env.server.as_ref().unwrap().admin_addr.unwrap();
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the one sample of `name` with exactly these labels; 0 if
/// there is none (a counter never incremented); a histogram's count.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .collect();
    assert!(matching.len() <= 1, "{name} {labels:?}: {matching:?}");
    match matching.first().map(|s| &s.value) {
        None => 0.0,
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        Some(Value::Histogram(buckets)) => buckets
            .iter()
            .find(|b| b.less_than == f64::INFINITY)
            .map(|b| b.count)
            .unwrap(),
        Some(other) => panic!("{name}: unexpected {other:?}"),
    }
}

fn exchanges(scrape: &Scrape, outcome: &str, code: &str) -> f64 {
    value(
        scrape,
        "tokenbridge_exchanges_total",
        &[("outcome", outcome), ("code", code)],
    )
}

/// Issue 17: the cache gauge read 0 right after credentials were cached
/// (moka counts inserts lazily). Black box: one exchange, one scrape.
#[tokio::test]
async fn the_cache_gauge_counts_credentials_as_soon_as_they_are_cached() {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        ..Options::default()
    })
    .await;
    assert_eq!(
        value(&scrape(&env).await, "tokenbridge_cache_entries", &[]),
        0.0
    );
    env.call(&env.token(&workload()), ROLE_A, 0).await.unwrap();
    assert_eq!(
        value(&scrape(&env).await, "tokenbridge_cache_entries", &[]),
        1.0
    );
    // A hit adds nothing; another role is another entry.
    env.call(&env.token(&workload()), ROLE_A, 0).await.unwrap();
    env.call(&env.token(&workload()), ROLE_B, 0).await.unwrap();
    assert_eq!(
        value(&scrape(&env).await, "tokenbridge_cache_entries", &[]),
        2.0
    );
    env.stop().await;
}

#[tokio::test]
async fn metrics_count_known_traffic() {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        limits: LimitsConfig {
            per_subject: Rate::new(1, 3),
            ..LimitsConfig::unlimited()
        },
        ..Options::default()
    })
    .await;
    let token = env.token(&workload());

    // Calls for one role until the per-subject limit (burst 3, then 1/s)
    // refuses one: one STS call, then cache hits.
    let mut issued = 0.0;
    loop {
        match env.call(&token, ROLE_A, 0).await {
            Ok(_) => issued += 1.0,
            Err(limited) => {
                assert_eq!(limited.code(), Code::ResourceExhausted);
                break;
            }
        }
        assert!(issued < 100.0, "the per-subject limit never refused");
    }
    assert!(issued >= 3.0);
    // A policy denial, a bad token, no token.
    let stranger = env.token(&stranger());
    assert_eq!(
        env.call(&stranger, ROLE_A, 0).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let mut claims = env.claims(&single());
    claims.insert("aud".into(), "https://someone-else.example".into());
    let wrong_audience = env.issuer.sign(&claims);
    assert_eq!(
        env.call(&wrong_audience, ROLE_C, 0)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        env.call_with_auth(None, ROLE_A, 0)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    // STS throttling a cache miss (the SDK's own retries included: one call).
    sts.set_mode(FakeStsMode::Error {
        status: 400,
        code: "Throttling".into(),
        message: "Rate exceeded".into(),
    });
    let single_token = env.token(&single());
    assert_eq!(
        env.call(&single_token, ROLE_C, 0).await.unwrap_err().code(),
        Code::Unavailable
    );
    env.server.as_ref().unwrap().exchange().cache().sync().await;

    let m = scrape(&env).await;
    assert_eq!(exchanges(&m, "issued", "OK"), issued);
    assert_eq!(exchanges(&m, "rate_limited", "RESOURCE_EXHAUSTED"), 1.0);
    assert_eq!(exchanges(&m, "permission_denied", "PERMISSION_DENIED"), 1.0);
    assert_eq!(exchanges(&m, "invalid_token", "UNAUTHENTICATED"), 1.0);
    assert_eq!(exchanges(&m, "missing_token", "UNAUTHENTICATED"), 1.0);
    assert_eq!(exchanges(&m, "sts_throttled", "UNAVAILABLE"), 1.0);
    let total: f64 = m
        .samples
        .iter()
        .filter(|s| s.metric == "tokenbridge_exchanges_total")
        .map(|s| match s.value {
            Value::Counter(v) => v,
            _ => panic!("{s:?}"),
        })
        .sum();
    assert_eq!(total, issued + 5.0, "every call counted once");
    assert_eq!(
        value(
            &m,
            "tokenbridge_exchange_duration_seconds",
            &[("code", "OK")]
        ),
        issued
    );
    assert_eq!(
        value(
            &m,
            "tokenbridge_exchange_duration_seconds",
            &[("code", "UNAUTHENTICATED")]
        ),
        2.0
    );

    assert_eq!(
        value(&m, "tokenbridge_cache_lookups_total", &[("result", "miss")]),
        2.0
    );
    assert_eq!(
        value(&m, "tokenbridge_cache_lookups_total", &[("result", "hit")]),
        issued - 1.0
    );
    assert_eq!(value(&m, "tokenbridge_cache_entries", &[]), 1.0);
    let sts_ok = [("region", "us-east-1"), ("outcome", "ok")];
    let sts_throttled = [("region", "us-east-1"), ("outcome", "throttled")];
    assert_eq!(value(&m, "tokenbridge_sts_requests_total", &sts_ok), 1.0);
    assert_eq!(
        value(&m, "tokenbridge_sts_requests_total", &sts_throttled),
        1.0
    );
    assert_eq!(
        value(&m, "tokenbridge_sts_request_duration_seconds", &sts_ok),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "tokenbridge_rate_limited_total",
            &[("limit", "subject")]
        ),
        1.0
    );
    assert_eq!(
        value(&m, "tokenbridge_jwks_fetches_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        value(&m, "tokenbridge_jwks_fetches_total", &[("result", "error")]),
        0.0
    );
    let age = value(&m, "tokenbridge_jwks_key_age_seconds", &[]);
    assert!((0.0..3600.0).contains(&age), "{age}");
    assert!(
        m.samples
            .iter()
            .any(|s| s.metric == "tokenbridge_jwks_key_age_seconds"),
        "the key age is reported once keys are loaded"
    );
    assert_eq!(value(&m, "tokenbridge_jwks_keys_stale", &[]), 0.0);
    // Every call but the rate-limited one went to the audit log: issued
    // ones written before the answer, refusals written or queued (a file
    // sink is written on a blocking thread, and no refusal waits for it).
    let audited = |result| value(&m, "tokenbridge_audit_records_total", &[("result", result)]);
    assert_eq!(audited("written") + audited("queued"), issued + 4.0);
    assert!(audited("written") >= issued);

    // No label carries an identity or a role.
    for s in &m.samples {
        for (k, v) in s.labels.iter() {
            for forbidden in [
                workload().unique_id.as_str(),
                workload().email.as_str(),
                ROLE_A,
                ROLE_C,
                "arn:aws",
            ] {
                assert!(!v.contains(forbidden), "{}{{{k}={v}}}", s.metric);
            }
        }
    }
    env.stop().await;
}

#[tokio::test]
async fn probes_follow_the_keys_and_the_shutdown() {
    let issuer = tokenbridge_testing::Issuer::new();
    let jwks = JwksServer::start(issuer.clone(), 3600).await;
    jwks.set_fault(Some(JwksFault::Status(503)));
    let sts = FakeSts::start(FakeStsMode::Gated).await;
    let mut env = Env::start_on(
        issuer,
        jwks,
        Options {
            sts_endpoint: Some(sts.endpoint()),
            wait_ready: false,
            ..Options::default()
        },
    )
    .await;
    let admin = env.server.as_ref().unwrap().admin_addr.unwrap();
    assert_eq!(get(admin, "/healthz").await, (200, "ok\n".into()));
    let (status, body) = get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("signing keys"), "{body}");
    // The failed fetch is counted (scraped again until it is: a hang guard,
    // the fetch runs in the background).
    within(Duration::from_secs(30), async {
        while value(
            &scrape(&env).await,
            "tokenbridge_jwks_fetches_total",
            &[("result", "error")],
        ) < 1.0
        {
            env.jwks.wait_for_fetches(1).await;
        }
    })
    .await;

    env.jwks.set_fault(None);
    wait_for_health(env.channel.clone(), ServingStatus::Serving).await;
    assert_eq!(get(admin, "/readyz").await, (200, "ready\n".into()));

    // A call in flight holds the drain open; meanwhile the pod is not ready.
    let token = env.token(&workload());
    let client = env.client.clone();
    let in_flight = tokio::spawn(async move {
        let mut client = client;
        let mut req = tonic::Request::new(tokenbridge_proto::v1::GetCredentialsRequest {
            role_arn: ROLE_A.into(),
            duration_seconds: 0,
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        client.get_credentials(req).await
    });
    sts.wait_for_requests(1).await;
    let mut watch = tonic_health::pb::health_client::HealthClient::new(env.channel.clone())
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let serving = ServingStatus::Serving as i32;
    assert_eq!(watch.message().await.unwrap().unwrap().status, serving);
    let server = env.server.take().unwrap();
    let stopping = tokio::spawn(server.stop());
    let update = within(Duration::from_secs(30), watch.message()).await;
    assert_eq!(
        update.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    let (status, body) = get(admin, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready: shutting down\n"));
    assert_eq!(get(admin, "/healthz").await.0, 200);

    sts.release();
    assert!(
        within(Duration::from_secs(30), in_flight)
            .await
            .unwrap()
            .is_ok()
    );
    within(Duration::from_secs(30), stopping)
        .await
        .unwrap()
        .unwrap();
    assert!(
        reqwest::get(format!("http://{admin}/healthz"))
            .await
            .is_err(),
        "the admin listener closes with the service"
    );
}

fn file_audit(path: &Path) -> AuditConfig {
    AuditConfig {
        sink: AuditSink::File(path.to_path_buf()),
        gcp_project_id: Some("audit-test-project".into()),
    }
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test]
async fn the_audit_log_has_one_line_per_decision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        audit: file_audit(&path),
        ..Options::default()
    })
    .await;
    let sa = workload();
    let token = env.token(&sa);

    // Issued, with the caller's trace context.
    let mut req = tonic::Request::new(tokenbridge_proto::v1::GetCredentialsRequest {
        role_arn: ROLE_A.into(),
        duration_seconds: 3600,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN}-01").parse().unwrap(),
    );
    let creds = env
        .client
        .clone()
        .get_credentials(req)
        .await
        .unwrap()
        .into_inner();
    // Denied by the policy; refused verification; over a limit (not audited).
    let stranger_token = env.token(&stranger());
    env.call(&stranger_token, ROLE_B, 0).await.unwrap_err();
    let mut claims = env.claims(&sa);
    claims.insert("exp".into(), (now() - 600).into());
    claims.insert("iat".into(), (now() - 4000).into());
    let expired = env.issuer.sign(&claims);
    let refused = env.call(&expired, ROLE_A, 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    env.call_with_auth(Some(&format!("Bearer {token}")), ROLE_A, 10)
        .await
        .unwrap_err();

    // Refusals are written without the call waiting; stopping the server
    // lets every queued record land.
    env.stop().await;
    let lines = audit_lines(&path);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for line in &lines {
        assert_eq!(
            line["logging.googleapis.com/labels"]["log"],
            "tokenbridge-audit"
        );
        assert_eq!(line["event"], "tokenbridge.exchange");
        assert!(
            humantime::parse_rfc3339(line["time"].as_str().unwrap()).is_ok(),
            "{line}"
        );
        assert!(line["elapsed_ms"].as_f64().unwrap() >= 0.0);
        assert!(
            line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
    }

    let issued = &lines[0];
    assert_eq!(issued["severity"], "INFO");
    assert_eq!(issued["message"], "credentials issued");
    assert_eq!(issued["decision"], "allow");
    assert_eq!(issued["code"], "OK");
    assert_eq!(issued["outcome"], "issued");
    assert_eq!(issued["sub"], sa.unique_id.as_str());
    assert_eq!(issued["email"], sa.email.as_str());
    assert_eq!(issued["email_verified"], true);
    assert_eq!(issued["gce_project_id"], sa.project_id.as_str());
    assert_eq!(issued["gce_instance_id"], sa.instance_id.as_str());
    assert_eq!(issued["gce_instance_name"], sa.instance_name.as_str());
    assert_eq!(issued["gce_zone"], sa.zone.as_str());
    assert_eq!(issued["requested_role_arn"], ROLE_A);
    assert_eq!(issued["requested_duration_seconds"], 3600);
    assert_eq!(issued["role_arn"], ROLE_A);
    assert_eq!(issued["bindings"], serde_json::json!(["by-id"]));
    assert_eq!(issued["duration_seconds"], 3600);
    assert_eq!(issued["role_session_name"], sa.unique_id.as_str());
    assert_eq!(issued["access_key_id"], FAKE_ACCESS_KEY_ID);
    assert_eq!(issued["assumed_role_arn"], creds.assumed_role_arn.as_str());
    assert!(
        !issued["sts_request_id"].as_str().unwrap().is_empty(),
        "{issued}"
    );
    assert!(issued["expiration"].as_str().unwrap().ends_with('Z'));
    assert_eq!(issued["trace_id"], TRACE_ID);
    assert_eq!(
        issued["logging.googleapis.com/trace"],
        format!("projects/audit-test-project/traces/{TRACE_ID}")
    );
    assert_eq!(issued["logging.googleapis.com/trace_sampled"], true);

    let denied = &lines[1];
    assert_eq!(denied["severity"], "WARNING");
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["code"], "PERMISSION_DENIED");
    assert_eq!(denied["outcome"], "permission_denied");
    assert_eq!(denied["sub"], stranger().unique_id.as_str());
    assert_eq!(denied["requested_role_arn"], ROLE_B);
    assert_eq!(denied["bindings"], serde_json::json!([]));
    assert!(
        denied["reason"]
            .as_str()
            .unwrap()
            .starts_with("no binding grants"),
        "{denied}"
    );
    for absent in ["role_arn", "access_key_id", "sts_request_id", "trace_id"] {
        assert!(denied.get(absent).is_none(), "{absent} in {denied}");
    }

    let unverified = &lines[2];
    assert_eq!(unverified["decision"], "deny");
    assert_eq!(unverified["code"], "UNAUTHENTICATED");
    assert_eq!(unverified["outcome"], "invalid_token");
    assert_eq!(unverified["reason"], "token expired");
    assert!(unverified.get("sub").is_none(), "{unverified}");

    let bad_argument = &lines[3];
    assert_eq!(bad_argument["code"], "INVALID_ARGUMENT");
    assert_eq!(bad_argument["sub"], sa.unique_id.as_str());
    assert_eq!(bad_argument["requested_duration_seconds"], 10);

    // Never a secret.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_no_token(&text, &token);
    assert_no_token(&text, &expired);
    for secret in [
        FAKE_SECRET_ACCESS_KEY,
        FAKE_SESSION_TOKEN,
        creds.secret_access_key.as_str(),
        creds.session_token.as_str(),
    ] {
        assert!(!text.contains(secret), "a secret in the audit log");
    }
}

#[tokio::test]
async fn the_audit_log_leaves_out_refusals_by_rate_limits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        audit: file_audit(&path),
        limits: LimitsConfig {
            per_subject: Rate::new(1, 1),
            ..LimitsConfig::unlimited()
        },
        ..Options::default()
    })
    .await;
    let token = env.token(&workload());
    let (mut issued, mut refused) = (0, 0);
    while refused < 3 {
        match env.call(&token, ROLE_A, 0).await {
            Ok(_) => issued += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                refused += 1;
            }
        }
        assert!(issued < 100, "the per-subject limit never refused");
    }
    let lines = audit_lines(&path);
    assert_eq!(lines.len(), issued, "{lines:#?}");
    assert!(lines.iter().all(|l| l["decision"] == "allow"), "{lines:#?}");
    env.stop().await;
}

#[tokio::test]
async fn an_unwritable_audit_log_fails_exchanges_closed() {
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        // Every write fails with ENOSPC.
        audit: file_audit(Path::new("/dev/full")),
        ..Options::default()
    })
    .await;
    let token = env.token(&workload());
    let status = env.call(&token, ROLE_A, 0).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status.message().contains("audit log cannot be written"),
        "{}",
        status.message()
    );
    assert!(retry_delay(&status).is_some(), "UNAVAILABLE with RetryInfo");
    assert_eq!(
        sts.request_count(),
        1,
        "STS answered; the credentials were withheld"
    );
    // A refusal keeps its own answer (issue 15: refusals never wait on the
    // sink, so a failing or slow sink cannot turn them into load).
    let stranger_token = env.token(&stranger());
    let status = env.call(&stranger_token, ROLE_A, 0).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let m = scrape(&env).await;
    assert_eq!(exchanges(&m, "audit_unavailable", "UNAVAILABLE"), 1.0);
    assert_eq!(exchanges(&m, "permission_denied", "PERMISSION_DENIED"), 1.0);
    assert_eq!(exchanges(&m, "issued", "OK"), 0.0);
    assert_eq!(
        value(
            &m,
            "tokenbridge_audit_records_total",
            &[("result", "failed")]
        ),
        1.0
    );
    env.stop().await;
}

#[tokio::test]
async fn an_audit_file_that_cannot_be_opened_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Options {
        audit: file_audit(&dir.path().join("missing/dir/audit.jsonl")),
        ..Options::default()
    };
    opts.sts_endpoint = Some("http://127.0.0.1:1".into());
    let jwks_uri = "http://127.0.0.1:1/certs".to_string();
    let cfg = config(jwks_uri, "http://127.0.0.1:1".into(), &opts);
    let policy =
        tokenbridge_server::PolicySnapshot::from_toml_str(&opts.policy, "policy.toml".as_ref())
            .unwrap();
    match tokenbridge_server::app::start(cfg, policy).await {
        Err(AppError::Audit(e)) => {
            assert!(e.to_string().contains("missing/dir/audit.jsonl"), "{e}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("started with an audit log it cannot open"),
    }
}

/// Issue 15, item 5: a flood of garbage tokens against an audit sink whose
/// reader has stopped (a pipe nobody drains) is answered at once, each
/// with its own refusal, and an honest caller is still served once the
/// sink moves: only issued credentials wait for their record. What could
/// not be recorded one by one is counted in a summary line, so every
/// refusal is on record either way.
#[tokio::test]
async fn a_flood_of_refusals_against_a_stalled_audit_sink_does_not_starve_honest_calls() {
    use std::io::BufRead as _;
    // Enough refusal lines (each over 300 bytes) to fill the pipe even at
    // the 1 MiB the server asks for.
    const FLOOD: usize = 5000;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audit.pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reader_path = fifo.clone();
    // The pipe's reader: opened with the server's end, then idle until told.
    std::thread::spawn(move || {
        let file = std::fs::File::open(&reader_path).unwrap();
        let _ = go_rx.recv();
        for line in std::io::BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let sts = FakeSts::start(FakeStsMode::Success).await;
    let env = Env::start_with(Options {
        sts_endpoint: Some(sts.endpoint()),
        audit: AuditConfig {
            sink: AuditSink::File(fifo),
            gcp_project_id: None,
        },
        limits: LimitsConfig {
            max_concurrent_requests: 32,
            ..LimitsConfig::unlimited()
        },
        ..Options::default()
    })
    .await;

    // Sixteen at a time, well within the 32 places: what could run out is
    // the audit log's room and the callers' patience, not the places.
    use futures_util::StreamExt as _;
    let flood = futures_util::stream::iter(0..FLOOD)
        .map(|_| env.call("not-a-token", ROLE_A, 0))
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    let refused = within(Duration::from_secs(60), flood).await;
    for r in refused {
        let status = r.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    }

    // An honest call waits for its record, which needs the reader.
    let token = env.token(&workload());
    let mut client = env.client.clone();
    let mut request = tonic::Request::new(tokenbridge_proto::v1::GetCredentialsRequest {
        role_arn: ROLE_A.into(),
        duration_seconds: 0,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let honest = tokio::spawn(async move { client.get_credentials(request).await });
    go_tx.send(()).unwrap();
    within(Duration::from_secs(60), honest)
        .await
        .unwrap()
        .unwrap();

    // Every refusal is on record: one line each, or counted in a summary.
    let (mut individually, mut summarised) = (0u64, 0u64);
    loop {
        let line = within(Duration::from_secs(60), lines_rx.recv())
            .await
            .expect("the audit pipe closed before the issued record");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        match v["event"].as_str() {
            Some("tokenbridge.exchange") if v["decision"] == "allow" => break,
            Some("tokenbridge.exchange") => {
                assert_eq!(v["outcome"], "invalid_token", "{v}");
                individually += 1;
            }
            Some("tokenbridge.audit_summary") => {
                assert_eq!(v["severity"], "WARNING");
                assert_eq!(v["by_outcome"]["invalid_token"], v["refusals"], "{v}");
                summarised += v["refusals"].as_u64().unwrap();
            }
            other => panic!("unexpected audit line {other:?}: {v}"),
        }
    }
    assert!(
        summarised > 0,
        "the pipe never filled: {individually} lines"
    );
    assert_eq!(individually + summarised, FLOOD as u64);
    let metrics = scrape(&env).await;
    assert!(
        value(
            &metrics,
            "tokenbridge_audit_records_total",
            &[("result", "summarised")]
        ) > 0.0
    );
}
