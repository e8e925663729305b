//! Wiring: builds every component from a [`Config`] and a [`Policy`], and
//! serves gRPC (TokenExchange, health, reflection) until told to stop.
//!
//! Tests start the whole service in-process with [`start`] on port 0 and stop
//! it with [`Running::stop`]; `main` does the same with the configured address
//! and SIGTERM/SIGINT.
//!
//! Health: the overall service (`""`) and `tokenbridge.v1.TokenExchange` report
//! NOT_SERVING until Google's keys have been fetched once, then SERVING; on
//! shutdown they turn NOT_SERVING before the listeners close, and in-flight
//! calls get up to `server.drain_timeout_seconds` to finish.
//!
//! Listeners: plaintext on `server.listen`, and with `[tls]` also TLS on
//! `tls.listen`; one gRPC server serves both. The admin listener
//! (`admin.listen`: `/metrics`, `/healthz`, `/readyz`) is plain HTTP apart
//! from them, up until the gRPC server has drained.
//!
//! Every service has its own metrics registry and audit log writer, so that
//! tests can run several in one process.
//!
//! Policy: from the file (`policy.file`, the snapshot given to [`start`]), or
//! with `[store]` from the SQL store: opened (and migrated) at start, which
//! fails if the store cannot be reached, then followed: every change any
//! replica commits is loaded and in force within about a second
//! (PostgreSQL: LISTEN/NOTIFY; SQLite: polling the revision). While the
//! store is unreachable the last loaded policy stays in force. With
//! `[policy_admin]`, `tokenbridge.v1.PolicyAdmin` is served on its own
//! listener (see [`crate::policy_admin`]); on shutdown it stops taking calls
//! with the exchange listener and its calls in flight get the same drain
//! time.
//!
//! Console: with `[console]`, the web console (crate `tokenbridge-console`,
//! backend [`crate::console`]) on `console.listen`, bound at start (a bind
//! error fails the start) and served by the hardened HTTP server
//! ([`crate::transport::http`]). The audit log then also keeps the recent
//! decisions in a ring for it. It stops taking requests when the exchange
//! listener does; its requests in flight get the same drain time.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};
use tokio_util::task::AbortOnDropHandle;

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use tokenbridge_policy::PolicySnapshot;

use crate::{
    aws::cache::{CredentialCache, SystemClock},
    aws::sts::Sts,
    config::Config,
    console::{ConsoleBackend, ConsoleParts},
    exchange::Exchange,
    google::jwks::Jwks,
    google::jwt::Verifier,
    health::{HealthHandle, health},
    issuer::Issuer,
    observability::audit::{AuditError, AuditLog, AuditSink, recent::RecentDecisions},
    observability::metrics::{Metrics, MetricsError},
    observability::policy_sync::PolicySync,
    observability::probes,
    policy_admin::{AdminAccess, PolicyAdminServer, PolicyAdminService, PolicySource},
    store::{PolicyStore as _, Store, StoreError, load_snapshot},
    transport::grpc::{self, TokenExchangeService},
    transport::limits::{JANITOR_INTERVAL, RateLimits},
    transport::tls::{self, TlsError, TlsReloader},
};

/// The HTTP/2 layer accepts header blocks up to this many times
/// `limits.max_header_list_bytes`, so that the service itself refuses the
/// ones in between with a clear RESOURCE_EXHAUSTED. Beyond it HTTP/2 refuses
/// them (GOAWAY ENHANCE_YOUR_CALM, or HTTP 431 per RFC 9113).
pub const TRANSPORT_HEADER_FACTOR: u32 = 8;

