//! Google's side: verifying ID tokens ([`jwt`]) against Google's signing
//! keys ([`jwks`]), and the `[google]` section that configures both.

use std::time::Duration;

pub mod jwks;
pub mod jwt;

/// Google's production JWKS endpoint.
pub const DEFAULT_JWKS_URI: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// The issuers Google puts in ID tokens.
pub const DEFAULT_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];

/// `[google]`: how ID tokens are verified.
#[derive(Debug, Clone)]
pub struct GoogleConfig {
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Where Google's signing keys are fetched from.
    pub jwks_uri: String,
    /// Accepted `iss` values.
    pub issuers: Vec<String>,
    /// Minimum time between two refetches caused by unknown `kid`s.
    pub jwks_refetch_cooldown: Duration,
    /// Time limit of one JWKS fetch.
    pub jwks_timeout: Duration,
    /// Most verified tokens remembered (0: verify every time).
    pub verified_token_cache_entries: u64,
    /// How long past their `max-age` the last good keys keep verifying
    /// while no fresh key set can be fetched.
    pub jwks_stale_window: Duration,
}
