//! The harness: stand-ins, a server started in-process, and a client.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tokenbridge_proto::v1::{
    GetCredentialsRequest, GetCredentialsResponse, token_exchange_client::TokenExchangeClient,
};
use tokenbridge_server::{
    PolicySnapshot,
    app::{self, Running},
    aws::cache::CacheConfig,
    config::{
        AwsConfig, Config, DEFAULT_ISSUERS, FallbackRegion, GoogleConfig, PolicyAdminConfig,
        ServerConfig, StoreConfig,
    },
    observability::audit::{AuditConfig, AuditSink},
    observability::probes::AdminConfig,
    observability::telemetry::TelemetryConfig,
    transport::limits::LimitsConfig,
    transport::tls::TlsConfig,
};
use tokenbridge_testing::{Issuer, JwksServer, Moto, ServiceAccount};
use tonic::{Request, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub const AUDIENCE: &str = "https://tokenbridge.test";
/// moto's default account.
pub const ROLE_A: &str = "arn:aws:iam::123456789012:role/RoleA";
pub const ROLE_B: &str = "arn:aws:iam::123456789012:role/team/RoleB";
pub const ROLE_C: &str = "arn:aws:iam::123456789012:role/RoleC";

/// Bound by unique ID to ROLE_A (max 7200 s) and by email to ROLE_B.
pub fn workload() -> ServiceAccount {
    ServiceAccount::new(
        "112233445566778899001",
        "workload@demo-project.iam.gserviceaccount.com",
    )
}

/// Bound to nothing.
pub fn stranger() -> ServiceAccount {
    ServiceAccount::new(
        "555555555555555555555",
        "stranger@demo-project.iam.gserviceaccount.com",
    )
}

/// Bound by unique ID only, to ROLE_C.
pub fn single() -> ServiceAccount {
    ServiceAccount::new(
        "998877665544332211009",
        "single@demo-project.iam.gserviceaccount.com",
    )
}

pub fn policy_toml() -> String {
    format!(
        r#"
[[binding]]
name = "by-id"
service_accounts = ["112233445566778899001"]
role_arns = ["{ROLE_A}"]
max_duration_seconds = 7200

[[binding]]
name = "by-email"
service_accounts = ["workload@demo-project.iam.gserviceaccount.com"]
role_arns = ["{ROLE_B}"]

[[binding]]
name = "single"
service_accounts = ["998877665544332211009"]
role_arns = ["{ROLE_C}"]
max_duration_seconds = 1800
"#
    )
}

/// What to start.
pub struct Options {
    pub sts_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub policy: String,
    pub cooldown: Duration,
    pub sts_timeout: Duration,
    /// Wait for health SERVING (Google's keys loaded) before returning.
    pub wait_ready: bool,
    pub cache: CacheConfig,
    pub verified_token_cache_entries: u64,
    pub limits: LimitsConfig,
    pub tls: Option<TlsConfig>,
    pub jwks_stale_window: Duration,
    pub jwks_timeout: Duration,
    pub fallback_regions: Vec<FallbackRegion>,
    /// Where audit records go: `/dev/null` unless a test reads them.
    pub audit: AuditConfig,
    /// The policy store instead of `policy` (which is then ignored).
    pub store: Option<StoreConfig>,
    /// The policy admin API.
    pub policy_admin: Option<PolicyAdminConfig>,
    pub issuer: Option<tokenbridge_server::config::IssuerConfig>,
    /// The web console (`listen` on port 0 for a free one).
    pub console: Option<tokenbridge_server::config::ConsoleConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sts_endpoint: None,
            jwks_uri: None,
            policy: policy_toml(),
            cooldown: Duration::from_secs(30),
            sts_timeout: Duration::from_secs(3),
            wait_ready: true,
            cache: CacheConfig::default(),
            verified_token_cache_entries: 100_000,
            limits: LimitsConfig::default(),
            tls: None,
            jwks_stale_window: Duration::from_secs(24 * 3600),
            jwks_timeout: Duration::from_secs(2),
            fallback_regions: Vec::new(),
            audit: AuditConfig {
                sink: AuditSink::File("/dev/null".into()),
                gcp_project_id: None,
            },
            store: None,
            policy_admin: None,
            issuer: None,
            console: None,
        }
    }
}

pub fn config(jwks_uri: String, sts_endpoint: String, opts: &Options) -> Config {
    Config {
        server: ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain_timeout: Duration::from_secs(5),
            allow_plaintext: false,
        },
        google: GoogleConfig {
            audiences: vec![AUDIENCE.to_string()],
            jwks_uri,
            issuers: DEFAULT_ISSUERS.iter().map(|s| s.to_string()).collect(),
            jwks_refetch_cooldown: opts.cooldown,
            jwks_timeout: opts.jwks_timeout,
            verified_token_cache_entries: opts.verified_token_cache_entries,
            jwks_stale_window: opts.jwks_stale_window,
        },
        aws: AwsConfig {
            region: "us-east-1".into(),
            sts_endpoint: Some(sts_endpoint),
            sts_timeout: opts.sts_timeout,
            fallback_regions: opts.fallback_regions.clone(),
        },
        policy_file: opts.store.is_none().then(|| PathBuf::from("policy.toml")),
        store: opts.store.clone(),
        policy_admin: opts.policy_admin.clone(),
        cache: opts.cache.clone(),
        limits: opts.limits.clone(),
        tls: opts.tls.clone(),
        // Every test server has its own admin listener, on a free port.
        admin: AdminConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        },
        audit: opts.audit.clone(),
        telemetry: TelemetryConfig::default(),
        issuer: opts.issuer.clone(),
        console: opts.console.clone(),
    }
}

