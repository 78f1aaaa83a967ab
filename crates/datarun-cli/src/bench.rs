//! `datarun bench`: figures for the hot paths, printed, never asserted. Each run builds
//! a fresh hub (fresh SQLite file or PostgreSQL database, librdkafka's in-process mock
//! cluster or a tansu broker process) exactly as production builds it.

use crate::app;
use crate::config::Config;
use crate::setup;
use anyhow::Context;
use datarun_connector::Connector;
use datarun_kafka::broker::{MockKafka, TansuBroker, TansuStorage};
use datarun_kafka::{IncomingRecord, IngestConsumer, RecordPublisher};
use datarun_store::Store;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Which Kafka-protocol broker a benchmark runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Broker {
    /// librdkafka's in-process mock cluster: the hub's own cost, no network broker.
    Mock,
    /// A tansu broker process (`scripts/install-tansu.sh`) keeping its log in memory:
    /// its SQLite engine answers a fetch in time that grows with the backlog, which a
    /// benchmark's whole-run backlog would measure instead of the hub.
    Tansu,
}

enum BenchKafka {
    Mock(MockKafka),
    Tansu(TansuBroker),
}

pub struct BenchHub {
    pub config: Config,
    pub store: Store,
    _kafka: BenchKafka,
    pub dir: PathBuf,
    /// The PostgreSQL database made for this run, and the server to drop it from.
    postgres: Option<(String, String)>,
}

impl BenchHub {
    /// Removes what the run made: its directory (SQLite file, keys, broker log) and its
    /// PostgreSQL database. A run that fails leaves them, for a look.
    pub async fn remove(self) -> anyhow::Result<()> {
        self.store.close().await;
        drop(self._kafka);
        if let Some((admin_url, name)) = &self.postgres {
            Store::drop_postgres_database(admin_url, name).await?;
        }
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("removing {}", self.dir.display()))?;
        Ok(())
    }
}

/// A fresh hub on `backend` and `broker` with the reference world registered.
pub async fn fresh_hub(
    backend: Backend,
    broker: Broker,
    postgres_admin_url: &str,
    records: usize,
) -> anyhow::Result<BenchHub> {
    let name = format!(
        "datarun_bench_{}_{}",
        datarun_store::now_millis(),
        std::process::id()
    );
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir)?;
    let kafka = match broker {
        Broker::Mock => BenchKafka::Mock(MockKafka::start()?),
        Broker::Tansu => BenchKafka::Tansu(
            TansuBroker::start_with(
                &dir.join("kafka"),
                datarun_kafka::broker::free_port()?,
                TansuStorage::Memory,
            )
            .context("starting tansu (scripts/install-tansu.sh installs it)")?,
        ),
    };
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join("datarun.db").display()),
        Backend::Postgres => {
            Store::create_postgres_database(postgres_admin_url, &name).await?;
            format!(
                "{}/{name}",
                postgres_admin_url
                    .rsplit_once('/')
                    .context("admin url has no database")?
                    .0
            )
        }
    };
    let mut config = Config::load(None, std::iter::empty())?;
    config.hub.data_dir = dir.clone();
    config.database.url = database_url;
    config.http.listen = "127.0.0.1:0".parse()?;
    config.kafka.topic_prefix = format!("{name}.");
    config.kafka.create_topics = false;
    // The bench publishes birth certificates only; its topics are the only ones made.
    config.kafka.record_types = vec!["health.birth_certificate".into()];
    if broker == Broker::Mock {
        // The mock cluster keeps only the last 5 MiB of each partition (rdkafka_mock.c):
        // spread the records so that none is deleted before the hub reads it.
        let needed = (records * MOCK_BYTES_PER_RECORD).div_ceil(MOCK_PARTITION_BYTES);
        config.kafka.partitions = config.kafka.partitions.max(needed as i32);
    }
    let settings = config.kafka_settings();
    let topics = [
        settings.records_topic("health.birth_certificate"),
        settings.dead_letter_topic(),
    ];
    match &kafka {
        BenchKafka::Mock(mock) => {
            config.kafka.bootstrap_servers = mock.bootstrap_servers();
            for topic in &topics {
                mock.create_topic(topic, config.kafka.partitions)?;
            }
        }
        BenchKafka::Tansu(tansu) => {
            config.kafka.bootstrap_servers = tansu.bootstrap_servers();
            datarun_kafka::ensure_topics(
                &config.kafka_settings(),
                &topics,
                config.kafka.partitions,
            )
            .await?;
        }
    }
    let store = app::open_store(&config).await?;
    setup::reference_world(
        &store,
        &config.hub.schemas_dir,
        &config.hub.purposes_file,
        &dir,
    )
    .await?;
    let postgres = (backend == Backend::Postgres).then(|| (postgres_admin_url.to_owned(), name));
    Ok(BenchHub {
        config,
        store,
        _kafka: kafka,
        dir,
        postgres,
    })
}

