//! The SQL store, through `sqlx`: the only crate that talks SQL. SQLite is the
//! embedded default, PostgreSQL the production backend; both run the same queries
//! (`$n` placeholders, `TEXT`/`BIGINT` columns) through sqlx's `Any` driver.
//!
//! Every write that must be audited appends its audit event in the same transaction.
//! Write transactions take SQLite's write lock at once (`BEGIN IMMEDIATE`); auditing
//! ones start by updating the audit head row, which serialises chain appends on PostgreSQL.

mod actors;
mod audit;
mod consents;
pub mod faults;
mod records;
mod registry;
mod rejections;
mod settings;

pub use actors::Actor;
pub use audit::{AuditFilter, NewAuditEvent};
pub use consents::{ConsentGrant, LookupOutcome, ReleasedCertificate};
pub use records::{
    IngestItem, IngestOutcome, MessageSource, RejectedRecord, StoredRecord, Verdict,
};
pub use registry::TrustedKey;
pub use rejections::{RejectionEntry, RejectionFilter};
pub use settings::PSEUDONYM_KEY_MIN_BYTES;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyPool, Row};
use std::borrow::Cow;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("system failure: {0}")]
    System(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The embedded migrations, shared by both backends.
#[derive(Debug)]
struct EmbeddedMigrations;

impl<'s> MigrationSource<'s> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>>
                + Send
                + 's,
        >,
    > {
        Box::pin(async {
            Ok(vec![
                Migration::new(
                    1,
                    Cow::Borrowed("initial"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0001_initial.sql")),
                    false,
                ),
                Migration::new(
                    2,
                    Cow::Borrowed("ingest trust"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0002_ingest_trust.sql")),
                    false,
                ),
            ])
        })
    }
}

/// A write transaction; on SQLite it also holds this process's writer lock until it ends.
pub(crate) struct WriteTransaction {
    transaction: sqlx::Transaction<'static, sqlx::Any>,
    _writer: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTransaction {
    pub(crate) async fn commit(self) -> Result<()> {
        Ok(self.transaction.commit().await?)
    }
}

impl std::ops::Deref for WriteTransaction {
    type Target = sqlx::Transaction<'static, sqlx::Any>;
    fn deref(&self) -> &Self::Target {
        &self.transaction
    }
}

impl std::ops::DerefMut for WriteTransaction {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.transaction
    }
}

/// Which SQL engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Key for the keyed hashes (pseudonyms) of personal identifiers in the audit log.
    pseudonym_key: std::sync::Arc<Vec<u8>>,
    /// Serialises this process's SQLite writers (see `begin_write`).
    sqlite_writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The queue of the lookup worker, started on the first lookup.
    lookup_queue:
        std::sync::Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<consents::LookupJob>>>,
}

/// Unix milliseconds now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A fresh random id, 16 bytes in hex, with a prefix saying what it names.
pub fn random_id(prefix: &str) -> Result<String> {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes)?;
    Ok(format!("{prefix}_{}", hex::encode(bytes)))
}

/// Fills `bytes` from the operating system's secure random source.
pub fn fill_random(bytes: &mut [u8]) -> Result<()> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(bytes)
        .map_err(|_| StoreError::System("the operating system provided no randomness".into()))
}

impl Store {
    /// Connects to `sqlite://path` (created when missing) or `postgres://…`, and migrates.
    pub async fn connect(url: &str, pseudonym_key: Vec<u8>) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Invalid(format!(
                "database url must start with sqlite: or postgres:, got {}",
                url.split(':').next().unwrap_or_default()
            )));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let max_connections = match backend {
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *connection)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *connection)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *connection)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *connection)
                            .await?;
                        // Index inserts at random keys touch pages all over a growing
                        // file: SQLite's default 2 MiB page cache made a 200,000-record
                        // ingest read and write through the kernel for most of them.
                        for pragma in [
                            "PRAGMA cache_size = -65536",
                            "PRAGMA mmap_size = 268435456",
                            "PRAGMA wal_autocheckpoint = 4000",
                            "PRAGMA temp_store = MEMORY",
                        ] {
                            sqlx::query(pragma).execute(&mut *connection).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let migrator = Migrator::new(EmbeddedMigrations).await?;
        migrator.run(&pool).await?;
        let store = Self {
            pool,
            backend,
            pseudonym_key: std::sync::Arc::new(pseudonym_key),
            sqlite_writer: std::sync::Arc::default(),
            lookup_queue: std::sync::Arc::default(),
        };
        store.check_pseudonym_key().await?;
        Ok(store)
    }

    /// Creates database `name` on the PostgreSQL server at `admin_url` (tests and operators).
    pub async fn create_postgres_database(admin_url: &str, name: &str) -> Result<()> {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(StoreError::Invalid(format!(
                "database name {name} must be lower-case letters, digits and _"
            )));
        }
        let mut connection = sqlx::AnyConnection::connect(admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await?;
        connection.close().await?;
        Ok(())
    }

    /// Begins a transaction that will write. On SQLite, whose writers are one at a
    /// time anyway, writers of this process queue in order on an in-process lock rather
    /// than in SQLite's sleeping busy handler, then take the database lock at once
    /// (`BEGIN IMMEDIATE`) so a read-then-write transaction never fails on a moved
    /// snapshot. PostgreSQL locks rows as it goes.
    pub(crate) async fn begin_write(&self) -> Result<WriteTransaction> {
        Ok(match self.backend {
            Backend::Sqlite => {
                let guard = self.sqlite_writer.clone().lock_owned().await;
                let transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                WriteTransaction {
                    transaction,
                    _writer: Some(guard),
                }
            }
            Backend::Postgres => WriteTransaction {
                transaction: self.pool.begin().await?,
                _writer: None,
            },
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The keyed hash of a personal identifier, as it appears in audit events and logs.
    pub fn pseudonym(&self, identifier: &str) -> String {
        datarun_domain::pseudonym(&self.pseudonym_key, identifier)
    }

    /// Whether the database answers within two seconds; the error says why not.
    pub async fn ping(&self) -> std::result::Result<(), String> {
        let query = sqlx::query("SELECT 1").fetch_one(&self.pool);
        match tokio::time::timeout(Duration::from_secs(2), query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer within 2 s".into()),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn text(row: &AnyRow, column: &str) -> Result<String> {
    Ok(row.try_get::<String, _>(column)?)
}

fn optional_text(row: &AnyRow, column: &str) -> Result<Option<String>> {
    Ok(row.try_get::<Option<String>, _>(column)?)
}

fn integer(row: &AnyRow, column: &str) -> Result<i64> {
    Ok(row.try_get::<i64, _>(column)?)
}

fn optional_integer(row: &AnyRow, column: &str) -> Result<Option<i64>> {
    Ok(row.try_get::<Option<i64>, _>(column)?)
}
