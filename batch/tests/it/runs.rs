//! Batch runs over a real log on disk and a real catalog. An incremental run aggregates the
//! new events as its compaction reads them; when another view's run compacted them first,
//! it reads them back from the master dataset. Either way each published version holds
//! what a plain fold of every event gives.

use std::collections::BTreeMap;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use object_store::path::Path;
use tandem_batch::catalog::Trigger;
use tandem_batch::run::{RunOutcome, execute};
use tandem_batch::store::read_parquet;
use tandem_batch::testing::catalog_urls;
use tandem_batch::{BatchEnv, Catalog};
use tandem_model::log::LogWriter;
use tandem_model::value::{Row, Value};
use tandem_model::{DatasetSpec, ViewSpec};

const HOUR: i64 = 3_600_000_000;
const DAY: i64 = 24 * HOUR;
/// 2026-11-01T00:00:00Z
const T0: i64 = 1_793_491_200_000_000;

/// (bucket, country) -> (count of events with n >= 0, sum of their n)
type Expected = BTreeMap<(i64, String), (i64, i64)>;

fn dataset() -> DatasetSpec {
    serde_json::from_str(r#"{"name":"d","time_field":"ts","fields":{"ts":"timestamp","c":"string","n":"int64"}}"#)
        .unwrap()
}

fn view(name: &str) -> ViewSpec {
    serde_json::from_str(&format!(
        r#"{{"name":"{name}","dataset":"d","granularity":"hour","dimensions":["c"],
            "measures":{{"views":"count","total":"sum(n)"}},"filter":"n >= 0"}}"#
    ))
    .unwrap()
}

/// `count` events over `days` days from `start`, some of them filtered out (negative `n`).
fn events(seed: u64, start: i64, days: i64, count: usize) -> Vec<Row> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let r = state >> 16;
            // in the dataset's field order: c, n, ts
            vec![
                Value::String(["US", "DE", "FR", "JP", "BR"][(r % 5) as usize].into()),
                Value::Int((r % 1000) as i64 - 100),
                Value::Timestamp(start + (r % (days * DAY) as u64) as i64),
            ]
        })
        .collect()
}

/// The view's answer computed directly from the events.
fn fold(rows: &[Row]) -> Expected {
    let mut out = Expected::new();
    for row in rows {
        let [Value::String(c), Value::Int(n), Value::Timestamp(ts)] = &row[..] else { panic!("{row:?}") };
        if *n >= 0 {
            let e = out.entry((ts.div_euclid(HOUR) * HOUR, c.to_string())).or_default();
            e.0 += 1;
            e.1 += n;
        }
    }
    out
}

/// A published version's answer: its parts' states added up per group.
async fn published(env: &BatchEnv, outcome: &RunOutcome) -> Expected {
    let mut out = Expected::new();
    for file in &outcome.publication.files {
        for batch in read_parquet(&env.store, &Path::from(file.as_str())).await.unwrap() {
            add_states(&batch, &mut out);
        }
    }
    out
}

fn add_states(batch: &RecordBatch, out: &mut Expected) {
    let column = |name: &str| batch.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
    let buckets = column("bucket").as_primitive::<TimestampMicrosecondType>();
    let countries = column("c").as_string::<i32>();
    let views = column("views").as_primitive::<Int64Type>();
    let totals = column("total").as_primitive::<Int64Type>();
    for i in 0..batch.num_rows() {
        let e = out.entry((buckets.value(i), countries.value(i).to_string())).or_default();
        e.0 += views.value(i);
        e.1 += totals.value(i);
    }
}

async fn run(env: &BatchEnv, view: &str, full: bool) -> RunOutcome {
    let (record, created) = env.catalog.queue_run(view, Trigger::Manual).await.unwrap();
    assert!(created);
    execute(env, &record, full).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_runs_aggregate_what_compaction_reads() {
    for url in catalog_urls().await {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::connect(url.as_deref(), dir.path()).await.unwrap();
        let env = BatchEnv::local(catalog, dir.path().to_path_buf()).unwrap();
        env.catalog.create_dataset(&dataset()).await.unwrap();
        env.catalog.create_view(&view("first"), 0).await.unwrap();
        let (mut log, _) = LogWriter::open(&env.log_dir("d")).unwrap();
        let mut all: Vec<Row> = Vec::new();
        let mut append = |log: &mut LogWriter, rows: Vec<Row>| {
            // several records per segment, as requests make them
            for chunk in rows.chunks(700) {
                log.append(0, chunk, 0, None);
            }
            log.roll().unwrap();
            all.extend(rows);
            all.clone()
        };

        let so_far = append(&mut log, events(1, T0, 4, 5_000));
        let full = run(&env, "first", false).await;
        assert_eq!(full.publication.mode, "full");
        assert_eq!(published(&env, &full).await, fold(&so_far));

        // new events on the last day and late ones on the first, over two segments
        append(&mut log, events(2, T0 + 3 * DAY, 1, 3_000));
        let so_far = append(&mut log, events(3, T0, 1, 500));
        let incremental = run(&env, "first", false).await;
        assert_eq!(incremental.publication.mode, "incremental");
        assert_eq!(incremental.read_from, "compaction", "the new events are aggregated as they are compacted");
        assert_eq!(incremental.publication.rows_in, 3_500);
        assert_eq!(incremental.publication.partitions, ["2026-11-01", "2026-11-04"]);
        assert_eq!(published(&env, &incremental).await, fold(&so_far));

        // a second view's first run compacts nothing; then the first view's run compacts new
        // events the second view's next run finds already in the master dataset
        env.catalog.create_view(&view("second"), 0).await.unwrap();
        assert_eq!(published(&env, &run(&env, "second", false).await).await, fold(&so_far));
        let so_far = append(&mut log, events(4, T0 + DAY, 2, 2_000));
        let first = run(&env, "first", false).await;
        assert_eq!(first.read_from, "compaction");
        assert_eq!(published(&env, &first).await, fold(&so_far));
        let second = run(&env, "second", false).await;
        assert_eq!(second.publication.mode, "incremental");
        assert_eq!(second.read_from, "master", "the events were compacted by another run");
        assert_eq!(second.publication.rows_in, 2_000);
        assert_eq!(published(&env, &second).await, fold(&so_far));
    }
}
