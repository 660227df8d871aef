//! Property-based fuzzing of view filters: any text compiles or is refused, never panics,
//! and whatever compiles evaluates without error on any events (filters are total), here
//! the edge values of every type, with the same answer from a batch of every field as from
//! the writer's batch of the fields the filter reads.

use proptest::prelude::*;
use tandem_model::columnar::rows_to_batch;
use tandem_model::value::TIMESTAMP_RANGE;
use tandem_model::{DatasetSpec, Row, Value};
use tandem_speed::ViewFilter;

fn dataset() -> DatasetSpec {
    serde_json::from_str(
        r#"{"name":"pv","time_field":"ts","fields":{"ts":"timestamp","c":"string","n":"int64","b":"bool"}}"#,
    )
    .unwrap()
}

fn sqlish() -> impl Strategy<Value = String> {
    let atoms = prop_oneof![
        Just("c".to_string()),
        Just("n".to_string()),
        Just("b".to_string()),
        Just("ts".to_string()),
        Just("=".to_string()),
        Just("<>".to_string()),
        Just(">".to_string()),
        Just("AND".to_string()),
        Just("OR".to_string()),
        Just("NOT".to_string()),
        Just("IS NULL".to_string()),
        Just("IN ('a', 'b')".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just(";".to_string()),
        Just("SELECT".to_string()),
        Just("'x'".to_string()),
        Just("1".to_string()),
        Just("true".to_string()),
        Just("count(*)".to_string()),
        Just("/".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("%".to_string()),
        Just("+".to_string()),
        Just("*".to_string()),
        Just("abs(n)".to_string()),
        Just("CAST(c AS INT)".to_string()),
        Just("TRY_CAST(c AS INT)".to_string()),
        Just("CAST(n AS INT)".to_string()),
        Just("lpad(c, n)".to_string()),
        Just("substr(c, n)".to_string()),
        Just("~".to_string()),
        Just("INTERVAL '1000 years'".to_string()),
        Just("'2026-01-01T00:00:00Z'".to_string()),
        "\\PC{0,4}",
    ];
    prop::collection::vec(atoms, 0..10).prop_map(|parts| parts.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn filters_never_panic(sql in sqlish()) {
        let d = dataset();
        if let Ok(filter) = ViewFilter::compile(&d, &sql) {
            // fields in name order: b, c, n, ts
            let rows: Vec<Row> = vec![
                vec![Value::Bool(true), Value::String("a".into()), Value::Int(0), Value::Timestamp(0)],
                vec![Value::Null, Value::Null, Value::Null, Value::Timestamp(1)],
                vec![Value::Bool(false), Value::String("(".into()), Value::Int(i64::MIN), Value::Timestamp(TIMESTAMP_RANGE.start)],
                vec![Value::Bool(false), Value::String("".into()), Value::Int(i64::MAX), Value::Timestamp(TIMESTAMP_RANGE.end - 1)],
                vec![Value::Bool(false), Value::String("9".repeat(30).into()), Value::Int(-1), Value::Timestamp(-1)],
            ];
            let refs: Vec<&Row> = rows.iter().collect();
            let batch = rows_to_batch(&d, &refs, None).unwrap();
            let whole = match filter.evaluate(&batch) {
                Ok(mask) => mask,
                Err(e) => panic!("{sql:?} compiled but failed on an event: {e}"),
            };
            // the writer's mask fills only the fields the filter reads: it must not matter
            prop_assert_eq!(filter.mask(&refs).unwrap(), whole, "{:?}", sql);
        }
    }
}
