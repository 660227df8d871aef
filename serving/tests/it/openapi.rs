//! `GET /v1/openapi.json` describes the API the server answers: every path of the document
//! takes exactly the methods the document names for it, and the answers of a whole session
//! through the API (successes and errors) fit the document's schema for their status. The
//! schemas are checked by a small JSON Schema reader here, which knows the keywords the
//! document uses and fails on any other, and which takes an object's keys as closed unless its
//! schema says otherwise, so an answer's undocumented key fails too. One catalog (SQLite): the
//! document does not depend on it.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Value, json};

use crate::server::{TestServer, pageviews_dataset};

/// The document, and how to check an answer against it.
struct Doc(Value);

impl Doc {
    /// The schema that `reference` (`#/components/schemas/Name`) names.
    fn resolve<'a>(&'a self, reference: &str) -> &'a Value {
        let name = reference.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("ref {reference}"));
        self.0["components"]["schemas"].get(name).unwrap_or_else(|| panic!("no schema {name}"))
    }

    /// Problems of `value` against `schema`, each with where in the value it is.
    fn check(&self, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
        let schema = schema.as_object().unwrap_or_else(|| panic!("schema at {at} is not an object: {schema}"));
        let known = [
            "$ref",
            "allOf",
            "oneOf",
            "anyOf",
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "enum",
            "propertyNames",
            "description",
            "example",
            "examples",
            "format",
            "minimum",
            "default",
        ];
        if let Some(k) = schema.keys().find(|k| !known.contains(&k.as_str())) {
            panic!("the checker does not know the keyword {k:?} (at {at})");
        }
        if let Some(r) = schema.get("$ref") {
            self.check(self.resolve(r.as_str().unwrap()), value, at, problems);
        }
        for sub in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            self.check(sub, value, at, problems);
        }
        for (key, exactly_one) in [("oneOf", true), ("anyOf", false)] {
            if let Some(subs) = schema.get(key).and_then(Value::as_array) {
                let fitting = subs
                    .iter()
                    .filter(|sub| {
                        let mut p = Vec::new();
                        self.check(sub, value, at, &mut p);
                        p.is_empty()
                    })
                    .count();
                if fitting == 0 || (exactly_one && fitting > 1) {
                    problems.push(format!("{at}: {value} fits {fitting} of the {key} schemas"));
                }
            }
        }
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
                other => panic!("type {other}"),
            };
            let fits = |t: &str| match t {
                "null" => value.is_null(),
                "boolean" => value.is_boolean(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "string" => value.is_string(),
                "array" => value.is_array(),
                "object" => value.is_object(),
                other => panic!("type {other}"),
            };
            if !types.iter().any(|t| fits(t)) {
                problems.push(format!("{at}: {value} is not {types:?}"));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            problems.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
            for (i, v) in values.iter().enumerate() {
                self.check(items, v, &format!("{at}[{i}]"), problems);
            }
        }
        if let Some(object) = value.as_object() {
            let properties = schema.get("properties").and_then(Value::as_object);
            for key in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                if !object.contains_key(key.as_str().unwrap()) {
                    problems.push(format!("{at}: missing required {key}"));
                }
            }
            for (key, v) in object {
                match (properties.and_then(|p| p.get(key)), schema.get("additionalProperties")) {
                    (Some(sub), _) => self.check(sub, v, &format!("{at}.{key}"), problems),
                    (None, Some(Value::Bool(false))) => problems.push(format!("{at}: key {key:?} is not allowed")),
                    (None, Some(Value::Bool(true))) => {}
                    (None, Some(sub)) => self.check(sub, v, &format!("{at}.{key}"), problems),
                    // closed unless the schema says otherwise, or composes others
                    (None, None) if properties.is_some() => {
                        problems.push(format!("{at}: key {key:?} is not in the document"))
                    }
                    (None, None) => {}
                }
            }
        }
    }

    /// Checks an answer of `method path_template` against the document: its status is one the
    /// operation lists (an error status may fall under `default`; a success must be listed),
    /// its content type one the status names, and a JSON body fits that schema.
    fn answer_fits(&self, method: &str, template: &str, status: u16, content_type: &str, body: &Value) {
        let operation = &self.0["paths"][template][method.to_lowercase()];
        assert!(operation.is_object(), "{method} {template} is not in the document");
        let responses = operation["responses"].as_object().unwrap();
        let response = match responses.get(&status.to_string()) {
            Some(r) => r,
            None if status >= 400 => {
                responses.get("default").unwrap_or_else(|| panic!("{method} {template}: no {status}, no default"))
            }
            None => panic!("{method} {template} answered {status}, which the document does not list"),
        };
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            assert!(body.is_null(), "{method} {template} {status}: a body the document does not describe: {body}");
            return;
        };
        let media = content_type.split(';').next().unwrap().trim();
        let described =
            content.iter().find(|(name, _)| name.split(';').next().unwrap().trim() == media).unwrap_or_else(|| {
                panic!("{method} {template} {status}: content type {content_type} is not in {content:?}")
            });
        if media == "application/json" {
            let mut problems = Vec::new();
            self.check(&described.1["schema"], body, "body", &mut problems);
            assert!(
                problems.is_empty(),
                "{method} {template} {status} does not fit the document: {problems:#?}\n{body}"
            );
        }
    }
}

