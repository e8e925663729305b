//! The service configuration file (TOML), parsed purely and validated in one
//! pass that reports every problem with its file and line.
//!
//! Keys (see the README's configuration reference for the full story):
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `server.listen` | `0.0.0.0:50051` | gRPC, health and reflection listener |
//! | `server.drain_timeout_seconds` | `25` | on SIGTERM, how long in-flight calls may take to finish |
//! | `google.audiences` | required | accepted `aud` values |
//! | `google.jwks_uri` | `https://www.googleapis.com/oauth2/v3/certs` | Google's signing keys |
//! | `google.issuers` | both Google issuers | accepted `iss` values |
//! | `google.jwks_refetch_cooldown_seconds` | `30` | at most one unknown-`kid` refetch per this many seconds |
//! | `google.jwks_timeout_ms` | `2000` | one JWKS fetch, connect to last byte |
//! | `google.verified_token_cache_entries` | `100000` | verified tokens remembered until `exp` (0: off) |
//! | `aws.region` | required | STS regional endpoint |
//! | `aws.sts_endpoint` | regional endpoint | override: VPC endpoint or a local emulator |
//! | `aws.sts_timeout_ms` | `3000` | one `AssumeRoleWithWebIdentity`, retries included |
//! | `policy.file` | required | the policy table; relative to the config file's folder |
//! | `cache.enabled` | `true` | cache credentials per (sub, role, duration) |
//! | `cache.max_entries` | `100000` | most credentials cached |
//! | `cache.margin_seconds` | `1200` | never hand out credentials with less life left |
//! | `cache.refresh_window_seconds` | `600` | refresh in the background this long before the margin |
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

use crate::{
    cache::CacheConfig,
    diag::{Problem, Problems},
};

/// Google's production JWKS endpoint.
pub const DEFAULT_JWKS_URI: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// The issuers Google puts in ID tokens.
pub const DEFAULT_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];

/// The validated service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[google]`.
    pub google: GoogleConfig,
    /// `[aws]`.
    pub aws: AwsConfig,
    /// `[policy]`: where the policy table comes from.
    pub policy_file: PathBuf,
    /// `[cache]`: the credentials cache.
    pub cache: CacheConfig,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the gRPC listener.
    pub listen: SocketAddr,
    /// On SIGTERM, how long in-flight calls may take to finish.
    pub drain_timeout: Duration,
}

/// `[google]`: how ID tokens are verified.
#[derive(Debug, Clone)]
pub struct GoogleConfig {
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Where Google's signing keys are fetched from.
    pub jwks_uri: String,
    /// Accepted `iss` values.
    pub issuers: Vec<String>,
    /// Minimum time between two refetches caused by unknown `kid`s.
    pub jwks_refetch_cooldown: Duration,
    /// Time limit of one JWKS fetch.
    pub jwks_timeout: Duration,
    /// Most verified tokens remembered (0: verify every time).
    pub verified_token_cache_entries: u64,
}

/// `[aws]`: how STS is called.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    /// STS region.
    pub region: String,
    /// Endpoint override (VPC endpoint, local emulator).
    pub sts_endpoint: Option<String>,
    /// Time limit of one `AssumeRoleWithWebIdentity`, retries included.
    pub sts_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    google: RawGoogle,
    aws: RawAws,
    policy: RawPolicyRef,
    #[serde(default)]
    cache: RawCache,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    enabled: Option<bool>,
    max_entries: Option<Spanned<i64>>,
    margin_seconds: Option<Spanned<i64>>,
    refresh_window_seconds: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    drain_timeout_seconds: Option<Spanned<i64>>,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAws {
    region: Spanned<String>,
    sts_endpoint: Option<Spanned<String>>,
    sts_timeout_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyRef {
    file: Spanned<String>,
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

        let a = &raw.aws;
        let region = a.region.get_ref();
        let region_ok = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            problems.at(
                a.region.span(),
                format!("aws.region: `{region}` is not an AWS region name such as us-east-1"),
            );
        }
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

        let policy_rel = raw.policy.file.get_ref();
        if policy_rel.trim().is_empty() {
            problems.at(raw.policy.file.span(), "policy.file: a path is required");
        }
        let policy_file = path.parent().unwrap_or(Path::new("")).join(policy_rel);

        let c = &raw.cache;
        let defaults = CacheConfig::default();
        let cache = CacheConfig {
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

        if !problems.found.is_empty() {
            return Err(problems.found);
        }
        Ok(Config {
            server: ServerConfig {
                listen,
                drain_timeout: drain,
            },
            google: GoogleConfig {
                audiences,
                jwks_uri,
                issuers,
                jwks_refetch_cooldown: cooldown,
                jwks_timeout,
                verified_token_cache_entries,
            },
            aws: AwsConfig {
                region: region.clone(),
                sts_endpoint: a.sts_endpoint.as_ref().map(|v| v.get_ref().clone()),
                sts_timeout,
            },
            policy_file,
            cache,
        })
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
        assert_eq!(c.policy_file, Path::new("/etc/tb/policy.toml"));
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
