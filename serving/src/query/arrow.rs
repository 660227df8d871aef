//! Answers as Arrow IPC streams ([`super::Format::Arrow`]).
//!
//! An answer is the schema message, then record batches, then the end-of-stream marker. The
//! rows of a kept shape's whole buckets come in runs of up to 128 rows, each run a batch
//! that the shape keeps with it (`tandem_speed::shapes::Merged::encoded`) and this writer
//! writes ([`RunEncoder`]): encoded once, then updated in place, measure value by measure
//! value, when events change some of its rows. The rows folded for one answer (the buckets
//! its range cuts through, or all rows when the answer is sorted) come in batches of their
//! own, between those.

use bytes::{Bytes, BytesMut};
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::root_as_message;
use datafusion::arrow::ipc::writer::{
    DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions, write_message,
};
use tandem_model::agg::{GroupKey, prefetch};
use tandem_model::columnar::{AnswerColumns, answer_fields};
use tandem_model::{FieldType, Value};
use tandem_speed::shapes::RunEncoder;

use super::{Answer, Columns, Freshness, OutRow};
use crate::api::error::ApiError;

/// The media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// How many rows ahead of the one being written [`ArrowWriter::batch`] starts loading a row.
const ROWS_AHEAD: usize = 8;

/// The end of an Arrow IPC stream: a continuation marker and a message of length 0.
const ARROW_END: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];

/// Writes one query shape's answers as Arrow IPC streams.
pub(super) struct ArrowWriter<'v> {
    columns: Columns<'v>,
    options: IpcWriteOptions,
}

impl<'v> ArrowWriter<'v> {
    pub(super) fn new(columns: Columns<'v>) -> ArrowWriter<'v> {
        ArrowWriter { columns, options: IpcWriteOptions::default() }
    }

    /// The stream: the schema (with the freshness in its metadata); then for each slice of
    /// `rows` in turn, a batch of its rows (none when it is empty) followed by the next of
    /// `batches` (kept batches, one fewer than the slices); then the end.
    pub(super) fn answer<'r>(
        &self,
        freshness: &Freshness,
        rows: impl IntoIterator<Item = &'r [OutRow<'r>]>,
        batches: impl IntoIterator<Item = Bytes>,
    ) -> Result<Answer, ApiError> {
        let freshness = serde_json::to_string(freshness).map_err(|e| ApiError::internal("writing an answer", e))?;
        let metadata = [("freshness".to_string(), freshness)].into();
        let schema = Schema::new(answer_fields(self.columns.bucket_zone(), &self.columns.dims, &self.columns.measures))
            .with_metadata(metadata);
        let encoded = IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
            &schema,
            &mut DictionaryTracker::new(false),
            &self.options,
        );
        let mut message = Vec::new();
        write_message(&mut message, encoded, &self.options).map_err(arrow_failed)?;
        let mut pieces = vec![Bytes::from(message)];
        let mut batches = batches.into_iter();
        for rows in rows {
            if !rows.is_empty() {
                let rows: Vec<(&GroupKey, &[Value])> = rows.iter().map(|(key, values, _)| (*key, *values)).collect();
                pieces.push(self.batch(&rows)?);
            }
            pieces.extend(batches.next());
        }
        pieces.push(Bytes::from_static(&ARROW_END));
        Ok(Answer { pieces })
    }

    /// One record batch of `rows` as an IPC message.
    fn batch(&self, rows: &[(&GroupKey, &[Value])]) -> Result<Bytes, ApiError> {
        let Columns { dims, measures, .. } = &self.columns;
        let mut columns = AnswerColumns::new(self.columns.bucket_zone(), dims, measures, rows.len());
        for (i, (key, values)) in rows.iter().enumerate() {
            // each row's key and values lie where its shape keeps it: load those ahead
            if let Some((key, values)) = rows.get(i + ROWS_AHEAD) {
                prefetch((*key as *const GroupKey).cast(), size_of::<GroupKey>());
                prefetch(values.as_ptr().cast(), size_of_val(*values));
            }
            columns.push(key, values);
        }
        let batch = columns.finish().map_err(arrow_failed)?;
        let (_, encoded) = IpcDataGenerator::default()
            .encode(&batch, &mut DictionaryTracker::new(false), &self.options, &mut IpcWriteContext::default())
            .map_err(arrow_failed)?;
        let mut message = Vec::with_capacity(encoded.arrow_data.len() + encoded.ipc_message.len() + 16);
        write_message(&mut message, encoded, &self.options).map_err(arrow_failed)?;
        Ok(Bytes::from(message))
    }
}

