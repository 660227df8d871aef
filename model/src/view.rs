//! View definitions: which events (filter), grouped how (granularity, dimensions), and
//! which measures.

use std::collections::BTreeMap;

use chrono::Datelike;
use serde::{Deserialize, Serialize};

use crate::schema::{DatasetSpec, FieldType};
use crate::validate_name;

/// Bucket width, finest first. A view's buckets are minutes, hours or days; a query may also
/// roll those up into weeks (from Monday), calendar months, or `All`, one bucket for all time.
/// All in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(description = "Bucket width (UTC). A view has minute, hour or day; a query may ask its view's or a \
    coarser one: also week (from Monday 00:00), month (from the 1st), or `all`, one bucket for the whole range.")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
    Week,
    Month,
    All,
}

const MINUTE: i64 = 60_000_000;
const HOUR: i64 = 60 * MINUTE;
/// Microseconds in a UTC day: event days (`micros.div_euclid(DAY)`) are counted in it everywhere.
pub const DAY: i64 = 24 * HOUR;

/// Days from a Monday to 1970-01-01, a Thursday.
const EPOCH_AFTER_MONDAY: i64 = 3;

impl Granularity {
    /// The width in microseconds of a view's buckets, which are all alike (`None` for the
    /// granularities only queries have: a month's length varies).
    pub fn width(self) -> Option<i64> {
        match self {
            Granularity::Minute => Some(MINUTE),
            Granularity::Hour => Some(HOUR),
            Granularity::Day => Some(DAY),
            Granularity::Week | Granularity::Month | Granularity::All => None,
        }
    }

    /// Whether a view may have buckets of this granularity (else only a query may ask it).
    pub fn is_view_granularity(self) -> bool {
        self.width().is_some()
    }

    /// The start of the UTC bucket holding `micros` (0 for `All`).
    pub fn truncate(self, micros: i64) -> i64 {
        match self {
            Granularity::Minute | Granularity::Hour | Granularity::Day => {
                let width = self.width().expect("a view granularity has a width");
                micros.div_euclid(width) * width
            }
            Granularity::Week => {
                let days = micros.div_euclid(DAY) + EPOCH_AFTER_MONDAY;
                (days.div_euclid(7) * 7 - EPOCH_AFTER_MONDAY) * DAY
            }
            Granularity::Month => {
                let date = month_start(micros);
                date.and_time(chrono::NaiveTime::MIN).and_utc().timestamp_micros()
            }
            Granularity::All => 0,
        }
    }

    /// The start of the bucket after the one starting at `bucket` (`None` for `All`).
    pub fn bucket_end(self, bucket: i64) -> Option<i64> {
        match self {
            Granularity::Minute | Granularity::Hour | Granularity::Day => self.width().map(|w| bucket + w),
            Granularity::Week => Some(bucket + 7 * DAY),
            Granularity::Month => {
                let next = month_start(bucket).checked_add_months(chrono::Months::new(1))?;
                Some(next.and_time(chrono::NaiveTime::MIN).and_utc().timestamp_micros())
            }
            Granularity::All => None,
        }
    }

    pub fn parse(text: &str) -> Option<Granularity> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
    }
}

/// The first day of the UTC month holding `micros` (events lie in the years 1678 to 2261, well
/// inside chrono's range).
fn month_start(micros: i64) -> chrono::NaiveDate {
    let date = chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default().date_naive();
    date.with_day(1).expect("every month has a first day")
}

/// What a measure computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasureKind {
    /// `count`: events.
    Count,
    /// `count(f)`: events where `f` is not null.
    CountField,
    Sum,
    Min,
    Max,
    Avg,
    /// `approx_distinct(f)`: HyperLogLog, precision 14.
    ApproxDistinct,
    /// `approx_percentile(f, p)`: DDSketch, 1 % relative error.
    ApproxPercentile,
}

/// One measure of a view, resolved against its dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    pub name: String,
    pub kind: MeasureKind,
    /// The field it reads and that field's type; `None` for `count`.
    pub field: Option<(String, FieldType)>,
    /// The percentile `p` of `approx_percentile`.
    pub percentile: Option<f64>,
}

