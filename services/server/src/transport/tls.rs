//! TLS for the gRPC service: rustls (aws-lc-rs) from a certificate chain and
//! key in PEM files, optionally requiring client certificates issued by a CA
//! (mutual TLS), reloaded when the files change.
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `tls.listen` | required with `[tls]` | the TLS listener (the plaintext one, `server.listen`, stays) |
//! | `tls.cert_file` | required | PEM certificate chain, leaf first |
//! | `tls.key_file` | required | PEM private key (PKCS#8, PKCS#1 or SEC1) |
//! | `tls.client_ca_file` | none | PEM CA certificates; when set, clients must present a certificate issued by one |
//! | `tls.reload_interval_seconds` | `10` | how often the files are checked for changes |
//!
//! Relative paths resolve against the config file's folder.
//!
//! Reloading: every `reload_interval` (and on [`TlsReloader::reload`], which
//! the binary calls on SIGHUP) the three files are read; when their contents
//! differ from what is in use, a new rustls `ServerConfig` is built and
//! swapped in atomically. New connections get it; established ones keep
//! theirs. A set that does not load (a key that does not match the
//! certificate, a half-written file) is refused with a warning and the
//! current one stays, so certificate rotation by `cp`/`mv`, cert-manager or a
//! Kubernetes secret update needs no restart.
//!
//! Connections: TLS handshakes run concurrently, each within
//! [`HANDSHAKE_TIMEOUT`], at most [`MAX_PENDING_HANDSHAKES`] at a time, so a
//! slow or silent client cannot hold up the others. Plaintext and TLS
//! connections are merged into one stream of [`Conn`] for one tonic server.

