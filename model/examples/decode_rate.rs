//! How long [`decode`] takes an event, alone on a core: the bench's 1,000-event NDJSON bodies
//! (same fields, same kinds of values), decoded again and again.
//!
//! `cargo run --release -p tandem-model --example decode_rate` prints µs per event for five
//! rounds of 3,000 bodies. At the ingest limit the request threads decode every event while the
//! writer folds them, on the same two cores, so this is part of what sets the ingest rate
//! (`bench/HISTORY.md`, session 41).

use std::collections::BTreeMap;
use std::time::Instant;

use tandem_model::event::{Format, Limits, decode};
use tandem_model::schema::{DatasetSpec, FieldType};

const EVENTS: usize = 1000;
const BODIES: usize = 3000;

fn main() {
    let body = body();
    let fields: BTreeMap<String, FieldType> = [
        ("ts", FieldType::Timestamp),
        ("country", FieldType::String),
        ("path", FieldType::String),
        ("device", FieldType::String),
        ("user_id", FieldType::String),
        ("duration_ms", FieldType::Float64),
        ("bytes", FieldType::Int64),
        ("bot", FieldType::Bool),
    ]
    .into_iter()
    .map(|(name, ty)| (name.to_string(), ty))
    .collect();
    let spec =
        DatasetSpec { name: "pageviews".into(), time_field: "ts".into(), id_field: None, fields, added_fields: vec![] };
    let limits = Limits::default();
    for round in 1..=5 {
        let started = Instant::now();
        let mut rows = 0;
        for _ in 0..BODIES {
            rows += decode(&spec, Format::Ndjson, body.as_bytes(), &limits).expect("valid events").len();
        }
        assert_eq!(rows, EVENTS * BODIES);
        let per_event = started.elapsed().as_secs_f64() * 1e6 / rows as f64;
        println!("round {round}: {per_event:.3} µs per event");
    }
}

/// One NDJSON body of [`EVENTS`] events shaped as the bench's.
fn body() -> String {
    let mut x: u64 = 12345;
    let mut body = String::new();
    for _ in 0..EVENTS {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let ts = 1_764_000_000_000 + (x >> 40);
        let country = ["US", "DE", "FR", "BR"][(x >> 20) as usize % 4];
        let device = ["desktop", "mobile"][(x >> 10) as usize % 2];
        let duration = (x >> 33) as f64 / 1e6;
        body.push_str(&format!(
            r#"{{"ts":{ts},"country":"{country}","path":"/p/{}","device":"{device}","user_id":"u{}","duration_ms":{duration:.3},"bytes":{},"bot":{}}}"#,
            (x >> 30) % 1000,
            x % 2_000_000,
            x >> 50,
            x.is_multiple_of(7)
        ));
        body.push('\n');
    }
    body
}
