//! The whole Lambda path against the real server: ingest (JSON and NDJSON), speed-only
//! answers, batch runs, merged answers, late events, duplicates, a second view built over
//! existing events, a crash, a clean restart; every answer checked against a reference
//! computed here from the raw events, not by tandem's code.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{BIN, TestServer, catalogs, pageviews_dataset};

/// One generated event, as the test knows it.
#[derive(Clone, Debug)]
struct Event {
    ts: i64, // UTC micros
    id: String,
    country: Option<&'static str>,
    duration: Option<f64>,
    bytes: Option<i64>,
    bot: bool,
}

impl Event {
    fn to_json(&self, epoch_ms: bool) -> Value {
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
struct Gen(u64);

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
    fn events(&mut self, n: usize, base: i64, spread_hours: i64, ids: u64) -> Vec<Event> {
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

const T0: i64 = 1_793_491_200_000_000; // 2026-11-01T00:00:00Z

/// Accepted events, kept the way the server must: first occurrence of an id wins.
#[derive(Default)]
struct Accepted {
    events: Vec<Event>,
    ids: HashSet<String>,
}

impl Accepted {
    /// Returns (accepted, duplicates) the server must answer for this request.
    fn add(&mut self, request: &[Event]) -> (usize, usize) {
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

async fn ingest_json(server: &TestServer, acc: &mut Accepted, events: &[Event]) {
    let body: Vec<Value> = events.iter().enumerate().map(|(i, e)| e.to_json(i % 2 == 0)).collect();
    let (status, out) = server.call("POST", "/v1/datasets/pageviews/events", Some(Value::Array(body))).await;
    assert_eq!(status, 200, "{out}");
    let (a, d) = acc.add(events);
    assert_eq!(out, json!({"accepted": a, "duplicates": d}));
}

async fn ingest_ndjson(server: &TestServer, acc: &mut Accepted, events: &[Event]) {
    let body: String = events.iter().map(|e| format!("{}\n", e.to_json(false))).collect();
    let (status, out) = server.raw("/v1/datasets/pageviews/events", "application/x-ndjson", body).await;
    assert_eq!(status, 200, "{out}");
    let (a, d) = acc.add(events);
    assert_eq!(out, json!({"accepted": a, "duplicates": d}));
}

fn by_country_view() -> Value {
    json!({"name": "by_country", "dataset": "pageviews", "granularity": "hour", "dimensions": ["country"],
           "measures": {"views": "count", "n_ms": "count(duration_ms)", "total": "sum(bytes)", "lo": "min(duration_ms)",
                        "hi": "max(duration_ms)", "mean": "avg(duration_ms)",
                        "uniq": "approx_distinct(event_id)", "p90": "approx_percentile(duration_ms, 0.9)"},
           "filter": "bot = false"})
}

fn by_bot_view() -> Value {
    json!({"name": "by_bot", "dataset": "pageviews", "granularity": "day", "dimensions": ["bot", "country"],
           "measures": {"n": "count", "b": "sum(bytes)", "first_ms": "min(duration_ms)"}})
}

/// One query and what it asks, spelled out for the reference.
struct Shape<'a> {
    query: Value,
    granularity: &'a str,
    group_by: Vec<&'a str>,
    countries: Option<&'a [&'a str]>,
    range: Option<(i64, i64)>,
}

/// The reference: one straightforward pass over the accepted events.
fn reference(events: &[Event], view: &str, shape: &Shape) -> Vec<Value> {
    let Shape { granularity, group_by, countries, range, .. } = shape;
    let (granularity, countries, range) = (*granularity, *countries, *range);
    let view_width: i64 = if view == "by_country" { 3_600_000_000 } else { 86_400_000_000 };
    let width: Option<i64> = match granularity {
        "hour" => Some(3_600_000_000),
        "day" => Some(86_400_000_000),
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
        let bucket = width.map(|w| e.ts.div_euclid(w) * w).unwrap_or(0);
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
    groups
        .into_iter()
        .map(|((bucket, dims), a)| {
            let mut row = serde_json::Map::new();
            if width.is_some() {
                row.insert(
                    "bucket".into(),
                    json!(
                        chrono::DateTime::from_timestamp_micros(bucket)
                            .unwrap()
                            .format("%Y-%m-%dT%H:%M:%SZ")
                            .to_string()
                    ),
                );
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
        .collect()
}

/// Same rows in the same order; floats equal within 1e-9 relative.
fn assert_rows_match(got: &Value, want: &[Value], context: &str) {
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

/// Checks a set of query shapes of both views against the reference.
async fn check_answers(server: &TestServer, events: &[Event], views: &[&str], context: &str) {
    let from = T0 + 6 * 3_600_000_000;
    let to = T0 + 30 * 3_600_000_000;
    let from_s = chrono::DateTime::from_timestamp_micros(from).unwrap().to_rfc3339();
    let to_s = chrono::DateTime::from_timestamp_micros(to).unwrap().to_rfc3339();
    for view in views {
        let dims: &[&str] = if *view == "by_country" { &["country"] } else { &["bot", "country"] };
        let native = if *view == "by_country" { "hour" } else { "day" };
        let shape = |query: Value, granularity, group_by: &[&'static str], countries, range| Shape {
            query,
            granularity,
            group_by: group_by.to_vec(),
            countries,
            range,
        };
        let shapes = [
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
        ];
        for shape in &shapes {
            let q = &shape.query;
            let answer = server.query(view, q.clone()).await;
            let want = reference(events, view, shape);
            assert_rows_match(&answer["rows"], &want, &format!("{context}: {view} {q}"));
        }
    }
    // the GET form answers the same as the POST form
    let get = server
        .ok("GET", "/v1/views/by_country/query?granularity=day&group_by=country&filter=country:US,DE", None)
        .await;
    let post = server
        .query(
            "by_country",
            json!({"granularity": "day", "group_by": ["country"], "filter": {"country": ["US", "DE"]}}),
        )
        .await;
    assert_eq!(get["rows"], post["rows"], "{context}: GET and POST differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_path_end_to_end() {
    for catalog in catalogs().await {
        let label = if catalog.is_some() { "postgres" } else { "sqlite" };
        let dir = tempfile::tempdir().unwrap();
        let mut server = TestServer::start(dir.path(), catalog.clone(), &[]);
        let mut rng = Gen(0x5eed_0000_0000_0001);
        let mut acc = Accepted::default();

        assert_eq!(server.call("POST", "/v1/datasets", Some(pageviews_dataset())).await.0, 201);
        let (status, view) = server.call("POST", "/v1/views", Some(by_country_view())).await;
        assert_eq!(status, 201, "{view}");
        assert_eq!(view["status"], "ready", "a view over an empty dataset serves at once");

        // speed layer only
        ingest_json(&server, &mut acc, &rng.events(400, T0, 48, 350)).await;
        ingest_ndjson(&server, &mut acc, &rng.events(300, T0, 48, 600)).await;
        assert!(acc.events.len() > 300);
        let a = server.query("by_country", json!({})).await;
        assert_eq!(a["freshness"]["batch_version"], Value::Null);
        assert_eq!(a["freshness"]["speed_events"], json!(acc.events.len()));
        check_answers(&server, &acc.events, &["by_country"], &format!("{label} speed only")).await;

        // batch run: everything moves to the batch layer, answers do not change
        let run = server.run_batch("by_country").await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["watermark"], json!(acc.events.len()));
        assert_eq!(run["rows_in"], json!(acc.events.len()));
        let a = server.query("by_country", json!({})).await;
        assert_eq!(a["freshness"]["batch_version"], json!(1));
        assert_eq!(a["freshness"]["speed_events"], json!(0));
        check_answers(&server, &acc.events, &["by_country"], &format!("{label} batch only")).await;

        // more events, late ones (days before) and repeated ids: batch + speed merged
        ingest_json(&server, &mut acc, &rng.events(300, T0 - 5 * 86_400_000_000, 24, 2000)).await;
        ingest_ndjson(&server, &mut acc, &rng.events(200, T0, 72, 2000)).await;
        check_answers(&server, &acc.events, &["by_country"], &format!("{label} merged")).await;

        // a view over a dataset that holds events builds first, then answers everything
        let (status, v) = server.call("POST", "/v1/views", Some(by_bot_view())).await;
        assert_eq!(status, 201, "{v}");
        ingest_json(&server, &mut acc, &rng.events(100, T0, 24, 4000)).await;
        let first_run = v["last_run"]["id"].as_i64().expect("creating the view started a run");
        assert_eq!(server.wait_run(first_run).await["status"], "succeeded");
        check_answers(&server, &acc.events, &["by_country", "by_bot"], &format!("{label} two views")).await;

        // crash: every acknowledged event is back, answers identical
        server.kill();
        server.restart();
        check_answers(&server, &acc.events, &["by_country", "by_bot"], &format!("{label} after kill -9")).await;
        ingest_json(&server, &mut acc, &rng.events(150, T0, 96, 8000)).await;
        assert_eq!(server.run_batch("by_bot").await["status"], "succeeded");
        ingest_ndjson(&server, &mut acc, &rng.events(50, T0, 96, 8000)).await;
        check_answers(&server, &acc.events, &["by_country", "by_bot"], &format!("{label} after restart and run")).await;

        // clean stop and start: the same answers again
        server.stop();
        server.restart();
        check_answers(&server, &acc.events, &["by_country", "by_bot"], &format!("{label} after clean restart")).await;
        let a = server.query("by_bot", json!({})).await;
        assert_eq!(a["freshness"]["batch_version"], json!(2));
        assert!(a["freshness"]["speed_events"].as_u64().unwrap() > 0);

        // the same events in one request, without a batch run, then with one: the sketch
        // answers are identical to the bit, whatever the split between layers and requests
        let other_dir = tempfile::tempdir().unwrap();
        let other = TestServer::start(other_dir.path(), None, &[]);
        other.ok("POST", "/v1/datasets", Some(pageviews_dataset())).await;
        other.ok("POST", "/v1/views", Some(by_country_view())).await;
        let mut again = Accepted::default();
        ingest_json(&other, &mut again, &acc.events).await;
        assert_same_sketch_answers(&server, &other, &format!("{label}: one request, speed only")).await;
        assert_eq!(other.run_batch("by_country").await["status"], "succeeded");
        assert_same_sketch_answers(&server, &other, &format!("{label}: one request, batch only")).await;
    }
}

/// `approx_distinct` and `approx_percentile` answers of two servers agree to the bit.
async fn assert_same_sketch_answers(a: &TestServer, b: &TestServer, context: &str) {
    for q in [json!({}), json!({"granularity": "day"}), json!({"granularity": "all", "group_by": []})] {
        let (ra, rb) = (a.query("by_country", q.clone()).await, b.query("by_country", q.clone()).await);
        let pick = |r: &Value| -> Vec<(Value, Value)> {
            r["rows"].as_array().unwrap().iter().map(|row| (row["uniq"].clone(), row["p90"].clone())).collect()
        };
        assert_eq!(pick(&ra), pick(&rb), "{context}: {q}");
        assert!(!pick(&ra).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_published_by_tandem_batch_is_served_within_five_seconds() {
    for catalog in catalogs().await {
        let dir = tempfile::tempdir().unwrap();
        let server =
            TestServer::start(dir.path(), catalog.clone(), &["--segment-interval", "300ms", "--poll-interval", "1s"]);
        let mut rng = Gen(42);
        let mut acc = Accepted::default();
        server.ok("POST", "/v1/datasets", Some(pageviews_dataset())).await;
        server.ok("POST", "/v1/views", Some(by_country_view())).await;
        ingest_json(&server, &mut acc, &rng.events(500, T0, 24, 10_000)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await; // the active segment gets sealed

        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["batch", "--view", "by_country", "--data-dir"]).arg(dir.path()).env_remove("TANDEM_DATABASE_URL");
        if let Some(url) = &catalog {
            cmd.args(["--database-url", url]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "tandem batch failed: {}", String::from_utf8_lossy(&out.stderr));
        let printed: Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(printed["watermark"], json!(acc.events.len()));

        let start = std::time::Instant::now();
        loop {
            let a = server.query("by_country", json!({})).await;
            if a["freshness"]["batch_version"] == json!(1) {
                assert_eq!(a["freshness"]["speed_events"], json!(0));
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the server did not pick up the version: {}",
                a["freshness"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        check_answers(&server, &acc.events, &["by_country"], "after tandem batch").await;
        let runs = server.ok("GET", "/v1/views/by_country/runs", None).await;
        assert_eq!(runs["runs"][0]["trigger"], "cli");

        // a view that does not exist fails the command
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["batch", "--view", "nope", "--data-dir"]).arg(dir.path()).env_remove("TANDEM_DATABASE_URL");
        if let Some(url) = &catalog {
            cmd.args(["--database-url", url]);
        }
        assert!(!cmd.output().unwrap().status.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_keeps_the_previous_version_serving_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, &["--segment-interval", "200ms"]);
    let mut rng = Gen(7);
    let mut acc = Accepted::default();
    server.ok("POST", "/v1/datasets", Some(pageviews_dataset())).await;
    server.ok("POST", "/v1/views", Some(by_country_view())).await;
    ingest_json(&server, &mut acc, &rng.events(200, T0, 24, 100_000)).await;
    assert_eq!(server.run_batch("by_country").await["status"], "succeeded");
    ingest_json(&server, &mut acc, &rng.events(200, T0, 24, 100_000)).await;
    tokio::time::sleep(Duration::from_millis(800)).await; // sealed, not yet compacted

    // damage the sealed segment the next run must compact
    let log_dir = dir.path().join("log/pageviews");
    let mut segments: Vec<_> = std::fs::read_dir(&log_dir).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    let target = &segments[segments.len() - 2];
    let mut bytes = std::fs::read(target).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(target, &bytes).unwrap();

    let run = server.run_batch("by_country").await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(run["error"].as_str().unwrap().contains("corrupt"), "{run}");
    let view = server.ok("GET", "/v1/views/by_country", None).await;
    assert_eq!(view["batch_version"], json!(1));
    assert_eq!(view["last_run"]["id"], run["id"]);
    // the speed layer still holds what the failed run could not cover: answers stay exact
    let a = server.query("by_country", json!({})).await;
    assert_eq!(a["freshness"]["batch_version"], json!(1));
    check_answers(&server, &acc.events, &["by_country"], "after a failed run").await;
}

fn date_of(ts: i64) -> String {
    chrono::DateTime::from_timestamp_micros(ts).unwrap().format("%Y-%m-%d").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_runs_recompute_only_dirty_days() {
    const DAY: i64 = 86_400_000_000;
    for catalog in catalogs().await {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(dir.path(), catalog, &[]);
        let mut rng = Gen(99);
        let mut acc = Accepted::default();
        server.ok("POST", "/v1/datasets", Some(pageviews_dataset())).await;
        server.ok("POST", "/v1/views", Some(by_country_view())).await;
        ingest_json(&server, &mut acc, &rng.events(600, T0, 5 * 24, 1_000_000)).await;
        let all_days: BTreeSet<String> = acc.events.iter().map(|e| date_of(e.ts)).collect();
        assert_eq!(all_days.len(), 5);

        let first = server.run_batch("by_country").await;
        assert_eq!((first["status"].as_str(), first["mode"].as_str()), (Some("succeeded"), Some("full")), "{first}");
        assert_eq!(first["partitions"], json!(all_days));

        // new events on the last day, and late ones on the first
        let newest_batch_day = acc.events.iter().filter(|e| !e.bot).map(|e| e.ts.div_euclid(DAY)).max().unwrap();
        let before = acc.events.len();
        ingest_json(&server, &mut acc, &rng.events(80, T0 + 4 * DAY, 24, 1_000_000)).await;
        ingest_ndjson(&server, &mut acc, &rng.events(15, T0, 24, 1_000_000)).await;
        let fresh = &acc.events[before..];
        let a = server.query("by_country", json!({})).await;
        let late = fresh.iter().filter(|e| e.ts.div_euclid(DAY) <= newest_batch_day).count();
        assert_eq!(a["freshness"]["late_events"], json!(late));
        assert_eq!(a["freshness"]["speed_events"], json!(fresh.len()));
        assert!(a["freshness"]["speed_newest_ingest_at"].is_string());

        let dirty: BTreeSet<String> = fresh.iter().map(|e| date_of(e.ts)).collect();
        assert_eq!(dirty.len(), 2);
        let second = server.run_batch("by_country").await;
        assert_eq!(
            (second["status"].as_str(), second["mode"].as_str()),
            (Some("succeeded"), Some("incremental")),
            "{second}"
        );
        assert_eq!(second["partitions"], json!(dirty));
        let read = acc.events.iter().filter(|e| dirty.contains(&date_of(e.ts))).count();
        assert_eq!(second["rows_in"], json!(read), "an incremental run reads only the dirty days");
        check_answers(&server, &acc.events, &["by_country"], "after an incremental run").await;
        let a = server.query("by_country", json!({})).await;
        assert_eq!(
            (a["freshness"]["late_events"].clone(), a["freshness"]["speed_events"].clone()),
            (json!(0), json!(0))
        );
        // the version directory is whole: one file per day, clean days carried over
        let days_on_disk = std::fs::read_dir(dir.path().join("views/by_country/v000002")).unwrap().count();
        assert_eq!(days_on_disk, all_days.len());

        // a full run on request recomputes every day, to the same answers
        let (status, run) = server.call("POST", "/v1/views/by_country/runs", Some(json!({"full": true}))).await;
        assert_eq!(status, 202, "{run}");
        let third = server.wait_run(run["id"].as_i64().unwrap()).await;
        assert_eq!((third["mode"].as_str(), third["rows_in"].clone()), (Some("full"), json!(acc.events.len())));
        assert_eq!(third["rows_out"], second["rows_out"]);
        check_answers(&server, &acc.events, &["by_country"], "after a full run").await;
        let (status, _) = server.call("POST", "/v1/views/by_country/runs", Some(json!({"fast": true}))).await;
        assert_eq!(status, 400);
    }
}
