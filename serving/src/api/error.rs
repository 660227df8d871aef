//! The one error shape of the HTTP API and the one mapping from domain errors to statuses.
//!
//! Every error answers `{"error": {"code", "message", "details"}}`. Server-side failures are
//! logged with their cause and answered with a generic message.

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use tandem_batch::Error as BatchError;
use tandem_speed::writer::WriteError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<Value>,
    pub retry_after: Option<u32>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), details: Vec::new(), retry_after: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    pub fn payload_too_large() -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is larger than the configured limit",
        )
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u32) -> ApiError {
        ApiError { retry_after: Some(retry_after), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message) }
    }

    pub fn internal(context: &str, cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "{context}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{context}; see the server log"))
    }

    pub fn with_details(mut self, details: impl IntoIterator<Item = Value>) -> ApiError {
        self.details = details.into_iter().collect();
        self
    }

    /// A 400 listing each problem as a detail.
    pub fn invalid(code: &'static str, what: &str, problems: Vec<String>) -> ApiError {
        let message = format!("{what}: {}", problems.join("; "));
        ApiError::bad_request(code, message).with_details(problems.into_iter().map(|p| json!({ "message": p })))
    }
}

/// Every error's body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ErrorDetail {
    /// What went wrong, for programs: `invalid_events`, `not_found`, `overloaded`, ...
    #[schema(example = "not_found")]
    code: &'static str,
    /// What went wrong, for people.
    message: String,
    /// The problems one by one where there are several: for events, `{index, field, message}`
    /// (the first 100); for definitions, `{message}`.
    details: Vec<Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message, details: self.details } };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> ApiError {
        match e {
            BatchError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            BatchError::NotFound(what) => ApiError::not_found(what),
            BatchError::Catalog(e) => {
                tracing::error!(error = %e, "catalog unavailable");
                ApiError::unavailable("catalog_unavailable", "the metadata database is unavailable", 5)
            }
            other => ApiError::internal("batch layer error", other),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        match e {
            WriteError::Overloaded(..) => ApiError::unavailable("overloaded", format!("{e}; nothing was stored"), 1),
            e if e.is_disk_full() => {
                tracing::error!(error = %e, "ingest failed: the log's disk is full");
                ApiError {
                    retry_after: Some(30),
                    ..ApiError::new(
                        StatusCode::INSUFFICIENT_STORAGE,
                        "insufficient_storage",
                        "the disk holding the log is full; nothing was stored, retry once space is freed",
                    )
                }
            }
            e => {
                tracing::error!(error = %e, "ingest failed");
                ApiError::unavailable(
                    "log_unavailable",
                    "events could not be stored durably; nothing was stored, retry",
                    1,
                )
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected content-type application/json",
            ),
            JsonRejection::BytesRejection(b) => ApiError::from(b),
            other => ApiError::bad_request("invalid_request", other.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large()
        } else {
            ApiError::bad_request("invalid_request", r.body_text())
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request("invalid_query", r.body_text())
    }
}

/// `Json<T>` whose rejections answer in the API's error shape.
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        // no body at all, as `curl -X POST` sends, is an empty object (a query of every key's
        // default); a body without its content type is still refused
        use http_body::Body as _;
        if !req.headers().contains_key(header::CONTENT_TYPE) && req.body().size_hint().exact() == Some(0) {
            return serde_json::from_slice(b"{}")
                .map(ApiJson)
                .map_err(|e| ApiError::bad_request("invalid_request", format!("an empty body: {e}")));
        }
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}
