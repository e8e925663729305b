//! Fakes for tests (feature `testing`): a tokenbridge whose answers the test
//! chooses, over plaintext or TLS with a freshly made self-signed
//! certificate.
//!
//! The real service is what the end-to-end tests use; this fake is for the
//! faults the real one cannot be made to show on demand (a run of
//! `UNAVAILABLE`s, an untrusted certificate).

#![expect(
    clippy::expect_used,
    reason = "a test fake panics when it cannot be set up"
)]

use std::{
    collections::VecDeque,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokenbridge_proto::v1::{
    GetCredentialsRequest, GetCredentialsResponse,
    token_exchange_server::{TokenExchange, TokenExchangeServer},
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{
    Code, Request, Response, Status,
    transport::{Identity, Server, ServerTlsConfig, server::TcpIncoming},
};

/// The access key ID of the fake's credentials.
pub const FAKE_ACCESS_KEY_ID: &str = "ASIAFAKEEXCHANGE0001";
/// The secret access key of the fake's credentials.
pub const FAKE_SECRET_ACCESS_KEY: &str = "fake-exchange-secret-access-key-0123456789";
/// The session token of the fake's credentials.
pub const FAKE_SESSION_TOKEN: &str = "fake-exchange-session-token-abcdefghijklmnopqrstuvwxyz";
/// The assumed role ARN of the fake's credentials.
pub const FAKE_ASSUMED_ROLE_ARN: &str =
    "arn:aws:sts::123456789012:assumed-role/FakeRole/fake-session";

/// One answer of the fake.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Credentials that expire this long from now.
    Grant(Duration),
    /// A gRPC status with this code and message.
    Refuse(Code, String),
    /// Nothing, ever (the call hangs until the client gives up).
    Hang,
}

/// A fake tokenbridge on 127.0.0.1 at a free port. Dropping it stops it.
pub struct FakeExchange {
    addr: SocketAddr,
    state: Arc<State>,
    ca_pem: Option<String>,
    _stop: oneshot::Sender<()>,
}

#[derive(Default)]
struct State {
    answers: Mutex<VecDeque<Answer>>,
    calls: Mutex<Vec<Call>>,
}

/// What the fake saw of one call.
#[derive(Clone, Debug)]
pub struct Call {
    /// The `authorization` metadata, if any.
    pub authorization: Option<String>,
    /// The request.
    pub role_arn: String,
    /// The requested duration.
    pub duration_seconds: u32,
}

impl FakeExchange {
    /// A plaintext fake that gives `answers` in order, repeating the last
    /// one (an empty list: always [`Answer::Grant`] of one hour).
    pub async fn start(answers: Vec<Answer>) -> Self {
        Self::start_with(answers, None).await
    }

    /// A TLS fake with a self-signed certificate for `127.0.0.1` and
    /// `localhost` (see [`ca_pem`](Self::ca_pem)).
    pub async fn start_tls(answers: Vec<Answer>) -> Self {
        // Both of rustls' crypto providers are in the build (reqwest brings
        // ring), so tonic's server side needs one chosen; the client side
        // picks aws-lc-rs by itself.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let certified =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                .expect("a self-signed certificate");
        let cert = certified.cert.pem();
        let key = certified.signing_key.serialize_pem();
        Self::start_with(answers, Some((cert, key))).await
    }

    async fn start_with(answers: Vec<Answer>, tls: Option<(String, String)>) -> Self {
        let state = Arc::new(State {
            answers: Mutex::new(answers.into()),
            calls: Mutex::default(),
        });
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("the listener's address");
        let mut builder = Server::builder();
        let ca_pem = if let Some((cert, key)) = tls {
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(&cert, key)))
                .expect("server TLS config");
            Some(cert)
        } else {
            None
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let router = builder.add_service(TokenExchangeServer::new(Fake(Arc::clone(&state))));
        tokio::spawn(
            router.serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            }),
        );
        Self {
            addr,
            state,
            ca_pem,
            _stop: stop,
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` for a TLS fake.
    pub fn endpoint(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The self-signed certificate (PEM) of a TLS fake.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

struct Fake(Arc<State>);

#[tonic::async_trait]
impl TokenExchange for Fake {
    async fn get_credentials(
        &self,
        request: Request<GetCredentialsRequest>,
    ) -> Result<Response<GetCredentialsResponse>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let message = request.into_inner();
        self.0
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Call {
                authorization,
                role_arn: message.role_arn,
                duration_seconds: message.duration_seconds,
            });
        let answer = {
            let mut answers = self
                .0
                .answers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if answers.len() > 1 {
                answers.pop_front()
            } else {
                answers.front().cloned()
            }
        }
        .unwrap_or(Answer::Grant(Duration::from_secs(3600)));
        match answer {
            Answer::Grant(lifetime) => Ok(Response::new(fake_response(lifetime))),
            Answer::Refuse(code, message) => Err(Status::new(code, message)),
            Answer::Hang => std::future::pending().await,
        }
    }
}

/// The fake's credentials, expiring `lifetime` from now.
pub fn fake_response(lifetime: Duration) -> GetCredentialsResponse {
    let expiration = SystemTime::now() + lifetime;
    let seconds = expiration
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    GetCredentialsResponse {
        access_key_id: FAKE_ACCESS_KEY_ID.into(),
        secret_access_key: FAKE_SECRET_ACCESS_KEY.into(),
        session_token: FAKE_SESSION_TOKEN.into(),
        expiration: Some(prost_types::Timestamp {
            seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        assumed_role_arn: FAKE_ASSUMED_ROLE_ARN.into(),
        role_session_name: "fake-session".into(),
    }
}
