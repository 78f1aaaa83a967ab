//! An HTTP push source: the department's system POSTs rows as JSON and is answered
//! only once the broker has acknowledged every record they became (`acks=all`).
//!
//! `POST /records` takes one JSON object or an array of up to [`MAX_ROWS`] objects
//! (columns as the connector's mapping names them; numbers and booleans are read as
//! their text). Every row is mapped and signed first: one bad row refuses the request
//! (422 `row_invalid`, naming the row) and nothing of it is published. Then:
//! - 200 `{"records": [{"record_id", "partition", "offset"}]}` once every record is
//!   acknowledged;
//! - 503 `broker_unavailable` with `Retry-After` when that takes longer than the
//!   source's `ack_timeout_seconds` or the broker refused: the department sends the
//!   same request again.
//!
//! A retried row is the same record (same record id), and while this process runs it
//! is sent to the broker once: a retry waits for the delivery already under way, or
//! is answered from the one that completed. After a connector restart a retry may put
//! the record on the topic a second time; the hub stores it once (same record id, same
//! content).

use crate::keys::KeyRing;
use crate::{Connector, ConnectorError, Result, RunReport};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use datarun_domain::SignedRecord;
use datarun_kafka::{KafkaSettings, RecordPublisher};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Rows one request may carry.
pub const MAX_ROWS: usize = 1_000;
/// The largest request body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
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
    settings: PushSettings,
    deliveries: Mutex<Deliveries>,
}

/// Serves `POST /records` (and `GET /healthz`) until the future is dropped.
pub(crate) async fn serve(
    connector: &Connector,
    kafka: &KafkaSettings,
    keys: KeyRing,
    settings: PushSettings,
) -> Result<RunReport> {
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|source| ConnectorError::Io {
            path: settings.listen.clone().into(),
            source,
        })?;
    let address = listener.local_addr().map_err(|source| ConnectorError::Io {
        path: settings.listen.clone().into(),
        source,
    })?;
    tracing::info!(connector = %connector.name(), %address, "push endpoint listening");
    let state = Arc::new(Push {
        connector: connector.clone(),
        keys: Mutex::new(keys),
        publisher: RecordPublisher::new(kafka)?,
        settings,
        deliveries: Mutex::default(),
    });
    let router = Router::new()
        .route("/records", post(receive))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    axum::serve(listener, router)
        .await
        .map_err(|source| ConnectorError::Io {
            path: address.to_string().into(),
            source,
        })?;
    Ok(RunReport::default())
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn receive(State(push): State<Arc<Push>>, headers: HeaderMap, body: String) -> Response {
    if let Some(token) = &push.settings.token {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        // Digests compared, so the time taken says nothing about the token's bytes.
        let digest = |text: &str| ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let matches =
            presented.is_some_and(|presented| digest(presented).as_ref() == digest(token).as_ref());
        if !matches {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "a bearer token is required".into(),
            );
        }
    }
    let rows = match serde_json::from_str::<Value>(&body) {
        Ok(Value::Object(object)) => vec![object],
        Ok(Value::Array(items)) if items.len() <= MAX_ROWS => {
            let mut rows = Vec::with_capacity(items.len());
            for (index, item) in items.into_iter().enumerate() {
                match item {
                    Value::Object(object) => rows.push(object),
                    _ => {
                        return refuse(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "row_invalid",
                            format!("row {index}: a row is one JSON object"),
                        )
                    }
                }
            }
            rows
        }
        Ok(Value::Array(_)) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_rows",
                format!("at most {MAX_ROWS} rows per request"),
            )
        }
        Ok(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "body_invalid",
                "the body is one JSON object or an array of them".into(),
            )
        }
        Err(error) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "body_invalid",
                format!("not JSON: {error}"),
            )
        }
    };
    let signer = match push
        .keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .current()
    {
        Ok(signer) => signer,
        Err(error) => {
            tracing::error!(%error, "the signing key could not be loaded");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "signing_key_unavailable",
                "the connector cannot load its signing key".into(),
            );
        }
    };
    let mut records = Vec::with_capacity(rows.len());
    for (index, object) in rows.into_iter().enumerate() {
        let signed = crate::columns_as_text(object)
            .and_then(|columns| push.connector.sign_row_with(&columns, &signer));
        match signed {
            Ok(record) => records.push(record),
            Err(message) => {
                return refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "row_invalid",
                    format!("row {index}: {message}"),
                )
            }
        }
    }
    let waits: Vec<(String, watch::Receiver<Outcome>)> = records
        .into_iter()
        .map(|record| {
            let id = record.envelope.record_id.to_string();
            let receiver = push.deliver(record);
            (id, receiver)
        })
        .collect();
    let acknowledged = tokio::time::timeout(push.settings.ack_timeout, async {
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
    let failure = match acknowledged {
        Ok(Ok(placed)) => {
            return (StatusCode::OK, Json(json!({"records": placed}))).into_response()
        }
        Ok(Err((id, message))) => {
            tracing::warn!(record_id = %id, %message, "the broker did not take a pushed record");
            format!("record {id}: the broker did not acknowledge it ({message}); send the request again")
        }
        Err(_) => format!(
            "not acknowledged by the broker within {:?}; send the same request again",
            push.settings.ack_timeout
        ),
    };
    let mut response = refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "broker_unavailable",
        failure,
    );
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from_static("5"),
    );
    response
}

impl Push {
    /// The delivery of `record`: the one already under way or done for its record id,
    /// or a new one (also when the last attempt failed).
    fn deliver(self: &Arc<Self>, record: SignedRecord) -> watch::Receiver<Outcome> {
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
        let push = self.clone();
        tokio::spawn(async move {
            let outcome = push
                .publisher
                .publish(&record)
                .await
                .map_err(|error| error.to_string());
            let _ = sender.send(Some(outcome));
        });
        receiver
    }
}
