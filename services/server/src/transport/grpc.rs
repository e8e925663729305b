//! gRPC transport: `tokenbridge.v1.TokenExchange` on top of [`Exchange`],
//! the `authorization` metadata, the limits applied at the edge, and the one
//! mapping from [`Error`] to `tonic::Status` (the contract's status table).
//!
//! A call passes, in order: the listener's guard ([`guard`]: the per-peer
//! rate limit and the global concurrency limit, both before its message is
//! read, and the deadline counted from its headers), the message size limit
//! (tonic), then the exchange within the rest of the deadline; then
//! the decision is written to the audit log (the answer waits for it, and
//! is UNAVAILABLE if it cannot be written) and counted in the metrics.
//!
//! Each call is a `GetCredentials` span (OpenTelemetry server span when
//! traces are on), joined to the caller's W3C trace context (`traceparent`
//! metadata).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokenbridge_proto::v1::{
    GetCredentialsRequest, GetCredentialsResponse,
    token_exchange_server::{SERVICE_NAME, TokenExchange, TokenExchangeServer},
};
use tokenbridge_proto::{
    Secret,
    status::{self, code_name},
};
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tracing::{Instrument as _, debug, debug_span, field::Empty, info};

use crate::{
    aws::sts::StsError,
    error::{Error, Limit},
    exchange::{Exchange, ExchangeRequest},
    google::jwt::VerifyError,
    observability::audit::Facts,
    observability::audit::{AuditLog, Decision, Entry},
    observability::metrics::Metrics,
    observability::telemetry,
    transport::guard::{self, CallDeadline, Guard, GuardSettings},
    transport::limits::{LimitsConfig, RateLimits},
};

/// The `TokenExchange` service.
pub struct TokenExchangeService {
    exchange: Arc<Exchange>,
    rate_limits: Option<Arc<RateLimits>>,
    request_timeout: Option<Duration>,
    max_header_bytes: Option<usize>,
    metrics: Arc<Metrics>,
    audit: Option<Arc<AuditLog>>,
}

impl TokenExchangeService {
    /// Serves `exchange` over gRPC, with no limits of its own, no audit
    /// log and no metrics.
    pub fn new(exchange: Arc<Exchange>) -> Self {
        Self {
            exchange,
            rate_limits: None,
            request_timeout: None,
            max_header_bytes: None,
            metrics: Metrics::disabled(),
            audit: None,
        }
    }

    /// Counts calls and their latency in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Writes every decision to `audit` before answering, and fails the
    /// call closed (UNAVAILABLE) when it cannot.
    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Refuses requests whose metadata is larger than `limit` bytes, counted
    /// as HTTP/2 counts a header list.
    pub fn with_max_header_bytes(mut self, limit: usize) -> Self {
        self.max_header_bytes = Some(limit);
        self
    }

    /// Applies the per-peer rate limit of `rate_limits` before anything else.
    pub fn with_rate_limits(mut self, rate_limits: Arc<RateLimits>) -> Self {
        self.rate_limits = Some(rate_limits);
        self
    }

    /// Bounds each call to `timeout`.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }
}

/// `TokenExchange` as served: `service` behind the listener's guard
/// ([`guard`]: per-peer rate, concurrency with load shedding, the deadline
/// over the whole call), with the message size limit of `limits`.
pub fn limited(service: TokenExchangeService, limits: &LimitsConfig) -> Limited {
    let metrics = service.metrics.clone();
    let peers = service.rate_limits.clone();
    let server =
        TokenExchangeServer::new(service).max_decoding_message_size(limits.max_request_bytes);
    guard::guard(
        server,
        GuardSettings {
            max_concurrent: limits.max_concurrent_requests,
            deadline: limits.request_timeout,
            grace: AUDIT_GRACE,
            max_request_bytes: limits.max_request_bytes,
            peers,
            metrics: Some(metrics),
        },
    )
}

/// How long past its deadline a started exchange may take to have its
/// audit record written (issued credentials wait for it).
pub const AUDIT_GRACE: Duration = crate::observability::audit::ACK_TIMEOUT;

/// `TokenExchange` behind its listener's guard.
pub type Limited = Guard<TokenExchangeServer<TokenExchangeService>>;

