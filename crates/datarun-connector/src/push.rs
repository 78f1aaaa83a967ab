//! The runtime half of an HTTP push source: rows the department's system POSTs (the
//! endpoint is `datarun_api::push`) are mapped, signed and published, and answered only
//! once the broker has acknowledged every record they became (`acks=all`).
//!
//! A retried row is the same record (same record id), and while this process runs it
//! is sent to the broker once: a retry waits for the delivery already under way, or
//! is answered from the one that completed. After a connector restart a retry may put
//! the record on the topic a second time; the hub stores it once (same record id, same
//! content).

use crate::keys::KeyRing;
use crate::{Connector, ConnectorError, Result, RunReport};
use datarun_api::push::{PushAnswer, PushTarget};
use datarun_domain::SignedRecord;
use datarun_kafka::{KafkaSettings, RecordPublisher};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Completed deliveries remembered, so a late retry is answered without a resend.
const REMEMBERED: usize = 100_000;

#[derive(Debug, Clone)]
pub struct PushSettings {
    pub listen: String,
    pub ack_timeout: Duration,
    /// The bearer token callers must present, if any.
    pub token: Option<String>,
}

/// A delivery's outcome: where the broker put the record, or why it did not.
type Outcome = Option<Result<(i32, i64), String>>;

#[derive(Default)]
struct Deliveries {
    by_id: HashMap<String, watch::Receiver<Outcome>>,
    order: VecDeque<String>,
}

struct Push {
    connector: Connector,
    keys: Mutex<KeyRing>,
    publisher: RecordPublisher,
    ack_timeout: Duration,
    deliveries: Mutex<Deliveries>,
}

/// Serves the connector's push endpoint until the future is dropped.
pub(crate) async fn serve(
    connector: &Connector,
    kafka: &KafkaSettings,
    keys: KeyRing,
    settings: PushSettings,
) -> Result<RunReport> {
    let io = |source| ConnectorError::Io {
        path: settings.listen.clone().into(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(io)?;
    let address = listener.local_addr().map_err(io)?;
    tracing::info!(connector = %connector.name(), %address, "push endpoint listening");
    let push = Arc::new(Push {
        connector: connector.clone(),
        keys: Mutex::new(keys),
        publisher: RecordPublisher::new(kafka)?,
        ack_timeout: settings.ack_timeout,
        deliveries: Mutex::default(),
    });
    datarun_api::push::serve(listener, push, settings.token.clone())
        .await
        .map_err(io)?;
    Ok(RunReport::default())
}

impl PushTarget for Push {
    fn accept(
        &self,
        rows: Vec<Map<String, Value>>,
    ) -> Pin<Box<dyn Future<Output = PushAnswer> + Send + '_>> {
        Box::pin(self.accept_rows(rows))
    }
}

impl Push {
    async fn accept_rows(&self, rows: Vec<Map<String, Value>>) -> PushAnswer {
        let signer = match self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current()
        {
            Ok(signer) => signer,
            Err(error) => {
                tracing::error!(%error, "the signing key could not be loaded");
                return PushAnswer::Unavailable {
                    code: "signing_key_unavailable",
                    message: "the connector cannot load its signing key".into(),
                };
            }
        };
        let mut records = Vec::with_capacity(rows.len());
        for (row, object) in rows.into_iter().enumerate() {
            let signed = crate::columns_as_text(object)
                .and_then(|columns| self.connector.sign_row_with(&columns, &signer));
            match signed {
                Ok(record) => records.push(record),
                Err(message) => return PushAnswer::RowInvalid { row, message },
            }
        }
        let waits: Vec<(String, watch::Receiver<Outcome>)> = records
            .into_iter()
            .map(|record| {
                let id = record.envelope.record_id.to_string();
                let receiver = self.deliver(record);
                (id, receiver)
            })
            .collect();
        let acknowledged = tokio::time::timeout(self.ack_timeout, async {
            let mut placed = Vec::with_capacity(waits.len());
            for (id, mut receiver) in waits {
                let outcome = match receiver.wait_for(Option::is_some).await {
                    Ok(outcome) => outcome.clone(),
                    Err(_) => Some(Err("the delivery was dropped".into())),
                };
                match outcome {
                    Some(Ok((partition, offset))) => placed.push(json!({
                        "record_id": id, "partition": partition, "offset": offset
                    })),
                    Some(Err(message)) => return Err((id, message)),
                    None => return Err((id, "no outcome".into())),
                }
            }
            Ok(placed)
        })
        .await;
        let message = match acknowledged {
            Ok(Ok(placed)) => return PushAnswer::Acknowledged(placed),
            Ok(Err((id, message))) => {
                tracing::warn!(record_id = %id, %message, "the broker did not take a pushed record");
                format!("record {id}: the broker did not acknowledge it ({message}); send the request again")
            }
            Err(_) => format!(
                "not acknowledged by the broker within {:?}; send the same request again",
                self.ack_timeout
            ),
        };
        PushAnswer::Unavailable {
            code: "broker_unavailable",
            message,
        }
    }

    /// The delivery of `record`: the one already under way or done for its record id,
    /// or a new one (also when the last attempt failed).
    fn deliver(&self, record: SignedRecord) -> watch::Receiver<Outcome> {
        let id = record.envelope.record_id.to_string();
        let mut deliveries = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(receiver) = deliveries.by_id.get(&id) {
            if !matches!(*receiver.borrow(), Some(Err(_))) {
                return receiver.clone();
            }
        }
        let (sender, receiver) = watch::channel(None);
        if deliveries
            .by_id
            .insert(id.clone(), receiver.clone())
            .is_none()
        {
            deliveries.order.push_back(id);
        }
        while deliveries.order.len() > REMEMBERED {
            let Some(oldest) = deliveries.order.pop_front() else {
                break;
            };
            let done = deliveries
                .by_id
                .get(&oldest)
                .is_some_and(|receiver| receiver.borrow().is_some());
            if done {
                deliveries.by_id.remove(&oldest);
            } else {
                // Still under way: keep it, look again later.
                deliveries.order.push_back(oldest);
                break;
            }
        }
        drop(deliveries);
        let publisher = self.publisher.clone();
        tokio::spawn(async move {
            let outcome = publisher
                .publish(&record)
                .await
                .map_err(|error| error.to_string());
            let _ = sender.send(Some(outcome));
        });
        receiver
    }
}