impl Measure {
    /// Parses `count`, `count(f)`, `sum(f)`, `min(f)`, `max(f)`, `avg(f)`, `approx_distinct(f)` and
    /// `approx_percentile(f, p)` against a dataset.
    pub fn parse(name: &str, text: &str, dataset: &DatasetSpec) -> Result<Measure, String> {
        let text = text.trim();
        if text == "count" || text == "count(*)" {
            return Ok(Measure { name: name.to_string(), kind: MeasureKind::Count, field: None, percentile: None });
        }
        let (func, rest) = text.split_once('(').ok_or_else(|| {
            format!(
                "measure {name:?}: {text:?} is not count, count(f), sum(f), min(f), max(f), avg(f), \
                 approx_distinct(f) or approx_percentile(f, p)"
            )
        })?;
        let func = func.trim();
        let args = rest.strip_suffix(')').ok_or_else(|| format!("measure {name:?}: missing ')' in {text:?}"))?;
        let (field, percentile) = match (func, args.split_once(',')) {
            ("approx_percentile", Some((field, p))) => {
                let p: f64 = p
                    .trim()
                    .parse()
                    .map_err(|_| format!("measure {name:?}: percentile {:?} is not a number", p.trim()))?;
                if !(p > 0.0 && p < 1.0) {
                    return Err(format!("measure {name:?}: the percentile must lie strictly between 0 and 1"));
                }
                (field.trim(), Some(p))
            }
            ("approx_percentile", None) => {
                return Err(format!(
                    "measure {name:?}: write approx_percentile(field, p), e.g. approx_percentile(f, 0.95)"
                ));
            }
            (_, Some(_)) => return Err(format!("measure {name:?}: {func}() takes one field")),
            (_, None) => (args.trim(), None),
        };
        let ty = dataset.field_type(field).ok_or_else(|| format!("measure {name:?}: unknown field {field:?}"))?;
        let kind = match func.trim() {
            "count" => MeasureKind::CountField,
            "sum" => MeasureKind::Sum,
            "min" => MeasureKind::Min,
            "max" => MeasureKind::Max,
            "avg" => MeasureKind::Avg,
            "approx_distinct" => MeasureKind::ApproxDistinct,
            "approx_percentile" => MeasureKind::ApproxPercentile,
            other => return Err(format!("measure {name:?}: unknown function {other:?}")),
        };
        let type_ok = match kind {
            MeasureKind::Sum | MeasureKind::Avg | MeasureKind::ApproxPercentile => ty.is_numeric(),
            MeasureKind::Min | MeasureKind::Max => ty.is_numeric() || ty == FieldType::Timestamp,
            _ => true,
        };
        if !type_ok {
            return Err(format!("measure {name:?}: {func}() needs a numeric field, {field:?} is {ty:?}"));
        }
        Ok(Measure { name: name.to_string(), kind, field: Some((field.to_string(), ty)), percentile })
    }

    /// The type of the measure's value in an answer: count, count(f) and approx_distinct
    /// are integers, sum keeps its field's type (int64 or float64), min and max their
    /// field's, avg and approx_percentile are floats (see `MeasureState::value`).
    pub fn value_type(&self) -> FieldType {
        let field = self.field.as_ref().map(|(_, ty)| *ty);
        match self.kind {
            MeasureKind::Count | MeasureKind::CountField | MeasureKind::ApproxDistinct => FieldType::Int64,
            MeasureKind::Sum if field == Some(FieldType::Int64) => FieldType::Int64,
            MeasureKind::Sum | MeasureKind::Avg | MeasureKind::ApproxPercentile => FieldType::Float64,
            MeasureKind::Min | MeasureKind::Max => field.expect("min and max read a field"),
        }
    }
}

/// A view as its creator described it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(description = "A view's definition: which events of a dataset (filter), grouped how (buckets, \
    dimensions), and which measures.")]
pub struct ViewSpec {
    #[schema(example = "by_country")]
    pub name: String,
    /// The dataset it reads.
    #[schema(example = "pageviews")]
    pub dataset: String,
    /// minute, hour or day.
    pub granularity: Granularity,
    /// String, int64 or bool fields to group by.
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// Measure name to expression: `count`, `count(f)`, `sum(f)`, `min(f)`, `max(f)`, `avg(f)`,
    /// `approx_distinct(f)` or `approx_percentile(f, p)` with 0 < p < 1.
    #[schema(example = json!({"views": "count", "p95": "approx_percentile(duration_ms, 0.95)"}))]
    pub measures: BTreeMap<String, String>,
    /// An SQL condition on the dataset's fields; events it does not hold for are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "bot = false")]
    pub filter: Option<String>,
    /// When the batch layer recomputes the view: a cron expression (UTC; `0 * * * *`, hourly, by
    /// default), or `manual` for never by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "0 * * * *")]
    pub schedule: Option<String>,
}

