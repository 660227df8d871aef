//! A batch run: recompute one view from the master dataset and publish it as a new version.
//!
//! 1. claim the queued run (at most one per view, see the catalog) and keep its lease alive;
//! 2. compact sealed segments; the watermark is the last compacted sequence number;
//! 3. choose what to read. A full run (the first run of a view, or when asked) reads every
//!    day. Otherwise only the *dirty* days matter, those holding events with a sequence number
//!    past the previous version's watermark (late events make an old day dirty). Master files
//!    are partitioned by day and named by log segment, so dirty days and new events are read
//!    off file names, without scanning data. A dirty day gets a *delta part*: the states of its
//!    new events only, beside the previous version's parts of that day (states merge, so the
//!    parts of a day together are that day's answer). A day that already has
//!    [`MAX_DAY_PARTS`] parts is *rebuilt* instead: all its events, into one part;
//! 4. aggregate those master events with `_seq <= watermark` with DataFusion: the view's
//!    filter (the same SQL text the speed layer compiled), UTC buckets ([`bucket_of`]),
//!    dimensions, and one state column per measure (`tandem_model::columnar::state_columns`).
//!    An incremental run with few new events starts aggregating them before step 2, fed by
//!    the compaction's tee as it reads them; it keeps that result when the new events turn
//!    out to be exactly its inputs (it compacted them all itself, no day is rebuilt), and
//!    otherwise reads the inputs from the master files;
//! 5. write one part per day read, `views/{view}/v{N}/date={day}/part-{N:06}.{crc32}.parquet`,
//!    and copy the previous version's parts of every day not rebuilt (view buckets never
//!    straddle days);
//! 6. publish version, watermark, files, mode and the days written in one catalog transaction.
//!
//! A run that fails at any step records its error and leaves the previous version serving.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::logical_expr::{Expr, cast};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext, ident, lit};
use tandem_model::columnar::{BUCKET_COLUMN, SEQ_COLUMN, dataset_schema, state_columns};
use tandem_model::view::{CompiledView, DAY, Granularity, MeasureKind};

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use object_store::ObjectStore;
use object_store::path::Path;
use tokio::sync::mpsc;

use crate::catalog::{Publication, RunRecord};
use crate::compaction::{compact, pending_events};
use crate::sketches::sketch_udaf;
use crate::store::{
    copy_parquet, delete_prefix, file_stem, list, master_file_segment, master_prefix, partition_date, verified_rows,
    version_dir, version_part, write_parquet,
};
use crate::{BatchEnv, Error, Result};

const STORE_URL: &str = "tandem://store";

/// Inputs of fewer events than this are aggregated in one partition (see [`aggregate`]).
const SMALL_INPUT: i64 = 1_000_000;

/// Batches of an incremental run's new events in flight from its compaction to its
/// aggregation.
const TEE_BATCHES: usize = 4;

/// Rows per batch of the aggregation (DataFusion's default is 8,192).
const AGGREGATE_BATCH_ROWS: usize = 65_536;

/// The most parts a day of a version holds: an incremental run rebuilds a dirty day that has
/// this many into one part, so loading a version reads a bounded number of files per day.
pub const MAX_DAY_PARTS: usize = 8;

/// What a successful run published.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub publication: Publication,
    /// Where the aggregation read its events: `"compaction"` (as this run compacted them)
    /// or `"master"` (read back from the master dataset).
    pub read_from: &'static str,
}

/// Executes a queued run to the end, recording success or failure in the catalog. `full`
/// recomputes every day even when an incremental run would do.
pub async fn execute(env: &BatchEnv, run: &RunRecord, full: bool) -> Result<RunOutcome> {
    if !env.catalog.start_run(run.id).await? {
        return Err(Error::Conflict(format!("run {} is not queued", run.id)));
    }
    let lease = {
        let catalog = env.catalog.clone();
        let id = run.id;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3));
            loop {
                tick.tick().await;
                if let Err(e) = catalog.heartbeat(id).await {
                    tracing::warn!(run = id, error = %e, "run heartbeat failed");
                }
            }
        })
    };
    let result = recompute(env, run, full).await;
    lease.abort();
    match result {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            tracing::warn!(run = run.id, view = %run.view, error = %e, "batch run failed");
            if let Err(record) = env.catalog.fail_run(run.id, &e.to_string(), None).await {
                tracing::error!(run = run.id, error = %record, "could not record the failure of a run");
            }
            Err(e)
        }
    }
}

