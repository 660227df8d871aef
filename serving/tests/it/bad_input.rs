//! Bad input gets a 4xx in the API's error shape and changes nothing.

use serde_json::{Value, json};

use crate::server::{TestServer, pageviews_dataset};

fn assert_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["error"]["details"].is_array(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, &[]);
    server.ok("POST", "/v1/datasets", Some(pageviews_dataset())).await;
    let view = json!({"name": "v", "dataset": "pageviews", "granularity": "hour", "dimensions": ["country"], "measures": {"n": "count"}});
    server.ok("POST", "/v1/views", Some(view.clone())).await;

    // datasets
    let (s, b) = server.call("POST", "/v1/datasets", Some(pageviews_dataset())).await;
    assert_error(s, &b, 409, "conflict");
    for bad in [
        json!({"name": "../etc", "time_field": "ts", "fields": {"ts": "timestamp"}}),
        json!({"name": "Bad", "time_field": "ts", "fields": {"ts": "timestamp"}}),
        json!({"name": "x", "time_field": "n", "fields": {"ts": "timestamp", "n": "int64"}}),
    ] {
        let (s, b) = server.call("POST", "/v1/datasets", Some(bad)).await;
        assert_error(s, &b, 400, "invalid_dataset");
    }
    let (s, b) = server
        .call("POST", "/v1/datasets", Some(json!({"name": "x", "time_field": "ts", "fields": {"ts": "date"}})))
        .await;
    assert_error(s, &b, 400, "invalid_request");

    // events: every problem reported with its index and field; nothing stored
    let (s, b) = server
        .call(
            "POST",
            "/v1/datasets/pageviews/events",
            Some(json!([
                {"ts": "2026-11-01T00:00:00Z", "event_id": "ok"},
                {"ts": "yesterday", "bytes": 1.5, "extra": 1},
                {"event_id": "no time"},
                {"ts": 0, "bytes": 9223372036854775808u64, "bot": "true", "country": ["US"]},
                {"ts": "3000-01-01T00:00:00Z"},
                {"ts": 9_000_000_000_000_000i64}
            ])),
        )
        .await;
    assert_error(s, &b, 400, "invalid_events");
    let details = b["error"]["details"].as_array().unwrap();
    for (index, field) in [
        (1, "ts"),
        (1, "bytes"),
        (1, "extra"),
        (2, "ts"),
        (3, "bytes"),
        (3, "bot"),
        (3, "country"),
        (4, "ts"),
        (5, "ts"),
    ] {
        assert!(
            details.iter().any(|d| d["index"] == index && d["field"] == field),
            "missing ({index}, {field}) in {details:?}"
        );
    }
    let (s, b) = server.raw("/v1/datasets/pageviews/events", "application/json", "{\"ts\": 1").await;
    assert_error(s, &b, 400, "invalid_events");
    let (s, b) = server.raw("/v1/datasets/pageviews/events", "application/json", "\"text\"").await;
    assert_error(s, &b, 400, "invalid_events");
    let (s, b) = server.raw("/v1/datasets/pageviews/events", "application/json", "").await;
    assert_error(s, &b, 400, "invalid_events");
    let (s, b) = server.raw("/v1/datasets/pageviews/events", "application/x-ndjson", "{\"ts\": 1}\nnot json\n").await;
    assert_error(s, &b, 400, "invalid_events");
    let (s, b) = server.raw("/v1/datasets/pageviews/events", "text/plain", "{\"ts\": 1}").await;
    assert_error(s, &b, 415, "unsupported_media_type");
    let (s, b) = server.call("POST", "/v1/datasets/nope/events", Some(json!({"ts": 1}))).await;
    assert_error(s, &b, 404, "not_found");
    let big = format!("[{}]", vec![r#"{"ts": 1, "country": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#; 160_000].join(","));
    let (s, b) = server.raw("/v1/datasets/pageviews/events", "application/json", big).await;
    assert_error(s, &b, 413, "payload_too_large");

    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (s, b) = server.raw("/v1/datasets/pageviews/events", "application/json", deep).await;
    assert_error(s, &b, 400, "invalid_events");
    let huge = json!({"ts": 1, "country": "x".repeat(100_000)});
    let (s, b) = server.call("POST", "/v1/datasets/pageviews/events", Some(huge)).await;
    assert_error(s, &b, 400, "invalid_events");
    let nested = json!({"ts": 1, "country": {"a": 1}});
    let (s, b) = server.call("POST", "/v1/datasets/pageviews/events", Some(nested)).await;
    assert_error(s, &b, 400, "invalid_events");
    let nonfinite = "{\"ts\": 1, \"duration_ms\": 1e999}";
    let (s, b) = server.raw("/v1/datasets/pageviews/events", "application/json", nonfinite).await;
    assert_error(s, &b, 400, "invalid_events");

    // a valid event with an unusable Idempotency-Key
    for key in ["has space", &"k".repeat(256)] {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/datasets/pageviews/events", server.base))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(r#"{"ts": 1, "country": "DE"}"#)
            .send()
            .await
            .unwrap();
        let s = resp.status().as_u16();
        assert_error(s, &resp.json().await.unwrap(), 400, "invalid_request");
    }

    let a = server.query("v", json!({"granularity": "all", "group_by": []})).await;
    assert_eq!(a["rows"], json!([]), "nothing was stored by refused requests");

    // a media type is matched as HTTP has it: in any case, with parameters
    let types =
        ["Application/JSON; charset=utf-8", "APPLICATION/X-NDJSON", "application/ndjson", "application/jsonl ;q=1"];
    for (i, content_type) in types.into_iter().enumerate() {
        let event = format!("{{\"ts\": {i}, \"country\": \"DE\"}}\n");
        let (s, b) = server.raw("/v1/datasets/pageviews/events", content_type, event).await;
        assert_eq!((s, b), (200, json!({"accepted": 1, "duplicates": 0})), "{content_type}");
    }
    let a = server.query("v", json!({"granularity": "all", "group_by": []})).await;
    assert_eq!(a["rows"], json!([{"n": types.len()}]));

    // views
    for (bad, code) in [
        (
            json!({"name": "w", "dataset": "pageviews", "granularity": "hour", "measures": {"n": "count"}, "filter": "bot = false; DROP TABLE views"}),
            "invalid_view",
        ),
        (
            json!({"name": "w", "dataset": "pageviews", "granularity": "hour", "measures": {"n": "count"}, "filter": "nope = 1"}),
            "invalid_view",
        ),
        (
            json!({"name": "w", "dataset": "pageviews", "granularity": "hour", "measures": {"n": "count"}, "filter": "duration_ms + 1"}),
            "invalid_view",
        ),
        // filters that could fail on some event: refused, not skipped at ingest
        (
            json!({"name": "w", "dataset": "pageviews", "granularity": "hour", "measures": {"n": "count"}, "filter": "1000 / bytes > 1"}),
            "invalid_view",
        ),
        (
            json!({"name": "w", "dataset": "pageviews", "granularity": "hour", "measures": {"n": "count"}, "filter": "CAST(country AS BIGINT) > 1"}),
            "invalid_view",
        ),
        (
            json!({"name": "w", "dataset": "pageviews", "granularity": "hour", "measures": {"n": "count"}, "filter": "ts > 'last week'"}),
            "invalid_view",
        ),
        (
            json!({"name": "w", "dataset": "pageviews", "granularity": "hour", "measures": {"n": "sum(country)"}}),
            "invalid_view",
        ),
        (
            json!({"name": "w", "dataset": "pageviews", "granularity": "hour", "dimensions": ["duration_ms"], "measures": {"n": "count"}}),
            "invalid_view",
        ),
        (
            json!({"name": "w", "dataset": "pageviews", "granularity": "hour", "measures": {"n": "count"}, "schedule": "every day"}),
            "invalid_view",
        ),
        (json!({"name": "w", "dataset": "nope", "granularity": "hour", "measures": {"n": "count"}}), "invalid_view"),
        (
            json!({"name": "w", "dataset": "pageviews", "granularity": "fortnight", "measures": {"n": "count"}}),
            "invalid_request",
        ),
        // weeks and months are for queries only
        (
            json!({"name": "w", "dataset": "pageviews", "granularity": "week", "measures": {"n": "count"}}),
            "invalid_view",
        ),
    ] {
        let (s, b) = server.call("POST", "/v1/views", Some(bad.clone())).await;
        assert_error(s, &b, 400, code);
    }
    let (s, b) = server.call("POST", "/v1/views", Some(view)).await;
    assert_error(s, &b, 409, "conflict");
    let (s, b) = server.call("GET", "/v1/views/w", None).await;
    assert_error(s, &b, 404, "not_found");

    // a route asked with a method it does not take, and no route at all: the same error shape
    for (method, path, allow) in
        [("PUT", "/v1/datasets/pageviews", "GET,HEAD,PATCH,DELETE"), ("PUT", "/v1/views/v/query", "POST,GET,HEAD")]
    {
        let resp = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
        let s = resp.status().as_u16();
        assert_error(s, &resp.json().await.unwrap(), 405, "method_not_allowed");
    }
    let (s, b) = server.call("GET", "/v2/datasets", None).await;
    assert_error(s, &b, 404, "not_found");

    // queries that do not fit the view
    for q in [
        json!({"granularity": "minute"}),
        json!({"group_by": ["bot"]}),
        json!({"measures": ["nope"]}),
        json!({"filter": {"bot": [true]}}),
        json!({"order_by": [{"field": "total"}]}),
        json!({"from": "yesterday"}),
        json!({"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}),
        json!({"unknown": 1}),
        json!({"granularity": "day", "time_zone": "Mars/Olympus"}),
        json!({"exclude": {"bot": [true]}}),
        // having: an unknown measure, one not returned, an unknown comparison, a value of the
        // wrong type, null
        json!({"having": {"nope": {"gt": 1}}}),
        json!({"measures": [], "having": {"n": {"gt": 1}}}),
        json!({"having": {"n": {"above": 1}}}),
        json!({"having": {"n": {"gt": "many"}}}),
        json!({"having": {"n": {"gt": null}}}),
        // half an hour off UTC: not a union of the view's hours
        json!({"granularity": "day", "time_zone": "Asia/Kolkata", "from": "2026-01-01T00:00:00Z"}),
        // without a range: Berlin's local mean time of 1893 and before is too
        json!({"granularity": "day", "time_zone": "Europe/Berlin"}),
    ] {
        let (s, b) = server.call("POST", "/v1/views/v/query", Some(q.clone())).await;
        assert!(s == 400, "{q}: {s} {b}");
    }
    // a POST with no body is an empty object: the whole query, or a definition missing its fields
    let (s, b) = server.call("POST", "/v1/views/v/query", None).await;
    assert_eq!((s, &b["rows"]), (200, &server.query("v", json!({})).await["rows"]), "{b}");
    let (s, b) = server.call("POST", "/v1/views", None).await;
    assert_error(s, &b, 400, "invalid_request");
    let (s, b) = server.raw("/v1/views/v/query", "text/plain", "{}").await;
    assert_error(s, &b, 415, "unsupported_media_type");
    let (s, b) = server.call("GET", "/v1/views/v/query?color=red", None).await;
    assert_error(s, &b, 400, "invalid_query");
    for having in ["n:gt", "n:above:1", "n:gt:many"] {
        let (s, b) = server.call("GET", &format!("/v1/views/v/query?having={having}"), None).await;
        assert_error(s, &b, 400, "invalid_query");
    }
    // the answer's format, from Accept: 406 when it allows none of JSON, Arrow and CSV
    let arrow = "application/vnd.apache.arrow.stream";
    let csv = "text/csv; charset=utf-8; header=present";
    for (accept, want) in [
        ("text/html", None),
        ("image/png, text/plain", None),
        (&format!("{arrow};q=0, text/html"), None),
        ("text/csv", Some(csv)),
        (&format!("{arrow};q=0, text/csv"), Some(csv)),
        ("text/csv;q=0, application/json", Some("application/json")),
        (&format!("{arrow}; q=0, application/json"), Some("application/json")),
        ("text/csv, */*;q=0.1", Some(csv)),
        ("text/html, */*;q=0.1", Some("application/json")),
        ("application/*", Some("application/json")),
        (&format!("application/json, {arrow}"), Some(arrow)),
        (&format!("text/csv;q=0.9, {arrow};q=0.5"), Some(arrow)),
    ] {
        let resp = server
            .http
            .get(format!("{}/v1/views/v/query?granularity=all", server.base))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
        let body = resp.bytes().await.unwrap();
        match want {
            None => assert_error(status, &serde_json::from_slice(&body).unwrap(), 406, "not_acceptable"),
            Some(want) => assert_eq!((status, content_type.as_str()), (200, want), "Accept: {accept}"),
        }
    }
    let (s, b) = server.call("GET", "/v1/runs/999", None).await;
    assert_error(s, &b, 404, "not_found");

    // and the server is still healthy
    assert_eq!(server.call("GET", "/healthz", None).await.0, 200);
    assert_eq!(server.call("GET", "/readyz", None).await.0, 200);
    let (s, _) = server.call("DELETE", "/v1/views/v", None).await;
    assert_eq!(s, 204);
    let (s, b) = server.call("POST", "/v1/views/v/query", Some(json!({}))).await;
    assert_error(s, &b, 404, "not_found");
}
