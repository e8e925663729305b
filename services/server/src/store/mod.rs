//! The policy store: bindings, the deny list, revocations of cached
//! credentials and the audit log in SQL.
//!
//! Two backends behind one trait, [`PolicyStore`]:
//!
//! * **SQLite** ([`SqliteStore`]): one file, nothing to install, for a single
//!   replica. Other handles on the same file see changes by polling the
//!   store's revision counter (default every second).
//! * **PostgreSQL** ([`PgStore`]): for fleets of replicas. Each write sends a
//!   `NOTIFY` in its transaction, delivered on commit; [`PolicyStore::watch`]
//!   holds a `LISTEN` connection, so replicas see a change well within 2 s.
//!
//! [`Store::open`] picks the backend from a URL (`sqlite://PATH`,
//! `postgres://…`).
//!
//! Every write is one transaction that first bumps the store's revision
//! (which serialises writers), checks the etag, writes, and adds its audit
//! row: nothing is ever half-applied. The revision a write produced is the
//! etag of what it wrote; revisions only grow, so an etag is never reused,
//! not even by a binding deleted and created again.
//!
//! Migrations are embedded in the binary (`services/server/migrations/`,
//! one folder per backend) with `include_str!` and run on open. (sqlx's
//! `migrate!` macro would do the same but needs sqlx's `macros` feature,
//! which builds SQLite and aws-lc a second time for the proc-macro host.)
//!
//! Queries are plain `sqlx::query` strings checked at run time; no
//! compile-time checked macros, so building needs no database.
//!
//! **Revocations** of cached credentials ([`PolicyStore::revoke`]) are
//! writes like the deny list: one transaction with its audit row that bumps
//! the revision, so every replica's follower loads it. A load carries the
//! revocations younger than [`RETENTION`] (older ones match nothing still
//! cached; the next revocation deletes them) in its snapshot, for the
//! credential cache to honour ([`tokenbridge_policy::revocation`]).
//!
//! [`RETENTION`]: tokenbridge_policy::revocation::RETENTION

use std::{fmt, future::Future, path::Path, sync::Arc, time::SystemTime};
use tokio_util::task::AbortOnDropHandle;

use serde::Serialize;
use tokio::{sync::watch, task::JoinHandle};

use tokenbridge_policy::{Binding, PolicySnapshot, Problem, Revocation, Revocations};

mod error;
pub mod postgres;
mod sql;
pub mod sqlite;

pub use error::StoreError;
pub use sql::{AuditRow, Backend, BindingRow, DeniedRow, RevocationRow, SqlStore, Tx};
pub(crate) use sql::{impl_tx, migrator};

pub use postgres::{PgOptions, PgStore};
pub use sqlite::{SqliteOptions, SqliteStore};

/// `[store]`: the SQL policy store.
#[derive(Clone)]
pub struct StoreConfig {
    /// `sqlite://PATH` (absolute once loaded) or `postgres://…`. May hold a
    /// password: `Debug` prints only the scheme.
    pub url: String,
    /// PostgreSQL: the schema holding the tables (default: `public`).
    pub schema: Option<String>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.url.split_once("://").map_or("?", |(s, _)| s);
        f.debug_struct("StoreConfig")
            .field("url", &format_args!("{scheme}://** redacted **"))
            .field("schema", &self.schema)
            .finish()
    }
}

/// The most rows one list call returns.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A binding as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBinding {
    /// The binding.
    pub binding: Binding,
    /// Changes with every write; required to update or delete.
    pub etag: String,
    /// The store revision that last wrote it (the etag, as a number).
    pub revision: u64,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it was last written.
    pub updated_at: SystemTime,
}

/// A service account on the deny list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeniedServiceAccount {
    /// A unique ID, or an email in lower case.
    pub service_account: String,
    /// Why, as the admin said.
    pub reason: String,
    /// Who denied it.
    pub actor: String,
    /// When.
    #[serde(skip)]
    pub created_at: SystemTime,
    /// The store revision that wrote it.
    #[serde(skip)]
    pub revision: u64,
}

/// A revocation of cached credentials, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredRevocation {
    /// Grows with every revocation.
    pub id: u64,
    /// The service account's unique ID; `None`: every caller of the role.
    pub service_account: Option<String>,
    /// The role; `None`: every role of the service account.
    pub role_arn: Option<String>,
    /// Why, as the admin said.
    pub reason: String,
    /// Who revoked.
    pub actor: String,
    /// When.
    #[serde(skip)]
    pub revoked_at: SystemTime,
    /// The store revision that wrote it.
    pub revision: u64,
}

