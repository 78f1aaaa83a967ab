//! The HTTP side of a connector's push source (`docs/connectors.md`): the one crate
//! that speaks HTTP serves `POST /records` for a [`PushTarget`] the connector runtime
//! implements (map, sign, publish, wait for the broker's acknowledgement).
//!
//! `POST /records` takes one JSON object or an array of up to [`MAX_ROWS`] objects, a
//! body of at most [`MAX_BODY_BYTES`]. Answers: 200 `{"records": [...]}` once every
//! record is acknowledged; 422 `row_invalid` naming the row, nothing of the request
//! published; 400 `body_invalid`; 413 `too_many_rows`; 401 `unauthenticated` when a
//! token is required; 503 with `Retry-After` when the target cannot answer for the
//! broker (`broker_unavailable`) or its key (`signing_key_unavailable`).

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Rows one request may carry.
pub const MAX_ROWS: usize = 1_000;
/// The largest request body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What became of a request's rows.
#[derive(Debug, Clone, PartialEq)]
pub enum PushAnswer {
    /// Every record is acknowledged; one JSON object per record.
    Acknowledged(Vec<Value>),
    /// Row `row` (from 0) cannot be taken; nothing of the request was published.
    RowInvalid { row: usize, message: String },
    /// Not now: the department sends the same request again.
    Unavailable { code: &'static str, message: String },
}

/// Where pushed rows go: the connector runtime.
pub trait PushTarget: Send + Sync + 'static {
    fn accept(
        &self,
        rows: Vec<Map<String, Value>>,
    ) -> Pin<Box<dyn Future<Output = PushAnswer> + Send + '_>>;
}

struct Endpoint {
    target: Arc<dyn PushTarget>,
    token: Option<String>,
}

/// Serves `POST /records` and `GET /healthz` on `listener` until the future is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    target: Arc<dyn PushTarget>,
    token: Option<String>,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/records", post(receive))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(Endpoint { target, token }));
    axum::serve(listener, router).await
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn receive(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(token) = &endpoint.token {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        // Digests compared, so the time taken says nothing about the token's bytes.
        use datarun_domain::token::TokenHash;
        let matches =
            presented.is_some_and(|presented| TokenHash::of(presented) == TokenHash::of(token));
        if !matches {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "a bearer token is required".into(),
            );
        }
    }
    let rows: Vec<Map<String, Value>> = match serde_json::from_str::<Value>(&body) {
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
    match endpoint.target.accept(rows).await {
        PushAnswer::Acknowledged(records) => {
            (StatusCode::OK, Json(json!({ "records": records }))).into_response()
        }
        PushAnswer::RowInvalid { row, message } => refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "row_invalid",
            format!("row {row}: {message}"),
        ),
        PushAnswer::Unavailable { code, message } => {
            let mut response = refuse(StatusCode::SERVICE_UNAVAILABLE, code, message);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("5"),
            );
            response
        }
    }
}