#[tonic::async_trait]
impl TokenExchange for TokenExchangeService {
    async fn get_credentials(
        &self,
        request: Request<GetCredentialsRequest>,
    ) -> Result<Response<GetCredentialsResponse>, Status> {
        let started = Instant::now();
        let peer = request.remote_addr();
        let span = debug_span!(
            "GetCredentials",
            otel.name = "tokenbridge.v1.TokenExchange/GetCredentials",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = SERVICE_NAME,
            rpc.method = "GetCredentials",
            rpc.grpc.status_code = Empty,
            otel.status_code = Empty,
        );
        let trace = telemetry::join_trace(&span, request.metadata().as_ref());
        let (metadata, extensions, message) = request.into_parts();
        // The guard's deadline (counted from the headers), else our own.
        let deadline = CallDeadline::of(&extensions);
        if let Some(d) = &deadline {
            d.started();
        }
        let req = ExchangeRequest {
            role_arn: message.role_arn,
            duration_seconds: message.duration_seconds,
        };
        let mut facts = Facts::default();
        // Boxed once here: the exchange's future is kilobytes large, and
        // unboxed it would be moved into each wrapper below and held, with
        // them, in this handler's own future (which tonic boxes and moves
        // again) on every call.
        let call = Box::pin(
            async {
                if let Some(limit) = self.max_header_bytes {
                    let size = header_list_size(&metadata);
                    if size > limit {
                        return Err(Error::HeadersTooLarge { size, limit });
                    }
                }
                let token = bearer_token(&metadata)?;
                self.exchange
                    .exchange_recorded(token, &req, &mut facts)
                    .await
            }
            .instrument(span.clone()),
        );
        let limit_ms = self.request_timeout.map_or(0, |t| t.as_millis() as u64);
        // Behind the guard its timer is the only one (see `guard`); served
        // without it (in-process tests), the handler times itself.
        let mut result = match (deadline, self.request_timeout) {
            (Some(deadline), _) => deadline.bound(call).await,
            (None, Some(limit)) => tokio::time::timeout(limit, call).await.ok(),
            (None, None) => Some(call.await),
        }
        .unwrap_or(Err(Error::DeadlineExceeded(limit_ms)));

        if let Some(audit) = &self.audit
            && !matches!(&result, Err(e) if e.is_flood_control())
        {
            let (decision, code, outcome, reason) = match &result {
                Ok(_) => (Decision::Allow, Code::Ok, "issued", String::new()),
                Err(e) => (
                    if e.retry_after().is_some() {
                        Decision::Error
                    } else {
                        Decision::Deny
                    },
                    code_of(e),
                    e.kind(),
                    e.to_string(),
                ),
            };
            let entry = Entry {
                decision,
                code: code_name(code),
                outcome,
                reason: if reason.is_empty() {
                    "credentials issued"
                } else {
                    &reason
                },
                requested_role_arn: &req.role_arn,
                requested_duration_seconds: req.duration_seconds,
                facts: &facts,
                credentials: result.as_ref().ok().map(|issued| &issued.credentials),
                peer,
                trace: trace.as_ref(),
                elapsed: started.elapsed(),
            };
            // Only issued credentials fail closed on their record; a
            // refusal keeps its own answer (and never waits on the sink).
            if !audit.write(&entry).await && result.is_ok() {
                result = Err(Error::AuditUnavailable);
            }
        }

        let (outcome, code) = match &result {
            Ok(_) => ("issued", Code::Ok),
            Err(e) => (e.kind(), code_of(e)),
        };
        if let Err(Error::RateLimited { limit, .. }) = &result {
            self.metrics.rate_limited(match limit {
                Limit::Peer => "peer",
                Limit::Subject => "subject",
            });
        }
        self.metrics
            .exchange(outcome, code_name(code), Some(started.elapsed()));
        span.record("rpc.grpc.status_code", code as i64);
        if code != Code::Ok {
            span.record("otel.status_code", "ERROR");
        }

        match result {
            Ok(issued) => {
                let c = issued.credentials;
                Ok(Response::new(GetCredentialsResponse {
                    access_key_id: c.access_key_id,
                    secret_access_key: c.secret_access_key.into_exposed(),
                    session_token: c.session_token.into_exposed(),
                    expiration: Some(prost_types::Timestamp::from(c.expiration)),
                    assumed_role_arn: c.assumed_role_arn,
                    role_session_name: issued.role_session_name,
                }))
            }
            Err(e) => {
                let limited = matches!(e, Error::RateLimited { .. });
                let status = Status::from(e);
                if limited {
                    // A flood must not become a flood of log lines.
                    debug!(peer = ?peer, code = ?status.code(), reason = status.message(), "exchange refused");
                } else {
                    info!(peer = ?peer, code = ?status.code(), reason = status.message(), "exchange refused");
                }
                Err(status)
            }
        }
    }
}

