//! The whole Lambda path against the real server: ingest (JSON and NDJSON), speed-only
//! answers, batch runs, merged answers, late events, duplicates, a second view built over
//! existing events, a crash, a clean restart; every answer checked against the reference
//! (`reference.rs`), computed from the raw events, not by tandem's code.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::reference::{
    Accepted, Event, Gen, T0, assert_rows_match, by_bot_view, by_country_view, date_of, reference, shapes,
};
use crate::server::{BIN, TestServer, catalogs, csv_rows, files_under, pageviews_dataset};

/// Posts `events` as one JSON request and checks the answer against the test's own dedup;
/// returns the (accepted, duplicates) counts.
pub async fn ingest_json(server: &TestServer, acc: &mut Accepted, events: &[Event]) -> (usize, usize) {
    let body: Vec<Value> = events.iter().enumerate().map(|(i, e)| e.to_json(i % 2 == 0)).collect();
    let (status, out) = server.call("POST", "/v1/datasets/pageviews/events", Some(Value::Array(body))).await;
    assert_eq!(status, 200, "{out}");
    let (a, d) = acc.add(events);
    assert_eq!(out, json!({"accepted": a, "duplicates": d}));
    (a, d)
}

async fn ingest_ndjson(server: &TestServer, acc: &mut Accepted, events: &[Event]) {
    let body: String = events.iter().map(|e| format!("{}\n", e.to_json(false))).collect();
    let (status, out) = server.raw("/v1/datasets/pageviews/events", "application/x-ndjson", body).await;
    assert_eq!(status, 200, "{out}");
    let (a, d) = acc.add(events);
    assert_eq!(out, json!({"accepted": a, "duplicates": d}));
}

/// Checks every query shape of the given views against the reference.
async fn check_answers(server: &TestServer, events: &[Event], views: &[&str], context: &str) {
    for view in views {
        for (i, shape) in shapes(view).into_iter().enumerate() {
            let q = &shape.query;
            // the Arrow answer holds the same rows, values and freshness; asked first for every
            // other shape (it makes the values of rows events reached but not their JSON text)
            let arrow_first = if i % 2 == 1 { Some(server.query_arrow(view, q.clone()).await) } else { None };
            let answer = server.query(view, q.clone()).await;
            let want = reference(events, view, &shape);
            assert_rows_match(&answer["rows"], &want, &format!("{context}: {view} {q}"));
            let arrow = match arrow_first {
                Some(arrow) => arrow,
                None => server.query_arrow(view, q.clone()).await,
            };
            // (within the float tolerance: the rows of a bucket the range cuts are folded afresh
            // for each answer, and a float sum may round differently in another order)
            assert_rows_match(&arrow["rows"], &want, &format!("{context}: {view} {q}: the Arrow answer's rows"));
            // (a scheduled run may publish a version between the two answers: same events)
            let (a, j) = (&arrow["freshness"], &answer["freshness"]);
            let covered = |f: &Value| f["batch_watermark"].as_u64().unwrap_or(0) + f["speed_events"].as_u64().unwrap();
            assert_eq!(covered(a), covered(j), "{context}: {view} {q}: the Arrow answer's freshness {a}, JSON's {j}");
            assert_eq!(
                a.as_object().unwrap().keys().collect::<Vec<_>>(),
                j.as_object().unwrap().keys().collect::<Vec<_>>()
            );
            // the CSV answer: the same rows, its header the JSON rows' keys
            let (header, records) = server.query_csv(view, q.clone()).await;
            if let Some(first) = answer["rows"].get(0) {
                let mut columns = header.clone();
                columns.sort();
                assert_eq!(columns, first.as_object().unwrap().keys().cloned().collect::<Vec<_>>(), "{view} {q}");
            }
            let csv = csv_rows(&header, &records, &answer["rows"]);
            assert_rows_match(&csv, &want, &format!("{context}: {view} {q}: the CSV answer's rows"));
        }
    }
    let arrow = server.query_arrow("by_country", json!({"granularity": "day"})).await;
    let utc_micros = "Timestamp(µs, \"UTC\")";
    let types = json!([
        ["bucket", utc_micros],
        ["country", "Utf8"],
        ["hi", "Float64"],
        ["lo", "Float64"],
        ["mean", "Float64"],
        ["n_ms", "Int64"],
        ["p90", "Float64"],
        ["total", "Int64"],
        ["uniq", "Int64"],
        ["views", "Int64"]
    ]);
    assert_eq!(arrow["types"], types, "{context}: the Arrow answer's columns");
    // the GET form answers the same as the POST form
    let get = server
        .ok(
            "GET",
            "/v1/views/by_country/query?granularity=day&group_by=country&filter=country:US,DE\
             &having=views:gte:2&having=mean:lt:7000.5",
            None,
        )
        .await;
    let post = server
        .query(
            "by_country",
            json!({"granularity": "day", "group_by": ["country"], "filter": {"country": ["US", "DE"]},
                   "having": {"views": {"gte": 2}, "mean": {"lt": 7000.5}}}),
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
        // the dataset's events, all in its log, none in the master dataset yet
        let dataset = server.ok("GET", "/v1/datasets/pageviews", None).await;
        let log_bytes = files_under(&dir.path().join("log/pageviews"), "seg")
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum::<u64>();
        assert_eq!(dataset["events"], json!(acc.events.len()), "{dataset}");
        assert_eq!(dataset["compacted_events"], json!(0), "{dataset}");
        assert_eq!(dataset["views"], json!(["by_country"]), "{dataset}");
        assert_eq!(dataset["log"], json!({"segments": 1, "bytes": log_bytes}), "{label}: {dataset}");

        // batch run: everything moves to the batch layer, answers do not change
        let run = server.run_batch("by_country").await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let listed = server.ok("GET", "/v1/datasets", None).await;
        let dataset = &listed["datasets"][0];
        assert_eq!(dataset["compacted_events"], json!(acc.events.len()), "{label}: the run compacted all: {listed}");
        assert_eq!(dataset["log"]["segments"], json!(2), "{label}: the run sealed the active segment: {listed}");
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
        let dataset = server.ok("GET", "/v1/datasets/pageviews", None).await;
        assert_eq!(dataset["views"], json!(["by_bot", "by_country"]), "{label}: {dataset}");

        // crash: every acknowledged event is back, answers identical
        server.kill();
        server.restart();
        check_answers(&server, &acc.events, &["by_country", "by_bot"], &format!("{label} after kill -9")).await;
        ingest_json(&server, &mut acc, &rng.events(150, T0, 96, 8000)).await;
        let bot_run = server.run_batch("by_bot").await;
        assert_eq!(bot_run["status"], "succeeded");
        // the list shows each view as it is shown alone (its newest run read one view at a time)
        let list = server.ok("GET", "/v1/views", None).await;
        let listed = list["views"].as_array().unwrap();
        let names: Vec<_> = listed.iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["by_bot", "by_country"]);
        for v in listed {
            let alone = server.ok("GET", &format!("/v1/views/{}", v["name"].as_str().unwrap()), None).await;
            assert_eq!(v, &alone, "{label}");
        }
        assert_eq!(listed[0]["last_run"]["id"], bot_run["id"]);
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
        other.create_pageviews(by_country_view()).await;
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
        server.create_pageviews(by_country_view()).await;
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

/// With segments sealed by size (`--segment-bytes`), a stream of requests spans many segments,
/// each seal starting a new speed map and merging the sealed ones while queries read them:
/// every answer stays exact, before and after a run and with more events on top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_sealed_by_size_keep_answers_exact() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, &["--segment-bytes", "2048", "--segment-interval", "1h"]);
    let mut rng = Gen(21);
    let mut acc = Accepted::default();
    server.create_pageviews(by_country_view()).await;
    for round in 0..10 {
        ingest_json(&server, &mut acc, &rng.events(60, T0, 48, 100_000)).await;
        if round % 5 == 4 {
            check_answers(&server, &acc.events, &["by_country"], &format!("speed layer, round {round}")).await;
        }
    }
    let segments = std::fs::read_dir(dir.path().join("log/pageviews")).unwrap().count();
    assert!(segments >= 6, "600 events in 2 KiB segments sealed only {segments} segments");
    let run = server.run_batch("by_country").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    for _ in 0..3 {
        ingest_ndjson(&server, &mut acc, &rng.events(60, T0, 48, 100_000)).await;
    }
    check_answers(&server, &acc.events, &["by_country"], "batch and speed over many segments").await;
}

