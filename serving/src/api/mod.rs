//! The HTTP API (v1): routes and handlers. Handlers parse and answer; the work happens in
//! [`crate::app`], [`crate::query`] and [`crate::runner`].

pub mod error;

pub(crate) mod auth;
mod coding;
mod datasets;
mod events;
mod system;
mod views;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::{CompressionLayer, CompressionLevel};

use crate::app::AppState;
use crate::metrics::{Metrics, TrackLayer};
use error::ApiError;

/// Compression for the routes whose answers can be large (the metrics, the lists), at the
/// same sizes and levels as a query's answer, which is compressed by its handler
/// ([`coding`]); not for ingest, whose answers are a few bytes and whose path stays as lean
/// as it can be.
fn compression() -> CompressionLayer<impl Predicate> {
    CompressionLayer::new()
        .quality(CompressionLevel::Fastest)
        .compress_when(SizeAbove::new(coding::COMPRESS_FROM as u16).and(NotForContentType::GRPC))
}

pub fn router(state: AppState, metrics: Metrics) -> Router {
    let exporter = metrics.clone();
    let body_limit = state.config.max_body_bytes;
    let mut guarded = Router::new()
        .route("/metrics", get(move |state| system::metrics(state, exporter.clone())).layer(compression()))
        .route("/v1/datasets", post(datasets::create).get(datasets::list).layer(compression()))
        .route("/v1/datasets/{name}", get(datasets::get).delete(datasets::delete))
        .route("/v1/datasets/{name}/events", post(events::ingest))
        .route("/v1/views", post(views::create).get(views::list).layer(compression()))
        .route("/v1/views/{name}", get(views::get).delete(views::delete))
        .route("/v1/views/{name}/query", post(views::query_post).get(views::query_get))
        .route("/v1/views/{name}/runs", post(views::start_run).get(views::list_runs).layer(compression()))
        .route("/v1/runs/{id}", get(views::get_run))
        .method_not_allowed_fallback(method_not_allowed);
    if let Some(keys) = auth::ApiKeys::new(&state.config.api_keys) {
        guarded = guarded.route_layer(axum::middleware::from_fn_with_state(keys, auth::require));
    }
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .method_not_allowed_fallback(method_not_allowed)
        .merge(guarded)
        .route_layer(TrackLayer::new(&metrics))
        .fallback(|| async { ApiError::not_found("route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// A method a route does not take, in the API's error shape too; axum adds the route's
/// `Allow` header.
async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed here; the Allow header lists what is"),
    )
}
