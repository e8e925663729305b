//! What went wrong, and at which step: the metadata server, the connection to
//! tokenbridge, or tokenbridge's refusal.

use std::{error::Error as StdError, time::Duration};

use tokenbridge_proto::status::{self, code_name};
use tonic::Code;

/// Why no credentials (or no ID token) could be had.
///
/// The `Display` text is one line that starts with the step that failed
/// (`metadata server …`, `connecting to …`, `tokenbridge refused …`) and
/// never contains a token or a secret. Each variant says whether trying again
/// can help; [`Error::retry_may_help`] answers the same in code.
///
/// ```
/// use tokenbridge_client::Error;
///
/// let refused = Error::Refused {
///     code: tonic::Code::PermissionDenied,
///     message: "no binding grants role R to service account S".into(),
///     retry_after: None,
/// };
/// assert_eq!(
///     refused.to_string(),
///     "tokenbridge refused the request: PERMISSION_DENIED: no binding grants role R to service account S"
/// );
/// assert!(!refused.retry_may_help());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client's own configuration is unusable: an endpoint that is not an
    /// `http://` or `https://` URL, an empty audience, a CA file or client
    /// certificate that cannot be read or parsed, no system root certificates.
    ///
    /// Retrying does not help: fix the configuration.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },

    /// The metadata server could not be reached, or did not answer within the
    /// time limit: not running on Google Cloud, a wrong `GCE_METADATA_HOST`,
    /// a metadata server that is restarting or overloaded.
    ///
    /// Retrying helps if the metadata server was only briefly unavailable.
    #[error("metadata server {host}: {reason}")]
    MetadataUnreachable {
        /// The metadata server's `host:port`.
        host: String,
        /// What happened.
        reason: String,
    },

    /// The metadata server answered with an HTTP error: 403 when the request
    /// went through a proxy or lacked `Metadata-Flavor: Google`, 404 when no
    /// service account is attached, 5xx when it failed.
    ///
    /// Retrying helps for 5xx and 429 only.
    #[error("metadata server {host}: HTTP {status}{detail}")]
    MetadataRefused {
        /// The metadata server's `host:port`.
        host: String,
        /// The HTTP status code.
        status: u16,
        /// `": "` and the first line of the answer, shortened, or empty.
        detail: String,
    },

    /// The metadata server answered 200, but not with an ID token (a JWT whose
    /// payload has a numeric `exp`): something else is listening on the
    /// metadata address.
    ///
    /// Retrying does not help.
    #[error("metadata server {host}: the answer is not an ID token: {reason}")]
    MetadataInvalid {
        /// The metadata server's `host:port`.
        host: String,
        /// What is wrong with the answer (never the answer itself).
        reason: String,
    },

    /// tokenbridge could not be reached: name resolution, TCP, the TLS
    /// handshake (including a certificate the client does not trust), HTTP/2,
    /// or the connect time limit; also a connection that broke mid-call.
    ///
    /// Retrying helps for outages and restarts, not for an untrusted
    /// certificate or a wrong endpoint.
    #[error("connecting to {endpoint}: {reason}")]
    Connect {
        /// The endpoint URL.
        endpoint: String,
        /// What happened, from the innermost cause outwards.
        reason: String,
    },

    /// tokenbridge did not answer within the request time limit.
    ///
    /// Retrying may help; tokenbridge's own calls to AWS STS are bounded, so a
    /// timeout usually means an overloaded service or a network problem.
    #[error("tokenbridge at {endpoint} did not answer within {} ms", timeout.as_millis())]
    Timeout {
        /// The endpoint URL.
        endpoint: String,
        /// The time limit that ran out.
        timeout: Duration,
    },

    /// tokenbridge refused the request, with a gRPC status code and its
    /// message (see the contract's status table).
    ///
    /// Whether retrying helps is the server's to say: a `google.rpc.RetryInfo`
    /// detail (`retry_after`) marks what a later retry can cure (STS or
    /// Google's keys unreachable, a rate or concurrency limit) and says when;
    /// `UNAVAILABLE` without one (a proxy, a restart) is retried too.
    /// `RESOURCE_EXHAUSTED` without one (an oversized request) is not:
    /// the request must change. `UNAUTHENTICATED` may pass with a fresh ID
    /// token; `PERMISSION_DENIED` and `INVALID_ARGUMENT` need a policy or
    /// request change.
    #[error("tokenbridge refused the request: {}: {message}", code_name(*code))]
    Refused {
        /// The gRPC status code.
        code: Code,
        /// The status message (tokenbridge never echoes a token in it).
        message: String,
        /// The server's `RetryInfo` delay, if it sent one.
        retry_after: Option<Duration>,
    },

    /// tokenbridge answered, but the answer lacks something required (an
    /// access key, an expiration).
    ///
    /// Retrying does not help: client and server disagree on the protocol.
    #[error("tokenbridge at {endpoint} answered without {missing}")]
    InvalidResponse {
        /// The endpoint URL.
        endpoint: String,
        /// What the answer lacked.
        missing: String,
    },
}

