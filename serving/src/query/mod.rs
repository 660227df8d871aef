//! View queries: where the published batch version and the speed layer meet.
//!
//! [`answer`] is the one place the two layers are merged. Under the view's read lock it
//! takes the batch groups (events up to the watermark) and the speed groups (events after
//! it; see `tandem_speed::live` for why these never overlap), keeps the groups that pass the
//! query's time range and dimension filters, re-keys each to the query's granularity and
//! dimensions, and merges their states. Because states merge exactly (`avg` is kept as sum
//! and count, never as an average), the result equals one pass over all events.
//!
//! That fold is not redone for each query: the view keeps it per query shape, merged and up
//! to date (`tandem_speed::shapes`), and a query reads the rows its time range selects. Only
//! output buckets that the range cuts through are folded afresh. A query whose shape is kept
//! and whose range cuts no bucket does not lock the speed maps at all: it takes the events
//! folded since the last query and the counts its freshness reports as the writer left them
//! at the end of its last fold slice (`tandem_speed::live::Moment`), so it never waits for a
//! fold in progress.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tandem_model::agg::{GroupKey, Groups, MeasureState, merge_states};
use tandem_model::value::{format_timestamp, parse_timestamp};
use tandem_model::view::CompiledView;
use tandem_model::zone::Tz;
use tandem_model::{FieldType, Granularity, Value};
use tandem_speed::live::CutRows;
use tandem_speed::shapes::{Range, Shape};
use tandem_speed::{BatchSnapshot, LiveState, Moment, ViewLive};

pub use self::arrow::ARROW_STREAM;
use self::arrow::ArrowWriter;
use crate::api::error::ApiError;

mod arrow;

/// A query as the client sent it (JSON body, or query parameters turned into this).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(description = "A view query; every key is optional. With none, every bucket of every group at the \
    view's granularity.")]
pub struct QueryRequest {
    /// Start of the time range, inclusive (RFC 3339).
    #[schema(example = "2026-11-01T00:00:00Z")]
    pub from: Option<String>,
    /// End of the time range, exclusive (RFC 3339); not before `from`.
    #[schema(example = "2026-11-02T00:00:00Z")]
    pub to: Option<String>,
    /// The view's granularity (the default) or a coarser one.
    pub granularity: Option<Granularity>,
    /// A subset of the view's dimensions (all of them by default).
    pub group_by: Option<Vec<String>>,
    /// Dimension to the values it may take (IN-lists; null matches a missing value).
    #[schema(example = json!({"country": ["US", "DE"]}))]
    pub filter: Option<HashMap<String, Vec<Json>>>,
    /// Dimension to the values it may not take (NOT IN-lists; null excludes a missing value);
    /// with `filter` on the same dimension, a value must pass both.
    #[schema(example = json!({"country": ["US", null]}))]
    pub exclude: Option<HashMap<String, Vec<Json>>>,
    /// A subset of the view's measures (all of them by default).
    pub measures: Option<Vec<String>>,
    /// Sort keys, any returned column (`bucket`, a dimension, a measure); by bucket, then
    /// dimension values, when absent.
    pub order_by: Option<Vec<OrderBy>>,
    /// Measure to conditions its value must meet (`eq`, `ne`, `lt`, `lte`, `gt`, `gte`; all
    /// of them, as SQL's HAVING): rows that fail one are left out before sorting, `offset`
    /// and `limit`. A measure named here is one the answer returns; a null value meets no
    /// condition. Numbers for numeric measures, RFC 3339 for timestamps.
    #[schema(example = json!({"views": {"gte": 100}, "mean_ms": {"lt": 250.0}}))]
    pub having: Option<HashMap<String, HashMap<Comparison, Json>>>,
    /// At most this many rows (after sorting and `offset`).
    pub limit: Option<usize>,
    /// Rows to skip first (after sorting): with `limit`, a page of a long answer.
    pub offset: Option<usize>,
    /// The time zone whose clocks and calendar cut the buckets (IANA name; UTC by default):
    /// days, weeks and months as they are there, daylight-saving days included. A bucket is
    /// named by the local time it starts at, with the zone's offset then
    /// (`2026-11-01T00:00:00-04:00`; in Arrow, a timestamp in that zone). Only where the zone's offset is a whole
    /// number of the view's buckets (an hourly view answers most zones' days from 1900 on;
    /// a zone half an hour off UTC needs a view of minutes): else 400, saying from when on
    /// it is, so that `from` can be given.
    #[schema(example = "Europe/Berlin")]
    pub time_zone: Option<String>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderBy {
    pub field: String,
    /// Descending (ascending by default).
    #[serde(default)]
    pub desc: bool,
}

/// How a measure's value compares with a query's `having` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Comparison {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl Comparison {
    fn parse(text: &str) -> Option<Comparison> {
        serde_json::from_value(Json::String(text.to_string())).ok()
    }

    /// Whether `value` compares so with `than` (never for null).
    fn holds(self, value: &Value, than: &Value) -> bool {
        if matches!(value, Value::Null) {
            return false;
        }
        let order = value.total_cmp(than);
        match self {
            Comparison::Eq => order.is_eq(),
            Comparison::Ne => order.is_ne(),
            Comparison::Lt => order.is_lt(),
            Comparison::Lte => order.is_le(),
            Comparison::Gt => order.is_gt(),
            Comparison::Gte => order.is_ge(),
        }
    }
}

