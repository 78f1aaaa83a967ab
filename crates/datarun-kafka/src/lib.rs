//! Kafka through `rdkafka`: the only crate that talks to Kafka. It owns the topic
//! names, the record wire format (envelope in headers, Avro datum as value), the
//! idempotent publisher, the ingest consumer whose offsets are stored only when the
//! caller acknowledges, the dead-letter publisher, and brokers for tests and the demo
//! (librdkafka's in-process mock cluster and a `tansu` broker process).

pub mod broker;
pub mod wire;

use datarun_domain::{Rejection, SignedRecord};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {message}")]
    CreateTopic { topic: String, message: String },
    #[error("broker process: {0}")]
    Broker(String),
}

pub type Result<T, E = KafkaError> = std::result::Result<T, E>;

/// Where the Kafka cluster is and how this hub names its topics.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    /// Prepended to every topic name, so several hubs (or tests) share one cluster.
    pub topic_prefix: String,
    /// Extra librdkafka properties (security settings and the like).
    pub properties: BTreeMap<String, String>,
}

impl KafkaSettings {
    pub fn new(bootstrap_servers: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            topic_prefix: topic_prefix.into(),
            properties: BTreeMap::new(),
        }
    }

    /// The topic a record type is published to.
    pub fn records_topic(&self, record_type: &str) -> String {
        format!("{}records.{record_type}", self.topic_prefix)
    }

    /// Where rejected records go, with their reason code in headers.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}records.dead-letter", self.topic_prefix)
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        config.set("log_level", "4");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// Creates the topics that do not exist yet.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[String],
    partitions: i32,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = settings.client_config().create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::CreateTopic {
                    topic,
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Publishes signed records with an idempotent producer (`acks=all`): a record the
/// broker acknowledged is durable, and retries never duplicate it within a session.
#[derive(Clone)]
pub struct RecordPublisher {
    producer: FutureProducer,
    settings: KafkaSettings,
}

impl RecordPublisher {
    pub fn new(settings: &KafkaSettings) -> Result<Self> {
        let producer = settings
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self {
            producer,
            settings: settings.clone(),
        })
    }

    /// Sends one record and waits for the broker's acknowledgement.
    pub async fn publish(&self, record: &SignedRecord) -> Result<(i32, i64)> {
        let topic = self
            .settings
            .records_topic(record.envelope.record_type.as_str());
        let headers = wire::envelope_headers(record);
        let delivery = self
            .producer
            .send(
                FutureRecord::to(&topic)
                    .key(record.envelope.subject.as_bytes())
                    .payload(&record.payload)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(error, _)| KafkaError::Client(error))?;
        Ok((delivery.partition, delivery.offset))
    }

    /// Sends many records concurrently and waits for every acknowledgement, in order;
    /// returns where the broker put each one (partition, offset).
    pub async fn publish_all(&self, records: &[SignedRecord]) -> Result<Vec<(i32, i64)>> {
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            let topic = self
                .settings
                .records_topic(record.envelope.record_type.as_str());
            let future = self.producer.send_result(
                FutureRecord::to(&topic)
                    .key(record.envelope.subject.as_bytes())
                    .payload(&record.payload)
                    .headers(wire::envelope_headers(record)),
            );
            match future {
                Ok(delivery) => pending.push(delivery),
                Err((error, _)) => return Err(KafkaError::Client(error)),
            }
        }
        let mut placed = Vec::with_capacity(pending.len());
        for delivery in pending {
            match delivery.await {
                Ok(Ok(delivery)) => placed.push((delivery.partition, delivery.offset)),
                Ok(Err((error, _))) => return Err(KafkaError::Client(error)),
                Err(_) => return Err(KafkaError::Broker("producer dropped a delivery".into())),
            }
        }
        Ok(placed)
    }
}

/// How long reading a topic's partitions and end offsets may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(20);

