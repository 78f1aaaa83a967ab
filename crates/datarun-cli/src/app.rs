//! The application as a function of its configuration: `start` binds the HTTP listener
//! (port 0 in tests), starts the ingest consumer and returns handles; `Running::stop`
//! shuts both down cleanly. Tests build exactly what production runs.

use crate::config::Config;
use anyhow::Context;
use datarun_api::ApiState;
use datarun_ingest::{Ingest, IngestStats};
use datarun_kafka::{DeadLetterPublisher, IngestConsumer};
use datarun_store::Store;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Running {
    pub http_addr: SocketAddr,
    pub store: Store,
    pub ingest_stats: Arc<IngestStats>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn shutdown_signal(
    receiver: &watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut receiver = receiver.clone();
    async move {
        let _ = receiver.wait_for(|stopped| *stopped).await;
    }
}

/// Opens the store named by the configuration (migrating it).
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    if config.database_url().starts_with("sqlite:") {
        std::fs::create_dir_all(&config.hub.data_dir)
            .with_context(|| format!("creating {}", config.hub.data_dir.display()))?;
    }
    let store = Store::connect(&config.database_url(), config.pseudonym_key()?)
        .await
        .context("opening the database")?;
    let assigned = store
        .assign_schema_ids(datarun_schema::fingerprint)
        .await
        .context("giving registered schemas their registry ids")?;
    if assigned > 0 {
        tracing::info!(versions = assigned, "schema versions given registry ids");
    }
    Ok(store)
}

/// The record types whose topics ingest consumes: `kafka.record_types` when it names
/// any, else every record type with a live schema in the registry when the hub starts
/// (a record type registered later is consumed from the next start).
pub async fn consumed_record_types(config: &Config, store: &Store) -> anyhow::Result<Vec<String>> {
    if !config.kafka.record_types.is_empty() {
        return Ok(config.kafka.record_types.clone());
    }
    let registered = store.schema_record_types(false).await?;
    anyhow::ensure!(
        !registered.is_empty(),
        "no record type has a schema: register one (datarun schema register) or name kafka.record_types"
    );
    Ok(registered)
}

/// This hub instance's signing key: `hub.signing_key_file`, or `<data_dir>/keys/hub.pk8`
/// generated on first start.
pub fn hub_signer(config: &Config) -> anyhow::Result<datarun_domain::signed::HubSigner> {
    let path = if config.hub.signing_key_file.as_os_str().is_empty() {
        config.hub.data_dir.join("keys").join("hub.pk8")
    } else {
        config.hub.signing_key_file.clone()
    };
    if !path.exists() {
        if let Err(error) =
            crate::setup::generate_key(&path, crate::setup::KeyFormat::for_path(&path))
        {
            // Hubs sharing a data directory start together: another may have linked its
            // key into place since the check (whole, as secrets are linked, never
            // written in place), and that key is this hub's too.
            if !path.exists() {
                return Err(
                    error.context(format!("creating the hub's signing key {}", path.display()))
                );
            }
        }
    }
    let bytes = crate::secrets::read_secret(&path)?;
    let key_pair = datarun_domain::keys::parse_private_key(&bytes)
        .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
    Ok(datarun_domain::signed::HubSigner::new(key_pair))
}