/// What an answer says about where its rows come from, in every answer (JSON: beside the
/// rows; Arrow: as JSON text in the schema's metadata).
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
#[schema(description = "Where an answer's rows come from: the batch version merged in, and the speed \
    layer's events past its watermark.")]
pub struct Freshness {
    /// The batch version merged in, if any.
    batch_version: Option<i64>,
    /// The last sequence number of the dataset that version covers.
    batch_watermark: Option<u64>,
    /// When that version's run finished (RFC 3339).
    batch_finished_at: Option<String>,
    /// Events past the watermark, merged from the speed layer.
    speed_events: u64,
    /// When the newest of them was acknowledged (RFC 3339).
    speed_newest_ingest_at: Option<String>,
    /// Speed-layer events whose day the batch version already holds (each makes that day dirty
    /// for the next run).
    late_events: u64,
}

/// A JSON answer, as [`Format::Json`] writes it (by hand, from the rows' kept text: this type
/// only describes it, in the API's document; the end-to-end suite checks answers against it).
#[derive(utoipa::ToSchema)]
#[schema(description = "A query's answer: its rows, and where they come from.")]
#[allow(dead_code)]
pub struct QueryAnswer {
    /// One object a group and bucket: `bucket` (RFC 3339; absent for granularity `all`), the
    /// grouped dimensions, the measures asked for. count, count(f), approx_distinct and sum of
    /// int64 are integers; avg, approx_percentile and sum of float64 floats; min and max keep
    /// their field's type; a measure over no values is null (count: 0).
    #[schema(example = json!([{"bucket": "2026-11-01T10:00:00Z", "country": "US", "views": 2}]))]
    rows: Vec<HashMap<String, Json>>,
    freshness: Freshness,
}

impl QueryRequest {
    /// Reads the query-string form: `from`, `to`, `granularity`, `time_zone`, `group_by=a,b`,
    /// `measures=a,b`, `filter=dim:v1,v2` and `exclude=dim:v1,v2` (repeatable),
    /// `having=measure:op:value` (repeatable), `order_by=-m,dim`, `limit`, `offset`.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<QueryRequest, ApiError> {
        let mut q = QueryRequest::default();
        let list = |v: &str| v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect::<Vec<_>>();
        for (key, value) in pairs {
            match key.as_str() {
                "from" => q.from = Some(value),
                "to" => q.to = Some(value),
                "granularity" => {
                    q.granularity = Some(
                        Granularity::parse(&value).ok_or_else(|| invalid(format!("unknown granularity {value:?}")))?,
                    )
                }
                "group_by" => q.group_by = Some(list(&value)),
                "measures" => q.measures = Some(list(&value)),
                "filter" | "exclude" => {
                    let (dim, values) = value
                        .split_once(':')
                        .ok_or_else(|| invalid(format!("{key} {value:?} is not dim:value,value")))?;
                    let lists = if key == "filter" { &mut q.filter } else { &mut q.exclude };
                    lists
                        .get_or_insert_with(HashMap::new)
                        .entry(dim.to_string())
                        .or_default()
                        .extend(list(values).into_iter().map(Json::String));
                }
                "having" => {
                    let mut parts = value.splitn(3, ':');
                    let (Some(measure), Some(op), Some(than)) = (parts.next(), parts.next(), parts.next()) else {
                        return Err(invalid(format!("having {value:?} is not measure:op:value")));
                    };
                    let op = Comparison::parse(op).ok_or_else(|| {
                        invalid(format!("having {value:?}: {op:?} is not one of eq, ne, lt, lte, gt, gte"))
                    })?;
                    let conditions = q.having.get_or_insert_with(HashMap::new).entry(measure.to_string()).or_default();
                    conditions.insert(op, Json::String(than.to_string()));
                }
                "order_by" => {
                    q.order_by = Some(
                        list(&value)
                            .into_iter()
                            .map(|f| match f.strip_prefix('-') {
                                Some(name) => OrderBy { field: name.to_string(), desc: true },
                                None => OrderBy { field: f, desc: false },
                            })
                            .collect(),
                    )
                }
                "limit" => {
                    q.limit = Some(value.parse().map_err(|_| invalid(format!("limit {value:?} is not a count")))?)
                }
                "time_zone" => q.time_zone = Some(value),
                "offset" => {
                    q.offset = Some(value.parse().map_err(|_| invalid(format!("offset {value:?} is not a count")))?)
                }
                other => return Err(invalid(format!("unknown query key {other:?}"))),
            }
        }
        Ok(q)
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_query", message)
}

/// A query checked against its view.
#[derive(Clone)]
struct Plan {
    from: Option<i64>,
    to: Option<i64>,
    /// Granularity, grouping, filters and measures.
    shape: Shape,
    order: Vec<(Column, bool)>,
    /// `having`: the returned measure (by its place among them), compared so with the value.
    having: Vec<(usize, Comparison, Value)>,
    limit: Option<usize>,
    /// Rows skipped before the first returned (0: none).
    offset: usize,
}

impl Plan {
    /// Whether a row of these measure values meets the query's `having`.
    fn keeps(&self, values: &[Value]) -> bool {
        self.having.iter().all(|(m, op, than)| op.holds(&values[*m], than))
    }

    /// How many rows in order the answer needs: the ones `offset` skips and the `limit`.
    fn end(&self) -> Option<usize> {
        self.limit.map(|limit| limit.saturating_add(self.offset))
    }
}

