use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use std::collections::BTreeMap;

use tandem_model::value::format_timestamp;
use tandem_model::{DatasetSpec, FieldType};

use super::DatasetName;
use super::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::app::{AppState, Dataset};

/// A dataset as the API shows it: its definition, when it was made, and how many events it
/// has stored so far. (Its definition's fields are listed, not flattened from a
/// [`DatasetSpec`], so that the document's schema of an answer admits the two extra keys
/// while a definition sent admits no unknown key.)
#[derive(Serialize, utoipa::ToSchema)]
#[schema(description = "A dataset: its definition, when it was made, and how many events it has stored.")]
pub struct DatasetInfo {
    #[schema(example = "pageviews")]
    name: String,
    #[schema(example = "ts")]
    time_field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "event_id")]
    id_field: Option<String>,
    fields: BTreeMap<String, FieldType>,
    /// When it was made (RFC 3339).
    created_at: String,
    /// How many events it has stored (made durable; duplicates are not stored).
    events: u64,
}

impl DatasetInfo {
    fn of(dataset: &Dataset) -> DatasetInfo {
        let DatasetSpec { name, time_field, id_field, fields } = dataset.record.spec.clone();
        DatasetInfo {
            name,
            time_field,
            id_field,
            fields,
            created_at: format_timestamp(dataset.record.created_at),
            events: dataset.writer.stored_events(),
        }
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
    Ok((StatusCode::CREATED, Json(DatasetInfo::of(&dataset))))
}

/// List the datasets
#[utoipa::path(get, path = "/v1/datasets", operation_id = "list_datasets", tag = "datasets",
    responses((status = 200, description = "Every dataset", body = DatasetList)))]
pub async fn list(State(state): State<AppState>) -> Json<DatasetList> {
    Json(DatasetList { datasets: state.datasets().iter().map(|d| DatasetInfo::of(d)).collect() })
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
    let dataset = state.dataset(&name).ok_or_else(|| ApiError::not_found(format!("dataset {name:?}")))?;
    Ok(Json(DatasetInfo::of(&dataset)))
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