async fn recompute(env: &BatchEnv, run: &RunRecord, full: bool) -> Result<RunOutcome> {
    let run_started = std::time::Instant::now();
    let view_record =
        env.catalog.view(&run.view).await?.ok_or_else(|| Error::NotFound(format!("view {:?}", run.view)))?;
    let dataset = env
        .catalog
        .dataset(&view_record.spec.dataset)
        .await?
        .ok_or_else(|| Error::NotFound(format!("dataset {:?}", view_record.spec.dataset)))?;
    let view = view_record.spec.compile(&dataset.spec).map_err(|e| Error::Invalid(e.join("; ")))?;
    let previous = match view_record.current_version {
        Some(v) if !full => env.catalog.version(&view.spec.name, v).await?,
        _ => None,
    };
    let prepare_ms = run_started.elapsed().as_millis() as u64;
    let started = std::time::Instant::now();
    // an incremental run with few new events aggregates them as compaction reads them, in
    // case they turn out to be all it needs (below): the two then overlap
    let (tee, streamed) = match &previous {
        Some(prev)
            if prev.watermark == dataset.compacted_seq && pending_events(env, &dataset).await? < SMALL_INPUT as u64 =>
        {
            let (tee, events) = mpsc::channel(TEE_BATCHES);
            let task = tokio::spawn(aggregate(view.clone(), Events::Stream(events)));
            (Some(tee), Some(AbortOnDrop(task)))
        }
        _ => (None, None),
    };
    let compacted = compact(env, &dataset, tee).await?;
    let compact_ms = started.elapsed().as_millis() as u64;
    let watermark = compacted.through_seq;
    let version = view_record.current_version.unwrap_or(0) + 1;

    let listed = std::time::Instant::now();
    // master files up to the watermark, with their day and log segment
    let master: Vec<(Path, String, u64)> = list(&env.store, &master_prefix(&dataset.spec.name))
        .await?
        .into_iter()
        .filter_map(|p| {
            let segment = master_file_segment(&p)?;
            let date = partition_date(&p)?;
            (segment <= watermark).then_some((p, date, segment))
        })
        .collect();
    let (mode, rebuilt, deltas) = match &previous {
        None => ("full", master.iter().map(|(_, d, _)| d.clone()).collect(), BTreeSet::new()),
        Some(prev) => {
            let mut parts: BTreeMap<String, usize> = BTreeMap::new();
            for file in &prev.files {
                if let Some(date) = partition_date(&Path::from(file.as_str())) {
                    *parts.entry(date).or_default() += 1;
                }
            }
            let dirty: BTreeSet<String> =
                master.iter().filter(|(_, _, s)| *s > prev.watermark).map(|(_, d, _)| d.clone()).collect();
            let (rebuilt, deltas): (BTreeSet<String>, BTreeSet<String>) =
                dirty.into_iter().partition(|d| parts.get(d).copied().unwrap_or(0) >= MAX_DAY_PARTS);
            ("incremental", rebuilt, deltas)
        }
    };
    let after = previous.as_ref().map_or(0, |p| p.watermark);
    let inputs: Vec<Path> = master
        .iter()
        .filter(|(_, d, s)| rebuilt.contains(d) || (deltas.contains(d) && *s > after))
        .map(|(p, _, _)| p.clone())
        .collect();
    let started = std::time::Instant::now();
    // the streamed aggregation holds exactly the inputs when every event past the previous
    // watermark came through this run's compaction and no dirty day is rebuilt; otherwise it
    // is dropped and the inputs are read back from the master dataset
    let (batches, rows_in, read_from) = match streamed {
        Some(task) if rebuilt.is_empty() && compacted.from_seq == after => {
            let batches = task.join().await?;
            (batches, compacted.events as i64, "compaction")
        }
        _ => {
            let (events, rows_in) = Events::files(env, &inputs, watermark).await?;
            (aggregate(view.clone(), events).await?, rows_in, "master")
        }
    };
    // sequence numbers are dense (every one is an accepted event) and each compacted segment
    // is in the master dataset whole, so what the run read is known: a file gone from the
    // master dataset (which, with log retention, may be the only copy) fails the run rather
    // than publishing a version without its events. A full run has no previous watermark
    // (`after` is 0); an incremental run that rebuilds a day reads that day's events before
    // the previous watermark too, so its count is not known here.
    let expected = watermark - after;
    if (previous.is_none() || rebuilt.is_empty()) && rows_in != expected as i64 {
        return Err(Error::Invalid(format!(
            "the master dataset holds {rows_in} events where this run must read {expected} \
             (sequence numbers {} to {watermark}): a master file is missing, or one is extra",
            after + 1
        )));
    }
    let aggregate_ms = started.elapsed().as_millis() as u64;
    let list_ms = (started - listed).as_millis() as u64;
    let started = std::time::Instant::now();

    let dir = version_dir(&view.spec.name, version);
    delete_prefix(&env.store, &dir).await?;
    let schema = version_schema(&view);
    let mut files = Vec::new();
    let mut rows_out = 0;
    let part = format!("part-{version:06}");
    for (date, batch) in split_by_day(&schema, batches)? {
        let stem = version_part(&view.spec.name, version, &date, &part);
        let (path, rows) = write_parquet(&env.store, &stem, schema.clone(), &[batch]).await?;
        rows_out += rows as i64;
        files.push(path.to_string());
    }
    if let Some(prev) = &previous {
        for file in &prev.files {
            let from = Path::from(file.as_str());
            let (Some(date), Some(stem)) = (partition_date(&from), file_stem(&from)) else { continue };
            if rebuilt.contains(&date) {
                continue;
            }
            let (to, rows) =
                copy_parquet(&env.store, &from, &version_part(&view.spec.name, version, &date, stem)).await?;
            rows_out += rows;
            files.push(to.to_string());
        }
    }
    files.sort();
    let write_ms = started.elapsed().as_millis() as u64;
    let publication = Publication {
        run_id: run.id,
        view: view.spec.name.clone(),
        version,
        watermark,
        files,
        rows_in,
        rows_out,
        mode,
        partitions: rebuilt.union(&deltas).cloned().collect(),
    };
    let started = std::time::Instant::now();
    env.catalog.publish(&publication).await?;
    let publish_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        view = %publication.view,
        version,
        watermark,
        mode,
        read_from,
        rows_in,
        rows_out,
        prepare_ms,
        compact_ms,
        list_ms,
        aggregate_ms,
        write_ms,
        publish_ms,
        total_ms = run_started.elapsed().as_millis() as u64,
        "published batch version"
    );
    Ok(RunOutcome { publication, read_from })
}