/// An answer's columns, in order, each with its name and its type in an answer: a bucket when
/// rows have one (every granularity but `all`), the grouped dimensions, the measures.
struct Columns<'v> {
    bucket: bool,
    /// The time zone the bucket is written in (`None`: UTC, with a `Z`).
    zone: Option<Tz>,
    dims: Vec<(&'v str, FieldType)>,
    measures: Vec<(&'v str, FieldType)>,
}

impl Columns<'_> {
    /// The time zone the bucket column is in, if the rows have one.
    fn bucket_zone(&self) -> Option<&'static str> {
        self.bucket.then(|| self.zone.map_or("UTC", |zone| zone.name()))
    }
}

impl Plan {
    fn columns<'v>(&self, view: &'v CompiledView) -> Columns<'v> {
        let shape = &self.shape;
        let measure = |m: usize| &view.measures[m].0;
        Columns {
            bucket: shape.granularity != Granularity::All,
            zone: shape.zone,
            dims: shape.group.iter().map(|&g| (view.spec.dimensions[g].as_str(), view.dimension_types[g])).collect(),
            measures: shape.measures.iter().map(|&m| (measure(m).name.as_str(), measure(m).value_type())).collect(),
        }
    }
}

/// Where an output bucket lies relative to `[from, to)`, judged by the view's buckets in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    Whole,
    Outside,
    /// Some of its view buckets are in the range and some are not.
    Edge,
}

impl Plan {
    /// Where the output bucket starting at `bucket` lies, for a view of granularity `view`.
    fn span(&self, view: Granularity, bucket: i64) -> Span {
        if self.from.is_none() && self.to.is_none() {
            return Span::Whole;
        }
        let (Some(end), Some(view_width)) = (self.shape.bucket_end(bucket), view.width()) else {
            return Span::Edge; // one bucket for all time, and a range
        };
        let last = end - view_width; // the last view bucket inside
        let after_from = |b: i64| self.from.is_none_or(|f| b >= f);
        let before_to = |b: i64| self.to.is_none_or(|t| b < t);
        if after_from(bucket) && before_to(last) {
            Span::Whole
        } else if !after_from(last) || !before_to(bucket) {
            Span::Outside
        } else {
            Span::Edge
        }
    }

    /// The output buckets `[from, to)` cuts through (only those holding `from` or the end of
    /// the range can be), each as the range `[start, end)` of view buckets it holds. One
    /// bucket for all time is cut by any range, and holds every view bucket.
    fn cut_buckets(&self, view: Granularity) -> Vec<(i64, i64)> {
        if self.shape.granularity == Granularity::All {
            let ranged = self.from.is_some() || self.to.is_some();
            return if ranged { vec![(i64::MIN, i64::MAX)] } else { Vec::new() };
        }
        let mut cut: Vec<(i64, i64)> = [self.from, self.to.map(|t| t - 1)]
            .into_iter()
            .flatten()
            .map(|t| self.shape.bucket_of(t))
            .filter(|&bucket| self.span(view, bucket) == Span::Edge)
            .filter_map(|bucket| Some((bucket, self.shape.bucket_end(bucket)?)))
            .collect();
        cut.dedup();
        cut
    }

    fn range(&self) -> Range {
        (self.from, self.to)
    }

    /// The part of each cut bucket (see [`cut_buckets`](Self::cut_buckets)) in the range, as
    /// the view buckets `[from, to)` it holds, both view bucket starts (so that ranges that
    /// select the same view buckets are one).
    fn cut_ranges<'c>(&self, view: Granularity, cut: &'c [(i64, i64)]) -> impl Iterator<Item = (i64, i64)> + 'c {
        let width = view.width().expect("a view's buckets have a width");
        // the first view bucket starting at or after `t`
        let up = move |t: i64| {
            t.div_euclid(width).saturating_mul(width).saturating_add(if t.rem_euclid(width) > 0 { width } else { 0 })
        };
        let (from, to) = (self.from.map(up), self.to.map(up));
        cut.iter().map(move |&(start, end)| (from.map_or(start, |f| f.max(start)), to.map_or(end, |t| t.min(end))))
    }
}

#[derive(Clone, Copy)]
enum Column {
    Bucket,
    Dim(usize),
    Measure(usize),
}

