//! A stand-in for Google's ID token issuer (`https://accounts.google.com`).

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{
    rand::SystemRandom,
    rsa::{KeyPair, KeySize},
    signature::{KeyPair as _, RSA_PKCS1_SHA256},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};

/// When the emulated VM was created (`instance_creation_timestamp`).
const INSTANCE_CREATION_TIMESTAMP: u64 = 1_700_000_000;

/// A Google service account as it appears in its ID tokens.
#[derive(Clone, Debug)]
pub struct ServiceAccount {
    /// The numeric unique id: the tokens' `sub` and `azp`.
    pub unique_id: String,
    /// The service account's email: the tokens' `email`.
    pub email: String,
    /// The project of the VM that runs as this account.
    pub project_id: String,
    /// That project's number.
    pub project_number: u64,
    /// The VM's zone.
    pub zone: String,
    /// The VM's numeric instance id.
    pub instance_id: String,
    /// The VM's name.
    pub instance_name: String,
}

impl ServiceAccount {
    /// An account with these ids, running on a plausible GCE VM (`demo-vm`
    /// in `us-central1-a` of `demo-project`).
    pub fn new(unique_id: &str, email: &str) -> Self {
        Self {
            unique_id: unique_id.to_owned(),
            email: email.to_owned(),
            project_id: "demo-project".to_owned(),
            project_number: 123_456_789_012,
            zone: "us-central1-a".to_owned(),
            instance_id: "4567890123456789012".to_owned(),
            instance_name: "demo-vm".to_owned(),
        }
    }
}

/// An RSA-2048 signing key and its public JWK.
struct Key {
    kid: String,
    pair: KeyPair,
    jwk: Value,
}

impl Key {
    fn generate() -> Arc<Self> {
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("generate an RSA-2048 key");
        let kid =
            rand::random::<[u8; 20]>()
                .iter()
                .fold(String::with_capacity(40), |mut hex, byte| {
                    let _ = write!(hex, "{byte:02x}");
                    hex
                });
        let public = pair.public_key();
        let jwk = json!({
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": kid,
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        });
        Arc::new(Self { kid, pair, jwk })
    }

    /// A compact JWS of exactly these header and payload texts.
    fn sign(&self, header_json: &str, payload_json: &str) -> String {
        let signing_input = format!("{}.{}", b64(header_json), b64(payload_json));
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .expect("RS256 signature");
        format!("{signing_input}.{}", b64(signature))
    }
}

/// Every key the issuer ever made, oldest first; the last one signs.
struct Keys {
    all: Vec<Arc<Key>>,
    retired: Vec<String>,
}

impl Keys {
    fn current(&self) -> Arc<Key> {
        Arc::clone(self.all.last().expect("an issuer always has a key"))
    }
}

/// A stand-in for Google's ID token issuer: RSA-2048 keys with `kid`s, signs
/// Google-format ID tokens.
///
/// Clones share their keys, so a test can rotate the keys of the issuer a
/// [`JwksServer`](crate::JwksServer) serves.
#[derive(Clone)]
pub struct Issuer {
    keys: Arc<Mutex<Keys>>,
}

impl Issuer {
    /// The `iss` of Google's ID tokens.
    pub const GOOGLE_ISSUER: &'static str = "https://accounts.google.com";

    /// An issuer with one fresh key whose `kid` is 40 random hex digits, like
    /// Google's.
    pub fn new() -> Self {
        let keys = Keys {
            all: vec![Key::generate()],
            retired: Vec::new(),
        };
        Self {
            keys: Arc::new(Mutex::new(keys)),
        }
    }

    fn keys(&self) -> MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The `kid` of the key that signs now.
    pub fn kid(&self) -> String {
        self.keys().current().kid.clone()
    }

    /// Makes a new key the signing key and returns its `kid`; the old keys
    /// stay in the JWKS until [`retire`](Self::retire)d.
    pub fn rotate(&self) -> String {
        let key = Key::generate();
        let kid = key.kid.clone();
        self.keys().all.push(key);
        kid
    }

    /// Removes the key `kid` from the JWKS, so that nothing can verify its
    /// signatures any more. The key itself is kept: retiring the current key
    /// leaves it signing, which makes tokens whose `kid` the JWKS lacks.
    pub fn retire(&self, kid: &str) {
        self.keys().retired.push(kid.to_owned());
    }

    /// The JWKS, as `https://www.googleapis.com/oauth2/v3/certs` serves it:
    /// `{"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid", "n", "e"}, ..]}`.
    pub fn jwks(&self) -> Value {
        let keys = self.keys();
        let published = keys
            .all
            .iter()
            .filter(|key| !keys.retired.contains(&key.kid))
            .map(|key| key.jwk.clone())
            .collect::<Vec<_>>();
        json!({ "keys": published })
    }

    /// The claims Google puts in a service account's ID token: `iss`, `aud`,
    /// `azp` and `sub` (both the unique id), `email`, `email_verified: true`,
    /// `iat` = now and `exp` = now + 1 h; with `full`, as with the metadata
    /// server's `format=full`, also `google.compute_engine` describing the VM.
    pub fn claims(&self, sa: &ServiceAccount, audience: &str, full: bool) -> Map<String, Value> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_secs();
        let mut claims = Map::new();
        claims.insert("iss".into(), Self::GOOGLE_ISSUER.into());
        claims.insert("aud".into(), audience.into());
        claims.insert("azp".into(), sa.unique_id.as_str().into());
        claims.insert("sub".into(), sa.unique_id.as_str().into());
        claims.insert("email".into(), sa.email.as_str().into());
        claims.insert("email_verified".into(), true.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + 3600).into());
        if full {
            let compute_engine = json!({
                "project_id": sa.project_id,
                "project_number": sa.project_number,
                "zone": sa.zone,
                "instance_id": sa.instance_id,
                "instance_name": sa.instance_name,
                "instance_creation_timestamp": INSTANCE_CREATION_TIMESTAMP,
                "instance_confidentiality": 0,
            });
            claims.insert("google".into(), json!({ "compute_engine": compute_engine }));
        }
        claims
    }

    /// Signs these claims with the current key, under the header
    /// `{"alg":"RS256","kid":<current kid>,"typ":"JWT"}`.
    pub fn sign(&self, claims: &Map<String, Value>) -> String {
        let key = self.keys().current();
        let header = json!({ "alg": "RS256", "kid": key.kid, "typ": "JWT" });
        key.sign(
            &header.to_string(),
            &Value::Object(claims.clone()).to_string(),
        )
    }

    /// Signs exactly these header and payload texts, without re-serialising
    /// them (for tests of duplicate JSON keys or odd headers). The key is the
    /// one named by the header's `kid` if that is one of this issuer's (a
    /// retired one included), else the current key.
    pub fn sign_raw(&self, header_json: &str, payload_json: &str) -> String {
        let kid = serde_json::from_str::<Value>(header_json)
            .ok()
            .and_then(|header| Some(header.get("kid")?.as_str()?.to_owned()));
        let key = {
            let keys = self.keys();
            kid.and_then(|kid| keys.all.iter().find(|key| key.kid == kid).cloned())
                .unwrap_or_else(|| keys.current())
        };
        key.sign(header_json, payload_json)
    }

    /// A full-format ID token for `sa` and `audience`, signed with the
    /// current key: `sign(&claims(sa, audience, true))`.
    pub fn token(&self, sa: &ServiceAccount, audience: &str) -> String {
        self.sign(&self.claims(sa, audience, true))
    }
}

impl Default for Issuer {
    fn default() -> Self {
        Self::new()
    }
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
