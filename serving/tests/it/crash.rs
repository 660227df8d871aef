//! `kill -9` while writers are busy: every acknowledged request is present after restart,
//! exactly once, and no request is ever partly stored.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::server::TestServer;

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