/// A view resolved against its dataset: what both layers compute from.
#[derive(Debug, Clone)]
pub struct CompiledView {
    pub spec: ViewSpec,
    pub dataset: DatasetSpec,
    /// Row positions of the dimensions, in the view's order.
    pub dimension_index: Vec<usize>,
    pub dimension_types: Vec<FieldType>,
    /// Measures in name order, with the row position of their field.
    pub measures: Vec<(Measure, Option<usize>)>,
    pub time_index: usize,
}

/// Cron schedule used when a view names none: hourly, on the hour.
pub const DEFAULT_SCHEDULE: &str = "0 * * * *";

/// The schedule of a view that runs only when asked (the API, `tandem batch`), never by itself.
pub const MANUAL_SCHEDULE: &str = "manual";

impl ViewSpec {
    /// Resolves the view against its dataset. The filter is checked by the caller, which
    /// has an SQL engine; this checks everything else.
    pub fn compile(&self, dataset: &DatasetSpec) -> Result<CompiledView, Vec<String>> {
        let mut problems = Vec::new();
        if let Err(e) = validate_name(&self.name) {
            problems.push(e);
        }
        if !self.granularity.is_view_granularity() {
            problems.push("granularity must be minute, hour or day".into());
        }
        let mut dimension_index = Vec::new();
        let mut dimension_types = Vec::new();
        for (i, dim) in self.dimensions.iter().enumerate() {
            if self.dimensions[..i].contains(dim) {
                problems.push(format!("dimension {dim:?} is listed twice"));
            }
            match dataset.field_type(dim) {
                Some(ty @ (FieldType::String | FieldType::Int64 | FieldType::Bool)) => {
                    dimension_index.push(dataset.index_of(dim).unwrap());
                    dimension_types.push(ty);
                }
                Some(ty) => {
                    problems.push(format!("dimension {dim:?} is {ty:?}; dimensions are string, int64 or bool fields"))
                }
                None => problems.push(format!("dimension {dim:?} is not a field of dataset {:?}", dataset.name)),
            }
        }
        if self.measures.is_empty() {
            problems.push("a view needs at least one measure".into());
        }
        let mut measures = Vec::new();
        for (name, text) in &self.measures {
            if let Err(e) = validate_name(name) {
                problems.push(format!("measure: {e}"));
            }
            if name == "bucket" || self.dimensions.contains(name) {
                problems.push(format!("measure {name:?} clashes with a dimension or \"bucket\""));
            }
            match Measure::parse(name, text, dataset) {
                Ok(m) => {
                    let index = m.field.as_ref().and_then(|(f, _)| dataset.index_of(f));
                    measures.push((m, index));
                }
                Err(e) => problems.push(e),
            }
        }
        if self.dimensions.iter().any(|d| d == "bucket") {
            problems.push("\"bucket\" is reserved and cannot be a dimension".into());
        }
        if let Some(schedule) = &self.schedule
            && schedule.trim().is_empty()
        {
            problems.push("schedule is empty".into());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(CompiledView {
            spec: self.clone(),
            dataset: dataset.clone(),
            dimension_index,
            dimension_types,
            measures,
            time_index: dataset.time_index(),
        })
    }

    pub fn schedule(&self) -> &str {
        self.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> DatasetSpec {
        serde_json::from_str(
            r#"{"name":"pv","time_field":"ts","fields":{"ts":"timestamp","country":"string","ms":"float64","bytes":"int64","bot":"bool"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn truncates_to_utc_buckets() {
        let t = crate::value::parse_timestamp("2026-11-01T10:37:12.5Z").unwrap();
        let s = |m| crate::value::format_timestamp(m);
        assert_eq!(s(Granularity::Minute.truncate(t)), "2026-11-01T10:37:00Z");
        assert_eq!(s(Granularity::Hour.truncate(t)), "2026-11-01T10:00:00Z");
        assert_eq!(s(Granularity::Day.truncate(t)), "2026-11-01T00:00:00Z");
        let before_epoch = crate::value::parse_timestamp("1969-12-31T23:59:59Z").unwrap();
        assert_eq!(s(Granularity::Day.truncate(before_epoch)), "1969-12-31T00:00:00Z");
    }

    /// Weeks start on Monday 00:00 UTC, months on the 1st; each bucket ends where the next
    /// starts. Checked against the calendar (chrono's weekday and month arithmetic), across a
    /// year's end, a leap day, the epoch, and the ends of the range events may lie in.
    #[test]
    fn weeks_and_months_follow_the_calendar() {
        use chrono::{Datelike, NaiveDate};
        let s = |m| crate::value::format_timestamp(m);
        let t = |text| crate::value::parse_timestamp(text).unwrap();
        let cases = [
            ("2026-11-01T10:37:12Z", "2026-10-26T00:00:00Z", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
            ("2026-11-02T00:00:00Z", "2026-11-02T00:00:00Z", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
            ("2026-12-31T23:59:59Z", "2026-12-28T00:00:00Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
            ("2028-02-29T12:00:00Z", "2028-02-28T00:00:00Z", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"),
            ("1970-01-01T00:00:00Z", "1969-12-29T00:00:00Z", "1970-01-01T00:00:00Z", "1970-02-01T00:00:00Z"),
            ("1969-12-28T23:59:59Z", "1969-12-22T00:00:00Z", "1969-12-01T00:00:00Z", "1970-01-01T00:00:00Z"),
            ("1678-01-01T00:00:00Z", "1677-12-27T00:00:00Z", "1678-01-01T00:00:00Z", "1678-02-01T00:00:00Z"),
            ("2261-12-31T23:59:59Z", "2261-12-30T00:00:00Z", "2261-12-01T00:00:00Z", "2262-01-01T00:00:00Z"),
        ];
        for (at, week, month, next_month) in cases {
            let w = Granularity::Week.truncate(t(at));
            assert_eq!((s(w), s(Granularity::Month.truncate(t(at)))), (week.into(), month.into()), "{at}");
            assert_eq!(s(Granularity::Week.bucket_end(w).unwrap()), s(w + 7 * DAY), "{at}");
            assert_eq!(s(Granularity::Month.bucket_end(t(month)).unwrap()), next_month, "{at}");
        }
        // every day of four years: its week starts on the Monday on or before it, within 6 days
        let mut day = NaiveDate::from_ymd_opt(2027, 1, 1).unwrap();
        for _ in 0..4 * 366 {
            let micros = day.and_hms_opt(13, 0, 0).unwrap().and_utc().timestamp_micros();
            let week = chrono::DateTime::from_timestamp_micros(Granularity::Week.truncate(micros)).unwrap();
            assert_eq!(week.weekday(), chrono::Weekday::Mon, "{day}");
            assert!((day - week.date_naive()).num_days() < 7, "{day}");
            day = day.succ_opt().unwrap();
        }
        assert!(Granularity::Week > Granularity::Day && Granularity::Month > Granularity::Week);
        assert!(Granularity::All > Granularity::Month);
        assert!(!Granularity::Week.is_view_granularity() && !Granularity::Month.is_view_granularity());
    }

    #[test]
    fn compiles_measures_against_the_dataset() {
        let spec: ViewSpec = serde_json::from_str(
            r#"{"name":"v","dataset":"pv","granularity":"hour","dimensions":["country"],
                "measures":{"views":"count","n":"count(ms)","total":"sum(bytes)","lo":"min(ms)","mean":"avg(ms)",
                            "uniq":"approx_distinct(country)","p95":"approx_percentile(ms, 0.95)"}}"#,
        )
        .unwrap();
        let c = spec.compile(&dataset()).unwrap();
        assert_eq!(c.measures.len(), 7);
        let p95 = c.measures.iter().find(|(m, _)| m.name == "p95").unwrap();
        assert_eq!((p95.0.kind, p95.0.percentile), (MeasureKind::ApproxPercentile, Some(0.95)));
        assert_eq!(c.dimension_index, vec![dataset().index_of("country").unwrap()]);
    }

    #[test]
    fn refuses_bad_views() {
        for (dims, measures) in [
            (r#"["ms"]"#, r#"{"v":"count"}"#),
            (r#"["nope"]"#, r#"{"v":"count"}"#),
            (r#"[]"#, r#"{"v":"sum(country)"}"#),
            (r#"[]"#, r#"{"v":"median(ms)"}"#),
            (r#"[]"#, r#"{"v":"sum(nope)"}"#),
            (r#"[]"#, r#"{"v":"approx_percentile(ms)"}"#),
            (r#"[]"#, r#"{"v":"approx_percentile(ms, 1.5)"}"#),
            (r#"[]"#, r#"{"v":"approx_percentile(country, 0.5)"}"#),
            (r#"[]"#, r#"{"v":"approx_distinct(ms, 0.5)"}"#),
            (r#"[]"#, r#"{}"#),
            (r#"["country"]"#, r#"{"country":"count"}"#),
        ] {
            let spec: ViewSpec = serde_json::from_str(&format!(
                r#"{{"name":"v","dataset":"pv","granularity":"hour","dimensions":{dims},"measures":{measures}}}"#
            ))
            .unwrap();
            assert!(spec.compile(&dataset()).is_err(), "{dims} {measures} accepted");
        }
    }
}
