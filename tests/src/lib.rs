//! Stand-ins for tokenbridge's peers, for its tests and demo.
//!
//! - [`Issuer`] plays Google's ID token issuer: RSA keys with `kid`s and
//!   Google-format ID tokens signed with them.
//! - [`JwksServer`] serves an issuer's JWKS over HTTP like
//!   `https://www.googleapis.com/oauth2/v3/certs`.
//! - [`MetadataServer`] emulates the GCE metadata server's identity endpoint.
//! - [`Moto`] runs moto, the third-party AWS emulator, for a real STS.
//! - [`FakeSts`] is an STS whose answers tests choose, for fault injection.
//! - [`StrictSts`] is a stand-in for STS in front of moto that verifies web
//!   identity tokens and evaluates role trust policies as AWS documents it.
//! - [`FaultProxy`] is a TCP proxy that makes any of them look down or hung.
//! - [`Pki`] is a private CA issuing server and client certificates for TLS
//!   tests.
//!
//! Every server listens on 127.0.0.1 at a port the OS picks, and stops when
//! its value is dropped.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_sts;
mod fault_proxy;
mod google;
mod issuer;
mod moto;
mod pki;
mod strict_sts;
mod sts_wire;

pub use fake_sts::{
    FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, FAKE_SESSION_TOKEN, FakeSts, FakeStsMode,
};
pub use fault_proxy::{FaultProxy, ProxyMode};
pub use google::{JwksFault, JwksServer, MetadataServer};
pub use issuer::{Issuer, ServiceAccount};
pub use moto::{Moto, venv_python};
pub use pki::{PemPair, Pki};
pub use strict_sts::{Provider, Seen, StrictSts};

use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use tokio::{net::TcpListener, sync::watch};

/// Serves `router` on 127.0.0.1 at a free port until `stop` is dropped.
///
/// The shutdown is graceful: idle connections close, in-flight requests
/// finish (handlers that wait forever must also watch `stop`).
async fn serve(router: Router, stop: &watch::Sender<()>) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind a loopback port");
    let addr = listener
        .local_addr()
        .expect("local address of the listener");
    let mut stopped = stop.subscribe();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                // Nothing is ever sent: this resolves when the sender is dropped.
                let _ = stopped.changed().await;
            })
            .await
    });
    addr
}