/// What a request got back: status, content type, `Allow`, and the body (JSON when it is
/// JSON, else its text as a string; null when empty).
struct Reply {
    status: u16,
    content_type: String,
    allow: Option<String>,
    body: Value,
}

async fn send(server: &TestServer, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let mut req = server.http.request(method.parse().unwrap(), format!("{}{path}", server.base));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let header = |name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    let (content_type, allow) = (header("content-type").unwrap_or_default(), header("allow"));
    let bytes = resp.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else if content_type.starts_with("application/json") {
        serde_json::from_slice(&bytes).unwrap()
    } else {
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    };
    Reply { status, content_type, allow, body }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_every_route_and_every_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, &[]);
    let fetched = send(&server, "GET", "/v1/openapi.json", &[], None).await;
    assert_eq!(fetched.status, 200);
    let doc = Doc(fetched.body);
    assert_eq!(doc.0["openapi"], "3.1.0");
    // a server without API keys asks for none (the auth suite checks the document with keys)
    assert!(doc.0.get("security").is_none() && doc.0["components"].get("securitySchemes").is_none());
    doc.answer_fits("GET", "/v1/openapi.json", fetched.status, &fetched.content_type, &doc.0);

    // every reference resolves, every operation has an id of its own
    let text = doc.0.to_string();
    for reference in text.split("\"$ref\":\"").skip(1).map(|rest| &rest[..rest.find('"').unwrap()]) {
        doc.resolve(reference);
    }
    let paths = doc.0["paths"].as_object().unwrap();
    let mut ids = HashSet::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no id"));
            assert!(ids.insert(id.to_string()), "operation id {id} twice");
        }
    }
    // the API's routes, as the README's table lists them: the document names each, and no other
    let routes: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let listed = BTreeSet::from([
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/openapi.json",
        "/v1/datasets",
        "/v1/datasets/{name}",
        "/v1/datasets/{name}/events",
        "/v1/views",
        "/v1/views/{name}",
        "/v1/views/{name}/query",
        "/v1/views/{name}/runs",
        "/v1/runs/{id}",
        "/v1/keys",
        "/v1/keys/{name}",
    ]);
    assert_eq!(routes, listed);

    // each path takes exactly the methods the document names: a method it does not is 405,
    // whose `Allow` lists the others (and HEAD beside GET, which axum adds); no route takes PUT
    for (path, item) in paths {
        let concrete = path.replace("{name}", "nope").replace("{id}", "1");
        let mut documented: BTreeSet<String> = item.as_object().unwrap().keys().map(|m| m.to_uppercase()).collect();
        if documented.contains("GET") {
            documented.insert("HEAD".into());
        }
        let reply = send(&server, "PUT", &concrete, &[], None).await;
        assert_eq!(reply.status, 405, "PUT {path}");
        let allowed: BTreeSet<String> =
            reply.allow.as_deref().unwrap_or_default().split(',').map(|m| m.trim().to_string()).collect();
        assert_eq!(allowed, documented, "{path}: Allow against the document");
        let method = documented.iter().find(|m| *m != "HEAD").unwrap();
        doc.answer_fits(method, path, reply.status, &reply.content_type, &reply.body);
    }

    // a session through the API, each answer checked against the document: (method, path,
    // headers, body, the status expected)
    let event = |id: &str, country: &str, ts: &str| json!({"ts": ts, "event_id": id, "country": country, "duration_ms": 12.5, "bytes": 100, "bot": false});
    let events = json!([event("a", "US", "2026-11-01T10:00:00Z"), event("b", "DE", "2026-11-01T11:30:00Z")]);
    let events = events.to_string();
    let ndjson =
        format!("{}\n{}\n", event("c", "US", "2026-11-02T09:00:00Z"), event("a", "US", "2026-11-01T10:00:00Z"));
    let view = json!({"name": "by_country", "dataset": "pageviews", "granularity": "hour", "dimensions": ["country"],
        "measures": {"views": "count", "total": "sum(bytes)", "mean": "avg(duration_ms)", "hi": "max(duration_ms)",
                     "visitors": "approx_distinct(event_id)", "p95": "approx_percentile(duration_ms, 0.95)"},
        "filter": "bot = false"});
    let (dataset, view) = (pageviews_dataset().to_string(), view.to_string());
    let unknown_dataset = r#"{"name": "w", "dataset": "nope", "granularity": "hour", "measures": {"n": "count"}}"#;
    let (json, ndjson_type) =
        (&[("content-type", "application/json")][..], &[("content-type", "application/x-ndjson")][..]);
    let accept = |media| [("accept", media)];
    let (arrow, csv, png) = (accept("application/vnd.apache.arrow.stream"), accept("text/csv"), accept("image/png"));
    let steps: [(&str, &str, Headers, Option<&str>, u16); 39] = [
        ("POST", "/v1/datasets", json, Some(&dataset), 201),
        ("POST", "/v1/datasets", json, Some(&dataset), 409),
        ("POST", "/v1/datasets", json, Some(r#"{"name": "x"}"#), 400),
        ("POST", "/v1/views", json, Some(&view), 201),
        ("POST", "/v1/views", json, Some(unknown_dataset), 400),
        ("POST", "/v1/datasets/pageviews/events", json, Some(&events), 200),
        ("POST", "/v1/datasets/pageviews/events", ndjson_type, Some(&ndjson), 200),
        ("POST", "/v1/datasets/pageviews/events", json, Some(r#"[{"ts": "yesterday"}]"#), 400),
        ("POST", "/v1/datasets/pageviews/events", &[("content-type", "text/csv")], Some("a,b"), 415),
        ("POST", "/v1/datasets/nope/events", json, Some("{}"), 404),
        ("GET", "/v1/datasets", &[], None, 200),
        ("GET", "/v1/datasets/pageviews", &[], None, 200),
        ("PATCH", "/v1/datasets/pageviews", json, Some(r#"{"add_fields": {"plan": "string"}}"#), 200),
        ("PATCH", "/v1/datasets/pageviews", json, Some(r#"{"add_fields": {"plan": "string"}}"#), 400),
        ("GET", "/v1/views", &[], None, 200),
        ("GET", "/v1/views/by_country", &[], None, 200),
        ("PATCH", "/v1/views/by_country", json, Some(r#"{"schedule": "manual"}"#), 200),
        ("PATCH", "/v1/views/by_country", json, Some(r#"{"schedule": "soon"}"#), 400),
        (
            "POST",
            "/v1/views/by_country/query",
            json,
            Some(r#"{"granularity": "day", "order_by": [{"field": "views", "desc": true}]}"#),
            200,
        ),
        ("POST", "/v1/views/by_country/query", &[], None, 200),
        ("POST", "/v1/views/by_country/query", json, Some(r#"{"granularity": "fortnight"}"#), 400),
        ("POST", "/v1/views/by_country/query", &[("content-type", "text/plain")], Some("{}"), 415),
        ("GET", "/v1/views/by_country/query?granularity=all&filter=country:US", &[], None, 200),
        (
            "GET",
            "/v1/views/by_country/query?granularity=week&time_zone=Europe/Berlin&from=2026-01-01T00:00:00Z",
            &[],
            None,
            200,
        ),
        ("GET", "/v1/views/by_country/query?granularity=day&time_zone=Asia/Kolkata", &[], None, 400),
        ("GET", "/v1/views/by_country/query?granularity=all&exclude=country:US", &[], None, 200),
        ("GET", "/v1/views/by_country/query?granularity=all&having=views:gte:2", &[], None, 200),
        // a server that asks no key issues none
        ("POST", "/v1/keys", json, Some(r#"{"name": "k", "scope": "read"}"#), 409),
        ("GET", "/v1/keys", &[], None, 200),
        ("DELETE", "/v1/keys/k", &[], None, 404),
        ("GET", "/v1/views/by_country/query", &arrow, None, 200),
        ("GET", "/v1/views/by_country/query", &csv, None, 200),
        ("GET", "/v1/views/by_country/query", &png, None, 406),
        ("GET", "/v1/views/nope/query", &[], None, 404),
        ("POST", "/v1/views/by_country/runs", &[], Some(r#"{"fast": true}"#), 400),
        ("DELETE", "/v1/datasets/pageviews", &[], None, 409),
        ("GET", "/healthz", &[], None, 200),
        ("GET", "/readyz", &[], None, 200),
        ("GET", "/metrics", &[], None, 200),
    ];
    for (method, path, headers, body, expected) in steps {
        step(&server, &doc, method, path, headers, body, expected).await;
    }

    // a run; after it, a view with its last run, a run list, and answers with a batch version
    let full = Some(r#"{"full": true}"#);
    let started = step(&server, &doc, "POST", "/v1/views/by_country/runs", &[], full, 202).await;
    let id = started.body["id"].as_i64().unwrap();
    let run = server.wait_run(id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (run, no_run) = (format!("/v1/runs/{id}"), format!("/v1/runs/{}", id + 1000));
    for (method, path, expected) in [
        ("GET", "/v1/views/by_country", 200),
        ("GET", "/v1/views", 200),
        ("GET", "/v1/views/by_country/runs?limit=5", 200),
        ("GET", "/v1/views/by_country/runs?limit=0", 400),
        ("GET", &run, 200),
        ("GET", &no_run, 404),
        ("GET", "/v1/views/by_country/query?order_by=-views", 200),
        ("DELETE", "/v1/datasets/pageviews", 409),
        ("DELETE", "/v1/views/by_country", 204),
        ("DELETE", "/v1/views/by_country", 404),
        ("DELETE", "/v1/datasets/pageviews", 204),
        ("GET", "/v1/datasets/pageviews", 404),
    ] {
        step(&server, &doc, method, path, &[], None, expected).await;
    }
}

/// A request's headers, as names and values.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// The path as the document names it: the name or id in a dataset's, view's, key's or run's
/// path as its parameter.
fn template(path: &str) -> String {
    let path = path.split('?').next().unwrap();
    let mut segments: Vec<&str> = path.split('/').collect();
    match segments.as_slice() {
        ["", "v1", "datasets" | "views" | "keys", _, ..] => segments[3] = "{name}",
        ["", "v1", "runs", _] => segments[3] = "{id}",
        _ => {}
    }
    segments.join("/")
}

/// Sends a request of the session, checks its status, and checks its answer against the
/// document.
async fn step(
    server: &TestServer,
    doc: &Doc,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    expected: u16,
) -> Reply {
    let reply = send(server, method, path, headers, body).await;
    assert_eq!(reply.status, expected, "{method} {path}: {}", reply.body);
    doc.answer_fits(method, &template(path), reply.status, &reply.content_type, &reply.body);
    reply
}

/// The checker itself: a key the document does not name, a missing required key, a wrong type
/// and a null where none is allowed are found.
#[test]
fn the_checker_finds_what_does_not_fit() {
    let doc = Doc(json!({"components": {"schemas": {
        "Run": {"type": "object", "required": ["id"], "properties": {
            "id": {"type": "integer"}, "error": {"type": ["string", "null"]},
            "last": {"oneOf": [{"$ref": "#/components/schemas/Leaf"}, {"type": "null"}]}}},
        "Leaf": {"type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": false},
    }}}));
    let run = json!({"$ref": "#/components/schemas/Run"});
    let problems = |value: Value| {
        let mut p = Vec::new();
        doc.check(&run, &value, "body", &mut p);
        p
    };
    assert!(problems(json!({"id": 1, "error": null, "last": {"n": 2}})).is_empty());
    assert!(problems(json!({"id": 1, "last": null})).is_empty());
    for wrong in [
        json!({"id": 1, "extra": true}),
        json!({"error": "x"}),
        json!({"id": "1"}),
        json!({"id": 1.5}),
        json!({"id": 1, "last": {"n": 2, "m": 3}}),
        json!({"id": 1, "last": {"n": null}}),
        json!([]),
    ] {
        assert!(!problems(wrong.clone()).is_empty(), "{wrong} passed");
    }
}
