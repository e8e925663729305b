//! The service configuration file (TOML), parsed purely and validated in one
//! pass that reports every problem with its file and line.
//!
//! Keys (see the README's configuration reference for the full story):
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `server.listen` | `0.0.0.0:50051` | gRPC, health and reflection listener |
//! | `server.drain_timeout_seconds` | `25` | on SIGTERM, how long in-flight calls may take to finish |
//! | `server.allow_plaintext` | `false` | with `[tls]`: allow `server.listen` on a non-loopback address (plaintext next to TLS); without it that is a config error |
//! | `google.audiences` | required | accepted `aud` values |
//! | `google.jwks_uri` | `https://www.googleapis.com/oauth2/v3/certs` | Google's signing keys |
//! | `google.issuers` | both Google issuers | accepted `iss` values |
//! | `google.jwks_refetch_cooldown_seconds` | `30` | at most one unknown-`kid` refetch per this many seconds |
//! | `google.jwks_timeout_ms` | `2000` | one JWKS fetch, connect to last byte |
//! | `google.verified_token_cache_entries` | `100000` | verified tokens remembered until `exp` (0: off) |
//! | `google.jwks_stale_window_seconds` | `86400` | how long past their `max-age` the last good keys keep verifying while Google's JWKS cannot be fetched |
//! | `aws.region` | required | STS regional endpoint |
//! | `aws.sts_endpoint` | regional endpoint | override: VPC endpoint or a local emulator |
//! | `aws.sts_timeout_ms` | `3000` | one `AssumeRoleWithWebIdentity`, retries and fallback regions included |
//! | `aws.fallback_regions` | `[]` | regions tried in order when the primary fails with a retryable error |
//! | `aws.fallback_sts_endpoints` | regional endpoints | one endpoint override per fallback region |
//! | `policy.file` | required unless `[store]` | the policy table, read only (reloaded on SIGHUP); relative to the config file's folder |
//! | `store.schema` | `public` | PostgreSQL schema for the tables (created if missing) |
//! | `store.url` | none | the policy table in SQL instead: `sqlite://PATH` (relative to the config file's folder) or `postgres://USER@HOST/DB`; excludes `policy.file` |
//! | `policy_admin.listen` | none: no admin API | `tokenbridge.v1.PolicyAdmin` listener (see [`crate::policy_admin`]) |
//! | `policy_admin.audiences` | required with `[policy_admin]` | accepted `aud` of admin callers' ID tokens; none may be an exchange audience |
//! | `policy_admin.principals` | required with `[policy_admin]` | who may call it: unique IDs or (verified) emails |
//! | `policy_admin.tls` | `false` | serve it over TLS with the `[tls]` certificate, key and client CA |
//! | `policy_admin.allow_plaintext` | `false` | allow a non-loopback `policy_admin.listen` without `tls` (a TLS-terminating proxy in front); without it that is a config error |
//! | `policy_admin.max_concurrent_requests` | `32` | calls in flight; more are shed at once (RESOURCE_EXHAUSTED) |
//! | `policy_admin.request_timeout_ms` | `10000` | one call, headers to answer, message included |
//! | `policy_admin.max_request_bytes` | `4194304` | one decoded message of an authenticated caller (unauthenticated calls are refused from their headers, before any of the message is read) |
//! | `policy_admin.per_peer_requests_per_second` | `20` | per peer address, before authentication; 0: off |
//! | `policy_admin.per_peer_burst` | `40` | calls a peer may make at once |
//! | `cache.enabled` | `true` | cache credentials per (sub, role, duration) |
//! | `cache.max_entries` | `100000` | most credentials cached |
//! | `cache.margin_seconds` | `1200` | never hand out credentials with less life left |
//! | `cache.refresh_window_seconds` | `600` | refresh in the background this long before the margin |
//! | `limits.*` | see [`crate::transport::limits`] | rate, concurrency, deadline and size limits |
//! | `tls.*` | off | see [`crate::transport::tls`] |
//! | `admin.listen` | `127.0.0.1:9464` | `/metrics`, `/healthz`, `/readyz` (see [`crate::observability::probes`]) |
//! | `admin.enabled` | `true` | `false`: no admin listener |
//! | `audit.sink` | `stdout` | `stdout`, `stderr` or `file` (see [`crate::observability::audit`]) |
//! | `audit.path` | required with `sink = "file"` | the audit file; relative to the config file's folder |
//! | `audit.gcp_project_id` | none | project for `logging.googleapis.com/trace` |
//! | `telemetry.otlp_endpoint` | none: traces off | OTLP/gRPC collector (see [`crate::observability::telemetry`]) |
//! | `telemetry.sampling_ratio` | `1.0` | share of root traces sampled |
//! | `telemetry.service_name` | `tokenbridge` | `service.name` of the traces |
//! | `console.listen` | none: no console; `127.0.0.1:9465` once `[console]` is there | the web console's HTTP listener (see [`crate::console`] and the `tokenbridge-console` crate); without `iap_audience` it must be loopback |
//! | `console.iap_audience` | none: loopback only | Identity-Aware Proxy's audience (`/projects/NUMBER/global/backendServices/ID` or `/projects/NUMBER/apps/PROJECT_ID`); set: every page needs IAP's signed header |
//! | `console.iap_jwks_uri` | `https://www.gstatic.com/iap/verify/public_key-jwk` | IAP's public keys (https; http only to loopback) |
//! | `console.iap_issuer` | `https://cloud.google.com/iap` | the assertions' `iss` |
//! | `console.viewers` | `[]` | with IAP: emails that may look |
//! | `console.admins` | `[]` | with IAP: emails that may also deny and allow |
//! | `console.csrf_secret_file` | none: a random key per process | at least 32 bytes keying the forms' CSRF tokens, the same file on every replica behind one load balancer; relative to the config file's folder |
//!
//! The process reads no environment variable for its configuration except
//! `RUST_LOG` (log filter).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use tokenbridge_policy::diag::{Problem, Problems};

// Each section's type lives with the component it configures; this module
// reads the file, checks it, and reports every problem with its line. The
// types are re-exported here as the config file's sections.
pub use crate::issuer::IssuerConfig;
use crate::issuer::{DEFAULT_TOKEN_LIFETIME, TOKEN_LIFETIME_SECONDS, resolve};
pub use crate::{
    aws::{AwsConfig, FallbackRegion, cache::CacheConfig},
    google::{DEFAULT_ISSUERS, DEFAULT_JWKS_URI, GoogleConfig},
    observability::{audit::AuditConfig, probes::AdminConfig, telemetry::TelemetryConfig},
    policy_admin::{PolicyAdminConfig, PolicyAdminLimits},
    store::StoreConfig,
    transport::{limits::LimitsConfig, tls::TlsConfig},
};
use crate::{
    observability::audit::AuditSink, observability::probes::DEFAULT_LISTEN, transport::limits::Rate,
};
pub use tokenbridge_console::ConsoleConfig;
use tokenbridge_issuer::DEFAULT_AUDIENCE;

