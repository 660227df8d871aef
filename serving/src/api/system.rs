use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Serialize;

use crate::app::AppState;
use crate::metrics::{self, Metrics};

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `degraded`.
    #[schema(example = "ready")]
    status: &'static str,
    /// `ok` or `unavailable`.
    #[schema(example = "ok")]
    catalog: &'static str,
}

/// Liveness: 200 while the server serves
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "system", security(()),
    responses((status = 200, description = "Serving", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: 200 when the catalog answers
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "system", security(()),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "The catalog does not answer", body = Readiness),
    ))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    match state.env.catalog.ping().await {
        Ok(()) => (StatusCode::OK, Json(Readiness { status: "ready", catalog: "ok" })),
        Err(e) => {
            tracing::warn!(error = %e, "catalog unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(Readiness { status: "degraded", catalog: "unavailable" }))
        }
    }
}

/// Metrics in Prometheus' text format
///
/// What each metric means: the README's Monitoring section.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4")))]
pub async fn metrics(State(state): State<AppState>, Extension(exporter): Extension<Metrics>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::render(&state, &exporter).await)
}
