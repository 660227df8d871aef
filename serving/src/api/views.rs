use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{ACCEPT, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tandem_batch::catalog::{RunRecord, Trigger, ViewRecord};
use tandem_model::ViewSpec;
use tandem_model::value::format_timestamp;

use super::coding::{COMPRESS_FROM, Coding, weighted};
use super::error::{ApiError, ApiJson, ApiResult};
use crate::app::AppState;
use crate::query::{ARROW_STREAM, Answer, Format, QueryRequest, prepare};
use crate::runner;

fn time(t: Option<i64>) -> Value {
    t.map(|t| json!(format_timestamp(t))).unwrap_or(Value::Null)
}

pub fn run_json(run: &RunRecord) -> Value {
    json!({
        "id": run.id,
        "view": run.view,
        "status": run.status,
        "trigger": run.trigger,
        "created_at": time(Some(run.created_at)),
        "started_at": time(run.started_at),
        "finished_at": time(run.finished_at),
        "watermark": run.watermark,
        "rows_in": run.rows_in,
        "rows_out": run.rows_out,
        "version": run.version,
        "mode": run.mode,
        "partitions": run.partitions,
        "error": run.error,
    })
}

/// A view as the API shows it, with its newest run (`last_run`, which the caller reads from the
/// catalog: one query for a whole list).
fn view_json(state: &AppState, record: &ViewRecord, last_run: Option<&RunRecord>) -> Value {
    let mut v = serde_json::to_value(&record.spec).expect("specs serialize");
    v["schedule"] = json!(record.spec.schedule());
    v["created_at"] = json!(format_timestamp(record.created_at));
    let (status, version, watermark) = match state.view(&record.spec.name) {
        Some(live) => live.read(|s| {
            (
                if s.is_ready() { "ready" } else { "building" },
                s.batch.as_ref().map(|b| b.version),
                s.batch.as_ref().map(|b| b.watermark),
            )
        }),
        None => ("building", None, None),
    };
    v["status"] = json!(status);
    v["batch_version"] = json!(version);
    v["watermark"] = json!(watermark);
    v["last_run"] = last_run.map(run_json).unwrap_or(Value::Null);
    v
}

/// [`view_json`] of one view, its newest run read on the way.
async fn one_view_json(state: &AppState, record: &ViewRecord) -> ApiResult<Value> {
    let last_run = state.env.catalog.last_run(&record.spec.name).await?;
    Ok(view_json(state, record, last_run.as_ref()))
}

async fn record(state: &AppState, name: &str) -> ApiResult<ViewRecord> {
    state.env.catalog.view(name).await?.ok_or_else(|| ApiError::not_found(format!("view {name:?}")))
}

pub async fn create(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<ViewSpec>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (record, live) = state.create_view(spec).await?;
    if !live.read(|s| s.is_ready()) {
        runner::trigger(&state, &record.spec.name, Trigger::Create, true).await?;
    }
    Ok((StatusCode::CREATED, Json(one_view_json(&state, &record).await?)))
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let records = state.env.catalog.views().await?;
    let mut last_runs = state.env.catalog.newest_runs(false).await?;
    let views: Vec<Value> =
        records.iter().map(|record| view_json(&state, record, last_runs.remove(&record.spec.name).as_ref())).collect();
    Ok(Json(json!({ "views": views })))
}

pub async fn get(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let record = record(&state, &name).await?;
    Ok(Json(one_view_json(&state, &record).await?))
}

pub async fn delete(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    state.delete_view(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn query_post(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<QueryRequest>,
) -> ApiResult<Response> {
    ask(&state, &name, request, answer_format(&headers)?, Coding::accepted(&headers)).await
}

pub async fn query_get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    pairs: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(pairs) = pairs?;
    ask(&state, &name, QueryRequest::from_pairs(pairs)?, answer_format(&headers)?, Coding::accepted(&headers)).await
}

/// The answer's format from the request's `Accept`: Arrow when it names [`ARROW_STREAM`], JSON
/// when it is absent or accepts JSON (`application/json`, `application/*`, `*/*`), else 406.
/// A media range with `q=0` is one the client refuses; other weights are not compared.
fn answer_format(headers: &HeaderMap) -> ApiResult<Format> {
    if headers.get(ACCEPT).is_none() {
        return Ok(Format::Json);
    }
    let accepted: Vec<String> =
        weighted(headers, ACCEPT.as_str()).filter(|(_, q)| *q != 0.0).map(|(range, _)| range).collect();
    let accepts = |names: &[&str]| accepted.iter().any(|range| names.contains(&range.as_str()));
    if accepts(&[ARROW_STREAM]) {
        Ok(Format::Arrow)
    } else if accepts(&["application/json", "application/*", "*/*"]) {
        Ok(Format::Json)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            format!("an answer is application/json or {ARROW_STREAM}; the request's Accept allows neither"),
        ))
    }
}

