//! A batch run: recompute one view from the master dataset and publish it as a new version.
//!
//! 1. claim the queued run (at most one per view, see the catalog) and keep its lease alive;
//! 2. compact sealed segments; the watermark is the last compacted sequence number;
//! 3. choose the event days to recompute: all of them for a full run (the first run of a
//!    view, or when asked), otherwise only the *dirty* days, those holding events with a
//!    sequence number past the previous version's watermark (late events make an old day
//!    dirty). Master files are partitioned by day and named by log segment, so the dirty days
//!    are read off file names, without scanning data;
//! 4. aggregate the master events of those days with `_seq <= watermark` with DataFusion: the
//!    view's filter (the same SQL text the speed layer compiled), `date_trunc` buckets,
//!    dimensions, and one state column per measure (`tandem_model::columnar::state_columns`);
//! 5. write one file per day, `views/{view}/v{N}/date={day}/part-00000.{crc32}.parquet`, and copy the
//!    previous version's files of the clean days (view buckets never straddle days);
//! 6. publish version, watermark, files, mode and recomputed days in one catalog transaction.
//!
//! A run that fails at any step records its error and leaves the previous version serving.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::functions::expr_fn::date_trunc;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::logical_expr::{Expr, cast};
use datafusion::prelude::{ParquetReadOptions, SessionContext, ident, lit};
use tandem_model::columnar::{BUCKET_COLUMN, SEQ_COLUMN, dataset_schema, state_columns};
use tandem_model::view::{CompiledView, DAY, MeasureKind};

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use object_store::path::Path;

use crate::catalog::{Publication, RunRecord};
use crate::compaction::compact;
use crate::sketches::sketch_udaf;
use crate::store::{
    copy_parquet, delete_prefix, get_verified, list, master_file_segment, master_prefix, partition_date, version_dir,
    version_file, write_parquet,
};
use crate::{BatchEnv, Error, Result};

const STORE_URL: &str = "tandem://store";

/// What a successful run published.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub publication: Publication,
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
    let view_record =
        env.catalog.view(&run.view).await?.ok_or_else(|| Error::NotFound(format!("view {:?}", run.view)))?;
    let dataset = env
        .catalog
        .dataset(&view_record.spec.dataset)
        .await?
        .ok_or_else(|| Error::NotFound(format!("dataset {:?}", view_record.spec.dataset)))?;
    let view = view_record.spec.compile(&dataset.spec).map_err(|e| Error::Invalid(e.join("; ")))?;
    let started = std::time::Instant::now();
    let compacted = compact(env, &dataset).await?;
    let compact_ms = started.elapsed().as_millis() as u64;
    let watermark = compacted.through_seq;
    let previous = match view_record.current_version {
        Some(v) if !full => env.catalog.version(&view.spec.name, v).await?,
        _ => None,
    };
    let version = view_record.current_version.unwrap_or(0) + 1;

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
    let (mode, days): (&'static str, BTreeSet<String>) = match &previous {
        None => ("full", master.iter().map(|(_, d, _)| d.clone()).collect()),
        Some(prev) => {
            ("incremental", master.iter().filter(|(_, _, s)| *s > prev.watermark).map(|(_, d, _)| d.clone()).collect())
        }
    };
    let inputs: Vec<Path> = master.iter().filter(|(_, d, _)| days.contains(d)).map(|(p, _, _)| p.clone()).collect();
    let started = std::time::Instant::now();
    let (batches, rows_in) = aggregate(env, &view, watermark, &inputs).await?;
    let aggregate_ms = started.elapsed().as_millis() as u64;
    let started = std::time::Instant::now();

    let dir = version_dir(&view.spec.name, version);
    delete_prefix(&env.store, &dir).await?;
    let schema = version_schema(&view);
    let mut files = Vec::new();
    let mut rows_out = 0;
    for (date, batch) in split_by_day(&schema, batches)? {
        let stem = version_file(&view.spec.name, version, &date);
        let (path, rows) = write_parquet(&env.store, &stem, schema.clone(), &[batch]).await?;
        rows_out += rows as i64;
        files.push(path.to_string());
    }
    if let Some(prev) = &previous {
        for file in &prev.files {
            let from = Path::from(file.as_str());
            let Some(date) = partition_date(&from) else { continue };
            if days.contains(&date) {
                continue;
            }
            let (to, rows) = copy_parquet(&env.store, &from, &version_file(&view.spec.name, version, &date)).await?;
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
        partitions: days.into_iter().collect(),
    };
    let started = std::time::Instant::now();
    env.catalog.publish(&publication).await?;
    let publish_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        view = %publication.view,
        version,
        watermark,
        mode,
        rows_in,
        rows_out,
        compact_ms,
        aggregate_ms,
        write_ms,
        publish_ms,
        "published batch version"
    );
    Ok(RunOutcome { publication })
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
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
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

/// Runs the view's aggregation over the events of `inputs` (master files) up to
/// `watermark`. Returns the batches and the number of events read.
async fn aggregate(
    env: &BatchEnv,
    view: &CompiledView,
    watermark: u64,
    inputs: &[Path],
) -> Result<(Vec<RecordBatch>, i64)> {
    let dataset = &view.dataset;
    let files: Vec<String> = inputs.iter().map(|p| format!("{STORE_URL}/{p}")).collect();
    if files.is_empty() {
        return Ok((Vec::new(), 0));
    }
    // DataFusion reads the files itself: check them first, so a damaged file fails the run
    // (naming it) instead of reading back wrong values
    for input in inputs {
        get_verified(&env.store, input).await?;
    }
    let ctx = SessionContext::new();
    ctx.register_object_store(ObjectStoreUrl::parse(STORE_URL)?.as_ref(), env.store.clone());
    let schema = dataset_schema(dataset, true);
    let events = ctx
        .read_parquet(files, ParquetReadOptions::default().schema(&schema))
        .await?
        .filter(ident(SEQ_COLUMN).lt_eq(lit(watermark as i64)))?;
    let rows_in = events.clone().count().await? as i64;
    let events = match &view.spec.filter {
        Some(sql) => {
            let predicate = events.parse_sql_expr(sql)?;
            events.filter(predicate)?
        }
        None => events,
    };
    let mut group: Vec<Expr> =
        vec![date_trunc(lit(view.spec.granularity.sql_unit()), ident(&dataset.time_field)).alias(BUCKET_COLUMN)];
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
    let batches = events.aggregate(group, aggs)?.collect().await?;
    Ok((batches, rows_in))
}
