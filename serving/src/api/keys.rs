//! API keys issued through the API: issuing one (its secret shown once), listing them,
//! deleting one. What a key may do and how a request's key is found: [`super::auth`].

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tandem_batch::catalog::KeyRecord;
use tandem_model::value::format_timestamp;

use super::auth::Scope;
use super::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::app::AppState;

/// What `POST /v1/keys` asks for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// The key's name, `[a-z][a-z0-9_]{0,62}`, to list and delete it by.
    #[schema(example = "grafana")]
    name: String,
    /// `all`, `read` (`GET`, and view queries by `POST`) or `ingest` (only sending events).
    scope: Scope,
    /// The datasets it is limited to: only their routes and those of the views reading them
    /// are open to it. Every dataset when absent.
    #[schema(example = json!(["pageviews"]))]
    datasets: Option<Vec<String>>,
}

/// An issued key as the API shows it (never its secret, which only `POST /v1/keys` answers).
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    #[schema(example = "grafana")]
    name: String,
    scope: Scope,
    /// The datasets it is limited to; null: every dataset.
    datasets: Option<Vec<String>>,
    /// RFC 3339.
    created_at: String,
}

impl KeyInfo {
    fn of(record: &KeyRecord) -> ApiResult<KeyInfo> {
        let scope = Scope::parse(&record.scope).ok_or_else(|| {
            ApiError::internal("reading an issued API key", format!("unknown scope {:?}", record.scope))
        })?;
        Ok(KeyInfo {
            name: record.name.clone(),
            scope,
            datasets: record.datasets.clone(),
            created_at: format_timestamp(record.created_at),
        })
    }
}

/// What `POST /v1/keys` answers: the key, and its secret, this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyIssued {
    #[serde(flatten)]
    info: KeyInfo,
    /// The secret to send as `Authorization: Bearer KEY`. Shown only here: the server keeps
    /// its SHA-256, not the key.
    #[schema(example = "tdk_3b9e0c...")]
    key: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyList {
    /// By name.
    keys: Vec<KeyInfo>,
}

/// The path of a key's route: `/v1/keys/{name}`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KeyName {
    /// The key's name.
    name: String,
}

/// Issue an API key
///
/// Records a new key of a scope, perhaps limited to some datasets, and answers its secret,
/// which is shown only here. It is taken at once and across restarts. Only on a server that
/// asks for keys (started with `--api-key`, or with keys issued before), and only with a key
/// of scope `all` limited to no dataset.
#[utoipa::path(post, path = "/v1/keys", operation_id = "issue_key", tag = "keys",
    request_body = KeyRequest,
    responses(
        (status = 201, description = "Issued: its secret is in `key`, this once", body = KeyIssued),
        (status = 400, description = "`invalid_key`: a bad name, or a dataset that does not exist; `invalid_request`: not a key request", body = ErrorBody),
        (status = 409, description = "`conflict`: a key of that name exists, or the server asks no key", body = ErrorBody),
    ))]
pub async fn issue(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<KeyRequest>,
) -> ApiResult<(StatusCode, Json<KeyIssued>)> {
    let (record, key) = state.issue_key(request.name, request.scope, request.datasets).await?;
    Ok((StatusCode::CREATED, Json(KeyIssued { info: KeyInfo::of(&record)?, key })))
}

/// List the issued API keys
///
/// The keys issued through the API (not those of the flags), without their secrets.
#[utoipa::path(get, path = "/v1/keys", operation_id = "list_keys", tag = "keys",
    responses((status = 200, description = "Every issued key, by name", body = KeyList)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<KeyList>> {
    let keys = state.env.catalog.keys().await?;
    Ok(Json(KeyList { keys: keys.iter().map(KeyInfo::of).collect::<ApiResult<_>>()? }))
}

/// Delete an API key
///
/// Requests with it are refused from now on (401).
#[utoipa::path(delete, path = "/v1/keys/{name}", operation_id = "delete_key", tag = "keys",
    params(KeyName),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: it is the last key that may manage keys", body = ErrorBody),
    ))]
pub async fn delete(State(state): State<AppState>, Path(KeyName { name }): Path<KeyName>) -> ApiResult<StatusCode> {
    state.delete_key(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