fn plan(view: &CompiledView, q: QueryRequest) -> Result<Plan, ApiError> {
    let time = |t: &Option<String>, key: &str| -> Result<Option<i64>, ApiError> {
        t.as_ref()
            .map(|s| parse_timestamp(s).ok_or_else(|| invalid(format!("{key} {s:?} is not an RFC 3339 time"))))
            .transpose()
    };
    let dims = &view.spec.dimensions;
    let dim_pos = |d: &str| {
        dims.iter()
            .position(|x| x == d)
            .ok_or_else(|| invalid(format!("{d:?} is not a dimension of view {:?}", view.spec.name)))
    };
    let granularity = q.granularity.unwrap_or(view.spec.granularity);
    if granularity < view.spec.granularity {
        return Err(invalid(
            format!("granularity {granularity:?} is finer than the view's {:?}", view.spec.granularity).to_lowercase(),
        ));
    }
    let group = match &q.group_by {
        Some(g) => g.iter().map(|d| dim_pos(d)).collect::<Result<Vec<_>, _>>()?,
        None => (0..dims.len()).collect(),
    };
    // each list of `filter` and `exclude` by dimension position, its values typed
    let lists = |lists: Option<HashMap<String, Vec<Json>>>, key: &str| -> Result<Vec<(usize, Vec<Value>)>, ApiError> {
        let mut typed = Vec::new();
        for (dim, values) in lists.unwrap_or_default() {
            let pos = dim_pos(&dim)?;
            let ty = view.dimension_types[pos];
            let values = values
                .iter()
                .map(|v| {
                    filter_value(ty, v)
                        .ok_or_else(|| invalid(format!("{key} value {v} does not fit dimension {dim:?} ({ty:?})")))
                })
                .collect::<Result<_, _>>()?;
            typed.push((pos, values));
        }
        Ok(typed)
    };
    let (filters, excluded) = (lists(q.filter, "filter")?, lists(q.exclude, "exclude")?);
    let measure_names: Vec<&str> = view.measures.iter().map(|(m, _)| m.name.as_str()).collect();
    let measures = match &q.measures {
        Some(ms) => ms
            .iter()
            .map(|m| {
                measure_names
                    .iter()
                    .position(|x| x == m)
                    .ok_or_else(|| invalid(format!("{m:?} is not a measure of view {:?}", view.spec.name)))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => (0..measure_names.len()).collect(),
    };
    let mut order = Vec::new();
    for o in q.order_by.unwrap_or_default() {
        let column = if o.field == "bucket" && granularity != Granularity::All {
            Column::Bucket
        } else if let Some(i) = group.iter().position(|&g| dims[g] == o.field) {
            Column::Dim(i)
        } else if let Some(i) = measures.iter().position(|&m| measure_names[m] == o.field) {
            Column::Measure(i)
        } else {
            return Err(invalid(format!("cannot order by {:?}: it is not a returned column", o.field)));
        };
        order.push((column, o.desc));
    }
    let mut having = Vec::new();
    for (name, conditions) in q.having.unwrap_or_default() {
        let Some(m) = measure_names.iter().position(|x| *x == name) else {
            return Err(invalid(format!("having: {name:?} is not a measure of view {:?}", view.spec.name)));
        };
        let returned = measures
            .iter()
            .position(|&x| x == m)
            .ok_or_else(|| invalid(format!("having: measure {name:?} is not returned (add it to measures)")))?;
        let ty = view.measures[m].0.value_type();
        for (op, than) in conditions {
            let than = having_value(ty, &than)
                .ok_or_else(|| invalid(format!("having: measure {name:?} ({ty:?}) cannot be compared with {than}")))?;
            having.push((returned, op, than));
        }
    }
    let (from, to) = (time(&q.from, "from")?, time(&q.to, "to")?);
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(invalid("from is after to: the range is [from, to)"));
    }
    let zone = q.time_zone.as_deref().map(tandem_model::zone::parse).transpose().map_err(invalid)?.flatten();
    let zone = zone.filter(|_| granularity != Granularity::All); // one bucket, whatever the clocks
    if let (Some(zone), Some(width)) = (zone, view.spec.granularity.width()) {
        tandem_model::zone::check_aligned(zone, width, from, to).map_err(invalid)?;
    }
    let shape = Shape::new(granularity, group, filters, measures).excluding(excluded).in_zone(zone);
    Ok(Plan { from, to, shape, order, having, limit: q.limit, offset: q.offset.unwrap_or(0) })
}

/// A `having` value for a measure of type `ty` (from a JSON body, or text from a query
/// string), never null: any number for a numeric measure (an integer count may be compared
/// with 2.5), RFC 3339 for a timestamp, strings and booleans as a filter reads them.
fn having_value(ty: FieldType, v: &Json) -> Option<Value> {
    let number = |n: &serde_json::Number| n.as_i64().map(Value::Int).or_else(|| n.as_f64().map(Value::Float));
    match (ty, v) {
        (_, Json::Null) => None,
        (FieldType::Int64 | FieldType::Float64, Json::Number(n)) => number(n),
        (FieldType::Int64 | FieldType::Float64, Json::String(s)) => s.parse().ok().as_ref().and_then(number),
        (FieldType::Timestamp, Json::String(s)) => parse_timestamp(s).map(Value::Timestamp),
        (FieldType::String | FieldType::Bool, _) => filter_value(ty, v),
        _ => None,
    }
}

fn filter_value(ty: FieldType, v: &Json) -> Option<Value> {
    match (ty, v) {
        (FieldType::String, Json::String(s)) => Some(Value::String(s.as_str().into())),
        (FieldType::Int64, Json::Number(n)) => n.as_i64().map(Value::Int),
        (FieldType::Int64, Json::String(s)) => s.parse().ok().map(Value::Int),
        (FieldType::Bool, Json::Bool(b)) => Some(Value::Bool(*b)),
        (FieldType::Bool, Json::String(s)) => s.parse().ok().map(Value::Bool),
        (_, Json::Null) => Some(Value::Null),
        _ => None,
    }
}

/// Answers a query from the view's batch version merged with its speed layer, as the JSON
/// body `{"rows": [{"bucket", dimensions.., measures..}, ..], "freshness": {..}}`.
///
/// Output buckets wholly inside `[from, to)` are read from the view's kept rows for the
/// query's shape (batch and speed merged, up to date). The at most two output buckets the
/// range cuts through are folded afresh from the version's groups and the speed groups. Kept
/// rows come in answer order and are referred to, never copied; each is written as its kept
/// text, made again only once an event reached the row (see
/// [`tandem_speed::shapes::Merged::fresh`]), and without `order_by` or `limit` each whole
/// bucket's rows as their kept blocks of text, which the answer shares (see [`Answer`]). An
/// Arrow answer ([`Format::Arrow`]) holds the same rows, read from the same kept rows.
pub fn answer(live: &ViewLive, request: QueryRequest) -> Result<Answer, ApiError> {
    prepare(live, request)?.answer(live, Format::Json)
}

/// What an answer is written as. Each holds the same rows, in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"rows": [{"bucket", dimensions.., measures..}, ..], "freshness": {..}}`.
    Json,
    /// An Arrow IPC stream ([`ARROW_STREAM`]): the schema, then the rows in record batches
    /// (see `tandem_model::columnar::AnswerColumns`: a `bucket` timestamp column when rows
    /// have one, then the dimensions and measures, typed; how they are cut: `arrow`), with
    /// the freshness object as JSON text in the schema's metadata under `freshness`. Fewer
    /// bytes than JSON, and read by pyarrow, polars or DuckDB without parsing text.
    Arrow,
    /// CSV ([`CSV`], RFC 4180): a header of the column names (`bucket` when rows have one, the
    /// dimensions, the measures), then a record a row, values as in JSON (a bucket or timestamp
    /// in RFC 3339), an empty field for null. No freshness: for spreadsheets and `COPY`.
    Csv,
}

