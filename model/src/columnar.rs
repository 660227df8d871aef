//! The Arrow shapes of tandem's data: the master dataset (events) and a batch version
//! (aggregate states per group). Both layers convert through here, so the batch layer's
//! Parquet and the speed layer's memory always mean the same thing.

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::agg::{GroupKey, Groups, MeasureState, merge_states};
use crate::schema::{DatasetSpec, FieldType};
use crate::value::{Row, Value, ValueRef};
use crate::view::{CompiledView, Measure, MeasureKind};

/// Column of the master dataset holding each event's ingest sequence number.
pub const SEQ_COLUMN: &str = "_seq";
/// Column of a batch version holding each group's bucket start.
pub const BUCKET_COLUMN: &str = "bucket";

pub fn arrow_type(ty: FieldType) -> DataType {
    match ty {
        FieldType::String => DataType::Utf8,
        FieldType::Int64 => DataType::Int64,
        FieldType::Float64 => DataType::Float64,
        FieldType::Bool => DataType::Boolean,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

/// The schema of a dataset's events; with `_seq` first for the master dataset.
pub fn dataset_schema(spec: &DatasetSpec, with_seq: bool) -> SchemaRef {
    let mut fields = Vec::with_capacity(spec.fields.len() + 1);
    if with_seq {
        fields.push(Field::new(SEQ_COLUMN, DataType::Int64, false));
    }
    for (name, ty) in spec.columns() {
        fields.push(Field::new(name, arrow_type(ty), name != spec.time_field));
    }
    Arc::new(Schema::new(fields))
}

/// Events as one record batch; `seqs` (one per row) adds the `_seq` column.
pub fn rows_to_batch(spec: &DatasetSpec, rows: &[&Row], seqs: Option<&[u64]>) -> Result<RecordBatch, ArrowError> {
    let mut events = EventColumns::new(spec, seqs.is_some());
    for (i, row) in rows.iter().enumerate() {
        events.push(seqs.map(|s| s[i]), row.iter().map(Value::as_ref));
    }
    events.finish()
}

/// A record batch of events built one event at a time, from values borrowed from wherever
/// they lie (a decoded request, a log segment), with no row of owned values in between.
pub struct EventColumns {
    schema: SchemaRef,
    seqs: Option<Int64Builder>,
    columns: Vec<ColumnBuilder>,
}

enum ColumnBuilder {
    String(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    /// A column the batch's reader never looks at: left out of the batch.
    Unread,
}

impl ColumnBuilder {
    /// A column of `ty` for about `rows` values.
    fn new(ty: FieldType, rows: usize) -> ColumnBuilder {
        match ty {
            FieldType::String => ColumnBuilder::String(StringBuilder::with_capacity(rows, rows * 16)),
            FieldType::Int64 => ColumnBuilder::Int(Int64Builder::with_capacity(rows)),
            FieldType::Float64 => ColumnBuilder::Float(Float64Builder::with_capacity(rows)),
            FieldType::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(rows)),
            FieldType::Timestamp => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"))
            }
        }
    }

    fn finish(self) -> Option<ArrayRef> {
        Some(match self {
            ColumnBuilder::String(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Unread => return None,
        })
    }

    #[inline]
    fn append(&mut self, value: ValueRef<'_>) {
        match (self, value) {
            (ColumnBuilder::String(b), ValueRef::String(s)) => b.append_value(s),
            (ColumnBuilder::String(b), _) => b.append_null(),
            (ColumnBuilder::Int(b), ValueRef::Int(i)) => b.append_value(i),
            (ColumnBuilder::Int(b), _) => b.append_null(),
            (ColumnBuilder::Float(b), ValueRef::Float(f)) => b.append_value(f),
            (ColumnBuilder::Float(b), _) => b.append_null(),
            (ColumnBuilder::Bool(b), ValueRef::Bool(x)) => b.append_value(x),
            (ColumnBuilder::Bool(b), _) => b.append_null(),
            (ColumnBuilder::Timestamp(b), ValueRef::Timestamp(t)) => b.append_value(t),
            (ColumnBuilder::Timestamp(b), _) => b.append_null(),
            (ColumnBuilder::Unread, _) => {}
        }
    }
}

impl EventColumns {
    /// Columns for `spec`'s fields; with `_seq` first when `with_seq`.
    pub fn new(spec: &DatasetSpec, with_seq: bool) -> EventColumns {
        let mut events = EventColumns::reading(spec, dataset_schema(spec, with_seq), |_| true, 1024);
        events.seqs = with_seq.then(Int64Builder::new); // `reading` leaves `_seq` out; added here
        events
    }

    /// Columns for the fields of `spec` that `read` picks (by position), no `_seq`, in
    /// `schema` (those fields of `dataset_schema(spec, false)`, in field order, built once by
    /// the caller), for about `rows` events: for a reader that looks at a few fields only, as
    /// a view filter that reads one flag need not copy every string of a request. The other
    /// fields are left out, not filled with nulls: making a null column of each for every
    /// group commit was half of a one-event commit's filter (session 46).
    pub fn reading(spec: &DatasetSpec, schema: SchemaRef, read: impl Fn(usize) -> bool, rows: usize) -> EventColumns {
        let columns = spec
            .columns()
            .enumerate()
            .map(|(i, (_, ty))| {
                if !read(i) {
                    return ColumnBuilder::Unread;
                }
                ColumnBuilder::new(ty, rows)
            })
            .collect();
        EventColumns { schema, seqs: None, columns }
    }

    /// Appends one event: its sequence number (when built with `_seq`) and its values in
    /// column order. A value of another type than its field's is stored as null, and so is
    /// each field past the event's last value (an event stored before the field was added).
    pub fn push<'a>(&mut self, seq: Option<u64>, values: impl IntoIterator<Item = ValueRef<'a>>) {
        if let Some(seqs) = &mut self.seqs {
            seqs.append_option(seq.map(|s| s as i64));
        }
        let mut values = values.into_iter();
        for column in &mut self.columns {
            column.append(values.next().unwrap_or(ValueRef::Null));
        }
    }

    /// [`push`](Self::push) for an event's row, in columns built without `_seq`; a column
    /// nobody reads is skipped without looking at its value. A view filter's batch
    /// reads one or two fields of each event: converting every value of each row to push it
    /// was a tenth of the writer's time at the ingest limit (`bench/HISTORY.md`, session 42).
    pub fn push_row(&mut self, row: &[Value]) {
        debug_assert!(self.seqs.is_none(), "push_row gives no sequence number");
        for (i, column) in self.columns.iter_mut().enumerate() {
            if !matches!(column, ColumnBuilder::Unread) {
                column.append(row.get(i).map_or(ValueRef::Null, Value::as_ref));
            }
        }
    }

    pub fn finish(self) -> Result<RecordBatch, ArrowError> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.columns.len() + 1);
        if let Some(mut seqs) = self.seqs {
            columns.push(Arc::new(seqs.finish()));
        }
        columns.extend(self.columns.into_iter().filter_map(ColumnBuilder::finish));
        RecordBatch::try_new(self.schema, columns)
    }
}