/// Makes aws-lc-rs rustls' process-wide default crypto provider. Both of
/// rustls' providers are in the build (reqwest brings ring), and rustls
/// refuses to guess between them. Idempotent; the server's own TLS names
/// its provider explicitly anyway.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

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
    /// The TLS certificate, key or CA file cannot be used.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The metrics exporter could not be set up.
    #[error("{0}")]
    Metrics(#[from] MetricsError),
    /// The audit log cannot be opened.
    #[error("{0}")]
    Audit(#[from] AuditError),
    /// The policy store cannot be opened or read.
    #[error("policy store: {0}")]
    Store(#[from] StoreError),
    /// An issuer key file cannot be used.
    #[error("issuer key {}: {}", .0.display(), .1)]
    Issuer(std::path::PathBuf, String),
    /// The console cannot be set up (its CSRF key file, IAP's HTTP client).
    #[error("console: {0}")]
    Console(#[from] tokenbridge_console::ConsoleError),
}

/// A running service.
pub struct Running {
    /// The address of the plaintext listener.
    pub addr: SocketAddr,
    /// The address of the TLS listener, if any.
    pub tls_addr: Option<SocketAddr>,
    /// The address of the admin listener (`/metrics`, `/healthz`,
    /// `/readyz`), if any.
    pub admin_addr: Option<SocketAddr>,
    /// The address of the policy admin listener, if any.
    pub policy_admin_addr: Option<SocketAddr>,
    /// The address of the issuer discovery listener (HTTPS), if any.
    pub discovery_addr: Option<SocketAddr>,
    /// The address of the web console's listener (HTTP), if any.
    pub console_addr: Option<SocketAddr>,
    _discovery: Option<AbortOnDropHandle<std::io::Result<()>>>,
    metrics: Arc<Metrics>,
    exchange: Arc<Exchange>,
    jwks: Arc<Jwks>,
    rate_limits: Arc<RateLimits>,
    tls: Option<Arc<TlsReloader>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AppError>>,
}

impl Running {
    /// The exchange core: replace the policy, inspect the cache.
    pub fn exchange(&self) -> &Arc<Exchange> {
        &self.exchange
    }

    /// Google's keys: their age and staleness.
    pub fn jwks(&self) -> &Arc<Jwks> {
        &self.jwks
    }

    /// The keyed rate limiters.
    pub fn rate_limits(&self) -> &Arc<RateLimits> {
        &self.rate_limits
    }

    /// The service's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The TLS configuration in use, if TLS is on: reload it, watch reloads.
    pub fn tls(&self) -> Option<&Arc<TlsReloader>> {
        self.tls.as_ref()
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
pub async fn start(config: Config, policy: PolicySnapshot) -> Result<Running, AppError> {
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })?;
    start_on(config, policy, listener).await
}

/// Serves on `listener` (plaintext) and, with `[tls]`, on `tls.listen`, in a
/// background task.
pub async fn start_on(
    config: Config,
    policy: PolicySnapshot,
    listener: TcpListener,
) -> Result<Running, AppError> {
    let addr = listener.local_addr().map_err(|source| AppError::Bind {
        addr: config.server.listen,
        source,
    })?;
    let (policy, store) = open_policy(&config, policy).await?;
    let service = Service::build(config, policy, store)?;
    let tls_listener = service.bind_tls().await?;
    let tls_addr = tls_listener.as_ref().and_then(|l| l.local_addr().ok());
    let admin_listener = service.bind_admin().await?;
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let policy_admin_listener = service.bind_policy_admin().await?;
    let policy_admin_addr = policy_admin_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok());
    let console = service.bind_console().await?;
    let console_addr = console.as_ref().and_then(|(l, _)| l.local_addr().ok());
    let (discovery_addr, discovery) = match (service.exchange.issuer(), &service.config.tls) {
        (Some(issuer), Some(tls_config)) if issuer.config().listen.is_some() => {
            let addr = issuer.config().listen.unwrap_or(addr);
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { addr, source })?;
            let bound = l.local_addr().ok();
            let public = tls::load_public(tls_config)?;
            let task = tokio::spawn(crate::issuer::discovery::serve(
                l,
                public,
                issuer.clone(),
                std::future::pending(),
            ));
            (bound, Some(AbortOnDropHandle::new(task)))
        }
        _ => (None, None),
    };
    let (exchange, jwks, rate_limits, tls, metrics) = (
        service.exchange.clone(),
        service.jwks.clone(),
        service.rate_limits.clone(),
        service.tls.clone(),
        service.metrics.clone(),
    );
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(service.serve(
        listener,
        tls_listener,
        admin_listener,
        policy_admin_listener,
        console,
        async {
            let _ = rx.await;
        },
    ));
    Ok(Running {
        addr,
        tls_addr,
        admin_addr,
        policy_admin_addr,
        discovery_addr,
        console_addr,
        _discovery: discovery,
        metrics,
        exchange,
        jwks,
        rate_limits,
        tls,
        shutdown: Some(tx),
        task,
    })
}

/// Serves on `listener` (and the TLS listener, if configured) until
/// `shutdown` completes, then drains.
pub async fn serve(
    config: Config,
    policy: PolicySnapshot,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let (policy, store) = open_policy(&config, policy).await?;
    let service = Service::build(config, policy, store)?;
    let tls_listener = service.bind_tls().await?;
    let admin_listener = service.bind_admin().await?;
    let policy_admin_listener = service.bind_policy_admin().await?;
    let console = service.bind_console().await?;
    service
        .serve(
            listener,
            tls_listener,
            admin_listener,
            policy_admin_listener,
            console,
            shutdown,
        )
        .await
}

/// With `[store]`: opens the store and loads the policy from it. Otherwise
/// the snapshot given (from the policy file).
async fn open_policy(
    config: &Config,
    policy: PolicySnapshot,
) -> Result<(PolicySnapshot, Option<Store>), AppError> {
    let Some(store_config) = &config.store else {
        return Ok((policy, None));
    };
    let store = Store::open_in(&store_config.url, store_config.schema.as_deref()).await?;
    let policy = load_snapshot(&store).await?;
    Ok((policy, Some(store)))
}

/// Every component, built and wired, not yet serving.
struct Service {
    config: Config,
    jwks: Arc<Jwks>,
    exchange: Arc<Exchange>,
    rate_limits: Arc<RateLimits>,
    tls: Option<Arc<TlsReloader>>,
    bindings: usize,
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
    store: Option<Store>,
    /// With `[store]`: how far the policy in force is behind it.
    policy_sync: Option<Arc<PolicySync>>,
    /// With `[console]`: the decisions the audit log keeps for it.
    recent: Option<Arc<RecentDecisions>>,
}

impl Service {
    fn build(
        config: Config,
        policy: PolicySnapshot,
        store: Option<Store>,
    ) -> Result<Self, AppError> {
        install_crypto_provider();
        let metrics = Metrics::prometheus()?;
        let g = &config.google;
        let jwks = Arc::new(
            Jwks::new(g.jwks_uri.clone(), g.jwks_timeout, g.jwks_refetch_cooldown)?
                .with_stale_window(g.jwks_stale_window)
                .with_metrics(metrics.clone()),
        );
        metrics.observe_jwks(&jwks);
        let verifier = Arc::new(Verifier::new(g, jwks.clone()));
        let sts = Arc::new(Sts::new(&config.aws).with_metrics(metrics.clone()));
        let bindings = policy.binding_count();
        let cache = CredentialCache::new(sts, config.cache.clone(), Arc::new(SystemClock))
            .with_metrics(metrics.clone());
        let rate_limits = Arc::new(RateLimits::new(&config.limits));
        let mut exchange =
            Exchange::new(verifier, policy, cache).with_rate_limits(rate_limits.clone());
        if let Some(i) = &config.issuer {
            let issuer =
                Issuer::new(i.clone()).map_err(|(file, why)| AppError::Issuer(file, why))?;
            exchange = exchange.with_issuer(Arc::new(issuer));
        }
        let exchange = Arc::new(exchange);
        let cached = Arc::downgrade(&exchange);
        metrics.observe_cache(move || cached.upgrade().map(|e| e.cache().entry_count()));
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(TlsReloader::new(t.clone())?)),
            None => None,
        };
        let recent = config
            .console
            .as_ref()
            .map(|_| Arc::new(RecentDecisions::default()));
        let mut audit = AuditLog::open(&config.audit, metrics.clone())?;
        if let Some(recent) = &recent {
            audit = audit.with_recent(recent.clone());
        }
        let audit = Arc::new(audit);
        let policy_sync = store.as_ref().map(|_| {
            let sync = Arc::new(PolicySync::new());
            metrics.observe_policy(&sync);
            sync
        });
        Ok(Self {
            config,
            jwks,
            exchange,
            rate_limits,
            tls,
            bindings,
            metrics,
            audit,
            store,
            policy_sync,
            recent,
        })
    }

    /// Where the bindings come from: the store, else the policy file.
    fn policy_source(&self) -> PolicySource {
        match (&self.store, &self.config.policy_file) {
            (Some(store), _) => PolicySource::Store(store.clone()),
            (None, Some(file)) => PolicySource::File(file.clone()),
            (None, None) => PolicySource::File("(none)".into()),
        }
    }

    /// With `[console]`: its listener, bound, and its routes over this
    /// service (built now, so that a bad CSRF key file fails the start).
    async fn bind_console(&self) -> Result<Option<(TcpListener, axum::Router)>, AppError> {
        let (Some(c), Some(recent)) = (&self.config.console, &self.recent) else {
            return Ok(None);
        };
        let backend = ConsoleBackend::new(ConsoleParts {
            source: self.policy_source(),
            exchange: self.exchange.clone(),
            audit: self.audit.clone(),
            recent: recent.clone(),
            metrics: self.metrics.clone(),
            jwks: self.jwks.clone(),
            policy_sync: self.policy_sync.clone(),
            exchange_audiences: self.config.google.audiences.clone(),
            issuer: self.config.issuer.clone(),
        });
        let router = tokenbridge_console::router(c, Arc::new(backend))?;
        let listener = TcpListener::bind(c.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: c.listen,
                source,
            })?;
        Ok(Some((listener, router)))
    }

    async fn bind_policy_admin(&self) -> Result<Option<TcpListener>, AppError> {
        let Some(p) = &self.config.policy_admin else {
            return Ok(None);
        };
        TcpListener::bind(p.listen)
            .await
            .map(Some)
            .map_err(|source| AppError::Bind {
                addr: p.listen,
                source,
            })
    }

    /// The `PolicyAdmin` service: admin tokens verified like exchange
    /// tokens (same keys) but for the admin audiences.
    fn policy_admin(&self) -> Option<PolicyAdminServer> {
        let p = self.config.policy_admin.as_ref()?;
        let google = crate::google::GoogleConfig {
            audiences: p.audiences.clone(),
            ..self.config.google.clone()
        };
        let admin_verifier = Arc::new(Verifier::new(&google, self.jwks.clone()));
        let source = self.policy_source();
        Some(
            PolicyAdminService::new(
                AdminAccess::new(admin_verifier, &p.principals),
                source,
                self.exchange.clone(),
                self.exchange.verifier().clone(),
            )
            .with_audit(self.audit.clone())
            .into_service(&p.limits, grpc::AUDIT_GRACE),
        )
    }

    async fn bind_admin(&self) -> Result<Option<TcpListener>, AppError> {
        let Some(addr) = self.config.admin.listen else {
            return Ok(None);
        };
        TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| AppError::Bind { addr, source })
    }

    async fn bind_tls(&self) -> Result<Option<TcpListener>, AppError> {
        let Some(t) = &self.config.tls else {
            return Ok(None);
        };
        let addr = t.listen;
        TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| AppError::Bind { addr, source })
    }

    async fn serve(
        self,
        listener: TcpListener,
        tls_listener: Option<TcpListener>,
        admin_listener: Option<TcpListener>,
        policy_admin_listener: Option<TcpListener>,
        console: Option<(TcpListener, axum::Router)>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let policy_admin = self.policy_admin();
        let follow = self.store.clone().map(|store| {
            let exchange = self.exchange.clone();
            let sync = self.policy_sync.clone();
            AbortOnDropHandle::new(tokio::spawn(follow_store(store, exchange, sync)))
        });
        let policy_admin_addr = policy_admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok());
        let admin_tls = self
            .config
            .policy_admin
            .as_ref()
            .is_some_and(|p| p.tls)
            .then(|| self.tls.clone())
            .flatten();
        // The policy admin listener stops taking calls when the exchange
        // listener does, and its calls in flight get the same drain time.
        let drain = self.config.server.drain_timeout;
        let (stop_policy_admin, policy_admin_stopping) = tokio::sync::watch::channel(false);
        let max_streams = self.config.limits.max_concurrent_streams;
        let policy_admin_task = policy_admin_listener.zip(policy_admin).map(|(l, svc)| {
            let (mut stopping, mut drained) =
                (policy_admin_stopping.clone(), policy_admin_stopping);
            let stop = async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            let drained = async move {
                let _ = drained.wait_for(|stop| *stop).await;
                tokio::time::sleep(drain).await;
            };
            AbortOnDropHandle::new(tokio::spawn(async move {
                let router = http2_server(max_streams)
                    .http2_max_header_list_size(POLICY_ADMIN_MAX_HEADER_LIST_BYTES)
                    .add_service(svc);
                let served = async move {
                    match admin_tls {
                        Some(t) => {
                            router
                                .serve_with_incoming_shutdown(
                                    tls::tls_only(tcp_incoming(l), t),
                                    stop,
                                )
                                .await
                        }
                        None => {
                            router
                                .serve_with_incoming_shutdown(tcp_incoming(l), stop)
                                .await
                        }
                    }
                };
                let served = tokio::select! {
                    served = served => served,
                    () = drained => {
                        warn!(drain_timeout_secs = drain.as_secs(), "drain timeout reached; closing remaining policy admin calls");
                        Ok(())
                    }
                };
                if let Err(e) = served {
                    warn!(error = %e, "policy admin listener failed");
                }
            }))
        });
        // The console stops taking requests with the exchange listener too;
        // its requests in flight get the same drain time.
        let console_addr = console.as_ref().and_then(|(l, _)| l.local_addr().ok());
        let console_task = console.map(|(l, router)| {
            let mut stopping = stop_policy_admin.subscribe();
            let stop = async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            AbortOnDropHandle::new(tokio::spawn(async move {
                if let Err(e) = crate::transport::http::serve(l, router, stop).await {
                    warn!(error = %e, "console listener failed");
                }
            }))
        });
        let Service {
            config,
            jwks,
            exchange,
            rate_limits,
            tls,
            bindings,
            metrics,
            audit,
            store,
            ..
        } = self;
        let g = &config.google;
        let (reporter, health) = health();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tokenbridge_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;

        let keys = AbortOnDropHandle::new(tokio::spawn(keep_keys(jwks, reporter.clone())));
        let janitor = AbortOnDropHandle::new(tokio::spawn(forget_idle_callers(
            rate_limits.clone(),
            exchange.clone(),
        )));
        let tls_watch = tls.clone().map(|t| {
            AbortOnDropHandle::new(tokio::spawn(async move {
                t.watch_files().await;
            }))
        });
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        // Up until the gRPC server has drained: `/readyz` says 503 meanwhile.
        let admin = admin_listener.map(|l| {
            let (metrics, reporter) = (metrics.clone(), reporter.clone());
            AbortOnDropHandle::new(tokio::spawn(async move {
                if let Err(e) = probes::serve(l, metrics, reporter, std::future::pending()).await {
                    warn!(error = %e, "admin listener failed");
                }
            }))
        });

        let addr = listener.local_addr().ok();
        let tls_addr = tls_listener.as_ref().and_then(|l| l.local_addr().ok());
        info!(
            listen = ?addr,
            audiences = ?g.audiences,
            issuers = ?g.issuers,
            jwks_uri = %g.jwks_uri,
            aws_region = %config.aws.region,
            sts_endpoint = config.aws.sts_endpoint.as_deref().unwrap_or("(regional default)"),
            sts_timeout_ms = config.aws.sts_timeout.as_millis() as u64,
            policy_file = ?config.policy_file,
            policy_store = store.as_ref().map(Store::backend_name),
            policy_admin_listen = ?policy_admin_addr,
            console_listen = ?console_addr,
            console_iap = config.console.as_ref().is_some_and(|c| c.iap_audience.is_some()),
            bindings,
            cache = ?config.cache,
            limits = ?config.limits,
            fallback_regions = ?config.aws.fallback_regions.iter().map(|f| f.region.as_str()).collect::<Vec<_>>(),
            jwks_stale_window_secs = g.jwks_stale_window.as_secs(),
            tls_listen = ?tls_addr,
            tls_client_ca = ?config.tls.as_ref().and_then(|t| t.client_ca_file.as_ref()),
            admin_listen = ?admin_addr,
            audit_sink = %match &config.audit.sink {
                AuditSink::Stdout => "stdout".to_string(),
                AuditSink::Stderr => "stderr".to_string(),
                AuditSink::File(path) => path.display().to_string(),
            },
            otlp_endpoint = config.telemetry.otlp_endpoint.as_deref().unwrap_or("(traces off)"),
            "tokenbridge serving"
        );
        if tls.is_some() && addr.is_some_and(|a| !a.ip().is_loopback()) {
            warn!(listen = ?addr, "TLS is on, and plaintext is served on a non-loopback address too; bind server.listen to loopback unless a TLS-terminating proxy needs it");
        }

        let limits = &config.limits;
        let token_exchange = grpc::limited(
            TokenExchangeService::new(exchange)
                .with_metrics(metrics)
                .with_audit(audit.clone())
                .with_rate_limits(rate_limits)
                .with_request_timeout(limits.request_timeout)
                .with_max_header_bytes(limits.max_header_list_bytes as usize),
            limits,
        );
        let audit_log = audit;
        let (draining_tx, draining_rx) = oneshot::channel::<()>();
        let stop_reporter = reporter.clone();
        let stop_admin_calls = stop_policy_admin.clone();
        let incoming = tls::incoming(
            tcp_incoming(listener),
            tls_listener.zip(tls).map(|(l, t)| (tcp_incoming(l), t)),
        );
        let server = http2_server(limits.max_concurrent_streams)
            .http2_max_header_list_size(
                limits
                    .max_header_list_bytes
                    .saturating_mul(TRANSPORT_HEADER_FACTOR),
            )
            .add_service(health)
            .add_service(reflection)
            .add_service(token_exchange)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                info!("shutting down: health NOT_SERVING, draining in-flight calls");
                stop_reporter.shutting_down();
                stop_admin_calls.send_replace(true);
                let _ = draining_tx.send(());
            });
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => result?,
            () = drain_deadline(draining_rx, drain) => {
                warn!(drain_timeout_secs = drain.as_secs(), "drain timeout reached; closing remaining calls");
            }
        }
        if let Some(mut task) = policy_admin_task {
            // It ends on its own within the drain time from when draining
            // started (the same signal as the exchange listener's).
            stop_policy_admin.send_replace(true);
            let _ = (&mut task).await;
        }
        if let Some(mut task) = console_task {
            stop_policy_admin.send_replace(true);
            if tokio::time::timeout(drain, &mut task).await.is_err() {
                warn!(
                    drain_timeout_secs = drain.as_secs(),
                    "drain timeout reached; closing remaining console requests"
                );
            }
        }
        // Refusals' records are written without anyone waiting: let them land.
        audit_log.flush().await;
        drop((keys, janitor, tls_watch, follow));
        // The admin listener is closed once this returns.
        if let Some(admin) = admin {
            admin.abort();
            let _ = admin.await;
        }
        info!("tokenbridge stopped");
        Ok(())
    }
}