/// The media type of a CSV answer.
pub const CSV: &str = "text/csv";

/// A query checked against its view, to be answered.
pub struct Prepared(Plan);

/// A light answer (see [`Prepared::is_light`]) reads a kept shape of at most this many rows...
const LIGHT_ROWS: usize = 10_000;
/// ...after folding at most this many events into it.
const LIGHT_EVENTS: usize = 2_000;

pub fn prepare(live: &ViewLive, request: QueryRequest) -> Result<Prepared, ApiError> {
    plan(&live.view, request).map(Prepared)
}

impl Prepared {
    /// Whether answering takes about as little CPU as decoding an ingest request (well under
    /// a millisecond), so that it may run on the async worker that received it: its shape is
    /// kept, not large, and nearly caught up, and its range cuts no bucket (which folds the
    /// cut buckets afresh). A heavier answer runs on a blocking thread,
    /// whose wake-up cost a light query 0.4 ms under ingest (session 23).
    pub fn is_light(&self, live: &ViewLive) -> bool {
        self.0.cut_buckets(live.view.spec.granularity).is_empty()
            && live.is_light(&self.0.shape, LIGHT_ROWS, LIGHT_EVENTS)
    }

    pub fn answer(self, live: &ViewLive, format: Format) -> Result<Answer, ApiError> {
        answer_plan(live, self.0, format)
    }
}

