//! Criterion benches of the exchange's hot path: token verification (RSA
//! and the verified-token cache), policy lookup at 10 and 100,000 bindings,
//! a credentials cache hit, and the whole decision on a cache hit (issue 16:
//! verification with a warm key set, policy, cache lookup and the audit
//! record's serialisation), with the token seen before and fresh, and the
//! gRPC handler around it (audit write through a pipe, metrics, the futures
//! it boxes). `BENCHMARKS.md` puts them beside the machine's raw RSA-2048
//! verify rate (`openssl speed -seconds 3 rsa2048`).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::{hint::black_box, path::Path, sync::Arc, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::future::BoxFuture;
use tokenbridge_policy::Caller;
use tokenbridge_proto::Secret;
use tokenbridge_server::{
    PolicySnapshot,
    aws::cache::{CacheConfig, CacheKey, CredentialCache, SystemClock},
    aws::sts::{AssumeRole, AssumeRoleRequest, Credentials, StsError},
    config::{DEFAULT_ISSUERS, GoogleConfig},
    exchange::{Exchange, ExchangeRequest, Issued},
    google::jwks::Jwks,
    google::jwt::{self, Verifier},
    observability::{
        audit::{Decision, Entry, Facts},
        telemetry::TraceIds,
    },
};
use tokenbridge_testing::{Issuer, JwksServer, ServiceAccount};

const AUDIENCE: &str = "https://tokenbridge.bench";
const ROLE: &str = "arn:aws:iam::123456789012:role/Bench";

fn google(jwks_uri: String, verified_token_cache_entries: u64) -> GoogleConfig {
    GoogleConfig {
        audiences: vec![AUDIENCE.into()],
        jwks_uri,
        issuers: DEFAULT_ISSUERS.iter().map(|s| s.to_string()).collect(),
        jwks_refetch_cooldown: Duration::from_secs(30),
        jwks_timeout: Duration::from_secs(2),
        verified_token_cache_entries,
        jwks_stale_window: Duration::from_secs(24 * 3600),
    }
}

/// A verifier against `server`'s keys (fetched once), remembering up to
/// `entries` verified tokens.
fn verifier(rt: &tokio::runtime::Runtime, server: &JwksServer, entries: u64) -> Verifier {
    let jwks = Arc::new(
        Jwks::new(
            server.uri(),
            Duration::from_secs(2),
            Duration::from_secs(30),
        )
        .unwrap(),
    );
    assert!(rt.block_on(jwks.prefetch()));
    Verifier::new(&google(server.uri(), entries), jwks)
}

fn verification(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let issuer = Issuer::new();
    let server = rt.block_on(JwksServer::start(issuer.clone(), 3600));
    let token = issuer.token(
        &ServiceAccount::new("112233445566778899001", "b@p.iam.gserviceaccount.com"),
        AUDIENCE,
    );
    let mut group = c.benchmark_group("verify_token");
    // Everything but the key lookup and the RSA operation: the size limit,
    // the shape, the header and the strict parse of the claims.
    group.bench_function("checks_without_signature", |b| {
        b.iter(|| jwt::check_untrusted(black_box(&token)).unwrap())
    });
    for (name, entries) in [("rsa_every_time", 0), ("verified_token_cache_hit", 1000)] {
        let verifier = verifier(&rt, &server, entries);
        rt.block_on(verifier.verify(Secret::new(token.clone())))
            .unwrap();
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                verifier
                    .verify(Secret::new(black_box(token.clone())))
                    .await
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn policy_of(n: usize) -> PolicySnapshot {
    let mut src = String::with_capacity(n * 120);
    for i in 0..n {
        src.push_str(&format!(
            "[[binding]]\nname = \"b{i}\"\nservice_accounts = [\"{}\"]\nrole_arns = [\"{ROLE}\"]\n\n",
            100_000_000_000_000_000_000u128 + i as u128
        ));
    }
    PolicySnapshot::from_toml_str(&src, Path::new("bench.toml")).unwrap()
}

fn policy_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_decide");
    for n in [10usize, 100_000] {
        let policy = policy_of(n);
        let sub = (100_000_000_000_000_000_000u128 + (n as u128) / 2).to_string();
        group.bench_function(format!("{n}_bindings"), |b| {
            let caller = Caller {
                sub: sub.clone(),
                ..Caller::default()
            };
            b.iter(|| policy.decide(black_box(&caller), black_box(ROLE)).unwrap())
        });
    }
    group.finish();
}

struct StaticSts;

impl AssumeRole for StaticSts {
    fn assume_role(&self, req: AssumeRoleRequest) -> BoxFuture<'_, Result<Credentials, StsError>> {
        Box::pin(async move {
            Ok(Credentials {
                access_key_id: "ASIABENCH00000000001".into(),
                secret_access_key: Secret::new("s".repeat(40)),
                session_token: Secret::new("t".repeat(800)),
                expiration: std::time::SystemTime::now()
                    + Duration::from_secs(u64::from(req.duration_seconds)),
                assumed_role_arn: format!(
                    "arn:aws:sts::123456789012:assumed-role/Bench/{}",
                    req.session_name
                ),
                request_id: None,
            })
        })
    }
}

