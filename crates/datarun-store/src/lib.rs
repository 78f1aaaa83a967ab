//! The SQL store, through `sqlx`: the only crate that talks SQL. Two native engines
//! sit behind the one `Store` type: SQLite (`SqlitePool`, the embedded default, STRICT
//! tables) and PostgreSQL (`PgPool`, production: `bytea`, `json`, `boolean`, array
//! binds). Most statements are one SQL text, compiled once per engine by the
//! [`on_pool!`] and [`on_tx!`] macros; where an engine has a better way (PostgreSQL's
//! binary `COPY`, `UNNEST` arrays and `= ANY`; SQLite's multi-row `VALUES`), the code
//! says so in a `match` on the engine.
//!
//! Every write that must be audited appends its audit event in the same transaction.
//! Write transactions take SQLite's write lock at once (`BEGIN IMMEDIATE`); auditing
//! ones start by updating the audit head row, which serialises chain appends on PostgreSQL.

mod actors;
mod audit;
mod auth;
mod consent_requests;
mod consents;
mod copy;
mod delegations;
pub mod department;
mod feed;
mod proofs;
mod purposes;
pub use datarun_domain::faults;
mod records;
mod registry;
mod rejections;
mod schemas;
mod settings;

pub use actors::Actor;
pub use audit::{AuditFilter, NewAuditEvent};
pub use auth::{Authentication, RevokeTarget, AUTH_POLL_EVERY, REVOCATION_REACHES_ALL_HUBS_WITHIN};
pub use consent_requests::{ConsentRequest, NewConsentRequest, Preview};
pub use consents::{ConsentGrant, LookupAsk, LookupOutcome, ReleasedCertificate};
pub use delegations::DelegationGrant;
pub use feed::{FeedEntry, FEED_PAGE_MAX};
pub use purposes::HubKey;
pub use records::{
    IngestItem, IngestOutcome, MessageSource, RejectedRecord, StoredRecord, Verdict,
};
pub use registry::TrustedKey;
pub use rejections::{RejectionEntry, RejectionFilter};
pub use schemas::{Deletion, Registration, SchemaVersion};
pub use settings::PSEUDONYM_KEY_MIN_BYTES;

use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::Row;
use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