/// Starts ingest and the HTTP API on an already-open store.
pub async fn start(config: &Config, store: Store) -> anyhow::Result<Running> {
    let kafka = config.kafka_settings();
    let record_types = consumed_record_types(config, &store).await?;
    let mut topics: Vec<String> = record_types
        .iter()
        .map(|t| kafka.records_topic(t))
        .collect();
    topics.push(kafka.dead_letter_topic());
    if config.kafka.create_topics {
        datarun_kafka::ensure_topics(&kafka, &topics, config.kafka.partitions)
            .await
            .context("creating the hub's topics")?;
    }
    let ingest = Ingest::new(
        store.clone(),
        DeadLetterPublisher::new(&kafka)?,
        config.ingest_settings(),
    );
    let ingest_stats = ingest.stats.clone();
    let instance_id = config.ingest_instance_id();
    tracing::info!(
        group = %config.kafka.group_id,
        static_member = instance_id.as_deref().unwrap_or("-"),
        "joining the ingest consumer group"
    );
    let consumer = IngestConsumer::new(
        &kafka,
        &config.kafka.group_id,
        instance_id.as_deref(),
        &record_types,
    )?;
    let positions = consumer.positions();
    let (shutdown, receiver) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(
        ingest.run(consumer, shutdown_signal(&receiver)),
    ));
    let checkpoints = store.clone();
    let checkpoints_shutdown = shutdown_signal(&receiver);
    tasks.push(tokio::spawn(async move {
        checkpoints
            .run_checkpoints(datarun_store::CHECKPOINT_EVERY, checkpoints_shutdown)
            .await;
    }));
    let auth_watch = store.clone();
    let auth_watch_shutdown = shutdown_signal(&receiver);
    tasks.push(tokio::spawn(async move {
        auth_watch
            .run_auth_watch(datarun_store::AUTH_POLL_EVERY, auth_watch_shutdown)
            .await;
    }));
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    let stats = ingest_stats.clone();
    let metrics: datarun_api::MetricsRenderer = Arc::new(move || {
        let mut text = String::from("# TYPE datarun_ingest_records_total counter\n");
        for (outcome, counter) in [
            ("stored", &stats.stored),
            ("duplicate", &stats.duplicates),
            ("rejected", &stats.rejected),
        ] {
            text.push_str(&format!(
                "datarun_ingest_records_total{{outcome=\"{outcome}\"}} {}\n",
                counter.load(Ordering::Relaxed)
            ));
        }
        text.push_str("# TYPE datarun_ingest_retries_total counter\n");
        text.push_str(&format!(
            "datarun_ingest_retries_total {}\n",
            stats.retries.load(Ordering::Relaxed)
        ));
        text.push_str("# TYPE datarun_ingest_batches_total counter\n");
        text.push_str(&format!(
            "datarun_ingest_batches_total {}\n",
            stats.batches.load(Ordering::Relaxed)
        ));
        text.push_str("# TYPE datarun_ingest_stage_seconds_total counter\n");
        for (stage, micros) in [
            ("check", &stats.check_micros),
            ("store", &stats.store_micros),
        ] {
            text.push_str(&format!(
                "datarun_ingest_stage_seconds_total{{stage=\"{stage}\"}} {:.6}\n",
                micros.load(Ordering::Relaxed) as f64 / 1e6
            ));
        }
        let (gaps, skipped) = positions.gaps();
        text.push_str("# TYPE datarun_ingest_offset_gaps_total counter\n");
        text.push_str(&format!("datarun_ingest_offset_gaps_total {gaps}\n"));
        text.push_str("# TYPE datarun_ingest_offsets_skipped_total counter\n");
        text.push_str(&format!("datarun_ingest_offsets_skipped_total {skipped}\n"));
        text
    });
    let signer = Arc::new(hub_signer(config)?);
    store
        .register_hub_key(signer.key_id(), signer.public_key())
        .await
        .context("registering the hub's signing key")?;
    let state = ApiState {
        store: store.clone(),
        metrics,
        records_topic_prefix: kafka.records_topic(""),
        signer,
        quotas: Arc::new(datarun_api::quotas::Quotas::new(config.quota_settings())),
    };
    let http_shutdown = shutdown_signal(&receiver);
    tasks.push(tokio::spawn(async move {
        if let Err(error) = datarun_api::serve(listener, state, http_shutdown).await {
            tracing::error!(%error, "HTTP server stopped");
        }
    }));
    tracing::info!(%http_addr, "hub started");
    Ok(Running {
        http_addr,
        store,
        ingest_stats,
        shutdown,
        tasks,
    })
}

impl Running {
    /// Stops accepting work, lets in-flight work finish and commits consumed offsets.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hubs sharing a data directory start at once on a fresh one: each gets the one
    /// key that was linked into place; none fails because another created it first.
    #[test]
    fn hubs_starting_together_share_one_new_signing_key() {
        let dir = std::env::temp_dir().join(format!(
            "datarun_hubkey_{}_{}",
            datarun_store::now_millis(),
            std::process::id()
        ));
        let mut config =
            Config::load(Some(std::path::Path::new("/dev/null")), std::iter::empty()).unwrap();
        config.hub.data_dir = dir.clone();
        let start = std::sync::Arc::new(std::sync::Barrier::new(8));
        let hubs: Vec<_> = (0..8)
            .map(|_| {
                let (config, start) = (config.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    hub_signer(&config).map(|signer| *signer.public_key())
                })
            })
            .collect();
        let keys: Vec<[u8; 32]> = hubs
            .into_iter()
            .map(|hub| hub.join().unwrap().expect("every hub starts"))
            .collect();
        assert!(keys.iter().all(|key| key == &keys[0]), "one key for all");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
