//! The policy admin listener's edge: every call is authenticated from its
//! headers (the `authorization` metadata) before any of its message is
//! read. An unauthenticated or unlisted caller is answered from there, so
//! nothing it sends in the message (a 4 MiB binding name, say) is decoded,
//! kept or audited; its audit line names only the method (one of the known
//! names, else `unknown`) and its address.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use futures_util::future::BoxFuture;
use tonic::{metadata::MetadataMap, server::NamedService, transport::server::TcpConnectInfo};
use tower::Service;

use super::{AdminAccess, METHODS, PolicyAdminService};

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

/// The authenticated caller of a policy admin call (its email or unique
/// ID), put in the request's extensions by [`Authenticate`].
#[derive(Clone, Debug)]
pub(super) struct Actor(pub(super) String);

/// `inner` behind authentication from the headers.
pub struct Authenticate<S> {
    inner: S,
    access: Arc<AdminAccess>,
    service: Arc<PolicyAdminService>,
}

impl<S> Authenticate<S> {
    pub(super) fn new(
        inner: S,
        access: Arc<AdminAccess>,
        service: Arc<PolicyAdminService>,
    ) -> Self {
        Self {
            inner,
            access,
            service,
        }
    }
}

impl<S: Clone> Clone for Authenticate<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            access: self.access.clone(),
            service: self.service.clone(),
        }
    }
}

impl<S: NamedService> NamedService for Authenticate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<HttpRequest> for Authenticate<S>
where
    S: Service<HttpRequest, Response = HttpResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        // The ready service goes with this call; a fresh clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (access, service) = (self.access.clone(), self.service.clone());
        Box::pin(async move {
            let started = Instant::now();
            let metadata = MetadataMap::from_headers(request.headers().clone());
            match access.authorize(&metadata).await {
                Ok(actor) => {
                    request.extensions_mut().insert(Actor(actor));
                    inner.call(request).await
                }
                Err(status) => {
                    let method = method_of(request.uri().path());
                    let peer: Option<SocketAddr> = request
                        .extensions()
                        .get::<TcpConnectInfo>()
                        .and_then(TcpConnectInfo::remote_addr);
                    service
                        .record::<()>(method, None, "", &Err(status.clone()), peer, started)
                        .await;
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// The RPC method of `path` (`/tokenbridge.v1.PolicyAdmin/ListBindings`),
/// if it is one of ours; `unknown` otherwise (never the caller's text).
fn method_of(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or_default();
    METHODS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::method_of;

    #[test]
    fn methods_are_named_only_from_the_known_list() {
        assert_eq!(
            method_of("/tokenbridge.v1.PolicyAdmin/ListBindings"),
            "ListBindings"
        );
        assert_eq!(method_of("/tokenbridge.v1.PolicyAdmin/xxxxxxxx"), "unknown");
        assert_eq!(method_of(""), "unknown");
    }
}