/// Splits aggregated batches by the UTC day of their bucket.
fn split_by_day(schema: &SchemaRef, batches: Vec<RecordBatch>) -> Result<BTreeMap<String, RecordBatch>> {
    let mut by_day: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
    for batch in batches {
        let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
        let buckets = batch
            .column(0)
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| Error::Invalid("bucket column is not a timestamp".into()))?;
        let days: BTreeSet<i64> = buckets.iter().flatten().map(|b| b.div_euclid(DAY)).collect();
        for day in days {
            let mask: BooleanArray =
                buckets.iter().map(|b| Some(b.is_some_and(|b| b.div_euclid(DAY) == day))).collect();
            by_day.entry(day).or_default().push(filter_record_batch(&batch, &mask)?);
        }
    }
    by_day
        .into_iter()
        .map(|(day, parts)| {
            let date =
                chrono::DateTime::from_timestamp_micros(day * DAY).expect("valid day").format("%Y-%m-%d").to_string();
            Ok((date, concat_batches(schema, &parts)?))
        })
        .collect()
}

/// The schema of a version file: bucket, dimensions, state columns.
fn version_schema(view: &CompiledView) -> datafusion::arrow::datatypes::SchemaRef {
    use datafusion::arrow::datatypes::{Field, Schema};
    let mut fields =
        vec![Field::new(BUCKET_COLUMN, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true)];
    for (dim, ty) in view.spec.dimensions.iter().zip(&view.dimension_types) {
        fields.push(Field::new(dim, tandem_model::columnar::arrow_type(*ty), true));
    }
    for (m, _) in &view.measures {
        for (name, ty) in state_columns(m) {
            fields.push(Field::new(name, ty, true));
        }
    }
    Arc::new(Schema::new(fields))
}