/// The next offset of every partition of `topic` (its high watermark): where the next
/// message published to it will land.
pub async fn end_offsets(settings: &KafkaSettings, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let config = settings.client_config();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), METADATA_TIMEOUT)?;
        let mut ends = BTreeMap::new();
        for found in metadata.topics() {
            if let Some(error) = found.error() {
                return Err(KafkaError::Broker(format!(
                    "topic {topic}: {}",
                    RDKafkaErrorCode::from(error)
                )));
            }
            for partition in found.partitions() {
                let (_, high) =
                    consumer.fetch_watermarks(&topic, partition.id(), METADATA_TIMEOUT)?;
                ends.insert(partition.id(), high);
            }
        }
        Ok(ends)
    })
    .await
    .map_err(|error| KafkaError::Broker(format!("reading end offsets: {error}")))?
}

/// How long a scan keeps reading once it has reached the ends the broker reported: a
/// broker whose high watermark lags its log (tansu 0.6's in-memory engine reports
/// fewer) still delivers the rest within it.
const SCAN_SETTLE: Duration = Duration::from_millis(1_000);

/// What a topic holds past given offsets: the record id of every committed message from
/// `from[partition]` (0 for a partition not named) to each partition's end, and the
/// offset past the last message read in each partition. A publisher that crashed
/// between the broker's acknowledgement and its own checkpoint finds here what it must
/// not send again. The scan reads until it has passed both the ends the broker reports
/// and `from`, and then nothing more arrived for a second; it gives up after `limit`,
/// as an error rather than a partial answer.
pub async fn record_ids_since(
    settings: &KafkaSettings,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    limit: Duration,
) -> Result<(std::collections::HashSet<String>, BTreeMap<i32, i64>)> {
    let ends = end_offsets(settings, topic).await?;
    let mut config = settings.client_config();
    config
        .set("group.id", "datarun-scan")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
    let topic = topic.to_owned();
    let from = from.clone();
    tokio::task::spawn_blocking(move || {
        let mut ids = std::collections::HashSet::new();
        let mut assignment = rdkafka::TopicPartitionList::new();
        // Where each partition counts as read to its end, and where it was read to.
        let mut targets: HashMap<i32, i64> = HashMap::new();
        let mut read_to: BTreeMap<i32, i64> = BTreeMap::new();
        for (&partition, &end) in &ends {
            let start = from.get(&partition).copied().unwrap_or(0).max(0);
            assignment.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(start))?;
            read_to.insert(partition, start);
            if start < end {
                targets.insert(partition, end);
            }
        }
        if read_to.is_empty() {
            return Ok((ids, read_to));
        }
        let consumer: BaseConsumer = config.create()?;
        consumer.assign(&assignment)?;
        let deadline = std::time::Instant::now() + limit;
        let mut last_message = std::time::Instant::now();
        loop {
            if std::time::Instant::now() > deadline {
                return Err(KafkaError::Broker(format!(
                    "reading {topic} to its end took longer than {limit:?}"
                )));
            }
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                if targets.is_empty() && last_message.elapsed() >= SCAN_SETTLE {
                    return Ok((ids, read_to));
                }
                continue;
            };
            let message = message?;
            last_message = std::time::Instant::now();
            let partition = message.partition();
            read_to.insert(partition, message.offset() + 1);
            if let Some(headers) = message.headers() {
                for header in headers.iter() {
                    if header.key == wire::RECORD_ID {
                        if let Some(value) = header.value {
                            ids.insert(String::from_utf8_lossy(value).into_owned());
                        }
                    }
                }
            }
            if targets
                .get(&partition)
                .is_some_and(|&end| message.offset() + 1 >= end)
            {
                targets.remove(&partition);
            }
        }
    })
    .await
    .map_err(|error| KafkaError::Broker(format!("reading {error}")))?
}

/// A message read from a records topic: its position and the record, or why its
/// envelope could not be read.
#[derive(Debug, Clone)]
pub struct IncomingRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub record: std::result::Result<SignedRecord, Rejection>,
}

