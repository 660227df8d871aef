//! With `--api-key`, the API and `/metrics` answer only requests that carry a key; health
//! checks stay open. Without keys (every other suite) nothing is asked.

use serde_json::{Value, json};

use crate::server::{TestServer, pageviews_dataset};

/// Sends `method path` with `authorization` (if any); returns the status, the
/// `WWW-Authenticate` header and the body (JSON, or text for `/metrics`).
async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let mut req = server.http.request(method.parse().unwrap(), format!("{}{path}", server.base));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let challenge = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    (status, challenge, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_keys_only_requests_that_carry_one_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, &["--api-key", "first-key", "--api-key", "k2"]);
    let event = json!({"ts": "2026-11-01T10:00:00Z", "event_id": "a", "country": "US"});
    let view = json!({"name": "v", "dataset": "pageviews", "granularity": "hour", "measures": {"n": "count"}});

    // refused, and nothing changes: no key, a wrong one, a key under another scheme
    for authorization in
        [None, Some("Bearer first"), Some("Bearer first-key2"), Some("Basic first-key"), Some("first-key")]
    {
        for (method, path, body) in [
            ("POST", "/v1/datasets", Some(pageviews_dataset())),
            ("GET", "/v1/datasets", None),
            ("GET", "/metrics", None),
            ("GET", "/v1/openapi.json", None),
            ("DELETE", "/v1/views/v", None),
        ] {
            let (status, challenge, body) = send(&server, method, path, authorization, body).await;
            assert_eq!(
                (status, challenge.as_deref()),
                (401, Some("Bearer")),
                "{authorization:?} {method} {path}: {body}"
            );
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
    }
    // open to probes
    for path in ["/healthz", "/readyz"] {
        assert_eq!(send(&server, "GET", path, None, None).await.0, 200, "{path}");
    }

    // served with either key, the scheme in any case
    for (authorization, (method, path, body), want) in [
        ("Bearer first-key", ("POST", "/v1/datasets", Some(pageviews_dataset())), 201),
        ("bearer k2", ("POST", "/v1/views", Some(view)), 201),
        ("BEARER first-key", ("POST", "/v1/datasets/pageviews/events", Some(event)), 200),
    ] {
        let (status, _, body) = send(&server, method, path, Some(authorization), body).await;
        assert_eq!(status, want, "{authorization} {method} {path}: {body}");
    }
    let (status, _, answer) = send(&server, "GET", "/v1/views/v/query?granularity=all", Some("Bearer k2"), None).await;
    assert_eq!((status, &answer["rows"]), (200, &json!([{"n": 1}])), "{answer}");
    let (status, _, metrics) = send(&server, "GET", "/metrics", Some("Bearer first-key"), None).await;
    assert_eq!(status, 200);
    assert!(metrics.as_str().unwrap().contains("tandem_events_stored_total{dataset=\"pageviews\"} 1"), "{metrics}");
    // the API's document says so: a bearer scheme asked of every operation but the probes
    let (status, _, doc) = send(&server, "GET", "/v1/openapi.json", Some("Bearer k2"), None).await;
    assert_eq!(status, 200);
    let scheme = &doc["components"]["securitySchemes"]["api_key"];
    assert_eq!((&scheme["type"], &scheme["scheme"]), (&json!("http"), &json!("bearer")), "{scheme}");
    assert_eq!(doc["security"], json!([{"api_key": []}]));
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(doc["paths"][probe]["get"]["security"], json!([{}]), "{probe}");
    }
    // refusals are counted, under the route asked
    assert!(
        metrics.as_str().unwrap().lines().any(|l| l.starts_with("tandem_http_requests_total")
            && l.contains("route=\"/v1/datasets\"")
            && l.contains("status=\"401\"")),
        "{metrics}"
    );
}

