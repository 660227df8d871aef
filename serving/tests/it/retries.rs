//! Retries: an `Idempotency-Key` makes a retried request a no-op that answers like the
//! first, across a crash too; dedup by id holds across restarts and across batch/speed.

use serde_json::json;

use crate::server::{TestServer, count_view};

async fn post_with_key(server: &TestServer, key: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = server
        .http
        .post(format!("{}/v1/datasets/pageviews/events", server.base))
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn total_views(server: &TestServer) -> serde_json::Value {
    server.query("v", json!({"granularity": "all", "group_by": []})).await["rows"][0]["n"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_and_ids_survive_restarts_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), None, &[]);
    server.create_pageviews(count_view()).await;
    let batch = |ids: &[&str]| {
        json!(ids.iter().map(|id| json!({"ts": 1_793_491_200_000i64, "event_id": id})).collect::<Vec<_>>())
    };

    let (s, first) = post_with_key(&server, "req-1", batch(&["a", "b", "c"])).await;
    assert_eq!((s, first.clone()), (200, json!({"accepted": 3, "duplicates": 0})));
    // a retry, even with a different body, answers the same and stores nothing
    let (s, again) = post_with_key(&server, "req-1", batch(&["d"])).await;
    assert_eq!((s, again), (200, first.clone()));
    assert_eq!(total_views(&server).await, json!(3));

    server.kill();
    server.restart();
    let (s, after_crash) = post_with_key(&server, "req-1", batch(&["e"])).await;
    assert_eq!((s, after_crash), (200, first.clone()));
    assert_eq!(total_views(&server).await, json!(3));

    // ids dedup across a batch run and a restart: "a" is in the batch layer now
    assert_eq!(server.run_batch("v").await["status"], "succeeded");
    server.stop();
    server.restart();
    let (s, out) = post_with_key(&server, "req-2", batch(&["a", "d"])).await;
    assert_eq!((s, out), (200, json!({"accepted": 1, "duplicates": 1})));
    assert_eq!(total_views(&server).await, json!(4));

    for bad in ["", "has space", &"k".repeat(256)] {
        let (s, body) = post_with_key(&server, bad, batch(&["z"])).await;
        assert_eq!(s, 400, "{bad:?}: {body}");
    }
    assert_eq!(total_views(&server).await, json!(4));
}