/// The validated service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[google]`.
    pub google: GoogleConfig,
    /// `[aws]`.
    pub aws: AwsConfig,
    /// `[policy] file`: the read-only policy file, unless `[store]` is set.
    pub policy_file: Option<PathBuf>,
    /// `[store]`: the SQL policy store, instead of a policy file.
    pub store: Option<StoreConfig>,
    /// `[policy_admin]`: the policy admin API, if enabled.
    pub policy_admin: Option<PolicyAdminConfig>,
    /// `[cache]`: the credentials cache.
    pub cache: CacheConfig,
    /// `[limits]`: what callers may ask of the service.
    pub limits: LimitsConfig,
    /// `[tls]`: the TLS listener, if any.
    pub tls: Option<TlsConfig>,
    /// `[admin]`: metrics and probes.
    pub admin: AdminConfig,
    /// `[audit]`: where the audit log goes.
    pub audit: AuditConfig,
    /// `[telemetry]`: traces.
    pub telemetry: TelemetryConfig,
    /// `[issuer]`: issuer mode, if configured.
    pub issuer: Option<IssuerConfig>,
    /// `[console]`: the web console, if enabled.
    pub console: Option<ConsoleConfig>,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the gRPC listener.
    pub listen: SocketAddr,
    /// On SIGTERM, how long in-flight calls may take to finish.
    pub drain_timeout: Duration,
    /// With `[tls]`: plaintext on a non-loopback `listen` is intended.
    pub allow_plaintext: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    google: RawGoogle,
    aws: RawAws,
    policy: Option<RawPolicyRef>,
    store: Option<RawStore>,
    policy_admin: Option<RawPolicyAdmin>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    limits: RawLimits,
    tls: Option<RawTls>,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    telemetry: RawTelemetry,
    issuer: Option<RawIssuer>,
    console: Option<Spanned<RawConsole>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    listen: Option<Spanned<String>>,
    iap_audience: Option<Spanned<String>>,
    iap_jwks_uri: Option<Spanned<String>>,
    iap_issuer: Option<Spanned<String>>,
    viewers: Option<Spanned<Vec<Spanned<String>>>>,
    admins: Option<Spanned<Vec<Spanned<String>>>>,
    csrf_secret_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    url: Spanned<String>,
    key_files: Spanned<Vec<Spanned<String>>>,
    active_key_file: Option<Spanned<String>>,
    audience: Option<Spanned<String>>,
    default: Option<bool>,
    token_lifetime_seconds: Option<Spanned<i64>>,
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    enabled: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    sink: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    gcp_project_id: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    otlp_endpoint: Option<Spanned<String>>,
    sampling_ratio: Option<Spanned<f64>>,
    service_name: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_concurrent_requests: Option<Spanned<i64>>,
    request_timeout_ms: Option<Spanned<i64>>,
    max_request_bytes: Option<Spanned<i64>>,
    max_header_list_bytes: Option<Spanned<i64>>,
    max_concurrent_streams: Option<Spanned<i64>>,
    per_peer_requests_per_second: Option<Spanned<i64>>,
    per_peer_burst: Option<Spanned<i64>>,
    per_peer_exempt_loopback: Option<bool>,
    per_subject_requests_per_second: Option<Spanned<i64>>,
    per_subject_burst: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    listen: Spanned<String>,
    cert_file: Spanned<String>,
    key_file: Spanned<String>,
    client_ca_file: Option<Spanned<String>>,
    reload_interval_seconds: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    enabled: Option<bool>,
    max_entries: Option<Spanned<i64>>,
    margin_seconds: Option<Spanned<i64>>,
    refresh_window_seconds: Option<Spanned<i64>>,
    sts_calls_per_identity_per_minute: Option<Spanned<i64>>,
    sts_burst_per_identity: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    drain_timeout_seconds: Option<Spanned<i64>>,
    allow_plaintext: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGoogle {
    audiences: Spanned<Vec<Spanned<String>>>,
    jwks_uri: Option<Spanned<String>>,
    issuers: Option<Spanned<Vec<Spanned<String>>>>,
    jwks_refetch_cooldown_seconds: Option<Spanned<i64>>,
    jwks_timeout_ms: Option<Spanned<i64>>,
    verified_token_cache_entries: Option<Spanned<i64>>,
    jwks_stale_window_seconds: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAws {
    region: Spanned<String>,
    sts_endpoint: Option<Spanned<String>>,
    sts_timeout_ms: Option<Spanned<i64>>,
    fallback_regions: Option<Spanned<Vec<Spanned<String>>>>,
    fallback_sts_endpoints: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyRef {
    file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Spanned<String>,
    schema: Option<Spanned<String>>,
    allow_unverified_tls: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyAdmin {
    listen: Spanned<String>,
    audiences: Spanned<Vec<Spanned<String>>>,
    principals: Spanned<Vec<Spanned<String>>>,
    tls: Option<Spanned<bool>>,
    allow_plaintext: Option<Spanned<bool>>,
    max_concurrent_requests: Option<Spanned<i64>>,
    request_timeout_ms: Option<Spanned<i64>>,
    max_request_bytes: Option<Spanned<i64>>,
    per_peer_requests_per_second: Option<Spanned<i64>>,
    per_peer_burst: Option<Spanned<i64>>,
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, Vec<Problem>> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            vec![Problem {
                file: path.to_path_buf(),
                line: None,
                reason: format!("cannot read the config file: {e}"),
            }]
        })?;
        Self::from_toml_str(&src, path)
    }

    /// Parses and validates config text; `path` names the file in problems and
    /// anchors a relative `policy.file`.
    pub fn from_toml_str(src: &str, path: &Path) -> Result<Config, Vec<Problem>> {
        let mut problems = Problems::new(path, src);
        let raw: RawConfig = match toml::from_str(src) {
            Ok(raw) => raw,
            Err(e) => {
                problems.toml(&e);
                return Err(problems.found);
            }
        };

        let listen = match &raw.server.listen {
            None => SocketAddr::from(([0, 0, 0, 0], 50051)),
            Some(v) => v.get_ref().parse().unwrap_or_else(|_| {
                problems.at(
                    v.span(),
                    format!(
                        "server.listen: `{}` is not an IP address and port such as 0.0.0.0:50051",
                        v.get_ref()
                    ),
                );
                SocketAddr::from(([0, 0, 0, 0], 50051))
            }),
        };
        let drain = seconds(
            &mut problems,
            "server.drain_timeout_seconds",
            &raw.server.drain_timeout_seconds,
            25,
            0..=3600,
        );

        let g = &raw.google;
        let audiences = strings(&mut problems, "google.audiences", &g.audiences);
        if audiences.is_empty() && g.audiences.get_ref().is_empty() {
            problems.at(
                g.audiences.span(),
                "google.audiences: at least one audience is required",
            );
        }
        let jwks_uri = match &g.jwks_uri {
            None => DEFAULT_JWKS_URI.to_string(),
            Some(v) => {
                if let Err(reason) = check_upstream_url(v.get_ref()) {
                    problems.at(v.span(), format!("google.jwks_uri: {reason}"));
                }
                v.get_ref().clone()
            }
        };
        let issuers = match &g.issuers {
            None => DEFAULT_ISSUERS.iter().map(|s| s.to_string()).collect(),
            Some(v) => {
                if v.get_ref().is_empty() {
                    problems.at(v.span(), "google.issuers: at least one issuer is required");
                }
                strings(&mut problems, "google.issuers", v)
            }
        };
        let cooldown = seconds(
            &mut problems,
            "google.jwks_refetch_cooldown_seconds",
            &g.jwks_refetch_cooldown_seconds,
            30,
            1..=86_400,
        );
        let verified_token_cache_entries = number(
            &mut problems,
            "google.verified_token_cache_entries",
            &g.verified_token_cache_entries,
            100_000,
            0..=10_000_000,
            "entries",
        );
        let jwks_timeout = millis(
            &mut problems,
            "google.jwks_timeout_ms",
            &g.jwks_timeout_ms,
            2000,
            100..=60_000,
        );

        let jwks_stale_window = seconds(
            &mut problems,
            "google.jwks_stale_window_seconds",
            &g.jwks_stale_window_seconds,
            24 * 3600,
            0..=7 * 24 * 3600,
        );

        let a = &raw.aws;
        let region = a.region.get_ref();
        if !region_ok(region) {
            problems.at(
                a.region.span(),
                format!("aws.region: `{region}` is not an AWS region name such as us-east-1"),
            );
        }
        let fallback_regions = fallback_regions(&mut problems, a);
        if let Some(v) = &a.sts_endpoint
            && let Err(reason) = check_upstream_url(v.get_ref())
        {
            problems.at(v.span(), format!("aws.sts_endpoint: {reason}"));
        }
        let sts_timeout = millis(
            &mut problems,
            "aws.sts_timeout_ms",
            &a.sts_timeout_ms,
            3000,
            100..=60_000,
        );

        let base = path.parent().unwrap_or(Path::new(""));
        let file_ref = raw.policy.as_ref().and_then(|p| p.file.as_ref());
        let policy_file = file_ref.map(|f| {
            if f.get_ref().trim().is_empty() {
                problems.at(f.span(), "policy.file: a path is required");
            }
            base.join(f.get_ref())
        });
        let store = raw.store.as_ref().map(|s| store(&mut problems, s, base));
        match (&raw.store, file_ref) {
            (None, None) => problems.whole(
                "policy.file: required (or configure the policy store: [store] url = \"sqlite://policy.db\")",
            ),
            (Some(s), Some(_)) => problems.at(
                s.url.span(),
                "store.url: give either [store] or policy.file, not both: the file is the \
                 read-only source; to move its bindings into the store, use \
                 `tokenbridge-admin apply -f FILE`",
            ),
            _ => {}
        }

        let c = &raw.cache;
        let defaults = CacheConfig::default();
        let count =
            |problems: &mut Problems<'_>, key: &str, v: &Option<Spanned<i64>>, d: u32, min: u64| {
                u32::try_from(number(
                    problems,
                    key,
                    v,
                    u64::from(d),
                    min..=100_000,
                    "calls",
                ))
                .unwrap_or(d)
            };
        let sts_calls_per_minute = count(
            &mut problems,
            "cache.sts_calls_per_identity_per_minute",
            &c.sts_calls_per_identity_per_minute,
            defaults.sts_calls_per_minute,
            0,
        );
        let sts_burst = count(
            &mut problems,
            "cache.sts_burst_per_identity",
            &c.sts_burst_per_identity,
            defaults.sts_burst,
            1,
        );
        let cache = CacheConfig {
            sts_calls_per_minute,
            sts_burst,
            enabled: c.enabled.unwrap_or(defaults.enabled),
            max_entries: number(
                &mut problems,
                "cache.max_entries",
                &c.max_entries,
                defaults.max_entries,
                1..=10_000_000,
                "entries",
            ),
            margin: seconds(
                &mut problems,
                "cache.margin_seconds",
                &c.margin_seconds,
                defaults.margin.as_secs(),
                0..=3600 * 11,
            ),
            refresh_window: seconds(
                &mut problems,
                "cache.refresh_window_seconds",
                &c.refresh_window_seconds,
                defaults.refresh_window.as_secs(),
                0..=3600 * 11,
            ),
        };

        let limits = limits(&mut problems, &raw.limits);
        let tls = raw.tls.as_ref().map(|t| {
            let base = path.parent().unwrap_or(Path::new(""));
            let file = |problems: &mut Problems<'_>, key: &str, v: &Spanned<String>| {
                if v.get_ref().trim().is_empty() {
                    problems.at(v.span(), format!("tls.{key}: a path is required"));
                }
                base.join(v.get_ref())
            };
            let tls_listen = t.listen.get_ref().parse().unwrap_or_else(|_| {
                problems.at(
                    t.listen.span(),
                    format!(
                        "tls.listen: `{}` is not an IP address and port such as 0.0.0.0:50443",
                        t.listen.get_ref()
                    ),
                );
                listen
            });
            if tls_listen == listen && tls_listen.port() != 0 {
                problems.at(
                    t.listen.span(),
                    "tls.listen: must differ from server.listen (plaintext stays on server.listen)",
                );
            }
            TlsConfig {
                listen: tls_listen,
                cert_file: file(&mut problems, "cert_file", &t.cert_file),
                key_file: file(&mut problems, "key_file", &t.key_file),
                client_ca_file: t
                    .client_ca_file
                    .as_ref()
                    .map(|v| file(&mut problems, "client_ca_file", v)),
                reload_interval: seconds(
                    &mut problems,
                    "tls.reload_interval_seconds",
                    &t.reload_interval_seconds,
                    10,
                    1..=86_400,
                ),
            }
        });

        // Issue 15: with TLS configured, plaintext next to it is a choice.
        if let Some(t) = &raw.tls
            && !listen.ip().is_loopback()
            && !raw
                .server
                .allow_plaintext
                .as_ref()
                .is_some_and(|v| *v.get_ref())
        {
            let span = raw
                .server
                .listen
                .as_ref()
                .map_or_else(|| t.listen.span(), |v| v.span());
            problems.at(
                span,
                format!(
                    "server.listen: {listen} would serve plaintext gRPC (tokens in, AWS secrets out) on a \
                     non-loopback address next to [tls]; bind it to loopback (e.g. 127.0.0.1:{}), or set \
                     server.allow_plaintext = true if plaintext there is intended (a TLS-terminating proxy, a mesh)",
                    listen.port()
                ),
            );
        }
        let admin = admin(&mut problems, &raw.admin, listen);
        let policy_admin = raw
            .policy_admin
            .as_ref()
            .map(|p| policy_admin(&mut problems, p, &[Some(listen), admin.listen], &audiences));
        if let Some(v) = raw.policy_admin.as_ref().and_then(|p| p.tls.as_ref())
            && *v.get_ref()
            && raw.tls.is_none()
        {
            problems.at(
                v.span(),
                "policy_admin.tls: needs the [tls] section (its certificate and key serve this listener too)",
            );
        }
        let audit = audit(&mut problems, &raw.audit, path);
        let telemetry = telemetry(&mut problems, &raw.telemetry);
        let issuer = raw
            .issuer
            .as_ref()
            .map(|i| issuer(&mut problems, i, path, raw.tls.as_ref()));
        let console = raw.console.as_ref().map(|c| {
            let taken = [
                Some(listen),
                admin.listen,
                policy_admin.as_ref().map(|p| p.listen),
                tls.as_ref().map(|t| t.listen),
            ];
            console(&mut problems, c, path, &taken)
        });

        if !problems.found.is_empty() {
            return Err(problems.found);
        }
        Ok(Config {
            server: ServerConfig {
                listen,
                drain_timeout: drain,
                allow_plaintext: raw
                    .server
                    .allow_plaintext
                    .as_ref()
                    .is_some_and(|v| *v.get_ref()),
            },
            google: GoogleConfig {
                audiences,
                jwks_uri,
                issuers,
                jwks_refetch_cooldown: cooldown,
                jwks_timeout,
                verified_token_cache_entries,
                jwks_stale_window,
            },
            aws: AwsConfig {
                region: region.clone(),
                sts_endpoint: a.sts_endpoint.as_ref().map(|v| v.get_ref().clone()),
                sts_timeout,
                fallback_regions,
            },
            policy_file,
            store,
            policy_admin,
            cache,
            limits,
            tls,
            admin,
            audit,
            telemetry,
            issuer,
            console,
        })
    }
}