/// Answers, and writes the answer's bytes: a light query (see
/// [`crate::query::Prepared::is_light`]) right here, any other on a blocking thread, as a
/// query over many rows takes milliseconds of CPU, which on an async worker would hold up
/// the ingest requests queued behind it. An answer is compressed (`coding`, when the request
/// accepts one) on a blocking thread too, for the same reason.
async fn ask(
    state: &AppState,
    name: &str,
    request: QueryRequest,
    format: Format,
    coding: Option<Coding>,
) -> ApiResult<Response> {
    let live = state.view(name).ok_or_else(|| ApiError::not_found(format!("view {name:?}")))?;
    let prepared = prepare(&live, request)?;
    let (pieces, coding) = if prepared.is_light(&live) {
        let answer = prepared.answer(&live, format)?;
        if compressed_in(coding, &answer).is_some() {
            blocking(move || encoded(answer, coding)).await?
        } else {
            (answer.into_pieces(), None)
        }
    } else {
        blocking(move || encoded(prepared.answer(&live, format)?, coding)).await?
    };
    let content_type = match format {
        Format::Json => "application/json",
        Format::Arrow => ARROW_STREAM,
    };
    let mut response = ([(CONTENT_TYPE, content_type)], Body::new(Pieces::new(pieces, name))).into_response();
    let headers = response.headers_mut();
    headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(coding) = coding {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.name()));
    }
    Ok(response)
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::internal("query task", e))?
}

/// The coding `answer` is sent in: the one the request accepts, if any, when the answer has
/// at least [`COMPRESS_FROM`] bytes.
fn compressed_in(accepted: Option<Coding>, answer: &Answer) -> Option<Coding> {
    accepted.filter(|_| answer.len() >= COMPRESS_FROM)
}

/// An answer's pieces as they are sent, and the coding they are in (see [`compressed_in`]).
fn encoded(answer: Answer, coding: Option<Coding>) -> ApiResult<(Vec<Bytes>, Option<Coding>)> {
    match compressed_in(coding, &answer) {
        None => Ok((answer.into_pieces(), None)),
        Some(coding) => {
            let packed =
                coding.compress(answer.into_pieces()).map_err(|e| ApiError::internal("compressing an answer", e))?;
            Ok((vec![packed], Some(coding)))
        }
    }
}

/// An answer whose sending took longer than this logs how long (`TANDEM_LOG=tandem_serving=debug`),
/// to be set beside the slow-query log of its making (`tandem_speed=debug`).
const SLOW_SEND: Duration = Duration::from_millis(1);

/// An answer as a response body: its pieces sent one after another (the kept blocks of
/// rows among them are not copied into one buffer), with its length known up front.
struct Pieces {
    pieces: std::vec::IntoIter<Bytes>,
    left: u64,
    /// The view, how long the answer is, and when it was made, while [`SLOW_SEND`]s are
    /// logged (nothing is kept for it otherwise).
    watched: Option<(String, u64, Instant)>,
}

impl Pieces {
    fn new(pieces: Vec<Bytes>, view: &str) -> Pieces {
        let left = pieces.iter().map(Bytes::len).sum::<usize>() as u64;
        let watched = tracing::enabled!(tracing::Level::DEBUG).then(|| (view.to_string(), left, Instant::now()));
        Pieces { pieces: pieces.into_iter(), left, watched }
    }
}

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let next = self.pieces.next();
        if let Some(piece) = &next {
            self.left -= piece.len() as u64;
            // the last piece is asked for once the pieces before it are written to the socket
            if let Some((view, bytes, made)) = self.watched.as_ref().filter(|_| self.left == 0) {
                let took = made.elapsed();
                if took >= SLOW_SEND {
                    tracing::debug!(view = %view, ms = took.as_secs_f64() * 1e3, bytes, "slow send");
                }
            }
        }
        Poll::Ready(next.map(|piece| Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// The optional body of `POST /v1/views/{name}/runs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    #[serde(default)]
    full: bool,
}

pub async fn start_run(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = body?;
    let request: RunRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RunRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_request", format!("run request: {e}")))?
    };
    record(&state, &name).await?;
    let (run, _) = runner::trigger(&state, &name, Trigger::Manual, request.full).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": run.id, "status": run.status }))))
}

/// The keys of `GET /v1/views/{name}/runs`: how many runs at most, and for the next page, the
/// run id the page before ended with.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsPage {
    limit: Option<i64>,
    before: Option<i64>,
}

/// The most runs one page holds, and how many when `limit` is not given.
const RUNS_PAGE_MAX: i64 = 1000;
const RUNS_PAGE_DEFAULT: i64 = 100;

pub async fn list_runs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    page: Result<Query<RunsPage>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(page) = page?;
    let limit = page.limit.unwrap_or(RUNS_PAGE_DEFAULT);
    if !(1..=RUNS_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit {limit} is not between 1 and {RUNS_PAGE_MAX}"),
        ));
    }
    record(&state, &name).await?;
    let runs = state.env.catalog.runs_of(&name, limit, page.before).await?;
    Ok(Json(json!({ "runs": runs.iter().map(run_json).collect::<Vec<_>>() })))
}

pub async fn get_run(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id: i64 = id.parse().map_err(|_| ApiError::not_found(format!("run {id:?}")))?;
    let run = state.env.catalog.run(id).await?.ok_or_else(|| ApiError::not_found(format!("run {id}")))?;
    Ok(Json(run_json(&run)))
}