impl RunEncoder for ArrowWriter<'_> {
    type Error = ApiError;

    fn encode(&self, rows: &[(&GroupKey, &[Value])]) -> Result<Bytes, ApiError> {
        self.batch(rows)
    }

    /// Writes each changed value over the old one in the measure's values buffer, where the
    /// batch message's metadata says that buffer lies: in `encoded` itself when no answer
    /// holds it any more, else in a copy. Only 8-byte values (int64, float64 and timestamp
    /// measures) that were and stay non-null (or stay null): anything else (a bool or string
    /// measure, a null appearing or going) changes more than the value's bytes, and the run
    /// is encoded again.
    fn patch(&self, encoded: Bytes, changed: &[(usize, &[Value])]) -> Option<Bytes> {
        let writes = self.writes(&encoded, changed)?;
        let mut patched = encoded.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        for (start, bytes) in writes {
            patched[start..start + 8].copy_from_slice(&bytes);
        }
        Some(patched.freeze())
    }
}

impl ArrowWriter<'_> {
    /// Where [`RunEncoder::patch`] writes which bytes, each place checked to lie in the message.
    fn writes(&self, encoded: &[u8], changed: &[(usize, &[Value])]) -> Option<Vec<(usize, [u8; 8])>> {
        // an encapsulated message: continuation marker, metadata length, metadata (padded),
        // then the body, where the metadata's buffers lie (uncompressed, as written above)
        let length = u32::from_le_bytes(encoded.get(4..8)?.try_into().ok()?) as usize;
        let message = root_as_message(encoded.get(8..8 + length)?).ok()?;
        let batch = message.header_as_record_batch()?;
        if batch.compression().is_some() || changed.iter().any(|&(row, _)| row as i64 >= batch.length()) {
            return None;
        }
        let (buffers, body) = (batch.buffers()?, 8 + length);
        // each column's buffers: validity, then values (and a string's offsets before them)
        let Columns { bucket, dims, measures, .. } = &self.columns;
        let buffers_of = |ty: FieldType| if ty == FieldType::String { 3 } else { 2 };
        let mut at = 2 * usize::from(*bucket) + dims.iter().map(|&(_, ty)| buffers_of(ty)).sum::<usize>();
        let mut writes = Vec::with_capacity(changed.len() * measures.len());
        for (m, &(_, ty)) in measures.iter().enumerate() {
            if at + 1 >= buffers.len() {
                return None;
            }
            let (validity, values) = (buffers.get(at), buffers.get(at + 1));
            for &(row, new) in changed {
                // a validity buffer is written only when the column has nulls
                let valid = validity.length() == 0
                    || encoded.get(body + validity.offset() as usize + row / 8)? & (1 << (row % 8)) != 0;
                let bytes = match (ty, new.get(m)?) {
                    (_, Value::Null) if !valid => continue,
                    (FieldType::Int64, Value::Int(v)) | (FieldType::Timestamp, Value::Timestamp(v)) if valid => {
                        v.to_le_bytes()
                    }
                    (FieldType::Float64, Value::Float(v)) if valid => v.to_le_bytes(),
                    _ => return None,
                };
                let start = body + values.offset() as usize + row * 8;
                if (row as u64 + 1) * 8 > values.length() as u64 || start + 8 > encoded.len() {
                    return None;
                }
                writes.push((start, bytes));
            }
            at += buffers_of(ty);
        }
        Some(writes)
    }
}