fn admin(problems: &mut Problems<'_>, a: &RawAdmin, grpc_listen: SocketAddr) -> AdminConfig {
    if a.enabled == Some(false) {
        return AdminConfig { listen: None };
    }
    let listen = match &a.listen {
        None => DEFAULT_LISTEN,
        Some(v) => match v.get_ref().parse::<SocketAddr>() {
            Ok(addr) => {
                if addr == grpc_listen && addr.port() != 0 {
                    problems.at(v.span(), "admin.listen: must differ from server.listen");
                }
                addr
            }
            Err(_) => {
                problems.at(
                    v.span(),
                    format!(
                        "admin.listen: `{}` is not an IP address and port such as 127.0.0.1:9464",
                        v.get_ref()
                    ),
                );
                DEFAULT_LISTEN
            }
        },
    };
    AdminConfig {
        listen: Some(listen),
    }
}

fn store(problems: &mut Problems<'_>, s: &RawStore, base: &Path) -> StoreConfig {
    let url = s.url.get_ref().trim();
    let url = if let Some(file) = url.strip_prefix("sqlite://") {
        if file.is_empty() {
            problems.at(s.url.span(), "store.url: sqlite:// needs a file path");
        }
        format!("sqlite://{}", base.join(file).display())
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if let Some(host) = unverified_remote_host(url)
            && s.allow_unverified_tls != Some(true)
        {
            problems.at(
                s.url.span(),
                format!(
                    "store.url: host `{host}` is not loopback and the URL does not verify its certificate: \
                     add sslmode=verify-full (or verify-ca) so the bindings and deny list cannot be read or \
                     changed in transit, or set store.allow_unverified_tls = true to accept that risk"
                ),
            );
        }
        url.to_string()
    } else {
        // The value may hold a password: say what it starts with, no more.
        problems.at(
            s.url.span(),
            "store.url: use sqlite://PATH or postgres://USER@HOST/DATABASE",
        );
        String::new()
    };
    let schema = s.schema.as_ref().map(|v| {
        let name = v.get_ref();
        let ok = (1..=40).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !name.starts_with("pg_");
        if !ok {
            problems.at(
                v.span(),
                format!(
                    "store.schema: `{name}` is not a plain schema name (1 to 40 of a-z 0-9 _, \
                     starting with a letter or _, not pg_)"
                ),
            );
        }
        name.clone()
    });
    StoreConfig { url, schema }
}

/// The host of a PostgreSQL URL that is neither loopback nor a Unix socket
/// and whose `sslmode` does not verify the server's certificate, read by
/// sqlx's own parser (what the store will connect with). A URL sqlx cannot
/// parse is reported when the store opens.
fn unverified_remote_host(url: &str) -> Option<String> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    let options: PgConnectOptions = url.parse().ok()?;
    if options.get_socket().is_some()
        || matches!(
            options.get_ssl_mode(),
            PgSslMode::VerifyCa | PgSslMode::VerifyFull
        )
    {
        return None;
    }
    let host = options.get_host();
    let local = host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!local).then(|| host.to_owned())
}