/// How many files with `extension` lie under `sub` of the data dir (none if it is not there).
fn files_in(server: &TestServer, sub: &str, extension: &str) -> usize {
    let dir = server.data_dir.join(sub);
    if dir.exists() { files_under(&dir, extension).len() } else { 0 }
}

/// A dataset is deleted only once no view reads it, and then wholly: its catalog record,
/// log and master files. A dataset made again under its name starts from nothing, also when
/// the files of the old one were left behind (a deletion cut short, here a catalog lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_dataset_leaves_nothing_and_its_name_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), None, &[]);
    let mut rng = Gen(13);
    let mut acc = Accepted::default();
    server.create_pageviews(by_country_view()).await;
    ingest_json(&server, &mut acc, &rng.events(300, T0, 48, 1_000)).await;
    assert_eq!(server.run_batch("by_country").await["status"], "succeeded");
    ingest_json(&server, &mut acc, &rng.events(100, T0, 48, 1_000)).await;
    assert!(files_in(&server, "log/pageviews", "seg") > 0 && files_in(&server, "master/pageviews", "parquet") > 0);

    let (status, body) = server.call("DELETE", "/v1/datasets/pageviews", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("\"by_country\""), "{body}");
    check_answers(&server, &acc.events, &["by_country"], "after a refused deletion").await;

    server.ok("DELETE", "/v1/views/by_country", None).await;
    let (status, body) = server.call("DELETE", "/v1/datasets/pageviews", None).await;
    assert_eq!(status, 204, "{body}");
    for (method, path, body) in [
        ("GET", "/v1/datasets/pageviews", None),
        ("DELETE", "/v1/datasets/pageviews", None),
        ("POST", "/v1/datasets/pageviews/events", Some(json!({"ts": T0 / 1000}))),
    ] {
        let (status, body) = server.call(method, path, body).await;
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{method} {path}: {body}");
    }
    assert_eq!(server.ok("GET", "/v1/datasets", None).await, json!({"datasets": []}));
    assert_eq!(files_in(&server, "log/pageviews", "seg"), 0, "log removed");
    assert_eq!(files_in(&server, "master/pageviews", "parquet"), 0, "master dataset removed");

    // made again: only the new events count, in the speed layer and after a run (the same
    // event ids as before are not duplicates of deleted events)
    let mut again = Accepted::default();
    server.create_pageviews(by_country_view()).await;
    ingest_json(&server, &mut again, &rng.events(200, T0, 48, 1_000)).await;
    check_answers(&server, &again.events, &["by_country"], "made again, speed layer").await;
    let stored = server.ok("GET", "/v1/datasets/pageviews", None).await["events"].clone();
    assert_eq!(stored, json!(again.events.len()), "events stored, duplicates not counted");
    assert_eq!(server.run_batch("by_country").await["status"], "succeeded");
    check_answers(&server, &again.events, &["by_country"], "made again, after a run").await;

    // a catalog that lost the dataset while its files stayed: making it again removes them
    server.stop();
    for file in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(file));
    }
    server.restart();
    assert!(files_in(&server, "log/pageviews", "seg") > 0 && files_in(&server, "master/pageviews", "parquet") > 0);
    let mut third = Accepted::default();
    server.create_pageviews(by_country_view()).await;
    ingest_json(&server, &mut third, &rng.events(150, T0, 48, 1_000)).await;
    check_answers(&server, &third.events, &["by_country"], "after leftovers, speed layer").await;
    assert_eq!(server.run_batch("by_country").await["status"], "succeeded");
    check_answers(&server, &third.events, &["by_country"], "after leftovers, after a run").await;
}

