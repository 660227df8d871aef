//! `GET /metrics` against the real server: its counters checked against what the test sent
//! and was answered, its view gauges against the runs the API reports and the events the
//! test knows are past the batch version.

use std::collections::BTreeMap;

use serde_json::json;

use crate::lambda::ingest_json;
use crate::reference::{Accepted, Gen, T0, by_bot_view, date_of};
use crate::server::{TestServer, catalogs, memory};

/// One scrape, parsed: every sample by metric name and its labels.
pub struct Scrape {
    text: String,
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
}

impl Scrape {
    pub async fn take(server: &TestServer) -> Scrape {
        let resp = server.http.get(format!("{}/metrics", server.base)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = resp.text().await.unwrap();
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect("labels end with }"))),
            };
            samples.insert((name.to_string(), labels), value);
        }
        Scrape { text, samples }
    }

    /// The sample of `name` with exactly these labels; `None` if there is none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.get(&(name.to_string(), labels)).copied()
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{}", self.text))
    }
}

/// `k="v",k2="v2"` (values here hold no quotes or backslashes).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let (value, after) = after.split_once('"').expect("closing quote");
        labels.insert(key.trim_start_matches(',').to_string(), value.to_string());
        rest = after;
    }
    labels
}

pub const EVENTS_ROUTE: &str = "/v1/datasets/{name}/events";
const QUERY_ROUTE: &str = "/v1/views/{name}/query";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_acknowledged_and_show_how_far_each_view_is_behind() {
    for catalog in catalogs().await {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(dir.path(), catalog.clone(), &[]);
        server.create_pageviews(by_bot_view()).await;
        let view = [("view", "by_bot")];
        let dataset = [("dataset", "pageviews")];

        // two accepted requests (the second repeats ids of the first), one of invalid events,
        // one of a content type the API refuses
        let mut acc = Accepted::default();
        let mut events_of = Gen(0x5eed_0042);
        let mut duplicates = 0;
        for events in [events_of.events(400, T0, 72, 300), events_of.events(300, T0, 72, 600)] {
            duplicates += ingest_json(&server, &mut acc, &events).await.1;
        }
        assert!(duplicates > 0 && acc.events.len() > 300, "the test needs both kinds of events");
        let bad = json!([{"ts": "not a time", "event_id": "x", "bot": false}]);
        assert_eq!(server.call("POST", "/v1/datasets/pageviews/events", Some(bad)).await.0, 400);
        assert_eq!(server.raw("/v1/datasets/pageviews/events", "text/plain", "{}").await.0, 415);
        for q in [json!({"granularity": "all"}), json!({"granularity": "day", "group_by": ["bot"]})] {
            server.query("by_bot", q).await;
        }
        assert_eq!(server.call("POST", "/v1/views/nope/query", Some(json!({}))).await.0, 404);

        let s = Scrape::take(&server).await;
        let stored = acc.events.len() as f64;
        assert_eq!(s.value("tandem_events_stored_total", &dataset), stored);
        assert_eq!(s.value("tandem_events_duplicate_total", &dataset), duplicates as f64);
        let http = |method: &'static str, route: &'static str, status: &'static str| {
            s.get("tandem_http_requests_total", &[("method", method), ("route", route), ("status", status)])
        };
        assert_eq!(http("POST", EVENTS_ROUTE, "200"), Some(2.0));
        assert_eq!(http("POST", EVENTS_ROUTE, "400"), Some(1.0));
        assert_eq!(http("POST", EVENTS_ROUTE, "415"), Some(1.0));
        assert_eq!(http("POST", QUERY_ROUTE, "200"), Some(2.0));
        assert_eq!(http("POST", QUERY_ROUTE, "404"), Some(1.0));
        assert_eq!(
            s.value("tandem_http_request_duration_seconds_count", &[("method", "POST"), ("route", EVENTS_ROUTE)]),
            4.0
        );
        // one group commit a request (they were sent one after the other), in a histogram
        assert!(s.text.contains("# TYPE tandem_log_fsync_seconds histogram"), "{}", s.text);
        assert_eq!(s.value("tandem_log_fsync_seconds_count", &dataset), 2.0);
        assert_eq!(s.value("tandem_log_fsync_seconds_bucket", &[("dataset", "pageviews"), ("le", "+Inf")]), 2.0);
        assert_eq!(s.value("tandem_view_ready", &view), 1.0);
        assert_eq!(s.value("tandem_view_batch_version", &view), 0.0);
        assert_eq!(s.value("tandem_view_speed_events", &view), stored);
        assert_eq!(s.value("tandem_catalog_up", &[]), 1.0);
        assert_eq!(s.get("tandem_view_last_run_success", &view), None, "no run has ended yet");
        // the server's resident memory, against what the kernel tells the test (it moves a little)
        let kernel = memory(server.pid(), "VmRSS") as f64;
        let rss = s.value("process_resident_memory_bytes", &[]);
        assert!((rss / kernel - 1.0).abs() < 0.25, "reported {rss} B, the kernel says {kernel} B");

        // a batch run takes every event into the version
        let before = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        let run = server.run_batch("by_bot").await;
        let after = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        assert_eq!(run["status"], "succeeded", "{run}");
        let s = Scrape::take(&server).await;
        assert_eq!(s.value("tandem_view_batch_version", &view), run["version"].as_f64().unwrap());
        assert_eq!(s.value("tandem_view_batch_watermark", &view), run["watermark"].as_f64().unwrap());
        assert_eq!(run["watermark"].as_f64(), Some(stored));
        assert_eq!(s.value("tandem_view_speed_events", &view), 0.0);
        assert_eq!(s.value("tandem_view_late_events", &view), 0.0);
        assert_eq!(s.value("tandem_view_last_run_success", &view), 1.0);
        let published = s.value("tandem_view_batch_published_timestamp_seconds", &view);
        assert!(before <= published && published <= after, "{before} <= {published} <= {after}");
        assert_eq!(s.value("tandem_batch_runs_total", &[("status", "succeeded"), ("view", "by_bot")]), 1.0);
        assert!(s.value("tandem_log_segments_sealed_total", &dataset) >= 1.0);

        // events past the watermark: all in the speed layer, late those of a day the version holds
        let newest_day = acc.events.iter().map(|e| date_of(e.ts)).max().unwrap();
        let events = events_of.events(120, T0 + 48 * 3_600_000_000, 72, 1_000_000);
        let (accepted, _) = ingest_json(&server, &mut acc, &events).await;
        let new = &acc.events[acc.events.len() - accepted..];
        let late = new.iter().filter(|e| date_of(e.ts) <= newest_day).count();
        assert!(late > 0 && late < accepted, "the test needs late and on-time events: {late} of {accepted}");
        let s = Scrape::take(&server).await;
        assert_eq!(s.value("tandem_view_speed_events", &view), accepted as f64);
        assert_eq!(s.value("tandem_view_late_events", &view), late as f64);
        assert_eq!(s.value("tandem_events_stored_total", &dataset), acc.events.len() as f64);
        assert_eq!(s.value("tandem_view_batch_watermark", &view), stored);
    }
}

