//! Views: making, listing, showing, changing (the schedule) and deleting them. Their queries
//! are in [`super::queries`], their batch runs in [`super::runs`].

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tandem_batch::catalog::{RunRecord, Trigger, ViewRecord};
use tandem_model::value::format_timestamp;
use tandem_model::{Granularity, ViewSpec};

use super::ViewName;
use super::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use super::runs::RunInfo;
use crate::app::AppState;
use crate::runner;

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

/// The catalog's record of a view, or 404.
pub(super) async fn record(state: &AppState, name: &str) -> ApiResult<ViewRecord> {
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