fn answer_plan(live: &ViewLive, plan: Plan, format: Format) -> Result<Answer, ApiError> {
    let view = &live.view;
    let span = |bucket: i64| plan.span(view.spec.granularity, bucket);
    let cut = plan.cut_buckets(view.spec.granularity);
    let cuts = !cut.is_empty();
    // (a view bucket lies in the output bucket holding it: no conversion by a zone's clocks)
    let on_edge = |key: &&GroupKey| cut.iter().any(|&(from, to)| (from..to).contains(&key.bucket));
    // the freshness of an answer from `moment`, or why there is none yet
    let freshness = |moment: &Moment| {
        if !moment.is_ready() {
            return Err(ApiError::unavailable(
                "view_building",
                format!("view {:?} is building its first batch version", view.spec.name),
                5,
            ));
        }
        Ok(Freshness {
            batch_version: moment.batch.as_ref().map(|b| b.version),
            batch_watermark: moment.batch.as_ref().map(|b| b.watermark),
            batch_finished_at: moment.batch.as_ref().and_then(|b| b.finished_at.clone()),
            speed_events: moment.speed_events,
            speed_newest_ingest_at: moment.newest_ingest.map(format_timestamp),
            late_events: moment.late_events,
        })
    };
    // the speed groups on the cut buckets (under the view's lock), if it may hold any
    let speed_edges = |state: &LiveState| {
        let mut speed_edges = Groups::default();
        if !cut.iter().any(|&(from, to)| state.may_hold(from, to)) {
            return speed_edges;
        }
        for segment in state.segments.values() {
            plan.shape.fold(plan.range(), segment.groups.iter().filter(|(k, _)| on_edge(k)), &mut speed_edges);
        }
        speed_edges
    };
    // the cut buckets: the version's groups on them, merged with the speed layer's; from the
    // version alone (its rows of each cut range kept, see `BatchSnapshot::cut_rows`) when the
    // speed layer holds nothing there, as for a cut that lies days back
    let edges = |batch: Option<&BatchSnapshot>, mut speed_edges: Groups| -> Vec<Arc<CutRows>> {
        if !cuts {
            return Vec::new();
        }
        if let Some(batch) = batch
            && speed_edges.is_empty()
        {
            return plan
                .cut_ranges(view.spec.granularity, &cut)
                .map(|(from, to)| batch.cut_rows(&plan.shape, from, to))
                .collect();
        }
        let mut edges = Groups::default();
        if let Some(batch) = batch {
            for &(from, to) in &cut {
                plan.shape.fold(plan.range(), batch.groups_in(from, to).filter(|(k, _)| on_edge(k)), &mut edges);
            }
        }
        let mut rows = Vec::with_capacity(edges.len() + speed_edges.len());
        for (key, mut states) in edges {
            if let Some(recent) = speed_edges.remove(&key) {
                merge_states(&mut states, &recent);
            }
            rows.push((key, states.iter().map(MeasureState::value).collect()));
        }
        rows.extend(
            speed_edges.into_iter().map(|(key, states)| (key, states.iter().map(MeasureState::value).collect())),
        );
        vec![Arc::new(rows)]
    };
    let writer = || RowWriter::new(&plan.columns(view));
    // one bucket for all time, and a range: every row is an edge, so a kept shape would
    // never be read (and would still have every delta merged into it)
    if plan.shape.granularity == Granularity::All && cuts {
        let (moment, speed_edges) = live.read(|state| (state.moment(), speed_edges(state)));
        let freshness = freshness(&moment)?;
        let edges = edges(moment.batch.as_deref(), speed_edges);
        let rows = in_order(&plan, Vec::new(), edge_rows(&edges));
        rows_answer(plan.columns(view), format, rows, &freshness)
    } else {
        live.query(&plan.shape, cuts.then_some(speed_edges), |moment, speed_edges, merged| {
            let freshness = freshness(moment)?;
            let edges = edges(moment.batch.as_deref(), speed_edges);
            let whole = |bucket: i64| span(bucket) == Span::Whole;
            merged.keep_render(|| {
                let mut render = writer();
                Box::new(move |key, values, out| render.write(out, key, values))
            });
            // CSV is written from the rows, not from the kept JSON text or Arrow batches
            let chosen = !plan.order.is_empty() || !plan.having.is_empty() || plan.limit.is_some() || plan.offset > 0;
            if chosen || format == Format::Csv {
                let fresh = merged.fresh(whole);
                let kept = fresh.rows().map(|(k, v, t)| (k, v, Some(t))).collect();
                let rows = in_order(&plan, kept, edge_rows(&edges));
                return rows_answer(plan.columns(view), format, rows, &freshness);
            }
            // in bucket order: each whole bucket as its kept blocks of text (or kept Arrow
            // batches), the edge rows (in buckets of their own) between them
            let mut edges = edge_rows(&edges);
            edges.sort_unstable_by(|a, b| a.0.total_cmp(b.0));
            if format == Format::Arrow {
                let arrow = ArrowWriter::new(plan.columns(view));
                let blocks = merged.encoded(whole, &arrow)?;
                let mut edges = edges.as_slice();
                let mut before = Vec::with_capacity(blocks.len() + 1);
                for (start, _) in &blocks {
                    let (these, rest) = edges.split_at(edges.partition_point(|edge| edge.0.bucket < *start));
                    before.push(these);
                    edges = rest;
                }
                before.push(edges);
                return arrow.answer(&freshness, before, blocks.into_iter().map(|(_, block)| block));
            }
            let mut body = Body::new(writer(), edges.len());
            let fresh = merged.fresh(whole);
            let mut edges = edges.into_iter().peekable();
            for bucket in fresh.buckets() {
                while let Some(edge) = edges.next_if(|edge| edge.0.bucket < bucket.start) {
                    body.row(edge);
                }
                bucket.blocks().for_each(|block| body.block(block));
            }
            edges.for_each(|edge| body.row(edge));
            body.finish(&freshness)
        })
    }
}

/// An answer of `rows` (each kept row's JSON text reused), in `format`.
fn rows_answer(
    columns: Columns,
    format: Format,
    rows: Vec<OutRow<'_>>,
    freshness: &Freshness,
) -> Result<Answer, ApiError> {
    match format {
        Format::Arrow => return ArrowWriter::new(columns).answer(freshness, [rows.as_slice()], []),
        Format::Csv => return csv_answer(&columns, &rows),
        Format::Json => {}
    }
    let mut body = Body::new(RowWriter::new(&columns), rows.len());
    rows.into_iter().for_each(|row| body.row(row));
    body.finish(freshness)
}

/// An answer of `rows` as CSV (see [`Format::Csv`]).
fn csv_answer(columns: &Columns, rows: &[OutRow<'_>]) -> Result<Answer, ApiError> {
    let failed = |e: csv::Error| ApiError::internal("writing a CSV answer", e);
    let mut out = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::with_capacity(64 * (rows.len() + 1)));
    let names = columns.dims.iter().chain(&columns.measures).map(|(name, _)| *name);
    out.write_record(columns.bucket.then_some("bucket").into_iter().chain(names)).map_err(failed)?;
    for (key, values, _) in rows {
        let bucket = Value::String(tandem_model::zone::format(key.bucket, columns.zone).into());
        let record: Vec<&Value> =
            columns.bucket.then_some(&bucket).into_iter().chain(&key.dims).chain(values.iter()).collect();
        out.serialize(&record).map_err(failed)?;
    }
    let bytes = out.into_inner().map_err(|e| ApiError::internal("writing a CSV answer", e.error()))?;
    Ok(Answer { pieces: vec![Bytes::from(bytes)] })
}

/// An answer's bytes, in pieces. In JSON, each kept block of rows as the shape keeps it
/// (shared, not copied), the rest in pieces written for this answer (a 30-day answer of 24 k
/// rows is 4 MB, which the server used to copy into one buffer, twice, with the blocks, and
/// take fresh pages for); in Arrow, the schema, each kept record batch (shared, not copied) and
/// the batches encoded for this answer.
pub struct Answer {
    pieces: Vec<Bytes>,
}

impl Answer {
    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    /// The bytes in one piece.
    pub fn to_vec(&self) -> Vec<u8> {
        self.pieces.concat()
    }

    pub(crate) fn into_pieces(self) -> Vec<Bytes> {
        self.pieces
    }
}