/// The HTTP/2 settings of every gRPC listener (issue 15): at most
/// `max_streams` streams per connection (advertised in SETTINGS), and
/// keepalive PINGs every [`HTTP2_KEEPALIVE_INTERVAL`]; a peer that does not
/// answer one within [`HTTP2_KEEPALIVE_TIMEOUT`] is disconnected.
fn http2_server(max_streams: u32) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(max_streams)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
}

/// How often an idle HTTP/2 connection is pinged.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The policy admin listener's header block limit (an admin ID token and
/// the usual gRPC headers fit many times over).
pub const POLICY_ADMIN_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// Accepted connections get `TCP_NODELAY` (without it, small gRPC frames
/// wait for delayed ACKs: ~40 ms per call) and TCP keepalive.
fn tcp_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

async fn drain_deadline(draining: oneshot::Receiver<()>, drain: Duration) {
    if draining.await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(drain).await;
}

/// Forgets rate-limiter state of callers that have gone quiet, so memory
/// follows the number of active callers, not of all callers ever seen.
async fn forget_idle_callers(rate_limits: Arc<RateLimits>, exchange: Arc<Exchange>) {
    let mut tick = tokio::time::interval(JANITOR_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        rate_limits.retain_recent();
        exchange.cache().retain_recent_budgets();
        // Expired credentials leave the count (tokenbridge_cache_entries).
        exchange.cache().sync().await;
    }
}

