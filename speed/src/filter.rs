//! View filters: an SQL boolean expression over a dataset's fields, compiled once by
//! DataFusion and evaluated on each group commit's events as one Arrow batch. The batch layer hands
//! the same text to the same parser, so both layers agree on which events a view sees.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Expr, ExprSchemable, Operator};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::utils::{collect_columns, reassign_expr_columns};
use datafusion::prelude::SessionContext;
use tandem_model::columnar::{EventColumns, dataset_schema};
use tandem_model::{DatasetSpec, Row, Value};

/// A compiled view filter.
#[derive(Debug, Clone)]
pub struct ViewFilter {
    /// Over the dataset's event schema.
    expr: Arc<dyn PhysicalExpr>,
    dataset: DatasetSpec,
    /// The fields the expression reads and the time field (so that the batch has a column,
    /// and with it its row count, whatever the expression reads), by position: the columns of
    /// the batch [`mask`](Self::mask) makes.
    reads: Vec<bool>,
    /// Those fields' schema, built once, and `expr` over it.
    read_schema: SchemaRef,
    read_expr: Arc<dyn PhysicalExpr>,
}

impl ViewFilter {
    /// Parses and type-checks `sql` against the dataset: one expression, only the dataset's
    /// fields, boolean result, and total: nothing in it can fail for some event (see
    /// [`check_total`]), so both layers always agree on which events a view sees.
    pub fn compile(dataset: &DatasetSpec, sql: &str) -> Result<ViewFilter, String> {
        let schema = dataset_schema(dataset, false);
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| e.to_string())?;
        let ctx = SessionContext::new();
        let expr =
            ctx.parse_sql_expr(sql, &df_schema).map_err(|e| format!("filter: {}", first_line(&e.to_string())))?;
        // the implicit casts DataFusion will add are checked like explicit ones
        let simplifier =
            ExprSimplifier::new(SimplifyContext::builder().with_schema(Arc::new(df_schema.clone())).build());
        let coerced =
            simplifier.coerce(expr, &df_schema).map_err(|e| format!("filter: {}", first_line(&e.to_string())))?;
        check_total(&coerced, &df_schema)?;
        // as the batch layer's optimizer would (`coalesce` only runs simplified, for one)
        let simplified = simplifier.simplify(coerced).map_err(|e| format!("filter: {}", first_line(&e.to_string())))?;
        let physical = ctx
            .create_physical_expr(simplified, &df_schema)
            .map_err(|e| format!("filter: {}", first_line(&e.to_string())))?;
        let ty = physical.data_type(&schema).map_err(|e| e.to_string())?;
        if ty != DataType::Boolean {
            return Err(format!("filter: expression is {ty}, not boolean"));
        }
        let columns = collect_columns(&physical);
        let reads: Vec<bool> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| *f.name() == dataset.time_field || columns.iter().any(|c| c.index() == i))
            .collect();
        let read_fields: Vec<usize> = (0..reads.len()).filter(|&i| reads[i]).collect();
        let read_schema = Arc::new(schema.project(&read_fields).map_err(|e| e.to_string())?);
        let read_expr = reassign_expr_columns(physical.clone(), &read_schema).map_err(|e| e.to_string())?;
        let filter = ViewFilter { expr: physical, dataset: dataset.clone(), reads, read_schema, read_expr };
        // constant parts (a literal that does not parse as a timestamp, a bad regex) fail on
        // any row: try one row of nulls (the time field cannot be null)
        let probe: Vec<Value> = dataset
            .columns()
            .map(|(name, _)| if name == dataset.time_field { Value::Timestamp(0) } else { Value::Null })
            .collect();
        filter.mask(&[&probe]).map_err(|e| format!("filter: {}", first_line(&e)))?;
        Ok(filter)
    }

    /// Which of `rows` (events of the dataset the filter was compiled for) pass, as
    /// [`evaluate`](Self::evaluate) says of a batch of them. The batch holds only the fields
    /// the expression reads (and the time field), and the expression is the filter's over
    /// those. The writer asks once per group commit, for the rows of all its requests.
    pub fn mask(&self, rows: &[&Row]) -> Result<Vec<bool>, String> {
        let mut events = EventColumns::reading(&self.dataset, self.read_schema.clone(), |i| self.reads[i], rows.len());
        for row in rows {
            events.push_row(row);
        }
        evaluate(&self.read_expr, &events.finish().map_err(|e| e.to_string())?)
    }

    /// Which rows of a batch of the dataset's events (every field, in field order) pass: true
    /// only where the expression is true (null counts as false, as in SQL's WHERE).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Vec<bool>, String> {
        evaluate(&self.expr, batch)
    }
}

/// `expr`'s answer for each row of `batch`, as [`ViewFilter::evaluate`] says.
fn evaluate(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<Vec<bool>, String> {
    // a panic inside an expression must not take the dataset's writer thread down
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| expr.evaluate(batch)))
        .map_err(|_| "the filter panicked".to_string())?
        .map_err(|e| e.to_string())?;
    let array = result.into_array(batch.num_rows()).map_err(|e| e.to_string())?;
    let mask = array.as_any().downcast_ref::<BooleanArray>().ok_or("filter did not give booleans")?;
    Ok((0..mask.len()).map(|i| mask.is_valid(i) && mask.value(i)).collect())
}

