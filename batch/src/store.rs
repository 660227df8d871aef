//! Where Parquet lives in the object store, and how it is written and read.
//!
//! ```text
//! master/{dataset}/date={YYYY-MM-DD}/{first_seq:020}.{crc32:08x}.parquet
//!     one file per log segment and event day
//! views/{view}/v{version:06}/date={YYYY-MM-DD}/part-{writer:06}.{crc32:08x}.parquet
//!     one directory per version; per event day, up to `run::MAX_DAY_PARTS` parts, each
//!     named by the version whose run wrote it (copied on into later versions)
//! ```
//! Every object is written whole with one `put` (atomic on the local store and on S3), so a
//! reader never sees half a file. Its name carries the CRC-32 of its bytes, written in the
//! same `put`; every read checks it and refuses a damaged file with [`Error::Corrupt`]
//! (Parquet as written by arrow-rs has no page checksums, and a flipped byte in a data page
//! otherwise reads back as a different value).

use std::sync::Arc;

use bytes::Bytes;
use chrono::NaiveDate;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::metadata::ParquetMetaDataReader;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::ColumnPath;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tandem_model::agg::Groups;
use tandem_model::columnar::groups_from_batch;
use tandem_model::view::CompiledView;

use crate::{Error, Result};

pub fn master_prefix(dataset: &str) -> Path {
    Path::from(format!("master/{dataset}"))
}

/// The name of a master file without its checksum (see [`write_parquet`]).
pub fn master_file(dataset: &str, date: NaiveDate, first_seq: u64) -> Path {
    Path::from(format!("master/{dataset}/date={}/{first_seq:020}", date.format("%Y-%m-%d")))
}

/// The log segment a master file came from.
pub fn master_file_segment(path: &Path) -> Option<u64> {
    file_stem(path)?.parse().ok()
}

pub fn version_dir(view: &str, version: i64) -> Path {
    Path::from(format!("views/{view}/v{version:06}"))
}

/// The name of a part of a version's day without its checksum (see [`write_parquet`]).
pub fn version_part(view: &str, version: i64, date: &str, part: &str) -> Path {
    Path::from(format!("views/{view}/v{version:06}/date={date}/{part}"))
}

/// `{stem}.{crc32:08x}.parquet`: what [`file_stem`] reads back.
fn checksummed(stem: &Path, bytes: &[u8]) -> Path {
    Path::from(format!("{stem}.{:08x}.parquet", crc32fast::hash(bytes)))
}

/// The file name of a checksummed object without its checksum and extension.
pub fn file_stem(path: &Path) -> Option<&str> {
    path.filename()?.split('.').next()
}

/// The rows of a Parquet file, from its footer.
pub fn footer_rows(bytes: &Bytes) -> Result<i64> {
    Ok(ParquetMetaDataReader::new().parse_and_finish(bytes)?.file_metadata().num_rows())
}

/// The rows of the Parquet objects at `paths`, from their footers, each read whole and checked
/// against its checksum first.
pub async fn verified_rows(store: &Arc<dyn ObjectStore>, paths: &[Path]) -> Result<i64> {
    let mut rows = 0;
    for path in paths {
        rows += footer_rows(&get_verified(store, path).await?)?;
    }
    Ok(rows)
}