/// Fetches Google's keys until they are there, reports SERVING, then keeps
/// them fresh in the background ahead of `max-age`.
async fn keep_keys(jwks: Arc<Jwks>, reporter: HealthHandle) {
    use backon::BackoffBuilder as _;
    let mut backoff = backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(15))
        .with_jitter()
        .without_max_times()
        .build();
    while !jwks.prefetch().await {
        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(15))).await;
    }
    reporter.set_serving();
    info!("Google signing keys loaded; health SERVING");
    jwks.keep_fresh().await;
}

/// Keeps the exchange's policy in step with the store: loads and swaps in
/// the policy whenever the store's revision changes. A failed load is
/// logged and retried with backoff; meanwhile the last policy stays.
async fn follow_store(store: Store, exchange: Arc<Exchange>, sync: Option<Arc<PolicySync>>) {
    use backon::BackoffBuilder as _;
    let new_backoff = || {
        backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    loop {
        let mut changes = match store.watch().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot watch the policy store; retrying");
                tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(10))).await;
                continue;
            }
        };
        // Load now (a change may have landed before the watch began), then
        // after every change.
        loop {
            loop {
                match load_snapshot(&store).await {
                    Ok(snapshot) => {
                        let (revision, bindings) = (snapshot.revision, snapshot.binding_count());
                        if exchange.advance_policy(snapshot) {
                            info!(revision, bindings, "policy reloaded from the store");
                        }
                        if let Some(sync) = &sync {
                            sync.loaded(exchange.snapshot().revision, revision);
                        }
                        backoff = new_backoff();
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot load the policy store; the last policy stays in force");
                        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(10))).await;
                    }
                }
            }
            match changes.changed().await {
                Ok(revision) => {
                    if let Some(sync) = &sync {
                        sync.store_at(revision);
                    }
                }
                Err(e) => {
                    warn!(error = %e, "policy store watch ended; subscribing again");
                    break;
                }
            }
        }
    }
}