/// A running tokenbridge with its stand-ins.
pub struct Env {
    pub issuer: Issuer,
    pub jwks: JwksServer,
    pub server: Option<Running>,
    pub client: TokenExchangeClient<Channel>,
    pub channel: Channel,
}

impl Env {
    /// Stand-ins, moto, and the service with the default policy.
    pub async fn start() -> Env {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Env {
        let issuer = Issuer::new();
        let jwks = JwksServer::start(issuer.clone(), 3600).await;
        Self::start_on(issuer, jwks, opts).await
    }

    pub async fn start_on(issuer: Issuer, jwks: JwksServer, opts: Options) -> Env {
        let sts = match &opts.sts_endpoint {
            Some(e) => e.clone(),
            None => Moto::shared().await.endpoint(),
        };
        let jwks_uri = opts.jwks_uri.clone().unwrap_or_else(|| jwks.uri());
        let cfg = config(jwks_uri, sts, &opts);
        let policy = PolicySnapshot::from_toml_str(&opts.policy, "policy.toml".as_ref()).unwrap();
        let server = app::start(cfg, policy).await.unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        if opts.wait_ready {
            wait_for_health(channel.clone(), ServingStatus::Serving).await;
        }
        Env {
            issuer,
            jwks,
            server: Some(server),
            client: TokenExchangeClient::new(channel.clone()),
            channel,
        }
    }

    /// A fresh token for `sa` with the default claims.
    pub fn token(&self, sa: &ServiceAccount) -> String {
        self.issuer.token(sa, AUDIENCE)
    }

    /// Default claims for `sa`, to modify.
    pub fn claims(&self, sa: &ServiceAccount) -> serde_json::Map<String, serde_json::Value> {
        self.issuer.claims(sa, AUDIENCE, true)
    }

    /// GetCredentials with `authorization: Bearer <token>`.
    pub async fn call(
        &self,
        token: &str,
        role_arn: &str,
        duration_seconds: u32,
    ) -> Result<GetCredentialsResponse, Status> {
        self.call_with_auth(Some(&format!("Bearer {token}")), role_arn, duration_seconds)
            .await
    }

    /// GetCredentials with this exact `authorization` value (or none).
    pub async fn call_with_auth(
        &self,
        authorization: Option<&str>,
        role_arn: &str,
        duration_seconds: u32,
    ) -> Result<GetCredentialsResponse, Status> {
        let mut req = Request::new(GetCredentialsRequest {
            role_arn: role_arn.into(),
            duration_seconds,
        });
        if let Some(v) = authorization {
            req.metadata_mut()
                .insert("authorization", v.parse().unwrap());
        }
        self.client
            .clone()
            .get_credentials(req)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.unwrap();
        }
    }
}

/// Asserts `result` failed with `code`, a message containing `needle`, and
/// no trace of `token` in the message.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: tonic::Code,
    needle: &str,
    token: &str,
) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "message: {}", status.message());
    assert!(
        status.message().contains(needle),
        "message {:?} should contain {needle:?}",
        status.message()
    );
    assert_no_token(status.message(), token);
}

/// Asserts no part of `token` (header, payload or signature) is in `text`.
#[track_caller]
pub fn assert_no_token(text: &str, token: &str) {
    if token.len() < 16 {
        return;
    }
    assert!(!text.contains(token), "the token leaked into {text:?}");
    for part in token.split('.').filter(|p| p.len() >= 16) {
        assert!(
            !text.contains(part),
            "part of the token leaked into {text:?}"
        );
    }
}

/// Watches the overall health status until it is `want`.
pub async fn wait_for_health(channel: Channel, want: ServingStatus) {
    let mut health = HealthClient::new(channel);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(update) = stream.message().await.unwrap() {
        if update.status == want as i32 {
            return;
        }
    }
    panic!("health stream ended before {want:?}");
}

/// A hang guard: `future` must finish well within `limit`, or the test fails
/// (never an assertion of speed: the limit is many times what is expected).
pub async fn within<T>(limit: Duration, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .expect("hung past its deadline")
}

/// The `google.rpc.RetryInfo` delay of a status, if it has one.
pub fn retry_delay(status: &Status) -> Option<Duration> {
    use tonic_types::StatusExt as _;
    status.get_details_retry_info().and_then(|r| r.retry_delay)
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