/// An answer's JSON body as it is written: `{"rows":[` rows `],"freshness":` .. `}`.
struct Body {
    /// The pieces written so far (see [`Answer`]).
    pieces: Vec<Bytes>,
    /// The text written since the last piece.
    out: Vec<u8>,
    render: RowWriter,
    /// No row written yet.
    first: bool,
}

impl Body {
    /// For about `rows` rows written row by row, so that writing them does not copy the
    /// text as it grows.
    fn new(render: RowWriter, rows: usize) -> Body {
        let columns = render.dims.len() + render.measures.len() + 1;
        let mut out = Vec::with_capacity(256 + rows * columns * 24);
        out.extend_from_slice(b"{\"rows\":[");
        Body { pieces: Vec::new(), out, render, first: true }
    }

    /// Writes a row: a kept row as its kept text, any other afresh.
    fn row(&mut self, (key, values, text): OutRow<'_>) {
        self.separate();
        match text {
            Some(text) => self.out.extend_from_slice(text),
            None => self.render.write(&mut self.out, key, values),
        }
    }

    /// Sends a kept block of rows, each preceded by a comma, as a piece of its own.
    fn block(&mut self, block: &Bytes) {
        if block.is_empty() {
            return;
        }
        if !self.out.is_empty() {
            self.pieces.push(Bytes::from(std::mem::take(&mut self.out)));
        }
        self.pieces.push(if std::mem::take(&mut self.first) { block.slice(1..) } else { block.clone() });
    }

    fn separate(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
    }

    fn finish(mut self, freshness: &Freshness) -> Result<Answer, ApiError> {
        self.out.extend_from_slice(b"],\"freshness\":");
        serde_json::to_writer(&mut self.out, freshness).map_err(|e| ApiError::internal("writing an answer", e))?;
        self.out.push(b'}');
        self.pieces.push(Bytes::from(self.out));
        Ok(Answer { pieces: self.pieces })
    }
}

/// Edge rows (folded for this answer) as rows of an answer.
fn edge_rows(edges: &[Arc<CutRows>]) -> Vec<OutRow<'_>> {
    edges.iter().flat_map(|rows| rows.iter()).map(|(key, values)| (key, values.as_slice(), None)).collect()
}

/// A row of an answer: its key and measure values, and for a kept row its text, kept.
type OutRow<'a> = (&'a GroupKey, &'a [Value], Option<&'a [u8]>);

/// The rows that meet the query's `having`, in its order, past the first `offset`, the first
/// `limit` of them. `kept`
/// come in bucket and dimension order (see [`tandem_speed::shapes::Fresh::rows`]), so without
/// an `order_by` the few edge rows are merged into them rather than all sorted.
fn in_order<'a>(plan: &Plan, mut kept: Vec<OutRow<'a>>, mut edges: Vec<OutRow<'a>>) -> Vec<OutRow<'a>> {
    if !plan.having.is_empty() {
        kept.retain(|row| plan.keeps(row.1));
        edges.retain(|row| plan.keeps(row.1));
    }
    let mut rows = if plan.order.is_empty() {
        let mut rows = merged_in_order(kept, edges);
        rows.truncate(plan.end().unwrap_or(usize::MAX));
        rows
    } else {
        let mut rows = kept;
        rows.extend(edges);
        sort_and_limit(plan, &mut rows);
        rows
    };
    rows.drain(..plan.offset.min(rows.len()));
    rows
}

/// `kept` (in bucket and dimension order) with `edges` merged into them in that order.
fn merged_in_order<'a>(kept: Vec<OutRow<'a>>, mut edges: Vec<OutRow<'a>>) -> Vec<OutRow<'a>> {
    edges.sort_unstable_by(|a, b| a.0.total_cmp(b.0));
    let mut edges = edges.into_iter().peekable();
    let mut rows = Vec::with_capacity(kept.len() + edges.len());
    for row in kept {
        while let Some(edge) = edges.next_if(|edge| edge.0.total_cmp(row.0).is_lt()) {
            rows.push(edge);
        }
        rows.push(row);
    }
    rows.extend(edges);
    rows
}

/// Orders rows by the query's `order_by`, then by bucket and dimensions (so the order is
/// total: no two rows share a bucket and dimensions), and keeps the first `offset` + `limit`.
fn sort_and_limit(plan: &Plan, rows: &mut Vec<OutRow<'_>>) {
    let order = |(ka, sa, _): &OutRow<'_>, (kb, sb, _): &OutRow<'_>| {
        for (column, desc) in &plan.order {
            let o = match column {
                Column::Bucket => ka.bucket.cmp(&kb.bucket),
                Column::Dim(i) => ka.dims[*i].total_cmp(&kb.dims[*i]),
                Column::Measure(i) => sa[*i].total_cmp(&sb[*i]),
            };
            let o = if *desc { o.reverse() } else { o };
            if o.is_ne() {
                return o;
            }
        }
        ka.total_cmp(kb)
    };
    match plan.end() {
        // the first `limit` in order, without sorting the rest
        Some(limit) if limit < rows.len() => {
            if limit > 0 {
                rows.select_nth_unstable_by(limit - 1, order);
            }
            rows.truncate(limit);
            rows.sort_unstable_by(order);
        }
        _ => rows.sort_unstable_by(order),
    }
}