/// A read key reads (and queries by POST), an ingest key only sends events, a full key does
/// everything; what a scope does not take is 403 `forbidden` and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_does_what_its_scope_takes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        None,
        &["--api-key", "admin", "--read-api-key", "dash", "--ingest-api-key", "shipper"],
    );
    let (admin, dash, shipper) = (Some("Bearer admin"), Some("Bearer dash"), Some("Bearer shipper"));
    let view = json!({"name": "v", "dataset": "pageviews", "granularity": "hour", "measures": {"n": "count"}});
    let event = |id: &str| json!({"ts": "2026-11-01T10:00:00Z", "event_id": id, "country": "US"});
    let count = || async {
        let (status, _, answer) = send(&server, "GET", "/v1/views/v/query?granularity=all", admin, None).await;
        assert_eq!(status, 200, "{answer}");
        answer["rows"][0]["n"].as_i64().unwrap_or(0)
    };

    // the narrow keys cannot make or delete anything
    for key in [dash, shipper] {
        for (method, path, body) in
            [("POST", "/v1/datasets", Some(pageviews_dataset())), ("DELETE", "/v1/datasets/pageviews", None)]
        {
            let (status, _, body) = send(&server, method, path, key, body).await;
            assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{key:?} {method} {path}");
        }
    }
    let (status, _, list) = send(&server, "GET", "/v1/datasets", admin, None).await;
    assert_eq!((status, list), (200, json!({"datasets": []})));
    for (method, path, body) in [("POST", "/v1/datasets", pageviews_dataset()), ("POST", "/v1/views", view)] {
        assert_eq!(send(&server, method, path, admin, Some(body)).await.0, 201, "{path}");
    }

    // the shipper sends, and reads nothing; the dashboard reads, and sends nothing
    let events = "/v1/datasets/pageviews/events";
    assert_eq!(send(&server, "POST", events, shipper, Some(event("a"))).await.0, 200);
    let (status, _, body) = send(&server, "POST", events, dash, Some(event("b"))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    assert_eq!(count().await, 1, "only the shipper's event is stored");
    for (method, path, body) in [
        ("GET", "/v1/datasets/pageviews", None),
        ("GET", "/v1/views/v/query", None),
        ("POST", "/v1/views/v/query", Some(json!({"granularity": "all"}))),
        ("GET", "/metrics", None),
        ("GET", "/v1/openapi.json", None),
    ] {
        let (dash_status, _, answer) = send(&server, method, path, dash, body.clone()).await;
        assert_eq!(dash_status, 200, "dashboard {method} {path}: {answer}");
        let (status, _, _) = send(&server, method, path, shipper, body).await;
        assert_eq!(status, 403, "shipper {method} {path}");
    }
    let (status, _, answer) =
        send(&server, "POST", "/v1/views/v/query", dash, Some(json!({"granularity": "all"}))).await;
    assert_eq!((status, &answer["rows"]), (200, &json!([{"n": 1}])));
    // nor may the dashboard run or delete a view
    for (method, path) in [("POST", "/v1/views/v/runs"), ("DELETE", "/v1/views/v")] {
        assert_eq!(send(&server, method, path, dash, None).await.0, 403, "{method} {path}");
    }
    let (status, _, view) = send(&server, "GET", "/v1/views/v", admin, None).await;
    assert_eq!((status, &view["last_run"]), (200, &Value::Null), "no run was started: {view}");
    // an unknown key is still 401, not 403
    assert_eq!(send(&server, "GET", "/v1/datasets", Some("Bearer dash2"), None).await.0, 401);
}

