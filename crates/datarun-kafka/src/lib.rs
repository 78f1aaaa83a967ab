//! Kafka through `rdkafka`: the only crate that talks to Kafka. It owns the topic
//! names, the record wire format (envelope in headers, Avro datum as value), the
//! idempotent publisher, the ingest consumer whose offsets are stored only when the
//! caller acknowledges, the dead-letter publisher, and brokers for tests and the demo
//! (librdkafka's in-process mock cluster and a `tansu` broker process).

pub mod broker;
pub mod wire;

use datarun_domain::{Rejection, SignedRecord};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
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

    /// Sends many records concurrently and waits for every acknowledgement, in order.
    pub async fn publish_all(&self, records: &[SignedRecord]) -> Result<()> {
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
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(KafkaError::Client(error)),
                Err(_) => return Err(KafkaError::Broker("producer dropped a delivery".into())),
            }
        }
        Ok(())
    }
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

/// Consumes records topics in a consumer group. Offsets are stored only by
/// [`IngestConsumer::acknowledge`] (after the database commit) and committed from there.
pub struct IngestConsumer {
    /// Always `Some` until dropped (`Drop` closes it on a thread of its own).
    consumer: Option<StreamConsumer>,
}

/// How long dropping a consumer waits for its close (final commit, leaving the group).
const CONSUMER_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

impl Drop for IngestConsumer {
    /// Closes the consumer on a thread of its own and waits at most
    /// `CONSUMER_CLOSE_TIMEOUT`: librdkafka's close waits without bound for a group
    /// coordinator, and a broker that is down must not keep the hub from stopping.
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let (closed, wait) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                drop(consumer);
                let _ = closed.send(());
            });
        if spawned.is_ok() && wait.recv_timeout(CONSUMER_CLOSE_TIMEOUT).is_err() {
            tracing::warn!(
                "the Kafka consumer did not close within {CONSUMER_CLOSE_TIMEOUT:?} (broker unreachable?); \
                 uncommitted offsets will be redelivered"
            );
        }
    }
}

impl IngestConsumer {
    pub fn new(settings: &KafkaSettings, group_id: &str, record_types: &[String]) -> Result<Self> {
        let consumer: StreamConsumer = settings
            .client_config()
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
            .create()?;
        let topics: Vec<String> = record_types
            .iter()
            .map(|t| settings.records_topic(t))
            .collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self {
            consumer: Some(consumer),
        })
    }

    fn consumer(&self) -> Result<&StreamConsumer> {
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

    /// Marks a message done: its offset will be committed. Call only after the
    /// record is durably handled (stored, or dead-lettered and audited).
    pub fn acknowledge(&self, incoming: &IncomingRecord) -> Result<()> {
        match self
            .consumer()?
            .store_offset(&incoming.topic, incoming.partition, incoming.offset)
        {
            Ok(()) => Ok(()),
            // The partition moved to another instance during a rebalance: it will
            // redeliver the message, and storing is idempotent.
            Err(rdkafka::error::KafkaError::StoreOffset(RDKafkaErrorCode::State)) => Ok(()),
            Err(error) => Err(error.into()),
        }
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
#[derive(Clone)]
pub struct DeadLetterPublisher {
    producer: FutureProducer,
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
        let producer = settings
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self {
            producer,
            topic: settings.dead_letter_topic(),
        })
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
        self.producer
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
    let consumer: StreamConsumer = settings
        .client_config()
        .set("group.id", "datarun-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        assignment.add_partition_offset(topic, partition.id(), rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let consumer = IngestConsumer {
        consumer: Some(consumer),
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
