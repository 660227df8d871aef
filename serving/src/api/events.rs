use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use tandem_model::event::{Format, Limits, decode};

use super::error::{ApiError, ApiResult};
use crate::app::AppState;

/// `POST /v1/datasets/{name}/events`: validate all, store all durably, answer. A retry with
/// the same `Idempotency-Key` within 24 h gets the first answer and stores nothing.
pub async fn ingest(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let dataset = state.dataset(&name).ok_or_else(|| ApiError::not_found(format!("dataset {name:?}")))?;
    let format = format_of(&headers)?;
    let body = body?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("invalid_events", "request body is empty"));
    }
    let limits =
        Limits { max_events: state.config.max_events_per_request, max_string_bytes: state.config.max_string_bytes };
    let rows = decode(&dataset.record.spec, format, &body, &limits).map_err(|errors| {
        let n = errors.len();
        ApiError::bad_request("invalid_events", format!("{n} problem(s) in the events; nothing was stored"))
            .with_details(errors.into_iter().map(|e| serde_json::to_value(e).expect("errors serialize")))
    })?;
    let outcome = dataset.writer.append(rows, idempotency_key(&headers)?).await?;
    Ok(Json(json!({ "accepted": outcome.accepted, "duplicates": outcome.duplicates })))
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key =
        value.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()));
    match key {
        Some(k) => Ok(Some(k.to_string())),
        None => {
            Err(ApiError::bad_request("invalid_request", "Idempotency-Key must be 1 to 255 visible ASCII characters"))
        }
    }
}

fn format_of(headers: &HeaderMap) -> ApiResult<Format> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Format::Ndjson),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content-type {content_type:?} is not application/json or application/x-ndjson"),
        )),
    }
}
