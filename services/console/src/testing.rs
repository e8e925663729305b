//! Stand-ins for tests (feature `testing`): an IAP signer whose keys are
//! served over real HTTP, and an in-memory [`Backend`] that records the
//! writes.
//!
//! ```text
//! let signer = IapSigner::generate("key-1")?;
//! let jwks = JwksServer::start(vec![signer.jwk()?]).await?;
//! let config = ConsoleConfig { iap_audience: Some(AUDIENCE.into()), iap_jwks_uri: jwks.uri(), .. };
//! let assertion = signer.sign(&IapClaims::valid("ops@example.com", AUDIENCE))?;
//! ```

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use futures_util::future::BoxFuture;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde::Serialize;
use tokenbridge_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;

use crate::{
    backend::{Backend, BackendError, Decision, Status, TrustPolicy},
    config::DEFAULT_IAP_ISSUER,
};

/// An audience of the right form for tests.
pub const AUDIENCE: &str = "/projects/123456789/global/backendServices/987654321";

/// The claims of an IAP assertion.
#[derive(Debug, Clone, Serialize)]
pub struct IapClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The signed-in person.
    pub email: String,
    /// Their IAP subject.
    pub sub: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl IapClaims {
    /// What IAP sends for `email`: issued now, good for ten minutes.
    pub fn valid(email: &str, audience: &str) -> Self {
        let now = now_unix();
        Self {
            iss: DEFAULT_IAP_ISSUER.to_owned(),
            aud: audience.to_owned(),
            email: email.to_owned(),
            sub: format!("accounts.google.com:{}", email.len()),
            iat: now,
            exp: now + 600,
        }
    }

    /// The same, expired `seconds_ago` seconds ago.
    pub fn expired(email: &str, audience: &str, seconds_ago: u64) -> Self {
        let now = now_unix();
        Self {
            iat: now.saturating_sub(seconds_ago + 600),
            exp: now.saturating_sub(seconds_ago),
            ..Self::valid(email, audience)
        }
    }
}

/// Why a stand-in could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TestingError(String);

/// An ES256 key that signs assertions the way IAP does.
pub struct IapSigner {
    kid: String,
    encoding: EncodingKey,
}

impl IapSigner {
    /// A fresh P-256 key with `kid`.
    pub fn generate(kid: &str) -> Result<Self, TestingError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| TestingError("cannot generate a P-256 key".into()))?;
        let pkcs8 = pair
            .to_pkcs8v1()
            .map_err(|_| TestingError("cannot encode the P-256 key".into()))?;
        Ok(Self {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        })
    }

    /// The key's `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as IAP publishes it.
    pub fn jwk(&self) -> Result<Jwk, TestingError> {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, Algorithm::ES256)
            .map_err(|e| TestingError(format!("JWK: {e}")))?;
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Ok(jwk)
    }

    /// `claims` signed with this key, `kid` in the header.
    pub fn sign(&self, claims: &IapClaims) -> Result<String, TestingError> {
        self.sign_with_alg(claims, Algorithm::ES256)
    }

    /// `claims` with `alg` in the header but signed by this ES256 key (for
    /// algorithm-confusion tests).
    pub fn sign_claiming_alg(
        &self,
        claims: &IapClaims,
        alg: Algorithm,
    ) -> Result<String, TestingError> {
        // jsonwebtoken refuses to sign with a mismatched key, so the header is
        // swapped on an ES256 token: the signature no longer matches either.
        let token = self.sign_with_alg(claims, Algorithm::ES256)?;
        let mut parts = token.splitn(2, '.');
        let (Some(_), Some(rest)) = (parts.next(), parts.next()) else {
            return Err(TestingError("unexpected token shape".into()));
        };
        let mut header = Header::new(alg);
        header.kid = Some(self.kid.clone());
        let header = serde_json::to_vec(&header).map_err(|e| TestingError(e.to_string()))?;
        Ok(format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header)))
    }

    fn sign_with_alg(&self, claims: &IapClaims, alg: Algorithm) -> Result<String, TestingError> {
        let mut header = Header::new(alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| TestingError(format!("signing: {e}")))
    }
}

#[derive(Default)]
struct JwksState {
    keys: Mutex<Vec<Jwk>>,
    fetches: AtomicUsize,
}

/// IAP's key endpoint: serves a JWKS over HTTP on 127.0.0.1, counts the
/// fetches, and stops when dropped.
pub struct JwksServer {
    addr: SocketAddr,
    state: Arc<JwksState>,
    _task: AbortOnDropHandle<()>,
}

