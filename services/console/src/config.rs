//! `[console]`: where the console listens and who may look.
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `listen` | `127.0.0.1:9465` | the console's HTTP listener; without `iap_audience` it must be a loopback address |
//! | `iap_audience` | none | the IAP audience, `/projects/NUMBER/global/backendServices/ID` or `/projects/NUMBER/apps/PROJECT_ID`; set: every page needs a valid `x-goog-iap-jwt-assertion` |
//! | `iap_jwks_uri` | `https://www.gstatic.com/iap/verify/public_key-jwk` | IAP's public keys (HTTPS; plain HTTP only to a loopback address, for tests) |
//! | `iap_issuer` | `https://cloud.google.com/iap` | the assertions' `iss` |
//! | `viewers` | `[]` | emails that may look (with IAP) |
//! | `admins` | `[]` | emails that may look, deny and allow (with IAP) |
//! | `csrf_secret_file` | none | a file of at least 32 bytes keying the forms' CSRF tokens; set the same file on every replica behind one load balancer (without it each process picks a random key, and a form served by one replica is refused by another) |

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use serde::Deserialize;

/// The default `listen`.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9465);
/// The default `iap_jwks_uri`.
pub const DEFAULT_IAP_JWKS_URI: &str = "https://www.gstatic.com/iap/verify/public_key-jwk";
/// The default `iap_issuer`.
pub const DEFAULT_IAP_ISSUER: &str = "https://cloud.google.com/iap";
/// Shortest `csrf_secret_file` accepted, in bytes.
pub const CSRF_SECRET_MIN_BYTES: usize = crate::csrf::MIN_SECRET_BYTES;
/// Longest email accepted in `viewers` and `admins`.
const MAX_EMAIL: usize = 254;

/// `[console]` settings; see the [module docs](self) for each key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The console's HTTP listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// IAP's audience for this console; `None`: no IAP, loopback only.
    #[serde(default)]
    pub iap_audience: Option<String>,
    /// Where IAP publishes its keys.
    #[serde(default = "default_jwks_uri")]
    pub iap_jwks_uri: String,
    /// The `iss` of IAP's assertions.
    #[serde(default = "default_issuer")]
    pub iap_issuer: String,
    /// Emails that may look.
    #[serde(default)]
    pub viewers: Vec<String>,
    /// Emails that may look, deny and allow.
    #[serde(default)]
    pub admins: Vec<String>,
    /// The key of the forms' CSRF tokens, shared by replicas.
    #[serde(default)]
    pub csrf_secret_file: Option<PathBuf>,
}

/// Reads `csrf_secret_file`: the key, or why it cannot be used (unreadable,
/// or shorter than [`CSRF_SECRET_MIN_BYTES`]).
pub fn read_csrf_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let secret = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    if secret.len() < CSRF_SECRET_MIN_BYTES {
        return Err(format!(
            "holds {} bytes; at least {CSRF_SECRET_MIN_BYTES} are needed",
            secret.len()
        ));
    }
    Ok(secret)
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
}

fn default_jwks_uri() -> String {
    DEFAULT_IAP_JWKS_URI.to_owned()
}

fn default_issuer() -> String {
    DEFAULT_IAP_ISSUER.to_owned()
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            iap_audience: None,
            iap_jwks_uri: default_jwks_uri(),
            iap_issuer: default_issuer(),
            viewers: Vec::new(),
            admins: Vec::new(),
            csrf_secret_file: None,
        }
    }
}

impl ConsoleConfig {
    /// Checks the settings together; the error names the key and says what
    /// to do.
    pub fn check(&self) -> Result<(), String> {
        let Some(audience) = &self.iap_audience else {
            if !self.listen.ip().is_loopback() {
                return Err(format!(
                    "console.listen {} is not a loopback address: without console.iap_audience \
                     the console has no sign-in and serves loopback only (listen on 127.0.0.1, \
                     or put it behind Identity-Aware Proxy and set iap_audience)",
                    self.listen
                ));
            }
            if !self.viewers.is_empty() || !self.admins.is_empty() {
                return Err(
                    "console.viewers and console.admins need console.iap_audience: without IAP \
                     the console cannot tell people apart and everyone on loopback is an admin"
                        .to_owned(),
                );
            }
            return Ok(());
        };
        check_audience(audience)?;
        if self.viewers.is_empty() && self.admins.is_empty() {
            return Err(
                "console.viewers and console.admins are both empty: with IAP nobody could look; \
                 list at least one email"
                    .to_owned(),
            );
        }
        for (key, list) in [("viewers", &self.viewers), ("admins", &self.admins)] {
            for email in list {
                check_email(key, email)?;
            }
        }
        check_jwks_uri(&self.iap_jwks_uri)?;
        if self.iap_issuer.trim().is_empty() {
            return Err("console.iap_issuer is empty".to_owned());
        }
        Ok(())
    }
}

