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
    consumer: StreamConsumer,
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
            .create()?;
        let topics: Vec<String> = record_types
            .iter()
            .map(|t| settings.records_topic(t))
            .collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self { consumer })
    }

    /// Waits for the next message.
    pub async fn next(&self) -> Result<IncomingRecord> {
        let message = self.consumer.recv().await?;
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
        let record = wire::decode_record(&headers, payload.clone());
        Ok(IncomingRecord {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload,
            headers,
            record,
        })
    }

    /// Marks a message done: its offset will be committed. Call only after the
    /// record is durably handled (stored, or dead-lettered and audited).
    pub fn acknowledge(&self, incoming: &IncomingRecord) -> Result<()> {
        match self
            .consumer
            .store_offset(&incoming.topic, incoming.partition, incoming.offset)
        {
            Ok(()) => Ok(()),
            // The partition moved to another instance during a rebalance: it will
            // redeliver the message, and storing is idempotent.
            Err(rdkafka::error::KafkaError::StoreOffset(RDKafkaErrorCode::State)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Commits stored offsets now (on shutdown).
    pub fn commit_now(&self) -> Result<()> {
        match self
            .consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        {
            Ok(())
            | Err(rdkafka::error::KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// Publishes rejected records to the dead-letter topic: the original key, value and
/// headers, plus `datarun-reject-reason`, `-field`, `-message` and the source position.
#[derive(Clone)]
pub struct DeadLetterPublisher {
    producer: FutureProducer,
    topic: String,
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

    pub async fn publish(&self, incoming: &IncomingRecord, rejection: &Rejection) -> Result<()> {
        let mut headers = OwnedHeaders::new_with_capacity(incoming.headers.len() + 6);
        for (key, value) in &incoming.headers {
            headers = headers.insert(rdkafka::message::Header {
                key,
                value: Some(value),
            });
        }
        let offset = incoming.offset.to_string();
        let partition = incoming.partition.to_string();
        let extra = [
            (wire::REJECT_REASON, rejection.reason.code()),
            (wire::REJECT_FIELD, rejection.field.as_deref().unwrap_or("")),
            (wire::REJECT_MESSAGE, rejection.message.as_str()),
            (wire::SOURCE_TOPIC, incoming.topic.as_str()),
            (wire::SOURCE_PARTITION, partition.as_str()),
            (wire::SOURCE_OFFSET, offset.as_str()),
        ];
        for (key, value) in extra {
            headers = headers.insert(rdkafka::message::Header {
                key,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::to(&self.topic)
            .payload(&incoming.payload)
            .headers(headers);
        if let Some(key) = &incoming.key {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| KafkaError::Client(error))?;
        Ok(())
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
    let consumer = IngestConsumer { consumer };
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(wait, consumer.next()).await {
            Ok(Ok(message)) => messages.push(message),
            Ok(Err(error)) => return Err(error),
            Err(_) => return Ok(messages),
        }
    }
}