fn cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cache = CredentialCache::new(
        Arc::new(StaticSts),
        CacheConfig::default(),
        Arc::new(SystemClock),
    );
    let key = CacheKey {
        subject: "112233445566778899001".into(),
        role_arn: ROLE.into(),
        duration_seconds: 3600,
        scope: Default::default(),
        session: None,
    };
    let req = AssumeRoleRequest {
        role_arn: ROLE.into(),
        session_name: "112233445566778899001".into(),
        duration_seconds: 3600,
        web_identity_token: Secret::new("t".to_string()).into(),
        scope: Default::default(),
    };
    rt.block_on(cache.get(key.clone(), req.clone())).unwrap();
    c.bench_function("credentials_cache_hit", |b| {
        b.to_async(&rt).iter(|| async {
            cache
                .get(black_box(key.clone()), req.clone())
                .await
                .unwrap()
        })
    });
}

/// What a cache-hit exchange needs: Google's keys served over HTTP, one
/// service account's token, and an `Exchange` whose credentials come from
/// memory (`StaticSts`) under a 10-binding policy. `verified_token_cache`:
/// the verified-token cache's size (0: off, RS256 on every call).
struct CacheHitExchange {
    keys: JwksServer,
    exchange: Exchange,
    token: String,
    req: ExchangeRequest,
}

fn cache_hit_exchange(rt: &tokio::runtime::Runtime, verified_token_cache: u64) -> CacheHitExchange {
    let issuer = Issuer::new();
    let keys = rt.block_on(JwksServer::start(issuer.clone(), 3600));
    let sub = (100_000_000_000_000_000_000u128 + 5).to_string();
    let token = issuer.token(
        &ServiceAccount::new(&sub, "b@p.iam.gserviceaccount.com"),
        AUDIENCE,
    );
    let cache = CredentialCache::new(
        Arc::new(StaticSts),
        CacheConfig::default(),
        Arc::new(SystemClock),
    );
    let exchange = Exchange::new(
        Arc::new(verifier(rt, &keys, verified_token_cache)),
        policy_of(10),
        cache,
    );
    CacheHitExchange {
        keys,
        exchange,
        token,
        req: ExchangeRequest {
            role_arn: ROLE.into(),
            duration_seconds: 0,
        },
    }
}

/// The two cases of the cache-hit benches, set up: `reused_token` (the
/// verified-token cache answers) and `fresh_token` (it is off, so RS256 runs
/// every time).
fn token_cases(rt: &tokio::runtime::Runtime) -> [(&'static str, CacheHitExchange); 2] {
    [
        ("reused_token", cache_hit_exchange(rt, 1000)),
        ("fresh_token", cache_hit_exchange(rt, 0)),
    ]
}

/// The audit record of an issued call, as the handler writes it (no peer, no
/// trace).
fn issued_entry<'a>(req: &'a ExchangeRequest, facts: &'a Facts, issued: &'a Issued) -> Entry<'a> {
    Entry {
        decision: Decision::Allow,
        code: "OK",
        outcome: "issued",
        reason: "credentials issued",
        requested_role_arn: &req.role_arn,
        requested_duration_seconds: req.duration_seconds,
        facts,
        credentials: Some(&issued.credentials),
        peer: None,
        trace: None,
        elapsed: Duration::from_micros(87),
    }
}

