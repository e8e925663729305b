//! Google ID tokens, and where they come from: the metadata server of a GCE
//! VM, a GKE pod with Workload Identity, Cloud Run or Cloud Functions.
//!
//! Environment: `GCE_METADATA_HOST` (`host:port`) replaces
//! `metadata.google.internal`, as in Google's own client libraries.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_smithy_async::time::{SharedTimeSource, SystemTimeSource, TimeSource};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use tracing::{debug, instrument};

use crate::error::{Error, chain, one_line};
use tokenbridge_proto::Secret;

/// The metadata server's host when `GCE_METADATA_HOST` is not set.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
/// The environment variable that overrides the metadata server's `host:port`.
pub const METADATA_HOST_ENV: &str = "GCE_METADATA_HOST";
/// Default time limit for one request to the metadata server.
pub const DEFAULT_METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time before its `exp` at which a cached ID token is replaced.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(300);

const IDENTITY_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";
/// The longest answer read from the metadata server (ID tokens are ~1 KiB).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The longest piece of an error answer repeated in an error message.
const MAX_DETAIL_CHARS: usize = 120;

/// A Google-signed ID token (a compact JWS) and its expiry.
///
/// The token prints as `** redacted **`. Its `exp` is read from the payload
/// without verifying the signature: tokenbridge verifies it.
///
/// ```
/// use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
/// use std::time::{Duration, UNIX_EPOCH};
/// use tokenbridge_client::IdToken;
///
/// let payload = URL_SAFE_NO_PAD.encode(r#"{"aud":"a","exp":1900000000}"#);
/// let token = IdToken::parse(format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2lnbmF0dXJl")).unwrap();
/// assert_eq!(token.expires_at(), UNIX_EPOCH + Duration::from_secs(1_900_000_000));
/// assert_eq!(format!("{token:?}"), "IdToken { token: ** redacted **, expires_at: 1900000000 }");
/// assert!(IdToken::parse("not a token".into()).is_err());
/// ```
#[derive(Clone)]
pub struct IdToken {
    token: Secret<String>,
    expires_at: SystemTime,
}

impl IdToken {
    /// Checks that `token` looks like a compact JWS whose payload has a
    /// numeric `exp`, and reads that. The error says what is wrong, never
    /// what the text was.
    pub fn parse(token: String) -> Result<IdToken, String> {
        let token = token.trim().to_owned();
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not three dot-separated parts".into());
        };
        let base64url = |part: &str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !(base64url(header) && base64url(payload) && base64url(signature)) {
            return Err("a part is empty or not base64url".into());
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| "the payload is not base64url".to_owned())?;
        let claims: serde_json::Value =
            serde_json::from_slice(&payload).map_err(|_| "the payload is not JSON".to_owned())?;
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| "the payload has no numeric exp".to_owned())?;
        let expires_at = UNIX_EPOCH
            .checked_add(Duration::from_secs(exp))
            .ok_or_else(|| "the payload's exp is out of range".to_owned())?;
        Ok(IdToken {
            token: Secret::new(token),
            expires_at,
        })
    }

    /// The token itself, for the `authorization` header.
    pub fn expose(&self) -> &str {
        self.token.expose()
    }

    /// When the token expires (its `exp`).
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

impl fmt::Debug for IdToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exp = self
            .expires_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        f.debug_struct("IdToken")
            .field("token", &self.token)
            .field("expires_at", &exp)
            .finish()
    }
}

/// The future an [`IdTokenSource`] returns.
pub type IdTokenFuture<'a> = Pin<Box<dyn Future<Output = Result<IdToken, Error>> + Send + 'a>>;

/// Where ID tokens come from.
///
/// [`MetadataIdTokenSource`] asks the metadata server; implement this trait
/// to get tokens elsewhere (a file a sidecar rotates, a test issuer).
pub trait IdTokenSource: Send + Sync + fmt::Debug {
    /// An ID token that is valid now, for the audience the source was made
    /// for.
    fn id_token(&self) -> IdTokenFuture<'_>;
}