use std::{
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use sha2::{Digest as _, Sha256};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tracing::{debug, info, warn};

/// Time a client gets to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most TLS handshakes in progress at once; further connections wait in the
/// kernel's accept queue.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// `[tls]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Address of the TLS listener.
    pub listen: std::net::SocketAddr,
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA certificates that client certificates must chain to; `None`:
    /// no client certificates asked for.
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        /// Which file (`certificate file`, ..).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file does not hold what it should.
    #[error("the {what} {} {reason}", path.display())]
    Invalid {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the set (e.g. the key does not match the certificate).
    #[error("the TLS certificate and key cannot be used together: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    /// The file the problem is in.
    pub fn path<'a>(&'a self, config: &'a TlsConfig) -> &'a Path {
        match self {
            TlsError::Read { path, .. } | TlsError::Invalid { path, .. } => path,
            TlsError::Rustls(_) => &config.cert_file,
        }
    }
}

/// The contents of the files a `ServerConfig` was built from.
type Fingerprint = [u8; 32];

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the files; returns their fingerprint and the rustls config.
pub fn load(config: &TlsConfig) -> Result<(Fingerprint, Arc<ServerConfig>), TlsError> {
    let cert_pem = read("certificate file", &config.cert_file)?;
    let key_pem = read("key file", &config.key_file)?;
    let ca_pem = match &config.client_ca_file {
        Some(path) => Some(read("client CA file", path)?),
        None => None,
    };
    let mut hash = Sha256::new();
    for part in [Some(&cert_pem), Some(&key_pem), ca_pem.as_ref()] {
        let part = part.map_or(&[][..], Vec::as_slice);
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let fingerprint: Fingerprint = hash.finalize().into();
    Ok((
        fingerprint,
        Arc::new(build(config, &cert_pem, &key_pem, ca_pem.as_deref())?),
    ))
}

/// The `[tls]` certificate and key for a public HTTPS listener (issuer
/// discovery): no client certificate asked, HTTP/1.1 and HTTP/2 offered.
pub fn load_public(config: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read("certificate file", &config.cert_file)?;
    let key_pem = read("key file", &config.key_file)?;
    let public = TlsConfig {
        client_ca_file: None,
        ..config.clone()
    };
    let mut server = build(&public, &cert_pem, &key_pem, None)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no PEM CERTIFICATE".into()));
    }
    Ok(certs)
}

fn build(
    config: &TlsConfig,
    cert_pem: &[u8],
    key_pem: &[u8],
    ca_pem: Option<&[u8]>,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certificates("certificate file", &config.cert_file, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Invalid {
        what: "key file",
        path: config.key_file.clone(),
        reason: format!("holds no usable PEM private key ({e})"),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (ca_pem, &config.client_ca_file) {
        (Some(pem), Some(path)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("client CA file", path, pem)? {
                roots.add(cert).map_err(|e| TlsError::Invalid {
                    what: "client CA file",
                    path: path.clone(),
                    reason: format!("holds an unusable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Invalid {
                    what: "client CA file",
                    path: path.clone(),
                    reason: format!("cannot verify client certificates: {e}"),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(chain, key)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(server)
}

/// The TLS configuration in use, and its reloading.
pub struct TlsReloader {
    config: TlsConfig,
    current: ArcSwap<ServerConfig>,
    /// Fingerprint of what is in use, and of the last set refused (so a
    /// broken set is warned about once, not at every check).
    seen: Mutex<(Fingerprint, Option<Fingerprint>)>,
    loads: watch::Sender<u64>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("config", &self.config)
            .field("loads", &*self.loads.borrow())
            .finish_non_exhaustive()
    }
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files are what is in use already.
    Unchanged,
    /// A new certificate set is in use.
    Reloaded,
    /// The files changed but do not load; the current set stays.
    Refused,
}

impl TlsReloader {
    /// Loads the files for the first time.
    pub fn new(config: TlsConfig) -> Result<Self, TlsError> {
        let (fingerprint, server) = load(&config)?;
        Ok(Self {
            config,
            current: ArcSwap::new(server),
            seen: Mutex::new((fingerprint, None)),
            loads: watch::Sender::new(1),
        })
    }

    /// The settings.
    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// Successful loads so far (1 after start), to watch for reloads.
    pub fn loads(&self) -> watch::Receiver<u64> {
        self.loads.subscribe()
    }

    /// Reads the files again and swaps in a new configuration if they changed.
    pub fn reload(&self) -> Reload {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match load(&self.config) {
            Ok((fingerprint, _)) if fingerprint == seen.0 => Reload::Unchanged,
            Ok((fingerprint, server)) => {
                self.current.store(server);
                *seen = (fingerprint, None);
                self.loads.send_modify(|n| *n += 1);
                info!(cert_file = %self.config.cert_file.display(), "TLS certificate reloaded");
                Reload::Reloaded
            }
            Err(e) => {
                // Fingerprint of the raw bytes, to warn once per broken set.
                let raw = [&self.config.cert_file, &self.config.key_file]
                    .iter()
                    .map(|p| std::fs::read(p).unwrap_or_default())
                    .fold(Sha256::new(), |mut h, part| {
                        h.update(part);
                        h
                    })
                    .finalize()
                    .into();
                if seen.1 != Some(raw) {
                    seen.1 = Some(raw);
                    warn!(error = %e, "TLS reload refused; the current certificate stays in use");
                }
                Reload::Refused
            }
        }
    }

    /// Checks the files every `reload_interval`, for as long as it runs.
    pub async fn watch_files(&self) {
        let mut tick = tokio::time::interval(self.config.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.reload();
        }
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

/// An accepted connection, plaintext or TLS.
#[derive(Debug)]
pub enum Conn {
    /// Plaintext HTTP/2.
    Plain(TcpStream),
    /// HTTP/2 over TLS.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Conn::Plain(s) => s.connect_info(),
            Conn::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Plaintext connections from `plain` and, when given, TLS connections from
/// `tls` (handshakes done concurrently in a background task), as one stream.
/// Dropping the stream closes both listeners.
pub fn incoming(
    plain: TcpIncoming,
    tls: Option<(TcpIncoming, Arc<TlsReloader>)>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let plain = plain.map(|r| r.map(Conn::Plain));
    let (tx, rx) = mpsc::channel(64);
    if let Some((listener, reloader)) = tls {
        tokio::spawn(accept_tls(listener, reloader, tx));
    }
    plain.merge(ReceiverStream::new(rx))
}

/// TLS connections only, from `listener` (the policy admin listener with
/// `policy_admin.tls`): the same certificate, key, client CA and reloads as
/// the TLS listener.
pub fn tls_only(
    listener: TcpIncoming,
    reloader: Arc<TlsReloader>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_tls(listener, reloader, tx));
    ReceiverStream::new(rx)
}

async fn accept_tls(
    incoming: TcpIncoming,
    reloader: Arc<TlsReloader>,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let mut incoming = std::pin::pin!(incoming);
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            () = tx.closed() => return,
            accepted = incoming.next(), if handshakes.len() < MAX_PENDING_HANDSHAKES => match accepted {
                Some(Ok(tcp)) => {
                    let acceptor = reloader.acceptor();
                    handshakes.spawn(async move {
                        let peer = tcp.peer_addr().ok();
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => Some(tls),
                            Ok(Err(e)) => {
                                debug!(?peer, error = %e, "TLS handshake failed");
                                None
                            }
                            Err(_) => {
                                debug!(?peer, "TLS handshake timed out");
                                None
                            }
                        }
                    });
                }
                Some(Err(e)) => debug!(error = %e, "TLS listener: accept failed"),
                None => return,
            },
            Some(done) = handshakes.join_next() => {
                if let Ok(Some(tls)) = done
                    && tx.send(Ok(Conn::Tls(Box::new(tls)))).await.is_err()
                {
                    return;
                }
            }
        }
    }
}
