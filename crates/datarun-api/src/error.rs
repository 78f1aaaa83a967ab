//! The one HTTP error type: status, stable code, message. A 500 says nothing internal.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use datarun_store::StoreError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub audit_seq: Option<i64>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            audit_seq: None,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Invalid(message) => Self::bad_request(message),
            StoreError::NotFound(what) => Self::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            StoreError::Forbidden(message) => Self::forbidden("forbidden", message),
            StoreError::Refused { code, message } => {
                let status = match code {
                    "consent_not_found" | "delegation_not_found" | "request_not_found" => {
                        StatusCode::NOT_FOUND
                    }
                    "nothing_to_prove" => StatusCode::UNPROCESSABLE_ENTITY,
                    "consent_revoked"
                    | "consent_paused"
                    | "consent_not_paused"
                    | "consent_expired"
                    | "consent_exhausted"
                    | "delegation_already_revoked"
                    | "request_not_pending" => StatusCode::CONFLICT,
                    _ => StatusCode::FORBIDDEN,
                };
                Self::new(status, code, message)
            }
            StoreError::Conflict(message) => Self::new(StatusCode::CONFLICT, "conflict", message),
            other => {
                tracing::error!(error = %other, "request failed inside the hub");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the operator has the details",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(seq) = self.audit_seq {
            error["audit_seq"] = json!(seq);
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}
