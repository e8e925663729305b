//! Secrets as types, one definition for the client, the shim and the
//! server: a [`Secret`] prints as `** redacted **` in `Debug` and
//! `Display`, so an ID token, a secret access key or a session token cannot
//! reach a log line or an error message by accident. Reading the value takes
//! an explicit [`Secret::expose`], which is easy to audit with `grep`.

use std::fmt;

/// What a secret prints as in `Debug` and `Display`.
pub const REDACTED: &str = "** redacted **";

/// A value that must never be printed.
///
/// ```
/// use tokenbridge_proto::Secret;
///
/// let key = Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned());
/// assert_eq!(format!("{key:?}"), "** redacted **");
/// assert_eq!(key.to_string(), "** redacted **");
/// assert!(key.expose().starts_with("wJalr"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the secret (to hand it to the party it belongs to).
    pub fn into_exposed(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret<String> {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// A marker whose `Debug` and `Display` print `** redacted **`, for the
/// hand-written `Debug` of messages that carry secrets.
#[derive(Clone, Copy)]
pub struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}
