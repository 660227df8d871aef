use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::metrics::{self, Metrics};

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the catalog answers; otherwise 503 naming the degraded part.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.env.catalog.ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready", "catalog": "ok" }))),
        Err(e) => {
            tracing::warn!(error = %e, "catalog unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "degraded", "catalog": "unavailable" })))
        }
    }
}

/// Prometheus' text format (see [`crate::metrics`]).
pub async fn metrics(State(state): State<AppState>, exporter: Metrics) -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::render(&state, &exporter).await)
}