fn check_audience(audience: &str) -> Result<(), String> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let project_id = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b':' || b == b'.'
            })
    };
    let parts: Vec<&str> = audience.split('/').collect();
    let ok = match parts.as_slice() {
        ["", "projects", number, "global", "backendServices", id] => digits(number) && digits(id),
        ["", "projects", number, "apps", project] => digits(number) && project_id(project),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "console.iap_audience {audience:?} is not an IAP audience: expected \
             /projects/NUMBER/global/backendServices/ID or /projects/NUMBER/apps/PROJECT_ID"
        ))
    }
}

fn check_email(key: &str, email: &str) -> Result<(), String> {
    let valid = email.len() <= MAX_EMAIL
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(())
    } else {
        Err(format!("console.{key}: {email:?} is not an email"))
    }
}

fn check_jwks_uri(uri: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(uri)
        .map_err(|e| format!("console.iap_jwks_uri {uri:?} is not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "console.iap_jwks_uri {uri:?} must be an https URL (plain http only to a loopback address)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iap() -> ConsoleConfig {
        ConsoleConfig {
            listen: "0.0.0.0:9465".parse().unwrap(),
            iap_audience: Some("/projects/123/global/backendServices/456".into()),
            admins: vec!["ops@example.com".into()],
            ..ConsoleConfig::default()
        }
    }

    #[test]
    fn parses_with_defaults_and_refuses_unknown_keys() {
        let c: ConsoleConfig = toml_like(r#"{"admins": ["a@example.com"]}"#).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.iap_jwks_uri, DEFAULT_IAP_JWKS_URI);
        assert_eq!(c.iap_issuer, DEFAULT_IAP_ISSUER);
        let err = toml_like(r#"{"admin": ["a@example.com"]}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    fn toml_like(json: &str) -> Result<ConsoleConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn without_iap_only_loopback() {
        assert!(ConsoleConfig::default().check().is_ok());
        let c = ConsoleConfig {
            listen: "0.0.0.0:9465".parse().unwrap(),
            ..ConsoleConfig::default()
        };
        let err = c.check().unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        let c = ConsoleConfig {
            admins: vec!["a@example.com".into()],
            ..ConsoleConfig::default()
        };
        assert!(c.check().unwrap_err().contains("iap_audience"));
    }

    #[test]
    fn with_iap_needs_principals_and_a_real_audience() {
        assert_eq!(iap().check(), Ok(()));
        let apps = ConsoleConfig {
            iap_audience: Some("/projects/123/apps/my-project".into()),
            ..iap()
        };
        assert_eq!(apps.check(), Ok(()));
        let nobody = ConsoleConfig {
            admins: vec![],
            ..iap()
        };
        assert!(nobody.check().unwrap_err().contains("both empty"));
        for bad in [
            "123",
            "/projects/abc/global/backendServices/456",
            "/projects/123/global/backendServices/",
            "/projects/123/apps/",
            "https://example.com",
        ] {
            let c = ConsoleConfig {
                iap_audience: Some(bad.into()),
                ..iap()
            };
            assert!(
                c.check().unwrap_err().contains("not an IAP audience"),
                "{bad}"
            );
        }
        let not_email = ConsoleConfig {
            viewers: vec!["nobody".into()],
            ..iap()
        };
        assert!(not_email.check().unwrap_err().contains("viewers"));
    }

    #[test]
    fn jwks_uri_is_https_or_loopback_http() {
        let plain = ConsoleConfig {
            iap_jwks_uri: "http://keys.example.com/jwk".into(),
            ..iap()
        };
        assert!(plain.check().unwrap_err().contains("https"));
        let local = ConsoleConfig {
            iap_jwks_uri: "http://127.0.0.1:8080/jwk".into(),
            ..iap()
        };
        assert_eq!(local.check(), Ok(()));
    }
}
