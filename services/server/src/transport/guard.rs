//! The edge of every gRPC listener (exchange and policy admin): what a call
//! passes before any of its message is read, and the deadline that covers
//! the whole call, message included.
//!
//! In order:
//!
//! 1. the **per-peer rate limit** (the listener's own [`RateLimits`]), from
//!    the headers alone;
//! 2. the **concurrency limit**: tower's `GlobalConcurrencyLimit` behind
//!    `LoadShed`; over it the call is refused at once (RESOURCE_EXHAUSTED
//!    with `RetryInfo`);
//! 3. the **deadline**, counted from when the headers arrived. If the
//!    handler has not started by then (the message, the request body, has
//!    not arrived), the call ends with DEADLINE_EXCEEDED ([`Error::Stalled`])
//!    and its concurrency permit is released. A handler that started is
//!    given the rest of the deadline through [`CallDeadline`] and `grace`
//!    beyond it (for its audit record), after which it is dropped too.
//!
//! Together with the HTTP/2 settings of [`super::http2`] (a stream limit
//! per connection, keepalive), a caller that opens streams and never sends
//! their messages holds each permit for one deadline at most, and at most
//! `max_concurrent_streams` of them per connection.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use tokenbridge_proto::status::code_name;
use tonic::{Code, Status, server::NamedService, transport::server::TcpConnectInfo};
use tower::{
    Service, ServiceBuilder,
    limit::{ConcurrencyLimit, GlobalConcurrencyLimitLayer},
    load_shed::LoadShed,
};
use tracing::debug;

use crate::{error::Error, observability::metrics::Metrics, transport::limits::RateLimits};

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

/// What a listener's guard enforces.
#[derive(Clone)]
pub struct GuardSettings {
    /// Calls in flight at most; more are shed.
    pub max_concurrent: usize,
    /// From the headers to the answer.
    pub deadline: Duration,
    /// How long past the deadline a started handler may take to answer
    /// (its audit record).
    pub grace: Duration,
    /// The largest request message (the codec's limit); answered with
    /// [`Error::MessageTooLarge`] rather than tonic's OUT_OF_RANGE.
    pub max_request_bytes: usize,
    /// The per-peer rate limit, if any.
    pub peers: Option<Arc<RateLimits>>,
    /// The exchange's metrics, for the exchange listener (refusals here are
    /// counted as exchanges).
    pub metrics: Option<Arc<Metrics>>,
}

/// The call's deadline, in the request's extensions for the handler, and
/// whether the handler has started (its message arrived).
#[derive(Clone, Debug)]
pub struct CallDeadline {
    at: tokio::time::Instant,
    started: Arc<AtomicBool>,
}

impl CallDeadline {
    /// When the call must be answered.
    pub fn at(&self) -> tokio::time::Instant {
        self.at
    }

    /// The handler has its message: from now on the call is not stalled.
    pub fn started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// The deadline of a call, from its extensions.
    pub fn of(extensions: &http::Extensions) -> Option<Self> {
        extensions.get::<CallDeadline>().cloned()
    }
}

/// `inner` behind a listener's guard (see the module's documentation).
pub fn guard<S>(inner: S, settings: GuardSettings) -> Guard<S>
where
    S: Service<HttpRequest, Response = HttpResponse, Error = Infallible>,
{
    Guard {
        inner: ServiceBuilder::new()
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::new(settings.max_concurrent))
            .service(inner),
        settings: Arc::new(settings),
    }
}

/// A gRPC service behind its listener's guard.
pub struct Guard<S> {
    inner: LoadShed<ConcurrencyLimit<S>>,
    settings: Arc<GuardSettings>,
}

impl<S: Clone> Clone for Guard<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<S: NamedService> NamedService for Guard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<HttpRequest> for Guard<S>
where
    S: Service<HttpRequest, Response = HttpResponse, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // LoadShed is always ready (it sheds in `call` instead), and the
        // service under it is infallible.
        <LoadShed<_> as Service<HttpRequest>>::poll_ready(&mut self.inner, cx).map(|_| Ok(()))
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        let settings = self.settings.clone();
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        if let Some(peers) = &settings.peers
            && let Err(limited) = peers.check_peer(peer.map(|p| p.ip()))
        {
            if let Some(m) = &settings.metrics {
                m.rate_limited("peer");
            }
            return Box::pin(std::future::ready(Ok(settings.refuse(limited))));
        }
        let deadline = CallDeadline {
            at: tokio::time::Instant::now() + settings.deadline,
            started: Arc::new(AtomicBool::new(false)),
        };
        request.extensions_mut().insert(deadline.clone());
        let call = self.inner.call(request);
        Box::pin(async move {
            tokio::pin!(call);
            let answered = match tokio::time::timeout_at(deadline.at, &mut call).await {
                Ok(answered) => Some(answered),
                Err(_) if deadline.started.load(Ordering::Acquire) => {
                    tokio::time::timeout_at(deadline.at + settings.grace, &mut call)
                        .await
                        .ok()
                }
                Err(_) => None,
            };
            let response = match answered {
                // LoadShed's only error: the concurrency limit is reached.
                Some(Err(_shed)) => {
                    debug!(
                        max_concurrent_requests = settings.max_concurrent,
                        "call shed: overloaded"
                    );
                    if let Some(m) = &settings.metrics {
                        m.rate_limited("concurrency");
                    }
                    settings.refuse(Error::Overloaded(settings.max_concurrent))
                }
                Some(Ok(response)) => response,
                None if deadline.started.load(Ordering::Acquire) => {
                    settings.refuse(Error::DeadlineExceeded(settings.deadline.as_millis() as u64))
                }
                None => {
                    debug!(peer = ?peer, "call dropped: its message did not arrive before the deadline");
                    settings.refuse(Error::Stalled(settings.deadline.as_millis() as u64))
                }
            };
            // The services never answer OUT_OF_RANGE themselves: this is
            // the codec's message size limit.
            let out_of_range = (Code::OutOfRange as i32).to_string();
            if response
                .headers()
                .get("grpc-status")
                .is_some_and(|code| code.as_bytes() == out_of_range.as_bytes())
            {
                return Ok(settings.refuse(Error::MessageTooLarge(settings.max_request_bytes)));
            }
            Ok(response)
        })
    }
}

impl GuardSettings {
    /// The answer for a call refused here, counted in the exchange metrics
    /// (on the exchange listener).
    fn refuse(&self, error: Error) -> HttpResponse {
        let kind = error.kind();
        let status = Status::from(error);
        if let Some(m) = &self.metrics {
            m.exchange(kind, code_name(status.code()), None);
        }
        status.into_http()
    }
}