impl StoredRevocation {
    /// What the credential cache honours.
    pub fn revocation(&self) -> Revocation {
        Revocation {
            subject: self.service_account.clone(),
            role_arn: self.role_arn.clone(),
            revision: self.revision,
            revoked_at: self.revoked_at,
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum AuditAction {
    /// A binding was created.
    CreateBinding,
    /// A binding was replaced.
    UpdateBinding,
    /// A binding was deleted.
    DeleteBinding,
    /// A service account was put on the deny list (or its reason changed).
    DenyServiceAccount,
    /// A service account was taken off the deny list.
    AllowServiceAccount,
    /// Cached credentials were revoked on every replica.
    RevokeCachedCredentials,
}

impl AuditAction {
    /// The name stored and shown: `binding.create`, `service_account.deny`, …
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::CreateBinding => "binding.create",
            AuditAction::UpdateBinding => "binding.update",
            AuditAction::DeleteBinding => "binding.delete",
            AuditAction::DenyServiceAccount => "service_account.deny",
            AuditAction::AllowServiceAccount => "service_account.allow",
            AuditAction::RevokeCachedCredentials => "credentials.revoke",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            AuditAction::CreateBinding,
            AuditAction::UpdateBinding,
            AuditAction::DeleteBinding,
            AuditAction::DenyServiceAccount,
            AuditAction::AllowServiceAccount,
            AuditAction::RevokeCachedCredentials,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Grows with every entry; newest first in lists.
    pub id: u64,
    /// When.
    pub at: SystemTime,
    /// Who: the admin caller.
    pub actor: String,
    /// What.
    pub action: AuditAction,
    /// The binding name or the service account (a revocation: its service
    /// account, else its role).
    pub target: String,
    /// The store revision the change produced.
    pub revision: u64,
    /// The object before, as JSON; `None` if it did not exist.
    pub before: Option<String>,
    /// The object after, as JSON; `None` if it no longer exists.
    pub after: Option<String>,
}

/// Which audit entries to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries about this binding or service account.
    pub target: Option<String>,
    /// Only entries older than this id (the previous page's last id).
    pub before_id: Option<u64>,
    /// At most this many (0: 100; capped at [`MAX_PAGE_SIZE`]).
    pub limit: u32,
}

/// What [`PolicyStore::apply`] changed (or, dry, would change).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Names created.
    pub created: Vec<String>,
    /// Names replaced.
    pub updated: Vec<String>,
    /// Names deleted (only with `prune`).
    pub deleted: Vec<String>,
    /// Names already as wanted.
    pub unchanged: Vec<String>,
    /// The revision the changes produced; `None` when dry or nothing changed.
    pub revision: Option<u64>,
}

impl ApplyReport {
    /// Nothing to do.
    pub fn is_noop(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.deleted.is_empty()
    }
}

/// Everything in the store at one revision, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreContents {
    /// The store's revision.
    pub revision: u64,
    /// Every binding, by name.
    pub bindings: Vec<StoredBinding>,
    /// The deny list.
    pub denied: Vec<DeniedServiceAccount>,
    /// The revocations younger than
    /// [`RETENTION`](tokenbridge_policy::revocation::RETENTION), oldest
    /// first.
    pub revocations: Vec<StoredRevocation>,
}

impl StoreContents {
    /// The decision structure the exchange uses, with the revocations.
    pub fn snapshot(&self) -> Result<PolicySnapshot, Vec<Problem>> {
        PolicySnapshot::build(
            self.revision,
            self.bindings.iter().map(|b| b.binding.clone()).collect(),
            self.denied.iter().map(|d| d.service_account.clone()),
            Path::new("policy store"),
        )
        .map(|snapshot| snapshot.with_revocations(self.revocations()))
    }

    /// The revocations the credential cache honours, at this revision.
    pub fn revocations(&self) -> Revocations {
        Revocations::new(
            self.revision,
            self.revocations
                .iter()
                .map(StoredRevocation::revocation)
                .collect(),
        )
    }
}

/// Change notifications: the store's revision, as replicas learn of it.
/// Dropping it stops the background task that feeds it.
#[derive(Debug)]
pub struct Changes {
    rx: watch::Receiver<u64>,
    _task: Arc<AbortOnDropHandle<()>>,
}

impl Changes {
    fn new(rx: watch::Receiver<u64>, task: JoinHandle<()>) -> Self {
        Self {
            rx,
            _task: Arc::new(AbortOnDropHandle::new(task)),
        }
    }

    /// The latest revision seen.
    pub fn revision(&self) -> u64 {
        *self.rx.borrow()
    }