/// The start of the UTC bucket of an event time: `t - t mod width` on the microseconds
/// (buckets of `all` views are days, as version files are split by day). What `date_trunc`
/// computes for UTC, without its time-zone arithmetic and per-row formatting, which were
/// about 8 % of a full recompute's profile. The remainder is floored, so times before 1970
/// fall into the bucket that starts before them.
fn bucket_of(granularity: Granularity, time_field: &str) -> Expr {
    let width = lit(granularity.width().unwrap_or(DAY));
    let micros = cast(ident(time_field), DataType::Int64);
    let into_bucket = ((micros.clone() % width.clone()) + width.clone()) % width;
    cast(micros - into_bucket, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())))
}

/// The events a run aggregates.
enum Events {
    /// Master files (`tandem://store/...` URLs) holding `rows` events, read up to `watermark`.
    Files { store: Arc<dyn ObjectStore>, files: Vec<String>, rows: i64, watermark: u64 },
    /// The batches this run's compaction reads, as it reads them (see [`compact`]'s tee).
    Stream(mpsc::Receiver<RecordBatch>),
}

impl Events {
    /// The events of `inputs` (master files) up to `watermark`, and how many there are.
    /// DataFusion reads the files itself: they are checked first, so a damaged file fails the
    /// run (naming it) instead of reading back wrong values. Their footers count the events
    /// read: a master file is one log segment's (or its part of one day), and only segments
    /// up to the watermark are read, so the `_seq` filter of [`aggregate`] drops nothing and
    /// is only a guard (counting through it cost a second pass over the `_seq` column).
    async fn files(env: &BatchEnv, inputs: &[Path], watermark: u64) -> Result<(Events, i64)> {
        let rows = verified_rows(&env.store, inputs).await?;
        let files = inputs.iter().map(|p| format!("{STORE_URL}/{p}")).collect();
        Ok((Events::Files { store: env.store.clone(), files, rows, watermark }, rows))
    }
}

/// A compaction's batches as one DataFusion partition, read once.
#[derive(Debug)]
struct Teed {
    schema: SchemaRef,
    batches: std::sync::Mutex<Option<mpsc::Receiver<RecordBatch>>>,
}

impl PartitionStream for Teed {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _: Arc<TaskContext>) -> SendableRecordBatchStream {
        let schema = self.schema.clone();
        match self.batches.lock().expect("teed batches lock").take() {
            Some(batches) => Box::pin(RecordBatchStreamAdapter::new(
                schema.clone(),
                futures::stream::unfold(batches, move |mut batches| {
                    // the compaction reads the dataset's definition after this run did, so its
                    // events may have fields added since: this run's columns are a prefix
                    let columns: Vec<usize> = (0..schema.fields().len()).collect();
                    async move {
                        let batch = batches.recv().await?;
                        Some((batch.project(&columns).map_err(Into::into), batches))
                    }
                }),
            )),
            None => Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::once(async {
                    Err(DataFusionError::Internal("a compaction's batches were read twice".into()))
                }),
            )),
        }
    }
}

