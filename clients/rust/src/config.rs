//! How to reach tokenbridge: endpoint, TLS, time limits, retries.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use backon::ExponentialBuilder;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Error, chain};

/// Default time limit for establishing a connection (TCP, TLS, HTTP/2).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time limit for one `GetCredentials` attempt.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach tokenbridge.
///
/// - `https://…`: TLS with rustls, trusting the system's root certificates
///   plus, optionally, the certificates of a PEM file
///   ([`with_ca_file`](Self::with_ca_file)); optionally presenting a client
///   certificate ([`with_client_identity`](Self::with_client_identity)).
/// - `http://…`: plaintext HTTP/2, for a server on loopback or a
///   TLS-terminating sidecar next to the workload. The ID token travels in
///   clear text, so use it only where nobody else can listen.
///
/// ```
/// use std::time::Duration;
/// use tokenbridge_client::{Config, RetryPolicy};
///
/// let config = Config::new("https://tokenbridge.example.com")
///     .with_connect_timeout(Duration::from_secs(1))
///     .with_request_timeout(Duration::from_secs(3))
///     .with_retry(RetryPolicy::new(2, Duration::from_millis(100), Duration::from_secs(1)));
/// assert_eq!(config.endpoint(), "https://tokenbridge.example.com");
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    endpoint: String,
    ca_file: Option<PathBuf>,
    client_identity: Option<(PathBuf, PathBuf)>,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryPolicy,
    insecure_http: bool,
}

impl Config {
    /// tokenbridge at `endpoint` (`https://host[:port]` or `http://host:port`),
    /// with the default time limits and retries.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            ca_file: None,
            client_identity: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry: RetryPolicy::default(),
            insecure_http: false,
        }
    }

    /// Allows `http://` to a host that is not loopback. ID tokens go out and
    /// AWS secret keys come back over that connection unencrypted, so it is
    /// refused unless asked for (e.g. a TLS-terminating proxy reached over a
    /// network you trust).
    pub fn with_insecure_http(mut self, allow: bool) -> Self {
        self.insecure_http = allow;
        self
    }

    /// Also trusts the CA certificates in this PEM file (for `https://`).
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate chain and private key (PEM files) in
    /// the TLS handshake, for servers that require mutual TLS.
    pub fn with_client_identity(
        mut self,
        certificate: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.client_identity = Some((certificate.into(), key.into()));
        self
    }

    /// Time limit for establishing a connection (default 2 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time limit for one `GetCredentials` attempt (default 5 s); it is also
    /// sent to the server as the call's deadline.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How `UNAVAILABLE` answers and failed connections are retried.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The request time limit.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The retry policy.
    pub fn retry(&self) -> RetryPolicy {
        self.retry
    }

    /// A tonic endpoint with TLS, time limits and user agent set up; reads the
    /// CA and client certificate files. Needs no runtime. For clients of
    /// tokenbridge's other gRPC services (the admin CLI).
    pub fn tonic_endpoint(&self) -> Result<Endpoint, Error> {
        let url = self.endpoint.trim_end_matches('/');
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|_| Error::config(format!("endpoint {url:?} is not a URL")))?;
        let scheme = endpoint.uri().scheme_str().unwrap_or_default().to_owned();
        if endpoint.uri().host().is_none_or(str::is_empty) {
            return Err(Error::config(format!("endpoint {url:?} has no host")));
        }
        if endpoint.uri().path() != "/" && !endpoint.uri().path().is_empty() {
            return Err(Error::config(format!(
                "endpoint {url:?} has a path; give only scheme, host and port"
            )));
        }
        let endpoint = endpoint
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .user_agent(concat!("tokenbridge-client/", env!("CARGO_PKG_VERSION")))
            .map_err(|error| Error::config(chain(&error)))?;
        match scheme.as_str() {
            "http" => {
                if self.ca_file.is_some() || self.client_identity.is_some() {
                    return Err(Error::config(format!(
                        "endpoint {url:?} is plaintext http://, but a CA file or client \
                         certificate is set: use https://"
                    )));
                }
                let host = endpoint.uri().host().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let loopback = host.eq_ignore_ascii_case("localhost")
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !loopback && !self.insecure_http {
                    return Err(Error::config(format!(
                        "endpoint {url:?} is plaintext http:// to a host that is not loopback: \
                         the ID token goes out and the AWS secret key comes back unencrypted; \
                         use https://, or opt in explicitly (insecure HTTP: --insecure-http, \
                         TOKENBRIDGE_INSECURE_HTTP=true) for a network you trust"
                    )));
                }
                Ok(endpoint)
            }
            "https" => self.tls(endpoint),
            _ => Err(Error::config(format!(
                "endpoint {url:?} must start with https:// or http://"
            ))),
        }
    }

    fn tls(&self, endpoint: Endpoint) -> Result<Endpoint, Error> {
        let mut tls = ClientTlsConfig::new().timeout(self.connect_timeout);
        if let Some(path) = &self.ca_file {
            let pem = read_pem(path, "CA file", "CERTIFICATE")?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((certificate, key)) = &self.client_identity {
            let certificate = read_pem(certificate, "client certificate", "CERTIFICATE")?;
            let key = read_pem(key, "client key", "PRIVATE KEY")?;
            tls = tls.identity(Identity::from_pem(certificate, key));
        }
        match endpoint.clone().tls_config(tls.clone().with_native_roots()) {
            Ok(endpoint) => Ok(endpoint),
            // A machine without system roots can still trust a given CA file.
            Err(_) if self.ca_file.is_some() => endpoint
                .tls_config(tls)
                .map_err(|error| Error::config(format!("TLS setup: {}", chain(&error)))),
            Err(error) => Err(Error::config(format!(
                "TLS setup: {} (no system root certificates? pass a CA file)",
                chain(&error)
            ))),
        }
    }
}

