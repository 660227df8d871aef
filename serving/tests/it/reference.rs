//! The reference the end-to-end and property tests check tandem against: events as the
//! test knows them, and one straightforward pass over them per query. Nothing here calls
//! tandem's own aggregation code.

use std::collections::{BTreeMap, HashSet};

use chrono::Datelike;
use serde_json::{Value, json};

/// One generated event, as the test knows it.
#[derive(Clone, Debug)]
pub struct Event {
    pub ts: i64, // UTC micros
    pub id: String,
    pub country: Option<&'static str>,
    pub duration: Option<f64>,
    pub bytes: Option<i64>,
    pub bot: bool,
}

impl Event {
    pub fn to_json(&self, epoch_ms: bool) -> Value {
        let mut v = json!({"event_id": self.id, "bot": self.bot});
        v["ts"] = if epoch_ms {
            json!(self.ts / 1000)
        } else {
            json!(chrono::DateTime::from_timestamp_micros(self.ts).unwrap().to_rfc3339())
        };
        if let Some(c) = self.country {
            v["country"] = json!(c);
        }
        if let Some(d) = self.duration {
            v["duration_ms"] = json!(d);
        }
        if let Some(b) = self.bytes {
            v["bytes"] = json!(b);
        }
        v
    }
}

/// A small deterministic generator (xorshift), so failures reproduce.
pub struct Gen(pub u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// `n` events around `base` (UTC micros), ids from `ids` (so some repeat).
    pub fn events(&mut self, n: usize, base: i64, spread_hours: i64, ids: u64) -> Vec<Event> {
        const COUNTRIES: [Option<&str>; 5] = [Some("US"), Some("DE"), Some("FR"), Some("BR"), None];
        (0..n)
            .map(|_| Event {
                ts: base
                    + (self.below((spread_hours * 3600) as u64) as i64) * 1_000_000
                    + self.below(1000) as i64 * 1000,
                id: format!("e{}", self.below(ids)),
                country: COUNTRIES[self.below(5) as usize],
                duration: if self.below(6) == 0 { None } else { Some(self.below(100_000) as f64 / 7.0) },
                bytes: if self.below(8) == 0 { None } else { Some(self.below(1 << 40) as i64 - (1 << 39)) },
                bot: self.below(4) == 0,
            })
            .collect()
    }
}

pub const T0: i64 = 1_793_491_200_000_000; // 2026-11-01T00:00:00Z

/// Accepted events, kept the way the server must: first occurrence of an id wins.
#[derive(Default)]
pub struct Accepted {
    pub events: Vec<Event>,
    ids: HashSet<String>,
}

impl Accepted {
    /// Returns (accepted, duplicates) the server must answer for this request.
    pub fn add(&mut self, request: &[Event]) -> (usize, usize) {
        let before = self.events.len();
        for e in request {
            if self.ids.insert(e.id.clone()) {
                self.events.push(e.clone());
            }
        }
        let accepted = self.events.len() - before;
        (accepted, request.len() - accepted)
    }
}

/// The schedule of the tests' views: once a year. With the default (hourly, at :00), a test
/// running across the hour met a scheduled run it did not start (a CI run at 22:00 did: the
/// `tandem batch` test found the newest run triggered by the schedule). Tests of scheduling
/// set their own.
const TEST_SCHEDULE: &str = "0 0 1 1 *";

pub fn by_country_view() -> Value {
    json!({"name": "by_country", "dataset": "pageviews", "granularity": "hour", "dimensions": ["country"],
           "measures": {"views": "count", "n_ms": "count(duration_ms)", "total": "sum(bytes)", "lo": "min(duration_ms)",
                        "hi": "max(duration_ms)", "mean": "avg(duration_ms)",
                        "uniq": "approx_distinct(event_id)", "p90": "approx_percentile(duration_ms, 0.9)"},
           "filter": "bot = false", "schedule": TEST_SCHEDULE})
}

pub fn by_bot_view() -> Value {
    json!({"name": "by_bot", "dataset": "pageviews", "granularity": "day", "dimensions": ["bot", "country"],
           "measures": {"n": "count", "b": "sum(bytes)", "first_ms": "min(duration_ms)"}, "schedule": TEST_SCHEDULE})
}

