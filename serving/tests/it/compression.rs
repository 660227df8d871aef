//! Compressed ingest bodies (`Content-Encoding: gzip`, `zstd`) and compressed answers
//! (`Accept-Encoding`), through the real binary. Every answer is checked against counts kept
//! by the test from the events it made, and every compressed answer is read with the
//! compression crates directly, not through an HTTP client's decoding.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde_json::{Value, json};

use crate::server::{TestServer, arrow_answer, pageviews_dataset};

const EVENTS: &str = "/v1/datasets/pageviews/events";
const COUNTRIES: [&str; 7] = ["DE", "FR", "US", "JP", "BR", "IN", "NG"];

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, 3).unwrap()
}

/// Posts `body` with the given content type and `Content-Encoding`.
async fn post(server: &TestServer, content_type: &str, encoding: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = server
        .http
        .post(format!("{}{EVENTS}", server.base))
        .header("content-type", content_type)
        .header("content-encoding", encoding)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Asks `q` with the given `Accept` and `Accept-Encoding`; returns the answer's
/// `Content-Encoding` (if any) and its bytes, decompressed here.
async fn ask(server: &TestServer, q: &Value, accept: &str, accept_encoding: Option<&str>) -> (Option<String>, Vec<u8>) {
    let mut req = server.http.post(format!("{}/v1/views/v/query", server.base)).header("accept", accept).json(q);
    if let Some(e) = accept_encoding {
        req = req.header("accept-encoding", e);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let vary = resp.headers().get("vary").map(|v| v.to_str().unwrap().to_ascii_lowercase());
    assert!(vary.is_some_and(|v| v.contains("accept-encoding")), "an answer says it varies with Accept-Encoding");
    let encoding = resp.headers().get("content-encoding").map(|v| v.to_str().unwrap().to_string());
    let body = resp.bytes().await.unwrap().to_vec();
    let plain = match encoding.as_deref() {
        None => body,
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).unwrap();
            out
        }
        Some("zstd") => zstd::stream::decode_all(&body[..]).unwrap(),
        Some(other) => panic!("unexpected content-encoding {other}"),
    };
    (encoding, plain)
}

/// Events of one day, `n` of them from `first`: their NDJSON and, per country, the count and
/// the sum of `bytes`, added to `expected`.
fn events(first: usize, n: usize, expected: &mut BTreeMap<String, (i64, i64)>) -> Vec<u8> {
    let mut out = String::new();
    for i in first..first + n {
        let country = COUNTRIES[(i * 7 + i / 3) % COUNTRIES.len()];
        let bytes = ((i * 7919) % 100_000) as i64;
        let ts = format!("2026-11-02T{:02}:{:02}:{:02}Z", (i / 60) % 24, i % 60, (i * 7) % 60);
        out.push_str(&json!({"ts": ts, "event_id": format!("e{i}"), "country": country, "bytes": bytes}).to_string());
        out.push('\n');
        let entry = expected.entry(country.to_string()).or_default();
        entry.0 += 1;
        entry.1 += bytes;
    }
    out.into_bytes()
}