/// Scalar functions a filter may call: none of them can fail on any input value.
const TOTAL_FUNCTIONS: &[&str] = &[
    "lower",
    "upper",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "coalesce",
    "nullif",
    "starts_with",
    "ends_with",
    "strpos",
    "instr",
    "concat",
    "concat_ws",
    "btrim",
    "ltrim",
    "rtrim",
    "reverse",
    "isnan",
    "iszero",
    "floor",
    "ceil",
    "date_trunc",
    "date_part",
    "regexp_like",
];

/// Refuses anything in a (type-coerced) filter that can fail at evaluation for some event:
/// integer division or remainder by something other than a literal (a zero divisor fails),
/// arithmetic on non-numbers (timestamps out of range fail), casts that can fail on a value
/// (strings to numbers: use `TRY_CAST`), regular expressions that are not literals,
/// aggregates, subqueries, and functions outside [`TOTAL_FUNCTIONS`]. Integer `+ - *` wrap
/// in DataFusion and float arithmetic gives infinities, so both are allowed.
fn check_total(expr: &Expr, schema: &DFSchema) -> Result<(), String> {
    let mut problem: Option<String> = None;
    expr.apply(|e| match judge(e, schema) {
        Ok(()) => Ok(TreeNodeRecursion::Continue),
        Err(why) => {
            problem = Some(why);
            Ok(TreeNodeRecursion::Stop)
        }
    })
    .map_err(|e| e.to_string())?;
    match problem {
        Some(why) if why.starts_with("filter: ") => Err(why),
        Some(why) => Err(format!("filter: {why}")),
        None => Ok(()),
    }
}