/// Reads a PEM file that must hold at least one `-----BEGIN …{label}-----`.
fn read_pem(path: &Path, what: &str, label: &str) -> Result<Vec<u8>, Error> {
    let pem = std::fs::read(path).map_err(|error| {
        Error::config(format!(
            "cannot read the {what} {}: {error}",
            path.display()
        ))
    })?;
    let text = String::from_utf8_lossy(&pem);
    let has_block = text
        .lines()
        .any(|line| line.starts_with("-----BEGIN ") && line.contains(label));
    if !has_block {
        return Err(Error::config(format!(
            "the {what} {} holds no PEM {label}",
            path.display()
        )));
    }
    Ok(pem)
}

/// How the client retries calls that fail with `UNAVAILABLE` (or cannot
/// connect): exponential backoff with jitter, a bounded number of times. No
/// other failure is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_retries: usize,
    min_delay: Duration,
    max_delay: Duration,
}

impl RetryPolicy {
    /// Up to `max_retries` retries after the first attempt, waiting
    /// `min_delay`, then twice that, and so on up to `max_delay`, each wait
    /// plus a random jitter.
    pub fn new(max_retries: usize, min_delay: Duration, max_delay: Duration) -> Self {
        Self {
            max_retries,
            min_delay,
            max_delay: max_delay.max(min_delay),
        }
    }

    /// No retries.
    pub fn none() -> Self {
        Self::new(0, Duration::ZERO, Duration::ZERO)
    }

    /// The most retries after the first attempt.
    pub fn max_retries(&self) -> usize {
        self.max_retries
    }

    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_jitter()
    }
}

impl Default for RetryPolicy {
    /// 3 retries, 100 ms doubling up to 2 s, with jitter.
    fn default() -> Self {
        Self::new(3, Duration::from_millis(100), Duration::from_secs(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(result: Result<Endpoint, Error>) -> String {
        match result {
            Err(Error::Config { reason }) => reason,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(
            Config::new("http://127.0.0.1:50051")
                .tonic_endpoint()
                .is_ok()
        );
        assert!(
            Config::new("http://127.0.0.1:50051/")
                .tonic_endpoint()
                .is_ok()
        );
        let bad = reason(Config::new("ftp://example.com").tonic_endpoint());
        assert!(bad.contains("https://"), "{bad}");
        let bad = reason(Config::new("not a url").tonic_endpoint());
        assert!(bad.contains("not a URL"), "{bad}");
        let bad = reason(Config::new("http://h:1/v1").tonic_endpoint());
        assert!(bad.contains("path"), "{bad}");
        let bad = reason(
            Config::new("http://h:1")
                .with_ca_file("/nonexistent")
                .tonic_endpoint(),
        );
        assert!(bad.contains("https://"), "{bad}");
    }

    #[test]
    fn plaintext_to_a_host_that_is_not_loopback_needs_an_explicit_opt_in() {
        for local in ["http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1"] {
            assert!(Config::new(local).tonic_endpoint().is_ok(), "{local}");
        }
        let bad = reason(Config::new("http://tokenbridge.internal:50051").tonic_endpoint());
        assert!(bad.contains("not loopback"), "{bad}");
        assert!(bad.contains("--insecure-http"), "{bad}");
        assert!(
            Config::new("http://tokenbridge.internal:50051")
                .with_insecure_http(true)
                .tonic_endpoint()
                .is_ok()
        );
    }

    #[test]
    fn unreadable_or_empty_ca_file_is_a_config_error() {
        let bad = reason(
            Config::new("https://h")
                .with_ca_file("/nonexistent/ca.pem")
                .tonic_endpoint(),
        );
        assert!(
            bad.contains("cannot read the CA file /nonexistent/ca.pem"),
            "{bad}"
        );
        let dir = std::env::temp_dir().join(format!("tb-client-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate").unwrap();
        let bad = reason(Config::new("https://h").with_ca_file(&dir).tonic_endpoint());
        let _ = std::fs::remove_file(&dir);
        assert!(bad.contains("holds no PEM CERTIFICATE"), "{bad}");
    }
}
