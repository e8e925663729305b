//! The SQLite backend: one file, the embedded default for a single replica.
//!
//! The file is opened in WAL mode with a busy timeout; writes take the
//! database's write lock at `BEGIN IMMEDIATE`, so concurrent writers queue
//! rather than fail. Other handles on the same file learn of changes by
//! polling the revision counter every `poll_interval`; changes made through
//! this handle are reported at once.

use std::{path::Path, sync::Arc, time::Duration};

use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow},
};
use tokio::sync::watch;

use super::{Backend, Changes, SqlStore, StoreError, impl_tx, migrator};

/// The migrations, embedded: `services/server/migrations/sqlite/`.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "policy store",
        include_str!("../../migrations/sqlite/0001_policy_store.sql"),
    ),
    (
        2,
        "revocations",
        include_str!("../../migrations/sqlite/0002_revocations.sql"),
    ),
];

/// How to open an SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How often [`Changes`] polls for changes made by other processes.
    pub poll_interval: Duration,
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long a statement waits for another writer's lock.
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            max_connections: 4,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// One SQLite transaction.
#[derive(Debug)]
pub struct SqliteTx(sqlx::Transaction<'static, sqlx::Sqlite>);

impl SqliteTx {
    /// Nothing to send: other processes poll.
    async fn notify_others(&mut self, _revision: i64) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

impl_tx!(SqliteTx, SqliteRow);

/// The SQLite side of [`SqlStore`].
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    pool: SqlitePool,
    local: Arc<watch::Sender<u64>>,
    poll_interval: Duration,
}

/// The policy store in an SQLite file.
pub type SqliteStore = SqlStore<SqliteBackend>;

impl SqlStore<SqliteBackend> {
    /// Opens (creating if missing) the store at `path` and brings its schema
    /// up to date.
    pub async fn open(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .connect_with(connect)
            .await?;
        migrator(MIGRATIONS)
            .run(&pool)
            .await
            .map_err(StoreError::Migrate)?;
        Ok(SqlStore::new(SqliteBackend {
            pool,
            local: Arc::new(watch::channel(0).0),
            poll_interval: options.poll_interval,
        }))
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.backend().pool.close().await;
    }
}

async fn read_revision(pool: &SqlitePool) -> Result<u64, sqlx::Error> {
    let r: i64 = sqlx::query_scalar("SELECT revision FROM store_state WHERE id = 1")
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(r).unwrap_or_default())
}

fn advance(tx: &watch::Sender<u64>, revision: u64) {
    tx.send_if_modified(|current| {
        let newer = revision > *current;
        if newer {
            *current = revision;
        }
        newer
    });
}

impl Backend for SqliteBackend {
    type Tx = SqliteTx;

    async fn begin_write(&self) -> Result<SqliteTx, sqlx::Error> {
        Ok(SqliteTx(self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }

    async fn begin_read(&self) -> Result<SqliteTx, sqlx::Error> {
        Ok(SqliteTx(self.pool.begin().await?))
    }

    fn committed(&self, revision: u64) {
        advance(&self.local, revision);
    }

    async fn watch(&self) -> Result<Changes, StoreError> {
        let start = read_revision(&self.pool).await?;
        let (tx, rx) = watch::channel(start);
        let pool = self.pool.clone();
        let local = self.local.clone();
        let mut local_rx = local.subscribe();
        let every = self.poll_interval.max(Duration::from_millis(10));
        let task = tokio::spawn(async move {
            // Held so that `local_rx` never sees a closed channel.
            let _local = local;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = local_rx.changed() => {}
                    () = tx.closed() => return,
                }
                match read_revision(&pool).await {
                    Ok(revision) => advance(&tx, revision),
                    Err(e) => {
                        tracing::warn!(error = %e, "policy store: cannot read the revision")
                    }
                }
            }
        });
        Ok(Changes::new(rx, task))
    }
}
