//! Issuer mode on the server: the `[issuer]` section, the signing keys
//! (reloaded on SIGHUP), and the tokens STS gets (README, "Issuer mode").
//!
//! A token is minted only when STS is actually called (a cache hit signs
//! nothing), for the caller's service account, with the binding's session
//! tags and source identity already expanded and checked. An issuer-mode
//! call never falls back to the caller's own Google token.

pub mod discovery;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use serde_json::Value;
use tokenbridge_issuer::{Claims, IssuerKeys, KeySource};
use tokenbridge_policy::ExpandedSession;
use tokenbridge_proto::Secret;

use crate::aws::sts::{MintToken, StsError};

/// Lifetime of a minted token unless configured: STS reads it once.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// Bounds of `token_lifetime_seconds`.
pub const TOKEN_LIFETIME_SECONDS: std::ops::RangeInclusive<u64> = 60..=900;

/// `[issuer]`: tokenbridge as an OIDC issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// The minted tokens' `iss`: `https://HOST[/PATH]`.
    pub url: String,
    /// PEM private keys, every one published (absolute once loaded).
    pub key_files: Vec<PathBuf>,
    /// The key that signs; `None`: the first.
    pub active_key_file: Option<PathBuf>,
    /// The minted tokens' `aud`.
    pub audience: String,
    /// Issuer mode for bindings that do not say.
    pub default: bool,
    /// Lifetime of a minted token.
    pub token_lifetime: Duration,
    /// Where discovery is served over HTTPS (with the `[tls]` certificate),
    /// if at all.
    pub listen: Option<SocketAddr>,
}

/// Reads and parses the key files; errors name the file and say why.
pub fn load_keys(config: &IssuerConfig) -> Result<IssuerKeys, (PathBuf, String)> {
    let mut pems = Vec::with_capacity(config.key_files.len());
    for file in &config.key_files {
        let pem = std::fs::read(file)
            .map_err(|e| (file.clone(), format!("cannot read the issuer key: {e}")))?;
        pems.push((file.display().to_string(), pem));
    }
    let sources: Vec<KeySource<'_>> = pems
        .iter()
        .map(|(name, pem)| KeySource { name, pem })
        .collect();
    let active = config
        .active_key_file
        .as_ref()
        .map(|p| p.display().to_string());
    IssuerKeys::new(&sources, active.as_deref()).map_err(|(name, e)| {
        let file = if name.is_empty() {
            PathBuf::new()
        } else {
            PathBuf::from(name)
        };
        (file, e.to_string())
    })
}

/// The issuer: its config and its current keys.
pub struct Issuer {
    config: IssuerConfig,
    keys: ArcSwap<IssuerKeys>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("url", &self.config.url)
            .field("keys", &**self.keys.load())
            .finish()
    }
}

impl Issuer {
    /// Loads the keys.
    pub fn new(config: IssuerConfig) -> Result<Self, (PathBuf, String)> {
        let keys = load_keys(&config)?;
        Ok(Self {
            config,
            keys: ArcSwap::from_pointee(keys),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// Loads the key files `config` names (a changed `key_files` or
    /// `active_key_file`: rotation); on any problem the current keys stay.
    /// The URL, audience and lifetime stay those the server started with.
    pub fn reload_with(&self, config: &IssuerConfig) -> Result<String, (PathBuf, String)> {
        let keys = load_keys(config)?;
        let kid = keys.active_kid().to_owned();
        self.keys.store(Arc::new(keys));
        Ok(kid)
    }

    /// The published keys.
    pub fn jwks(&self) -> JwkSet {
        self.keys.load().jwks()
    }

    /// The discovery document.
    pub fn discovery(&self) -> Value {
        tokenbridge_issuer::discovery(&self.config.url, &self.keys.load().algorithms())
    }

    /// A token source for one STS call, minted when STS is called.
    pub fn token_for(
        self: &Arc<Self>,
        sub: &str,
        email: Option<&str>,
        session: ExpandedSession,
    ) -> Arc<dyn MintToken> {
        Arc::new(Pending {
            issuer: self.clone(),
            sub: sub.to_owned(),
            email: email.map(str::to_owned),
            session,
        })
    }
}

struct Pending {
    issuer: Arc<Issuer>,
    sub: String,
    email: Option<String>,
    session: ExpandedSession,
}

impl MintToken for Pending {
    fn mint(&self) -> Result<Secret<String>, StsError> {
        let config = &self.issuer.config;
        let mut claims = Claims::new(
            &config.url,
            &self.sub,
            &config.audience,
            SystemTime::now(),
            config.token_lifetime.as_secs(),
        )
        .with_tags(&self.session.tags);
        claims.email = self.email.as_deref();
        claims.source_identity = self.session.source_identity.as_deref();
        self.issuer
            .keys
            .load()
            .mint(&claims)
            .map_err(|e| StsError::Unavailable(e.to_string()))
    }
}

/// Makes `path` absolute against the config file's folder.
pub fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() { p } else { base.join(p) }
}
