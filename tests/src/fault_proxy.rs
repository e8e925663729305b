//! A TCP proxy that injects network faults in front of any stand-in (moto,
//! a JWKS server): forward, close every connection at once (the upstream
//! looks down), or accept and never answer (it looks hung).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// What [`FaultProxy`] does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward bytes both ways.
    Forward,
    /// Close each new connection at once, unanswered.
    Close,
    /// Accept and read, never answer, until the mode changes or the proxy
    /// is dropped.
    Hang,
}

/// A TCP proxy on 127.0.0.1 in front of `upstream`, whose mode tests can
/// change at any time. Dropping it stops it (and its connections).
pub struct FaultProxy {
    addr: SocketAddr,
    mode: Arc<Mutex<ProxyMode>>,
    connections: watch::Sender<usize>,
    _stop: watch::Sender<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` in `mode`.
    pub async fn start(upstream: SocketAddr, mode: ProxyMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("the proxy's address");
        let mode = Arc::new(Mutex::new(mode));
        let connections = watch::Sender::new(0);
        let (stop, stopped) = watch::channel(());
        let (m, c) = (Arc::clone(&mode), connections.clone());
        tokio::spawn(async move {
            let mut stopped_accepting = stopped.clone();
            loop {
                let (client, _) = tokio::select! {
                    _ = stopped_accepting.changed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                c.send_modify(|n| *n += 1);
                let mode = *m.lock().unwrap_or_else(PoisonError::into_inner);
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stopped.changed() => {}
                        () = handle(client, upstream, mode) => {}
                    }
                });
            }
        });
        Self {
            addr,
            mode,
            connections,
            _stop: stop,
        }
    }

    /// Changes what happens to new connections.
    pub fn set_mode(&self, mode: ProxyMode) {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> usize {
        *self.connections.borrow()
    }

    /// Resolves once `n` connections in all have been accepted.
    pub async fn wait_for_connections(&self, n: usize) {
        let mut rx = self.connections.subscribe();
        let _ = rx.wait_for(|&count| count >= n).await;
    }
}

async fn handle(mut client: TcpStream, upstream: SocketAddr, mode: ProxyMode) {
    match mode {
        ProxyMode::Close => drop(client),
        ProxyMode::Hang => {
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut client, &mut sink).await;
        }
        ProxyMode::Forward => {
            if let Ok(mut server) = TcpStream::connect(upstream).await {
                let _ = copy_bidirectional(&mut client, &mut server).await;
            }
        }
    }
}