/// Asks the metadata server for ID tokens
/// (`GET http://HOST/computeMetadata/v1/instance/service-accounts/default/identity?audience=AUD&format=full`
/// with `Metadata-Flavor: Google`), and reuses each token until
/// [`DEFAULT_REFRESH_MARGIN`] before its `exp`. Concurrent callers share one
/// request.
///
/// Requests never go through an HTTP proxy (the metadata server refuses
/// proxied requests).
///
/// ```no_run
/// # async fn example() -> Result<(), tokenbridge_client::Error> {
/// use tokenbridge_client::{IdTokenSource as _, MetadataIdTokenSource};
///
/// let source = MetadataIdTokenSource::new("https://tokenbridge.example.com")?;
/// let token = source.id_token().await?;
/// println!("the ID token expires at {:?}", token.expires_at());
/// # Ok(()) }
/// ```
pub struct MetadataIdTokenSource {
    http: reqwest::Client,
    host: String,
    url: String,
    audience: String,
    timeout: Duration,
    refresh_margin: Duration,
    time: SharedTimeSource,
    cached: tokio::sync::Mutex<Option<IdToken>>,
}

impl fmt::Debug for MetadataIdTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetadataIdTokenSource")
            .field("host", &self.host)
            .field("audience", &self.audience)
            .field("timeout", &self.timeout)
            .field("refresh_margin", &self.refresh_margin)
            .finish_non_exhaustive()
    }
}

impl MetadataIdTokenSource {
    /// Tokens for `audience` from the metadata server at `GCE_METADATA_HOST`
    /// or `metadata.google.internal`, with the default time limit.
    pub fn new(audience: impl Into<String>) -> Result<Self, Error> {
        Self::builder(audience).build()
    }

    /// A builder, to set the host, time limit, refresh margin or clock.
    pub fn builder(audience: impl Into<String>) -> MetadataIdTokenSourceBuilder {
        MetadataIdTokenSourceBuilder {
            audience: audience.into(),
            host: None,
            timeout: DEFAULT_METADATA_TIMEOUT,
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            time: None,
        }
    }

    /// The metadata server's `host:port`.
    pub fn host(&self) -> &str {
        &self.host
    }

    #[instrument(skip_all, fields(host = %self.host))]
    async fn fetch(&self) -> Result<IdToken, Error> {
        let unreachable = |reason: String| Error::MetadataUnreachable {
            host: self.host.clone(),
            reason,
        };
        let response = self
            .http
            .get(&self.url)
            .query(&[("audience", self.audience.as_str()), ("format", "full")])
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .map_err(|error| unreachable(describe(&error, self.timeout)))?;
        let status = response.status();
        let body = read_bounded(response)
            .await
            .map_err(|error| unreachable(describe(&error, self.timeout)))?;
        if !status.is_success() {
            let first_line = String::from_utf8_lossy(&body)
                .lines()
                .map(str::trim)
                .find(|line| !line.is_empty())
                .map(|line| {
                    line.chars()
                        .filter(|c| !c.is_control())
                        .take(MAX_DETAIL_CHARS)
                        .collect::<String>()
                })
                .unwrap_or_default();
            let detail = if first_line.is_empty() {
                String::new()
            } else {
                format!(": {}", one_line(&first_line))
            };
            return Err(Error::MetadataRefused {
                host: self.host.clone(),
                status: status.as_u16(),
                detail,
            });
        }
        let text = String::from_utf8(body).map_err(|_| Error::MetadataInvalid {
            host: self.host.clone(),
            reason: "not UTF-8".into(),
        })?;
        let token = IdToken::parse(text).map_err(|reason| Error::MetadataInvalid {
            host: self.host.clone(),
            reason,
        })?;
        debug!(expires_at = ?token.expires_at, "got an ID token from the metadata server");
        Ok(token)
    }
}

impl IdTokenSource for MetadataIdTokenSource {
    fn id_token(&self) -> IdTokenFuture<'_> {
        Box::pin(async move {
            let mut cached = self.cached.lock().await;
            let now = self.time.now();
            if let Some(token) = cached.as_ref()
                && now + self.refresh_margin < token.expires_at
            {
                return Ok(token.clone());
            }
            let token = self.fetch().await?;
            *cached = Some(token.clone());
            Ok(token)
        })
    }
}

