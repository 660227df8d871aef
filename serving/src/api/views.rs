use std::collections::BTreeMap;
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
use serde::{Deserialize, Serialize};
use tandem_batch::catalog::{RunRecord, Trigger, ViewRecord};
use tandem_model::value::format_timestamp;
use tandem_model::{Granularity, ViewSpec};

use super::ViewName;
use super::coding::{COMPRESS_FROM, Coding, weighted};
use super::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::app::AppState;
use crate::query::{ARROW_STREAM, Answer, CSV, Format, QueryAnswer, QueryRequest, prepare};
use crate::runner;

/// A batch run as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunInfo {
    id: i64,
    /// The view it recomputes.
    view: String,
    /// `queued`, `running`, `succeeded` or `failed`.
    #[schema(example = "succeeded")]
    status: String,
    /// What started it: `schedule`, `manual` (the API), `cli` (`tandem batch`) or `create`.
    #[schema(example = "manual")]
    trigger: String,
    /// RFC 3339, as the other times.
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    /// The last sequence number the run's version covers.
    watermark: Option<i64>,
    rows_in: Option<i64>,
    rows_out: Option<i64>,
    /// The version it published.
    version: Option<i64>,
    /// `full` or `incremental`, once known.
    mode: Option<String>,
    /// The event days (`YYYY-MM-DD`) it recomputed.
    partitions: Option<Vec<String>>,
    /// Why it failed.
    error: Option<String>,
}