fn as_rows(expected: &BTreeMap<String, (i64, i64)>) -> Value {
    expected.iter().map(|(c, (n, b))| json!({"country": c, "n": n, "b": b})).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_are_stored_and_answers_compressed_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, &[]);
    server.ok("POST", "/v1/datasets", Some(pageviews_dataset())).await;
    let view = json!({"name": "v", "dataset": "pageviews", "granularity": "hour", "dimensions": ["country"],
                      "measures": {"n": "count", "b": "sum(bytes)"}});
    server.ok("POST", "/v1/views", Some(view)).await;

    let mut expected = BTreeMap::new();
    // two gzip members in one body (as a streaming compressor may write them)
    let mut body = gzip(&events(0, 1500, &mut expected));
    body.extend(gzip(&events(1500, 1500, &mut expected)));
    assert_eq!(
        post(&server, "application/x-ndjson", "gzip", body).await,
        (200, json!({"accepted": 3000, "duplicates": 0}))
    );
    // two zstd frames
    let mut body = zstd(&events(3000, 2000, &mut expected));
    body.extend(zstd(&events(5000, 1000, &mut expected)));
    assert_eq!(
        post(&server, "application/x-ndjson", "ZSTD", body).await,
        (200, json!({"accepted": 3000, "duplicates": 0}))
    );
    let body = events(6000, 500, &mut expected);
    assert_eq!(
        post(&server, "application/x-ndjson", "identity", body).await,
        (200, json!({"accepted": 500, "duplicates": 0}))
    );
    // a JSON array body, and a retry of compressed events whose ids were stored: duplicates
    let mut again = BTreeMap::new();
    let retried = events(0, 10, &mut again);
    let array = format!("[{}]", String::from_utf8(retried).unwrap().trim_end().replace('\n', ","));
    assert_eq!(
        post(&server, "application/json", "x-gzip", gzip(array.as_bytes())).await,
        (200, json!({"accepted": 0, "duplicates": 10}))
    );

    let q = json!({"granularity": "all", "group_by": ["country"], "order_by": [{"field": "country"}]});
    let want = as_rows(&expected);
    let (encoding, plain) = ask(&server, &q, "application/json", None).await;
    assert_eq!(encoding, None, "no Accept-Encoding, no compression");
    let answer: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(answer["rows"], want);

    // an answer of more rows than the compression threshold: by hour and country
    let by_hour = json!({"granularity": "hour", "group_by": ["country"]});
    let (_, plain) = ask(&server, &by_hour, "application/json", None).await;
    assert!(plain.len() >= 1024, "the answer must be large enough to be compressed: {} bytes", plain.len());
    for (accept_encoding, chosen) in [
        ("zstd", "zstd"),
        ("gzip", "gzip"),
        ("br;q=1, gzip;q=0.5", "gzip"),
        ("gzip, zstd", "zstd"),
        ("zstd;q=0, gzip", "gzip"),
        ("zstd;q=0.2, x-gzip;q=0.9", "gzip"),
    ] {
        let (encoding, compressed) = ask(&server, &by_hour, "application/json", Some(accept_encoding)).await;
        assert_eq!(encoding.as_deref(), Some(chosen), "{accept_encoding}");
        assert_eq!(compressed, plain, "{accept_encoding}: the same answer, compressed");
        let (encoding, arrow) =
            ask(&server, &by_hour, "application/vnd.apache.arrow.stream", Some(accept_encoding)).await;
        assert_eq!(encoding.as_deref(), Some(chosen), "{accept_encoding}");
        let from_arrow = arrow_answer(&arrow);
        let from_json: Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(from_arrow["rows"], from_json["rows"], "{accept_encoding}: the Arrow answer holds the same rows");
    }
    let hourly: Value = serde_json::from_slice(&plain).unwrap();
    let mut summed = BTreeMap::<String, (i64, i64)>::new();
    for row in hourly["rows"].as_array().unwrap() {
        let entry = summed.entry(row["country"].as_str().unwrap().to_string()).or_default();
        entry.0 += row["n"].as_i64().unwrap();
        entry.1 += row["b"].as_i64().unwrap();
    }
    assert_eq!(summed, expected);

    // a small answer is sent as it is, whatever the client accepts
    let total = json!({"granularity": "all", "group_by": []});
    let (encoding, plain) = ask(&server, &total, "application/json", Some("gzip, zstd")).await;
    assert_eq!(encoding, None);
    let n: i64 = expected.values().map(|(n, _)| n).sum();
    assert_eq!(
        serde_json::from_slice::<Value>(&plain).unwrap()["rows"],
        json!([{"n": n, "b": expected.values().map(|(_, b)| b).sum::<i64>()}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_compressed_bodies_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 1 << 20;
    let server = TestServer::start(dir.path(), None, &["--max-body-bytes", &limit.to_string()]);
    server.ok("POST", "/v1/datasets", Some(pageviews_dataset())).await;
    server.ok("POST", "/v1/views", Some(crate::server::count_view())).await;
    let mut expected = BTreeMap::new();
    let good = events(0, 100, &mut expected);

    let refused = |status: u16, code: &str, (s, b): (u16, Value)| {
        assert_eq!(s, status, "{b}");
        assert_eq!(b["error"]["code"], code, "{b}");
    };
    for encoding in ["br", "deflate", "gzip, zstd", "gzip, gzip"] {
        refused(415, "unsupported_encoding", post(&server, "application/x-ndjson", encoding, gzip(&good)).await);
    }
    // not compressed at all, cut short, and damaged inside
    refused(400, "invalid_request", post(&server, "application/x-ndjson", "gzip", good.clone()).await);
    refused(400, "invalid_request", post(&server, "application/x-ndjson", "zstd", good.clone()).await);
    let whole = gzip(&good);
    refused(
        400,
        "invalid_request",
        post(&server, "application/x-ndjson", "gzip", whole[..whole.len() / 2].to_vec()).await,
    );
    let whole = zstd(&good);
    refused(
        400,
        "invalid_request",
        post(&server, "application/x-ndjson", "zstd", whole[..whole.len() - 3].to_vec()).await,
    );
    let mut damaged = gzip(&good);
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x55;
    refused(400, "invalid_request", post(&server, "application/x-ndjson", "gzip", damaged).await);
    // valid compression of invalid events: the events' own errors
    refused(400, "invalid_events", post(&server, "application/x-ndjson", "zstd", zstd(b"{\"ts\": \"soon\"}\n")).await);
    // a few KiB that inflate past the body limit (one byte past it is enough)
    let mut big = Vec::new();
    while big.len() <= limit {
        big.extend_from_slice(&good);
    }
    assert!(gzip(&big).len() < limit / 10);
    refused(413, "payload_too_large", post(&server, "application/x-ndjson", "gzip", gzip(&big)).await);
    refused(413, "payload_too_large", post(&server, "application/x-ndjson", "zstd", zstd(&big)).await);
    let zeros = vec![b' '; 64 * limit];
    refused(413, "payload_too_large", post(&server, "application/x-ndjson", "zstd", zstd(&zeros)).await);

    let a = server.query("v", json!({"granularity": "all", "group_by": []})).await;
    assert_eq!(a["rows"], json!([]), "nothing was stored by refused requests");
    // exactly the limit inflated is taken
    let mut fits = good.clone();
    fits.resize(limit, b'\n');
    assert_eq!(
        post(&server, "application/x-ndjson", "gzip", gzip(&fits)).await,
        (200, json!({"accepted": 100, "duplicates": 0}))
    );
    let a = server.query("v", json!({"granularity": "all", "group_by": []})).await;
    assert_eq!(a["rows"], json!([{"n": 100}]));
}