fn arrow_failed(e: ArrowError) -> ApiError {
    ApiError::internal("writing an Arrow answer", e)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, RecordBatch};
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::arrow::ipc::reader::StreamReader;
    use tandem_model::agg::Dims;

    use super::*;

    /// A writer of rows with a bucket, one string dimension and three measures: a count
    /// (int64), a sum (float64) and a minimum (int64, null in every fifth row).
    fn writer() -> ArrowWriter<'static> {
        let measures =
            vec![("views", FieldType::Int64), ("revenue", FieldType::Float64), ("fastest", FieldType::Int64)];
        ArrowWriter::new(Columns { bucket: true, zone: None, dims: vec![("country", FieldType::String)], measures })
    }

    fn rows(n: usize) -> Vec<(GroupKey, Vec<Value>)> {
        let row = |i: usize| {
            let key = GroupKey {
                bucket: 3_600_000_000 * (i as i64 % 3),
                dims: Dims::from_vec(vec![Value::String(format!("c{i}").into())]),
            };
            let fastest = if i.is_multiple_of(5) { Value::Null } else { Value::Int(i as i64 * 7) };
            (key, vec![Value::Int(i as i64), Value::Float(i as f64 / 3.0), fastest])
        };
        (0..n).map(row).collect()
    }

    fn encode(writer: &ArrowWriter, rows: &[(GroupKey, Vec<Value>)]) -> Bytes {
        let rows: Vec<(&GroupKey, &[Value])> = rows.iter().map(|(key, values)| (key, values.as_slice())).collect();
        writer.encode(&rows).unwrap()
    }

    /// The one batch of a stream of the schema, `batch` and the end, as arrow-rs reads it.
    fn read(writer: &ArrowWriter, batch: Bytes) -> RecordBatch {
        let answer = writer.answer(&Freshness::default(), [&[][..], &[][..]], [batch]).unwrap();
        let bytes = answer.to_vec();
        let mut batches = StreamReader::try_new(bytes.as_slice(), None).unwrap().map(Result::unwrap);
        let batch = batches.next().unwrap();
        assert!(batches.next().is_none());
        batch
    }

    #[test]
    fn a_patched_run_reads_as_the_run_encoded_afresh() {
        let writer = writer();
        let mut rows = rows(40);
        let encoded = encode(&writer, &rows);
        // rows 0 and 39 (the ends) and 17 get new counts, sums and (non-null) minimums
        let changed = [0, 17, 39];
        for i in changed {
            rows[i].1[0] = Value::Int(1000 + i as i64);
            rows[i].1[1] = Value::Float(-0.5 * i as f64);
            if i != 0 {
                rows[i].1[2] = Value::Int(-(i as i64));
            }
        }
        let patches: Vec<(usize, &[Value])> = changed.iter().map(|&i| (i, rows[i].1.as_slice())).collect();
        // held by an answer still (`kept`): patched in a copy, and the answer's left as it was
        let (kept, before) = (encoded.clone(), encoded.to_vec());
        let copy = writer.patch(encoded, &patches).expect("numbers are written in place");
        assert_eq!(kept, before);
        assert_ne!(copy.as_ptr(), kept.as_ptr());
        // held by nothing else: patched where it lies
        let at = kept.as_ptr();
        let in_place = writer.patch(kept, &patches).unwrap();
        assert_eq!((in_place.as_ptr(), &in_place), (at, &copy));
        let patched = read(&writer, copy);
        assert_eq!(patched, read(&writer, encode(&writer, &rows)));
        let views = patched.column(2).as_primitive::<Int64Type>();
        assert_eq!((views.value(16), views.value(17)), (16, 1017));
        assert_eq!(patched.column(4).as_primitive::<Int64Type>().value(39), -39);
    }

    #[test]
    fn values_that_are_not_numbers_in_place_are_encoded_again() {
        let writer = writer();
        let rows = rows(12);
        let encoded = encode(&writer, &rows);
        let with = |i: usize, m: usize, value: Value| {
            let mut values = rows[i].1.clone();
            values[m] = value;
            writer.patch(encoded.clone(), &[(i, &values)])
        };
        assert!(with(6, 2, Value::Int(1)).is_some());
        // row 5's minimum is null; a validity bit is not written in place
        assert!(with(5, 2, Value::Int(1)).is_none());
        assert!(with(5, 2, Value::Null).is_some(), "a null staying null");
        assert!(with(6, 2, Value::Null).is_none());
        assert!(with(6, 1, Value::Int(1)).is_none(), "a value of another type than its column's");
        assert!(writer.patch(encoded.clone(), &[(12, &rows[0].1)]).is_none(), "a row past the run's");
        // a string measure's values may change length
        let writer = ArrowWriter::new(Columns { measures: vec![("last_path", FieldType::String)], ..writer.columns });
        let rows: Vec<_> = rows.into_iter().map(|(key, _)| (key, vec![Value::String("/a".into())])).collect();
        let encoded = encode(&writer, &rows);
        assert!(writer.patch(encoded, &[(1, &[Value::String("/b".into())])]).is_none());
    }
}