/// One query and what it asks, spelled out for the reference.
pub struct Shape<'a> {
    pub query: Value,
    pub granularity: &'a str,
    pub group_by: Vec<&'a str>,
    pub countries: Option<&'a [&'a str]>,
    pub range: Option<(i64, i64)>,
    /// `order_by` this measure descending (ties in bucket, dimension order), then `limit`.
    pub top: Option<(&'a str, usize)>,
    /// `offset`: rows skipped (after the order, before the limit).
    pub skip: usize,
    /// Only these measures are asked for.
    pub measures: Option<&'a [&'a str]>,
    /// `time_zone`: the buckets are this zone's (IANA name).
    pub zone: Option<&'a str>,
    /// `exclude` on country: events whose country is one of these (`None`: none given) are not
    /// counted.
    pub excluded: Option<&'a [Option<&'a str>]>,
    /// `having`: rows whose measure compares so (`gt`, `lte`, ...) with the number are kept.
    pub having: &'a [(&'a str, &'a str, f64)],
}

/// The reference: one straightforward pass over the accepted events.
pub fn reference(events: &[Event], view: &str, shape: &Shape) -> Vec<Value> {
    let Shape { granularity, group_by, countries, range, .. } = shape;
    let (granularity, countries, range) = (*granularity, *countries, *range);
    let zone: Option<chrono_tz::Tz> = shape.zone.map(|z| z.parse().unwrap());
    let view_width: i64 = if view == "by_country" { 3_600_000_000 } else { 86_400_000_000 };
    // in a zone: the local date's midnight (the first instant of it, where clocks skip
    // midnight), Monday or 1st of the month, as chrono-tz has them
    let local_bucket = |zone: chrono_tz::Tz, ts: i64| {
        use chrono::TimeZone;
        let day = chrono::DateTime::from_timestamp_micros(ts).unwrap().with_timezone(&zone).date_naive();
        let first = match granularity {
            "day" => day,
            "week" => day - chrono::Days::new(day.weekday().num_days_from_monday() as u64),
            "month" => day.with_day(1).unwrap(),
            other => unreachable!("{other} in a zone"),
        };
        let midnight = first.and_hms_opt(0, 0, 0).unwrap();
        (0..240)
            .find_map(|m| zone.from_local_datetime(&(midnight + chrono::Duration::minutes(m))).earliest())
            .unwrap()
            .timestamp_micros()
    };
    let bucket_of: Option<fn(i64) -> i64> = match granularity {
        "hour" => Some(|ts| ts.div_euclid(3_600_000_000) * 3_600_000_000),
        "day" => Some(|ts| ts.div_euclid(86_400_000_000) * 86_400_000_000),
        // the calendar's: the Monday on or before the event's UTC day; the 1st of its month
        "week" => Some(|ts| {
            let day = chrono::DateTime::from_timestamp_micros(ts).unwrap().date_naive();
            let monday = day - chrono::Days::new(day.weekday().num_days_from_monday() as u64);
            monday.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_micros()
        }),
        "month" => Some(|ts| {
            let day = chrono::DateTime::from_timestamp_micros(ts).unwrap().date_naive();
            day.with_day(1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_micros()
        }),
        _ => None,
    };
    #[derive(Default)]
    struct Acc {
        n: i64,
        n_ms: i64,
        total: Option<i64>,
        lo: Option<f64>,
        hi: Option<f64>,
        sum_ms: f64,
        ids: HashSet<String>,
        durations: Vec<f64>,
    }
    // dimension values as sortable text, None (null) first; "false" < "true" as for booleans
    let mut groups: BTreeMap<(i64, Vec<Option<String>>), Acc> = BTreeMap::new();
    for e in events {
        if view == "by_country" && e.bot {
            continue;
        }
        let view_bucket = e.ts.div_euclid(view_width) * view_width;
        if let Some((from, to)) = range
            && (view_bucket < from || view_bucket >= to)
        {
            continue;
        }
        if let Some(cs) = countries
            && !e.country.is_some_and(|c| cs.contains(&c))
        {
            continue;
        }
        if shape.excluded.is_some_and(|excluded| excluded.contains(&e.country)) {
            continue;
        }
        let bucket = match zone {
            Some(zone) if granularity != "all" => local_bucket(zone, e.ts),
            _ => bucket_of.map_or(0, |of| of(e.ts)),
        };
        let dims: Vec<Option<String>> = group_by
            .iter()
            .map(|d| match *d {
                "country" => e.country.map(str::to_string),
                "bot" => Some(e.bot.to_string()),
                _ => unreachable!(),
            })
            .collect();
        let a = groups.entry((bucket, dims)).or_default();
        a.n += 1;
        if let Some(b) = e.bytes {
            a.total = Some(a.total.unwrap_or(0).wrapping_add(b));
        }
        a.ids.insert(e.id.clone());
        if let Some(d) = e.duration {
            a.durations.push(d);
            a.n_ms += 1;
            a.sum_ms += d;
            a.lo = Some(a.lo.map_or(d, |x| x.min(d)));
            a.hi = Some(a.hi.map_or(d, |x| x.max(d)));
        }
    }
    let mut rows: Vec<Value> = groups
        .into_iter()
        .map(|((bucket, dims), a)| {
            let mut row = serde_json::Map::new();
            if bucket_of.is_some() {
                // in the query's zone, with its offset there: the local time the bucket starts at
                let start = chrono::DateTime::from_timestamp_micros(bucket).unwrap();
                let text = match zone {
                    Some(zone) => start.with_timezone(&zone).format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
                    None => start.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                };
                row.insert("bucket".into(), json!(text));
            }
            for (d, v) in group_by.iter().zip(dims) {
                let v = match (*d, v) {
                    (_, None) => Value::Null,
                    ("bot", Some(b)) => json!(b == "true"),
                    (_, Some(s)) => json!(s),
                };
                row.insert(d.to_string(), v);
            }
            if view == "by_country" {
                row.insert("views".into(), json!(a.n));
                row.insert("n_ms".into(), json!(a.n_ms));
                row.insert("total".into(), json!(a.total));
                row.insert("lo".into(), json!(a.lo));
                row.insert("hi".into(), json!(a.hi));
                row.insert("mean".into(), if a.n_ms == 0 { Value::Null } else { json!(a.sum_ms / a.n_ms as f64) });
                row.insert("uniq".into(), json!(a.ids.len()));
                // the element a rank-based percentile sketch approximates: sorted[floor(p * (n - 1))]
                let mut d = a.durations.clone();
                d.sort_by(f64::total_cmp);
                let p90 = (!d.is_empty()).then(|| d[(0.9 * (d.len() as f64 - 1.0)) as usize]);
                row.insert("p90".into(), json!(p90));
            } else {
                row.insert("n".into(), json!(a.n));
                row.insert("b".into(), json!(a.total));
                row.insert("first_ms".into(), json!(a.lo));
            }
            Value::Object(row)
        })
        .collect();
    rows.retain(|row| {
        shape.having.iter().all(|&(measure, op, than)| {
            row[measure].as_f64().is_some_and(|v| match op {
                "eq" => v == than,
                "ne" => v != than,
                "lt" => v < than,
                "lte" => v <= than,
                "gt" => v > than,
                "gte" => v >= than,
                other => unreachable!("{other}"),
            })
        })
    });
    if let Some(keep) = shape.measures {
        let all_measures = ["views", "n_ms", "total", "lo", "hi", "mean", "uniq", "p90", "n", "b", "first_ms"];
        for row in rows.iter_mut().filter_map(Value::as_object_mut) {
            row.retain(|k, _| !all_measures.contains(&k.as_str()) || keep.contains(&k.as_str()));
        }
    }
    if let Some((measure, _)) = shape.top {
        // stable: ties keep the bucket-then-dimensions order
        rows.sort_by_key(|r| std::cmp::Reverse(r[measure].as_i64()));
    }
    rows.drain(..shape.skip.min(rows.len()));
    if let Some((_, limit)) = shape.top {
        rows.truncate(limit);
    }
    rows
}

/// Same rows in the same order; floats equal within 1e-9 relative.
pub fn assert_rows_match(got: &Value, want: &[Value], context: &str) {
    let got = got.as_array().unwrap_or_else(|| panic!("{context}: rows is not an array: {got}"));
    assert_eq!(got.len(), want.len(), "{context}: row count\n got: {got:?}\nwant: {want:?}");
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (g.as_object().unwrap(), w.as_object().unwrap());
        assert_eq!(g.keys().collect::<HashSet<_>>(), w.keys().collect::<HashSet<_>>(), "{context}: columns");
        for (k, wv) in w {
            let gv = &g[k];
            // sketches: approx_distinct within 3 standard errors of HLL-14 (0.8 %), at least 1;
            // approx_percentile within DDSketch's 1 % relative error; other floats 1e-9 relative
            let tolerance: fn(f64) -> f64 = match k.as_str() {
                "uniq" => |b| (0.025 * b).max(1.0),
                "p90" => |b| 0.01 * b.abs() + 1e-9,
                _ => |b| 1e-9 * b.abs().max(1e-300),
            };
            let same = match (gv.as_f64(), wv.as_f64()) {
                (Some(a), Some(b)) if gv.is_f64() || wv.is_f64() || k == "uniq" => (a - b).abs() <= tolerance(b),
                _ => gv == wv,
            };
            assert!(same, "{context}: {k}: got {gv}, want {wv}\n row got {g:?}\n row want {w:?}");
        }
    }
}

