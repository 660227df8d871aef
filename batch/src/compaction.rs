//! Compaction: sealed log segments become the master dataset.
//!
//! Each sealed segment past the dataset's `compacted_seq` is read record by record (a
//! damaged sealed segment stops compaction with an error, it is never skipped), split by the
//! UTC date of each event's time field, and written as one Parquet file per date named after
//! the segment; a day's file is held in memory, compressed, until it is written. Then
//! `compacted_seq` moves to the segment's last sequence number. Compaction is idempotent: a
//! crash between the writes and the catalog update leaves files that the next compaction
//! writes again (or, if its bytes differ, replaces), and that no run reads (runs read only up
//! to `compacted_seq`). Segments are compacted oldest first, so `compacted_seq` always ends
//! a segment.
//!
//! A run may pass a [`Tee`]: every batch of events read goes there too, as it is read, so
//! the run can aggregate the new events while they are being compacted (see `run`).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate};
use datafusion::arrow::array::RecordBatch;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tandem_model::columnar::EventColumns;
use tandem_model::log;
use tandem_model::schema::DatasetSpec;
use tandem_model::value::ValueRef;

use crate::catalog::DatasetRecord;
use crate::store::{ParquetEncoder, list, master_file, master_file_segment, put_parquet};
use crate::{BatchEnv, Error, Result};

/// Events of one day per batch handed from a segment's reader to its Parquet encoder.
const CHUNK_ROWS: usize = 65_536;

/// Where compaction also sends each batch of events it reads (the dataset's columns with
/// `_seq`), besides the Parquet encoder. A tee that hangs up is dropped; compaction goes on.
pub type Tee = tokio::sync::mpsc::Sender<RecordBatch>;

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Every event up to here was in the master dataset before this compaction: the events
    /// it read (and sent to its tee) are those from here to `through_seq`.
    pub from_seq: u64,
    /// Every event up to here is in the master dataset.
    pub through_seq: u64,
    pub segments: usize,
    pub events: u64,
}

