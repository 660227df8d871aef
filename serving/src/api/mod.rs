//! The HTTP API (v1): routes and handlers. Handlers parse and answer; the work happens in
//! [`crate::app`], [`crate::query`] and [`crate::runner`].

pub mod error;

pub(crate) mod auth;
mod coding;
mod datasets;
mod events;
mod keys;
mod limit;
mod openapi;
mod queries;
mod runs;
mod system;
mod views;

use std::convert::Infallible;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode};
use axum::{Extension, Router};
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::{CompressionLayer, CompressionLevel};

use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

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

/// Every route, each registered from its handler's OpenAPI entry (see [`openapi`]).
pub fn router(state: AppState, metrics: Metrics) -> Router {
    let body_limit = state.config.max_body_bytes;
    let keyed = state.keys.required();
    let document = openapi::Document::default();
    let (guarded, guarded_doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(
            routes!(system::metrics).map(|r| r.layer::<_, Infallible>(Extension(metrics.clone())).layer(compression())),
        )
        .routes(routes!(datasets::create, datasets::list).map(|r| r.layer(compression())))
        .routes(routes!(datasets::get, datasets::update, datasets::delete))
        .routes(routes!(events::ingest))
        .routes(routes!(views::create, views::list).map(|r| r.layer(compression())))
        .routes(routes!(views::get, views::update, views::delete))
        .routes(routes!(queries::query_post, queries::query_get))
        .routes(routes!(runs::start_run, runs::list_runs).map(|r| r.layer(compression())))
        .routes(routes!(runs::get_run))
        .routes(routes!(keys::issue, keys::list))
        .routes(routes!(keys::delete))
        .routes(
            routes!(openapi::document)
                .map(|r| r.layer::<_, Infallible>(Extension(document.clone())).layer(compression())),
        )
        .split_for_parts();
    let mut guarded = guarded.method_not_allowed_fallback(method_not_allowed);
    // the later route layer runs first: keys are checked before budgets are counted
    if let Some(per_second) = state.config.rate_limit {
        guarded =
            guarded.route_layer(axum::middleware::from_fn_with_state(limit::Limiter::new(per_second), limit::limit));
    }
    if keyed {
        guarded = guarded.route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require));
    }
    let (open, open_doc) =
        OpenApiRouter::new().routes(routes!(system::healthz)).routes(routes!(system::readyz)).split_for_parts();
    document.set(guarded_doc.merge_from(open_doc), keyed);
    open.method_not_allowed_fallback(method_not_allowed)
        .merge(guarded)
        .route_layer(TrackLayer::new(&metrics))
        .fallback(|| async { ApiError::not_found("route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The path of a dataset's routes: `/v1/datasets/{name}...`; extracted and documented as one.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DatasetName {
    /// The dataset's name.
    name: String,
}

/// The path of a view's routes: `/v1/views/{name}...`; extracted and documented as one.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ViewName {
    /// The view's name.
    name: String,
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