/// Writes rows of an answer as JSON objects: `{"bucket", dimensions.., measures..}`, each
/// value as serde_json writes it, the keys from text made once per answer.
struct RowWriter {
    /// Each column's key as it precedes its value (`{"bucket":`, `,"country":`, ..): the
    /// bucket's when rows have one (every granularity but `all`), the dimensions', the
    /// measures'.
    bucket: Option<Vec<u8>>,
    /// The time zone buckets are written in (`None`: UTC).
    zone: Option<Tz>,
    dims: Vec<Vec<u8>>,
    measures: Vec<Vec<u8>>,
    /// The bucket last written and its JSON text: rows come mostly in bucket order, so each
    /// bucket's time is formatted about once.
    last_bucket: (i64, Vec<u8>),
}

impl RowWriter {
    fn new(columns: &Columns) -> RowWriter {
        let mut first = true;
        let mut key = |name: &str| {
            let mut text = vec![if std::mem::take(&mut first) { b'{' } else { b',' }];
            write_json(&mut text, name);
            text.push(b':');
            text
        };
        RowWriter {
            bucket: columns.bucket.then(|| key("bucket")),
            zone: columns.zone,
            dims: columns.dims.iter().map(|(name, _)| key(name)).collect(),
            measures: columns.measures.iter().map(|(name, _)| key(name)).collect(),
            last_bucket: (i64::MIN, Vec::new()),
        }
    }

    fn write(&mut self, out: &mut Vec<u8>, key: &GroupKey, values: &[Value]) {
        let start = out.len();
        if let Some(prefix) = &self.bucket {
            if self.last_bucket.0 != key.bucket {
                self.last_bucket.0 = key.bucket;
                self.last_bucket.1.clear();
                write_json(&mut self.last_bucket.1, &tandem_model::zone::format(key.bucket, self.zone));
            }
            out.extend_from_slice(prefix);
            out.extend_from_slice(&self.last_bucket.1);
        }
        for (prefix, value) in self.dims.iter().zip(&key.dims).chain(self.measures.iter().zip(values)) {
            out.extend_from_slice(prefix);
            write_json(out, value);
        }
        if out.len() == start {
            out.push(b'{'); // no columns at all
        }
        out.push(b'}');
    }
}

/// Appends `value` as JSON.
fn write_json(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) {
    serde_json::to_writer(out, value).expect("writing JSON into memory cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bucket: i64, dims: &[&str]) -> GroupKey {
        GroupKey { bucket, dims: dims.iter().map(|d| Value::String((*d).into())).collect() }
    }

    fn columns<'a>(bucket: bool, dims: &[&'a str], measures: &[&'a str]) -> Columns<'a> {
        let typed = |names: &[&'a str], ty| names.iter().map(|&name| (name, ty)).collect();
        Columns {
            bucket,
            zone: None,
            dims: typed(dims, FieldType::String),
            measures: typed(measures, FieldType::Int64),
        }
    }

    /// Rows are written as CSV records under a header of the column names, fields quoted as
    /// RFC 4180 requires, null as an empty field.
    #[test]
    fn rows_are_written_as_csv_under_a_header() {
        let hour = 3_600_000_000;
        let (k1, k2) = (key(hour, &["U\"S, x"]), key(2 * hour, &["DE\n"]));
        let (v1, v2) = ([Value::Int(3), Value::Null], [Value::Bool(true), Value::Float(0.25)]);
        let rows: Vec<OutRow> = vec![(&k1, &v1[..], None), (&k2, &v2[..], None)];
        let answer = csv_answer(&columns(true, &["country"], &["views", "p95_ms"]), &rows).unwrap();
        assert_eq!(
            String::from_utf8(answer.to_vec()).unwrap(),
            "bucket,country,views,p95_ms\r\n\
             1970-01-01T01:00:00Z,\"U\"\"S, x\",3,\r\n\
             1970-01-01T02:00:00Z,\"DE\n\",true,0.25\r\n"
        );
        let all = csv_answer(&columns(false, &[], &["views"]), &[(&key(0, &[]), &[Value::Int(9)][..], None)]).unwrap();
        assert_eq!(all.to_vec(), b"views\r\n9\r\n");
    }

    /// Rows are written as JSON objects with their columns in order, values escaped as JSON
    /// requires.
    #[test]
    fn rows_are_written_as_json_objects_in_column_order() {
        let hour = 3_600_000_000;
        let mut render = RowWriter::new(&columns(true, &["country", "path"], &["views", "p95_ms", "users"]));
        let mut out = Vec::new();
        render.write(&mut out, &key(hour, &["U\"S", "/p/\u{e9}\n"]), &[Value::Int(3), Value::Float(1.5), Value::Null]);
        out.push(b',');
        render.write(&mut out, &key(2 * hour, &["DE", "/"]), &[Value::Int(-1), Value::Float(0.25), Value::Int(7)]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                r#"{"bucket":"1970-01-01T01:00:00Z","country":"U\"S","path":"/p/é\n","views":3,"p95_ms":1.5,"users":null},"#,
                r#"{"bucket":"1970-01-01T02:00:00Z","country":"DE","path":"/","views":-1,"p95_ms":0.25,"users":7}"#
            )
        );
        let mut all = RowWriter::new(&columns(false, &[], &["views"]));
        let mut out = Vec::new();
        all.write(&mut out, &key(0, &[]), &[Value::Int(9)]);
        assert_eq!(out, br#"{"views":9}"#);
        let mut none = RowWriter::new(&columns(false, &[], &[]));
        let mut out = Vec::new();
        none.write(&mut out, &key(0, &[]), &[]);
        assert_eq!(out, b"{}");
    }
}
