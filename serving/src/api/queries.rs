//! View queries: the answer's format from `Accept`, where it is made (the async worker or a
//! blocking thread), its compression, and its sending. The merge itself is [`crate::query`].

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{ACCEPT, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tandem_model::Granularity;

use super::ViewName;
use super::coding::{COMPRESS_FROM, Coding, weighted};
use super::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::app::AppState;
use crate::query::{ARROW_STREAM, Answer, CSV, Format, QueryAnswer, QueryRequest, prepare};

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
