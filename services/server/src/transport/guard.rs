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
//!    and its concurrency permit is released. A handler that started sees
//!    the deadline through [`CallDeadline`]: what it wraps in
//!    [`CallDeadline::bound`] ends when the deadline passes, and it is given
//!    `grace` beyond it (for its audit record), after which it is dropped
//!    too.
//!
//! One timer per call serves both: the guard's. When it fires for a
//! handler that started, the guard marks the deadline passed and polls the
//! call once more (the handler runs inside the guard's future, on the same
//! task), so the handler's bounded part ends at once; the same timer is then
//! reset to the end of the grace. (The handler used to arm a second timer
//! for the same instant; one deadline needs one timer. Measured: 0.3 %
//! fewer instructions per call, throughput unchanged; BENCHMARKS.md.)
//!
//! Together with the HTTP/2 settings of [`super::http2`] (a stream limit
//! per connection, keepalive), a caller that opens streams and never sends
//! their messages holds each permit for one deadline at most, and at most
//! `max_concurrent_streams` of them per connection.

use std::{
    convert::Infallible,
    future::Future,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use tokenbridge_proto::status::code_name;
use tonic::{Status, server::NamedService, transport::server::TcpConnectInfo};
use tower::{
    Service, ServiceBuilder,
    limit::{ConcurrencyLimit, GlobalConcurrencyLimitLayer},
    load_shed::LoadShed,
};
use tracing::debug;

use crate::{error::Error, observability::metrics::Metrics, transport::limits::RateLimits};

type HttpRequest = http::Request<tonic::body::Body>;
/// `grpc-status` of OUT_OF_RANGE, as it is on the wire.
const OUT_OF_RANGE: &[u8] = b"11";
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
pub struct CallDeadline(Arc<DeadlineState>);

#[derive(Debug)]
struct DeadlineState {
    at: tokio::time::Instant,
    /// [`WAITING`], [`STARTED`] or [`PASSED`].
    phase: AtomicU8,
}

/// The handler has not started: its message has not arrived.
const WAITING: u8 = 0;
/// The handler has its message.
const STARTED: u8 = 1;
/// The handler started and the deadline passed.
const PASSED: u8 = 2;

impl CallDeadline {
    fn new(at: tokio::time::Instant) -> Self {
        Self(Arc::new(DeadlineState {
            at,
            phase: AtomicU8::new(WAITING),
        }))
    }

    /// When the call must be answered.
    pub fn at(&self) -> tokio::time::Instant {
        self.0.at
    }

    /// The handler has its message: from now on the call is not stalled.
    pub fn started(&self) {
        // Only from WAITING: a deadline that passed stays passed.
        let _ =
            self.0
                .phase
                .compare_exchange(WAITING, STARTED, Ordering::AcqRel, Ordering::Acquire);
    }

    fn has_started(&self) -> bool {
        self.0.phase.load(Ordering::Acquire) != WAITING
    }

    fn has_passed(&self) -> bool {
        self.0.phase.load(Ordering::Acquire) == PASSED
    }

    /// Marks the deadline passed for a handler that started.
    fn pass(&self) {
        self.0.phase.store(PASSED, Ordering::Release);
    }

    /// `future`, ended with `None` once the guard finds the deadline
    /// passed. It arms no timer of its own: it is polled inside the
    /// guard's future, which polls it again when its timer fires.
    pub async fn bound<F: Future>(&self, future: F) -> Option<F::Output> {
        let mut future = pin!(future);
        std::future::poll_fn(|cx| {
            if self.has_passed() {
                return Poll::Ready(None);
            }
            future.as_mut().poll(cx).map(Some)
        })
        .await
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
        let deadline = CallDeadline::new(tokio::time::Instant::now() + settings.deadline);
        request.extensions_mut().insert(deadline.clone());
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut call = pin!(call);
            let mut timer = pin!(tokio::time::sleep_until(deadline.at()));
            let answered = std::future::poll_fn(|cx| {
                loop {
                    if let Poll::Ready(answered) = call.as_mut().poll(cx) {
                        return Poll::Ready(Some(answered));
                    }
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Not started: stalled. Passed: the grace is over too.
                    if !deadline.has_started() || deadline.has_passed() {
                        return Poll::Ready(None);
                    }
                    // The handler's bounded part ends on the next poll; it
                    // has the grace for its answer and audit record.
                    deadline.pass();
                    timer.as_mut().reset(deadline.at() + settings.grace);
                }
            })
            .await;
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
                None if deadline.has_started() => {
                    settings.refuse(Error::DeadlineExceeded(settings.deadline.as_millis() as u64))
                }
                None => {
                    debug!(peer = ?peer, "call dropped: its message did not arrive before the deadline");
                    settings.refuse(Error::Stalled(settings.deadline.as_millis() as u64))
                }
            };
            // The services never answer OUT_OF_RANGE themselves: this is
            // the codec's message size limit.
            if response
                .headers()
                .get("grpc-status")
                .is_some_and(|code| code.as_bytes() == OUT_OF_RANGE)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_is_spelled_as_on_the_wire() {
        assert_eq!(
            OUT_OF_RANGE,
            (tonic::Code::OutOfRange as i32).to_string().as_bytes()
        );
    }

    #[tokio::test]
    async fn a_bound_future_ends_when_the_deadline_is_passed_and_not_before() {
        let deadline = CallDeadline::new(tokio::time::Instant::now());
        assert_eq!(deadline.bound(async { 1 }).await, Some(1));
        deadline.pass();
        assert_eq!(deadline.bound(async { 1 }).await, None);
        // Once passed, a late `started` does not bring it back.
        deadline.started();
        assert!(deadline.has_started());
        assert_eq!(deadline.bound(std::future::pending::<()>()).await, None);
    }
}