fn policy_admin(
    problems: &mut Problems<'_>,
    p: &RawPolicyAdmin,
    taken: &[Option<SocketAddr>],
    exchange_audiences: &[String],
) -> PolicyAdminConfig {
    let listen = match p.listen.get_ref().parse::<SocketAddr>() {
        Ok(addr) => {
            if addr.port() != 0 && taken.contains(&Some(addr)) {
                problems.at(
                    p.listen.span(),
                    "policy_admin.listen: must differ from server.listen and admin.listen",
                );
            }
            addr
        }
        Err(_) => {
            problems.at(
                p.listen.span(),
                format!(
                    "policy_admin.listen: `{}` is not an IP address and port such as 127.0.0.1:50052",
                    p.listen.get_ref()
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    };
    let audiences = strings(problems, "policy_admin.audiences", &p.audiences);
    if p.audiences.get_ref().is_empty() {
        problems.at(
            p.audiences.span(),
            "policy_admin.audiences: at least one audience is required",
        );
    }
    for a in p.audiences.get_ref() {
        if exchange_audiences.contains(a.get_ref()) {
            problems.at(
                a.span(),
                format!(
                    "policy_admin.audiences: `{}` is also an exchange audience (google.audiences): \
                     every workload's exchange token would then pass as an admin token's audience",
                    a.get_ref()
                ),
            );
        }
    }
    let principals = strings(problems, "policy_admin.principals", &p.principals);
    if p.principals.get_ref().is_empty() {
        problems.at(
            p.principals.span(),
            "policy_admin.principals: at least one principal is required",
        );
    }
    for v in p.principals.get_ref() {
        if tokenbridge_policy::rules::classify_service_account(v.get_ref()).is_none() {
            problems.at(
                v.span(),
                format!(
                    "policy_admin.principals: `{}` is neither a unique ID (digits) nor an email",
                    v.get_ref()
                ),
            );
        }
    }
    let tls = p.tls.as_ref().is_some_and(|v| *v.get_ref());
    let allow_plaintext = p.allow_plaintext.as_ref().is_some_and(|v| *v.get_ref());
    if !tls && !allow_plaintext && !listen.ip().is_loopback() {
        problems.at(
            p.listen.span(),
            format!(
                "policy_admin.listen: {listen} is not a loopback address and the listener has no TLS: \
                 admin ID tokens would cross the network in plaintext. Set policy_admin.tls = true, \
                 bind it to loopback, or set policy_admin.allow_plaintext = true to acknowledge it \
                 (a TLS-terminating proxy or mesh in front)"
            ),
        );
    }
    let d = PolicyAdminLimits::default();
    let limits = PolicyAdminLimits {
        max_concurrent_requests: usize::try_from(number(
            problems,
            "policy_admin.max_concurrent_requests",
            &p.max_concurrent_requests,
            d.max_concurrent_requests as u64,
            1..=10_000,
            "requests",
        ))
        .unwrap_or(d.max_concurrent_requests),
        request_timeout: millis(
            problems,
            "policy_admin.request_timeout_ms",
            &p.request_timeout_ms,
            d.request_timeout.as_millis() as u64,
            100..=600_000,
        ),
        max_request_bytes: usize::try_from(number(
            problems,
            "policy_admin.max_request_bytes",
            &p.max_request_bytes,
            d.max_request_bytes as u64,
            4096..=64 * 1024 * 1024,
            "bytes",
        ))
        .unwrap_or(d.max_request_bytes),
        per_peer: rate(
            problems,
            "policy_admin.per_peer",
            &p.per_peer_requests_per_second,
            &p.per_peer_burst,
            d.per_peer,
        ),
    };
    PolicyAdminConfig {
        listen,
        audiences,
        principals,
        tls,
        allow_plaintext,
        limits,
    }
}

fn issuer(
    problems: &mut Problems<'_>,
    i: &RawIssuer,
    config_path: &Path,
    tls: Option<&RawTls>,
) -> IssuerConfig {
    let base = config_path.parent().unwrap_or(Path::new(""));
    if let Err(reason) = tokenbridge_issuer::check_issuer_url(i.url.get_ref()) {
        problems.at(i.url.span(), format!("issuer.url: {reason}"));
    }
    if i.key_files.get_ref().is_empty() {
        problems.at(
            i.key_files.span(),
            "issuer.key_files: at least one PEM private key is required",
        );
    }
    let key_files: Vec<PathBuf> = i
        .key_files
        .get_ref()
        .iter()
        .map(|f| resolve(base, f.get_ref()))
        .collect();
    let active_key_file = i.active_key_file.as_ref().map(|a| {
        let path = resolve(base, a.get_ref());
        if !key_files.contains(&path) {
            problems.at(
                a.span(),
                format!(
                    "issuer.active_key_file: `{}` is not one of issuer.key_files (a key is published before it signs)",
                    a.get_ref()
                ),
            );
        }
        path
    });
    let lifetime = match &i.token_lifetime_seconds {
        None => DEFAULT_TOKEN_LIFETIME,
        Some(v) => match u64::try_from(*v.get_ref()) {
            Ok(s) if TOKEN_LIFETIME_SECONDS.contains(&s) => Duration::from_secs(s),
            _ => {
                problems.at(
                    v.span(),
                    format!(
                        "issuer.token_lifetime_seconds: {} is outside {}..={}",
                        v.get_ref(),
                        TOKEN_LIFETIME_SECONDS.start(),
                        TOKEN_LIFETIME_SECONDS.end()
                    ),
                );
                DEFAULT_TOKEN_LIFETIME
            }
        },
    };
    let listen = i.listen.as_ref().and_then(|l| match l.get_ref().parse() {
        Ok(addr) => {
            if tls.is_none() {
                problems.at(
                    l.span(),
                    "issuer.listen: needs the [tls] section (its certificate and key serve discovery over HTTPS)",
                );
            }
            Some(addr)
        }
        Err(_) => {
            problems.at(
                l.span(),
                format!(
                    "issuer.listen: `{}` is not an IP address and port such as 0.0.0.0:8443",
                    l.get_ref()
                ),
            );
            None
        }
    });
    let config = IssuerConfig {
        url: i.url.get_ref().clone(),
        key_files,
        active_key_file,
        audience: i
            .audience
            .as_ref()
            .map_or_else(|| DEFAULT_AUDIENCE.to_owned(), |a| a.get_ref().clone()),
        default: i.default.unwrap_or(false),
        token_lifetime: lifetime,
        listen,
    };
    // The keys themselves: unreadable, not a key, too weak. Reported at the
    // key's line in the config (or the list's, for the set as a whole).
    let mut key_problems = false;
    for (f, path) in i.key_files.get_ref().iter().zip(&config.key_files) {
        let single = IssuerConfig {
            key_files: vec![path.clone()],
            active_key_file: None,
            ..config.clone()
        };
        if let Err((_, reason)) = crate::issuer::load_keys(&single) {
            key_problems = true;
            problems.at(
                f.span(),
                format!("issuer.key_files: `{}`: {reason}", path.display()),
            );
        }
    }
    if !key_problems
        && !config.key_files.is_empty()
        && let Err((file, reason)) = crate::issuer::load_keys(&config)
    {
        let span = i
            .key_files
            .get_ref()
            .iter()
            .find(|f| resolve(base, f.get_ref()) == file)
            .map_or(i.key_files.span(), |f| f.span());
        problems.at(
            span,
            format!("issuer.key_files: `{}`: {reason}", file.display()),
        );
    }
    config
}

fn console(
    problems: &mut Problems<'_>,
    section: &Spanned<RawConsole>,
    config_path: &Path,
    taken: &[Option<SocketAddr>],
) -> ConsoleConfig {
    let c = section.get_ref();
    let defaults = ConsoleConfig::default();
    let listen = match &c.listen {
        None => defaults.listen,
        Some(v) => match v.get_ref().parse::<SocketAddr>() {
            Ok(addr) => {
                if addr.port() != 0 && taken.contains(&Some(addr)) {
                    problems.at(
                        v.span(),
                        "console.listen: must differ from the other listeners (server, tls, admin, policy_admin)",
                    );
                }
                addr
            }
            Err(_) => {
                problems.at(
                    v.span(),
                    format!(
                        "console.listen: `{}` is not an IP address and port such as 127.0.0.1:9465",
                        v.get_ref()
                    ),
                );
                defaults.listen
            }
        },
    };
    let text = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.get_ref().trim().to_owned());
    let list =
        |problems: &mut Problems<'_>, key: &str, v: &Option<Spanned<Vec<Spanned<String>>>>| {
            v.as_ref()
                .map(|v| strings(problems, key, v))
                .unwrap_or_default()
        };
    let base = config_path.parent().unwrap_or(Path::new(""));
    let csrf_secret_file = c.csrf_secret_file.as_ref().map(|v| {
        let file = base.join(v.get_ref());
        if v.get_ref().trim().is_empty() {
            problems.at(v.span(), "console.csrf_secret_file: a path is required");
        } else if let Err(reason) = tokenbridge_console::config::read_csrf_secret(&file) {
            problems.at(
                v.span(),
                format!("console.csrf_secret_file: `{}` {reason}", file.display()),
            );
        }
        file
    });
    let config = ConsoleConfig {
        listen,
        iap_audience: text(&c.iap_audience),
        iap_jwks_uri: text(&c.iap_jwks_uri).unwrap_or(defaults.iap_jwks_uri),
        iap_issuer: text(&c.iap_issuer).unwrap_or(defaults.iap_issuer),
        viewers: list(problems, "console.viewers", &c.viewers),
        admins: list(problems, "console.admins", &c.admins),
        csrf_secret_file,
    };
    // The console's own rules, at the line of the key the problem names
    // (the section's, for a key left at its default).
    if let Err(reason) = config.check() {
        let key_span = |key: &str| -> Option<std::ops::Range<usize>> {
            match key {
                "listen" => c.listen.as_ref().map(Spanned::span),
                "iap_audience" => c.iap_audience.as_ref().map(Spanned::span),
                "iap_jwks_uri" => c.iap_jwks_uri.as_ref().map(Spanned::span),
                "iap_issuer" => c.iap_issuer.as_ref().map(Spanned::span),
                "viewers" => c.viewers.as_ref().map(Spanned::span),
                "admins" => c.admins.as_ref().map(Spanned::span),
                _ => None,
            }
        };
        let span = reason
            .strip_prefix("console.")
            .and_then(|rest| {
                rest.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .next()
            })
            .and_then(key_span)
            .unwrap_or_else(|| section.span());
        problems.at(span, reason);
    }
    config
}

fn audit(problems: &mut Problems<'_>, a: &RawAudit, config_path: &Path) -> AuditConfig {
    let base = config_path.parent().unwrap_or(Path::new(""));
    let sink = match a.sink.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("stdout", _)) => AuditSink::Stdout,
        Some(("stderr", _)) => AuditSink::Stderr,
        Some(("file", span)) => match &a.path {
            Some(p) if !p.get_ref().trim().is_empty() => AuditSink::File(base.join(p.get_ref())),
            Some(p) => {
                problems.at(p.span(), "audit.path: a path is required");
                AuditSink::Stdout
            }
            None => {
                problems.at(span, "audit.sink: `file` needs audit.path");
                AuditSink::Stdout
            }
        },
        Some((other, span)) => {
            problems.at(
                span,
                format!("audit.sink: `{other}` is not one of stdout, stderr, file"),
            );
            AuditSink::Stdout
        }
    };
    if let Some(p) = &a.path
        && a.sink.as_ref().map(|v| v.get_ref().as_str()) != Some("file")
    {
        problems.at(p.span(), "audit.path: set, but audit.sink is not `file`");
    }
    let gcp_project_id = a.gcp_project_id.as_ref().map(|v| {
        let id = v.get_ref();
        let ok = (6..=30).contains(&id.len())
            && id.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b':' || b == b'.'
            });
        if !ok {
            problems.at(
                v.span(),
                format!("audit.gcp_project_id: `{id}` is not a Google Cloud project ID"),
            );
        }
        id.clone()
    });
    AuditConfig {
        sink,
        gcp_project_id,
    }
}

