//! Property-based fuzzing of the two parsers that take user input: the ingest decoder and
//! the view definition. Any input must give a value or an error, never a panic; CI runs a
//! bounded number of cases (`PROPTEST_CASES` raises it).

use proptest::prelude::*;
use tandem_model::event::{Format, Limits, decode};
use tandem_model::{DatasetSpec, ViewSpec};

fn dataset() -> DatasetSpec {
    serde_json::from_str(
        r#"{"name":"pv","time_field":"ts","id_field":"id","fields":{"ts":"timestamp","id":"string","n":"int64","f":"float64","b":"bool","c":"string"}}"#,
    )
    .unwrap()
}

/// JSON-ish text: fragments that make decoders take unusual paths.
fn jsonish() -> impl Strategy<Value = String> {
    let atoms = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\n".to_string()),
        Just("\"ts\"".to_string()),
        Just("\"n\"".to_string()),
        Just("\"f\"".to_string()),
        Just("\"b\"".to_string()),
        Just("\"id\"".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("1e999".to_string()),
        Just("-0".to_string()),
        Just("9223372036854775808".to_string()),
        Just("\"2026-11-01T00:00:00Z\"".to_string()),
        Just("\"\\ud800\"".to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "\\PC{0,8}".prop_map(|s| format!("{s:?}")),
    ];
    prop::collection::vec(atoms, 0..40).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_decoder_never_panics(text in jsonish(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let spec = dataset();
        for body in [text.as_bytes(), &bytes[..]] {
            for format in [Format::Json, Format::Ndjson] {
                if let Ok(rows) = decode(&spec, format, body, &Limits::default()) {
                    prop_assert!(rows.iter().all(|r| r.len() == spec.fields.len()));
                }
            }
        }
    }

    #[test]
    fn view_definitions_never_panic(
        measure in "\\PC{0,30}",
        dims in prop::collection::vec(prop_oneof![Just("c".to_string()), Just("n".to_string()), Just("f".to_string()), "\\PC{0,6}"], 0..3),
        granularity in prop_oneof![Just("minute"), Just("hour"), Just("day"), Just("all")],
    ) {
        let json = serde_json::json!({"name": "v", "dataset": "pv", "granularity": granularity, "dimensions": dims, "measures": {"m": measure}});
        if let Ok(spec) = serde_json::from_value::<ViewSpec>(json) {
            let _ = spec.compile(&dataset());
        }
    }
}
