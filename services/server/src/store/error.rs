//! What a policy store operation can fail with.

use tokenbridge_policy::{FieldError, Violation};

/// Why a store operation failed. Each variant says what the caller should do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The input is malformed; each violation names the binding and field.
    /// Fix the input; a retry as is fails the same way. (INVALID_ARGUMENT)
    #[error("{}", join_violations(.0))]
    Invalid(Vec<Violation>),
    /// No such binding, or the service account is not on the deny list.
    /// (NOT_FOUND)
    #[error("{what} not found")]
    NotFound {
        /// `binding "x"` or `denied service account "y"`.
        what: String,
    },
    /// A binding with this name exists. (ALREADY_EXISTS)
    #[error("binding `{name}` already exists")]
    AlreadyExists {
        /// The name.
        name: String,
    },
    /// The etag does not match: someone changed the binding since it was
    /// read. Read it again, re-apply the change, retry. (ABORTED)
    #[error("binding `{name}` was changed since it was read (etag {given}, now {current})")]
    Conflict {
        /// The binding.
        name: String,
        /// The etag the caller sent.
        given: String,
        /// The binding's etag now.
        current: String,
    },
    /// The database cannot be reached, is locked, or timed out. A retry
    /// with backoff may help. (UNAVAILABLE)
    #[error("policy store unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The database refused the statement for another reason. A retry does
    /// not help; the full error is in the log.
    #[error("policy store error")]
    Database(#[source] sqlx::Error),
    /// A row the store holds cannot be read back (written by something else,
    /// or a newer version). A retry does not help.
    #[error("policy store holds an unreadable row: {0}")]
    Corrupt(String),
    /// The schema could not be brought up to date at open.
    #[error("policy store migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The change-watching task stopped (the store was closed).
    #[error("policy store change watch ended")]
    WatchClosed,
}

fn join_violations(v: &[Violation]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl StoreError {
    pub(super) fn invalid(binding: &str, field: &str, reason: impl Into<String>) -> Self {
        StoreError::Invalid(vec![Violation {
            index: 0,
            binding: binding.to_string(),
            error: FieldError {
                field: field.to_string(),
                reason: reason.into(),
            },
        }])
    }

    /// Whether retrying the same call later may succeed.
    pub fn retry_may_help(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Conflict { .. }
        )
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::Io(_)
            | E::Tls(_)
            | E::PoolTimedOut
            | E::PoolClosed
            | E::WorkerCrashed
            | E::Protocol(_) => StoreError::Unavailable(e),
            E::Database(db) => {
                // SQLite: SQLITE_BUSY (5) / SQLITE_LOCKED (6) and their
                // extended codes; PostgreSQL: serialization failure,
                // deadlock, too many connections, admin shutdown.
                let code = db.code().unwrap_or_default();
                let busy = code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
                    || ["40001", "40P01", "53300", "57P01", "57P02", "57P03"]
                        .contains(&code.as_ref());
                if busy {
                    StoreError::Unavailable(e)
                } else {
                    StoreError::Database(e)
                }
            }
            _ => StoreError::Database(e),
        }
    }
}