/// The size of the metadata as HTTP/2 counts a header list: name, value and
/// 32 bytes per entry.
fn header_list_size(metadata: &MetadataMap) -> usize {
    metadata
        .as_ref()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

/// The token from `authorization: Bearer <token>`.
pub(crate) fn bearer_token(metadata: &MetadataMap) -> Result<Secret<String>, Error> {
    let mut values = metadata.get_all("authorization").iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(Error::MissingToken(
            "missing or repeated authorization metadata: expected one `authorization: Bearer <Google ID token>`",
        ));
    };
    let value = value.to_str().map_err(|_| {
        Error::MissingToken(
            "authorization metadata is not ASCII text; expected `Bearer <Google ID token>`",
        )
    })?;
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return Err(Error::MissingToken(EXPECTED_FORM));
    };
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(Error::MissingToken(EXPECTED_FORM));
    }
    Ok(Secret::new(token.to_string()))
}

const EXPECTED_FORM: &str = "malformed authorization metadata: expected `Bearer <Google ID token>`";

/// The contract's status table: the one mapping from [`Error`] to a gRPC
/// code, exhaustive on purpose: a new error case must be given its code
/// here. `impl From<Error> for Status` (below) uses it and adds the message
/// and, for errors a later retry can cure, a `google.rpc.RetryInfo` detail
/// with the delay from [`Error::retry_after`].
fn code_of(err: &Error) -> Code {
    match err {
        Error::MissingToken(_) => Code::Unauthenticated,
        Error::Token(e) => match e {
            VerifyError::KeysUnavailable => Code::Unavailable,
            VerifyError::TooLarge(_)
            | VerifyError::Malformed(_)
            | VerifyError::Algorithm(_)
            | VerifyError::MissingKid
            | VerifyError::Crit
            | VerifyError::DuplicateHeader(_)
            | VerifyError::UnknownKid
            | VerifyError::BadSignature
            | VerifyError::Expired
            | VerifyError::NotYetValid(_)
            | VerifyError::Issuer
            | VerifyError::Audience
            | VerifyError::MissingClaim(_)
            | VerifyError::ClaimType(..)
            | VerifyError::DuplicateClaim(_)
            | VerifyError::Lifetime => Code::Unauthenticated,
        },
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::Sts(e) => match e {
            StsError::InvalidIdentityToken(_) | StsError::ExpiredToken(_) => Code::Unauthenticated,
            StsError::AccessDenied(_) | StsError::IdpRejectedClaim(_) => Code::PermissionDenied,
            StsError::IdpCommunication(_) | StsError::Throttled(_) | StsError::Unavailable(_) => {
                Code::Unavailable
            }
            StsError::Refused { .. } => Code::FailedPrecondition,
            // tokenbridge's own per-identity budget of STS calls.
            StsError::Budget(_) => Code::ResourceExhausted,
        },
        Error::RateLimited { .. }
        | Error::Overloaded(_)
        | Error::MessageTooLarge(_)
        | Error::HeadersTooLarge { .. } => Code::ResourceExhausted,
        // The server's own deadline: an upstream was too slow. Callers
        // retry UNAVAILABLE; DEADLINE_EXCEEDED is what a client reports
        // when its own deadline passes.
        Error::DeadlineExceeded(_) => Code::Unavailable,
        // The caller did not send its request in time: its own fault.
        Error::Stalled(_) => Code::DeadlineExceeded,
        // The decision cannot be recorded: fail closed, retryably.
        Error::AuditUnavailable => Code::Unavailable,
        // A binding or the server's [issuer] must change first.
        Error::IssuerMode(_) => Code::FailedPrecondition,
    }
}