impl IncomingRecord {
    /// The message's size as consumed: key, value and headers.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.payload.len()
            + self
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    }
}

/// Consumes records topics in a consumer group. Offsets are stored only by
/// [`IngestConsumer::acknowledge`] (after the database commit) and committed from there.
///
/// It watches the offsets it is given: each partition's first message after an
/// assignment is logged with its offset, and a later message that skips offsets is a
/// warning and counted (`offset_gaps`): records topics are written without transactions
/// or compaction, so a gap means the broker did not deliver messages it holds.
pub struct IngestConsumer {
    /// Always `Some` until dropped (`Drop` closes it on a thread of its own).
    consumer: Option<StreamConsumer<IngestContext>>,
    positions: Arc<Positions>,
}

/// The next offset expected per partition since its assignment, and the gaps seen.
#[derive(Debug, Default)]
pub struct Positions {
    /// By topic, then partition.
    next: Mutex<HashMap<String, HashMap<i32, i64>>>,
    gaps: std::sync::atomic::AtomicU64,
    skipped: std::sync::atomic::AtomicU64,
}

impl Positions {
    /// Gaps in partitions' offsets seen, and the messages they skipped over.
    pub fn gaps(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.gaps.load(Relaxed), self.skipped.load(Relaxed))
    }

    fn next(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<i32, i64>>> {
        self.next.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new assignment: each partition is expected to start at its committed offset,
    /// where one is known.
    fn assigned(&self, partitions: &rdkafka::TopicPartitionList) {
        let mut next = self.next();
        for element in partitions.elements() {
            let topic = next.entry(element.topic().to_owned()).or_default();
            match element.offset() {
                rdkafka::Offset::Offset(offset) => topic.insert(element.partition(), offset),
                _ => topic.remove(&element.partition()),
            };
        }
    }

    fn revoked(&self, partitions: &rdkafka::TopicPartitionList) {
        let mut next = self.next();
        for element in partitions.elements() {
            if let Some(topic) = next.get_mut(element.topic()) {
                topic.remove(&element.partition());
            }
        }
    }

    fn observe(&self, topic: &str, partition: i32, offset: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut next = self.next();
        // A partition seen before (every message but its first) allocates nothing.
        let expected = match next.get_mut(topic) {
            Some(partitions) => partitions.insert(partition, offset + 1),
            None => next
                .entry(topic.to_owned())
                .or_default()
                .insert(partition, offset + 1),
        };
        match expected {
            None => tracing::info!(topic, partition, offset, "consuming partition from offset"),
            Some(expected) if offset > expected => {
                self.gaps.fetch_add(1, Relaxed);
                self.skipped.fetch_add((offset - expected) as u64, Relaxed);
                tracing::warn!(
                    topic,
                    partition,
                    expected,
                    offset,
                    "the broker skipped offsets of a partition; those messages were not delivered"
                );
            }
            Some(_) => {}
        }
    }
}

/// Assigns partitions at the offsets it has checked, and logs the group's decisions
/// about this consumer: assignments, revocations, failed commits.
struct IngestContext {
    positions: Arc<Positions>,
}

impl ClientContext for IngestContext {}

fn partition_list(list: &rdkafka::TopicPartitionList) -> String {
    list.elements()
        .iter()
        .map(|e| format!("{}[{}]@{:?}", e.topic(), e.partition(), e.offset()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How long an assignment waits for the group's committed offsets before it leaves
/// them to librdkafka (which then starts without the gap check).
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

impl ConsumerContext for IngestContext {
    /// The default eager rebalance, except that an assignment first reads the group's
    /// committed offsets and assigns exactly those: the consumer then knows where each
    /// partition must start, and a broker that answers from further on is caught.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        partitions: &mut rdkafka::TopicPartitionList,
    ) {
        use rdkafka::consumer::RebalanceProtocol;
        use rdkafka::types::RDKafkaRespErr;
        // `partition.assignment.strategy` may be set to a cooperative one in `[kafka]`.
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assignment = match consumer
                    .committed_offsets(partitions.clone(), COMMITTED_TIMEOUT)
                {
                    Ok(committed) => committed,
                    Err(error) => {
                        tracing::warn!(%error, "reading the committed offsets failed; assigning without them");
                        partitions.clone()
                    }
                };
                self.positions.assigned(&assignment);
                let assigned = if cooperative {
                    consumer.incremental_assign(&assignment)
                } else {
                    consumer.assign(&assignment)
                };
                if let Err(error) = assigned {
                    tracing::error!(%error, "assigning partitions failed");
                }
                tracing::info!(partitions = %partition_list(&assignment), "partitions assigned");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.positions.revoked(partitions);
                let revoked = if cooperative {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                };
                if let Err(error) = revoked {
                    tracing::error!(%error, "revoking partitions failed");
                }
                tracing::info!(partitions = %partition_list(partitions), "partitions revoked");
            }
            other => {
                tracing::warn!(error = ?other, "consumer group rebalance failed");
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "dropping the assignment failed");
                }
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &rdkafka::TopicPartitionList,
    ) {
        match result {
            Ok(()) => tracing::debug!(offsets = %partition_list(offsets), "offsets committed"),
            Err(rdkafka::error::KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(%error, offsets = %partition_list(offsets), "offset commit failed; those records may be redelivered")
            }
        }
    }
}

impl IngestConsumer {
    /// A consumer in `group_id`; with `instance_id`, a static member of it (KIP-345):
    /// the broker keeps its partitions for it while it restarts (up to the session
    /// timeout), and hands them back at once when it rejoins, with no rebalance of the
    /// group and no wait for a crashed predecessor's session to expire.
    pub fn new(
        settings: &KafkaSettings,
        group_id: &str,
        instance_id: Option<&str>,
        record_types: &[String],
    ) -> Result<Self> {
        let positions = Arc::new(Positions::default());
        let mut config = settings.client_config();
        if let Some(instance_id) = instance_id {
            config.set("group.instance.id", instance_id);
        }
        let consumer: StreamConsumer<IngestContext> = config
            .set("group.id", group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "500")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("topic.metadata.refresh.interval.ms", "2000")
            // A crashed instance's partitions move to the others within 10 s (the
            // default, 45 s, leaves them unconsumed that long).
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000")
            .create_with_context(IngestContext {
                positions: positions.clone(),
            })?;
        let topics: Vec<String> = record_types
            .iter()
            .map(|t| settings.records_topic(t))
            .collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self {
            consumer: Some(consumer),
            positions,
        })
    }

    /// The offsets this consumer has seen (gaps in particular).
    pub fn positions(&self) -> Arc<Positions> {
        self.positions.clone()
    }

    fn consumer(&self) -> Result<&StreamConsumer<IngestContext>> {
        self.consumer
            .as_ref()
            .ok_or_else(|| KafkaError::Broker("the consumer is closed".into()))
    }

    /// Waits for the next message.
    pub async fn next(&self) -> Result<IncomingRecord> {
        let message = self.consumer()?.recv().await?;
        let headers: Vec<(String, Vec<u8>)> = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let payload = message.payload().map(<[u8]>::to_vec).unwrap_or_default();
        let key = message.key().map(<[u8]>::to_vec);
        let record = wire::decode_record(key.as_deref(), &headers, &payload);
        self.positions
            .observe(message.topic(), message.partition(), message.offset());
        Ok(IncomingRecord {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key,
            payload,
            headers,
            record,
        })
    }

    /// Marks every message of `handled` done: their offsets will be committed. Call
    /// only after all of them are durably handled (stored, or dead-lettered and
    /// audited). Stores one offset per partition, the highest, which covers the others.
    pub fn acknowledge(&self, handled: &[IncomingRecord]) -> Result<()> {
        let mut highest: Vec<(&str, i32, i64)> = Vec::new();
        for incoming in handled {
            match highest.iter_mut().find(|(topic, partition, _)| {
                *partition == incoming.partition && *topic == incoming.topic
            }) {
                Some(entry) => entry.2 = entry.2.max(incoming.offset),
                None => highest.push((&incoming.topic, incoming.partition, incoming.offset)),
            }
        }
        let consumer = self.consumer()?;
        for (topic, partition, offset) in highest {
            match consumer.store_offset(topic, partition, offset) {
                Ok(()) => {}
                // The partition moved to another instance during a rebalance: it will
                // redeliver the messages, and storing is idempotent.
                Err(rdkafka::error::KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Sends the stored offsets' commit now (on shutdown) without waiting for the broker:
    /// a broker that is down must not keep the hub from stopping (a synchronous commit
    /// waits without bound). An offset whose commit is lost is redelivered, harmlessly.
    pub fn commit_now(&self) -> Result<()> {
        match self
            .consumer()?
            .commit_consumer_state(rdkafka::consumer::CommitMode::Async)
        {
            Ok(())
            | Err(rdkafka::error::KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// Publishes rejected records to the dead-letter topic: the original key, value and
/// headers, plus `datarun-reject-reason`, `-field`, `-message` and the source position.
/// An original too large to forward (or that the broker refuses for its size) goes as
/// a digested copy instead: value and oversized headers replaced by their SHA-256
/// digests, marked `datarun-original: digested`. A rejection is never stuck.
///
/// Its producer is made when the first dead letter is sent: a hub that rejects nothing
/// keeps no producer, and so no polling thread (rdkafka's polls the producer in a loop
/// of 100 ms waits whose last sub-millisecond it spends spinning: about 0.5 % of a core
/// on an idle hub).
#[derive(Clone)]
pub struct DeadLetterPublisher {
    config: ClientConfig,
    producer: Arc<std::sync::OnceLock<FutureProducer>>,
    topic: String,
}

/// Dead letters larger than this are sent digested: well under librdkafka's default
/// `message.max.bytes` (1,000,000) and a broker's usual topic limit.
pub const DEAD_LETTER_INTACT_MAX_BYTES: usize = 900 * 1024;

/// How a dead letter carries the original message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterForm {
    Intact,
    Digested,
}

impl DeadLetterForm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Intact => "intact",
            Self::Digested => "digested",
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// True for the errors a smaller message would not get.
fn is_size_error(error: &rdkafka::error::KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

impl DeadLetterPublisher {
    pub fn new(settings: &KafkaSettings) -> Result<Self> {
        let mut config = settings.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000");
        Ok(Self {
            config,
            producer: Arc::default(),
            topic: settings.dead_letter_topic(),
        })
    }

    /// The producer, made on first use (by whichever caller gets there first).
    fn producer(&self) -> std::result::Result<&FutureProducer, rdkafka::error::KafkaError> {
        if let Some(producer) = self.producer.get() {
            return Ok(producer);
        }
        let made: FutureProducer = self.config.create()?;
        Ok(self.producer.get_or_init(|| made))
    }

    /// Publishes the dead letter of `incoming` and returns the form it went in.
    pub async fn publish(
        &self,
        incoming: &IncomingRecord,
        rejection: &Rejection,
    ) -> Result<DeadLetterForm> {
        let size = incoming.payload.len()
            + incoming.key.as_ref().map_or(0, Vec::len)
            + incoming
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        let too_large = size > DEAD_LETTER_INTACT_MAX_BYTES
            || rejection.reason == datarun_domain::RejectReason::Oversized;
        if !too_large {
            match self.send(incoming, rejection, DeadLetterForm::Intact).await {
                Ok(()) => return Ok(DeadLetterForm::Intact),
                Err(error) if is_size_error(&error) => {
                    tracing::warn!(%error, topic = %incoming.topic, partition = incoming.partition,
                        offset = incoming.offset, "the broker refused the intact dead letter; sending it digested");
                }
                Err(error) => return Err(error.into()),
            }
        }
        self.send(incoming, rejection, DeadLetterForm::Digested)
            .await?;
        Ok(DeadLetterForm::Digested)
    }

    async fn send(
        &self,
        incoming: &IncomingRecord,
        rejection: &Rejection,
        form: DeadLetterForm,
    ) -> std::result::Result<(), rdkafka::error::KafkaError> {
        use datarun_domain::limits::{
            printable_name, MAX_ENVELOPE_HEADER_BYTES, MAX_HEADERS, MAX_HEADER_NAME_BYTES,
            MAX_KEY_BYTES,
        };
        let mut pairs: Vec<(String, Vec<u8>)> = Vec::with_capacity(incoming.headers.len() + 12);
        let mut key = incoming.key.as_deref();
        let mut payload = incoming.payload.as_slice();
        match form {
            DeadLetterForm::Intact => pairs.extend(incoming.headers.iter().cloned()),
            DeadLetterForm::Digested => {
                for (name, value) in incoming.headers.iter().take(MAX_HEADERS) {
                    let small = name.len() <= MAX_HEADER_NAME_BYTES
                        && value.len() <= MAX_ENVELOPE_HEADER_BYTES;
                    if small {
                        pairs.push((name.clone(), value.clone()));
                    } else {
                        pairs.push((
                            printable_name(name.as_bytes()),
                            format!("sha256:{} ({} bytes)", sha256_hex(value), value.len())
                                .into_bytes(),
                        ));
                    }
                }
                if let Some(original) = key.filter(|k| k.len() > MAX_KEY_BYTES) {
                    pairs.push((
                        "datarun-original-key-sha256".into(),
                        sha256_hex(original).into_bytes(),
                    ));
                    key = None;
                }
                pairs.push((
                    wire::ORIGINAL_VALUE_SHA256.into(),
                    sha256_hex(payload).into_bytes(),
                ));
                pairs.push((
                    wire::ORIGINAL_VALUE_BYTES.into(),
                    payload.len().to_string().into_bytes(),
                ));
                pairs.push((
                    "datarun-original-header-count".into(),
                    incoming.headers.len().to_string().into_bytes(),
                ));
                payload = &[];
            }
        }
        let extra = [
            (wire::REJECT_REASON, rejection.reason.code().to_owned()),
            (
                wire::REJECT_FIELD,
                rejection.field.clone().unwrap_or_default(),
            ),
            (wire::REJECT_MESSAGE, rejection.message.clone()),
            (wire::SOURCE_TOPIC, incoming.topic.clone()),
            (wire::SOURCE_PARTITION, incoming.partition.to_string()),
            (wire::SOURCE_OFFSET, incoming.offset.to_string()),
            (wire::ORIGINAL, form.as_str().to_owned()),
        ];
        pairs.extend(
            extra
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.into_bytes())),
        );
        let headers = pairs.iter().fold(
            OwnedHeaders::new_with_capacity(pairs.len()),
            |headers, (name, value)| {
                headers.insert(rdkafka::message::Header {
                    key: name,
                    value: Some(value),
                })
            },
        );
        let mut record = FutureRecord::to(&self.topic)
            .payload(payload)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer()?
            .send(record, Duration::from_secs(30))
            .await
            .map(drop)
            .map_err(|(error, _)| error)
    }
}

/// Reads a whole topic from the beginning, until nothing arrives for `wait`.
pub async fn read_topic(
    settings: &KafkaSettings,
    topic: &str,
    wait: Duration,
) -> Result<Vec<IncomingRecord>> {
    // Direct assignment, no consumer group: nothing to join, nothing committed.
    let positions = Arc::new(Positions::default());
    let consumer: StreamConsumer<IngestContext> = settings
        .client_config()
        .set("group.id", "datarun-reader")
        .set("enable.auto.commit", "false")
        .create_with_context(IngestContext {
            positions: positions.clone(),
        })?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        assignment.add_partition_offset(topic, partition.id(), rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let consumer = IngestConsumer {
        consumer: Some(consumer),
        positions,
    };
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(wait, consumer.next()).await {
            Ok(Ok(message)) => messages.push(message),
            Ok(Err(error)) => return Err(error),
            Err(_) => return Ok(messages),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{DeadLetterPublisher, IncomingRecord, KafkaSettings, Positions};
    use datarun_domain::{RejectReason, Rejection};
    use rdkafka::{Offset, TopicPartitionList};

    fn assignment(offsets: &[(i32, Offset)]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (partition, offset) in offsets {
            list.add_partition_offset("t", *partition, *offset).unwrap();
        }
        list
    }

    #[test]
    fn a_partition_that_starts_past_its_committed_offset_or_skips_is_a_gap() {
        let positions = Positions::default();
        positions.assigned(&assignment(&[
            (0, Offset::Offset(100)),
            (1, Offset::Invalid),
        ]));
        // Partition 1 has no committed offset: wherever it starts is fine.
        positions.observe("t", 1, 7);
        positions.observe("t", 0, 100);
        positions.observe("t", 0, 101);
        assert_eq!(positions.gaps(), (0, 0));
        // A redelivery going back is not a gap; skipping 102..=149 is.
        positions.observe("t", 0, 90);
        positions.observe("t", 0, 91);
        positions.observe("t", 0, 92);
        positions.observe("t", 0, 150);
        assert_eq!(positions.gaps(), (1, 57));
        positions.observe("t", 1, 8);
        assert_eq!(positions.gaps(), (1, 57));

        // After a restart the broker answers from 126 for a committed 100 (tansu's
        // in-memory engine resuming inside a producer batch).
        let restarted = Positions::default();
        restarted.assigned(&assignment(&[(0, Offset::Offset(100))]));
        restarted.observe("t", 0, 126);
        assert_eq!(restarted.gaps(), (1, 26));

        // A revoked partition assigned again without a committed offset starts afresh.
        restarted.revoked(&assignment(&[(0, Offset::Invalid)]));
        restarted.assigned(&assignment(&[(0, Offset::Invalid)]));
        restarted.observe("t", 0, 500);
        assert_eq!(restarted.gaps(), (1, 26));
    }

    /// A hub that rejects nothing keeps no dead-letter producer (and so no polling
    /// thread); its first rejection makes one, and the dead letter arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_dead_letter_producer_is_made_by_the_first_dead_letter() {
        let kafka = crate::broker::MockKafka::start().unwrap();
        let settings = KafkaSettings::new(kafka.bootstrap_servers(), "lazy.");
        kafka
            .create_topic(&settings.dead_letter_topic(), 1)
            .unwrap();
        let publisher = DeadLetterPublisher::new(&settings).unwrap();
        assert!(publisher.producer.get().is_none());
        let incoming = IncomingRecord {
            topic: settings.records_topic("health.birth_certificate"),
            partition: 0,
            offset: 7,
            key: Some(b"k".to_vec()),
            payload: b"value".to_vec(),
            headers: vec![("datarun-record-id".into(), b"health-r1".to_vec())],
            record: Err(Rejection::at(RejectReason::EnvelopeInvalid, "x", "test")),
        };
        let rejection = Rejection::at(RejectReason::SignatureInvalid, "sig", "does not verify");
        publisher
            .clone()
            .publish(&incoming, &rejection)
            .await
            .unwrap();
        assert!(
            publisher.producer.get().is_some(),
            "clones share the producer"
        );
        let letters = super::read_topic(
            &settings,
            &settings.dead_letter_topic(),
            std::time::Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].payload, b"value");
        let reason = letters[0]
            .headers
            .iter()
            .find(|(name, _)| name == super::wire::REJECT_REASON)
            .map(|(_, value)| value.as_slice());
        assert_eq!(
            reason,
            Some(RejectReason::SignatureInvalid.code().as_bytes())
        );
    }
}
