//! The HTTP API, on axum: the only crate that speaks HTTP. Every route names the roles
//! it serves and checks the object too (a caseworker uses only their department's
//! consents; a citizen sees only their own data). One error type decides status and body.

mod error;
pub mod push;
pub mod quotas;
pub mod registry;
mod routes;

pub use error::ApiError;

use axum::routing::{get, post};
use axum::Router;
use datarun_store::Store;
use std::sync::Arc;

/// Renders the Prometheus text exposition for `/metrics`.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub metrics: MetricsRenderer,
    /// The records topics' common prefix (`<topic prefix>records.`): a record type's
    /// registry subject is its topic's name and `-value`.
    pub records_topic_prefix: String,
    /// This hub instance's key for the documents it signs (lookup responses, consent
    /// artefacts); its public half is registered in the store at start.
    pub signer: Arc<datarun_domain::signed::HubSigner>,
    /// Lookup quotas and the harvesting alarm of this instance.
    pub quotas: Arc<quotas::Quotas>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/v1/hub/keys", get(routes::hub_keys))
        .route("/v1/whoami", get(routes::whoami))
        .route("/v1/logout", post(routes::logout))
        .route("/v1/operator/tokens/revoke", post(routes::revoke_tokens))
        .route(
            "/v1/consents",
            post(routes::grant_consent).get(routes::list_consents),
        )
        .route("/v1/consents/{consent_id}", get(routes::consent_detail))
        .route(
            "/v1/consents/{consent_id}/revoke",
            post(routes::revoke_consent),
        )
        .route(
            "/v1/consents/{consent_id}/pause",
            post(routes::pause_consent),
        )
        .route(
            "/v1/consents/{consent_id}/resume",
            post(routes::resume_consent),
        )
        .route("/v1/purposes", get(routes::purposes))
        .route(
            "/v1/consent-requests",
            post(routes::request_consent).get(routes::list_consent_requests),
        )
        .route(
            "/v1/consent-requests/{request_id}",
            get(routes::consent_request),
        )
        .route(
            "/v1/consent-requests/{request_id}/preview",
            get(routes::preview_consent_request),
        )
        .route(
            "/v1/consent-requests/{request_id}/approve",
            post(routes::approve_consent_request),
        )
        .route(
            "/v1/consent-requests/{request_id}/decline",
            post(routes::decline_consent_request),
        )
        .route("/v1/proofs", post(routes::issue_proof))
        .route("/v1/proofs/{proof_id}", get(routes::proof))
        .route(
            "/v1/delegations",
            post(routes::register_delegation).get(routes::list_delegations),
        )
        .route(
            "/v1/delegations/{delegation_id}/revoke",
            post(routes::revoke_delegation),
        )
        .route("/v1/lookups", post(routes::lookup))
        .route("/v1/feed", get(routes::feed))
        .route("/v1/audit/events", get(routes::audit_events))
        .route("/v1/audit/verify", get(routes::audit_verify))
        .route("/v1/me/access-log", get(routes::my_access_log))
        .route("/v1/operator/rejections", get(routes::rejections))
        .merge(registry::router())
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