impl RunInfo {
    pub fn of(run: &RunRecord) -> RunInfo {
        RunInfo {
            id: run.id,
            view: run.view.clone(),
            status: run.status.clone(),
            trigger: run.trigger.clone(),
            created_at: format_timestamp(run.created_at),
            started_at: run.started_at.map(format_timestamp),
            finished_at: run.finished_at.map(format_timestamp),
            watermark: run.watermark,
            rows_in: run.rows_in,
            rows_out: run.rows_out,
            version: run.version,
            mode: run.mode.clone(),
            partitions: run.partitions.clone(),
            error: run.error.clone(),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RunList {
    /// Newest first.
    runs: Vec<RunInfo>,
}

/// What `POST /v1/views/{name}/runs` answers: the run started, or the one already active.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunStarted {
    id: i64,
    #[schema(example = "queued")]
    status: String,
}

/// A view as the API shows it: its definition (with the schedule it runs on), its state and
/// its newest run. (Its definition's fields are listed, not flattened from a [`ViewSpec`], so
/// that the document's schema of an answer admits the extra keys while a definition sent
/// admits no unknown key.)
#[derive(Serialize, utoipa::ToSchema)]
#[schema(description = "A view: its definition (with the schedule it runs on), its state and its newest run.")]
pub struct ViewInfo {
    #[schema(example = "by_country")]
    name: String,
    #[schema(example = "pageviews")]
    dataset: String,
    granularity: Granularity,
    dimensions: Vec<String>,
    measures: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<String>,
    /// The cron expression it runs on (UTC), or `manual`.
    #[schema(example = "0 * * * *")]
    schedule: String,
    /// When it was made (RFC 3339).
    created_at: String,
    /// `ready` once it answers queries; `building` until its first batch version when made
    /// over existing events.
    #[schema(example = "ready")]
    status: &'static str,
    /// The batch version served.
    batch_version: Option<i64>,
    /// The last sequence number that version covers.
    watermark: Option<u64>,
    last_run: Option<RunInfo>,
}

impl ViewInfo {
    /// A view with its newest run (`last_run`, which the caller reads from the catalog: one
    /// query for a whole list).
    fn of(state: &AppState, record: &ViewRecord, last_run: Option<&RunRecord>) -> ViewInfo {
        let (status, batch_version, watermark) = match state.view(&record.spec.name) {
            Some(live) => live.read(|s| {
                (
                    if s.is_ready() { "ready" } else { "building" },
                    s.batch.as_ref().map(|b| b.version),
                    s.batch.as_ref().map(|b| b.watermark),
                )
            }),
            None => ("building", None, None),
        };
        let schedule = record.spec.schedule().to_string();
        let ViewSpec { name, dataset, granularity, dimensions, measures, filter, schedule: _ } = record.spec.clone();
        ViewInfo {
            name,
            dataset,
            granularity,
            dimensions,
            measures,
            filter,
            schedule,
            created_at: format_timestamp(record.created_at),
            status,
            batch_version,
            watermark,
            last_run: last_run.map(RunInfo::of),
        }
    }

    /// [`ViewInfo::of`] one view, its newest run read on the way.
    async fn read(state: &AppState, record: &ViewRecord) -> ApiResult<ViewInfo> {
        let last_run = state.env.catalog.last_run(&record.spec.name).await?;
        Ok(ViewInfo::of(state, record, last_run.as_ref()))
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ViewList {
    views: Vec<ViewInfo>,
}

async fn record(state: &AppState, name: &str) -> ApiResult<ViewRecord> {
    state.env.catalog.view(name).await?.ok_or_else(|| ApiError::not_found(format!("view {name:?}")))
}

/// Make a view
///
/// Over a dataset that already holds events, the view starts `building`: its first batch run
/// starts at once, and queries answer 503 `view_building` until it has published.
#[utoipa::path(post, path = "/v1/views", operation_id = "create_view", tag = "views",
    request_body = ViewSpec,
    responses(
        (status = 201, description = "Made", body = ViewInfo),
        (status = 400, description = "`invalid_view`: the definition is not valid (its dataset does not exist, say); `invalid_request`: not a definition", body = ErrorBody),
        (status = 404, description = "`not_found`: its dataset was deleted while the view was being made", body = ErrorBody),
        (status = 409, description = "`conflict`: a view of that name exists", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<ViewSpec>,
) -> ApiResult<(StatusCode, Json<ViewInfo>)> {
    let (record, live) = state.create_view(spec).await?;
    if !live.read(|s| s.is_ready()) {
        runner::trigger(&state, &record.spec.name, Trigger::Create, true).await?;
    }
    Ok((StatusCode::CREATED, Json(ViewInfo::read(&state, &record).await?)))
}

/// List the views
#[utoipa::path(get, path = "/v1/views", operation_id = "list_views", tag = "views",
    responses((status = 200, description = "Every view", body = ViewList)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<ViewList>> {
    let records = state.env.catalog.views().await?;
    let mut last_runs = state.env.catalog.newest_runs(false).await?;
    let views = records
        .iter()
        .map(|record| ViewInfo::of(&state, record, last_runs.remove(&record.spec.name).as_ref()))
        .collect();
    Ok(Json(ViewList { views }))
}

/// Show a view
#[utoipa::path(get, path = "/v1/views/{name}", operation_id = "get_view", tag = "views",
    params(ViewName),
    responses(
        (status = 200, description = "The view", body = ViewInfo),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn get(State(state): State<AppState>, Path(ViewName { name }): Path<ViewName>) -> ApiResult<Json<ViewInfo>> {
    let record = record(&state, &name).await?;
    Ok(Json(ViewInfo::read(&state, &record).await?))
}

/// What of a view may change once it is made (the body of `PATCH /v1/views/{name}`); a key
/// left out stays as it is.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(description = "What of a view may change once it is made: its schedule. A key left out stays as it \
    is; to change anything else, make a new view.")]
pub struct ViewChange {
    /// A cron expression (UTC), `manual`, or null for the default (`0 * * * *`, hourly).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "*/15 * * * *")]
    schedule: Option<Option<String>>,
}

/// A key that is present, null or not: `Some`; absent: `None` (by `#[serde(default)]`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Change a view's schedule
///
/// Takes effect at once: the next scheduled run follows the new schedule. The view's
/// definition, versions and runs stay as they are.
#[utoipa::path(patch, path = "/v1/views/{name}", operation_id = "update_view", tag = "views",
    params(ViewName),
    request_body = ViewChange,
    responses(
        (status = 200, description = "The view as it now is", body = ViewInfo),
        (status = 400, description = "`invalid_view`: not a schedule; `invalid_request`: another key", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn update(
    State(state): State<AppState>,
    Path(ViewName { name }): Path<ViewName>,
    ApiJson(change): ApiJson<ViewChange>,
) -> ApiResult<Json<ViewInfo>> {
    let record = match change.schedule {
        Some(schedule) => state.set_schedule(&name, schedule).await?,
        None => record(&state, &name).await?,
    };
    Ok(Json(ViewInfo::read(&state, &record).await?))
}

/// Delete a view
#[utoipa::path(delete, path = "/v1/views/{name}", operation_id = "delete_view", tag = "views",
    params(ViewName),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn delete(State(state): State<AppState>, Path(ViewName { name }): Path<ViewName>) -> ApiResult<StatusCode> {
    state.delete_view(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query a view
#[utoipa::path(post, path = "/v1/views/{name}/query", operation_id = "query_view", tag = "queries",
    params(
        ViewName,
        ("Accept" = Option<String>, Header, description = "`application/vnd.apache.arrow.stream` for an Arrow IPC stream, `text/csv` for CSV; JSON otherwise"),
        ("Accept-Encoding" = Option<String>, Header, description = "`zstd` or `gzip`: an answer of 1 KiB or more comes compressed"),
    ),
    request_body(content = QueryRequest, description = "The query; no body at all is the whole view (`{}`)"),
    responses(
        (status = 200, description = "The rows, batch and speed layer merged: JSON; with `Accept: application/vnd.apache.arrow.stream` the same rows as an Arrow IPC stream (the freshness as JSON text in the schema's metadata under `freshness`); with `Accept: text/csv` as CSV with a header (no freshness)",
            content((QueryAnswer = "application/json"), ("application/vnd.apache.arrow.stream"), ("text/csv"))),
        (status = 400, description = "`invalid_query` or `invalid_request`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such view", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body without `Content-Type: application/json`", body = ErrorBody),
        (status = 406, description = "`not_acceptable`: `Accept` allows none of JSON, Arrow and CSV", body = ErrorBody),
        (status = 503, description = "`view_building`, with `Retry-After`: the view's first batch version is not published yet", body = ErrorBody),
    )
)]
pub async fn query_post(
    State(state): State<AppState>,
    Path(ViewName { name }): Path<ViewName>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<QueryRequest>,
) -> ApiResult<Response> {
    ask(&state, &name, request, answer_format(&headers)?, Coding::accepted(&headers)).await
}

/// Query a view (query-string form)
#[utoipa::path(get, path = "/v1/views/{name}/query", operation_id = "query_view_get", tag = "queries",
    params(
        ViewName,
        ("from" = Option<String>, Query, description = "Start of the range, inclusive (RFC 3339)"),
        ("to" = Option<String>, Query, description = "End of the range, exclusive (RFC 3339)"),
        ("granularity" = Option<Granularity>, Query, description = "The view's or a coarser one"),
        ("group_by" = Option<String>, Query, description = "Dimensions, comma-separated"),
        ("measures" = Option<String>, Query, description = "Measures, comma-separated"),
        ("filter" = Option<Vec<String>>, Query, description = "`dim:v1,v2`, repeatable", explode = true),
        ("order_by" = Option<String>, Query, description = "Columns, comma-separated; `-` before one for descending, e.g. `-views,country`"),
        ("limit" = Option<usize>, Query, description = "At most this many rows"),
        ("offset" = Option<usize>, Query, description = "Rows to skip first (after sorting); with `limit`, a page"),
        ("Accept" = Option<String>, Header, description = "`application/vnd.apache.arrow.stream` for an Arrow IPC stream, `text/csv` for CSV; JSON otherwise"),
        ("Accept-Encoding" = Option<String>, Header, description = "`zstd` or `gzip`: an answer of 1 KiB or more comes compressed"),
    ),
    responses(
        (status = 200, description = "The rows, batch and speed layer merged: JSON; with `Accept: application/vnd.apache.arrow.stream` the same rows as an Arrow IPC stream (the freshness as JSON text in the schema's metadata under `freshness`); with `Accept: text/csv` as CSV with a header (no freshness)",
            content((QueryAnswer = "application/json"), ("application/vnd.apache.arrow.stream"), ("text/csv"))),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such view", body = ErrorBody),
        (status = 406, description = "`not_acceptable`: `Accept` allows none of JSON, Arrow and CSV", body = ErrorBody),
        (status = 503, description = "`view_building`, with `Retry-After`: the view's first batch version is not published yet", body = ErrorBody),
    )
)]
pub async fn query_get(
    State(state): State<AppState>,
    Path(ViewName { name }): Path<ViewName>,
    headers: HeaderMap,
    pairs: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(pairs) = pairs?;
    ask(&state, &name, QueryRequest::from_pairs(pairs)?, answer_format(&headers)?, Coding::accepted(&headers)).await
}

/// The answer's format from the request's `Accept`: Arrow when it names [`ARROW_STREAM`], else
/// CSV when it names [`CSV`], else JSON when it is absent or accepts JSON (`application/json`,
/// `application/*`, `*/*`), else 406.
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
    } else if accepts(&[CSV]) {
        Ok(Format::Csv)
    } else if accepts(&["application/json", "application/*", "*/*"]) {
        Ok(Format::Json)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            format!("an answer is application/json, {ARROW_STREAM} or {CSV}; the request's Accept allows none"),
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
        Format::Csv => "text/csv; charset=utf-8; header=present",
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
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Recompute every event day, not only those that changed since the version served.
    #[serde(default)]
    full: bool,
}

/// Start a batch run
///
/// Recomputes the view from the master dataset in the batch layer (sealed log segments are
/// compacted first) and publishes a new version; incremental (the event days that changed)
/// unless `{"full": true}`. Answers at once; `GET /v1/runs/{id}` tells how it went.
#[utoipa::path(post, path = "/v1/views/{name}/runs", operation_id = "start_run", tag = "runs",
    params(ViewName),
    request_body(content = Option<RunRequest>, description = "Optional; any content type"),
    responses(
        (status = 202, description = "Started, or the run already active", body = RunStarted),
        (status = 400, description = "`invalid_request`: not a run request", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn start_run(
    State(state): State<AppState>,
    Path(ViewName { name }): Path<ViewName>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<RunStarted>)> {
    let body = body?;
    let request: RunRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RunRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_request", format!("run request: {e}")))?
    };
    record(&state, &name).await?;
    let (run, _) = runner::trigger(&state, &name, Trigger::Manual, request.full).await?;
    Ok((StatusCode::ACCEPTED, Json(RunStarted { id: run.id, status: run.status })))
}

/// The keys of `GET /v1/views/{name}/runs`: how many runs at most, and for the next page, the
/// run id the page before ended with.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunsPage {
    /// How many runs at most, 1 to 1,000 (100 when absent).
    limit: Option<i64>,
    /// Runs older than this run id: the last id of the page before, for the next page.
    before: Option<i64>,
}

/// The most runs one page holds, and how many when `limit` is not given.
const RUNS_PAGE_MAX: i64 = 1000;
const RUNS_PAGE_DEFAULT: i64 = 100;

/// List a view's runs
#[utoipa::path(get, path = "/v1/views/{name}/runs", operation_id = "list_runs", tag = "runs",
    params(ViewName, RunsPage),
    responses(
        (status = 200, description = "Runs, newest first", body = RunList),
        (status = 400, description = "`invalid_query`: another key, or a value out of range", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn list_runs(
    State(state): State<AppState>,
    Path(ViewName { name }): Path<ViewName>,
    page: Result<Query<RunsPage>, QueryRejection>,
) -> ApiResult<Json<RunList>> {
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
    Ok(Json(RunList { runs: runs.iter().map(RunInfo::of).collect() }))
}

/// Show a run
#[utoipa::path(get, path = "/v1/runs/{id}", operation_id = "get_run", tag = "runs",
    params(("id" = i64, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run", body = RunInfo),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn get_run(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<RunInfo>> {
    let id: i64 = id.parse().map_err(|_| ApiError::not_found(format!("run {id:?}")))?;
    let run = state.env.catalog.run(id).await?.ok_or_else(|| ApiError::not_found(format!("run {id}")))?;
    Ok(Json(RunInfo::of(&run)))
}
