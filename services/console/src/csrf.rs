//! CSRF tokens for the write forms: HMAC-SHA256 (aws-lc-rs, verified in
//! constant time) over the person's identity, the form's scope (`deny`,
//! `allow`, or the exact write a confirmation page asks about), an expiry
//! and a nonce, keyed by a server secret. Nothing is stored: a token is
//! good for its identity and scope until it expires.
//!
//! Token: `EXPIRY.NONCE.TAG`, `EXPIRY` in Unix seconds, `NONCE` and `TAG`
//! base64url without padding.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{hmac, rand as lc_rand};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

/// How long a form's token is good for.
pub(crate) const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Shortest secret accepted from `csrf_secret_file`.
pub(crate) const MIN_SECRET_BYTES: usize = 32;
const NONCE_BYTES: usize = 16;
const CONTEXT: &[u8] = b"tokenbridge-console/csrf/v1";

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CsrfError {
    /// No token in the form.
    Missing,
    /// Not a token, or not for this person and form, or forged.
    Invalid,
    /// Was good, but is too old: reload the page.
    Expired,
}

impl CsrfError {
    pub(crate) fn message(self) -> &'static str {
        match self {
            CsrfError::Missing => {
                "The form carries no CSRF token. Open the deny list page and use its forms."
            }
            CsrfError::Invalid => {
                "The form's CSRF token is not valid for you and this form. Open the deny list page again and use its forms."
            }
            CsrfError::Expired => {
                "The form has expired. Open the deny list page again and repeat the change."
            }
        }
    }
}

/// Mints and checks tokens with one key.
pub(crate) struct Csrf {
    key: hmac::Key,
}

impl Csrf {
    /// A key from `secret` (at least [`MIN_SECRET_BYTES`]).
    pub(crate) fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A random key, good for this process only.
    pub(crate) fn random() -> Result<Self, aws_lc_rs::error::Unspecified> {
        let mut secret = [0u8; 32];
        lc_rand::fill(&mut secret)?;
        Ok(Self::new(&secret))
    }

    /// A token for `actor` and `scope`, expiring [`TOKEN_LIFETIME`] after
    /// `now`.
    pub(crate) fn mint(&self, actor: &str, scope: &str, now: SystemTime) -> String {
        let expiry = unix(now).saturating_add(TOKEN_LIFETIME.as_secs());
        let mut nonce = [0u8; NONCE_BYTES];
        // A failing system RNG leaves the nonce zero: the token is still
        // bound to identity, scope and expiry, which is what it protects.
        let _ = lc_rand::fill(&mut nonce);
        let tag = hmac::sign(&self.key, &message(actor, scope, expiry, &nonce));
        format!(
            "{expiry}.{}.{}",
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// Whether `token` was minted by this key for `actor` and `scope` and
    /// has not expired at `now`.
    pub(crate) fn check(
        &self,
        token: &str,
        actor: &str,
        scope: &str,
        now: SystemTime,
    ) -> Result<(), CsrfError> {
        if token.is_empty() {
            return Err(CsrfError::Missing);
        }
        let mut parts = token.split('.');
        let (Some(expiry), Some(nonce), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CsrfError::Invalid);
        };
        let expiry: u64 = expiry.parse().map_err(|_| CsrfError::Invalid)?;
        let nonce = URL_SAFE_NO_PAD
            .decode(nonce)
            .map_err(|_| CsrfError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| CsrfError::Invalid)?;
        if nonce.len() != NONCE_BYTES {
            return Err(CsrfError::Invalid);
        }
        hmac::verify(&self.key, &message(actor, scope, expiry, &nonce), &tag)
            .map_err(|_| CsrfError::Invalid)?;
        if unix(now) >= expiry {
            return Err(CsrfError::Expired);
        }
        Ok(())
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The signed bytes; each variable part is length-prefixed so that no two
/// (actor, scope) pairs share an encoding.
fn message(actor: &str, scope: &str, expiry: u64, nonce: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + actor.len() + scope.len() + 40);
    m.extend_from_slice(CONTEXT);
    for part in [actor.as_bytes(), scope.as_bytes()] {
        m.extend_from_slice(&(part.len() as u64).to_be_bytes());
        m.extend_from_slice(part);
    }
    m.extend_from_slice(&expiry.to_be_bytes());
    m.extend_from_slice(nonce);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_good_for_its_actor_and_scope_until_it_expires() {
        let csrf = Csrf::new(&[7u8; 32]);
        let now = SystemTime::now();
        let token = csrf.mint("ops@example.com", "deny", now);
        assert_eq!(csrf.check(&token, "ops@example.com", "deny", now), Ok(()));
        assert_eq!(
            csrf.check(&token, "other@example.com", "deny", now),
            Err(CsrfError::Invalid)
        );
        assert_eq!(
            csrf.check(&token, "ops@example.com", "allow", now),
            Err(CsrfError::Invalid)
        );
        assert_eq!(
            csrf.check(&token, "ops@example.com", "deny", now + TOKEN_LIFETIME),
            Err(CsrfError::Expired)
        );
        assert_eq!(
            csrf.check("", "ops@example.com", "deny", now),
            Err(CsrfError::Missing)
        );
    }

    #[test]
    fn forged_or_altered_tokens_are_refused() {
        let csrf = Csrf::new(&[7u8; 32]);
        let other = Csrf::new(&[8u8; 32]);
        let now = SystemTime::now();
        let token = other.mint("a", "deny", now);
        assert_eq!(
            csrf.check(&token, "a", "deny", now),
            Err(CsrfError::Invalid)
        );
        // Pushing the expiry out breaks the tag.
        let good = csrf.mint("a", "deny", now);
        let (expiry, rest) = good.split_once('.').unwrap();
        let later: u64 = expiry.parse::<u64>().unwrap() + 10_000;
        assert_eq!(
            csrf.check(&format!("{later}.{rest}"), "a", "deny", now),
            Err(CsrfError::Invalid)
        );
        for junk in ["x", "1.2", "1.2.3.4", "abc.AAAA.AAAA"] {
            assert_eq!(csrf.check(junk, "a", "deny", now), Err(CsrfError::Invalid));
        }
        // Length prefixes: actor "ab" + scope "c" differs from "a" + "bc".
        let t = csrf.mint("ab", "c", now);
        assert_eq!(csrf.check(&t, "a", "bc", now), Err(CsrfError::Invalid));
    }
}