/// Runs `$body` with `$pool` bound to the store's pool, compiled once per engine.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.pool {
            $crate::Pool::Sqlite($pool) => $body,
            $crate::Pool::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` with `$conn` bound to a write transaction's connection, compiled once
/// per engine; pass `&mut *$conn` to each statement.
macro_rules! on_tx {
    ($tx:expr, |$conn:ident| $body:expr) => {
        match &mut *$tx {
            $crate::WriteTransaction::Sqlite { transaction, .. } => {
                let $conn: &mut sqlx::SqliteConnection = &mut *transaction;
                $body
            }
            $crate::WriteTransaction::Postgres(transaction) => {
                let $conn: &mut sqlx::PgConnection = &mut *transaction;
                $body
            }
        }
    };
}
pub(crate) use {on_pool, on_tx};

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
    /// A rule said no; `code` is stable (`purpose_not_allowed`, `consent_revoked`, …).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("system failure: {0}")]
    System(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The embedded migrations of one engine: 0001 and 0002 are the skeleton's schema,
/// shared by both (so data directories and databases from before issue 6 migrate in
/// place); from 0003 on each engine has its own, in the types that fit it.
#[derive(Debug)]
struct EmbeddedMigrations(Backend);

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
        let migration = |version, description, sql| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        };
        let registry = match self.0 {
            Backend::Sqlite => migration(
                5,
                "schema registry",
                include_str!("../migrations/sqlite/0005_schema_registry.sql"),
            ),
            Backend::Postgres => migration(
                5,
                "schema registry",
                include_str!("../migrations/postgres/0005_schema_registry.sql"),
            ),
        };
        let feed = match self.0 {
            Backend::Sqlite => migration(
                8,
                "change feed",
                include_str!("../migrations/sqlite/0008_change_feed.sql"),
            ),
            Backend::Postgres => migration(
                8,
                "change feed",
                include_str!("../migrations/postgres/0008_change_feed.sql"),
            ),
        };
        let tokens = match self.0 {
            Backend::Sqlite => migration(
                9,
                "token expiry",
                include_str!("../migrations/sqlite/0009_token_expiry.sql"),
            ),
            Backend::Postgres => migration(
                9,
                "token expiry",
                include_str!("../migrations/postgres/0009_token_expiry.sql"),
            ),
        };
        let purposes = match self.0 {
            Backend::Sqlite => migration(
                10,
                "purpose catalogue",
                include_str!("../migrations/sqlite/0010_purpose_catalogue.sql"),
            ),
            Backend::Postgres => migration(
                10,
                "purpose catalogue",
                include_str!("../migrations/postgres/0010_purpose_catalogue.sql"),
            ),
        };
        let hub_keys = match self.0 {
            Backend::Sqlite => migration(
                11,
                "hub keys",
                include_str!("../migrations/sqlite/0011_hub_keys.sql"),
            ),
            Backend::Postgres => migration(
                11,
                "hub keys",
                include_str!("../migrations/postgres/0011_hub_keys.sql"),
            ),
        };
        let delegations = match self.0 {
            Backend::Sqlite => migration(
                12,
                "delegations",
                include_str!("../migrations/sqlite/0012_delegations.sql"),
            ),
            Backend::Postgres => migration(
                12,
                "delegations",
                include_str!("../migrations/postgres/0012_delegations.sql"),
            ),
        };
        let proofs = match self.0 {
            Backend::Sqlite => migration(
                13,
                "proofs",
                include_str!("../migrations/sqlite/0013_proofs.sql"),
            ),
            Backend::Postgres => migration(
                13,
                "proofs",
                include_str!("../migrations/postgres/0013_proofs.sql"),
            ),
        };
        let requests = match self.0 {
            Backend::Sqlite => migration(
                14,
                "consent requests",
                include_str!("../migrations/sqlite/0014_consent_requests.sql"),
            ),
            Backend::Postgres => migration(
                14,
                "consent requests",
                include_str!("../migrations/postgres/0014_consent_requests.sql"),
            ),
        };
        let guardians = match self.0 {
            Backend::Sqlite => migration(
                15,
                "guardians by guardian",
                include_str!("../migrations/sqlite/0015_guardians_by_guardian.sql"),
            ),
            Backend::Postgres => migration(
                15,
                "guardians by guardian",
                include_str!("../migrations/postgres/0015_guardians_by_guardian.sql"),
            ),
        };
        let native = match self.0 {
            Backend::Sqlite => migration(
                3,
                "strict tables",
                include_str!("../migrations/sqlite/0003_strict_tables.sql"),
            ),
            Backend::Postgres => migration(
                3,
                "native types",
                include_str!("../migrations/postgres/0003_native_types.sql"),
            ),
        };
        // SQLite only: PostgreSQL dropped the same foreign key in 0003.
        let unreferenced = match self.0 {
            Backend::Sqlite => Some(migration(
                16,
                "certificates unreferenced",
                include_str!("../migrations/sqlite/0016_certificates_unreferenced.sql"),
            )),
            Backend::Postgres => None,
        };
        // SQLite only: PostgreSQL's index by subject keeps the record type (measured
        // on SQLite's ingest only).
        let subject_index = match self.0 {
            Backend::Sqlite => Some(migration(
                18,
                "subject index by subject",
                include_str!("../migrations/sqlite/0018_subject_index_by_subject.sql"),
            )),
            Backend::Postgres => None,
        };
        // SQLite only: PostgreSQL keys guardians by their resident id as text.
        let guardian_numbers = match self.0 {
            Backend::Sqlite => Some(migration(
                19,
                "guardian numbers",
                include_str!("../migrations/sqlite/0019_guardian_numbers.sql"),
            )),
            Backend::Postgres => None,
        };
        // PostgreSQL only: SQLite stores the fields as JSON text already.
        let fields_json = match self.0 {
            Backend::Sqlite => None,
            Backend::Postgres => Some(migration(
                17,
                "fields as json",
                include_str!("../migrations/postgres/0017_fields_json.sql"),
            )),
        };
        Box::pin(async move {
            let mut migrations = vec![
                migration(1, "initial", include_str!("../migrations/0001_initial.sql")),
                migration(
                    2,
                    "ingest trust",
                    include_str!("../migrations/0002_ingest_trust.sql"),
                ),
                native,
                migration(
                    4,
                    "unread index",
                    include_str!("../migrations/0004_unread_index.sql"),
                ),
                registry,
                migration(
                    6,
                    "consent schema versions",
                    include_str!("../migrations/0006_consent_schema_versions.sql"),
                ),
                migration(
                    7,
                    "certificate status",
                    include_str!("../migrations/0007_certificate_status.sql"),
                ),
                feed,
                tokens,
                purposes,
                hub_keys,
                delegations,
                proofs,
                requests,
                guardians,
            ];
            migrations.extend(unreferenced);
            migrations.extend(fields_json);
            migrations.extend(subject_index);
            migrations.extend(guardian_numbers);
            Ok(migrations)
        })
    }
}

/// The pool of the engine a store runs on.
#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A write transaction; on SQLite it also holds this process's writer lock until it ends.
pub(crate) enum WriteTransaction {
    Sqlite {
        transaction: sqlx::Transaction<'static, sqlx::Sqlite>,
        _writer: tokio::sync::OwnedMutexGuard<()>,
    },
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl WriteTransaction {
    /// Marks a point the transaction can roll back to, leaving what came before (one
    /// savepoint at a time: `lookup_batch` isolates each lookup of a batch with it).
    pub(crate) async fn savepoint(&mut self) -> Result<()> {
        self.execute_raw("SAVEPOINT datarun_step").await
    }

    pub(crate) async fn release_savepoint(&mut self) -> Result<()> {
        self.execute_raw("RELEASE SAVEPOINT datarun_step").await
    }

    /// Undoes everything since `savepoint`; on PostgreSQL this also clears the error
    /// that aborted the transaction, so it can go on.
    pub(crate) async fn rollback_to_savepoint(&mut self) -> Result<()> {
        self.execute_raw("ROLLBACK TO SAVEPOINT datarun_step")
            .await?;
        self.execute_raw("RELEASE SAVEPOINT datarun_step").await
    }

    async fn execute_raw(&mut self, sql: &'static str) -> Result<()> {
        on_tx!(self, |conn| {
            sqlx::query(sql).execute(&mut *conn).await?;
        });
        Ok(())
    }

    pub(crate) async fn commit(self) -> Result<()> {
        match self {
            Self::Sqlite { transaction, .. } => transaction.commit().await?,
            Self::Postgres(transaction) => transaction.commit().await?,
        }
        Ok(())
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
    pool: Pool,
    /// Key for the keyed hashes (pseudonyms) of personal identifiers in the audit log.
    pseudonym_key: std::sync::Arc<Vec<u8>>,
    /// Serialises this process's SQLite writers (see `begin_write`).
    sqlite_writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// SQLite: the one connection every write transaction runs on (see `begin_write`).
    sqlite_write_pool: Option<SqlitePool>,
    /// SQLite: set by a checkpoint pass that copied the whole log; the next writer
    /// copies the rest and so starts the log again (see `Store::checkpoint`).
    sqlite_log_restart: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The queue of the lookup worker, started on the first lookup.
    lookup_queue:
        std::sync::Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<consents::LookupJob>>>,
    /// Each schema version's fields and their sensitivity, read once: a version's
    /// definition never changes.
    version_fields: schemas::VersionFieldCache,
    /// Tokens already authenticated, dropped whenever any hub revokes one (`auth`).
    token_cache: std::sync::Arc<auth::TokenCache>,
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
        let (pool, sqlite_write_pool) = if url.starts_with("sqlite:") {
            let (readers, writer) = connect_sqlite(url).await?;
            (Pool::Sqlite(readers), Some(writer))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            (Pool::Postgres(connect_postgres(url).await?), None)
        } else {
            return Err(StoreError::Invalid(format!(
                "database url must start with sqlite: or postgres:, got {}",
                url.split(':').next().unwrap_or_default()
            )));
        };
        let store = Self {
            pool,
            pseudonym_key: std::sync::Arc::new(pseudonym_key),
            sqlite_writer: std::sync::Arc::default(),
            sqlite_write_pool,
            sqlite_log_restart: std::sync::Arc::default(),
            lookup_queue: std::sync::Arc::default(),
            version_fields: schemas::VersionFieldCache::default(),
            token_cache: std::sync::Arc::default(),
        };
        store.check_pseudonym_key().await?;
        Ok(store)
    }

    /// Creates database `name` on the PostgreSQL server at `admin_url` (tests and operators).
    pub async fn create_postgres_database(admin_url: &str, name: &str) -> Result<()> {
        on_postgres_server(admin_url, name, |name| format!("CREATE DATABASE {name}")).await
    }

    /// Drops database `name` on the PostgreSQL server at `admin_url`, closing any
    /// connection still open to it (benchmarks clean up after themselves).
    pub async fn drop_postgres_database(admin_url: &str, name: &str) -> Result<()> {
        on_postgres_server(admin_url, name, |name| {
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        })
        .await
    }

    /// Begins a transaction that will write. On SQLite, whose writers are one at a
    /// time anyway, writers of this process queue in order on an in-process lock rather
    /// than in SQLite's sleeping busy handler, then take the database lock at once
    /// (`BEGIN IMMEDIATE`) so a read-then-write transaction never fails on a moved
    /// snapshot. PostgreSQL locks rows as it goes.
    pub(crate) async fn begin_write(&self) -> Result<WriteTransaction> {
        Ok(match &self.pool {
            Pool::Sqlite(pool) => {
                let writer = self.sqlite_writer.clone().lock_owned().await;
                let pool = self.sqlite_write_pool.as_ref().unwrap_or(pool);
                if self
                    .sqlite_log_restart
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                {
                    finish_log_copy(pool).await;
                }
                let transaction = pool.begin_with("BEGIN IMMEDIATE").await?;
                WriteTransaction::Sqlite {
                    transaction,
                    _writer: writer,
                }
            }
            Pool::Postgres(pool) => WriteTransaction::Postgres(pool.begin().await?),
        })
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The keyed hash of a personal identifier, as it appears in audit events and logs.
    pub fn pseudonym(&self, identifier: &str) -> String {
        datarun_domain::pseudonym(&self.pseudonym_key, identifier)
    }

    /// Whether the database answers within two seconds; the error says why not.
    pub async fn ping(&self) -> std::result::Result<(), String> {
        let query = async {
            on_pool!(self, |pool| sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map(|_| ()))
        };
        match tokio::time::timeout(Duration::from_secs(2), query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer within 2 s".into()),
        }
    }

    /// Copies the SQLite write-ahead log into the database `every` so often (a hub uses
    /// `CHECKPOINT_EVERY`) until `shutdown` resolves, by [`Store::checkpoint`]; a no-op
    /// on PostgreSQL. Left to SQLite's automatic checkpoint, the copy ran inside the
    /// committing ingest transaction, holding the writer lock that ingest and every
    /// consented lookup's audit event need. The automatic checkpoint stays as a
    /// backstop, at `WAL_BACKSTOP_PAGES`.
    pub async fn run_checkpoints(
        &self,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        if !matches!(self.pool, Pool::Sqlite(_)) {
            return;
        }
        let checkpoints = async {
            loop {
                tokio::time::sleep(every).await;
                if let Err(error) = self.checkpoint().await {
                    tracing::warn!(%error, "WAL checkpoint failed; retrying");
                }
            }
        };
        tokio::select! {
            _ = shutdown => {}
            _ = checkpoints => {}
        }
    }

    /// Copies SQLite's write-ahead log into the database, from a connection of its own
    /// and without blocking writers or readers (`PASSIVE`); `None` on PostgreSQL.
    /// Returns what its last pass found.
    ///
    /// A writer that commits back to back never begins a transaction with the whole log
    /// copied, the one moment SQLite starts the log again from its beginning: the log
    /// grew to hundreds of MiB, every frame written into new file space (a tenth of all
    /// ingest CPU time in a `perf` profile, most of it the kernel zeroing new pages). So
    /// when a pass has copied the whole of a log of at least `LOG_RESTART_FRAMES`, more
    /// passes copy what was committed meanwhile (up to `CATCH_UP_PASSES`, until one finds
    /// at most `WRITER_COPY_FRAMES` new frames), and then the next write transaction
    /// first copies the little that is left, on the writer connection
    /// ([`finish_log_copy`]): it begins with every frame copied, and the log is written
    /// again from its beginning, into file space the kernel already holds.
    pub async fn checkpoint(&self) -> Result<Option<LogCheckpoint>> {
        let Pool::Sqlite(pool) = &self.pool else {
            return Ok(None);
        };
        let mut pass = passive_checkpoint(pool).await?;
        for _ in 0..CATCH_UP_PASSES {
            if !pass.restartable() {
                break;
            }
            let next = passive_checkpoint(pool).await?;
            let committed_meanwhile = next.log_frames - pass.log_frames;
            pass = next;
            if committed_meanwhile <= WRITER_COPY_FRAMES {
                break;
            }
        }
        if pass.restartable() {
            self.sqlite_log_restart
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Some(pass))
    }

    /// Refreshes the query planner's statistics (`ANALYZE`), as autovacuum does on its
    /// own schedule: after a bulk load, until it has, PostgreSQL plans a lookup of a few
    /// rows as if the table held thousands per subject.
    pub async fn refresh_statistics(&self) -> Result<()> {
        on_pool!(self, |pool| {
            sqlx::query("ANALYZE").execute(pool).await?;
        });
        Ok(())
    }

    pub async fn close(&self) {
        if let Some(writer) = &self.sqlite_write_pool {
            writer.close().await;
        }
        on_pool!(self, |pool| pool.close().await)
    }
}

/// How often a running hub checkpoints SQLite's write-ahead log (`Store::run_checkpoints`).
/// Each checkpoint writes every page changed since the last one once, so a page that
/// many ingest transactions change (an index page at random keys) is written once per
/// interval: at 15,000 records/s, 2 s is about 8 transactions of 4,000 records.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// A log at least this long (frames of 8 KiB, `SQLITE_PAGE_BYTES`: 4 MiB) is started
/// again from its beginning once a checkpoint pass has copied all of it
/// (`Store::checkpoint`).
pub const LOG_RESTART_FRAMES: i64 = 512;

/// What one pass of [`Store::checkpoint`] found: the frames in SQLite's write-ahead log
/// (since it last started from its beginning) and how many of them are copied into the
/// database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCheckpoint {
    pub log_frames: i64,
    pub copied_frames: i64,
}

impl LogCheckpoint {
    /// Long enough to be worth starting again, and all of it copied.
    fn restartable(&self) -> bool {
        self.log_frames >= LOG_RESTART_FRAMES && self.copied_frames == self.log_frames
    }
}

/// At most this many more passes of `Store::checkpoint` catch up with commits made
/// during the one before.
const CATCH_UP_PASSES: usize = 3;

/// What `Store::checkpoint` is content to leave the writer to copy (frames of 8 KiB,
/// 1 MiB).
const WRITER_COPY_FRAMES: i64 = 128;

/// One `PASSIVE` checkpoint pass on a connection of `pool`.
async fn passive_checkpoint(pool: &SqlitePool) -> Result<LogCheckpoint> {
    let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(pool)
        .await?;
    let pass = LogCheckpoint {
        log_frames: row.try_get(1)?,
        copied_frames: row.try_get(2)?,
    };
    tracing::debug!(
        log_frames = pass.log_frames,
        copied_frames = pass.copied_frames,
        "checkpoint"
    );
    Ok(pass)
}

/// On the writer connection, before its next transaction: copies into the database what
/// was committed since the last checkpoint pass, so that the transaction begins with the
/// whole log copied and SQLite writes it again from its beginning (`Store::checkpoint`).
/// This holds the writer for the copy of at most the transactions committed during
/// that pass. A failure is logged, not returned: the log then grows a while longer.
async fn finish_log_copy(writer: &SqlitePool) {
    match passive_checkpoint(writer).await {
        Ok(pass) => tracing::debug!(
            log_frames = pass.log_frames,
            copied_frames = pass.copied_frames,
            "the writer copied the rest of the log"
        ),
        Err(error) => {
            tracing::warn!(%error, "the writer could not copy the rest of the log; it grows on")
        }
    }
}

/// SQLite's own automatic checkpoint, in pages of 8 KiB (400 MiB of log): only reached
/// when no hub runs `Store::run_checkpoints` (a one-shot command) or it falls behind.
const WAL_BACKSTOP_PAGES: &str = "50000";

/// The page size of a new SQLite database (SQLite's default is 4 KiB). An ingest
/// batch inserts at random keys into three indexes (by subject, by guardian, by record
/// id), and every page it changes is one frame of the write-ahead log, written at
/// commit and copied again by the checkpoint. With pages twice as large, twice as many
/// of a batch's keys share a page: in `scripts/bench/sqlite_ingest_model.py`, 0.59
/// frames a record instead of 1.13 and 28 µs of CPU instead of 31; in `bench ingest`,
/// the SQLite writer's CPU fell from a median of 0.30 of the checks' to 0.26-0.27 in
/// five runs of six (`docs/benchmarks.md`). A database
/// keeps the page size it was created with (changing it takes a `VACUUM` outside WAL
/// mode), so one made before this keeps 4 KiB pages, and the frame counts here then
/// mean half as many bytes.
pub const SQLITE_PAGE_BYTES: u32 = 8192;

/// Runs the statement `sql` makes of database `name` (CREATE or DROP DATABASE, which
/// take no parameters) on the PostgreSQL server at `admin_url`, for a name of lower-case
/// letters, digits and `_` only.
async fn on_postgres_server(
    admin_url: &str,
    name: &str,
    sql: impl FnOnce(&str) -> String,
) -> Result<()> {
    use sqlx::Connection;
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(StoreError::Invalid(format!(
            "database name {name} must be lower-case letters, digits and _"
        )));
    }
    let mut connection = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&sql(name)).execute(&mut connection).await?;
    connection.close().await?;
    Ok(())
}

/// Opens the SQLite file (created when missing) and migrates it. Returns the pool
/// readers share and the one connection write transactions run on: SQLite empties a
/// connection's page cache whenever another connection has written since its last
/// transaction, so writes alternating over a pool's connections read the index pages
/// they change back from the log and the file every time, while one writer connection
/// keeps them cached from one transaction to the next.
async fn connect_sqlite(url: &str) -> Result<(SqlitePool, SqlitePool)> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .page_size(SQLITE_PAGE_BYTES)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        // Index inserts at random keys touch pages all over a growing file: SQLite's
        // default 2 MiB page cache made a 200,000-record ingest read and write through
        // the kernel for most of them. A checkpoint every 2 s (`run_checkpoints`)
        // copies each hot index page to the database once per many transactions.
        .pragma("cache_size", "-65536")
        .pragma("mmap_size", "268435456")
        .pragma("wal_autocheckpoint", WAL_BACKSTOP_PAGES)
        .pragma("temp_store", "MEMORY");
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.clone())
        .await?;
    // Rebuilding a table (migration 0003) needs foreign keys off, as SQLite's own
    // procedure says, and that can only be set outside a transaction: the migrations
    // run on one connection with them off, and that connection is closed afterwards
    // rather than returned to the pool with them off.
    let mut connection = pool.acquire().await?;
    sqlx::query("PRAGMA foreign_keys = OFF")
        .execute(&mut *connection)
        .await?;
    let migrated = async {
        Migrator::new(EmbeddedMigrations(Backend::Sqlite))
            .await?
            .run(&mut *connection)
            .await?;
        let broken = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(&mut *connection)
            .await?;
        if !broken.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "{} rows break a foreign key after migrating",
                broken.len()
            )));
        }
        Ok(())
    }
    .await;
    connection.detach();
    migrated?;
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?;
    Ok((pool, writer))
}

/// Connects to the PostgreSQL database and migrates it.
async fn connect_postgres(url: &str) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?;
    Migrator::new(EmbeddedMigrations(Backend::Postgres))
        .await?
        .run(&pool)
        .await?;
    Ok(pool)
}

/// Typed reads of a row's columns, the same on both engines.
pub(crate) trait RowExt {
    fn text(&self, column: &str) -> Result<String>;
    fn optional_text(&self, column: &str) -> Result<Option<String>>;
    fn integer(&self, column: &str) -> Result<i64>;
    fn optional_integer(&self, column: &str) -> Result<Option<i64>>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>>;
    fn boolean(&self, column: &str) -> Result<bool>;
    /// A JSON object column: `json` on PostgreSQL, JSON text on SQLite.
    fn fields(&self, column: &str) -> Result<serde_json::Map<String, serde_json::Value>>;
}

macro_rules! row_ext {
    ($row:ty) => {
        impl RowExt for $row {
            fn text(&self, column: &str) -> Result<String> {
                Ok(self.try_get(column)?)
            }
            fn optional_text(&self, column: &str) -> Result<Option<String>> {
                Ok(self.try_get(column)?)
            }
            fn integer(&self, column: &str) -> Result<i64> {
                Ok(self.try_get(column)?)
            }
            fn optional_integer(&self, column: &str) -> Result<Option<i64>> {
                Ok(self.try_get(column)?)
            }
            fn bytes(&self, column: &str) -> Result<Vec<u8>> {
                Ok(self.try_get(column)?)
            }
            fn boolean(&self, column: &str) -> Result<bool> {
                Ok(self.try_get(column)?)
            }
            fn fields(&self, column: &str) -> Result<serde_json::Map<String, serde_json::Value>> {
                let sqlx::types::Json(fields) = self.try_get(column)?;
                Ok(fields)
            }
        }
    };
}
row_ext!(SqliteRow);
row_ext!(PgRow);

fn text(row: &impl RowExt, column: &str) -> Result<String> {
    row.text(column)
}

fn optional_text(row: &impl RowExt, column: &str) -> Result<Option<String>> {
    row.optional_text(column)
}

fn integer(row: &impl RowExt, column: &str) -> Result<i64> {
    row.integer(column)
}

fn optional_integer(row: &impl RowExt, column: &str) -> Result<Option<i64>> {
    row.optional_integer(column)
}