impl Error {
    /// Whether trying the same thing again later can succeed (see each
    /// variant).
    pub fn retry_may_help(&self) -> bool {
        match self {
            Error::Config { .. }
            | Error::MetadataInvalid { .. }
            | Error::InvalidResponse { .. } => false,
            Error::MetadataUnreachable { .. } | Error::Connect { .. } | Error::Timeout { .. } => {
                true
            }
            Error::MetadataRefused { status, .. } => *status == 429 || *status >= 500,
            Error::Refused {
                code, retry_after, ..
            } => {
                retry_after.is_some()
                    || *code == Code::Unavailable
                    || (*code != Code::ResourceExhausted && status::retry_may_help(*code))
            }
        }
    }

    /// The delay the server's `RetryInfo` asked for, if it sent one.
    pub fn server_retry_after(&self) -> Option<Duration> {
        match self {
            Error::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether this is what gRPC calls `UNAVAILABLE`: the only kind of error
    /// that [`Client`](crate::Client) retries by itself.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Refused { code, .. } => *code == Code::Unavailable,
            _ => false,
        }
    }

    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Error::Config {
            reason: one_line(&reason.into()),
        }
    }
}

/// An error and its causes as one line, outermost first, without repeating a
/// cause whose text the previous one already contains.
pub(crate) fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        if !text.is_empty() && !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        next = error.source();
    }
    one_line(&parts.join(": "))
}

/// `text` with every run of whitespace (newlines included) made one space.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_skips_repeated_causes_and_newlines() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused\nhere");
        let outer = std::io::Error::other(inner);
        // `outer` displays as its source; the chain shows it once.
        assert_eq!(chain(&outer), "refused here");
    }

    #[test]
    fn retry_advice() {
        let unavailable = Error::Refused {
            code: Code::Unavailable,
            message: "STS unreachable".into(),
            retry_after: None,
        };
        assert!(unavailable.is_unavailable() && unavailable.retry_may_help());
        let denied = Error::Refused {
            code: Code::PermissionDenied,
            message: "no".into(),
            retry_after: None,
        };
        assert!(!denied.is_unavailable() && !denied.retry_may_help());
        // RESOURCE_EXHAUSTED: retryable only when the server says when.
        let too_large = Error::Refused {
            code: Code::ResourceExhausted,
            message: "request message is larger than the 4096-byte limit".into(),
            retry_after: None,
        };
        assert!(!too_large.retry_may_help());
        let limited = Error::Refused {
            code: Code::ResourceExhausted,
            message: "rate limit exceeded".into(),
            retry_after: Some(Duration::from_millis(250)),
        };
        assert!(limited.retry_may_help());
        assert_eq!(
            limited.server_retry_after(),
            Some(Duration::from_millis(250))
        );
        let not_found = Error::MetadataRefused {
            host: "h".into(),
            status: 404,
            detail: String::new(),
        };
        assert!(!not_found.retry_may_help());
        let busy = Error::MetadataRefused {
            host: "h".into(),
            status: 503,
            detail: String::new(),
        };
        assert!(busy.retry_may_help() && !busy.is_unavailable());
    }
}
