//! The PostgreSQL backend: one database shared by a fleet of replicas.
//!
//! Writers serialise on the `store_state` row they bump first, so etag checks
//! are exact at READ COMMITTED. Each write calls `pg_notify(CHANNEL,
//! REVISION)` in its transaction; PostgreSQL delivers it on commit to every
//! replica's `LISTEN` connection (a [`PgListener`]). After a lost listener
//! connection is re-established, the revision is read again, since
//! notifications sent meanwhile are lost.
//!
//! `schema` (optional) puts the tables in their own schema (created if
//! missing) through the connection's `search_path`, and gives the
//! notification channel a matching name, so several stores (or test runs)
//! can share one database.

use std::{str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    AssertSqlSafe, ConnectOptions as _, Connection as _, PgPool,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow},
};
use tokio::sync::watch;

use super::{Backend, Changes, SqlStore, StoreError, impl_tx, migrator};

/// The migrations, embedded: `services/server/migrations/postgres/`.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "policy store",
        include_str!("../../migrations/postgres/0001_policy_store.sql"),
    ),
    (
        2,
        "revocations",
        include_str!("../../migrations/postgres/0002_revocations.sql"),
    ),
];

/// The notification channel without a schema.
pub const DEFAULT_CHANNEL: &str = "tokenbridge_policy";

/// How to open a PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The schema holding the tables (`[a-z_][a-z0-9_]*`, at most 40
    /// characters); `None`: the connection's default (`public`).
    pub schema: Option<String>,
    /// Connections in the pool (the listener has its own).
    pub max_connections: u32,
    /// How long a call waits for a free connection before UNAVAILABLE.
    pub acquire_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            schema: None,
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// One PostgreSQL transaction, with the channel its notification goes to.
#[derive(Debug)]
pub struct PgTx(sqlx::Transaction<'static, sqlx::Postgres>, Arc<str>);

impl PgTx {
    /// Queues `NOTIFY channel, 'revision'`; PostgreSQL sends it on commit.
    async fn notify_others(&mut self, revision: i64) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&*self.1)
            .bind(revision.to_string())
            .execute(&mut *self.0)
            .await
            .map(drop)
    }
}

impl_tx!(PgTx, PgRow);

/// The PostgreSQL side of [`SqlStore`].
#[derive(Debug, Clone)]
pub struct PgBackend {
    pool: PgPool,
    channel: Arc<str>,
}

/// The policy store in PostgreSQL.
pub type PgStore = SqlStore<PgBackend>;

fn valid_schema(schema: &str) -> bool {
    let mut bytes = schema.bytes();
    (1..=40).contains(&schema.len())
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.starts_with("pg_")
}

impl SqlStore<PgBackend> {
    /// Connects to `url` (`postgres://USER@HOST:PORT/DATABASE`) and brings
    /// the schema up to date.
    pub async fn open(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let mut connect = PgConnectOptions::from_str(url)?.application_name("tokenbridge");
        let mut channel = DEFAULT_CHANNEL.to_string();
        if let Some(schema) = &options.schema {
            if !valid_schema(schema) {
                return Err(StoreError::invalid(
                    "",
                    "store.schema",
                    "use 1 to 40 of a-z 0-9 _, starting with a letter or _, not pg_",
                ));
            }
            connect = connect.options([("search_path", schema.as_str())]);
            channel = format!("{DEFAULT_CHANNEL}_{schema}");
        }
        // One direct connection first: a pool reports an unreachable server
        // only as a timeout, this says why (refused, unknown host, auth).
        connect.connect().await?.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        if let Some(schema) = &options.schema {
            // `schema` is checked above: a plain lower-case identifier.
            sqlx::query(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
            )))
            .execute(&pool)
            .await?;
        }
        migrator(MIGRATIONS)
            .run(&pool)
            .await
            .map_err(StoreError::Migrate)?;
        Ok(SqlStore::new(PgBackend {
            pool,
            channel: channel.into(),
        }))
    }

    /// The channel this store notifies and listens on.
    pub fn channel(&self) -> &str {
        &self.backend().channel
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.backend().pool.close().await;
    }
}

async fn read_revision(pool: &PgPool) -> Result<u64, sqlx::Error> {
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

impl Backend for PgBackend {
    type Tx = PgTx;

    async fn begin_write(&self) -> Result<PgTx, sqlx::Error> {
        Ok(PgTx(self.pool.begin().await?, self.channel.clone()))
    }

    async fn begin_read(&self) -> Result<PgTx, sqlx::Error> {
        Ok(PgTx(
            self.pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?,
            self.channel.clone(),
        ))
    }

    fn committed(&self, _revision: u64) {
        // Every listener, this replica's included, hears the NOTIFY.
    }

    async fn watch(&self) -> Result<Changes, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(&self.channel).await?;
        // Listening before reading: nothing committed from here on is missed.
        let start = read_revision(&self.pool).await?;
        let (tx, rx) = watch::channel(start);
        let pool = self.pool.clone();
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let received = tokio::select! {
                    r = listener.try_recv() => r,
                    () = tx.closed() => return,
                };
                match received {
                    // A notification is only a hint that something changed:
                    // any role that can connect can send one, with any
                    // payload. The revision comes from the store itself.
                    Ok(Some(_)) => {
                        backoff = Duration::from_millis(100);
                        match read_revision(&pool).await {
                            Ok(revision) => advance(&tx, revision),
                            Err(e) => {
                                tracing::warn!(error = %e, "policy store: cannot read the revision")
                            }
                        }
                    }
                    // The connection was lost and is re-established on the
                    // next call: notifications sent meanwhile are gone, so
                    // read the revision.
                    Ok(None) | Err(_) if pool.is_closed() => return,
                    Ok(None) => match read_revision(&pool).await {
                        Ok(revision) => advance(&tx, revision),
                        Err(e) => {
                            tracing::warn!(error = %e, "policy store: cannot read the revision")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "policy store: change listener failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        if let Ok(revision) = read_revision(&pool).await {
                            advance(&tx, revision);
                        }
                    }
                }
            }
        });
        Ok(Changes::new(rx, task))
    }
}

#[cfg(test)]
mod tests {
    use super::valid_schema;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(valid_schema("tokenbridge"));
        assert!(valid_schema("_t1"));
        for bad in [
            "",
            "1abc",
            "Upper",
            "a-b",
            "a\"b",
            "pg_catalog",
            &"a".repeat(41),
        ] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}