/// The whole decision of a cache-hit exchange, as the gRPC handler runs it
/// minus the transport: `Exchange::exchange_recorded` (verify, policy,
/// cache) and the audit record's JSON line. `reused_token`: the
/// verified-token cache answers; `fresh_token`: it is off, so RS256 runs
/// every time (a fleet whose metadata server mints a token per request).
fn whole_decision(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("whole_decision_cache_hit");
    for (name, case) in token_cases(&rt) {
        let (exchange, token, req) = (&case.exchange, &case.token, &case.req);
        let decide = || async {
            let mut facts = Facts::default();
            let issued = exchange
                .exchange_recorded(Secret::new(black_box(token.clone())), req, &mut facts)
                .await
                .unwrap();
            let entry = issued_entry(req, &facts, &issued);
            black_box(entry.to_line(None).unwrap())
        };
        // Warm: the credentials are cached.
        rt.block_on(decide());
        group.bench_function(name, |b| b.to_async(&rt).iter(decide));
    }
    group.finish();
}

/// The audit record's JSON line alone (`Entry::to_line`), for an issued
/// call with every field the handler fills in: the caller's claims, the
/// decision, the credentials, the peer and a trace.
fn audit_line(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let CacheHitExchange {
        keys: _keys,
        exchange,
        token,
        req,
    } = cache_hit_exchange(&rt, 1000);
    let mut facts = Facts::default();
    let issued = rt
        .block_on(exchange.exchange_recorded(Secret::new(token), &req, &mut facts))
        .unwrap();
    let trace = TraceIds {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: Some("00f067aa0ba902b7".into()),
        sampled: true,
    };
    let entry = Entry {
        peer: Some("10.1.2.3:45678".parse().unwrap()),
        trace: Some(&trace),
        ..issued_entry(&req, &facts, &issued)
    };
    c.bench_function("audit_line", |b| {
        b.iter(|| black_box(entry.to_line(Some("my-project")).unwrap()))
    });
}

/// The gRPC handler on a cache hit, transport aside: `GetCredentials` as
/// tonic calls it once the message is decoded (metadata, the decision, the
/// audit record written through a pipe that a thread drains, as a container
/// runtime drains stdout, the metrics) up to the response message. The
/// boxed futures this path builds and moves are part of what it measures.
fn handler(c: &mut Criterion) {
    use std::os::fd::AsRawFd as _;
    use tokenbridge_proto::v1::{GetCredentialsRequest, token_exchange_server::TokenExchange};
    use tokenbridge_server::{
        observability::{
            audit::{AuditConfig, AuditLog, AuditSink},
            metrics::Metrics,
        },
        transport::grpc::TokenExchangeService,
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut reader, writer) = std::io::pipe().unwrap();
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let mut group = c.benchmark_group("handler_cache_hit");
    for (name, case) in token_cases(&rt) {
        // `case.keys` (the JWKS server) lives to the end of this iteration.
        let (exchange, token, req) = (case.exchange, &case.token, &case.req);
        let metrics = Metrics::prometheus().unwrap();
        let audit = AuditLog::open(
            &AuditConfig {
                sink: AuditSink::File(format!("/proc/self/fd/{}", writer.as_raw_fd()).into()),
                gcp_project_id: None,
            },
            metrics.clone(),
        )
        .unwrap();
        let service = TokenExchangeService::new(Arc::new(exchange))
            .with_metrics(metrics)
            .with_audit(Arc::new(audit));
        let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        let call = || {
            let mut request = tonic::Request::new(GetCredentialsRequest {
                role_arn: req.role_arn.clone(),
                duration_seconds: 0,
            });
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            let service = &service;
            async move { black_box(service.get_credentials(request).await.unwrap()) }
        };
        rt.block_on(call());
        group.bench_function(name, |b| b.to_async(&rt).iter(call));
    }
    group.finish();
}

criterion_group!(
    benches,
    verification,
    policy_lookup,
    cache_hit,
    whole_decision,
    audit_line,
    handler
);
criterion_main!(benches);
