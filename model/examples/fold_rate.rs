//! How long [`fold_rows`] takes an event, alone on a core, into a fresh map (a new log
//! segment's, right after a seal) and as the map warms: one hour of events shaped as the bench's
//! (40 countries × 200 paths, 2 M users, Pareto durations) into the bench's view (count, sum,
//! avg, approx_distinct, approx_percentile), 1,000 events a call as the writer folds them.
//!
//! `cargo run --release -p tandem-model --example fold_rate` prints µs per event for each stretch
//! of the first 2 M events, in three rounds, each into a new map (`bench/HISTORY.md`, session 47),
//! and how long sizing each round's map takes (`groups_bytes`, what `/metrics` reports, against
//! sizing every group).
//! With `KEEP=1` in the environment each round's map is kept, as the server keeps a sealed
//! segment's map until it is merged, so that the next map's memory comes fresh from the kernel.

use std::time::Instant;

use tandem_model::agg::{Groups, fold_rows, groups_bytes, groups_bytes_from};
use tandem_model::schema::DatasetSpec;
use tandem_model::view::ViewSpec;
use tandem_model::{Row, Value};

fn main() {
    let dataset: DatasetSpec = serde_json::from_str(r#"{"name":"pageviews","time_field":"ts","fields":{"ts":"timestamp","country":"string","path":"string","user_id":"string","duration_ms":"float64","bytes":"int64"}}"#).unwrap();
    let spec: ViewSpec = serde_json::from_str(r#"{"name":"traffic","dataset":"pageviews","granularity":"hour","dimensions":["country","path"],"measures":{"views":"count","bytes":"sum(bytes)","mean":"avg(duration_ms)","users":"approx_distinct(user_id)","p95":"approx_percentile(duration_ms, 0.95)"}}"#).unwrap();
    let view = spec.compile(&dataset).unwrap();
    let mut x: u64 = 99;
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        x
    };
    let hour = 1_796_000_000_000_000i64 / 3_600_000_000 * 3_600_000_000;
    let rows: Vec<Row> = (0..2_000_000)
        .map(|_| {
            let r = next();
            let u = next();
            let ts = hour + (r % 3_600_000_000) as i64;
            let d = 10.0 / (1.0 - ((u >> 11) as f64 / (1u64 << 53) as f64)).powf(1.0 / 1.2);
            // fields in name order: bytes, country, duration_ms, path, ts, user_id
            vec![
                Value::Int((u >> 40) as i64 % 10_000),
                Value::String(format!("c{}", (r >> 20) % 40).into()),
                Value::Float(d),
                Value::String(format!("/p/{}", (r >> 30) % 200).into()),
                Value::Timestamp(ts),
                Value::String(format!("u{}", u % 2_000_000).into()),
            ]
        })
        .collect();
    let mut kept = Vec::new();
    for round in 0..3 {
        let mut groups = Groups::default();
        let mut report = Vec::new();
        let mut done = 0;
        for chunk in [20_000, 20_000, 60_000, 100_000, 800_000, 1_000_000] {
            let t = Instant::now();
            for slice in rows[done..done + chunk].chunks(1000) {
                fold_rows(&view, &mut groups, slice);
            }
            report.push(format!(
                "{}k..{}k: {:.3}",
                done / 1000,
                (done + chunk) / 1000,
                t.elapsed().as_secs_f64() * 1e6 / chunk as f64
            ));
            done += chunk;
        }
        println!("round {round} ({} groups) µs/event: {}", groups.len(), report.join(", "));
        // what a `/metrics` scrape spends sizing such a map under the view's lock, and what
        // sizing every group one by one would
        let t = Instant::now();
        let bytes = groups_bytes(&groups);
        let sampled = t.elapsed();
        let t = Instant::now();
        let whole = groups_bytes_from(&groups, usize::MAX);
        println!(
            "  sized in {:.1} µs: {:.2} MiB (every group sized: {:.1} µs, {:.2} MiB)",
            sampled.as_secs_f64() * 1e6,
            bytes as f64 / 1048576.0,
            t.elapsed().as_secs_f64() * 1e6,
            whole as f64 / 1048576.0
        );
        if std::env::var_os("KEEP").is_some() {
            kept.push(groups);
        }
    }
}
