//! Wiring: builds every component from a [`Config`] and a [`Policy`], and
//! serves gRPC (TokenExchange, health, reflection) until told to stop.
//!
//! Tests start the whole service in-process with [`start`] on port 0 and stop
//! it with [`Running::stop`]; `main` does the same with the configured address
//! and SIGTERM/SIGINT.
//!
//! Health: the overall service (`""`) and `tokenbridge.v1.TokenExchange` report
//! NOT_SERVING until Google's keys have been fetched once, then SERVING; on
//! shutdown they turn NOT_SERVING before the listener closes, and in-flight
//! calls get up to `server.drain_timeout_seconds` to finish.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokenbridge_proto::v1::token_exchange_server::TokenExchangeServer;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use crate::{
    cache::{CredentialCache, SystemClock},
    config::Config,
    exchange::Exchange,
    grpc::TokenExchangeService,
    health::{HealthHandle, health},
    jwks::Jwks,
    jwt::Verifier,
    policy::Policy,
    sts::Sts,
};

/// The largest request header block accepted (the token travels in a header;
/// tokens over 16 KiB are refused by the verifier with a clear message, this
/// only bounds what the transport reads).
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP client for the JWKS could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// Reflection could not be set up.
    #[error("cannot set up server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A running service.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    exchange: Arc<Exchange>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AppError>>,
}

impl Running {
    /// The exchange core: replace the policy, inspect the cache.
    pub fn exchange(&self) -> &Arc<Exchange> {
        &self.exchange
    }

    /// Starts a graceful shutdown and waits for it to finish.
    pub async fn stop(mut self) -> Result<(), AppError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.await {
            Ok(result) => result,
            Err(join) => {
                warn!(error = %join, "server task ended abnormally");
                Ok(())
            }
        }
    }
}

/// Binds `config.server.listen` and serves in a background task.
pub async fn start(config: Config, policy: Policy) -> Result<Running, AppError> {
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })?;
    start_on(config, policy, listener).await
}

/// Serves on `listener` in a background task.
pub async fn start_on(
    config: Config,
    policy: Policy,
    listener: TcpListener,
) -> Result<Running, AppError> {
    let addr = listener.local_addr().map_err(|source| AppError::Bind {
        addr: config.server.listen,
        source,
    })?;
    let service = Service::build(config, policy)?;
    let exchange = service.exchange.clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(service.serve(listener, async {
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        exchange,
        shutdown: Some(tx),
        task,
    })
}

/// Serves on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    config: Config,
    policy: Policy,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    Service::build(config, policy)?
        .serve(listener, shutdown)
        .await
}

/// Every component, built and wired, not yet serving.
struct Service {
    config: Config,
    jwks: Arc<Jwks>,
    exchange: Arc<Exchange>,
    bindings: usize,
}

impl Service {
    fn build(config: Config, policy: Policy) -> Result<Self, AppError> {
        let g = &config.google;
        let jwks = Arc::new(Jwks::new(
            g.jwks_uri.clone(),
            g.jwks_timeout,
            g.jwks_refetch_cooldown,
        )?);
        let verifier = Arc::new(Verifier::new(g, jwks.clone()));
        let sts = Arc::new(Sts::new(&config.aws));
        let bindings = policy.binding_count();
        let cache = CredentialCache::new(sts, config.cache.clone(), Arc::new(SystemClock));
        let exchange = Arc::new(Exchange::new(verifier, policy, cache));
        Ok(Self {
            config,
            jwks,
            exchange,
            bindings,
        })
    }

    async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let Service {
            config,
            jwks,
            exchange,
            bindings,
        } = self;
        let g = &config.google;
        let (reporter, health) = health();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tokenbridge_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;

        let keys = AbortOnDrop(tokio::spawn(keep_keys(jwks, reporter.clone())));

        let addr = listener.local_addr().ok();
        info!(
            listen = ?addr,
            audiences = ?g.audiences,
            issuers = ?g.issuers,
            jwks_uri = %g.jwks_uri,
            aws_region = %config.aws.region,
            sts_endpoint = config.aws.sts_endpoint.as_deref().unwrap_or("(regional default)"),
            sts_timeout_ms = config.aws.sts_timeout.as_millis() as u64,
            policy_file = %config.policy_file.display(),
            bindings,
            cache = ?config.cache,
            "tokenbridge serving"
        );

        let (draining_tx, draining_rx) = oneshot::channel::<()>();
        let stop_reporter = reporter.clone();
        let server = tonic::transport::Server::builder()
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .add_service(health)
            .add_service(reflection)
            .add_service(TokenExchangeServer::new(TokenExchangeService::new(
                exchange,
            )))
            .serve_with_incoming_shutdown(incoming(listener), async move {
                shutdown.await;
                info!("shutting down: health NOT_SERVING, draining in-flight calls");
                stop_reporter.shutting_down();
                let _ = draining_tx.send(());
            });
        let drain = config.server.drain_timeout;
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => result?,
            () = drain_deadline(draining_rx, drain) => {
                warn!(drain_timeout_secs = drain.as_secs(), "drain timeout reached; closing remaining calls");
            }
        }
        drop(keys);
        info!("tokenbridge stopped");
        Ok(())
    }
}

/// Accepted connections get `TCP_NODELAY` (without it, small gRPC frames
/// wait for delayed ACKs: ~40 ms per call) and TCP keepalive.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

/// Aborts a background task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn drain_deadline(draining: oneshot::Receiver<()>, drain: Duration) {
    if draining.await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(drain).await;
}

/// Fetches Google's keys until they are there, reports SERVING, then keeps
/// them fresh in the background ahead of `max-age`.
async fn keep_keys(jwks: Arc<Jwks>, reporter: HealthHandle) {
    let mut wait = Duration::from_millis(250);
    while !jwks.prefetch().await {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
    reporter.set_serving();
    info!("Google signing keys loaded; health SERVING");
    jwks.keep_fresh().await;
}
