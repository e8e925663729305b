//! The one error type of an exchange, and what each case tells the caller.
//! Its mapping to gRPC status codes lives in exactly one place:
//! `impl From<Error> for tonic::Status` in [`crate::transport::grpc`].

use std::time::Duration;

use crate::{aws::sts::StsError, google::jwt::VerifyError};

/// How long a caller is told to wait (`google.rpc.RetryInfo`) before
/// retrying a call that failed because an upstream (Google's keys, STS) is
/// unavailable or this server is overloaded.
pub const RETRY_UPSTREAM: Duration = Duration::from_secs(1);
/// The same for STS throttling: back off a little longer.
pub const RETRY_THROTTLED: Duration = Duration::from_secs(2);

/// Which rate limit a caller ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// Requests from one peer address (IPv6: its /64), checked before the
    /// token is verified.
    Peer,
    /// Requests of one verified identity (the token's `sub`).
    Subject,
}

/// Why an exchange produced no credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request has no usable `authorization: Bearer <token>` metadata.
    /// The caller must send its Google ID token.
    #[error("{0}")]
    MissingToken(&'static str),
    /// The token failed verification (or, for
    /// [`VerifyError::KeysUnavailable`], could not be verified yet).
    #[error(transparent)]
    Token(#[from] VerifyError),
    /// The request itself is wrong (role ARN, duration); fix it, do not retry.
    #[error("{0}")]
    InvalidArgument(String),
    /// The policy table does not allow this; an administrator must add a binding.
    #[error("{0}")]
    PermissionDenied(String),
    /// STS gave no credentials; whether a retry helps depends on the case.
    #[error(transparent)]
    Sts(#[from] StsError),
    /// The caller is over a rate limit. Retrying after `retry_after` helps;
    /// retrying sooner does not.
    #[error("{}", rate_limited_message(*.limit, *.retry_after))]
    RateLimited {
        /// Which limit.
        limit: Limit,
        /// When the next request would be allowed.
        retry_after: Duration,
    },
    /// The server already has `limits.max_concurrent_requests` calls in
    /// flight. Retrying shortly (ideally elsewhere) helps.
    #[error("server overloaded: {0} requests already in flight; retry shortly")]
    Overloaded(usize),
    /// The request message is larger than `limits.max_request_bytes`. Not
    /// retryable: the request must change.
    #[error("request message is larger than the {0}-byte limit")]
    MessageTooLarge(usize),
    /// The request's metadata (HTTP/2 header block) is larger than
    /// `limits.max_header_list_bytes`. Not retryable as it is.
    #[error("request metadata is {size} bytes, over the {limit}-byte limit")]
    HeadersTooLarge {
        /// The size, counted as HTTP/2 does (name + value + 32 per entry).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The call did not finish within `limits.request_timeout_ms` (an
    /// upstream was slow). Retrying later helps.
    #[error("the request did not complete within the server's {0} ms limit; retry later")]
    DeadlineExceeded(u64),
    /// The call's request (its message) had not arrived when the call's
    /// deadline (`limits.request_timeout_ms`, counted from its headers)
    /// passed: the caller stalled. Its concurrency permit is released.
    #[error("the request message did not arrive within the server's {0} ms deadline")]
    Stalled(u64),
    /// The decision could not be written to the audit log (the sink fails
    /// or is too slow), so no credentials are handed out and no refusal is
    /// given: tokenbridge fails closed. Retrying later (or elsewhere) helps.
    #[error("the audit log cannot be written; no credentials are issued until it can; retry later")]
    AuditUnavailable,
    /// The grant needs issuer mode (or its session tags or source identity
    /// cannot be sent): the server's `[issuer]` or the binding must change.
    /// Never answered by falling back to the caller's own token.
    #[error("{0}")]
    IssuerMode(String),
}

fn rate_limited_message(limit: Limit, retry_after: Duration) -> String {
    let who = match limit {
        Limit::Peer => "requests from this address",
        Limit::Subject => "requests for this service account",
    };
    format!(
        "rate limit exceeded: too many {who}; retry in {} ms",
        retry_after.as_millis().max(1)
    )
}

impl Error {
    /// How long the caller should wait before retrying, when a retry of the
    /// same request can help at all (it becomes `google.rpc.RetryInfo`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Token(VerifyError::KeysUnavailable) => Some(RETRY_UPSTREAM),
            Error::Sts(StsError::Throttled(_)) => Some(RETRY_THROTTLED),
            Error::Sts(StsError::Budget(wait)) => Some(*wait),
            Error::Sts(StsError::Unavailable(_) | StsError::IdpCommunication(_)) => {
                Some(RETRY_UPSTREAM)
            }
            Error::RateLimited { retry_after, .. } => Some(*retry_after),
            Error::Overloaded(_) | Error::DeadlineExceeded(_) | Error::AuditUnavailable => {
                Some(RETRY_UPSTREAM)
            }
            Error::MissingToken(_)
            | Error::Token(_)
            | Error::InvalidArgument(_)
            | Error::PermissionDenied(_)
            | Error::MessageTooLarge(_)
            | Error::HeadersTooLarge { .. }
            | Error::IssuerMode(_)
            | Error::Stalled(_)
            | Error::Sts(_) => None,
        }
    }

    /// What went wrong, as a short fixed name: the `outcome` label of the
    /// `tokenbridge_exchanges_total` metric and the audit log's `outcome`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::MissingToken(_) => "missing_token",
            Error::Token(VerifyError::KeysUnavailable) => "keys_unavailable",
            Error::Token(_) => "invalid_token",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::PermissionDenied(_) => "permission_denied",
            Error::Sts(e) => match e {
                StsError::Throttled(_) => "sts_throttled",
                StsError::Budget(_) => "sts_budget",
                StsError::Unavailable(_) | StsError::IdpCommunication(_) => "sts_unavailable",
                StsError::InvalidIdentityToken(_)
                | StsError::ExpiredToken(_)
                | StsError::AccessDenied(_)
                | StsError::IdpRejectedClaim(_)
                | StsError::Refused { .. } => "sts_rejected",
            },
            Error::RateLimited { .. } => "rate_limited",
            Error::Overloaded(_) => "overloaded",
            Error::MessageTooLarge(_) | Error::HeadersTooLarge { .. } => "too_large",
            Error::DeadlineExceeded(_) => "deadline_exceeded",
            Error::Stalled(_) => "stalled",
            Error::AuditUnavailable => "audit_unavailable",
            Error::IssuerMode(_) => "issuer_mode",
        }
    }

    /// Whether the call is refused before any decision about an identity
    /// (a limit, before or regardless of the token): such refusals are
    /// counted in metrics but not written to the audit log, so that a flood
    /// does not become a flood of audit records.
    pub fn is_flood_control(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. }
                | Error::Overloaded(_)
                | Error::MessageTooLarge(_)
                | Error::HeadersTooLarge { .. }
                | Error::Stalled(_)
        )
    }
}
