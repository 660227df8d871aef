use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use tandem_model::value::format_timestamp;
use tandem_model::{DatasetSpec, FieldType};

use super::DatasetName;
use super::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::app::{AppState, Dataset};

/// A dataset as the API shows it: its definition, when it was made, how many events it has
/// stored and how many of them the master dataset holds, and its log on disk. (Its
/// definition's fields are listed, not flattened from a [`DatasetSpec`], so that the
/// document's schema of an answer admits the extra keys while a definition sent admits no
/// unknown key.)
#[derive(Serialize, utoipa::ToSchema)]
#[schema(description = "A dataset: its definition, when it was made, how many events it has stored and how \
    many of them the master dataset holds, and its log on disk.")]
pub struct DatasetInfo {
    #[schema(example = "pageviews")]
    name: String,
    #[schema(example = "ts")]
    time_field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "event_id")]
    id_field: Option<String>,
    fields: BTreeMap<String, FieldType>,
    /// The fields added since it was made, oldest first: events stored before a field was
    /// added hold null there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(example = json!(["plan"]))]
    added_fields: Vec<String>,
    /// When it was made (RFC 3339).
    created_at: String,
    /// How many events it has stored (made durable; duplicates are not stored).
    events: u64,
    /// How many of them the master dataset holds: batch runs compact sealed log segments into
    /// it, so this trails `events` by the active segment and the sealed ones no run has
    /// compacted yet.
    compacted_events: u64,
    log: LogInfo,
    /// The views that read it, by name (a dataset is deleted only once none does).
    #[schema(example = json!(["by_country"]))]
    views: Vec<String>,
}

/// A dataset's log on disk.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LogInfo {
    /// Segment files: the active one, and the sealed ones `--log-retention` has not deleted.
    segments: usize,
    /// Their size in bytes.
    bytes: u64,
}

impl DatasetInfo {
    /// `dataset` with what the catalog says it has compacted, and its log as it is now.
    async fn read(state: &AppState, dataset: &Dataset, compacted_seq: u64) -> ApiResult<DatasetInfo> {
        let DatasetSpec { name, time_field, id_field, fields, added_fields } = dataset.record.spec.clone();
        let log = LogInfo::read(state, &name).await?;
        Ok(DatasetInfo {
            name,
            time_field,
            id_field,
            fields,
            added_fields,
            created_at: format_timestamp(dataset.record.created_at),
            events: dataset.writer.stored_events(),
            compacted_events: compacted_seq,
            log,
            views: state.views_of(&dataset.record.spec.name),
        })
    }
}

impl LogInfo {
    /// Lists the dataset's log directory, on a blocking thread.
    async fn read(state: &AppState, dataset: &str) -> ApiResult<LogInfo> {
        let dir = state.env.log_dir(dataset);
        let listed = tokio::task::spawn_blocking(move || {
            let segments = tandem_model::log::list_segments(&dir)?;
            // a segment deleted by retention meanwhile counts no bytes
            let bytes = segments.iter().filter_map(|s| std::fs::metadata(&s.path).ok()).map(|m| m.len()).sum();
            Ok::<_, tandem_model::log::LogError>(LogInfo { segments: segments.len(), bytes })
        });
        listed
            .await
            .map_err(|e| ApiError::internal("listing a log", e))?
            .map_err(|e| ApiError::internal("listing a log", e))
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DatasetList {
    datasets: Vec<DatasetInfo>,
}

/// Make a dataset
#[utoipa::path(post, path = "/v1/datasets", operation_id = "create_dataset", tag = "datasets",
    request_body = DatasetSpec,
    responses(
        (status = 201, description = "Made", body = DatasetInfo),
        (status = 400, description = "`invalid_dataset`: the definition is not valid; `invalid_request`: not a definition", body = ErrorBody),
        (status = 409, description = "`conflict`: a dataset of that name exists", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<DatasetSpec>,
) -> ApiResult<(StatusCode, Json<DatasetInfo>)> {
    let dataset = state.create_dataset(spec).await?;
    Ok((StatusCode::CREATED, Json(DatasetInfo::read(&state, &dataset, 0).await?)))
}

/// List the datasets
#[utoipa::path(get, path = "/v1/datasets", operation_id = "list_datasets", tag = "datasets",
    responses((status = 200, description = "Every dataset", body = DatasetList)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<DatasetList>> {
    let compacted: HashMap<String, u64> =
        state.env.catalog.datasets().await?.into_iter().map(|r| (r.spec.name, r.compacted_seq)).collect();
    let mut datasets = Vec::new();
    for dataset in state.datasets() {
        let Some(&compacted_seq) = compacted.get(&dataset.record.spec.name) else { continue }; // deleted meanwhile
        datasets.push(DatasetInfo::read(&state, &dataset, compacted_seq).await?);
    }
    Ok(Json(DatasetList { datasets }))
}

/// Show a dataset
#[utoipa::path(get, path = "/v1/datasets/{name}", operation_id = "get_dataset", tag = "datasets",
    params(DatasetName),
    responses(
        (status = 200, description = "The dataset", body = DatasetInfo),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Path(DatasetName { name }): Path<DatasetName>,
) -> ApiResult<Json<DatasetInfo>> {
    let not_found = || ApiError::not_found(format!("dataset {name:?}"));
    let dataset = state.dataset(&name).ok_or_else(not_found)?;
    let record = state.env.catalog.dataset(&name).await?.ok_or_else(not_found)?;
    Ok(Json(DatasetInfo::read(&state, &dataset, record.compacted_seq).await?))
}

/// What of a dataset may change once it is made: fields may be added.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(description = "What of a dataset may change once it is made: fields may be added. A key left out \
    changes nothing.")]
pub struct DatasetChange {
    /// Fields to add: name to type. Events stored before hold null in them; a field cannot be
    /// removed, retyped or made the time or id field.
    #[serde(default)]
    #[schema(example = json!({"plan": "string"}))]
    add_fields: Option<BTreeMap<String, FieldType>>,
}

/// Add fields to a dataset
#[utoipa::path(patch, path = "/v1/datasets/{name}", operation_id = "update_dataset", tag = "datasets",
    params(DatasetName),
    request_body = DatasetChange,
    responses(
        (status = 200, description = "The dataset as it now is: events sent from now on may hold the new fields", body = DatasetInfo),
        (status = 400, description = "`invalid_dataset`: a field exists already or has a bad name; `invalid_request`: another key, or not a type", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn update(
    State(state): State<AppState>,
    Path(DatasetName { name }): Path<DatasetName>,
    ApiJson(change): ApiJson<DatasetChange>,
) -> ApiResult<Json<DatasetInfo>> {
    if let Some(fields) = change.add_fields {
        state.add_fields(&name, &fields).await?;
    }
    get(State(state), Path(DatasetName { name })).await
}

/// Delete a dataset, its log and its master files
#[utoipa::path(delete, path = "/v1/datasets/{name}", operation_id = "delete_dataset", tag = "datasets",
    params(DatasetName),
    responses(
        (status = 204, description = "Deleted: its events, log and master files are gone"),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: views read it (named in the message); delete them first", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Path(DatasetName { name }): Path<DatasetName>,
) -> ApiResult<StatusCode> {
    state.delete_dataset(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
