//! `datarun bench`: figures for the hot paths, printed, never asserted. Each run builds
//! a fresh hub (fresh SQLite file or PostgreSQL database, in-process mock Kafka cluster)
//! exactly as production builds it.

use crate::app;
use crate::config::Config;
use crate::setup;
use anyhow::Context;
use datarun_connector::Connector;
use datarun_domain::{RecordType, ResidentId, Role};
use datarun_kafka::broker::MockKafka;
use datarun_kafka::RecordPublisher;
use datarun_store::{ConsentGrant, LookupOutcome, Store};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct BenchHub {
    pub config: Config,
    pub store: Store,
    _kafka: MockKafka,
    pub dir: PathBuf,
}

/// A fresh hub on `backend` with the mock cluster and the reference world registered.
pub async fn fresh_hub(backend: Backend, postgres_admin_url: &str) -> anyhow::Result<BenchHub> {
    let name = format!(
        "datarun_bench_{}_{}",
        datarun_store::now_millis(),
        std::process::id()
    );
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir)?;
    let kafka = MockKafka::start()?;
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
    config.kafka.bootstrap_servers = kafka.bootstrap_servers();
    config.kafka.topic_prefix = format!("{name}.");
    config.kafka.create_topics = false;
    let settings = config.kafka_settings();
    for topic in [
        settings.records_topic("health.birth_certificate"),
        settings.dead_letter_topic(),
    ] {
        kafka.create_topic(&topic, config.kafka.partitions)?;
    }
    let store = app::open_store(&config).await?;
    setup::reference_world(&store, &config.hub.schemas_dir, &dir).await?;
    Ok(BenchHub {
        config,
        store,
        _kafka: kafka,
        dir,
    })
}

fn rate(count: usize, elapsed: Duration) -> String {
    format!("{:>9.0}/s", count as f64 / elapsed.as_secs_f64())
}

/// Signs `count` records, publishes them, and measures ingest until all are stored.
pub async fn ingest(
    backend: Backend,
    count: usize,
    postgres_admin_url: &str,
    out: &mut dyn Write,
) -> anyhow::Result<BenchHub> {
    let hub = fresh_hub(backend, postgres_admin_url).await?;
    let connector = Connector::load(&hub.config.hub.connectors_dir.join("health"))?;
    let key = crate::secrets::read_secret(&hub.dir.join("keys").join("health-2026.pk8"))?;
    let key = datarun_domain::keys::parse_private_key(&key)?;
    let rows = datarun_connector::sample::birth_certificates(count, 1);

    let started = Instant::now();
    let records: Vec<_> = rows
        .iter()
        .map(|row| connector.sign_row(row, &key).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let signing = started.elapsed();

    let started = Instant::now();
    let publisher = RecordPublisher::new(&hub.config.kafka_settings())?;
    for chunk in records.chunks(5000) {
        publisher.publish_all(chunk).await?;
    }
    let publishing = started.elapsed();

    let started = Instant::now();
    let running = app::start(&hub.config, hub.store.clone()).await?;
    let mut first_stored: Option<(Instant, i64)> = None;
    loop {
        let (_, stored) = hub.store.record_counts().await?;
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
    let (steady_since, stored_then) = first_stored.unwrap_or((started, 0));
    let steady = steady_since.elapsed();
    running.stop().await;
    writeln!(
        out,
        "ingest benchmark ({backend:?}, mock Kafka cluster, {count} birth certificates)"
    )?;
    writeln!(
        out,
        "  connector map + Avro encode + Ed25519 sign  {}  ({:.2?})",
        rate(count, signing),
        signing
    )?;
    writeln!(
        out,
        "  idempotent publish, acks=all                {}  ({:.2?})",
        rate(count, publishing),
        publishing
    )?;
    writeln!(
        out,
        "  ingest: consume, verify, validate, store    {}  ({:.2?} from start, including the consumer-group join)",
        rate(count, ingesting),
        ingesting
    )?;
    writeln!(
        out,
        "  ingest, steady state (first to last store)  {}  ({:.2?})",
        rate(count - stored_then as usize, steady),
        steady
    )?;
    Ok(hub)
}

/// Consented lookups against `certificates` stored certificates, `concurrency` at a time,
/// each under its own one-use consent (consent check, use count, read, audit: one transaction).
pub async fn lookups(
    backend: Backend,
    certificates: usize,
    lookups: usize,
    concurrency: usize,
    postgres_admin_url: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut sink = Vec::new();
    let hub = ingest(backend, certificates, postgres_admin_url, &mut sink).await?;
    let store = hub.store.clone();
    let rows = datarun_connector::sample::birth_certificates(certificates, 1);
    let department = datarun_domain::DepartmentId::parse("public_security")?;
    let (caseworker, _) = store
        .create_actor(Role::Caseworker, Some(&department), None, "bench counter")
        .await?;
    let record_type = RecordType::parse("health.birth_certificate")?;
    let mut work = Vec::with_capacity(lookups);
    for index in 0..lookups {
        let row = &rows[index % rows.len()];
        let child = ResidentId::parse(&row["baby_id_no"])?;
        let (citizen, _) = store
            .create_actor(Role::Citizen, None, Some(&child), "bench citizen")
            .await?;
        let consent = store
            .grant_consent(
                &citizen,
                ConsentGrant {
                    subject: child.clone(),
                    requester_department: department.clone(),
                    caseworker: None,
                    record_types: vec![record_type.clone()],
                    fields: None,
                    purpose: datarun_domain::PurposeCode::parse("household_registration")?,
                    max_uses: 1,
                    expires_at_millis: datarun_store::now_millis() + 3_600_000,
                },
            )
            .await?;
        work.push((consent.consent_id, child.as_str().to_owned()));
    }
    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(work));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (queue, store, caseworker, record_type) = (
            queue.clone(),
            store.clone(),
            caseworker.clone(),
            record_type.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some((consent_id, subject)) = queue.lock().await.pop() else {
                    break;
                };
                let began = Instant::now();
                let outcome = store
                    .lookup(&caseworker, &consent_id, &subject, &record_type)
                    .await?;
                latencies.push(began.elapsed());
                if !matches!(outcome, LookupOutcome::Allowed { .. }) {
                    anyhow::bail!("a benchmark lookup was refused");
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(lookups);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    writeln!(
        out,
        "lookup benchmark ({backend:?}, {certificates} certificates stored, {lookups} one-use consents, {concurrency} concurrent)"
    )?;
    writeln!(
        out,
        "  consented, audited lookups  {}  ({elapsed:.2?})",
        rate(lookups, elapsed)
    )?;
    writeln!(
        out,
        "  latency p50 {:.2?}  p90 {:.2?}  p99 {:.2?}  max {:.2?}",
        percentile(0.5),
        percentile(0.9),
        percentile(0.99),
        latencies[latencies.len() - 1]
    )?;
    match store.verify_audit_chain().await? {
        Ok(events) => writeln!(out, "  audit chain intact after the run: {events} events")?,
        Err(chain_break) => anyhow::bail!("audit chain broken after the benchmark: {chain_break}"),
    }
    Ok(())
}