/// Compacts every sealed segment of `dataset` not yet in the master dataset, sending the
/// events read to `tee` as well, if given.
pub async fn compact(env: &BatchEnv, dataset: &DatasetRecord, tee: Option<Tee>) -> Result<Compacted> {
    let name = &dataset.spec.name;
    let sealed = sealed_segments(env, name).await?;
    // the catalog may have moved on since `dataset` was read: its compaction, and fields
    // added since (read after the listing, so every event of a listed segment fits it)
    let now = env.catalog.dataset(name).await?;
    let mut through = now.as_ref().map_or(dataset.compacted_seq, |d| d.compacted_seq);
    let spec = now.map_or_else(|| dataset.spec.clone(), |d| d.spec);
    let mut done = Compacted { from_seq: through, through_seq: through, ..Default::default() };
    for (segment, last_seq) in sealed {
        if last_seq <= through {
            continue;
        }
        let started = Instant::now();
        let (read, encoded) = read_and_encode(segment.path.clone(), spec.clone(), tee.clone()).await;
        // the encoder's error first: the reader only stops early because of it, or because
        // the segment is damaged
        let (encoded, encode_busy_ms) = encoded?;
        let read_busy_ms = read?;
        let read_encode_ms = started.elapsed().as_millis() as u64;
        let started = Instant::now();
        for (date, bytes, rows) in encoded {
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
        let started = Instant::now();
        env.catalog.set_compacted(name, last_seq).await?;
        let catalog_ms = started.elapsed().as_millis() as u64;
        tracing::debug!(
            dataset = %name,
            segment = segment.first_seq,
            read_encode_ms,
            read_busy_ms,
            encode_busy_ms,
            put_ms,
            catalog_ms,
            "compacted a segment"
        );
        through = last_seq;
        done.through_seq = through;
        done.segments += 1;
    }
    Ok(done)
}

/// About how many events a compaction of `dataset` would read now: those of its sealed
/// segments past the `compacted_seq` it was read with.
pub async fn pending_events(env: &BatchEnv, dataset: &DatasetRecord) -> Result<u64> {
    let sealed = sealed_segments(env, &dataset.spec.name).await?;
    Ok(sealed.last().map_or(0, |(_, last_seq)| last_seq.saturating_sub(dataset.compacted_seq)))
}

/// The dataset's sealed log segments, oldest first, each with its last sequence number.
pub(crate) async fn sealed_segments(env: &BatchEnv, dataset: &str) -> Result<Vec<(log::Segment, u64)>> {
    let dir = env.log_dir(dataset);
    tokio::task::spawn_blocking(move || log::sealed_segments(&dir))
        .await
        .map_err(|e| Error::Invalid(format!("log listing task: {e}")))?
        .map_err(Error::from)
}

/// One day's Parquet bytes and events.
type DayFile = (NaiveDate, Vec<u8>, usize);

/// Reads a sealed segment into one Parquet file per event day. The reader and the encoder
/// run side by side on blocking threads of their own, handing over batches of
/// [`CHUNK_ROWS`] events of a day, so a segment takes about as long as the slower of the two
/// instead of both one after the other. Each batch also goes to `tee`, if given. Returns each
/// side's result and the milliseconds it spent working.
async fn read_and_encode(
    path: PathBuf,
    spec: DatasetSpec,
    mut tee: Option<Tee>,
) -> (Result<u64>, Result<(Vec<DayFile>, u64)>) {
    // a few batches in flight: the reader runs ahead of the encoder by at most that much
    let (chunks, received) = mpsc::sync_channel::<(NaiveDate, RecordBatch)>(2);
    let encoder = tokio::task::spawn_blocking(move || -> Result<(Vec<DayFile>, u64)> {
        let mut busy = Duration::ZERO;
        let mut days: BTreeMap<NaiveDate, ParquetEncoder> = BTreeMap::new();
        for (date, batch) in received {
            let started = Instant::now();
            let file = match days.entry(date) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(ParquetEncoder::new(batch.schema())?),
            };
            file.write(&batch)?;
            busy += started.elapsed();
        }
        let started = Instant::now();
        let files = days
            .into_iter()
            .map(|(date, file)| file.finish().map(|(bytes, rows)| (date, bytes, rows)))
            .collect::<Result<Vec<_>>>()?;
        Ok((files, (busy + started.elapsed()).as_millis() as u64))
    });
    let reader = tokio::task::spawn_blocking(move || -> Result<u64> {
        let started = Instant::now();
        let time_index = spec.time_index();
        let width = spec.columns().count();
        let mut days: BTreeMap<NaiveDate, (EventColumns, usize)> = BTreeMap::new();
        let mut hand_over = |date: NaiveDate, columns: EventColumns| -> std::result::Result<(), String> {
            let batch = columns.finish().map_err(|e| e.to_string())?;
            if tee.as_ref().is_some_and(|t| t.blocking_send(batch.clone()).is_err()) {
                tee = None;
            }
            chunks.send((date, batch)).map_err(|_| "the Parquet encoder stopped".to_string())
        };
        // the events go from the segment's bytes straight into each day's columns
        log::visit_sealed(&path, |seq, values| {
            let Some(ValueRef::Timestamp(ts)) = values.get(time_index) else {
                return Err(format!("event {seq} has no time value"));
            };
            if values.len() > width {
                // a guard: the definition is read after the segments are listed, so it has
                // every field their events have
                return Err(format!("event {seq} has more fields than the dataset's definition"));
            }
            let date = DateTime::from_timestamp_micros(*ts).map(|t| t.date_naive()).unwrap_or_default();
            let (columns, rows) = days.entry(date).or_insert_with(|| (EventColumns::new(&spec, true), 0));
            columns.push(Some(seq), values.iter().copied());
            *rows += 1;
            if *rows == CHUNK_ROWS {
                *rows = 0;
                hand_over(date, std::mem::replace(columns, EventColumns::new(&spec, true)))?;
            }
            Ok(())
        })?;
        for (date, (columns, rows)) in days {
            if rows > 0 {
                hand_over(date, columns).map_err(Error::Invalid)?;
            }
        }
        Ok(started.elapsed().as_millis() as u64)
    });
    let joined = |e: tokio::task::JoinError| Error::Invalid(format!("compaction task: {e}"));
    let (read, encoded) = tokio::join!(reader, encoder);
    (read.map_err(joined).and_then(|r| r), encoded.map_err(joined).and_then(|r| r))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use datafusion::arrow::array::{Array, AsArray, Int64Array};
    use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use tandem_model::schema::FieldType;
    use tandem_model::value::{Row, Value};

    use super::*;

    const DAY_MICROS: i64 = 86_400_000_000;

    /// Each day's events: sequence number, `n`, `s`, `ts`.
    type Days = BTreeMap<NaiveDate, Vec<(i64, i64, Option<String>, i64)>>;

    /// A segment whose events fall on two days, one of them with more than a batch of
    /// events, becomes one file per day holding exactly that day's events in order, with
    /// their sequence numbers (checked against the events as written, not as read back from
    /// the log).
    #[tokio::test]
    async fn a_segment_becomes_one_file_per_day_with_every_event() {
        let spec = DatasetSpec {
            name: "d".into(),
            time_field: "ts".into(),
            id_field: None,
            fields: [("n", FieldType::Int64), ("s", FieldType::String), ("ts", FieldType::Timestamp)]
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect(),
            added_fields: vec![],
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = log::LogWriter::open(dir.path()).unwrap();
        let events = 2 * CHUNK_ROWS + 10;
        let row = |i: usize| -> Row {
            let day = if i.is_multiple_of(3) { 20_000 } else { 20_001 };
            vec![
                Value::Int(i as i64 * 7),
                if i.is_multiple_of(11) { Value::Null } else { Value::String(format!("s{}", i % 97).into()) },
                Value::Timestamp(day * DAY_MICROS + i as i64),
            ]
        };
        let mut expected: Days = BTreeMap::new();
        for start in (0..events).step_by(1000) {
            let rows: Vec<Row> = (start..(start + 1000).min(events)).map(row).collect();
            let seq = log.append(0, &rows, 0, None);
            for (k, r) in rows.iter().enumerate() {
                let (Value::Int(n), Value::Timestamp(ts)) = (&r[0], &r[2]) else { unreachable!() };
                let s = match &r[1] {
                    Value::String(s) => Some(s.to_string()),
                    _ => None,
                };
                let date = DateTime::from_timestamp_micros(*ts).unwrap().date_naive();
                expected.entry(date).or_default().push(((seq + k as u64) as i64, *n, s, *ts));
            }
        }
        let (segment, _) = log.roll().unwrap().unwrap();
        assert!(expected.values().any(|day| day.len() > CHUNK_ROWS), "a day spans several batches");

        let (tee, mut teed) = tokio::sync::mpsc::channel(64);
        let (read, encoded) = read_and_encode(segment.path.clone(), spec, Some(tee)).await;
        read.unwrap();
        let (files, _) = encoded.unwrap();
        let mut got: Days = BTreeMap::new();
        for (date, bytes, rows) in files {
            let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes)).unwrap().build().unwrap();
            let day = got.entry(date).or_default();
            for batch in reader {
                push_events(&batch.unwrap(), day);
            }
            assert_eq!(rows, day.len(), "{date}: rows counted");
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got, expected);

        // the tee saw every event once, in the batches the encoder got
        let mut teed_days: Days = BTreeMap::new();
        while let Some(batch) = teed.recv().await {
            let ts = batch.column(3).as_primitive::<TimestampMicrosecondType>();
            let date = DateTime::from_timestamp_micros(ts.value(0)).unwrap().date_naive();
            push_events(&batch, teed_days.entry(date).or_default());
        }
        assert_eq!(teed_days, expected);
    }

    fn push_events(batch: &RecordBatch, day: &mut Vec<(i64, i64, Option<String>, i64)>) {
        let seqs: &Int64Array = batch.column(0).as_primitive::<Int64Type>();
        let ns = batch.column(1).as_primitive::<Int64Type>();
        let ss = batch.column(2).as_string::<i32>();
        let ts = batch.column(3).as_primitive::<TimestampMicrosecondType>();
        for i in 0..batch.num_rows() {
            let s = (!ss.is_null(i)).then(|| ss.value(i).to_string());
            day.push((seqs.value(i), ns.value(i), s, ts.value(i)));
        }
    }
}
