//! The proof that the merge is exact: random event streams (late events, duplicate ids,
//! nulls, extreme values) under random interleavings of ingests, batch runs (full and
//! incremental), new views and restarts. After every step every query shape of every view
//! must equal the reference's one pass over the accepted events; and at the end, the same
//! events ingested at once into a fresh server must give bit-identical sketch answers.
//!
//! Runs in-process (the server's own `AppState`, runner and query path, a real data dir and
//! SQLite catalog), so it can afford many cases; `PROPTEST_CASES` raises the count.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use tandem_batch::catalog::Trigger;
use tandem_model::event::{Format, Limits, decode};
use tandem_serving::app::AppState;
use tandem_serving::config::{ServeConfig, StorageConfig};
use tandem_serving::query::{QueryRequest, answer};
use tandem_serving::runner;

use crate::reference::{Accepted, Event, T0, assert_rows_match, by_bot_view, by_country_view, reference, shapes};
use crate::server::pageviews_dataset;

#[derive(Debug, Clone)]
enum Op {
    Ingest(Vec<Event>),
    Run { full: bool },
    Restart,
    AddView,
}

fn event() -> impl Strategy<Value = Event> {
    let country = prop_oneof![Just(None), Just(Some("US")), Just(Some("DE")), Just(Some("FR"))];
    let duration =
        prop_oneof![Just(None), (0.0f64..1e6).prop_map(Some), Just(Some(0.0)), Just(Some(1e-300)), Just(Some(9.5e12)),];
    let bytes = prop_oneof![Just(None), (-1000i64..1000).prop_map(Some), Just(Some(i64::MAX)), Just(Some(i64::MIN))];
    // from two days before T0 (late) to four days after, at second resolution
    (-2 * 86_400i64..4 * 86_400, 0u32..60, country, duration, bytes, any::<bool>()).prop_map(
        |(secs, id, country, duration, bytes, bot)| Event {
            ts: T0 + secs * 1_000_000,
            id: format!("p{id}"),
            country,
            duration,
            bytes,
            bot,
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(event(), 1..25).prop_map(Op::Ingest),
        3 => any::<bool>().prop_map(|full| Op::Run { full }),
        1 => Just(Op::Restart),
        1 => Just(Op::AddView),
    ]
}

fn config(dir: &std::path::Path) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".into(),
        storage: StorageConfig { data_dir: dir.to_path_buf(), database_url: None },
        dedup_window: Duration::from_secs(24 * 3600),
        segment_interval: Duration::from_secs(3600),
        segment_bytes: 128 << 20,
        poll_interval: Duration::from_secs(1),
        log_retention: None,
        max_body_bytes: 16 << 20,
        max_events_per_request: 100_000,
        max_string_bytes: 64 << 10,
        max_queued_requests: 4096,
        max_inflight_bytes: 256 << 20,
        api_keys: Vec::new(),
        read_api_keys: Vec::new(),
        ingest_api_keys: Vec::new(),
        rate_limit: None,
    }
}

async fn ingest(state: &AppState, acc: &mut Accepted, events: &[Event]) {
    let dataset = state.dataset("pageviews").unwrap();
    let body = serde_json::to_vec(&events.iter().map(|e| e.to_json(false)).collect::<Vec<_>>()).unwrap();
    let rows =
        decode(&dataset.record.spec, Format::Json, &body, &Limits::default()).expect("generated events are valid");
    let outcome = dataset.writer.append(rows, None).await.unwrap();
    let (accepted, duplicates) = acc.add(events);
    assert_eq!((outcome.accepted, outcome.duplicates), (accepted, duplicates));
}

/// Starts a run of `view` and waits until it finished and its version is served.
async fn run(state: &AppState, view: &str, trigger: Trigger, full: bool) {
    let (run, _) = runner::trigger(state, view, trigger, full).await.unwrap();
    for _ in 0..2000 {
        let now = state.env.catalog.run(run.id).await.unwrap().unwrap();
        match now.status.as_str() {
            "failed" => panic!("run failed: {:?}", now.error),
            "succeeded" => {
                let served = state.view(view).unwrap().read(|s| s.batch.as_ref().map(|b| b.version));
                if served >= now.version {
                    return;
                }
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("run {} did not finish", run.id);
}

fn ask(state: &AppState, view: &str, query: &Value) -> Value {
    let request: QueryRequest = serde_json::from_value(query.clone()).unwrap();
    let answer =
        answer(&state.view(view).unwrap(), request).unwrap_or_else(|e| panic!("{view} {query}: {}", e.message));
    serde_json::from_slice(&answer.to_vec()).unwrap()
}

fn check(state: &AppState, acc: &Accepted, views: &[&str], context: &str) {
    for view in views {
        for shape in shapes(view) {
            let got = ask(state, view, &shape.query);
            assert_rows_match(
                &got["rows"],
                &reference(&acc.events, view, &shape),
                &format!("{context}: {view} {}", shape.query),
            );
        }
    }
}

async fn scenario(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut state = AppState::start(config(dir.path())).await.unwrap();
    state.create_dataset(serde_json::from_value(pageviews_dataset()).unwrap()).await.unwrap();
    state.create_view(serde_json::from_value(by_country_view()).unwrap()).await.unwrap();
    let mut views = vec!["by_country"];
    let mut acc = Accepted::default();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Ingest(events) => ingest(&state, &mut acc, events).await,
            Op::Run { full } => run(&state, "by_country", Trigger::Manual, *full).await,
            Op::Restart => {
                state.shutdown().await;
                state = AppState::start(config(dir.path())).await.unwrap();
            }
            Op::AddView if views.len() == 1 => {
                let (_, live) = state.create_view(serde_json::from_value(by_bot_view()).unwrap()).await.unwrap();
                if !live.read(|s| s.is_ready()) {
                    run(&state, "by_bot", Trigger::Create, true).await;
                }
                views.push("by_bot");
            }
            Op::AddView => run(&state, "by_bot", Trigger::Manual, false).await,
        }
        check(&state, &acc, &views, &format!("step {step} ({})", describe(op)));
    }

    // the same events at once, speed layer only, then batch only: identical sketch answers
    let other_dir = tempfile::tempdir().unwrap();
    let other = AppState::start(config(other_dir.path())).await.unwrap();
    other.create_dataset(serde_json::from_value(pageviews_dataset()).unwrap()).await.unwrap();
    other.create_view(serde_json::from_value(by_country_view()).unwrap()).await.unwrap();
    if !acc.events.is_empty() {
        ingest(&other, &mut Accepted::default(), &acc.events).await;
    }
    for phase in ["speed only", "batch only"] {
        for query in [json!({}), json!({"granularity": "all", "group_by": []}), json!({"granularity": "day"})] {
            let sketches = |v: Value| -> Vec<(Value, Value)> {
                v["rows"].as_array().unwrap().iter().map(|r| (r["uniq"].clone(), r["p90"].clone())).collect()
            };
            assert_eq!(
                sketches(ask(&state, "by_country", &query)),
                sketches(ask(&other, "by_country", &query)),
                "{phase}: {query}: sketch answers depend on the split"
            );
        }
        if phase == "speed only" {
            run(&other, "by_country", Trigger::Manual, false).await;
        }
    }
    state.shutdown().await;
    other.shutdown().await;
}

fn describe(op: &Op) -> String {
    match op {
        Op::Ingest(e) => format!("ingest {}", e.len()),
        other => format!("{other:?}"),
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn merged_answers_equal_one_pass_over_all_events(ops in prop::collection::vec(op(), 1..14)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(scenario(ops));
    }
}
