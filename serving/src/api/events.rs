use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::BytesMut;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tandem_model::event::{Format, Limits};
use tokio::sync::OwnedSemaphorePermit;

use super::DatasetName;
use super::coding::Coding;
use super::error::{ApiError, ApiResult, ErrorBody};
use crate::app::AppState;

/// How long an ingest request waits for room in the in-flight budget before it is refused.
const BUDGET_WAIT: Duration = Duration::from_millis(500);

/// Most output a compressed body is inflated by at a time, each step reserved in the
/// in-flight budget before it is made. Steps start at four times the compressed size (at
/// least 64 KiB) and grow with the output, so that a small body reserves little.
const INFLATE_STEP: usize = 1 << 20;

/// `POST /v1/datasets/{name}/events`: validate all, store all durably, answer. A retry with
/// the same `Idempotency-Key` within 24 h gets the first answer and stores nothing.
///
/// The request holds its share of the in-flight budget (`--max-inflight-bytes`) from before
/// its body is read until it is answered, so the memory held by ingest is bounded whatever
/// the number of clients. A body sent with `Content-Encoding: gzip` or `zstd` is inflated
/// here; the body limit (`--max-body-bytes`) holds for the bytes sent and for the inflated
/// ones, and the inflated bytes take their share of the budget as they are made.
#[utoipa::path(post, path = "/v1/datasets/{name}/events", operation_id = "send_events", tag = "events",
    summary = "Send events",
    description = "Validates every event against the dataset's fields, stores them durably (answered after \
        fsync) and folds them into every view of the dataset before answering, so a query right after sees \
        them. One invalid event rejects the request and nothing of it is stored.",
    params(
        DatasetName,
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key within 24 h gets the first answer and stores nothing (across restarts too)"),
        ("Content-Encoding" = Option<String>, Header, description = "`gzip` (or `x-gzip`) or `zstd` for a compressed body"),
    ),
    request_body(
        description = "Events: a JSON object, a JSON array of objects, or NDJSON (one object a line), each fitting the dataset's fields",
        content(
            (Events = "application/json", example = json!([{"ts": "2026-11-01T10:00:00Z", "event_id": "a", "country": "US"}])),
            (String = "application/x-ndjson"),
        ),
    ),
    responses(
        (status = 200, description = "Stored durably (after fsync)", body = Stored),
        (status = 400, description = "`invalid_events` (details: `{index, field, message}`, the first 100) or `invalid_request`; nothing was stored", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dataset", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body, sent or inflated, is over `--max-body-bytes`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type` or `unsupported_encoding`", body = ErrorBody),
        (status = 503, description = "`overloaded` or `log_unavailable`, with `Retry-After`; nothing was stored", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`: the log's disk is full, with `Retry-After`; nothing was stored", body = ErrorBody),
    ))]
pub async fn ingest(
    State(state): State<AppState>,
    Path(DatasetName { name }): Path<DatasetName>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Stored>> {
    let dataset = state.dataset(&name).ok_or_else(|| ApiError::not_found(format!("dataset {name:?}")))?;
    let format = format_of(&headers)?;
    let coding = Coding::of_body(&headers)?;
    let key = idempotency_key(&headers)?;
    let limit = state.config.max_body_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        discard(body, limit.saturating_mul(4)).await;
        return Err(ApiError::payload_too_large());
    }
    let mut permit = match reserve(&state, declared.unwrap_or(limit)).await {
        Some(permit) => permit,
        None => {
            discard(body, limit).await;
            return Err(overloaded());
        }
    };
    let body = read_body(body, limit).await?;
    let body = match coding {
        None => body,
        Some(coding) => inflate(&state, coding, &body, limit, &mut permit).await?,
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("invalid_events", "request body is empty"));
    }
    let limits =
        Limits { max_events: state.config.max_events_per_request, max_string_bytes: state.config.max_string_bytes };
    let rows = dataset.decoder.decode(format, &body, &limits).map_err(|errors| {
        let n = errors.len();
        ApiError::bad_request("invalid_events", format!("{n} problem(s) in the events; nothing was stored"))
            .with_details(errors.into_iter().map(|e| serde_json::to_value(e).expect("errors serialize")))
    })?;
    drop(body);
    let outcome = dataset.writer.append(rows, key).await?;
    Ok(Json(Stored { accepted: outcome.accepted, duplicates: outcome.duplicates }))
}

/// The body of an ingest request as the API's document describes it (JSON; NDJSON is one
/// object a line). The handler decodes bodies with the dataset's own decoder, not with this.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[schema(description = "One event, or an array of them; each an object of the dataset's fields.")]
#[allow(dead_code)]
pub enum Events {
    One(HashMap<String, serde_json::Value>),
    Many(Vec<HashMap<String, serde_json::Value>>),
}

/// The answer to a stored request, serialized as it is (a `json!` map of it took allocations
/// on every request).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Stored {
    /// Events stored.
    accepted: usize,
    /// Events left out as duplicates of an id accepted within the dedup window.
    duplicates: usize,
}

/// Takes `bytes` of the in-flight budget, waiting up to [`BUDGET_WAIT`]; `None` if there is
/// no room by then.
async fn reserve(state: &AppState, bytes: usize) -> Option<OwnedSemaphorePermit> {
    let budget = state.ingest_budget.clone();
    let wanted = bytes.clamp(1, state.config.max_inflight_bytes.min(u32::MAX as usize)) as u32;
    // the common case takes no timer
    if let Ok(permit) = budget.clone().try_acquire_many_owned(wanted) {
        return Some(permit);
    }
    tokio::time::timeout(BUDGET_WAIT, budget.acquire_many_owned(wanted)).await.ok()?.ok()
}

fn overloaded() -> ApiError {
    ApiError::unavailable("overloaded", "too many ingest bytes are in flight; nothing was stored, retry shortly", 1)
}

/// The body `raw` inflated, refusing more than `limit` inflated bytes with 413. Before each
/// step of output is made (see [`INFLATE_STEP`]), `permit` is grown from the in-flight budget to cover
/// it and `raw` (503 when there is no room), so an inflated body is bounded by the budget as
/// a plain one is.
async fn inflate(
    state: &AppState,
    coding: Coding,
    raw: &[u8],
    limit: usize,
    permit: &mut OwnedSemaphorePermit,
) -> ApiResult<Bytes> {
    let invalid = |e: std::io::Error| {
        ApiError::bad_request("invalid_request", format!("the body is not valid {}: {e}", coding.name()))
    };
    let mut reader = coding.decoder(raw).map_err(invalid)?;
    let mut out = Vec::new();
    loop {
        // one byte past the limit is enough to know the body is too large
        let step = out.len().max(4 * raw.len()).clamp(64 << 10, INFLATE_STEP).min(limit + 1 - out.len());
        // as a plain body's reservation, at most the whole budget
        let needed = (raw.len() + out.len() + step).min(state.config.max_inflight_bytes);
        let held = permit.num_permits();
        if needed > held {
            let more = reserve(state, needed - held).await.ok_or_else(overloaded)?;
            permit.merge(more);
        }
        let read = (&mut reader).take(step as u64).read_to_end(&mut out).map_err(invalid)?;
        if out.len() > limit {
            return Err(ApiError::payload_too_large());
        }
        if read < step {
            return Ok(Bytes::from(out));
        }
    }
}

/// Reads and drops up to `cap` bytes of a refused request's body, in constant memory, so
/// that the client reads the answer instead of a broken connection.
async fn discard(body: Body, cap: usize) {
    let mut stream = body.into_data_stream();
    let mut seen = 0;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len();
        if seen > cap {
            break;
        }
    }
}

/// The whole body, refusing more than `limit` bytes with 413.
async fn read_body(body: Body, limit: usize) -> ApiResult<Bytes> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("invalid_request", format!("reading the body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::payload_too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
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
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let is = |name: &str| essence.eq_ignore_ascii_case(name);
    match () {
        _ if is("application/json") => Ok(Format::Json),
        _ if is("application/x-ndjson") || is("application/ndjson") || is("application/jsonl") => Ok(Format::Ndjson),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content-type {content_type:?} is not application/json or application/x-ndjson"),
        )),
    }
}
