//! DataFusion aggregates that build tandem's sketch states (`approx_distinct`,
//! `approx_percentile`) in the batch layer.
//!
//! They wrap the very [`MeasureState`] the speed layer folds events into, so both layers
//! hash, bin and merge values with one piece of code, and a version file's binary column
//! holds exactly what the speed layer would have built from the same events.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Accumulator, AggregateUDF, Volatility, create_udaf};
use tandem_model::FieldType;
use tandem_model::agg::MeasureState;
use tandem_model::columnar::{arrow_type, value_at};
use tandem_model::view::Measure;

/// The aggregate for a sketch measure over its field's type.
pub fn sketch_udaf(measure: &Measure) -> AggregateUDF {
    let (_, field_type) = measure.field.clone().expect("sketch measures read a field");
    let template = measure.clone();
    let name = format!("tandem_{:?}_{:?}", measure.kind, field_type).to_lowercase();
    create_udaf(
        &name,
        vec![arrow_type(field_type)],
        Arc::new(DataType::Binary),
        Volatility::Immutable,
        Arc::new(move |_| Ok(Box::new(SketchAccumulator { state: MeasureState::empty(&template), field_type }))),
        Arc::new(vec![DataType::Binary]),
    )
}

#[derive(Debug)]
struct SketchAccumulator {
    state: MeasureState,
    field_type: FieldType,
}

impl SketchAccumulator {
    fn bytes(&self) -> Vec<u8> {
        self.state.sketch_bytes().expect("the accumulator holds a sketch state")
    }
}

impl Accumulator for SketchAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let array = &values[0];
        for row in 0..array.len() {
            if array.is_valid(row) {
                self.state.update(&value_at(array, row, self.field_type), false);
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let array = states[0].as_binary::<i32>();
        for row in 0..array.len() {
            if !array.is_valid(row) {
                continue;
            }
            self.state.merge_sketch_bytes(array.value(row)).map_err(DataFusionError::Execution)?;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.bytes()))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Binary(Some(self.bytes())))
    }

    /// Called after every batch, so it must not serialize the state (it did: serializing
    /// DDSketch bins was 40 % of a full recompute).
    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.state.heap_size()
    }
}