fn telemetry(problems: &mut Problems<'_>, t: &RawTelemetry) -> TelemetryConfig {
    let defaults = TelemetryConfig::default();
    let otlp_endpoint = t.otlp_endpoint.as_ref().map(|v| {
        match reqwest::Url::parse(v.get_ref()) {
            Ok(url) if url.scheme() == "http" && url.host_str().is_some() => {}
            Ok(url) if url.scheme() == "https" => problems.at(
                v.span(),
                format!(
                    "telemetry.otlp_endpoint: `{}`: https is not supported; send to a collector on the node or in the pod over http",
                    v.get_ref()
                ),
            ),
            _ => problems.at(
                v.span(),
                format!(
                    "telemetry.otlp_endpoint: `{}` is not a URL such as http://127.0.0.1:4317",
                    v.get_ref()
                ),
            ),
        }
        v.get_ref().clone()
    });
    let sampling_ratio = match &t.sampling_ratio {
        None => defaults.sampling_ratio,
        Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            problems.at(
                v.span(),
                format!(
                    "telemetry.sampling_ratio: {} is outside 0.0..=1.0",
                    v.get_ref()
                ),
            );
            defaults.sampling_ratio
        }
    };
    let service_name = match &t.service_name {
        None => defaults.service_name,
        Some(v) if v.get_ref().trim().is_empty() => {
            problems.at(v.span(), "telemetry.service_name: empty value");
            defaults.service_name
        }
        Some(v) => v.get_ref().clone(),
    };
    TelemetryConfig {
        otlp_endpoint,
        sampling_ratio,
        service_name,
    }
}

