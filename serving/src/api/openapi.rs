//! The API's OpenAPI 3.1 document, `GET /v1/openapi.json`.
//!
//! Each handler carries its own entry (`#[utoipa::path]`: path, parameters, bodies, answers),
//! and the router registers every route from that entry (`utoipa_axum::routes!`), so a route
//! and its documentation cannot drift apart; the bodies' schemas are derived from the types
//! the handlers read and answer. This module adds what holds for the API as a whole: its
//! description and tags, the error shape every other status answers in, and, when the server
//! requires API keys, the bearer scheme.

use std::sync::{Arc, OnceLock};

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::{Extension, body::Bytes};
use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{self, RefOr, ResponseBuilder};

use super::error::ErrorBody;

/// Where the API's description and the schemas no handler names directly come from.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tandem",
        description = "A Lambda-architecture analytics service: events are POSTed to typed datasets, \
            acknowledged once fsync'd, and folded at once into every view's speed layer; a batch layer \
            recomputes views from Parquet; queries merge the two, and equal one pass over every \
            acknowledged event. Every error answers `{\"error\": {\"code\", \"message\", \"details\"}}`.",
    ),
    tags(
        (name = "datasets", description = "Typed event collections"),
        (name = "events", description = "Ingest"),
        (name = "views", description = "Aggregations of a dataset, kept by both layers"),
        (name = "queries", description = "Merged answers from a view"),
        (name = "runs", description = "Batch recomputations"),
        (name = "keys", description = "API keys issued by the server, beside those of its flags"),
        (name = "system", description = "Probes, metrics and this document"),
    ),
    components(schemas(ErrorBody)),
)]
pub struct ApiDoc;

/// The security scheme's name in the document.
const BEARER: &str = "api_key";

/// The document, made once when the router is built.
#[derive(Clone, Default)]
pub struct Document(Arc<OnceLock<Bytes>>);

impl Document {
    /// Completes `doc` (see the module's doc) and keeps it as the route's answer.
    pub fn set(&self, mut doc: openapi::OpenApi, with_keys: bool) {
        let any_error = ResponseBuilder::new()
            .description(
                "An error, in the one shape every error has: also 401 `unauthorized` when the server \
                 requires an API key, 403 `forbidden` when the key's scope does not take the request, \
                 405 `method_not_allowed` (with `Allow`), 413 `payload_too_large`, 429 `rate_limited` \
                 (with `Retry-After`) under `--rate-limit`, 503 `catalog_unavailable` (with \
                 `Retry-After`) and 500 `internal`",
            )
            .content(
                "application/json",
                openapi::ContentBuilder::new()
                    .schema(Some(RefOr::Ref(openapi::Ref::from_schema_name("ErrorBody"))))
                    .build(),
            )
            .build();
        for item in doc.paths.paths.values_mut() {
            for operation in operations(item) {
                operation.responses.responses.entry("default".into()).or_insert_with(|| any_error.clone().into());
            }
        }
        if with_keys {
            let components = doc.components.get_or_insert_with(Default::default);
            let mut bearer = Http::new(HttpAuthScheme::Bearer);
            bearer.description = Some(
                "An API key, `Authorization: Bearer KEY`. A key given with `--read-api-key` may only read \
                 (GET, and view queries by POST), one given with `--ingest-api-key` only send events; \
                 another request with such a key gets 403 `forbidden`."
                    .into(),
            );
            components.add_security_scheme(BEARER, SecurityScheme::Http(bearer));
            doc.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
        }
        let json = serde_json::to_vec(&doc).expect("the document serializes");
        // the router is built once; a second document would be the same
        let _ = self.0.set(Bytes::from(json));
    }
}

/// Every operation of a path item.
fn operations(item: &mut openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// This API's OpenAPI document
///
/// Every route, its parameters, bodies and answers. Answered whole from memory.
#[utoipa::path(get, path = "/v1/openapi.json", operation_id = "openapi", tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn document(Extension(doc): Extension<Document>) -> impl IntoResponse {
    let body = doc.0.get().cloned().unwrap_or_default();
    ([(CONTENT_TYPE, "application/json")], body)
}