/// The CPU time this process has used so far (user and system, all threads), where
/// the platform says (Linux: `/proc/self/stat`).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are the 12th and 13th of them, in clock ticks.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture it runs on.
    Some(Duration::from_millis(ticks * 10))
}

fn cpu_since(before: Option<Duration>) -> Option<Duration> {
    Some(process_cpu()?.saturating_sub(before?))
}

pub(crate) fn rate(count: usize, elapsed: Duration) -> String {
    format!("{:>9.0}/s", count as f64 / elapsed.as_secs_f64())
}

/// Consumes `count` messages in a consumer group of its own, handling none: the broker
/// and client's ceiling. Returns the messages, the time to the first one (the group
/// join) and from the first to the last.
async fn consume_raw(
    config: &Config,
    count: usize,
) -> anyhow::Result<(Vec<IncomingRecord>, Duration, Duration)> {
    let group = format!("{}bench-raw-consume", config.kafka.topic_prefix);
    let consumer = IngestConsumer::new(
        &config.kafka_settings(),
        &group,
        None,
        &config.kafka.record_types,
    )?;
    let started = Instant::now();
    let mut messages = Vec::with_capacity(count);
    let mut first = None;
    while messages.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .with_context(|| format!("no message for 60 s after {}", messages.len()))??;
        first.get_or_insert_with(Instant::now);
        messages.push(message);
    }
    let first = first.unwrap_or(started);
    Ok((messages, first - started, first.elapsed()))
}

/// What a signed birth certificate takes in the mock cluster, generously (value,
/// headers and overhead are about 700 bytes).
const MOCK_BYTES_PER_RECORD: usize = 1024;

/// What the bench lets a mock partition hold: below its 5 MiB limit.
const MOCK_PARTITION_BYTES: usize = 4 * 1024 * 1024;

/// Records published while the hub is down, for the restart figure.
const RESTART_RECORDS: usize = 1000;

/// Verify and decode alone: the checks the ingest runs before its store transaction,
/// over the same batches the ingest forms, on all cores; returns the time they took and
/// the process's CPU time. `ingest` is dropped before returning: its check threads and
/// dead-letter producer (whose polling thread spins for the last millisecond of each
/// 100 ms poll) are not the hub's, and would run through a measurement that follows.
async fn verify_and_decode(
    ingest: datarun_ingest::Ingest,
    batches: &[std::sync::Arc<Vec<IncomingRecord>>],
    count: usize,
) -> anyhow::Result<(Duration, Option<Duration>)> {
    let started = Instant::now();
    let cpu_before = process_cpu();
    let mut accepted = 0;
    for batch in batches {
        accepted += ingest
            .check_batch(batch.clone())
            .await?
            .iter()
            .filter(|item| matches!(item.verdict, datarun_store::Verdict::Accept(_)))
            .count();
    }
    let took = (started.elapsed(), cpu_since(cpu_before));
    drop(ingest);
    anyhow::ensure!(
        accepted == count,
        "only {accepted} of {count} records passed the checks"
    );
    Ok(took)
}

