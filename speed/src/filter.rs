//! View filters: an SQL boolean expression over a dataset's fields, compiled once by
//! DataFusion and evaluated on each ingest request as an Arrow batch. The batch layer hands
//! the same text to the same parser, so both layers agree on which events a view sees.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use tandem_model::DatasetSpec;
use tandem_model::columnar::dataset_schema;

/// A compiled view filter.
#[derive(Debug, Clone)]
pub struct ViewFilter {
    expr: Arc<dyn PhysicalExpr>,
}

impl ViewFilter {
    /// Parses and type-checks `sql` against the dataset: one expression, only the dataset's
    /// fields, no aggregates or subqueries, boolean result.
    pub fn compile(dataset: &DatasetSpec, sql: &str) -> Result<ViewFilter, String> {
        let schema = dataset_schema(dataset, false);
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| e.to_string())?;
        let ctx = SessionContext::new();
        let expr =
            ctx.parse_sql_expr(sql, &df_schema).map_err(|e| format!("filter: {}", first_line(&e.to_string())))?;
        let mut forbidden = None;
        expr.apply(|e| {
            if matches!(
                e,
                Expr::AggregateFunction(_)
                    | Expr::WindowFunction(_)
                    | Expr::ScalarSubquery(_)
                    | Expr::Exists(_)
                    | Expr::InSubquery(_)
                    | Expr::Placeholder(_)
            ) {
                forbidden = Some(e.to_string());
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .map_err(|e| e.to_string())?;
        if let Some(what) = forbidden {
            return Err(format!(
                "filter: {what} is not allowed; a filter is a boolean expression over one event's fields"
            ));
        }
        let physical = ctx
            .create_physical_expr(expr, &df_schema)
            .map_err(|e| format!("filter: {}", first_line(&e.to_string())))?;
        let ty = physical.data_type(&schema).map_err(|e| e.to_string())?;
        if ty != DataType::Boolean {
            return Err(format!("filter: expression is {ty}, not boolean"));
        }
        Ok(ViewFilter { expr: physical })
    }

    /// Which rows pass: true only where the expression is true (null counts as false, as in
    /// SQL's WHERE).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Vec<bool>, String> {
        let result = self.expr.evaluate(batch).map_err(|e| e.to_string())?;
        let array = result.into_array(batch.num_rows()).map_err(|e| e.to_string())?;
        let mask = array.as_any().downcast_ref::<BooleanArray>().ok_or("filter did not give booleans")?;
        Ok((0..mask.len()).map(|i| mask.is_valid(i) && mask.value(i)).collect())
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

use datafusion::common::tree_node::TreeNode;

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_model::columnar::rows_to_batch;
    use tandem_model::{Row, Value};

    fn dataset() -> DatasetSpec {
        serde_json::from_str(
            r#"{"name":"pv","time_field":"ts","fields":{"ts":"timestamp","country":"string","ms":"float64","bot":"bool"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn accepts_boolean_expressions_only() {
        let d = dataset();
        for good in [
            "bot = false",
            "country IN ('US', 'DE') AND ms > 10",
            "NOT bot OR bot IS NULL",
            "ts >= '2026-01-01T00:00:00Z'",
        ] {
            ViewFilter::compile(&d, good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "ms + 1",
            "nope = 1",
            "bot = false; DROP TABLE x",
            "bot = false) OR (true",
            "count(*) > 1",
            "country = (SELECT 1)",
            "",
            "bot = false, ms > 1",
        ] {
            assert!(ViewFilter::compile(&d, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn null_is_not_true() {
        let d = dataset();
        let f = ViewFilter::compile(&d, "bot = false").unwrap();
        // fields in name order: bot, country, ms, ts
        let rows: Vec<Row> = vec![
            vec![Value::Bool(false), Value::Null, Value::Null, Value::Timestamp(0)],
            vec![Value::Bool(true), Value::Null, Value::Null, Value::Timestamp(0)],
            vec![Value::Null, Value::Null, Value::Null, Value::Timestamp(0)],
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        let batch = rows_to_batch(&d, &refs, None).unwrap();
        assert_eq!(f.evaluate(&batch).unwrap(), vec![true, false, false]);
    }
}