/// `tandem_view_speed_bytes` grows with the speed layer's groups, not with its events: more
/// events into groups it holds leave it exactly as it was (the view's states, count, sum and
/// min of a float, hold nothing on the heap), events of new groups raise it, and a batch run
/// that takes every event into its version empties it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_layer_bytes_follow_groups_not_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, &[]);
    server.create_pageviews(by_bot_view()).await;
    let view = [("view", "by_bot")];
    let group = |e: &crate::reference::Event| (date_of(e.ts), e.bot, e.country);
    let mut acc = Accepted::default();
    let mut events_of = Gen(0x5eed_0b17);

    assert_eq!(Scrape::take(&server).await.value("tandem_view_speed_bytes", &view), 0.0);
    let first = events_of.events(400, T0, 24, 1 << 40);
    ingest_json(&server, &mut acc, &first).await;
    let groups: std::collections::HashSet<_> = first.iter().map(group).collect();
    let held = Scrape::take(&server).await.value("tandem_view_speed_bytes", &view);
    // each group holds at least its three states
    let states = 3 * std::mem::size_of::<tandem_model::agg::MeasureState>();
    assert!(held >= (groups.len() * states) as f64, "{held} B for {} groups", groups.len());

    // ten times as many events, all of groups the speed layer holds
    let more: Vec<_> =
        events_of.events(8000, T0, 24, 1 << 40).into_iter().filter(|e| groups.contains(&group(e))).collect();
    assert!(more.len() > 4000, "the test needs many events of the same groups");
    for chunk in more.chunks(1000) {
        ingest_json(&server, &mut acc, chunk).await;
    }
    let s = Scrape::take(&server).await;
    assert_eq!(s.value("tandem_view_speed_events", &view), acc.events.len() as f64);
    assert_eq!(s.value("tandem_view_speed_bytes", &view), held, "more events of the same groups");

    // events of days the speed layer has no groups for
    let later = events_of.events(400, T0 + 10 * 86_400_000_000, 48, 1 << 40);
    ingest_json(&server, &mut acc, &later).await;
    let grown = Scrape::take(&server).await.value("tandem_view_speed_bytes", &view);
    assert!(grown > held, "new groups: {grown} B against {held} B");

    let run = server.run_batch("by_bot").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let s = Scrape::take(&server).await;
    assert_eq!(s.value("tandem_view_speed_events", &view), 0.0);
    assert_eq!(s.value("tandem_view_speed_bytes", &view), 0.0);
}
