//! Batch runs of a view: starting one, listing a view's, showing one.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tandem_batch::catalog::{RunRecord, Trigger};
use tandem_model::value::format_timestamp;

use super::ViewName;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::views::record;
use crate::app::AppState;
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
