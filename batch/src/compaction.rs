//! Compaction: sealed log segments become the master dataset.
//!
//! Each sealed segment past the dataset's `compacted_seq` is read whole (a damaged sealed
//! segment stops compaction with an error, it is never skipped), split by the UTC date of
//! each event's time field, and written as one Parquet file per date named after the
//! segment. Then `compacted_seq` moves to the segment's last sequence number. Compaction is
//! idempotent: a crash between the writes and the catalog update leaves files that the next
//! compaction writes again (or, if its bytes differ, replaces), and that no run reads (runs read only up to
//! `compacted_seq`). Segments are compacted oldest first, so `compacted_seq` always ends a
//! segment.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tandem_model::columnar::EventColumns;
use tandem_model::log;
use tandem_model::value::ValueRef;

use crate::catalog::DatasetRecord;
use crate::store::{encode_parquet, list, master_file, master_file_segment, put_parquet};
use crate::{BatchEnv, Error, Result};

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Every event up to here is in the master dataset.
    pub through_seq: u64,
    pub segments: usize,
    pub events: u64,
}

/// Compacts every sealed segment of `dataset` not yet in the master dataset.
pub async fn compact(env: &BatchEnv, dataset: &DatasetRecord) -> Result<Compacted> {
    let name = &dataset.spec.name;
    let dir = env.log_dir(name);
    let sealed = tokio::task::spawn_blocking(move || log::sealed_segments(&dir))
        .await
        .map_err(|e| Error::Invalid(format!("compaction task: {e}")))??;
    // the catalog may have moved on since `dataset` was read
    let mut through = env.catalog.dataset(name).await?.map(|d| d.compacted_seq).unwrap_or(dataset.compacted_seq);
    let mut done = Compacted { through_seq: through, ..Default::default() };
    for (segment, last_seq) in sealed {
        if last_seq <= through {
            continue;
        }
        let started = std::time::Instant::now();
        // the events go from the segment's bytes straight into each day's columns
        let (path, spec) = (segment.path.clone(), dataset.spec.clone());
        let by_date = tokio::task::spawn_blocking(move || -> Result<BTreeMap<NaiveDate, EventColumns>> {
            let time_index = spec.time_index();
            let mut by_date: BTreeMap<NaiveDate, EventColumns> = BTreeMap::new();
            log::visit_sealed(&path, |seq, values| {
                let Some(ValueRef::Timestamp(ts)) = values.get(time_index) else {
                    return Err(format!("event {seq} has no time value"));
                };
                let date = DateTime::from_timestamp_micros(*ts).map(|t| t.date_naive()).unwrap_or_default();
                let day = by_date.entry(date).or_insert_with(|| EventColumns::new(&spec, true));
                day.push(Some(seq), values.iter().copied());
                Ok(())
            })?;
            Ok(by_date)
        })
        .await
        .map_err(|e| Error::Invalid(format!("compaction task: {e}")))??;
        let read_ms = started.elapsed().as_millis() as u64;
        let started = std::time::Instant::now();
        // each day's file is encoded on a blocking thread of its own, side by side
        let encoded = futures::future::try_join_all(by_date.into_iter().map(|(date, columns)| {
            tokio::task::spawn_blocking(move || -> Result<(NaiveDate, Vec<u8>, usize)> {
                let batch = columns.finish()?;
                let (bytes, n) = encode_parquet(batch.schema(), &[batch])?;
                Ok((date, bytes, n))
            })
        }))
        .await
        .map_err(|e| Error::Invalid(format!("compaction task: {e}")))?;
        let encode_ms = started.elapsed().as_millis() as u64;
        let started = std::time::Instant::now();
        for day in encoded {
            let (date, bytes, rows) = day?;
            let stem = master_file(name, date, segment.first_seq);
            let written = put_parquet(&env.store, &stem, bytes).await?;
            if done.segments == 0 {
                // only the first segment of a pass can have files from an interrupted pass;
                // one with other bytes (another build's writer) has another name. Same bytes,
                // same name: a concurrent compaction's file is never deleted.
                let day_dir = Path::from(stem.as_ref().rsplit_once('/').map(|(dir, _)| dir).unwrap_or_default());
                for earlier in list(&env.store, &day_dir).await? {
                    if master_file_segment(&earlier) == Some(segment.first_seq) && earlier != written {
                        env.store.delete(&earlier).await?;
                    }
                }
            }
            done.events += rows as u64;
        }
        let put_ms = started.elapsed().as_millis() as u64;
        let started = std::time::Instant::now();
        env.catalog.set_compacted(name, last_seq).await?;
        let catalog_ms = started.elapsed().as_millis() as u64;
        tracing::debug!(dataset = %name, segment = segment.first_seq, read_ms, encode_ms, put_ms, catalog_ms, "compacted a segment");
        through = last_seq;
        done.through_seq = through;
        done.segments += 1;
    }
    Ok(done)
}
