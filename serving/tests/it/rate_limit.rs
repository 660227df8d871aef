//! With `--rate-limit N`, each client gets N requests a second (in bursts of as many) to
//! `/v1/*` and `/metrics`; past that, 429 `rate_limited` with `Retry-After`, and nothing of the
//! request is done. A client is its API key, or without keys its address; probes are never
//! limited.

use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{TestServer, pageviews_dataset};

/// Status, `Retry-After` and body of `method path` sent with `key` (if any).
async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Option<u64>, Value) {
    let mut req = server.http.request(method.parse().unwrap(), format!("{}{path}", server.base));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
    let text = resp.text().await.unwrap();
    (status, retry, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// How many of `n` requests sent at once were served, and the first refusal. (At once, so
/// that a slow machine, or the other suites' load beside this one, does not spread them over
/// long enough for the budget to come back.)
async fn burst(server: &TestServer, n: usize, key: Option<&str>) -> (usize, Option<(u16, Option<u64>, Value)>) {
    let replies = futures::future::join_all((0..n).map(|_| send(server, "GET", "/v1/datasets", key, None))).await;
    let served = replies.iter().filter(|r| r.0 == 200).count();
    (served, replies.into_iter().find(|r| r.0 != 200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_is_held_to_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, &["--rate-limit", "5"]);
    // a burst of the rate is served whole; of the rest, sent at once, at most a few
    let (served, refused) = burst(&server, 20, None).await;
    assert!((5..=8).contains(&served), "{served} of 20 served");
    let (status, retry, body) = refused.expect("some were refused");
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
    assert_eq!(retry, Some(1), "Retry-After in whole seconds, at least 1");
    // probes are not limited
    for _ in 0..10 {
        assert_eq!(send(&server, "GET", "/healthz", None, None).await.0, 200);
    }
    // a refused request does nothing
    let (status, _, _) = send(&server, "POST", "/v1/datasets", None, Some(&pageviews_dataset())).await;
    assert_eq!(status, 429);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, list) = send(&server, "GET", "/v1/datasets", None, None).await;
    assert_eq!((status, list), (200, json!({"datasets": []})), "the budget came back; nothing was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_keys_each_key_has_its_own_budget() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        TestServer::start(dir.path(), None, &["--rate-limit", "3", "--api-key", "one", "--read-api-key", "two"]);
    let (served, refused) = burst(&server, 12, Some("one")).await;
    assert!((3..=5).contains(&served), "{served} of 12 served");
    assert_eq!(refused.map(|r| r.0), Some(429));
    // the other key, from the same address, still has its whole budget
    assert_eq!(burst(&server, 3, Some("two")).await.0, 3);
    // requests without a valid key are refused before any budget is counted
    for _ in 0..5 {
        assert_eq!(send(&server, "GET", "/v1/datasets", Some("three"), None).await.0, 401);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(burst(&server, 3, Some("two")).await.0, 3);
}
