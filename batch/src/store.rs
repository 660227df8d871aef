//! Where Parquet lives in the object store, and how it is written and read.
//!
//! ```text
//! master/{dataset}/date={YYYY-MM-DD}/{first_seq:020}.parquet   one file per log segment and day
//! views/{view}/v{version:06}/date={YYYY-MM-DD}/part-00000.parquet   one directory per version,
//!                                                               one file per event day
//! ```
//! Every object is written whole with one `put` (atomic on the local store and on S3), so a
//! reader never sees half a file.

use std::sync::Arc;

use bytes::Bytes;
use chrono::NaiveDate;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::metadata::ParquetMetaDataReader;
use datafusion::parquet::file::properties::WriterProperties;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tandem_model::agg::Groups;
use tandem_model::columnar::groups_from_batch;
use tandem_model::view::CompiledView;

use crate::Result;

pub fn master_prefix(dataset: &str) -> Path {
    Path::from(format!("master/{dataset}"))
}

pub fn master_file(dataset: &str, date: NaiveDate, first_seq: u64) -> Path {
    Path::from(format!("master/{dataset}/date={}/{first_seq:020}.parquet", date.format("%Y-%m-%d")))
}

/// The log segment a master file came from.
pub fn master_file_segment(path: &Path) -> Option<u64> {
    path.filename()?.strip_suffix(".parquet")?.parse().ok()
}

pub fn version_dir(view: &str, version: i64) -> Path {
    Path::from(format!("views/{view}/v{version:06}"))
}

pub fn version_file(view: &str, version: i64, date: &str) -> Path {
    Path::from(format!("views/{view}/v{version:06}/date={date}/part-00000.parquet"))
}

/// The `YYYY-MM-DD` of a path's `date=` directory.
pub fn partition_date(path: &Path) -> Option<String> {
    path.parts().find_map(|part| part.as_ref().strip_prefix("date=").map(str::to_string))
}

/// Every object under `prefix`.
pub async fn list(store: &Arc<dyn ObjectStore>, prefix: &Path) -> Result<Vec<Path>> {
    let metas: Vec<_> = store.list(Some(prefix)).try_collect().await?;
    let mut paths: Vec<Path> = metas.into_iter().map(|m| m.location).collect();
    paths.sort();
    Ok(paths)
}

/// Deletes every object under `prefix`.
pub async fn delete_prefix(store: &Arc<dyn ObjectStore>, prefix: &Path) -> Result<()> {
    for path in list(store, prefix).await? {
        store.delete(&path).await?;
    }
    Ok(())
}

/// Encodes batches as one Parquet file and puts it. Returns the rows written.
pub async fn write_parquet(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> Result<usize> {
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, schema, Some(props))?;
    let mut rows = 0;
    for batch in batches {
        writer.write(batch)?;
        rows += batch.num_rows();
    }
    writer.close()?;
    store.put(path, PutPayload::from(buf)).await?;
    Ok(rows)
}

/// Reads every record batch of a Parquet object.
pub async fn read_parquet(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Vec<RecordBatch>> {
    let bytes: Bytes = store.get(path).await?.bytes().await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// Copies a Parquet object and returns its row count (read from its footer).
pub async fn copy_parquet(store: &Arc<dyn ObjectStore>, from: &Path, to: &Path) -> Result<i64> {
    let bytes: Bytes = store.get(from).await?.bytes().await?;
    let rows = ParquetMetaDataReader::new().parse_and_finish(&bytes)?.file_metadata().num_rows();
    store.put(to, PutPayload::from(bytes)).await?;
    Ok(rows)
}

/// Loads a published version's files into groups of aggregate states.
pub async fn load_version(store: &Arc<dyn ObjectStore>, view: &CompiledView, files: &[String]) -> Result<Groups> {
    let mut groups = Groups::new();
    for file in files {
        for batch in read_parquet(store, &Path::from(file.as_str())).await? {
            groups_from_batch(view, &batch, &mut groups)
                .map_err(|e| crate::Error::Invalid(format!("version file {file}: {e}")))?;
        }
    }
    Ok(groups)
}