/// Making and deleting a dataset of one name at the same moment, again and again, never
/// leaves the server's datasets and the catalog apart, nor a dataset writing into a log that
/// a deletion removed: what it acknowledges is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_made_and_deleted_at_once_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), None, &[]);
    for _ in 0..25 {
        let (made, deleted) = tokio::join!(
            server.call("POST", "/v1/datasets", Some(pageviews_dataset())),
            server.call("DELETE", "/v1/datasets/pageviews", None)
        );
        assert!([201, 409].contains(&made.0) && [204, 404].contains(&deleted.0), "{made:?} {deleted:?}");
    }
    if server.call("GET", "/v1/datasets/pageviews", None).await.0 == 404 {
        server.ok("POST", "/v1/datasets", Some(pageviews_dataset())).await;
    }
    let mut rng = Gen(17);
    let mut acc = Accepted::default();
    ingest_json(&server, &mut acc, &rng.events(50, T0, 24, 1_000_000)).await;
    let listed = server.ok("GET", "/v1/datasets", None).await;
    assert_eq!(listed["datasets"][0]["events"], json!(acc.events.len()), "{listed}");
    server.stop();
    server.restart();
    // (a restart starts a new active segment: the log's files differ, not its bytes)
    let without_segments = |mut listed: Value| {
        listed["datasets"].as_array_mut().unwrap().iter_mut().for_each(|d| d["log"]["segments"] = Value::Null);
        listed
    };
    assert_eq!(
        without_segments(server.ok("GET", "/v1/datasets", None).await),
        without_segments(listed),
        "the catalog and the log hold what the server held"
    );
    // a view over the existing events builds from the log: every acknowledged event is there
    let view = server.ok("POST", "/v1/views", Some(by_country_view())).await;
    assert_eq!(server.wait_run(view["last_run"]["id"].as_i64().unwrap()).await["status"], "succeeded");
    check_answers(&server, &acc.events, &["by_country"], "after a restart").await;
}