/// Whether one node of a filter is total, given that its children are checked too.
fn judge(e: &Expr, schema: &DFSchema) -> Result<(), String> {
    let type_of = |e: &Expr| e.get_type(schema).map_err(|err| format!("filter: {}", first_line(&err.to_string())));
    let literal = |e: &Expr| matches!(e, Expr::Literal(..));
    match e {
        Expr::Column(_)
        | Expr::Alias(_)
        | Expr::Literal(..)
        | Expr::Not(_)
        | Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsUnknown(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::IsNotUnknown(_)
        | Expr::Negative(_)
        | Expr::Between(_)
        | Expr::Case(_)
        | Expr::InList(_)
        | Expr::TryCast(_)
        | Expr::Like(_) => Ok(()),
        Expr::SimilarTo(like) if literal(&like.pattern) => Ok(()),
        Expr::SimilarTo(_) => Err("SIMILAR TO needs a literal pattern".into()),
        Expr::BinaryExpr(b) => {
            let (left, right) = (type_of(&b.left)?, type_of(&b.right)?);
            match b.op {
                Operator::Plus | Operator::Minus | Operator::Multiply if !(left.is_numeric() && right.is_numeric()) => {
                    Err(format!("arithmetic {} on {left} and {right} is not allowed; only on numbers", b.op))
                }
                Operator::Divide | Operator::Modulo
                    if !(left.is_floating() || right.is_floating() || nonzero_divisor(&b.right)) =>
                {
                    Err(format!(
                        "integer {} by {} can fail (division by zero); divide by a literal other than 0 and -1, \
                             or use floats",
                        b.op, b.right
                    ))
                }
                Operator::RegexMatch | Operator::RegexIMatch | Operator::RegexNotMatch | Operator::RegexNotIMatch
                    if !literal(&b.right) =>
                {
                    Err("a regular expression must be a literal".into())
                }
                Operator::BitwiseShiftLeft
                | Operator::BitwiseShiftRight
                | Operator::BitwiseAnd
                | Operator::BitwiseOr
                | Operator::BitwiseXor => Err(format!("operator {} is not allowed", b.op)),
                _ => Ok(()),
            }
        }
        Expr::Cast(c) => {
            let from = type_of(&c.expr)?;
            let to = c.field.data_type();
            let safe = literal(&c.expr)
                || from == *to
                || matches!(to, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
                || (to.is_floating() && (from.is_numeric() || from == DataType::Boolean))
                || (*to == DataType::Int64 && (from.is_signed_integer() || from == DataType::Boolean))
                // event times are kept within the range nanoseconds can hold
                || (matches!(from, DataType::Timestamp(..)) && matches!(to, DataType::Timestamp(..)));
            if safe {
                Ok(())
            } else {
                Err(format!("{e} can fail for some values ({from} to {to}); use TRY_CAST, which gives null instead"))
            }
        }
        Expr::ScalarFunction(f) => {
            let name = f.func.name();
            if !TOTAL_FUNCTIONS.contains(&name) {
                Err(format!("function {name} is not allowed in a filter; allowed: {}", TOTAL_FUNCTIONS.join(", ")))
            } else if name == "regexp_like" && !f.args.get(1).is_some_and(literal) {
                Err("a regular expression must be a literal".into())
            } else {
                Ok(())
            }
        }
        other => Err(format!("{other} is not allowed; a filter is a boolean expression over one event's fields")),
    }
}

/// A literal integer divisor that can never fail: not 0, and not -1 (MIN / -1 overflows).
fn nonzero_divisor(e: &Expr) -> bool {
    match e {
        Expr::Literal(v, _) => match v.cast_to(&DataType::Int64) {
            Ok(ScalarValue::Int64(Some(n))) => n != 0 && n != -1,
            _ => false,
        },
        _ => false,
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_model::columnar::rows_to_batch;
    use tandem_model::value::TIMESTAMP_RANGE;
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

    /// Every one of these failed (or panicked) at evaluation on some event when filters were
    /// only type-checked; now each is refused when the view is created.
    #[test]
    fn refuses_what_can_fail_on_some_event_and_evaluates_the_rest_on_any() {
        let d: DatasetSpec = serde_json::from_str(
            r#"{"name":"pv","time_field":"ts","fields":{"ts":"timestamp","s":"string","n":"int64","f":"float64"}}"#,
        )
        .unwrap();
        for bad in [
            "10 / n > 1",
            "10 % n > 1",
            "n / 0 > 1",
            "n / -1 > 1",
            "abs(n) > 0",
            "CAST(s AS BIGINT) > 0",
            "CAST(f AS BIGINT) > 0",
            "CAST(n AS INT) > 0",
            "s = 1",
            "sqrt(f) > 1",
            "regexp_like(s, s)",
            "s ~ s",
            "substr(s, n, n) = 'a'",
            "repeat(s, n) = 'a'",
            "lpad(s, n) = 'a'",
            "ts + INTERVAL '1 day' > ts",
            "n << 70 > 0",
            "ts > 'not a time'",
            "regexp_like(s, '(')",
        ] {
            assert!(ViewFilter::compile(&d, bad).is_err(), "{bad:?} accepted");
        }
        // edge values of every type: fields in name order f, n, s, ts
        let rows: Vec<Row> = vec![
            vec![Value::Float(0.0), Value::Int(0), Value::String("abc".into()), Value::Timestamp(0)],
            vec![
                Value::Float(-1.0),
                Value::Int(i64::MIN),
                Value::String("".into()),
                Value::Timestamp(TIMESTAMP_RANGE.end - 1),
            ],
            vec![
                Value::Float(f64::MAX),
                Value::Int(i64::MAX),
                Value::String("(".into()),
                Value::Timestamp(TIMESTAMP_RANGE.start),
            ],
            vec![Value::Null, Value::Null, Value::Null, Value::Timestamp(1)],
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        let batch = rows_to_batch(&d, &refs, None).unwrap();
        for good in [
            "n / 7 > 1",
            "n % 3 = 1",
            "f / 0 > 1",
            "n / 2.0 > 1",
            "n + 1 > n * 2 - 3",
            "-n > 0",
            "TRY_CAST(s AS BIGINT) > 0",
            "CAST(n AS DOUBLE) > 0.5",
            "CAST(n AS VARCHAR) = '1'",
            "s ~ '^a+'",
            "regexp_like(s, 'b')",
            "s LIKE s",
            "lower(s) IN ('abc', 'x') AND length(s) > 1",
            "date_trunc('day', ts) = ts",
            "date_part('hour', ts) = 3",
            "ts >= '2026-01-01T00:00:00Z'",
            "CASE WHEN n > 0 THEN f > 1 ELSE s = 'x' END",
            "coalesce(s, '') = '' OR n BETWEEN 1 AND 10",
        ] {
            let f = ViewFilter::compile(&d, good).unwrap_or_else(|e| panic!("{good}: {e}"));
            f.evaluate(&batch).unwrap_or_else(|e| panic!("{good}: {e}"));
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

    /// `mask` fills only the columns a filter reads; it must say what the filter says of a
    /// batch holding every value.
    #[test]
    fn a_mask_agrees_with_the_filter_over_every_field() {
        let d = dataset();
        // fields in name order: bot, country, ms, ts
        let rows: Vec<Row> = (0..40)
            .map(|i| {
                vec![
                    [Value::Bool(i % 3 == 0), Value::Bool(false), Value::Null][i % 3].clone(),
                    [Value::String("US".into()), Value::String("DE".into()), Value::Null][i % 5 % 3].clone(),
                    if i % 7 == 0 { Value::Null } else { Value::Float(i as f64 * 1.5) },
                    Value::Timestamp(i as i64 * 3_600_000_000),
                ]
            })
            .collect();
        let refs: Vec<&Row> = rows.iter().collect();
        let batch = rows_to_batch(&d, &refs, None).unwrap();
        for sql in ["bot = false", "country IN ('US') AND ms > 10", "ms IS NULL OR ts >= '1970-01-02T00:00:00Z'"] {
            let f = ViewFilter::compile(&d, sql).unwrap();
            let expected = f.evaluate(&batch).unwrap();
            assert!(expected.contains(&true) && expected.contains(&false), "{sql}: a filter that tells rows apart");
            assert_eq!(f.mask(&refs).unwrap(), expected, "{sql}");
        }
    }
}