/// Keys issued through the API (`POST /v1/keys`): each does what its scope and datasets
/// take, from the moment it is issued until it is deleted, across restarts (with or
/// without the flags' keys), on both catalogs; its secret is answered once and kept nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_keys_do_what_their_scope_and_datasets_take_until_deleted() {
    for catalog in crate::server::catalogs().await {
        let label = if catalog.is_some() { "postgres" } else { "sqlite" };
        let dir = tempfile::tempdir().unwrap();
        let mut server = TestServer::start(dir.path(), catalog.clone(), &["--api-key", "admin"]);
        let admin = Some("Bearer admin");
        let bearer = |issued: &Value| format!("Bearer {}", issued["key"].as_str().unwrap());
        let mut other = pageviews_dataset();
        other["name"] = json!("other");
        for (path, body) in [
            ("/v1/datasets", pageviews_dataset()),
            ("/v1/datasets", other),
            (
                "/v1/views",
                json!({"name": "v", "dataset": "pageviews", "granularity": "hour", "measures": {"n": "count"}}),
            ),
            ("/v1/views", json!({"name": "w", "dataset": "other", "granularity": "hour", "measures": {"n": "count"}})),
        ] {
            assert_eq!(send(&server, "POST", path, admin, Some(body)).await.0, 201, "{label}: {path}");
        }
        let issue = |body: Value| {
            let server = &server;
            async move { send(server, "POST", "/v1/keys", admin, Some(body)).await }
        };
        let (status, _, shipper) =
            issue(json!({"name": "shipper", "scope": "ingest", "datasets": ["pageviews"]})).await;
        assert_eq!(status, 201, "{label}: {shipper}");
        let (_, _, dash) = issue(json!({"name": "dash", "scope": "read", "datasets": ["pageviews"]})).await;
        let (_, _, ops) = issue(json!({"name": "ops", "scope": "all"})).await;
        assert_eq!(
            (&dash["scope"], &dash["datasets"], &ops["datasets"]),
            (&json!("read"), &json!(["pageviews"]), &Value::Null),
            "{label}"
        );
        let secrets: Vec<&str> = [&shipper, &dash, &ops].iter().map(|k| k["key"].as_str().unwrap()).collect();
        assert!(secrets.iter().all(|s| s.starts_with("tdk_") && s.len() == 68), "{secrets:?}");
        let (shipper, dash, ops) = (bearer(&shipper), bearer(&dash), bearer(&ops));
        let (shipper, dash, ops) = (Some(shipper.as_str()), Some(dash.as_str()), Some(ops.as_str()));

        let event = |id: &str| json!({"ts": "2026-11-01T10:00:00Z", "event_id": id, "country": "US"});
        let count = |view: &'static str| {
            let server = &server;
            async move {
                let path = format!("/v1/views/{view}/query?granularity=all");
                let (status, _, answer) = send(server, "GET", &path, admin, None).await;
                assert_eq!(status, 200, "{answer}");
                answer["rows"][0]["n"].as_i64().unwrap_or(0)
            }
        };
        // each key, request by request: what its scope and datasets take, and what they refuse
        for (key, method, path, body, want) in [
            (shipper, "POST", "/v1/datasets/pageviews/events", Some(event("a")), 200),
            (shipper, "POST", "/v1/datasets/other/events", Some(event("b")), 403),
            (shipper, "GET", "/v1/views/v/query", None, 403),
            (dash, "GET", "/v1/views/v/query?granularity=all", None, 200),
            (dash, "POST", "/v1/views/v/query", Some(json!({})), 200),
            (dash, "GET", "/v1/datasets/pageviews", None, 200),
            (dash, "GET", "/v1/views/w/query", None, 403),
            (dash, "GET", "/v1/datasets/other", None, 403),
            (dash, "GET", "/v1/datasets", None, 403),
            (dash, "GET", "/metrics", None, 403),
            (dash, "GET", "/v1/views/nope", None, 403),
            (dash, "POST", "/v1/datasets/pageviews/events", Some(event("c")), 403),
            (dash, "GET", "/v1/keys", None, 403),
            (ops, "POST", "/v1/datasets/other/events", Some(event("d")), 200),
            (ops, "GET", "/v1/keys", None, 200),
        ] {
            let (status, _, answer) = send(&server, method, path, key, body).await;
            assert_eq!(status, want, "{label}: {key:?} {method} {path}: {answer}");
            if status == 403 {
                assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
            }
        }
        assert_eq!((count("v").await, count("w").await), (1, 1), "{label}: only the allowed events are stored");

        // listed by name without their secrets; refused: a taken name, a bad one, an unknown
        // dataset or scope, no datasets, another key, and any key request by a limited key
        let (status, _, list) = send(&server, "GET", "/v1/keys", admin, None).await;
        assert_eq!(status, 200);
        let names: Vec<&str> = list["keys"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["dash", "ops", "shipper"], "{label}: {list}");
        let text = list.to_string();
        assert!(secrets.iter().all(|s| !text.contains(&s[4..])), "{label}: a secret is listed: {list}");
        for (body, want) in [
            (json!({"name": "dash", "scope": "read"}), 409),
            (json!({"name": "Dash!", "scope": "read"}), 400),
            (json!({"name": "x", "scope": "read", "datasets": ["nope"]}), 400),
            (json!({"name": "x", "scope": "read", "datasets": []}), 400),
            (json!({"name": "x", "scope": "write"}), 400),
            (json!({"name": "x", "scope": "read", "color": "red"}), 400),
        ] {
            let (status, _, answer) = issue(body.clone()).await;
            assert_eq!(status, want, "{label}: {body}: {answer}");
        }
        let limited = json!({"name": "y", "scope": "all", "datasets": ["pageviews"]});
        let (_, _, limited) = issue(limited).await;
        let limited = bearer(&limited);
        let (status, _, answer) =
            send(&server, "POST", "/v1/keys", Some(&limited), Some(json!({"name": "z", "scope": "all"}))).await;
        assert_eq!(status, 403, "{label}: a key limited to datasets issues none: {answer}");

        // across a restart with the flags' key, and one without any flag: the issued keys
        // are still asked for and still taken
        for flags in [&["--api-key", "admin"][..], &[]] {
            server.stop();
            server = TestServer::start(dir.path(), catalog.clone(), flags);
            let (status, challenge, _) = send(&server, "GET", "/v1/views/v", None, None).await;
            assert_eq!((status, challenge.as_deref()), (401, Some("Bearer")), "{label} {flags:?}: no key");
            assert_eq!(send(&server, "GET", "/v1/views/v/query", dash, None).await.0, 200, "{label} {flags:?}");
            assert_eq!(send(&server, "GET", "/v1/views/w/query", dash, None).await.0, 403, "{label} {flags:?}");
            let admin_status = send(&server, "GET", "/v1/keys", admin, None).await.0;
            assert_eq!(admin_status, if flags.is_empty() { 401 } else { 200 }, "{label} {flags:?}");
        }

        // deleted: refused at once (401); the last key that may manage keys stays
        let (status, _, _) = send(&server, "DELETE", "/v1/keys/dash", ops, None).await;
        assert_eq!(status, 204, "{label}");
        assert_eq!(send(&server, "GET", "/v1/views/v/query", dash, None).await.0, 401, "{label}: deleted");
        assert_eq!(send(&server, "DELETE", "/v1/keys/dash", ops, None).await.0, 404, "{label}: deleted twice");
        let (status, _, answer) = send(&server, "DELETE", "/v1/keys/ops", ops, None).await;
        assert_eq!(status, 409, "{label}: the last managing key: {answer}");
        assert_eq!(send(&server, "GET", "/v1/keys", ops, None).await.0, 200, "{label}: ops still works");
    }
}

/// A server that asks no key issues none: a key issued there would shut out every client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_keys_issues_none() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, &[]);
    let (status, _, answer) =
        send(&server, "POST", "/v1/keys", None, Some(json!({"name": "first", "scope": "all"}))).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (409, Some("conflict")), "{answer}");
    let (status, _, list) = send(&server, "GET", "/v1/keys", None, None).await;
    assert_eq!((status, list), (200, json!({"keys": []})));
    assert_eq!(send(&server, "GET", "/v1/datasets", None, None).await.0, 200, "still open");
}