/// The whole object, checked against the checksum in its name.
pub async fn get_verified(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Bytes> {
    let bytes: Bytes = store.get(path).await?.bytes().await?;
    let named = path
        .filename()
        .and_then(|f| f.strip_suffix(".parquet"))
        .and_then(|f| f.rsplit_once('.'))
        .and_then(|(_, crc)| u32::from_str_radix(crc, 16).ok());
    let actual = crc32fast::hash(&bytes);
    match named {
        Some(crc) if crc == actual => Ok(bytes),
        Some(crc) => Err(Error::Corrupt(
            path.to_string(),
            format!("its CRC-32 is {actual:08x}, its name says {crc:08x}; restore it or recompute it"),
        )),
        None => Err(Error::Corrupt(path.to_string(), "its name carries no checksum".into())),
    }
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

/// Deletes every object under `prefix`; how many there were.
pub async fn delete_prefix(store: &Arc<dyn ObjectStore>, prefix: &Path) -> Result<usize> {
    let paths = list(store, prefix).await?;
    for path in &paths {
        store.delete(path).await?;
    }
    Ok(paths.len())
}

/// Encodes batches as one Parquet file and puts it at `{stem}.{crc32}.parquet`. Returns that
/// path and the rows written.
pub async fn write_parquet(
    store: &Arc<dyn ObjectStore>,
    stem: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> Result<(Path, usize)> {
    let (bytes, rows) = encode_parquet(schema, batches)?;
    Ok((put_parquet(store, stem, bytes).await?, rows))
}

/// Encodes batches as the bytes of one Parquet file (Snappy); also returns the rows.
pub fn encode_parquet(schema: SchemaRef, batches: &[RecordBatch]) -> Result<(Vec<u8>, usize)> {
    let mut encoder = ParquetEncoder::new(schema)?;
    for batch in batches {
        encoder.write(batch)?;
    }
    encoder.finish()
}

/// One Parquet file's bytes, encoded batch by batch as the batches arrive (Snappy;
/// dictionaries for strings only). Every Parquet file tandem writes is encoded here.
pub struct ParquetEncoder {
    writer: ArrowWriter<Vec<u8>>,
    rows: usize,
}

impl ParquetEncoder {
    pub fn new(schema: SchemaRef) -> Result<ParquetEncoder> {
        // dictionaries only for strings: numbers, timestamps, sequence numbers and sketch
        // states are nearly all distinct, and interning them is wasted work
        let props = schema
            .fields()
            .iter()
            .filter(|f| !matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View))
            .fold(WriterProperties::builder().set_compression(Compression::SNAPPY), |props, f| {
                props.set_column_dictionary_enabled(ColumnPath::from(f.name().as_str()), false)
            })
            .build();
        Ok(ParquetEncoder { writer: ArrowWriter::try_new(Vec::new(), schema, Some(props))?, rows: 0 })
    }

    /// Encodes a batch (its schema is the encoder's).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch)?;
        self.rows += batch.num_rows();
        Ok(())
    }

    /// The file's bytes and its rows.
    pub fn finish(self) -> Result<(Vec<u8>, usize)> {
        Ok((self.writer.into_inner()?, self.rows))
    }
}

/// Puts encoded Parquet at `{stem}.{crc32}.parquet` and returns that path.
pub async fn put_parquet(store: &Arc<dyn ObjectStore>, stem: &Path, bytes: Vec<u8>) -> Result<Path> {
    let path = checksummed(stem, &bytes);
    store.put(&path, PutPayload::from(bytes)).await?;
    Ok(path)
}

/// Reads every record batch of a Parquet object, after checking its checksum.
pub async fn read_parquet(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Vec<RecordBatch>> {
    let bytes = get_verified(store, path).await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// Copies a checked Parquet object to `{to_stem}.{crc32}.parquet`; returns that path and its
/// row count (read from its footer). The copy is the store's own (a hard link on the local
/// store: version files are never changed in place), not a second write of the bytes.
pub async fn copy_parquet(store: &Arc<dyn ObjectStore>, from: &Path, to_stem: &Path) -> Result<(Path, i64)> {
    let bytes = get_verified(store, from).await?;
    let rows = footer_rows(&bytes)?;
    let to = checksummed(to_stem, &bytes);
    store.copy(from, &to).await?;
    Ok((to, rows))
}

/// Loads a published version's files into groups of aggregate states.
pub async fn load_version(store: &Arc<dyn ObjectStore>, view: &CompiledView, files: &[String]) -> Result<Groups> {
    let mut groups = Groups::default();
    for file in files {
        for batch in read_parquet(store, &Path::from(file.as_str())).await? {
            groups_from_batch(view, &batch, &mut groups)
                .map_err(|e| crate::Error::Invalid(format!("version file {file}: {e}")))?;
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::parquet::basic::Encoding;

    use super::*;

    /// Strings keep their dictionary; numbers (nearly all distinct) are not interned.
    #[test]
    fn only_string_columns_are_dictionary_encoded() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("country", DataType::Utf8, false),
            Field::new("_seq", DataType::Int64, false),
        ]));
        let countries = StringArray::from_iter_values((0..1000).map(|i| ["DE", "FR", "US"][i % 3]));
        let seqs = Int64Array::from_iter_values(0..1000);
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(countries), Arc::new(seqs)]).unwrap();
        let (bytes, rows) = encode_parquet(schema, &[batch]).unwrap();
        assert_eq!(rows, 1000);
        let meta = ParquetMetaDataReader::new().parse_and_finish(&Bytes::from(bytes)).unwrap();
        let column = |i: usize| meta.row_group(0).column(i);
        assert!(
            column(0).dictionary_page_offset().is_some(),
            "country: {:?}",
            column(0).encodings().collect::<Vec<_>>()
        );
        assert!(column(1).dictionary_page_offset().is_none(), "_seq: {:?}", column(1).encodings().collect::<Vec<_>>());
        assert!(!column(1).encodings().any(|e| e == Encoding::RLE_DICTIONARY || e == Encoding::PLAIN_DICTIONARY));
    }
}