/// `GET /v1/views/{name}/runs` answers newest first, `limit` runs at a time, and `before`
/// pages back through the rest: the pages together are the whole list, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_listed_newest_first_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, &[]);
    let mut rng = Gen(11);
    let mut acc = Accepted::default();
    server.create_pageviews(by_country_view()).await;
    let mut started = Vec::new();
    for _ in 0..5 {
        ingest_json(&server, &mut acc, &rng.events(20, T0, 24, 100_000)).await;
        started.push(server.run_batch("by_country").await["id"].as_i64().unwrap());
    }
    let ids = |page: &Value| -> Vec<i64> {
        page["runs"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect()
    };
    let all = ids(&server.ok("GET", "/v1/views/by_country/runs", None).await);
    let mut newest_first = all.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(all, newest_first, "newest first");
    assert!(started.iter().all(|id| all.contains(id)), "{started:?} in {all:?}");

    let mut paged = Vec::new();
    let mut path = "/v1/views/by_country/runs?limit=2".to_string();
    for _ in 0..=all.len() {
        let page = ids(&server.ok("GET", &path, None).await);
        assert!(page.len() <= 2, "{page:?}");
        let Some(last) = page.last() else { break };
        path = format!("/v1/views/by_country/runs?limit=2&before={last}");
        paged.extend(page);
    }
    assert_eq!(paged, all, "the pages, one after another");

    for bad in ["limit=0", "limit=1001", "limit=two", "before=newest", "lmit=2"] {
        let (status, body) = server.call("GET", &format!("/v1/views/by_country/runs?{bad}"), None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_query")), "{bad}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_keeps_the_previous_version_serving_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, &["--segment-interval", "200ms"]);
    let mut rng = Gen(7);
    let mut acc = Accepted::default();
    server.create_pageviews(by_country_view()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_runs_recompute_only_dirty_days() {
    const DAY: i64 = 86_400_000_000;
    for catalog in catalogs().await {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(dir.path(), catalog, &[]);
        let mut rng = Gen(99);
        let mut acc = Accepted::default();
        server.create_pageviews(by_country_view()).await;
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
        assert_eq!(second["rows_in"], json!(fresh.len()), "an incremental run reads only the new events");
        check_answers(&server, &acc.events, &["by_country"], "after an incremental run").await;
        let a = server.query("by_country", json!({})).await;
        assert_eq!(
            (a["freshness"]["late_events"].clone(), a["freshness"]["speed_events"].clone()),
            (json!(0), json!(0))
        );
        // the version directory is whole: clean days carried over, a delta part beside each dirty day's
        let parts = |version: &str| -> BTreeMap<String, usize> {
            std::fs::read_dir(dir.path().join("views/by_country").join(version))
                .unwrap()
                .map(|day| {
                    let day = day.unwrap();
                    let date = day.file_name().to_str().unwrap().trim_start_matches("date=").to_string();
                    (date, std::fs::read_dir(day.path()).unwrap().count())
                })
                .collect()
        };
        let expected: BTreeMap<String, usize> =
            all_days.iter().map(|d| (d.clone(), if dirty.contains(d) { 2 } else { 1 })).collect();
        assert_eq!(parts("v000002"), expected);

        // a full run on request recomputes every day into one part, to the same answers
        let (status, run) = server.call("POST", "/v1/views/by_country/runs", Some(json!({"full": true}))).await;
        assert_eq!(status, 202, "{run}");
        let third = server.wait_run(run["id"].as_i64().unwrap()).await;
        assert_eq!((third["mode"].as_str(), third["rows_in"].clone()), (Some("full"), json!(acc.events.len())));
        assert_eq!(parts("v000003"), all_days.iter().map(|d| (d.clone(), 1)).collect());
        check_answers(&server, &acc.events, &["by_country"], "after a full run").await;

        // late events on the first day, a run after each: the day gains a part per run until it
        // holds MAX_DAY_PARTS; the next run rebuilds it from all its events into one part
        let first_day = all_days.first().unwrap().clone();
        for n in 2..=tandem_batch::run::MAX_DAY_PARTS + 1 {
            let before = acc.events.len();
            ingest_ndjson(&server, &mut acc, &rng.events(7, T0, 24, 1_000_000)).await;
            let run = server.run_batch("by_country").await;
            let version = run["version"].as_i64().unwrap();
            let on_disk = parts(&format!("v{version:06}"));
            let of_day = acc.events.iter().filter(|e| date_of(e.ts) == first_day).count();
            if n <= tandem_batch::run::MAX_DAY_PARTS {
                assert_eq!(on_disk[&first_day], n, "after run {n}");
                assert_eq!(run["rows_in"], json!(acc.events.len() - before));
            } else {
                assert_eq!(on_disk[&first_day], 1, "the day is rebuilt into one part");
                assert_eq!(run["rows_in"], json!(of_day), "a rebuilt day reads all its events");
            }
            assert_eq!(run["partitions"], json!([first_day]));
            check_answers(&server, &acc.events, &["by_country"], &format!("after late run {n}")).await;
        }
        let (status, _) = server.call("POST", "/v1/views/by_country/runs", Some(json!({"fast": true}))).await;
        assert_eq!(status, 400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_schedule_runs_batches_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, &[]);
    let mut rng = Gen(5);
    let mut acc = Accepted::default();
    server.ok("POST", "/v1/datasets", Some(pageviews_dataset())).await;
    let mut view = by_country_view();
    view["schedule"] = json!("*/2 * * * * *"); // every two seconds (six fields: with seconds)
    server.ok("POST", "/v1/views", Some(view.clone())).await;
    // beside it, one that runs only when asked
    view["name"] = json!("by_country_manual");
    view["schedule"] = json!("manual");
    let manual = server.ok("POST", "/v1/views", Some(view)).await;
    assert_eq!(manual["schedule"], "manual");
    ingest_json(&server, &mut acc, &rng.events(100, T0, 24, 100_000)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let runs = server.ok("GET", "/v1/views/by_country/runs", None).await;
        let done = runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["trigger"] == "schedule" && r["status"] == "succeeded")
            .cloned();
        if let Some(run) = done {
            server.wait_run(run["id"].as_i64().unwrap()).await;
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no scheduled run: {runs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check_answers(&server, &acc.events, &["by_country"], "after a scheduled run").await;
    let runs = server.ok("GET", "/v1/views/by_country_manual/runs", None).await;
    assert_eq!(runs["runs"], json!([]), "a manual view never runs by itself");
    let run = server.run_batch("by_country_manual").await;
    assert_eq!((run["status"].as_str(), run["trigger"].as_str()), (Some("succeeded"), Some("manual")), "{run}");
    let (scheduled, manual) =
        (server.query("by_country", json!({})).await, server.query("by_country_manual", json!({})).await);
    assert_eq!(manual["rows"], scheduled["rows"], "the same view under two schedules answers alike");
    assert_eq!(manual["freshness"]["batch_version"], json!(1));
}

/// The runs of `view` that its schedule started.
async fn scheduled_runs(server: &TestServer, view: &str) -> Vec<Value> {
    let runs = server.ok("GET", &format!("/v1/views/{view}/runs"), None).await;
    runs["runs"].as_array().unwrap().iter().filter(|r| r["trigger"] == "schedule").cloned().collect()
}

/// `PATCH /v1/views/{name}` changes when a view runs, at once and across restarts, and keeps
/// its version: a manual view made to run every two seconds runs by itself, made manual
/// again stops, and answers the same all along; bad changes are 400 and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_schedule_changes_without_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), None, &[]);
    let mut rng = Gen(6);
    let mut acc = Accepted::default();
    server.ok("POST", "/v1/datasets", Some(pageviews_dataset())).await;
    let mut view = by_country_view();
    view["schedule"] = json!("manual");
    server.ok("POST", "/v1/views", Some(view)).await;
    ingest_json(&server, &mut acc, &rng.events(100, T0, 24, 100_000)).await;
    let first = server.run_batch("by_country").await;
    assert_eq!(first["status"], "succeeded", "{first}");

    // refused, and nothing changes
    for (body, code) in [
        (json!({"schedule": "every minute"}), "invalid_view"),
        (json!({"schedule": "manual", "filter": "bot = true"}), "invalid_request"),
        (json!({"schedule": 5}), "invalid_request"),
    ] {
        let (status, answer) = server.call("PATCH", "/v1/views/by_country", Some(body.clone())).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (400, Some(code)), "{body}: {answer}");
    }
    let (status, _) = server.call("PATCH", "/v1/views/nope", Some(json!({"schedule": "manual"}))).await;
    assert_eq!(status, 404);
    let unchanged = server.ok("PATCH", "/v1/views/by_country", Some(json!({}))).await;
    assert_eq!((&unchanged["schedule"], &unchanged["batch_version"]), (&json!("manual"), &json!(1)), "{unchanged}");

    // every two seconds: it runs by itself, its version kept meanwhile (after the scheduler,
    // which ticks each second, has seen it manual)
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let changed = server.ok("PATCH", "/v1/views/by_country", Some(json!({"schedule": "*/2 * * * * *"}))).await;
    assert_eq!((&changed["schedule"], &changed["status"]), (&json!("*/2 * * * * *"), &json!("ready")), "{changed}");
    assert_eq!(changed["batch_version"], json!(1), "a changed schedule keeps the version served");
    ingest_json(&server, &mut acc, &rng.events(100, T0, 24, 100_000)).await;
    eventually("a scheduled run", async || !scheduled_runs(&server, "by_country").await.is_empty()).await;
    check_answers(&server, &acc.events, &["by_country"], "after the schedule changed").await;

    // kept across a restart
    server.stop();
    server.restart();
    let kept = server.ok("GET", "/v1/views/by_country", None).await;
    assert_eq!(kept["schedule"], json!("*/2 * * * * *"), "{kept}");
    let before = scheduled_runs(&server, "by_country").await.len();
    eventually("a scheduled run after the restart", async || {
        scheduled_runs(&server, "by_country").await.len() > before
    })
    .await;

    // manual again: no more runs by itself (the one under way, if any, finishes)
    server.ok("PATCH", "/v1/views/by_country", Some(json!({"schedule": "manual"}))).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = scheduled_runs(&server, "by_country").await;
    for run in &settled {
        server.wait_run(run["id"].as_i64().unwrap()).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(scheduled_runs(&server, "by_country").await.len(), settled.len(), "a manual view runs no more");
    check_answers(&server, &acc.events, &["by_country"], "after the schedule went back to manual").await;
    // null: the default, hourly
    let default = server.ok("PATCH", "/v1/views/by_country", Some(json!({"schedule": null}))).await;
    assert_eq!(default["schedule"], json!("0 * * * *"), "{default}");
}

/// The log segments in `dir` (a dataset's log), oldest first, as (first sequence number, path).
fn log_segments(dir: &std::path::Path) -> Vec<(u64, std::path::PathBuf)> {
    let first_seq = |p: &std::path::Path| p.file_stem()?.to_str()?.parse().ok();
    files_under(dir, "seg").into_iter().filter_map(|p| Some((first_seq(&p)?, p))).collect()
}

/// The log's segments once the writer has settled: it seals a full segment just after
/// answering the request that filled it, so a listing taken right after an answer may miss
/// that seal.
async fn settled_segments(dir: &std::path::Path) -> Vec<(u64, std::path::PathBuf)> {
    let mut before = log_segments(dir);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = log_segments(dir);
        if now == before {
            return now;
        }
        before = now;
    }
}

/// Dates a file's last write `seconds` back (two days is past the 24 h of idempotency keys
/// that bound any retention age from below).
fn set_age(path: &std::path::Path, seconds: u64) {
    let then = std::time::SystemTime::now() - Duration::from_secs(seconds);
    std::fs::File::options().write(true).open(path).unwrap().set_modified(then).unwrap();
}

/// Waits until `done` holds (it may ask the server), polling for up to 15 s.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With `--log-retention`, exactly the sealed segments that are old enough, compacted into the
/// master dataset and covered by every view's version are deleted: none while a view has no
/// version, not a young one, not one whose master files do not hold all its events (nor any
/// after it), not one past a view's watermark; and the
/// answers stay exact, after a kill -9 (the speed layers replay what is left of the log) and
/// after a full recompute (from the master dataset alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_retention_deletes_only_segments_the_master_dataset_and_every_version_hold() {
    for catalog in catalogs().await {
        let label = if catalog.is_some() { "postgres" } else { "sqlite" };
        let dir = tempfile::tempdir().unwrap();
        let flags = ["--log-retention", "1s", "--poll-interval", "100ms", "--segment-bytes", "4096"];
        let mut server = TestServer::start(dir.path(), catalog.clone(), &flags);
        let log = dir.path().join("log/pageviews");
        let views = ["by_country", "by_bot"];
        let mut rng = Gen(0x7e7e_0000_0000_0044);
        let mut acc = Accepted::default();
        server.create_pageviews(by_country_view()).await;
        server.ok("POST", "/v1/views", Some(by_bot_view())).await;
        for _ in 0..3 {
            ingest_json(&server, &mut acc, &rng.events(120, T0, 48, 100_000)).await;
        }
        assert_eq!(server.run_batch("by_country").await["status"], "succeeded");

        // while a view has no version yet, the log stays, however old
        let first_segments = log_segments(&log);
        let sealed = &first_segments[..first_segments.len() - 1];
        sealed.iter().for_each(|(_, path)| set_age(path, 2 * 86_400));
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(log_segments(&log), first_segments, "{label}: deleted while by_bot had no version");
        sealed.iter().for_each(|(_, path)| set_age(path, 0));
        assert_eq!(server.run_batch("by_bot").await["status"], "succeeded");
        let by_bot = server.ok("GET", "/v1/views/by_bot", None).await["watermark"].as_u64().unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(log_segments(&log), first_segments, "{label}: covered but young segments deleted");

        // a covered, old segment whose master files are not all there stays too, until they are
        let oldest_seq = first_segments[0].0;
        let hidden = dir.path().join("hidden.parquet");
        let master_file = files_under(&dir.path().join("master/pageviews"), "parquet")
            .into_iter()
            .find(|f| f.file_name().unwrap().to_str().unwrap().starts_with(&format!("{oldest_seq:020}.")))
            .expect("the oldest segment's events are in the master dataset");
        std::fs::rename(&master_file, &hidden).unwrap();
        sealed.iter().for_each(|(_, path)| set_age(path, 2 * 86_400));
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(log_segments(&log), first_segments, "{label}: deleted past a segment lacking master rows");
        std::fs::rename(&hidden, &master_file).unwrap();
        eventually(&format!("{label}: the covered segments deleted once their events are all there"), async || {
            log_segments(&log).first().is_some_and(|(first, _)| *first == by_bot + 1)
        })
        .await;

        // more events, late ones too, in a second version of one view only; then some past
        // its watermark
        for _ in 0..3 {
            ingest_ndjson(&server, &mut acc, &rng.events(120, T0 - 3 * 86_400_000_000, 72, 100_000)).await;
        }
        let by_country = server.run_batch("by_country").await["watermark"].as_u64().unwrap();
        for _ in 0..3 {
            ingest_json(&server, &mut acc, &rng.events(120, T0, 24, 100_000)).await;
        }
        let segments = settled_segments(&log).await;
        let past = |through: u64| segments.iter().filter(|(first, _)| *first > through).cloned().collect::<Vec<_>>();
        assert!(by_bot < by_country && past(by_country).len() >= 2, "{label}: {segments:?}");
        // young segments stay
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(log_segments(&log), segments, "{label}: a young segment was deleted");

        // every sealed segment old now (the active one is never deleted): they go through the
        // lowest watermark, by_bot's, and no further
        segments[..segments.len() - 1].iter().for_each(|(_, path)| set_age(path, 2 * 86_400));
        eventually(&format!("{label}: segments through by_bot's watermark deleted"), async || {
            log_segments(&log).first().is_some_and(|(first, _)| *first == by_bot + 1)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(log_segments(&log), past(by_bot), "{label}");
        // by_bot's next version covers what by_country's does, and those segments go too
        assert_eq!(server.run_batch("by_bot").await["status"], "succeeded");
        eventually(&format!("{label}: segments through by_country's watermark deleted"), async || {
            log_segments(&log).first().is_some_and(|(first, _)| *first == by_country + 1)
        })
        .await;
        check_answers(&server, &acc.events, &views, &format!("{label} after retention")).await;

        server.kill();
        server.restart();
        check_answers(&server, &acc.events, &views, &format!("{label} retention, kill -9")).await;
        let (status, run) = server.call("POST", "/v1/views/by_country/runs", Some(json!({"full": true}))).await;
        assert_eq!(status, 202, "{run}");
        let run = server.wait_run(run["id"].as_i64().unwrap()).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["rows_in"], json!(acc.events.len()), "{label}: the full run read every event");
        check_answers(&server, &acc.events, &views, &format!("{label} retention, full run")).await;
    }
}

/// What the events of `a_dataset_gains_fields_and_every_answer_stays_exact` hold in the two
/// fields added to `pageviews`, by event id (the first event of an id wins, as the server
/// keeps it); an event sent before the fields were added has none.
type Added = BTreeMap<String, (Option<&'static str>, Option<i64>)>;

/// Sends `events` with the added fields `plan` and `score` (some left out), as one JSON
/// request, and keeps what they hold for the accepted ones.
async fn ingest_with_added(server: &TestServer, acc: &mut Accepted, added: &mut Added, events: &[Event]) {
    const PLANS: [Option<&str>; 4] = [Some("free"), Some("pro"), Some("team"), None];
    let mut body = Vec::new();
    let mut values = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let n = e.ts / 1000 + i as i64;
        let (plan, score) = (PLANS[n.rem_euclid(4) as usize], (n % 5 != 0).then_some(n.rem_euclid(1000) - 300));
        let mut event = e.to_json(i % 2 == 0);
        if let Some(p) = plan {
            event["plan"] = json!(p);
        }
        if let Some(s) = score {
            event["score"] = json!(s);
        }
        body.push(event);
        values.push((e.id.clone(), (plan, score)));
    }
    let before = acc.events.len();
    let (status, out) = server.call("POST", "/v1/datasets/pageviews/events", Some(Value::Array(body))).await;
    assert_eq!(status, 200, "{out}");
    let (accepted, duplicates) = acc.add(events);
    assert_eq!(out, json!({"accepted": accepted, "duplicates": duplicates}));
    let fresh: BTreeSet<&str> = acc.events[before..].iter().map(|e| e.id.as_str()).collect();
    for (id, v) in values {
        if fresh.contains(id.as_str()) {
            added.entry(id).or_insert(v);
        }
    }
}

/// The `by_plan` view's rows for all `events`, computed here: by day and plan (null first),
/// count, count and sum and max of `score`; only events whose plan is not `free` (a null plan
/// passes the filter).
fn by_plan_reference(events: &[Event], added: &Added, granularity: &str) -> Vec<Value> {
    const DAY: i64 = 86_400_000_000;
    /// count, count(score), sum(score), max(score)
    type Measures = (i64, i64, Option<i64>, Option<i64>);
    let mut groups: BTreeMap<(i64, Option<&str>), Measures> = BTreeMap::new();
    for e in events {
        let (plan, score) = added.get(&e.id).copied().unwrap_or((None, None));
        if plan == Some("free") {
            continue;
        }
        let bucket = if granularity == "all" { 0 } else { e.ts.div_euclid(DAY) * DAY };
        let g = groups.entry((bucket, plan)).or_default();
        g.0 += 1;
        if let Some(s) = score {
            g.1 += 1;
            g.2 = Some(g.2.unwrap_or(0) + s);
            g.3 = Some(g.3.map_or(s, |m: i64| m.max(s)));
        }
    }
    groups
        .into_iter()
        .map(|((bucket, plan), (n, scored, sum, max))| {
            let mut row = json!({"plan": plan, "n": n, "scored": scored, "total": sum, "best": max});
            if granularity != "all" {
                let t = chrono::DateTime::from_timestamp_micros(bucket).unwrap();
                row["bucket"] = json!(t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
            }
            row
        })
        .collect()
}

/// Fields added to a dataset that holds events (`PATCH /v1/datasets/{name}`): events sent
/// after may hold them, a view made after may read them (its first batch run reads master
/// files written before they existed, as nulls; its speed layer folds log records stored
/// before, as nulls; its filter reads one), and every answer stays the one pass over all
/// acknowledged events: the view made before keeps its answers, both views' answers are
/// checked against the reference through the speed layer, after a restart (the log replayed)
/// and after batch runs. Refused changes change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_gains_fields_and_every_answer_stays_exact() {
    for catalog in catalogs().await {
        let label = if catalog.is_some() { "postgres" } else { "sqlite" };
        gains_fields(catalog, label).await;
    }
}

async fn gains_fields(catalog: Option<String>, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), catalog, &[]);
    let mut rng = Gen(0xadd_f1e1d5);
    let mut acc = Accepted::default();
    let mut added = Added::new();
    server.create_pageviews(by_country_view()).await;
    ingest_json(&server, &mut acc, &rng.events(300, T0, 72, 1_000_000)).await;
    assert_eq!(server.run_batch("by_country").await["status"], "succeeded");
    ingest_json(&server, &mut acc, &rng.events(100, T0, 72, 1_000_000)).await;

    // before: the fields are unknown; refused changes leave the dataset as it is
    let plan_event = json!([{"ts": "2026-11-01T01:00:00Z", "plan": "pro"}]);
    let (status, answer) = server.call("POST", "/v1/datasets/pageviews/events", Some(plan_event.clone())).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_events")), "{answer}");
    let before = server.ok("GET", "/v1/datasets/pageviews", None).await;
    for (body, code) in [
        (json!({"add_fields": {"country": "int64"}}), "invalid_dataset"),
        (json!({"add_fields": {"Plan": "string"}}), "invalid_dataset"),
        (json!({"add_fields": {}}), "invalid_dataset"),
        (json!({"add_fields": {"plan": "text"}}), "invalid_request"),
        (json!({"add_fields": {"plan": "string"}, "drop_fields": ["bot"]}), "invalid_request"),
    ] {
        let (status, answer) = server.call("PATCH", "/v1/datasets/pageviews", Some(body.clone())).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (400, Some(code)), "{body}: {answer}");
    }
    let (status, _) = server.call("PATCH", "/v1/datasets/nope", Some(json!({"add_fields": {"x": "bool"}}))).await;
    assert_eq!(status, 404);
    assert_eq!(server.ok("PATCH", "/v1/datasets/pageviews", Some(json!({}))).await, before);
    assert_eq!(server.ok("GET", "/v1/datasets/pageviews", None).await, before);
    assert!(before.get("added_fields").is_none(), "{before}");

    // added: the answer shows them, and events may hold them
    let changed = server
        .ok("PATCH", "/v1/datasets/pageviews", Some(json!({"add_fields": {"score": "int64", "plan": "string"}})))
        .await;
    assert_eq!(changed["added_fields"], json!(["plan", "score"]), "{changed}");
    assert_eq!((&changed["fields"]["plan"], &changed["fields"]["score"]), (&json!("string"), &json!("int64")));
    assert_eq!(changed["events"], before["events"]);
    let (status, answer) =
        server.call("POST", "/v1/datasets/pageviews/events", Some(json!([{"ts": 1, "score": "high"}]))).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_events")), "typed: {answer}");
    ingest_with_added(&server, &mut acc, &mut added, &rng.events(300, T0, 72, 1_000_000)).await;
    check_answers(&server, &acc.events, &["by_country"], &format!("{label}: the view made before")).await;

    // a view over the new fields, built from master files written before they existed and
    // from the log; a filter on one of them
    let by_plan = json!({"name": "by_plan", "dataset": "pageviews", "granularity": "day", "dimensions": ["plan"],
        "measures": {"n": "count", "scored": "count(score)", "total": "sum(score)", "best": "max(score)"},
        "filter": "plan IS NULL OR plan <> 'free'", "schedule": "manual"});
    let made = server.ok("POST", "/v1/views", Some(by_plan)).await;
    assert_eq!(server.wait_run(made["last_run"]["id"].as_i64().unwrap()).await["status"], "succeeded");
    ingest_with_added(&server, &mut acc, &mut added, &rng.events(200, T0, 72, 1_000_000)).await;
    ingest_json(&server, &mut acc, &rng.events(50, T0, 72, 1_000_000)).await; // without them: null
    let check_by_plan = async |server: &TestServer, acc: &Accepted, added: &Added, context: &str| {
        for granularity in ["day", "all"] {
            let q = json!({"granularity": granularity});
            let want = by_plan_reference(&acc.events, added, granularity);
            let plans: BTreeSet<String> = want.iter().map(|row| row["plan"].to_string()).collect();
            assert_eq!(plans.len(), 3, "{context}: the reference has groups of either plan kept and of none");
            assert_rows_match(&server.query("by_plan", q.clone()).await["rows"], &want, &format!("{context}: {q}"));
            let arrow = server.query_arrow("by_plan", q.clone()).await;
            assert_rows_match(&arrow["rows"], &want, &format!("{context}: {q} as Arrow"));
        }
    };
    check_by_plan(&server, &acc, &added, &format!("{label}: merged")).await;
    check_answers(&server, &acc.events, &["by_country"], &format!("{label}: the view made before, merged")).await;

    // a restart reads the new definition and replays records of both widths
    server.stop();
    server.restart();
    assert_eq!(server.ok("GET", "/v1/datasets/pageviews", None).await["added_fields"], json!(["plan", "score"]));
    check_by_plan(&server, &acc, &added, &format!("{label}: after a restart")).await;
    check_answers(&server, &acc.events, &["by_country"], &format!("{label}: the view made before, after a restart"))
        .await;

    // batch runs over master files of both widths
    ingest_with_added(&server, &mut acc, &mut added, &rng.events(100, T0, 72, 1_000_000)).await;
    for view in ["by_plan", "by_country"] {
        assert_eq!(server.run_batch(view).await["status"], "succeeded", "{view}");
    }
    let served = server.query("by_plan", json!({})).await;
    assert_eq!(served["freshness"]["speed_events"], json!(0), "the run covers every event: {}", served["freshness"]);
    check_by_plan(&server, &acc, &added, &format!("{label}: after batch runs")).await;
    check_answers(&server, &acc.events, &["by_country"], &format!("{label}: the view made before, after batch runs"))
        .await;
    // the event refused before the change is accepted now
    server.ok("POST", "/v1/datasets/pageviews/events", Some(plan_event)).await;
}