/// An answer's rows as one record batch, each column typed as the JSON answer's values are:
/// `bucket` (a UTC microsecond timestamp; only when the rows have one, as in JSON), the
/// grouped dimensions in their fields' types, then the measures (see
/// [`Measure::value_type`]). What a query answers to `Accept: application/vnd.apache.arrow.stream`.
pub struct AnswerColumns {
    fields: Vec<Field>,
    bucket: Option<TimestampMicrosecondBuilder>,
    dims: Vec<ColumnBuilder>,
    measures: Vec<ColumnBuilder>,
}

impl AnswerColumns {
    /// Columns for about `rows` rows, with a bucket in the time zone `bucket` names when there
    /// is one, of the named dimensions and measures in answer order, each with its type.
    pub fn new(
        bucket: Option<&str>,
        dims: &[(&str, FieldType)],
        measures: &[(&str, FieldType)],
        rows: usize,
    ) -> AnswerColumns {
        AnswerColumns {
            fields: answer_fields(bucket, dims, measures),
            bucket: bucket.map(|zone| TimestampMicrosecondBuilder::with_capacity(rows).with_timezone(zone)),
            dims: dims.iter().map(|(_, ty)| ColumnBuilder::new(*ty, rows)).collect(),
            measures: measures.iter().map(|(_, ty)| ColumnBuilder::new(*ty, rows)).collect(),
        }
    }

