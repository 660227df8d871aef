//! `kill -9` while writers are busy: every acknowledged request is present after restart,
//! exactly once, and no request is ever partly stored.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{TestServer, files_under};

const EVENTS_PER_REQUEST: usize = 40;
const CYCLES: usize = 20;
const WRITERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_concurrent_ingest_loses_and_splits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), None, &["--segment-interval", "150ms"]);
    server
        .ok(
            "POST",
            "/v1/datasets",
            Some(json!({"name": "clicks", "time_field": "ts", "fields": {"ts": "timestamp", "req": "string", "n": "int64"}})),
        )
        .await;
    server
        .ok(
            "POST",
            "/v1/views",
            Some(json!({"name": "per_request", "dataset": "clicks", "granularity": "day", "dimensions": ["req"],
                        "measures": {"events": "count", "total": "sum(n)"}})),
        )
        .await;

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut sent = 0usize;
    for cycle in 0..CYCLES {
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let base = server.base.clone();
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut n = 0;
                loop {
                    let req = format!("c{cycle}w{w}r{n}");
                    let body: Vec<Value> = (0..EVENTS_PER_REQUEST)
                        .map(|i| json!({"ts": 1_793_491_200_000i64 + i as i64, "req": req, "n": i}))
                        .collect();
                    n += 1;
                    match http.post(format!("{base}/v1/datasets/clicks/events")).json(&body).send().await {
                        Ok(r) if r.status() == 200 => {
                            acked.lock().unwrap().insert(req);
                        }
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => return n, // the server is gone
                    }
                }
            }));
        }
        // a batch run now and then, so crashes also land during compaction and runs
        if cycle % 3 == 1 {
            let _ = server.call("POST", "/v1/views/per_request/runs", None).await;
        }
        tokio::time::sleep(Duration::from_millis(120 + (cycle as u64 * 37) % 200)).await;
        server.kill();
        for w in writers {
            sent += w.await.unwrap();
        }
        server.restart();
    }

    let answer = server.query("per_request", json!({"granularity": "all"})).await;
    let counts: HashMap<String, (i64, i64)> = answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (r["req"].as_str().unwrap().to_string(), (r["events"].as_i64().unwrap(), r["total"].as_i64().unwrap()))
        })
        .collect();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > CYCLES * WRITERS, "too few acknowledged requests ({}) to mean anything", acked.len());
    let whole = (EVENTS_PER_REQUEST as i64, (0..EVENTS_PER_REQUEST as i64).sum::<i64>());
    for req in acked.iter() {
        assert_eq!(counts.get(req), Some(&whole), "acknowledged request {req} is not stored exactly once");
    }
    for (req, count) in &counts {
        assert_eq!(count, &whole, "request {req} is partly stored");
    }
    eprintln!("{} requests sent, {} acknowledged, {} stored", sent, acked.len(), counts.len());

    // a batch run over everything agrees
    assert_eq!(server.run_batch("per_request").await["status"], "succeeded");
    let after = server.query("per_request", json!({"granularity": "all"})).await;
    assert_eq!(after["rows"], answer["rows"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_batch_run_fails_it_and_the_next_run_succeeds() {
    use crate::reference::{Accepted, Gen, T0, by_country_view};

    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), None, &[]);
    server.create_pageviews(by_country_view()).await;
    let mut rng = Gen(11);
    let mut acc = Accepted::default();
    for _ in 0..20 {
        let events = rng.events(2000, T0, 24 * 20, 10_000_000);
        let body: Vec<Value> = events.iter().map(|e| e.to_json(false)).collect();
        server.ok("POST", "/v1/datasets/pageviews/events", Some(Value::Array(body))).await;
        acc.add(&events);
    }
    assert_eq!(server.run_batch("by_country").await["status"], "succeeded");
    let events = rng.events(2000, T0, 24 * 20, 10_000_000);
    let body: Vec<Value> = events.iter().map(|e| e.to_json(false)).collect();
    server.ok("POST", "/v1/datasets/pageviews/events", Some(Value::Array(body))).await;
    acc.add(&events);

    let (_, run) = server.call("POST", "/v1/views/by_country/runs", Some(json!({"full": true}))).await;
    let id = run["id"].as_i64().unwrap();
    loop {
        let r = server.ok("GET", &format!("/v1/runs/{id}"), None).await;
        if r["status"] != "queued" {
            assert_eq!(r["status"], "running", "the run finished before it could be interrupted: {r}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill();
    server.restart();
    let interrupted = server.ok("GET", &format!("/v1/runs/{id}"), None).await;
    assert_eq!(interrupted["status"], "failed", "{interrupted}");
    assert!(interrupted["error"].as_str().unwrap().contains("abandoned"));
    let view = server.ok("GET", "/v1/views/by_country", None).await;
    assert_eq!(view["batch_version"], json!(1), "the previous version keeps serving");

    let next = server.run_batch("by_country").await;
    assert_eq!((next["status"].as_str(), next["version"].as_i64()), (Some("succeeded"), Some(2)), "{next}");
    let answer = server.query("by_country", json!({"granularity": "all", "group_by": []})).await;
    let views = acc.events.iter().filter(|e| !e.bot).count();
    assert_eq!(answer["rows"][0]["views"], json!(views));
    // nothing of the interrupted run is left beside the published versions
    let versions: Vec<String> = std::fs::read_dir(dir.path().join("views/by_country"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut versions = versions;
    versions.sort();
    assert_eq!(versions, ["v000001", "v000002"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_is_cut_and_every_acknowledged_event_kept() {
    use crate::server::count_view;

    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), None, &[]);
    server.create_pageviews(count_view()).await;
    let body = |from: usize| {
        json!(
            (from..from + 50)
                .map(|i| json!({"ts": 1_793_491_200_000i64, "event_id": format!("e{i}")}))
                .collect::<Vec<_>>()
        )
    };
    server.ok("POST", "/v1/datasets/pageviews/events", Some(body(0))).await;
    server.ok("POST", "/v1/datasets/pageviews/events", Some(body(50))).await;
    server.kill();

    // a crash in the middle of writing a third request: half a record at the tail
    let log_dir = dir.path().join("log/pageviews");
    let mut segments: Vec<_> = std::fs::read_dir(&log_dir).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    let active = segments.last().unwrap();
    let mut bytes = std::fs::read(active).unwrap();
    let whole = bytes.len();
    bytes.extend_from_slice(&[200, 1, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    std::fs::write(active, &bytes).unwrap();

    server.restart();
    let a = server.query("v", json!({"granularity": "all"})).await;
    assert_eq!(a["rows"][0]["n"], json!(100));
    assert_eq!(std::fs::metadata(active).unwrap().len() as usize, whole, "the torn tail was cut");
    let out = server.ok("POST", "/v1/datasets/pageviews/events", Some(body(100))).await;
    assert_eq!(out["accepted"], json!(50));
    server.kill();
    server.restart();
    assert_eq!(server.query("v", json!({"granularity": "all"})).await["rows"][0]["n"], json!(150));
}

/// Flips one byte in the middle of a file.
fn flip_middle_byte(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(path, &bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_master_file_or_sealed_segment_is_reported_never_skipped() {
    use crate::server::{BIN, count_view};

    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), None, &[]);
    server.create_pageviews(count_view()).await;
    let body: Vec<Value> =
        (0..500).map(|i| json!({"ts": 1_793_491_200_000i64 + i * 1000, "event_id": format!("e{i}")})).collect();
    server.ok("POST", "/v1/datasets/pageviews/events", Some(json!(body))).await;
    // what an interrupted compaction of segment 1 by another build could have left: replaced
    let leftover = dir.path().join("master/pageviews/date=2026-11-01/00000000000000000001.0badf00d.parquet");
    std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
    std::fs::write(&leftover, b"half a file").unwrap();
    assert_eq!(server.run_batch("v").await["status"], "succeeded");
    assert!(!leftover.exists(), "the leftover of an interrupted compaction is removed");
    let before = server.query("v", json!({"granularity": "all"})).await;
    assert_eq!(before["rows"][0]["n"], json!(500));

    // a damaged master file: the next full run fails naming it; version 1 keeps serving
    let master = files_under(&dir.path().join("master"), "parquet");
    assert_eq!(master.len(), 1, "{master:?}");
    flip_middle_byte(&master[0]);
    let (_, run) = server.call("POST", "/v1/views/v/runs", Some(json!({"full": true}))).await;
    let run = server.wait_run(run["id"].as_i64().unwrap()).await;
    assert_eq!(run["status"], "failed", "{run}");
    let file_name = master[0].file_name().unwrap().to_str().unwrap();
    assert!(run["error"].as_str().unwrap().contains(file_name), "the error names the file: {run}");
    assert_eq!(server.query("v", json!({"granularity": "all"})).await["rows"], before["rows"]);

    // a master file gone: the next full run fails rather than publish a version without its
    // events; version 1 keeps serving
    std::fs::rename(&master[0], dir.path().join("gone.parquet")).unwrap();
    let (_, run) = server.call("POST", "/v1/views/v/runs", Some(json!({"full": true}))).await;
    let run = server.wait_run(run["id"].as_i64().unwrap()).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(run["error"].as_str().unwrap().contains("holds 0 events where this run must read 500"), "{run}");
    assert_eq!(server.query("v", json!({"granularity": "all"})).await["rows"], before["rows"]);
    server.kill();

    // a damaged sealed segment: the server refuses to start and says which file and where
    let segment = files_under(&dir.path().join("log/pageviews"), "seg").into_iter().next().unwrap();
    flip_middle_byte(&segment);
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("TANDEM_DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("tandem started on a corrupt sealed segment");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    let segment_name = segment.file_name().unwrap().to_str().unwrap();
    assert!(stderr.contains(segment_name) && stderr.contains("corrupt"), "{stderr}");
}
