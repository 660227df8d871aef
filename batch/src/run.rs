//! A batch run: recompute one view from the master dataset and publish it as a new version.
//!
//! 1. claim the queued run (at most one per view, see the catalog) and keep its lease alive;
//! 2. compact sealed segments; the watermark is the last compacted sequence number;
//! 3. aggregate the master events with `_seq <= watermark` with DataFusion: the view's
//!    filter (the same SQL text the speed layer compiled), `date_trunc` buckets, dimensions,
//!    and one state column per measure (see `tandem_model::columnar::state_columns`);
//! 4. write the states as `views/{view}/v{N}/part-00000.parquet`;
//! 5. publish version, watermark, files and run status in one catalog transaction.
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
use tandem_model::view::{CompiledView, MeasureKind};

use crate::catalog::{Publication, RunRecord};
use crate::compaction::compact;
use crate::sketches::sketch_udaf;
use crate::store::{delete_prefix, list, master_file_segment, master_prefix, version_dir, version_file, write_parquet};
use crate::{BatchEnv, Error, Result};

const STORE_URL: &str = "tandem://store";

/// What a successful run published.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub publication: Publication,
}

/// Executes a queued run to the end, recording success or failure in the catalog.
pub async fn execute(env: &BatchEnv, run: &RunRecord) -> Result<RunOutcome> {
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
    let result = recompute(env, run).await;
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

async fn recompute(env: &BatchEnv, run: &RunRecord) -> Result<RunOutcome> {
    let view_record =
        env.catalog.view(&run.view).await?.ok_or_else(|| Error::NotFound(format!("view {:?}", run.view)))?;
    let dataset = env
        .catalog
        .dataset(&view_record.spec.dataset)
        .await?
        .ok_or_else(|| Error::NotFound(format!("dataset {:?}", view_record.spec.dataset)))?;
    let view = view_record.spec.compile(&dataset.spec).map_err(|e| Error::Invalid(e.join("; ")))?;
    let compacted = compact(env, &dataset).await?;
    let watermark = compacted.through_seq;
    let version = view_record.current_version.unwrap_or(0) + 1;

    let (batches, rows_in) = aggregate(env, &view, watermark).await?;
    delete_prefix(&env.store, &version_dir(&view.spec.name, version)).await?;
    let path = version_file(&view.spec.name, version, 0);
    let schema = version_schema(&view);
    let batches = batches
        .into_iter()
        .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    let rows_out = write_parquet(&env.store, &path, schema, &batches).await? as i64;
    let publication = Publication {
        run_id: run.id,
        view: view.spec.name.clone(),
        version,
        watermark,
        files: vec![path.to_string()],
        rows_in,
        rows_out,
    };
    env.catalog.publish(&publication).await?;
    tracing::info!(view = %publication.view, version, watermark, rows_in, rows_out, "published batch version");
    Ok(RunOutcome { publication })
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

/// Runs the view's aggregation over the master events up to `watermark`. Returns the
/// batches (in [`version_schema`] column order) and the number of events read.
async fn aggregate(env: &BatchEnv, view: &CompiledView, watermark: u64) -> Result<(Vec<RecordBatch>, i64)> {
    let dataset = &view.dataset;
    let files: Vec<String> = list(&env.store, &master_prefix(&dataset.name))
        .await?
        .into_iter()
        .filter(|p| master_file_segment(p).is_some_and(|first| first <= watermark))
        .map(|p| format!("{STORE_URL}/{p}"))
        .collect();
    if files.is_empty() {
        return Ok((Vec::new(), 0));
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
