//! DataFusion aggregates that build tandem's sketch states (`approx_distinct`,
//! `approx_percentile`) in the batch layer.
//!
//! They wrap the very [`MeasureState`] the speed layer folds events into, so both layers
//! hash, bin and merge values with one piece of code, and a version file's binary column
//! holds exactly what the speed layer would have built from the same events.
//!
//! Each comes as a [`GroupsAccumulator`], which keeps the states of all groups in one vector
//! indexed by DataFusion's group index, and as a plain [`Accumulator`] (one group), which
//! DataFusion still uses for an aggregate without `GROUP BY`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use tandem_model::FieldType;
use tandem_model::agg::MeasureState;
use tandem_model::columnar::{arrow_type, value_at};
use tandem_model::view::{Measure, MeasureKind};

/// The aggregate for a sketch measure over its field's type.
pub fn sketch_udaf(measure: &Measure) -> AggregateUDF {
    let (_, field_type) = measure.field.clone().expect("sketch measures read a field");
    let distinct = match measure.kind {
        MeasureKind::ApproxDistinct => true,
        MeasureKind::ApproxPercentile => false,
        other => panic!("{other:?} is not a sketch measure"),
    };
    AggregateUDF::from(SketchUdaf {
        name: format!("tandem_{:?}_{:?}", measure.kind, field_type).to_lowercase(),
        signature: Signature::exact(vec![arrow_type(field_type)], Volatility::Immutable),
        distinct,
        field_type,
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SketchUdaf {
    name: String,
    signature: Signature,
    /// `approx_distinct` if true, else `approx_percentile`
    distinct: bool,
    field_type: FieldType,
}

impl SketchUdaf {
    fn sketch(&self) -> Sketch {
        Sketch { distinct: self.distinct, field_type: self.field_type }
    }
}

impl AggregateUDFImpl for SketchUdaf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let sketch = self.sketch();
        Ok(Box::new(SketchAccumulator { state: sketch.empty(), sketch }))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(SketchGroups { sketch: self.sketch(), states: Vec::new(), values: 0 }))
    }
}

/// What both accumulators share: which sketch, over which field type.
#[derive(Debug, Clone, Copy)]
struct Sketch {
    distinct: bool,
    field_type: FieldType,
}

impl Sketch {
    fn empty(&self) -> MeasureState {
        if self.distinct {
            MeasureState::Distinct(Box::default())
        } else {
            // `p` is read only when an answer is finished, never stored: any will do here
            MeasureState::Percentile { sketch: Box::default(), p: 0.5 }
        }
    }

    fn update(&self, state: &mut MeasureState, array: &ArrayRef, row: usize) {
        // a string is hashed where it lies, not copied into a value first
        if let (MeasureState::Distinct(d), FieldType::String) = (&mut *state, self.field_type) {
            if let Some(strings) = array.as_string_opt::<i32>() {
                return d.insert_str(strings.value(row));
            }
            if let Some(strings) = array.as_string_view_opt() {
                return d.insert_str(strings.value(row));
            }
        }
        state.update(&value_at(array, row, self.field_type), false);
    }

    fn bytes(state: &MeasureState) -> Vec<u8> {
        state.sketch_bytes().expect("a sketch aggregate holds a sketch state")
    }

    fn merge(state: &mut MeasureState, array: &ArrayRef, row: usize) -> Result<()> {
        let bytes = array.as_binary::<i32>().value(row);
        state.merge_sketch_bytes(bytes).map_err(DataFusionError::Execution)
    }
}

#[derive(Debug)]
struct SketchAccumulator {
    sketch: Sketch,
    state: MeasureState,
}

impl Accumulator for SketchAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let array = &values[0];
        for row in 0..array.len() {
            if array.is_valid(row) {
                self.sketch.update(&mut self.state, array, row);
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for row in 0..states[0].len() {
            if states[0].is_valid(row) {
                Sketch::merge(&mut self.state, &states[0], row)?;
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Binary(Some(Sketch::bytes(&self.state))))
    }

    /// Called after every batch, so it must not serialize the state (it did: serializing
    /// DDSketch bins was 40 % of a full recompute).
    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.state.heap_size()
    }
}

/// The states of all groups, by group index.
struct SketchGroups {
    sketch: Sketch,
    states: Vec<MeasureState>,
    /// Values folded in so far, the base of [`size`](GroupsAccumulator::size), which must
    /// not visit every group (DataFusion asks after every batch).
    values: usize,
}

fn admitted(filter: Option<&BooleanArray>, row: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

impl SketchGroups {
    fn grow(&mut self, groups: usize) {
        if self.states.len() < groups {
            let sketch = self.sketch;
            self.states.resize_with(groups, || sketch.empty());
        }
    }

    fn emit(&mut self, emit_to: EmitTo) -> ArrayRef {
        let states = emit_to.take_needed(&mut self.states);
        let mut out = BinaryBuilder::with_capacity(states.len(), states.len() * 64);
        for state in &states {
            out.append_value(Sketch::bytes(state));
        }
        Arc::new(out.finish())
    }
}

impl GroupsAccumulator for SketchGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let array = &values[0];
        // the batch's rows in order of their group, so that a group's state (KiBs of sketch,
        // far from any other group's) is reached once per batch rather than once per row:
        // in row order nearly every value missed the cache. A sketch does not depend on the
        // order its values arrive in.
        let mut rows: Vec<u64> = (0..group_indices.len())
            .filter(|&row| array.is_valid(row) && admitted(opt_filter, row))
            .map(|row| ((group_indices[row] as u64) << 32) | row as u64)
            .collect();
        rows.sort_unstable();
        for packed in &rows {
            let (group, row) = ((packed >> 32) as usize, (packed & u32::MAX as u64) as usize);
            self.sketch.update(&mut self.states[group], array, row);
        }
        self.values += rows.len();
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(self.emit(emit_to))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.emit(emit_to)])
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.grow(total_num_groups);
        let array = &values[0];
        for (row, &group) in group_indices.iter().enumerate() {
            if array.is_valid(row) {
                Sketch::merge(&mut self.states[group], array, row)?;
            }
        }
        Ok(())
    }

    /// Each row its own group: a state of its one value.
    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let array = &values[0];
        let mut out = BinaryBuilder::with_capacity(array.len(), array.len() * 16);
        for row in 0..array.len() {
            let mut state = self.sketch.empty();
            if array.is_valid(row) && admitted(opt_filter, row) {
                self.sketch.update(&mut state, array, row);
            }
            out.append_value(Sketch::bytes(&state));
        }
        Ok(vec![Arc::new(out.finish())])
    }

    /// An estimate: the states themselves, plus a few bytes per value folded in (what a
    /// coupon list or a DDSketch bin costs), at most a full HLL's registers per group.
    fn size(&self) -> usize {
        let fixed = self.states.capacity() * (std::mem::size_of::<MeasureState>() + 64);
        fixed + (self.values * 8).min(self.states.len() * (16 << 10))
    }
}