/// The query shapes checked for a view: its own granularity, rollups, a dimension subset
/// with an IN filter, a time range, and a top-N.
pub fn shapes(view: &str) -> Vec<Shape<'static>> {
    let from = T0 + 6 * 3_600_000_000;
    let to = T0 + 30 * 3_600_000_000;
    let from_s = chrono::DateTime::from_timestamp_micros(from).unwrap().to_rfc3339();
    let to_s = chrono::DateTime::from_timestamp_micros(to).unwrap().to_rfc3339();
    let (cut_from, cut_to) = (T0 + 7 * 3_600_000_000 + 1_800_000_000, T0 + 53 * 3_600_000_000 + 60_000_000);
    let cut_from_s = chrono::DateTime::from_timestamp_micros(cut_from).unwrap().to_rfc3339();
    let cut_to_s = chrono::DateTime::from_timestamp_micros(cut_to).unwrap().to_rfc3339();
    // a range whose both ends cut the same output day
    let same_day_to = T0 + 20 * 3_600_000_000 + 1_800_000_000;
    let same_day_to_s = chrono::DateTime::from_timestamp_micros(same_day_to).unwrap().to_rfc3339();
    let dims: &'static [&'static str] = if view == "by_country" { &["country"] } else { &["bot", "country"] };
    let native = if view == "by_country" { "hour" } else { "day" };
    let count = if view == "by_country" { "views" } else { "n" };
    let shape = |query: Value, granularity, group_by: &[&'static str], countries, range| Shape {
        query,
        granularity,
        group_by: group_by.to_vec(),
        countries,
        range,
        top: None,
        skip: 0,
        measures: None,
        zone: None,
        excluded: None,
        having: &[],
    };
    let mut shapes = vec![
        shape(json!({}), native, dims, None, None),
        shape(json!({"granularity": "day"}), "day", dims, None, None),
        shape(json!({"granularity": "all"}), "all", dims, None, None),
        shape(json!({"group_by": [], "granularity": "all"}), "all", &[], None, None),
        shape(
            json!({"group_by": ["country"], "filter": {"country": ["US", "DE"]}}),
            native,
            &["country"],
            Some(&["US", "DE"]),
            None,
        ),
        shape(json!({"from": from_s, "to": to_s, "granularity": "day"}), "day", dims, None, Some((from, to))),
        // calendar buckets: T0 is a Sunday, so the events' weeks are two
        shape(json!({"granularity": "week"}), "week", dims, None, None),
        shape(json!({"granularity": "month", "group_by": ["country"]}), "month", &["country"], None, None),
        Shape {
            measures: Some(if view == "by_country" { &["views", "mean", "uniq"] } else { &["n"] }),
            ..shape(
                json!({"granularity": "all", "measures": if view == "by_country" { json!(["views", "mean", "uniq"]) } else { json!(["n"]) }}),
                "all",
                dims,
                None,
                None,
            )
        },
        // ranges that cut through output buckets (batch answers fold those afresh)
        shape(json!({"from": cut_from_s, "to": cut_to_s}), native, dims, None, Some((cut_from, cut_to))),
        shape(
            json!({"from": cut_from_s, "to": cut_to_s, "granularity": "all"}),
            "all",
            dims,
            None,
            Some((cut_from, cut_to)),
        ),
        shape(
            json!({"from": cut_from_s, "to": same_day_to_s, "granularity": "day"}),
            "day",
            dims,
            None,
            Some((cut_from, same_day_to)),
        ),
        shape(
            json!({"from": cut_from_s, "to": cut_to_s, "granularity": "week"}),
            "week",
            dims,
            None,
            Some((cut_from, cut_to)),
        ),
        shape(
            json!({"from": cut_from_s, "granularity": "day", "group_by": ["country"]}),
            "day",
            &["country"],
            None,
            Some((cut_from, i64::MAX)),
        ),
        Shape {
            top: Some((count, 3)),
            ..shape(
                json!({"granularity": "day", "order_by": [{"field": count, "desc": true}], "limit": 3}),
                "day",
                dims,
                None,
                None,
            )
        },
        // a page: the next 3 of the same order; and rows skipped in the answer's own order
        Shape {
            top: Some((count, 3)),
            skip: 3,
            ..shape(
                json!({"granularity": "day", "order_by": [{"field": count, "desc": true}], "offset": 3, "limit": 3}),
                "day",
                dims,
                None,
                None,
            )
        },
        Shape { skip: 5, ..shape(json!({"granularity": "day", "offset": 5}), "day", dims, None, None) },
        // NOT IN: a country and the events without one; and with an IN-list on the same dimension
        Shape {
            excluded: Some(&[Some("US"), None]),
            ..shape(json!({"exclude": {"country": ["US", null]}}), native, dims, None, None)
        },
        Shape {
            excluded: Some(&[Some("DE")]),
            ..shape(
                json!({"granularity": "all", "group_by": ["country"], "filter": {"country": ["US", "DE", "FR"]},
                       "exclude": {"country": ["DE"]}}),
                "all",
                &["country"],
                Some(&["US", "DE", "FR"]),
                None,
            )
        },
        // HAVING: a sum above 0 (null sums are left out); two conditions on the count, under
        // a top-N; the mean in a range that cuts buckets (its edge rows are judged too)
        Shape {
            having: if view == "by_country" { &[("total", "gt", 0.0)] } else { &[("b", "gt", 0.0)] },
            ..shape(
                json!({"granularity": "day", "having": {if view == "by_country" { "total" } else { "b" }: {"gt": 0}}}),
                "day",
                dims,
                None,
                None,
            )
        },
        Shape {
            top: Some((count, 3)),
            having: if view == "by_country" {
                &[("views", "gte", 2.0), ("views", "ne", 3.0)]
            } else {
                &[("n", "gte", 2.0), ("n", "ne", 3.0)]
            },
            ..shape(
                json!({"granularity": "day", "having": {count: {"gte": 2, "ne": 3}},
                       "order_by": [{"field": count, "desc": true}], "limit": 3}),
                "day",
                dims,
                None,
                None,
            )
        },
    ];
    if view == "by_country" {
        shapes.push(Shape {
            having: &[("mean", "lt", 7000.0)],
            ..shape(
                json!({"from": cut_from_s, "to": cut_to_s, "granularity": "day", "having": {"mean": {"lt": 7000}}}),
                "day",
                dims,
                None,
                Some((cut_from, cut_to)),
            )
        });
    }
    // a time zone's days, weeks, months (the events' first of November is New York's 25-hour
    // day); the hourly view only: the daily one is refused (`bad_input`). Ranged, as a zone's
    // local mean times of the 1800s are not whole hours.
    if view == "by_country" {
        let year = T0 - 300 * 86_400_000_000;
        let year_s = chrono::DateTime::from_timestamp_micros(year).unwrap().to_rfc3339();
        let zoned = |granularity: &'static str, zone: &'static str, from: (i64, &str), to: Option<(i64, &str)>| {
            let mut query = json!({"granularity": granularity, "time_zone": zone, "from": from.1});
            if let Some((_, to)) = to {
                query["to"] = json!(to);
            }
            let range = (from.0, to.map_or(i64::MAX, |(t, _)| t));
            Shape { zone: Some(zone), ..shape(query, granularity, dims, None, Some(range)) }
        };
        shapes.extend([
            zoned("day", "America/New_York", (year, &year_s), None),
            zoned("week", "Europe/Berlin", (year, &year_s), None),
            zoned("month", "Asia/Tokyo", (year, &year_s), None),
            // a range that cuts New York's days
            zoned("day", "America/New_York", (cut_from, &cut_from_s), Some((cut_to, &cut_to_s))),
        ]);
    }
    shapes
}

pub fn date_of(ts: i64) -> String {
    chrono::DateTime::from_timestamp_micros(ts).unwrap().format("%Y-%m-%d").to_string()
}