/// The status a caller receives for `err`: [`code_of`]'s code, the error's
/// message, and `RetryInfo` when a retry can help.
impl From<Error> for Status {
    fn from(err: Error) -> Status {
        status::status(code_of(&err), err.to_string(), err.retry_after())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::Limit;

    fn md(values: &[&str]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for v in values {
            m.append("authorization", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn bearer_forms() {
        assert_eq!(bearer_token(&md(&["Bearer abc"])).unwrap().expose(), "abc");
        assert_eq!(
            bearer_token(&md(&["bearer  abc "])).unwrap().expose(),
            "abc"
        );
        for bad in [
            &[][..],
            &["Basic abc"],
            &["Bearer"],
            &["Bearer "],
            &["abc"],
            &["Bearer a b"],
            &["Bearer a", "Bearer b"],
        ] {
            let err = bearer_token(&md(bad)).unwrap_err();
            assert_eq!(Status::from(err).code(), Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn status_table() {
        let code = |e: Error| Status::from(e).code();
        assert_eq!(code(VerifyError::Expired.into()), Code::Unauthenticated);
        assert_eq!(code(VerifyError::KeysUnavailable.into()), Code::Unavailable);
        assert_eq!(
            code(Error::InvalidArgument("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(
            code(Error::PermissionDenied("x".into())),
            Code::PermissionDenied
        );
        assert_eq!(
            code(StsError::InvalidIdentityToken("x".into()).into()),
            Code::Unauthenticated
        );
        assert_eq!(
            code(StsError::ExpiredToken("x".into()).into()),
            Code::Unauthenticated
        );
        assert_eq!(
            code(StsError::AccessDenied("x".into()).into()),
            Code::PermissionDenied
        );
        assert_eq!(
            code(StsError::IdpRejectedClaim("x".into()).into()),
            Code::PermissionDenied
        );
        assert_eq!(
            code(StsError::IdpCommunication("x".into()).into()),
            Code::Unavailable
        );
        assert_eq!(
            code(StsError::Throttled("x".into()).into()),
            Code::Unavailable
        );
        assert_eq!(
            code(StsError::Unavailable("x".into()).into()),
            Code::Unavailable
        );
        assert_eq!(
            code(
                StsError::Refused {
                    code: "ValidationError".into(),
                    message: "x".into()
                }
                .into()
            ),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(Error::RateLimited {
                limit: Limit::Peer,
                retry_after: Duration::from_millis(250)
            }),
            Code::ResourceExhausted
        );
        assert_eq!(code(Error::Overloaded(10)), Code::ResourceExhausted);
        assert_eq!(code(Error::DeadlineExceeded(5000)), Code::Unavailable);
        assert_eq!(code(Error::AuditUnavailable), Code::Unavailable);
        assert_eq!(code(Error::MessageTooLarge(4096)), Code::ResourceExhausted);
        assert_eq!(
            code(Error::HeadersTooLarge {
                size: 70_000,
                limit: 65_536
            }),
            Code::ResourceExhausted
        );
    }

    #[test]
    fn retryable_failures_carry_retry_info_and_others_do_not() {
        let retry = |e: Error| status::retry_after(&Status::from(e));
        assert_eq!(
            retry(Error::RateLimited {
                limit: Limit::Subject,
                retry_after: Duration::from_millis(250)
            }),
            Some(Duration::from_millis(250))
        );
        assert!(retry(StsError::Throttled("x".into()).into()).is_some());
        assert!(retry(StsError::Unavailable("x".into()).into()).is_some());
        assert!(retry(VerifyError::KeysUnavailable.into()).is_some());
        assert!(retry(Error::Overloaded(1)).is_some());
        assert!(retry(Error::DeadlineExceeded(1)).is_some());
        assert!(retry(Error::AuditUnavailable).is_some());
        assert_eq!(retry(VerifyError::Expired.into()), None);
        assert_eq!(retry(StsError::AccessDenied("x".into()).into()), None);
        assert_eq!(retry(Error::PermissionDenied("x".into())), None);
    }
}