async fn serve_jwks(State(state): State<Arc<JwksState>>) -> impl IntoResponse {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let keys = match state.keys.lock() {
        Ok(keys) => keys.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let body = serde_json::json!({ "keys": keys }).to_string();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
}

impl JwksServer {
    /// Serves `keys` at `/iap/verify/public_key-jwk`.
    pub async fn start(keys: Vec<Jwk>) -> std::io::Result<Self> {
        let state = Arc::new(JwksState {
            keys: Mutex::new(keys),
            fetches: AtomicUsize::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = Router::new()
            .route("/iap/verify/public_key-jwk", get(serve_jwks))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self {
            addr,
            state,
            _task: AbortOnDropHandle::new(task),
        })
    }

    /// The URI for `iap_jwks_uri`.
    pub fn uri(&self) -> String {
        format!("http://{}/iap/verify/public_key-jwk", self.addr)
    }

    /// Publishes `keys` instead (a rotation).
    pub fn set_keys(&self, keys: Vec<Jwk>) {
        match self.state.keys.lock() {
            Ok(mut k) => *k = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
    }

    /// How often the keys were fetched.
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

/// A write the [`MemoryBackend`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// `deny(actor, service_account, reason)`.
    Deny {
        /// Who.
        actor: String,
        /// Whom.
        service_account: String,
        /// Why.
        reason: String,
    },
    /// `allow(actor, service_account)`.
    Allow {
        /// Who.
        actor: String,
        /// Whom.
        service_account: String,
    },
}

/// An in-memory [`Backend`]: bindings, a deny list (unique IDs only, like
/// the server), decisions and status as set, and every write recorded.
#[derive(Default)]
pub struct MemoryBackend {
    /// The bindings, in name order.
    pub bindings: Mutex<Vec<pb::Binding>>,
    /// The deny list.
    pub denied: Mutex<Vec<pb::DeniedServiceAccount>>,
    /// What `recent_decisions` returns.
    pub decisions: Mutex<Vec<Decision>>,
    /// What `status` returns.
    pub status: Mutex<Status>,
    /// What `explain` answers; `None`: a refusal naming no binding.
    pub explanation: Mutex<Option<pb::ExplainResponse>>,
    /// The explain requests received.
    pub explained: Mutex<Vec<pb::ExplainRequest>>,
    /// The writes received, in order.
    pub writes: Mutex<Vec<Write>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl MemoryBackend {
    /// The writes received so far.
    pub fn writes(&self) -> Vec<Write> {
        lock(&self.writes).clone()
    }
}

impl Backend for MemoryBackend {
    fn list_bindings(&self) -> BoxFuture<'_, Result<Vec<pb::Binding>, BackendError>> {
        Box::pin(async move { Ok(lock(&self.bindings).clone()) })
    }

    fn get_binding<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<pb::Binding>, BackendError>> {
        Box::pin(async move {
            Ok(lock(&self.bindings)
                .iter()
                .find(|b| b.name == name)
                .cloned())
        })
    }

    fn trust_policy(&self, binding: &pb::Binding) -> Result<TrustPolicy, BackendError> {
        let ids: Vec<&String> = binding
            .service_accounts
            .iter()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        let document = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"Federated": "accounts.google.com"},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {"StringEquals": {"accounts.google.com:sub": ids}}
            }]
        });
        Ok(TrustPolicy {
            role_arns: binding.role_arns.clone(),
            document: serde_json::to_string_pretty(&document)
                .map_err(|e| BackendError::Unavailable(e.to_string()))?,
            warnings: Vec::new(),
        })
    }

    fn explain(
        &self,
        request: pb::ExplainRequest,
    ) -> BoxFuture<'_, Result<pb::ExplainResponse, BackendError>> {
        Box::pin(async move {
            let answer = lock(&self.explanation).clone();
            let claims = request.claims.clone();
            lock(&self.explained).push(request);
            Ok(answer.unwrap_or_else(|| pb::ExplainResponse {
                allowed: false,
                reason: "no binding gives this service account a role".into(),
                claims,
                ..pb::ExplainResponse::default()
            }))
        })
    }

    fn list_denied(&self) -> BoxFuture<'_, Result<Vec<pb::DeniedServiceAccount>, BackendError>> {
        Box::pin(async move { Ok(lock(&self.denied).clone()) })
    }

    fn deny<'a>(
        &'a self,
        actor: &'a str,
        service_account: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<pb::DeniedServiceAccount, BackendError>> {
        Box::pin(async move {
            if service_account.is_empty() || !service_account.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BackendError::InvalidArgument(
                    "field service_account: must be a unique ID (digits), not an email".into(),
                ));
            }
            lock(&self.writes).push(Write::Deny {
                actor: actor.to_owned(),
                service_account: service_account.to_owned(),
                reason: reason.to_owned(),
            });
            let entry = pb::DeniedServiceAccount {
                service_account: service_account.to_owned(),
                reason: reason.to_owned(),
                actor: actor.to_owned(),
                create_time: None,
            };
            let mut denied = lock(&self.denied);
            denied.retain(|d| d.service_account != service_account);
            denied.push(entry.clone());
            Ok(entry)
        })
    }

    fn allow<'a>(
        &'a self,
        actor: &'a str,
        service_account: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let mut denied = lock(&self.denied);
            let before = denied.len();
            denied.retain(|d| d.service_account != service_account);
            if denied.len() == before {
                return Err(BackendError::NotFound(format!(
                    "service account {service_account} is not on the deny list"
                )));
            }
            lock(&self.writes).push(Write::Allow {
                actor: actor.to_owned(),
                service_account: service_account.to_owned(),
            });
            Ok(())
        })
    }

    fn recent_decisions(&self) -> Vec<Decision> {
        lock(&self.decisions).clone()
    }

    fn status(&self) -> Status {
        lock(&self.status).clone()
    }
}