    /// Appends a row: its group key (bucket and the grouped dimensions' values) and its
    /// measure values. A value of another type than its column's is stored as null.
    pub fn push(&mut self, key: &GroupKey, values: &[Value]) {
        if let Some(bucket) = &mut self.bucket {
            bucket.append_value(key.bucket);
        }
        for (column, value) in self.dims.iter_mut().zip(&key.dims).chain(self.measures.iter_mut().zip(values)) {
            column.append(value.as_ref());
        }
    }

    /// The batch.
    pub fn finish(self) -> Result<RecordBatch, ArrowError> {
        let schema = Arc::new(Schema::new(self.fields));
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        if let Some(mut bucket) = self.bucket {
            columns.push(Arc::new(bucket.finish()));
        }
        columns.extend(self.dims.into_iter().chain(self.measures).filter_map(ColumnBuilder::finish));
        RecordBatch::try_new(schema, columns)
    }
}

/// The fields of an answer's columns (see [`AnswerColumns`]): `bucket` when there is one, a
/// timestamp in the time zone it names (`UTC`, or the query's), then the named dimensions and
/// measures in answer order, each with its type.
pub fn answer_fields(bucket: Option<&str>, dims: &[(&str, FieldType)], measures: &[(&str, FieldType)]) -> Vec<Field> {
    let mut fields = Vec::with_capacity(dims.len() + measures.len() + 1);
    if let Some(zone) = bucket {
        fields.push(Field::new(BUCKET_COLUMN, DataType::Timestamp(TimeUnit::Microsecond, Some(zone.into())), false));
    }
    fields.extend(dims.iter().chain(measures).map(|(name, ty)| Field::new(*name, arrow_type(*ty), true)));
    fields
}

/// The columns a measure's state takes in a batch version: name and type.
pub fn state_columns(measure: &Measure) -> Vec<(String, DataType)> {
    let name = &measure.name;
    match measure.kind {
        // stored as their value is answered
        MeasureKind::Count | MeasureKind::CountField | MeasureKind::Sum | MeasureKind::Min | MeasureKind::Max => {
            vec![(name.clone(), arrow_type(measure.value_type()))]
        }
        MeasureKind::Avg => {
            vec![(format!("{name}__sum"), DataType::Float64), (format!("{name}__count"), DataType::Int64)]
        }
        MeasureKind::ApproxDistinct | MeasureKind::ApproxPercentile => vec![(name.clone(), DataType::Binary)],
    }
}

