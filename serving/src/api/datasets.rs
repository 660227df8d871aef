use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use tandem_model::DatasetSpec;
use tandem_model::value::format_timestamp;

use super::error::{ApiError, ApiJson, ApiResult};
use crate::app::{AppState, Dataset};

/// A dataset as the API shows it: its spec, when it was made, and how many events it has
/// stored so far.
fn to_json(dataset: &Dataset) -> Value {
    let mut v = serde_json::to_value(&dataset.record.spec).expect("specs serialize");
    v["created_at"] = json!(format_timestamp(dataset.record.created_at));
    v["events"] = json!(dataset.writer.stored_events());
    v
}

pub async fn create(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<DatasetSpec>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let dataset = state.create_dataset(spec).await?;
    Ok((StatusCode::CREATED, Json(to_json(&dataset))))
}

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let datasets: Vec<Value> = state.datasets().iter().map(|d| to_json(d)).collect();
    Json(json!({ "datasets": datasets }))
}

pub async fn get(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let dataset = state.dataset(&name).ok_or_else(|| ApiError::not_found(format!("dataset {name:?}")))?;
    Ok(Json(to_json(&dataset)))
}

pub async fn delete(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    state.delete_dataset(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