/// A spawned task, aborted if it is dropped before it is joined (a run that fails, or that
/// does not use a streamed aggregation).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<Result<T>> {
    async fn join(mut self) -> Result<T> {
        (&mut self.0).await.map_err(|e| Error::Invalid(format!("aggregation task: {e}")))?
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the view's aggregation over `events`.
async fn aggregate(view: CompiledView, events: Events) -> Result<Vec<RecordBatch>> {
    let dataset = &view.dataset;
    let schema = dataset_schema(dataset, true);
    // batches of 64 k events: the sketch aggregates fold a batch's values group by group
    // (see `sketches`), so the more of a group's events one batch holds, the fewer times its
    // state is fetched from memory
    let config = SessionConfig::new().with_batch_size(AGGREGATE_BATCH_ROWS);
    // a small input (an incremental run's new events) in one partition: DataFusion then
    // aggregates in one step instead of building partial states per partition, writing them
    // out and merging them again, which for ~50 k events into ~45 k groups cost more than
    // the aggregation itself. A stream is only used for small inputs.
    let one_partition = config.clone().with_target_partitions(1);
    let events = match events {
        Events::Files { files, .. } if files.is_empty() => return Ok(Vec::new()),
        Events::Files { store, files, rows, watermark } => {
            let ctx = SessionContext::new_with_config(if rows < SMALL_INPUT { one_partition } else { config });
            ctx.register_object_store(ObjectStoreUrl::parse(STORE_URL)?.as_ref(), store);
            ctx.read_parquet(files, ParquetReadOptions::default().schema(&schema))
                .await?
                .filter(ident(SEQ_COLUMN).lt_eq(lit(watermark as i64)))?
        }
        Events::Stream(batches) => {
            let ctx = SessionContext::new_with_config(one_partition);
            let teed = Teed { schema: schema.clone(), batches: std::sync::Mutex::new(Some(batches)) };
            ctx.read_table(Arc::new(StreamingTable::try_new(schema.clone(), vec![Arc::new(teed)])?))?
        }
    };
    let events = match &view.spec.filter {
        Some(sql) => {
            let predicate = events.parse_sql_expr(sql)?;
            events.filter(predicate)?
        }
        None => events,
    };
    let mut group: Vec<Expr> = vec![bucket_of(view.spec.granularity, &dataset.time_field).alias(BUCKET_COLUMN)];
    group.extend(view.spec.dimensions.iter().map(|d| ident(d).alias(d)));
    let mut aggs = Vec::new();
    for (m, _) in &view.measures {
        let field = || ident(&m.field.as_ref().expect("measure has a field").0);
        let name = &m.name;
        match m.kind {
            MeasureKind::Count => aggs.push(count(lit(1i64)).alias(name)),
            MeasureKind::CountField => aggs.push(count(field()).alias(name)),
            MeasureKind::Sum => aggs.push(sum(field()).alias(name)),
            MeasureKind::Min => aggs.push(min(field()).alias(name)),
            MeasureKind::Max => aggs.push(max(field()).alias(name)),
            MeasureKind::Avg => {
                aggs.push(sum(cast(field(), DataType::Float64)).alias(format!("{name}__sum")));
                aggs.push(count(field()).alias(format!("{name}__count")));
            }
            MeasureKind::ApproxDistinct | MeasureKind::ApproxPercentile => {
                aggs.push(sketch_udaf(m).call(vec![field()]).alias(name));
            }
        }
    }
    Ok(events.aggregate(group, aggs)?.collect().await?)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::TimestampMicrosecondArray;
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    /// An incremental run aggregates the events its compaction reads as they are read; the
    /// compaction reads the dataset's definition after the run did, so when fields were added
    /// in between, its batches are wider than the run's schema. The run takes its own columns.
    #[tokio::test]
    async fn a_streamed_run_takes_its_columns_of_wider_events() {
        use tandem_model::{DatasetSpec, FieldType, Value, ViewSpec};
        let narrow: DatasetSpec =
            serde_json::from_str(r#"{"name":"d","time_field":"ts","fields":{"ts":"timestamp","c":"string"}}"#).unwrap();
        let wide = narrow.add_fields(&[("z".to_string(), FieldType::Int64)].into_iter().collect()).unwrap();
        let view: ViewSpec = serde_json::from_str(
            r#"{"name":"v","dataset":"d","granularity":"day","dimensions":["c"],"measures":{"n":"count"}}"#,
        )
        .unwrap();
        let rows: Vec<Vec<Value>> = ["a", "b", "a"]
            .iter()
            .enumerate()
            .map(|(i, c)| vec![Value::String((*c).into()), Value::Timestamp(i as i64), Value::Int(7)])
            .collect();
        let refs: Vec<&Vec<Value>> = rows.iter().collect();
        let batch = tandem_model::columnar::rows_to_batch(&wide, &refs, Some(&[1, 2, 3])).unwrap();
        let stream = |batch: RecordBatch| {
            let (tx, rx) = mpsc::channel(2);
            tx.try_send(batch).unwrap();
            rx
        };
        // the stream's batches have the schema it declares (operators may rely on it)
        let schema = dataset_schema(&narrow, true);
        let teed = Teed { schema: schema.clone(), batches: std::sync::Mutex::new(Some(stream(batch.clone()))) };
        let read: Vec<RecordBatch> =
            futures::TryStreamExt::try_collect(teed.execute(Arc::new(TaskContext::default()))).await.unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].schema(), schema);
        assert_eq!(read[0].num_rows(), 3);
        let states = aggregate(view.compile(&narrow).unwrap(), Events::Stream(stream(batch))).await.unwrap();
        let mut counts: Vec<(String, i64)> = Vec::new();
        for b in &states {
            let (c, n) = (b.column_by_name("c").unwrap(), b.column_by_name("n").unwrap());
            for i in 0..b.num_rows() {
                let n = n.as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(i);
                counts.push((c.as_string::<i32>().value(i).to_string(), n));
            }
        }
        counts.sort();
        assert_eq!(counts, [("a".to_string(), 2), ("b".to_string(), 1)]);
    }

    /// The batch layer's buckets are the speed layer's (`Granularity::truncate`), also for
    /// times before 1970 and at bucket edges.
    #[tokio::test]
    async fn buckets_match_the_speed_layers() {
        let times: Vec<i64> = vec![
            0,
            -1,
            1,
            3_599_999_999,
            3_600_000_000,
            -3_600_000_000,
            -3_600_000_001,
            -9_214_646_400_000_000, // 1678-01-01
            9_214_646_399_999_999,  // just before 2262-01-01
            1_793_491_234_567_891,
        ];
        let ty = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = Arc::new(Schema::new(vec![Field::new("ts", ty, false)]));
        let array = TimestampMicrosecondArray::from(times.clone()).with_timezone("UTC");
        let batch = RecordBatch::try_new(schema, vec![Arc::new(array)]).unwrap();
        for granularity in [Granularity::Minute, Granularity::Hour, Granularity::Day, Granularity::All] {
            let ctx = SessionContext::new();
            let frame = ctx.read_batch(batch.clone()).unwrap().select(vec![bucket_of(granularity, "ts")]).unwrap();
            let got: Vec<i64> = frame
                .collect()
                .await
                .unwrap()
                .iter()
                .flat_map(|b| b.column(0).as_primitive::<TimestampMicrosecondType>().values().to_vec())
                .collect();
            let bucket = |t: i64| {
                if granularity == Granularity::All { t.div_euclid(DAY) * DAY } else { granularity.truncate(t) }
            };
            let expected: Vec<i64> = times.iter().map(|&t| bucket(t)).collect();
            assert_eq!(got, expected, "{granularity:?}");
        }
    }
}
