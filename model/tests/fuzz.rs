//! Property-based fuzzing of the two parsers that take user input: the ingest decoder and
//! the view definition. Any input must give a value or an error, never a panic; CI runs a
//! bounded number of cases (`PROPTEST_CASES` raises it).

use proptest::prelude::*;
use serde_json::Value as Json;
use tandem_model::event::{Format, Limits, decode};
use tandem_model::value::{TIMESTAMP_RANGE, parse_timestamp};
use tandem_model::{DatasetSpec, FieldType, Row, Value, ViewSpec};

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

/// An independent decoder for the differential test: the whole body into a
/// `serde_json::Value` tree first, then each object checked against the schema. Only whether
/// a body is accepted and the rows it gives are compared, not the wording of errors.
fn reference_decode(spec: &DatasetSpec, format: Format, body: &[u8]) -> Option<Vec<Row>> {
    let objects: Vec<Json> = match format {
        Format::Json => match serde_json::from_slice::<Json>(body).ok()? {
            Json::Array(items) => items,
            object @ Json::Object(_) => vec![object],
            _ => return None,
        },
        Format::Ndjson => std::str::from_utf8(body)
            .ok()?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str::<Json>(l).ok())
            .collect::<Option<_>>()?,
    };
    if objects.len() > Limits::default().max_events {
        return None;
    }
    objects
        .into_iter()
        .map(|object| {
            let Json::Object(map) = object else { return None };
            if map.keys().any(|k| !spec.fields.contains_key(k)) {
                return None;
            }
            spec.fields
                .iter()
                .map(|(name, ty)| {
                    let is_time = *name == spec.time_field;
                    match (map.get(name).unwrap_or(&Json::Null), ty) {
                        (Json::Null, _) if is_time => None,
                        (Json::Null, _) => Some(Value::Null),
                        (Json::String(s), FieldType::String) => Some(Value::String(s.as_str().into())),
                        (Json::Number(n), FieldType::Int64) => n.as_i64().map(Value::Int),
                        (Json::Number(n), FieldType::Float64) => n.as_f64().map(Value::Float),
                        (Json::Bool(b), FieldType::Bool) => Some(Value::Bool(*b)),
                        (Json::String(s), FieldType::Timestamp) => {
                            parse_timestamp(s).filter(|t| TIMESTAMP_RANGE.contains(t)).map(Value::Timestamp)
                        }
                        (Json::Number(n), FieldType::Timestamp) => n
                            .as_i64()
                            .and_then(|ms| ms.checked_mul(1000))
                            .filter(|t| TIMESTAMP_RANGE.contains(t))
                            .map(Value::Timestamp),
                        _ => None,
                    }
                })
                .collect()
        })
        .collect()
}

/// One field's value as JSON text: often of the field's type, sometimes not.
fn field_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("[1,{\"a\":[]}]".to_string()),
        Just("{\"x\":null}".to_string()),
        Just("\"2026-11-01T10:00:00.5+01:00\"".to_string()),
        Just("\"\\u00e9t\\u00e9\"".to_string()),
        Just("-0".to_string()),
        Just("18446744073709551615".to_string()),
        Just("1.0".to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        (-10_000_000_000_000i64..10_000_000_000_000).prop_map(|i| i.to_string()),
        any::<u64>().prop_map(|u| u.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
    ]
}

/// A key and a value that fits it, or (one time in six) any key with any value.
fn pair() -> impl Strategy<Value = (String, String)> {
    let fits = prop_oneof![
        (-1_000_000_000_000i64..4_000_000_000_000).prop_map(|ms| ("ts", ms.to_string())),
        Just(("ts", "\"2026-11-01T10:00:00Z\"".to_string())),
        "\\PC{0,6}".prop_map(|s| ("id", serde_json::to_string(&s).unwrap())),
        "\\PC{0,6}".prop_map(|s| ("c", serde_json::to_string(&s).unwrap())),
        any::<i64>().prop_map(|i| ("n", i.to_string())),
        (-1000i64..1000).prop_map(|i| ("f", i.to_string())),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| ("f", f.to_string())),
        any::<bool>().prop_map(|b| ("b", b.to_string())),
        Just(("n", "null".to_string())),
    ];
    let key = prop_oneof![Just("ts"), Just("id"), Just("n"), Just("f"), Just("b"), Just("c"), Just("other")];
    prop_oneof![5 => fits.prop_map(|(k, v)| (k.to_string(), v)), 1 => (key, field_value()).prop_map(|(k, v)| (k.to_string(), v))]
}

/// A body of events with known, unknown and repeated keys, mostly valid.
fn events_body() -> impl Strategy<Value = (String, String)> {
    let ts = (0i64..4_000_000_000_000).prop_map(|ms| ("ts".to_string(), ms.to_string()));
    let event = (prop::option::weighted(0.9, ts), prop::collection::vec(pair(), 0..6)).prop_map(|(ts, pairs)| {
        let fields: Vec<String> = ts.into_iter().chain(pairs).map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", fields.join(","))
    });
    prop::collection::vec(event, 1..4).prop_map(|events| (format!("[{}]", events.join(",")), events.join("\n")))
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

    /// The decoder accepts exactly what the tree-based reference accepts, with the same rows.
    #[test]
    fn the_decoder_agrees_with_a_reference((array, lines) in events_body()) {
        let spec = dataset();
        for (format, body) in [(Format::Json, &array), (Format::Ndjson, &lines)] {
            let ours = decode(&spec, format, body.as_bytes(), &Limits::default()).ok();
            let reference = reference_decode(&spec, format, body.as_bytes());
            prop_assert_eq!(&ours, &reference, "{:?} body {}", format, body);
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 20, ..ProptestConfig::default() })]

    /// The generator is good for something: most bodies are valid, so the rows are compared.
    #[test]
    fn most_generated_bodies_decode(bodies in prop::collection::vec(events_body(), 50)) {
        let spec = dataset();
        let valid = bodies.iter().filter(|(a, _)| reference_decode(&spec, Format::Json, a.as_bytes()).is_some()).count();
        prop_assert!(valid >= 10, "only {} of 50 generated bodies are valid", valid);
    }
}