/// Signs `count` records and publishes them; then, on the same records: consumes them
/// raw, verifies and decodes them alone on all cores, and ingests them end to end.
pub async fn ingest(
    backend: Backend,
    broker: Broker,
    count: usize,
    postgres_admin_url: &str,
    out: &mut dyn Write,
) -> anyhow::Result<BenchHub> {
    let hub = fresh_hub(backend, broker, postgres_admin_url, count + RESTART_RECORDS).await?;
    let mut connector = Connector::load(
        &hub.config
            .hub
            .connectors_dir
            .join("health.birth_certificate"),
    )?;
    crate::setup::resolve_connector_schema(&hub.store, &mut connector).await?;
    let key = crate::secrets::read_secret(&hub.dir.join("keys").join("health-2026.pk8"))?;
    let key = datarun_domain::keys::parse_private_key(&key)?;
    let rows = datarun_connector::sample::birth_certificates(count + RESTART_RECORDS, 1);

    let started = Instant::now();
    let mut records: Vec<_> = rows[..count]
        .iter()
        .map(|row| connector.sign_row(row, &key).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let signing = started.elapsed();
    // Published while the hub is down, for the restart measurement.
    let later: Vec<_> = rows[count..]
        .iter()
        .map(|row| connector.sign_row(row, &key).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    drop(rows);
    if broker == Broker::Mock {
        // librdkafka's mock cluster keeps only the last 5 MiB of each partition
        // (rdkafka_mock.c): more would be deleted before the hub reads it.
        let bytes: usize = records
            .iter()
            .map(|r| r.payload.len() + r.signature.len() + 300)
            .sum();
        let per_partition = bytes / hub.config.kafka.partitions.max(1) as usize;
        anyhow::ensure!(
            per_partition < MOCK_PARTITION_BYTES,
            "{count} records are about {} MiB per partition, more than the bench's estimate; \
             the mock cluster keeps 5 MiB of each: use --broker tansu, or fewer records",
            per_partition / (1024 * 1024)
        );
    }

    let started = Instant::now();
    let publisher = RecordPublisher::new(&hub.config.kafka_settings())?;
    for chunk in records.chunks(5000) {
        publisher.publish_all(chunk).await?;
    }
    let publishing = started.elapsed();
    records.clear();
    // Not the hub's either: its polling thread would run through the measurements.
    drop(publisher);

    let (messages, raw_join, raw_consuming) = consume_raw(&hub.config, count).await?;

    // Verify and decode alone, on the batches the ingest would form: before end to end,
    // and again after it (see below).
    let ingest = datarun_ingest::Ingest::new(
        hub.store.clone(),
        datarun_kafka::DeadLetterPublisher::new(&hub.config.kafka_settings())?,
        hub.config.ingest_settings(),
    );
    let mut checked_batches = Vec::new();
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let batch: Vec<IncomingRecord> =
            messages.by_ref().take(datarun_ingest::MAX_BATCH).collect();
        checked_batches.push(std::sync::Arc::new(batch));
    }
    let (checking, checks_cpu) = verify_and_decode(ingest, &checked_batches, count).await?;

    let started = Instant::now();
    let cpu_before_ingest = process_cpu();
    let running = app::start(&hub.config, hub.store.clone()).await?;
    let mut first_stored: Option<(Instant, i64)> = None;
    loop {
        // The hub's own counter: a COUNT(*) every 20 ms would scan the growing tables
        // and slow the run it measures (a third of SQLite's rate at 200,000 records).
        let stored = running
            .ingest_stats
            .stored
            .load(std::sync::atomic::Ordering::Relaxed) as i64;
        if stored > 0 && first_stored.is_none() {
            first_stored = Some((Instant::now(), stored));
        }
        if stored as usize >= count {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("ingest did not finish in 10 minutes ({stored} of {count} stored)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ingesting = started.elapsed();
    let ingest_cpu = cpu_since(cpu_before_ingest);
    let (steady_since, stored_then) = first_stored.unwrap_or((started, 0));
    let steady = steady_since.elapsed();
    let stage = |micros: &std::sync::atomic::AtomicU64| {
        Duration::from_micros(micros.load(std::sync::atomic::Ordering::Relaxed))
    };
    let (checks_took, stores_took) = (
        stage(&running.ingest_stats.check_micros),
        stage(&running.ingest_stats.store_micros),
    );
    let batches = running
        .ingest_stats
        .batches
        .load(std::sync::atomic::Ordering::Relaxed);
    running.stop().await;
    // SQLite's write-ahead log file does not shrink while the store is open (a restarted
    // log is written again from its beginning): its size now is the most it held.
    let sqlite_log = (backend == Backend::Sqlite)
        .then(|| std::fs::metadata(hub.config.hub.data_dir.join("datarun.db-wal")))
        .and_then(|metadata| metadata.ok())
        .map(|metadata| metadata.len());
    let (stored, _) = hub.store.record_counts().await?;
    anyhow::ensure!(
        stored as usize == count,
        "the hub counted {count} stored, the database holds {stored}"
    );

    // A restart: records published while the hub was down, then the same hub (same
    // data directory, so the same static group member) started again.
    RecordPublisher::new(&hub.config.kafka_settings())?
        .publish_all(&later)
        .await?;
    let started = Instant::now();
    let running = app::start(&hub.config, hub.store.clone()).await?;
    let mut resumed = None;
    loop {
        let stored = running
            .ingest_stats
            .stored
            .load(std::sync::atomic::Ordering::Relaxed) as usize;
        if stored > 0 && resumed.is_none() {
            resumed = Some(started.elapsed());
        }
        if stored >= later.len() {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            anyhow::bail!(
                "after a restart, {stored} of {} stored in 2 minutes",
                later.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restart_all = started.elapsed();
    running.stop().await;
    let resumed = resumed.unwrap_or(restart_all);

    // Verify and decode alone once more, after the end to end run: this machine's speed
    // drifts within minutes, and the ratio is taken against the mean of both runs, so
    // that a drift during the run weighs on both sides of it.
    let ingest = datarun_ingest::Ingest::new(
        hub.store.clone(),
        datarun_kafka::DeadLetterPublisher::new(&hub.config.kafka_settings())?,
        hub.config.ingest_settings(),
    );
    let (checking_after, _) = verify_and_decode(ingest, &checked_batches, count).await?;
    drop(checked_batches);

    let per_second = |n: usize, elapsed: Duration| n as f64 / elapsed.as_secs_f64();
    let steady_rate = per_second(count - stored_then as usize, steady);
    let check_rate = (per_second(count, checking) + per_second(count, checking_after)) / 2.0;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    writeln!(
        out,
        "ingest benchmark ({backend:?}, {broker:?} broker, {count} birth certificates, {cores} cores)"
    )?;
    let line = |out: &mut dyn Write, what: &str, n: usize, elapsed: Duration, note: &str| {
        writeln!(
            out,
            "  {what:<46}{}  ({elapsed:.2?}{note})",
            rate(n, elapsed)
        )
    };
    line(
        out,
        "connector map + Avro encode + Ed25519 sign",
        count,
        signing,
        "",
    )?;
    line(out, "idempotent publish, acks=all", count, publishing, "")?;
    line(
        out,
        "raw consume alone (first to last message)",
        count,
        raw_consuming,
        &format!("; group join {raw_join:.2?}"),
    )?;
    line(
        out,
        "verify + decode alone (all cores)",
        count,
        checking,
        ", before end to end",
    )?;
    line(
        out,
        "verify + decode alone (all cores), again",
        count,
        checking_after,
        ", after end to end",
    )?;
    line(
        out,
        "end to end, from start",
        count,
        ingesting,
        ", including the consumer-group join",
    )?;
    line(
        out,
        "end to end, steady state (first to last store)",
        count - stored_then as usize,
        steady,
        "",
    )?;
    writeln!(
        out,
        "  end to end (steady) / verify + decode (mean)   {:>9.2}  ({check_rate:.0}/s)",
        steady_rate / check_rate
    )?;
    writeln!(
        out,
        "  pipeline: {batches} batches (~{} records); checks {checks_took:.2?}, store transactions {stores_took:.2?}",
        count / batches.max(1) as usize
    )?;
    if let (Some(checks_cpu), Some(ingest_cpu)) = (checks_cpu, ingest_cpu) {
        let per_record = |cpu: Duration| cpu.as_secs_f64() * 1e6 / count as f64;
        writeln!(
            out,
            "  CPU time of this process per record: verify + decode {:.1} µs, end to end {:.1} µs",
            per_record(checks_cpu),
            per_record(ingest_cpu),
        )?;
    }
    if let Some(bytes) = sqlite_log {
        writeln!(
            out,
            "  SQLite write-ahead log after end to end: {:.1} MiB",
            bytes as f64 / (1024.0 * 1024.0)
        )?;
    }
    writeln!(
        out,
        "  restart: first record stored after            {:>7.2} s  ({} records in {restart_all:.2?})",
        resumed.as_secs_f64(),
        later.len()
    )?;
    Ok(hub)
}