/// Reads the groups of a batch version back into states.
pub fn groups_from_batch(view: &CompiledView, batch: &RecordBatch, into: &mut Groups) -> Result<(), String> {
    let col = |name: &str| batch.column_by_name(name).ok_or_else(|| format!("batch version lacks column {name:?}"));
    let bucket = col(BUCKET_COLUMN)?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or("bucket column is not a microsecond timestamp")?;
    let dims: Vec<&ArrayRef> = view.spec.dimensions.iter().map(|d| col(d)).collect::<Result<_, _>>()?;
    let mut measure_cols = Vec::new();
    for (m, _) in &view.measures {
        let cols: Vec<&ArrayRef> = state_columns(m).iter().map(|(n, _)| col(n)).collect::<Result<_, _>>()?;
        measure_cols.push(cols);
    }
    for row in 0..batch.num_rows() {
        let key = GroupKey {
            bucket: bucket.value(row),
            dims: dims.iter().zip(&view.dimension_types).map(|(a, ty)| value_at(a, row, *ty)).collect(),
        };
        let mut states = Vec::with_capacity(view.measures.len());
        for ((m, _), cols) in view.measures.iter().zip(&measure_cols) {
            states.push(state_at(m, cols, row)?);
        }
        match into.get_mut(&key) {
            Some(existing) => merge_states(existing, &states),
            None => {
                into.insert(key, states);
            }
        }
    }
    Ok(())
}

fn state_at(m: &Measure, cols: &[&ArrayRef], row: usize) -> Result<MeasureState, String> {
    let int = |a: &ArrayRef| a.as_primitive_opt::<Int64Type>().filter(|a| a.is_valid(row)).map(|a| a.value(row));
    let float = |a: &ArrayRef| a.as_primitive_opt::<Float64Type>().filter(|a| a.is_valid(row)).map(|a| a.value(row));
    let field_type = m.field.as_ref().map(|f| f.1);
    Ok(match m.kind {
        MeasureKind::Count | MeasureKind::CountField => MeasureState::Count(int(cols[0]).unwrap_or(0)),
        MeasureKind::Sum if field_type == Some(FieldType::Int64) => MeasureState::SumInt(int(cols[0])),
        MeasureKind::Sum => MeasureState::SumFloat(float(cols[0])),
        MeasureKind::Min | MeasureKind::Max => {
            let v = value_at(cols[0], row, field_type.ok_or("min/max without a field")?);
            let v = if matches!(v, Value::Null) { None } else { Some(v) };
            if m.kind == MeasureKind::Min { MeasureState::Min(v) } else { MeasureState::Max(v) }
        }
        MeasureKind::Avg => MeasureState::Avg { sum: float(cols[0]).unwrap_or(0.0), count: int(cols[1]).unwrap_or(0) },
        MeasureKind::ApproxDistinct | MeasureKind::ApproxPercentile => {
            let bytes = cols[0].as_binary_opt::<i32>().filter(|a| a.is_valid(row)).map(|a| a.value(row));
            let mut state = MeasureState::empty(m);
            if let Some(b) = bytes {
                state.merge_sketch_bytes(b)?;
            }
            state
        }
    })
}