fn region_ok(region: &str) -> bool {
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn fallback_regions(problems: &mut Problems<'_>, a: &RawAws) -> Vec<FallbackRegion> {
    let Some(regions) = &a.fallback_regions else {
        if let Some(endpoints) = &a.fallback_sts_endpoints {
            problems.at(
                endpoints.span(),
                "aws.fallback_sts_endpoints: set without aws.fallback_regions",
            );
        }
        return Vec::new();
    };
    let names = strings(problems, "aws.fallback_regions", regions);
    for item in regions.get_ref() {
        let name = item.get_ref();
        if !name.trim().is_empty() && !region_ok(name) {
            problems.at(
                item.span(),
                format!(
                    "aws.fallback_regions: `{name}` is not an AWS region name such as us-west-2"
                ),
            );
        }
        if name == a.region.get_ref() {
            problems.at(
                item.span(),
                format!("aws.fallback_regions: `{name}` is the primary region"),
            );
        }
    }
    let endpoints: Vec<Option<String>> = match &a.fallback_sts_endpoints {
        None => vec![None; names.len()],
        Some(list) => {
            if list.get_ref().len() != regions.get_ref().len() {
                problems.at(
                    list.span(),
                    format!(
                        "aws.fallback_sts_endpoints: {} endpoints for {} fallback regions; give one per region",
                        list.get_ref().len(),
                        regions.get_ref().len()
                    ),
                );
            }
            list.get_ref()
                .iter()
                .map(|v| {
                    if let Err(reason) = check_upstream_url(v.get_ref()) {
                        problems.at(v.span(), format!("aws.fallback_sts_endpoints: {reason}"));
                    }
                    Some(v.get_ref().clone())
                })
                .collect()
        }
    };
    names
        .into_iter()
        .zip(endpoints)
        .map(|(region, sts_endpoint)| FallbackRegion {
            region,
            sts_endpoint,
        })
        .collect()
}

/// `PREFIX_requests_per_second` and `PREFIX_burst` (e.g. `limits.per_peer`)
/// as a rate; `None` when the rate is 0 (off).
fn rate(
    problems: &mut Problems<'_>,
    prefix: &str,
    per_second: &Option<Spanned<i64>>,
    burst: &Option<Spanned<i64>>,
    default: Option<Rate>,
) -> Option<Rate> {
    let default_rate = default.map_or(0, |r| u64::from(r.per_second.get()));
    let default_burst = default.map_or(1, |r| u64::from(r.burst.get()));
    let per_second = number(
        problems,
        &format!("{prefix}_requests_per_second"),
        per_second,
        default_rate,
        0..=1_000_000,
        "requests per second",
    );
    let burst = number(
        problems,
        &format!("{prefix}_burst"),
        burst,
        default_burst,
        1..=1_000_000,
        "requests",
    );
    Rate::new(
        u32::try_from(per_second).unwrap_or(u32::MAX),
        u32::try_from(burst).unwrap_or(u32::MAX),
    )
}

fn limits(problems: &mut Problems<'_>, l: &RawLimits) -> LimitsConfig {
    let d = LimitsConfig::default();
    LimitsConfig {
        max_concurrent_requests: usize::try_from(number(
            problems,
            "limits.max_concurrent_requests",
            &l.max_concurrent_requests,
            d.max_concurrent_requests as u64,
            1..=1_000_000,
            "requests",
        ))
        .unwrap_or(d.max_concurrent_requests),
        request_timeout: millis(
            problems,
            "limits.request_timeout_ms",
            &l.request_timeout_ms,
            d.request_timeout.as_millis() as u64,
            100..=600_000,
        ),
        max_request_bytes: usize::try_from(number(
            problems,
            "limits.max_request_bytes",
            &l.max_request_bytes,
            d.max_request_bytes as u64,
            256..=4 * 1024 * 1024,
            "bytes",
        ))
        .unwrap_or(d.max_request_bytes),
        max_header_list_bytes: u32::try_from(number(
            problems,
            "limits.max_header_list_bytes",
            &l.max_header_list_bytes,
            u64::from(d.max_header_list_bytes),
            // A 16 KiB token and the usual gRPC headers must fit.
            20 * 1024..=1024 * 1024,
            "bytes",
        ))
        .unwrap_or(d.max_header_list_bytes),
        max_concurrent_streams: u32::try_from(number(
            problems,
            "limits.max_concurrent_streams",
            &l.max_concurrent_streams,
            u64::from(d.max_concurrent_streams),
            1..=10_000,
            "streams per connection",
        ))
        .unwrap_or(d.max_concurrent_streams),
        per_peer: rate(
            problems,
            "limits.per_peer",
            &l.per_peer_requests_per_second,
            &l.per_peer_burst,
            d.per_peer,
        ),
        per_peer_exempt_loopback: l
            .per_peer_exempt_loopback
            .unwrap_or(d.per_peer_exempt_loopback),
        per_subject: rate(
            problems,
            "limits.per_subject",
            &l.per_subject_requests_per_second,
            &l.per_subject_burst,
            d.per_subject,
        ),
    }
}

/// Non-empty, distinct strings; problems for the others.
fn strings(
    problems: &mut Problems<'_>,
    key: &str,
    list: &Spanned<Vec<Spanned<String>>>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in list.get_ref() {
        let value = item.get_ref();
        if value.trim().is_empty() {
            problems.at(item.span(), format!("{key}: empty value"));
        } else if out.contains(value) {
            problems.at(item.span(), format!("{key}: `{value}` is listed twice"));
        } else {
            out.push(value.clone());
        }
    }
    out
}

fn number(
    problems: &mut Problems<'_>,
    key: &str,
    value: &Option<Spanned<i64>>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    unit: &str,
) -> u64 {
    let Some(v) = value else { return default };
    match u64::try_from(*v.get_ref()) {
        Ok(n) if range.contains(&n) => n,
        _ => {
            problems.at(
                v.span(),
                format!(
                    "{key}: {} is outside {}..={} {unit}",
                    v.get_ref(),
                    range.start(),
                    range.end()
                ),
            );
            default
        }
    }
}

fn seconds(
    problems: &mut Problems<'_>,
    key: &str,
    value: &Option<Spanned<i64>>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Duration {
    Duration::from_secs(number(problems, key, value, default, range, "seconds"))
}

fn millis(
    problems: &mut Problems<'_>,
    key: &str,
    value: &Option<Spanned<i64>>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Duration {
    Duration::from_millis(number(problems, key, value, default, range, "milliseconds"))
}

/// Upstreams are reached over HTTPS; plain HTTP only on loopback (local
/// emulators and sidecars), so a typo cannot send tokens in the clear.
fn check_upstream_url(value: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(value).map_err(|e| format!("`{value}` is not a URL ({e})"))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "`{value}` uses plain http to a non-loopback host; use https"
        )),
        other => Err(format!("`{value}` has scheme `{other}`; use https")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_hosts_are_read_as_sqlx_reads_them() {
        let remote = |u: &str| unverified_remote_host(u);
        assert_eq!(
            remote("postgres://tb@db.internal/tb?sslmode=require").as_deref(),
            Some("db.internal")
        );
        assert_eq!(
            remote("postgres://tb@db.internal/tb?sslmode=verify-ca"),
            None
        );
        assert_eq!(remote("postgres://tb@[::1]:5432/tb"), None);
        assert_eq!(
            remote("postgres://tb@localhost/tb?host=/var/run/postgresql"),
            None
        );
        assert_eq!(
            remote("postgres://tb@db.internal/tb?host=/var/run/postgresql"),
            None
        );
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:50051"

[google]
audiences = ["https://tokenbridge.example.com"]

[aws]
region = "us-east-1"
sts_endpoint = "http://127.0.0.1:5000"

[policy]
file = "policy.toml"
"#;

    #[test]
    fn parses_with_defaults() {
        let c = Config::from_toml_str(GOOD, Path::new("/etc/tb/config.toml")).unwrap();
        assert_eq!(c.server.listen.port(), 50051);
        assert_eq!(c.google.jwks_uri, DEFAULT_JWKS_URI);
        assert_eq!(c.google.issuers, DEFAULT_ISSUERS);
        assert_eq!(c.aws.sts_timeout, Duration::from_millis(3000));
        assert_eq!(
            c.policy_file.as_deref(),
            Some(Path::new("/etc/tb/policy.toml"))
        );
        assert!(c.store.is_none() && c.policy_admin.is_none());
    }

    #[test]
    fn console_parses_and_its_problems_have_lines() {
        let c = Config::from_toml_str(GOOD, Path::new("/etc/tb/config.toml")).unwrap();
        assert!(c.console.is_none(), "off unless configured");
        let src = format!("{GOOD}\n[console]\n");
        let c = Config::from_toml_str(&src, Path::new("/etc/tb/config.toml")).unwrap();
        assert_eq!(
            c.console.unwrap(),
            ConsoleConfig::default(),
            "an empty section: loopback on 9465"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("csrf.key"), [7u8; 32]).unwrap();
        let iap = format!(
            "{GOOD}\n[console]\nlisten = \"0.0.0.0:9465\"\n\
             iap_audience = \"/projects/1/global/backendServices/2\"\n\
             admins = [\"ops@example.com\"]\nviewers = [\"dev@example.com\"]\n\
             csrf_secret_file = \"csrf.key\"\n"
        );
        let c = Config::from_toml_str(&iap, &dir.path().join("config.toml"))
            .unwrap()
            .console
            .unwrap();
        assert_eq!(c.listen.port(), 9465);
        assert_eq!(c.admins, ["ops@example.com"]);
        assert_eq!(c.csrf_secret_file, Some(dir.path().join("csrf.key")));

        let problems = |src: &str| {
            Config::from_toml_str(src, &dir.path().join("c.toml"))
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        };
        // `[console]` is line 15, its first key line 16.
        let open = problems(&format!("{GOOD}\n[console]\nlisten = \"0.0.0.0:9465\"\n"));
        assert!(
            open.contains("c.toml:16: console.listen 0.0.0.0:9465 is not a loopback address"),
            "{open}"
        );
        let nobody = problems(&format!(
            "{GOOD}\n[console]\niap_audience = \"/projects/1/apps/p\"\n"
        ));
        assert!(nobody.contains("c.toml:15:"), "{nobody}");
        assert!(nobody.contains("both empty"), "{nobody}");
        let bad = problems(&format!(
            "{GOOD}\n[console]\nlisten = \"127.0.0.1:9464\"\niap_audience = \"123\"\n\
             admins = [\"ops@example.com\"]\ncsrf_secret_file = \"missing.key\"\nport = 1\n"
        ));
        assert!(bad.contains("unknown field `port`"), "{bad}");
        let bad = problems(&format!(
            "{GOOD}\n[console]\nlisten = \"127.0.0.1:9464\"\niap_audience = \"123\"\n\
             admins = [\"ops@example.com\"]\ncsrf_secret_file = \"missing.key\"\n"
        ));
        assert!(
            bad.contains("c.toml:16: console.listen: must differ"),
            "the admin listener's port: {bad}"
        );
        assert!(
            bad.contains("c.toml:17: console.iap_audience \"123\" is not an IAP audience"),
            "{bad}"
        );
        assert!(
            bad.contains("c.toml:19: console.csrf_secret_file:") && bad.contains("cannot be read"),
            "{bad}"
        );
    }

    /// GOOD without its `[policy]` table.
    fn without_policy() -> String {
        GOOD.replace("[policy]\nfile = \"policy.toml\"\n", "")
    }

    #[test]
    fn store_and_policy_admin_parse() {
        let src = format!(
            "{}\n[store]\nurl = \"sqlite://data/policy.db\"\n\n[policy_admin]\n\
             listen = \"127.0.0.1:50052\"\naudiences = [\"https://admin.example.com\"]\n\
             principals = [\"ops@p.iam.gserviceaccount.com\", \"123456\"]\n",
            without_policy()
        );
        let c = Config::from_toml_str(&src, Path::new("/etc/tb/config.toml")).unwrap();
        assert_eq!(c.policy_file, None);
        let store = c.store.unwrap();
        assert_eq!(store.url, "sqlite:///etc/tb/data/policy.db");
        let admin = c.policy_admin.unwrap();
        assert_eq!(admin.listen.port(), 50052);
        assert_eq!(admin.principals.len(), 2);

        let pg = format!(
            "{}\n[store]\nurl = \"postgres://tb:hunter2@db/tb?sslmode=verify-full\"\nschema = \"tokenbridge\"\n",
            without_policy()
        );
        let c = Config::from_toml_str(&pg, Path::new("/etc/tb/config.toml")).unwrap();
        let shown = format!("{:?}", c.store);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://"), "{shown}");
        assert_eq!(c.store.unwrap().schema.as_deref(), Some("tokenbridge"));
    }

    #[test]
    fn bad_store_and_policy_admin_keys_are_problems_with_lines() {
        let problems = |src: &str| {
            Config::from_toml_str(src, Path::new("c.toml"))
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        };
        // Neither source, and both.
        let none = problems(&without_policy());
        assert!(none.contains("policy.file: required"), "{none}");
        let both = problems(&format!("{GOOD}\n[store]\nurl = \"sqlite://p.db\"\n"));
        assert!(both.contains("c.toml:16: store.url: give either"), "{both}");
        // A URL of another kind, with a password that must not be echoed.
        let odd = problems(&format!(
            "{}\n[store]\nurl = \"mysql://u:s3cret@h/db\"\n",
            without_policy()
        ));
        assert!(odd.contains("store.url: use sqlite://PATH"), "{odd}");
        assert!(!odd.contains("s3cret"), "{odd}");
        let schema = problems(&format!(
            "{}\n[store]\nurl = \"postgres://h/db\"\nschema = \"Bad-Name\"\n",
            without_policy()
        ));
        assert!(schema.contains("store.schema: `Bad-Name`"), "{schema}");
        // The admin API: an exchange audience, a bad principal, clashing ports.
        let admin = problems(&format!(
            "{GOOD}\n[policy_admin]\nlisten = \"127.0.0.1:50051\"\n\
             audiences = [\"https://tokenbridge.example.com\"]\nprincipals = [\"not a principal\"]\n"
        ));
        assert!(
            admin.contains("c.toml:16: policy_admin.listen: must differ"),
            "{admin}"
        );
        assert!(
            admin.contains("c.toml:17: policy_admin.audiences: `https://tokenbridge.example.com` is also an exchange audience"),
            "{admin}"
        );
        assert!(
            admin.contains("c.toml:18: policy_admin.principals: `not a principal`"),
            "{admin}"
        );
        let empty = problems(&format!(
            "{GOOD}\n[policy_admin]\nlisten = \"127.0.0.1:50052\"\naudiences = []\nprincipals = []\n"
        ));
        assert!(empty.contains("at least one audience"), "{empty}");
        assert!(empty.contains("at least one principal"), "{empty}");
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let src = r#"[server]
listen = "nowhere"

[google]
audiences = []
jwks_uri = "http://example.com/certs"

[aws]
region = "US East"
sts_timeout_ms = 5

[policy]
file = "p.toml"
"#;
        let problems = Config::from_toml_str(src, Path::new("c.toml")).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            shown
                .iter()
                .any(|p| p.starts_with("c.toml:2: server.listen")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|p| p.starts_with("c.toml:5: google.audiences")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|p| p.starts_with("c.toml:6: google.jwks_uri") && p.contains("https")),
            "{shown:?}"
        );
        assert!(
            shown.iter().any(|p| p.starts_with("c.toml:9: aws.region")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|p| p.starts_with("c.toml:10: aws.sts_timeout_ms")),
            "{shown:?}"
        );
        assert_eq!(problems.len(), 5, "{shown:?}");
    }

    #[test]
    fn unknown_keys_and_syntax_errors_have_lines() {
        let src = "[google]\naudiences = [\"a\"]\naudience = \"typo\"\n";
        let p = Config::from_toml_str(src, Path::new("c.toml")).unwrap_err();
        assert_eq!(p[0].line, Some(3), "{p:?}");
        assert!(p[0].reason.contains("audience"), "{p:?}");

        let p = Config::from_toml_str("[google\n", Path::new("c.toml")).unwrap_err();
        assert_eq!(p[0].line, Some(1), "{p:?}");
    }

    #[test]
    fn hardening_keys_have_sane_defaults() {
        let c = Config::from_toml_str(GOOD, Path::new("/etc/tb/config.toml")).unwrap();
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(c.google.jwks_stale_window, Duration::from_secs(86_400));
        assert!(c.aws.fallback_regions.is_empty());
        assert!(c.tls.is_none());
    }

    #[test]
    fn hardening_keys_parse() {
        let src = format!(
            "{GOOD}\n[limits]\nmax_concurrent_requests = 10\nrequest_timeout_ms = 1500\n\
             per_peer_requests_per_second = 0\nper_subject_requests_per_second = 5\n\
             per_subject_burst = 7\nper_peer_exempt_loopback = false\n\n\
             [tls]\nlisten = \"0.0.0.0:50443\"\ncert_file = \"tls/cert.pem\"\n\
             key_file = \"/abs/key.pem\"\nclient_ca_file = \"ca.pem\"\n"
        )
        .replace(
            "sts_endpoint = \"http://127.0.0.1:5000\"",
            "sts_endpoint = \"http://127.0.0.1:5000\"\nfallback_regions = [\"us-west-2\", \"eu-west-1\"]\n\
             fallback_sts_endpoints = [\"http://127.0.0.1:5001\", \"https://sts.eu-west-1.amazonaws.com\"]",
        );
        let c = Config::from_toml_str(&src, Path::new("/etc/tb/config.toml")).unwrap();
        assert_eq!(c.limits.max_concurrent_requests, 10);
        assert_eq!(c.limits.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.limits.per_peer, None);
        assert_eq!(c.limits.per_subject, Rate::new(5, 7));
        assert!(!c.limits.per_peer_exempt_loopback);
        assert_eq!(c.aws.fallback_regions.len(), 2);
        assert_eq!(c.aws.fallback_regions[0].region, "us-west-2");
        assert_eq!(
            c.aws.fallback_regions[0].sts_endpoint.as_deref(),
            Some("http://127.0.0.1:5001")
        );
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file, Path::new("/etc/tb/tls/cert.pem"));
        assert_eq!(tls.key_file, Path::new("/abs/key.pem"));
        assert_eq!(
            tls.client_ca_file.as_deref(),
            Some(Path::new("/etc/tb/ca.pem"))
        );
        assert_eq!(tls.reload_interval, Duration::from_secs(10));
    }

    /// Issue 15, item 8: plaintext next to TLS, and a policy admin listener
    /// off loopback without TLS, are choices to state, not defaults.
    #[test]
    fn plaintext_next_to_tls_and_a_plaintext_admin_listener_must_be_chosen() {
        const TLS: &str =
            "\n[tls]\nlisten = \"0.0.0.0:50443\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
        let problems = |src: &str| {
            Config::from_toml_str(src, Path::new("c.toml"))
                .err()
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        };
        let public = GOOD.replace("127.0.0.1:50051", "0.0.0.0:50051");
        // Without [tls], plaintext on 0.0.0.0 is what there is.
        assert_eq!(problems(&public), "");
        // With it, it is a problem on server.listen's line...
        let shown = problems(&format!("{public}{TLS}"));
        assert!(
            shown.contains("c.toml:3: server.listen: 0.0.0.0:50051 would serve plaintext gRPC"),
            "{shown}"
        );
        // ...and on [tls]'s when server.listen is left to its default.
        let default_listen = GOOD.replace("listen = \"127.0.0.1:50051\"\n", "");
        let shown = problems(&format!("{default_listen}{TLS}"));
        assert!(
            shown.contains("server.listen: 0.0.0.0:50051 would serve plaintext"),
            "{shown}"
        );
        // Loopback, or the explicit choice, is fine.
        assert_eq!(problems(&format!("{GOOD}{TLS}")), "");
        let chosen = public.replace("[server]\n", "[server]\nallow_plaintext = true\n");
        assert_eq!(problems(&format!("{chosen}{TLS}")), "");

        // The policy admin listener off loopback without TLS.
        const ADMIN: &str = "\n[policy_admin]\nlisten = \"10.0.0.5:50052\"\n\
             audiences = [\"tokenbridge-admin\"]\nprincipals = [\"ops@example.com\"]\n";
        let shown = problems(&format!("{GOOD}{ADMIN}"));
        assert!(
            shown.contains("policy_admin.listen: 10.0.0.5:50052 is not a loopback address and the listener has no TLS"),
            "{shown}"
        );
        assert_eq!(
            problems(&format!("{GOOD}{ADMIN}allow_plaintext = true\n")),
            ""
        );
        assert_eq!(problems(&format!("{GOOD}{TLS}{ADMIN}tls = true\n")), "");
        assert_eq!(
            problems(&format!("{GOOD}{}", ADMIN.replace("10.0.0.5", "127.0.0.1"))),
            ""
        );
    }

    #[test]
    fn policy_admin_limits_parse_and_are_checked() {
        let c = Config::from_toml_str(
            &format!(
                "{GOOD}\n[policy_admin]\nlisten = \"127.0.0.1:50052\"\n\
                 audiences = [\"tokenbridge-admin\"]\nprincipals = [\"ops@example.com\"]\n\
                 max_concurrent_requests = 4\nrequest_timeout_ms = 2000\n\
                 max_request_bytes = 65536\nper_peer_requests_per_second = 0\n\
                 \n[limits]\nmax_concurrent_streams = 16\n"
            ),
            Path::new("c.toml"),
        )
        .unwrap();
        let p = c.policy_admin.unwrap();
        assert_eq!(p.limits.max_concurrent_requests, 4);
        assert_eq!(p.limits.request_timeout, Duration::from_millis(2000));
        assert_eq!(p.limits.max_request_bytes, 65536);
        assert_eq!(p.limits.per_peer, None);
        assert_eq!(c.limits.max_concurrent_streams, 16);
        let bad = Config::from_toml_str(
            &format!(
                "{GOOD}\n[policy_admin]\nlisten = \"127.0.0.1:50052\"\n\
                 audiences = [\"tokenbridge-admin\"]\nprincipals = [\"ops@example.com\"]\n\
                 max_concurrent_requests = 0\n"
            ),
            Path::new("c.toml"),
        )
        .unwrap_err();
        assert!(
            bad.iter().any(|p| p
                .to_string()
                .contains("policy_admin.max_concurrent_requests: 0 is outside")),
            "{bad:?}"
        );
    }

    #[test]
    fn bad_hardening_keys_are_problems_with_lines() {
        let src = format!(
            "{GOOD}\n[limits]\nmax_header_list_bytes = 100\nper_peer_burst = 0\n\n\
             [tls]\nlisten = \"127.0.0.1:50051\"\ncert_file = \"\"\nkey_file = \"k\"\n"
        )
        .replace(
            "sts_endpoint = \"http://127.0.0.1:5000\"",
            "fallback_regions = [\"us-east-1\", \"Mars\"]\nfallback_sts_endpoints = [\"http://10.0.0.1\"]",
        );
        let problems = Config::from_toml_str(&src, Path::new("c.toml")).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for needle in [
            "aws.fallback_regions: `us-east-1` is the primary region",
            "aws.fallback_regions: `Mars` is not an AWS region",
            "aws.fallback_sts_endpoints: 1 endpoints for 2 fallback regions",
            "aws.fallback_sts_endpoints: `http://10.0.0.1` uses plain http",
            "limits.max_header_list_bytes: 100 is outside",
            "limits.per_peer_burst: 0 is outside",
            "tls.listen: must differ from server.listen",
            "tls.cert_file: a path is required",
        ] {
            assert!(
                shown
                    .iter()
                    .any(|p| p.starts_with("c.toml:") && p.contains(needle)),
                "{needle:?} in {shown:?}"
            );
        }
    }

    #[test]
    fn observability_keys_default_and_parse() {
        let c = Config::from_toml_str(GOOD, Path::new("/etc/tb/config.toml")).unwrap();
        assert_eq!(c.admin.listen, Some(DEFAULT_LISTEN));
        assert_eq!(c.audit, AuditConfig::default());
        assert_eq!(c.audit.sink, AuditSink::Stdout);
        assert_eq!(c.telemetry, TelemetryConfig::default());
        assert_eq!(c.telemetry.otlp_endpoint, None);

        let src = format!(
            "{GOOD}\n[admin]\nlisten = \"0.0.0.0:9464\"\n\n[audit]\nsink = \"file\"\n\
             path = \"audit/a.jsonl\"\ngcp_project_id = \"my-project\"\n\n[telemetry]\n\
             otlp_endpoint = \"http://10.0.0.7:4317\"\nsampling_ratio = 0.25\nservice_name = \"tb\"\n"
        );
        let c = Config::from_toml_str(&src, Path::new("/etc/tb/config.toml")).unwrap();
        assert_eq!(c.admin.listen, Some("0.0.0.0:9464".parse().unwrap()));
        assert_eq!(
            c.audit.sink,
            AuditSink::File("/etc/tb/audit/a.jsonl".into())
        );
        assert_eq!(c.audit.gcp_project_id.as_deref(), Some("my-project"));
        assert_eq!(
            c.telemetry.otlp_endpoint.as_deref(),
            Some("http://10.0.0.7:4317")
        );
        assert_eq!(c.telemetry.sampling_ratio, 0.25);
        assert_eq!(c.telemetry.service_name, "tb");

        let off = format!("{GOOD}\n[admin]\nenabled = false\n");
        let c = Config::from_toml_str(&off, Path::new("c.toml")).unwrap();
        assert_eq!(c.admin.listen, None);
        let stderr = format!("{GOOD}\n[audit]\nsink = \"stderr\"\n");
        let c = Config::from_toml_str(&stderr, Path::new("c.toml")).unwrap();
        assert_eq!(c.audit.sink, AuditSink::Stderr);
    }

    #[test]
    fn bad_observability_keys_are_problems_with_lines() {
        let src = format!(
            "{GOOD}\n[admin]\nlisten = \"nowhere\"\n\n[audit]\nsink = \"syslog\"\n\
             path = \"a.jsonl\"\ngcp_project_id = \"Not A Project\"\n\n[telemetry]\n\
             otlp_endpoint = \"https://collector.example:4317\"\nsampling_ratio = 1.5\n\
             service_name = \" \"\n"
        );
        let problems = Config::from_toml_str(&src, Path::new("c.toml")).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for needle in [
            "admin.listen: `nowhere` is not an IP address and port",
            "audit.sink: `syslog` is not one of stdout, stderr, file",
            "audit.path: set, but audit.sink is not `file`",
            "audit.gcp_project_id: `Not A Project` is not a Google Cloud project ID",
            "telemetry.otlp_endpoint: `https://collector.example:4317`: https is not supported",
            "telemetry.sampling_ratio: 1.5 is outside 0.0..=1.0",
            "telemetry.service_name: empty value",
        ] {
            assert!(
                shown
                    .iter()
                    .any(|p| p.starts_with("c.toml:") && p.contains(needle)),
                "{needle:?} in {shown:?}"
            );
        }
        assert_eq!(problems.len(), 7, "{shown:?}");

        let file_without_path = format!("{GOOD}\n[audit]\nsink = \"file\"\n");
        let problems = Config::from_toml_str(&file_without_path, Path::new("c.toml")).unwrap_err();
        assert!(
            problems[0].reason.contains("needs audit.path"),
            "{problems:?}"
        );
        let same_port = format!("{GOOD}\n[admin]\nlisten = \"127.0.0.1:50051\"\n");
        let problems = Config::from_toml_str(&same_port, Path::new("c.toml")).unwrap_err();
        assert!(
            problems[0]
                .reason
                .contains("must differ from server.listen"),
            "{problems:?}"
        );
    }

    #[test]
    fn upstream_urls_need_https_off_loopback() {
        assert!(check_upstream_url("https://sts.us-east-1.amazonaws.com").is_ok());
        assert!(check_upstream_url("http://127.0.0.1:5000").is_ok());
        assert!(check_upstream_url("http://[::1]:5000").is_ok());
        assert!(check_upstream_url("http://localhost:5000").is_ok());
        assert!(check_upstream_url("http://10.0.0.1:5000").is_err());
        assert!(check_upstream_url("ftp://127.0.0.1").is_err());
        assert!(check_upstream_url("not a url").is_err());
    }
}