    /// Waits until the store's revision differs from the last one returned
    /// (or seen at subscription), and returns it.
    pub async fn changed(&mut self) -> Result<u64, StoreError> {
        self.rx
            .changed()
            .await
            .map_err(|_| StoreError::WatchClosed)?;
        Ok(*self.rx.borrow_and_update())
    }
}

/// The policy store's operations. `actor` names the admin caller in the
/// audit log. Every write is one transaction with its audit row.
pub trait PolicyStore: Send + Sync {
    /// Bindings in name order after `after` (empty: from the start), at most
    /// `limit` (0: 100; capped at [`MAX_PAGE_SIZE`]).
    fn list_bindings(
        &self,
        after: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredBinding>, StoreError>> + Send;

    /// One binding.
    fn get_binding(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<StoredBinding, StoreError>> + Send;

    /// Creates a binding; `AlreadyExists` if the name is taken.
    fn create_binding(
        &self,
        actor: &str,
        binding: Binding,
    ) -> impl Future<Output = Result<StoredBinding, StoreError>> + Send;

    /// Replaces a binding if its etag is still `etag`; `Conflict` if not.
    fn update_binding(
        &self,
        actor: &str,
        binding: Binding,
        etag: &str,
    ) -> impl Future<Output = Result<StoredBinding, StoreError>> + Send;

    /// Deletes a binding if its etag is still `etag`; `Conflict` if not.
    fn delete_binding(
        &self,
        actor: &str,
        name: &str,
        etag: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Makes the store hold `bindings` (and, with `prune`, only them) in one
    /// transaction; with `dry_run`, only reports what it would change.
    fn apply(
        &self,
        actor: &str,
        bindings: Vec<Binding>,
        prune: bool,
        dry_run: bool,
    ) -> impl Future<Output = Result<ApplyReport, StoreError>> + Send;

    /// Puts a service account on the deny list (or updates the reason).
    fn deny(
        &self,
        actor: &str,
        service_account: &str,
        reason: &str,
    ) -> impl Future<Output = Result<DeniedServiceAccount, StoreError>> + Send;

    /// Takes a service account off the deny list; `NotFound` if not on it.
    fn allow(
        &self,
        actor: &str,
        service_account: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The deny list, sorted.
    fn list_denied(
        &self,
    ) -> impl Future<Output = Result<Vec<DeniedServiceAccount>, StoreError>> + Send;

    /// Revokes the cached credentials of a service account (its unique ID),
    /// a role, or the pair, on every replica that follows the store; at
    /// least one of the two (`Invalid` otherwise, or for an email). Deletes
    /// revocations older than
    /// [`RETENTION`](tokenbridge_policy::revocation::RETENTION) in the same
    /// transaction.
    fn revoke(
        &self,
        actor: &str,
        service_account: Option<&str>,
        role_arn: Option<&str>,
        reason: &str,
    ) -> impl Future<Output = Result<StoredRevocation, StoreError>> + Send;

    /// The revocations in force (younger than
    /// [`RETENTION`](tokenbridge_policy::revocation::RETENTION)), newest
    /// first.
    fn list_revocations(
        &self,
    ) -> impl Future<Output = Result<Vec<StoredRevocation>, StoreError>> + Send;

    /// Audit entries, newest first.
    fn list_audit(
        &self,
        query: AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, StoreError>> + Send;

    /// Everything, consistently, at one revision.
    fn load(&self) -> impl Future<Output = Result<StoreContents, StoreError>> + Send;

    /// The store's current revision.
    fn revision(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Subscribes to changes made through any handle on the same database.
    /// Returns once the subscription is live: a change committed after this
    /// returns is always reported.
    fn watch(&self) -> impl Future<Output = Result<Changes, StoreError>> + Send;
}

/// Loads the whole store and builds the snapshot the exchange decides with
/// (carrying the revocations its credential cache honours).
pub async fn load_snapshot<S: PolicyStore>(store: &S) -> Result<PolicySnapshot, StoreError> {
    let contents = store.load().await?;
    contents.snapshot().map_err(|problems| {
        StoreError::Corrupt(
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

/// Either backend, chosen by URL at run time.
#[derive(Debug, Clone)]
pub enum Store {
    /// `sqlite://PATH`.
    Sqlite(SqliteStore),
    /// `postgres://…` or `postgresql://…`.
    Postgres(PgStore),
}

impl Store {
    /// `sqlite` or `postgres`, for logs.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Opens the store at `url` and brings its schema up to date.
    /// `sqlite://PATH` (created if missing) or `postgres://USER@HOST/DB`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Self::open_in(url, None).await
    }

    /// [`open`](Self::open), with PostgreSQL's tables in `schema` (created
    /// if missing; ignored for SQLite).
    pub async fn open_in(url: &str, schema: Option<&str>) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgOptions {
                schema: schema.map(str::to_string),
                ..PgOptions::default()
            };
            Ok(Store::Postgres(PgStore::open(url, options).await?))
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            Ok(Store::Sqlite(
                SqliteStore::open(Path::new(path), SqliteOptions::default()).await?,
            ))
        } else {
            Err(StoreError::invalid(
                "",
                "store.url",
                "use sqlite://PATH or postgres://USER@HOST/DATABASE",
            ))
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call.await,
            Store::Postgres($s) => $call.await,
        }
    };
}

impl PolicyStore for Store {
    async fn list_bindings(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Vec<StoredBinding>, StoreError> {
        delegate!(self, s => s.list_bindings(after, limit))
    }
    async fn get_binding(&self, name: &str) -> Result<StoredBinding, StoreError> {
        delegate!(self, s => s.get_binding(name))
    }
    async fn create_binding(
        &self,
        actor: &str,
        binding: Binding,
    ) -> Result<StoredBinding, StoreError> {
        delegate!(self, s => s.create_binding(actor, binding))
    }
    async fn update_binding(
        &self,
        actor: &str,
        binding: Binding,
        etag: &str,
    ) -> Result<StoredBinding, StoreError> {
        delegate!(self, s => s.update_binding(actor, binding, etag))
    }
    async fn delete_binding(&self, actor: &str, name: &str, etag: &str) -> Result<(), StoreError> {
        delegate!(self, s => s.delete_binding(actor, name, etag))
    }
    async fn apply(
        &self,
        actor: &str,
        bindings: Vec<Binding>,
        prune: bool,
        dry_run: bool,
    ) -> Result<ApplyReport, StoreError> {
        delegate!(self, s => s.apply(actor, bindings, prune, dry_run))
    }
    async fn deny(
        &self,
        actor: &str,
        service_account: &str,
        reason: &str,
    ) -> Result<DeniedServiceAccount, StoreError> {
        delegate!(self, s => s.deny(actor, service_account, reason))
    }
    async fn allow(&self, actor: &str, service_account: &str) -> Result<(), StoreError> {
        delegate!(self, s => s.allow(actor, service_account))
    }
    async fn list_denied(&self) -> Result<Vec<DeniedServiceAccount>, StoreError> {
        delegate!(self, s => s.list_denied())
    }
    async fn revoke(
        &self,
        actor: &str,
        service_account: Option<&str>,
        role_arn: Option<&str>,
        reason: &str,
    ) -> Result<StoredRevocation, StoreError> {
        delegate!(self, s => s.revoke(actor, service_account, role_arn, reason))
    }
    async fn list_revocations(&self) -> Result<Vec<StoredRevocation>, StoreError> {
        delegate!(self, s => s.list_revocations())
    }
    async fn list_audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        delegate!(self, s => s.list_audit(query))
    }
    async fn load(&self) -> Result<StoreContents, StoreError> {
        delegate!(self, s => s.load())
    }
    async fn revision(&self) -> Result<u64, StoreError> {
        delegate!(self, s => s.revision())
    }
    async fn watch(&self) -> Result<Changes, StoreError> {
        delegate!(self, s => s.watch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_migrations_are_every_file_in_the_folders() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        for (backend, embedded) in [
            ("sqlite", sqlite::MIGRATIONS),
            ("postgres", postgres::MIGRATIONS),
        ] {
            let mut on_disk: Vec<(i64, String)> = std::fs::read_dir(root.join(backend))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .map(|name| {
                    let (version, rest) = name.split_once('_').unwrap();
                    let body = std::fs::read_to_string(root.join(backend).join(&name)).unwrap();
                    assert!(rest.ends_with(".sql"), "{name}");
                    (version.parse().unwrap(), body)
                })
                .collect();
            on_disk.sort();
            let embedded: Vec<(i64, String)> = embedded
                .iter()
                .map(|(v, _, sql)| (*v, sql.to_string()))
                .collect();
            assert_eq!(
                embedded, on_disk,
                "{backend}: register each migration file in MIGRATIONS"
            );
        }
    }

    #[test]
    fn busy_and_connection_errors_are_unavailable() {
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).retry_may_help());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).retry_may_help());
    }

    #[test]
    fn audit_actions_round_trip() {
        for a in [
            AuditAction::CreateBinding,
            AuditAction::UpdateBinding,
            AuditAction::DeleteBinding,
            AuditAction::DenyServiceAccount,
            AuditAction::AllowServiceAccount,
            AuditAction::RevokeCachedCredentials,
        ] {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(AuditAction::parse("binding.frobnicate"), None);
    }
}