/// The value at `row` of an array of a field of type `ty`.
pub fn value_at(array: &ArrayRef, row: usize, ty: FieldType) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match ty {
        FieldType::String => array
            .as_string_opt::<i32>()
            .map(|a| Value::String(a.value(row).into()))
            .or_else(|| array.as_string_view_opt().map(|a| Value::String(a.value(row).into())))
            .unwrap_or(Value::Null),
        FieldType::Int64 => {
            array.as_primitive_opt::<Int64Type>().map(|a| Value::Int(a.value(row))).unwrap_or(Value::Null)
        }
        FieldType::Float64 => {
            array.as_primitive_opt::<Float64Type>().map(|a| Value::Float(a.value(row))).unwrap_or(Value::Null)
        }
        FieldType::Bool => array.as_boolean_opt().map(|a| Value::Bool(a.value(row))).unwrap_or(Value::Null),
        FieldType::Timestamp => array
            .as_primitive_opt::<TimestampMicrosecondType>()
            .map(|a| Value::Timestamp(a.value(row)))
            .unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_arrow() {
        let spec: DatasetSpec = serde_json::from_str(
            r#"{"name":"pv","time_field":"ts","fields":{"ts":"timestamp","s":"string","i":"int64","f":"float64","b":"bool"}}"#,
        )
        .unwrap();
        let rows = [
            vec![Value::Bool(true), Value::Float(1.5), Value::Int(-2), Value::String("x".into()), Value::Timestamp(7)],
            vec![Value::Null, Value::Null, Value::Null, Value::Null, Value::Timestamp(8)],
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        let batch = rows_to_batch(&spec, &refs, Some(&[3, 4])).unwrap();
        assert_eq!(batch.num_columns(), 6);
        for (r, row) in rows.iter().enumerate() {
            for (i, ty) in spec.fields.values().enumerate() {
                assert_eq!(&value_at(batch.column(i + 1), r, *ty), &row[i]);
            }
        }
    }

    #[test]
    fn an_event_stored_before_a_field_was_added_holds_null_there() {
        let spec: DatasetSpec =
            serde_json::from_str(r#"{"name":"pv","time_field":"ts","fields":{"ts":"timestamp","s":"string"}}"#)
                .unwrap();
        let wider = spec.add_fields(&[("a".to_string(), FieldType::Int64)].into_iter().collect()).unwrap();
        let old = vec![Value::String("x".into()), Value::Timestamp(7)];
        let new = vec![Value::String("y".into()), Value::Timestamp(8), Value::Int(5)];
        let batch = rows_to_batch(&wider, &[&old, &new], Some(&[1, 2])).unwrap();
        let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, [SEQ_COLUMN, "s", "ts", "a"]);
        assert_eq!(value_at(batch.column(3), 0, FieldType::Int64), Value::Null);
        assert_eq!(value_at(batch.column(3), 1, FieldType::Int64), Value::Int(5));
        assert_eq!(value_at(batch.column(1), 0, FieldType::String), Value::String("x".into()));
        // a reader of the added field only, as a view filter is
        let schema = Arc::new(dataset_schema(&wider, false).project(&[2]).unwrap());
        let mut events = EventColumns::reading(&wider, schema, |i| i == 2, 2);
        events.push_row(&old);
        events.push_row(&new);
        let batch = events.finish().unwrap();
        assert_eq!(value_at(batch.column(0), 0, FieldType::Int64), Value::Null);
        assert_eq!(value_at(batch.column(0), 1, FieldType::Int64), Value::Int(5));
    }

    #[test]
    fn answer_rows_keep_their_types_values_and_nulls() {
        let dims = [("country", FieldType::String), ("mobile", FieldType::Bool)];
        let measures = [("views", FieldType::Int64), ("mean", FieldType::Float64), ("last", FieldType::Timestamp)];
        let rows = [
            (
                GroupKey {
                    bucket: 3_600_000_000,
                    dims: [Value::String("DE".into()), Value::Bool(true)].into_iter().collect(),
                },
                vec![Value::Int(3), Value::Float(0.25), Value::Timestamp(5)],
            ),
            (
                GroupKey { bucket: 7_200_000_000, dims: [Value::Null, Value::Bool(false)].into_iter().collect() },
                vec![Value::Int(0), Value::Null, Value::Null],
            ),
        ];
        for bucket in [true, false] {
            let mut columns = AnswerColumns::new(bucket.then_some("UTC"), &dims, &measures, 1);
            rows.iter().for_each(|(key, values)| columns.push(key, values));
            let batch = columns.finish().unwrap();
            let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
            let expected = ["country", "mobile", "views", "mean", "last"];
            assert_eq!(names[bucket as usize..], expected);
            let types = dims.iter().chain(&measures).map(|(_, ty)| *ty);
            for (r, (key, values)) in rows.iter().enumerate() {
                if bucket {
                    assert_eq!(value_at(batch.column(0), r, FieldType::Timestamp), Value::Timestamp(key.bucket));
                }
                let read: Vec<Value> = types
                    .clone()
                    .enumerate()
                    .map(|(i, ty)| value_at(batch.column(i + bucket as usize), r, ty))
                    .collect();
                assert_eq!(read, key.dims.iter().chain(values).cloned().collect::<Vec<_>>());
            }
        }
    }
}