/// Sets up a [`MetadataIdTokenSource`].
#[derive(Debug)]
pub struct MetadataIdTokenSourceBuilder {
    audience: String,
    host: Option<String>,
    timeout: Duration,
    refresh_margin: Duration,
    time: Option<SharedTimeSource>,
}

impl MetadataIdTokenSourceBuilder {
    /// The metadata server's `host[:port]`, instead of `GCE_METADATA_HOST` or
    /// `metadata.google.internal`.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Time limit for one request, connect to last byte (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Replace a cached token this long before its `exp` (default 5 min).
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    /// The clock that decides whether a cached token is still good (default:
    /// the system clock).
    pub fn time_source(mut self, time: impl TimeSource + 'static) -> Self {
        self.time = Some(SharedTimeSource::new(time));
        self
    }

    /// Builds the source.
    pub fn build(self) -> Result<MetadataIdTokenSource, Error> {
        if self.audience.trim().is_empty() {
            return Err(Error::config("the ID token audience is empty"));
        }
        let host = self
            .host
            .or_else(|| {
                std::env::var(METADATA_HOST_ENV)
                    .ok()
                    .filter(|host| !host.trim().is_empty())
            })
            .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_owned());
        let host = host.trim().to_owned();
        let url = format!("http://{host}{IDENTITY_PATH}");
        if reqwest::Url::parse(&url).is_err() || host.contains('/') {
            return Err(Error::config(format!(
                "metadata server host {host:?} is not a host[:port]"
            )));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .tls_built_in_root_certs(false)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| Error::config(format!("HTTP client: {}", chain(&error))))?;
        Ok(MetadataIdTokenSource {
            http,
            host,
            url,
            audience: self.audience,
            timeout: self.timeout,
            refresh_margin: self.refresh_margin,
            time: self
                .time
                .unwrap_or_else(|| SharedTimeSource::new(SystemTimeSource::new())),
            cached: tokio::sync::Mutex::new(None),
        })
    }
}

/// Reads at most [`MAX_ANSWER_BYTES`] of the answer.
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_ANSWER_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(body)
}

fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        format!("no answer within {} ms", timeout.as_millis())
    } else if error.is_connect() {
        format!("cannot connect: {}", innermost(error))
    } else {
        chain(error)
    }
}

/// The innermost cause's text (reqwest's outer layers repeat the URL, which
/// carries the audience but adds nothing).
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    one_line(&current.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jws(payload: &str) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn parse_reads_exp_and_rejects_garbage_without_echoing_it() {
        let token = IdToken::parse(format!("{}\n", jws(r#"{"exp":42}"#))).unwrap();
        assert_eq!(token.expires_at(), UNIX_EPOCH + Duration::from_secs(42));
        assert!(!token.expose().ends_with('\n'));
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "a..c",
            "a.b c.d",
            &jws("not json"),
            &jws(r#"{"exp":"soon"}"#),
            &jws(r#"{"aud":"x"}"#),
            "<html>secret-looking-body</html>",
        ] {
            let reason = IdToken::parse(bad.to_owned()).unwrap_err();
            assert!(!reason.contains("secret-looking"), "{reason}");
        }
    }

    #[test]
    fn an_exp_no_clock_can_hold_is_an_error_not_a_panic() {
        // Found by the `id_token` fuzz target: `UNIX_EPOCH + exp` overflowed.
        for exp in ["9223372036854775808", "18446744073709551615"] {
            let reason = IdToken::parse(jws(&format!(r#"{{"exp":{exp}}}"#))).unwrap_err();
            assert_eq!(reason, "the payload's exp is out of range");
        }
    }

    #[test]
    fn debug_redacts_the_token() {
        let token = IdToken::parse(jws(r#"{"exp":42,"sub":"someone"}"#)).unwrap();
        let shown = format!("{token:?}");
        assert!(!shown.contains("eyJ"), "{shown}");
        assert!(shown.contains("** redacted **"), "{shown}");
    }

    #[test]
    fn host_must_be_host_port() {
        let error = MetadataIdTokenSource::builder("aud")
            .host("http://x/y")
            .build()
            .unwrap_err();
        assert!(error.to_string().contains("not a host[:port]"), "{error}");
        let error = MetadataIdTokenSource::builder(" ").build().unwrap_err();
        assert!(error.to_string().contains("audience is empty"), "{error}");
    }
}
