//! Decoding and validating incoming events against a dataset's schema.
//!
//! A request is all-or-nothing: [`decode`] either returns every event as a typed row or
//! the list of what was wrong (the first [`MAX_ERRORS`]), and the caller stores nothing.

use serde::Serialize;
use serde_json::Value as Json;

use crate::schema::{DatasetSpec, FieldType};
use crate::value::{Row, TIMESTAMP_RANGE, Value, parse_timestamp};

/// How many problems a rejected request reports.
pub const MAX_ERRORS: usize = 100;

/// Bounds on one request, so that no request can take unbounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_events: usize,
    pub max_string_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_events: 100_000, max_string_bytes: 64 << 10 }
    }
}

/// The body's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One object or an array of objects.
    Json,
    /// One object a line; blank lines are skipped.
    Ndjson,
}

/// One problem with one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventError {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl EventError {
    fn new(index: usize, field: Option<&str>, message: impl Into<String>) -> Self {
        EventError { index, field: field.map(str::to_string), message: message.into() }
    }
}

/// Decodes a request body into rows, or every problem found (up to [`MAX_ERRORS`]).
/// JSON nested deeper than 128 levels is malformed (serde_json's recursion limit), so no
/// body can exhaust the stack.
pub fn decode(spec: &DatasetSpec, format: Format, body: &[u8], limits: &Limits) -> Result<Vec<Row>, Vec<EventError>> {
    let objects = split(format, body)?;
    if objects.len() > limits.max_events {
        let message = format!("request holds {} events; the limit is {}", objects.len(), limits.max_events);
        return Err(vec![EventError::new(0, None, message)]);
    }
    let mut rows = Vec::with_capacity(objects.len());
    let mut errors = Vec::new();
    for (index, object) in objects.into_iter().enumerate() {
        match validate(spec, index, object, limits) {
            Ok(row) => rows.push(row),
            Err(mut errs) => {
                let room = MAX_ERRORS - errors.len();
                errs.truncate(room);
                errors.extend(errs);
                if errors.len() >= MAX_ERRORS {
                    break;
                }
            }
        }
    }
    if errors.is_empty() { Ok(rows) } else { Err(errors) }
}

fn split(format: Format, body: &[u8]) -> Result<Vec<Json>, Vec<EventError>> {
    match format {
        Format::Json => match serde_json::from_slice::<Json>(body) {
            Ok(Json::Array(items)) => Ok(items),
            Ok(object @ Json::Object(_)) => Ok(vec![object]),
            Ok(_) => Err(vec![EventError::new(0, None, "body must be a JSON object or an array of objects")]),
            Err(e) => Err(vec![EventError::new(0, None, format!("malformed JSON: {e}"))]),
        },
        Format::Ndjson => {
            let text = std::str::from_utf8(body).map_err(|_| vec![EventError::new(0, None, "body is not UTF-8")])?;
            let mut items = Vec::new();
            let mut errors = Vec::new();
            for (line_no, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Json>(line) {
                    Ok(v) => items.push(v),
                    Err(e) => {
                        errors.push(EventError::new(
                            items.len() + errors.len(),
                            None,
                            format!("line {}: malformed JSON: {e}", line_no + 1),
                        ));
                        if errors.len() >= MAX_ERRORS {
                            break;
                        }
                    }
                }
            }
            if errors.is_empty() { Ok(items) } else { Err(errors) }
        }
    }
}

fn validate(spec: &DatasetSpec, index: usize, object: Json, limits: &Limits) -> Result<Row, Vec<EventError>> {
    let Json::Object(mut map) = object else {
        return Err(vec![EventError::new(index, None, "event must be a JSON object")]);
    };
    let mut errors = Vec::new();
    let mut row = Vec::with_capacity(spec.fields.len());
    for (name, ty) in &spec.fields {
        let value = map.remove(name).unwrap_or(Json::Null);
        let is_time = *name == spec.time_field;
        match convert(*ty, value, is_time, limits) {
            Ok(v) => row.push(v),
            Err(message) => {
                errors.push(EventError::new(index, Some(name), message));
                row.push(Value::Null);
            }
        }
    }
    for unknown in map.keys() {
        errors.push(EventError::new(index, Some(unknown), "unknown field"));
    }
    if errors.is_empty() { Ok(row) } else { Err(errors) }
}

fn convert(ty: FieldType, value: Json, required: bool, limits: &Limits) -> Result<Value, String> {
    if value.is_null() {
        return if required { Err("missing time value".into()) } else { Ok(Value::Null) };
    }
    match (ty, value) {
        (FieldType::String, Json::String(s)) if s.len() > limits.max_string_bytes => {
            Err(format!("string of {} bytes; the limit is {}", s.len(), limits.max_string_bytes))
        }
        (FieldType::String, Json::String(s)) => Ok(Value::String(s)),
        (FieldType::Int64, Json::Number(n)) => match n.as_i64() {
            Some(i) => Ok(Value::Int(i)),
            None if n.is_u64() => Err("integer out of int64 range".into()),
            None => Err("expected an integer, got a float".into()),
        },
        (FieldType::Float64, Json::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => Err("number out of float64 range".into()),
        },
        (FieldType::Bool, Json::Bool(b)) => Ok(Value::Bool(b)),
        (FieldType::Timestamp, Json::String(s)) => match parse_timestamp(&s) {
            Some(t) if TIMESTAMP_RANGE.contains(&t) => Ok(Value::Timestamp(t)),
            Some(_) => Err(format!("timestamp {s:?} is outside the accepted years 1678 to 2261")),
            None => Err(format!("bad timestamp {s:?}: expected RFC 3339 or epoch milliseconds")),
        },
        (FieldType::Timestamp, Json::Number(n)) => n
            .as_i64()
            .and_then(|ms| ms.checked_mul(1000))
            .filter(|t| TIMESTAMP_RANGE.contains(t))
            .map(Value::Timestamp)
            .ok_or_else(|| "bad timestamp: epoch milliseconds must be an integer within the years 1678 to 2261".into()),
        (ty, other) => Err(format!("expected {}, got {}", type_name(ty), json_kind(&other))),
    }
}

fn type_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "a string",
        FieldType::Int64 => "an integer",
        FieldType::Float64 => "a number",
        FieldType::Bool => "true or false",
        FieldType::Timestamp => "an RFC 3339 string or epoch milliseconds",
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DatasetSpec {
        serde_json::from_str(
            r#"{"name":"pv","time_field":"ts","id_field":"id","fields":{"ts":"timestamp","id":"string","n":"int64","f":"float64","b":"bool"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn decodes_arrays_objects_and_ndjson() {
        let s = spec();
        let one = decode(&s, Format::Json, br#"{"ts":1000,"id":"a","n":3}"#, &Limits::default()).unwrap();
        assert_eq!(one.len(), 1);
        // fields in name order: b, f, id, n, ts
        assert_eq!(
            one[0],
            vec![Value::Null, Value::Null, Value::String("a".into()), Value::Int(3), Value::Timestamp(1_000_000)]
        );
        let many =
            decode(&s, Format::Json, br#"[{"ts":"2026-01-01T00:00:00Z"},{"ts":0,"f":1}]"#, &Limits::default()).unwrap();
        assert_eq!(many[1][1], Value::Float(1.0));
        let nd = decode(&s, Format::Ndjson, b"{\"ts\":1}\n\n{\"ts\":2,\"b\":true}\n", &Limits::default()).unwrap();
        assert_eq!(nd.len(), 2);
        assert_eq!(nd[1][0], Value::Bool(true));
    }

    #[test]
    fn reports_every_bad_field_with_its_index() {
        let s = spec();
        let errs = decode(&s, Format::Json, br#"[{"ts":1},{"ts":"nope","n":1.5,"x":1},{"n":1}]"#, &Limits::default())
            .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| (e.index, e.field.clone().unwrap())).collect();
        assert!(fields.contains(&(1, "ts".into())));
        assert!(fields.contains(&(1, "n".into())));
        assert!(fields.contains(&(1, "x".into())));
        assert!(fields.contains(&(2, "ts".into())));
        assert!(!fields.iter().any(|(i, _)| *i == 0));
    }

    #[test]
    fn refuses_wrong_types() {
        let s = spec();
        for bad in [
            r#"{"ts":1,"n":9223372036854775808}"#,
            r#"{"ts":1,"n":"1"}"#,
            r#"{"ts":1,"b":1}"#,
            r#"{"ts":1,"id":5}"#,
            r#"{"ts":1,"f":"1.0"}"#,
            r#"{"ts":1,"f":[1]}"#,
            r#"{"ts":1.5}"#,
            r#"{"ts":9223372036854775807}"#,
            r#"{"ts":null}"#,
            r#"[1]"#,
            r#""text""#,
            r#"{"ts":1"#,
        ] {
            assert!(decode(&s, Format::Json, bad.as_bytes(), &Limits::default()).is_err(), "{bad} accepted");
        }
    }

    /// A float arrives as exactly the number the client wrote (correctly rounded parsing).
    #[test]
    fn floats_are_parsed_exactly() {
        let s = spec();
        for text in ["516597.24625005835", "0.1", "1e-300", "2.2250738585072014e-308", "9007199254740993"] {
            let rows =
                decode(&s, Format::Json, format!(r#"{{"ts":1,"f":{text}}}"#).as_bytes(), &Limits::default()).unwrap();
            assert_eq!(rows[0][1], Value::Float(text.parse::<f64>().unwrap()), "{text}");
        }
    }

    #[test]
    fn bounds_requests() {
        let s = spec();
        let limits = Limits { max_events: 2, max_string_bytes: 4 };
        assert!(decode(&s, Format::Json, br#"[{"ts":1},{"ts":2}]"#, &limits).is_ok());
        assert!(decode(&s, Format::Json, br#"[{"ts":1},{"ts":2},{"ts":3}]"#, &limits).is_err());
        assert!(decode(&s, Format::Json, br#"{"ts":1,"id":"abcd"}"#, &limits).is_ok());
        assert!(decode(&s, Format::Json, br#"{"ts":1,"id":"abcde"}"#, &limits).is_err());
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode(&s, Format::Json, deep.as_bytes(), &Limits::default()).is_err());
        assert!(decode(&s, Format::Ndjson, deep.as_bytes(), &Limits::default()).is_err());
    }

    #[test]
    fn caps_the_error_list() {
        let s = spec();
        let body = format!("[{}]", vec![r#"{"ts":"x","n":"y"}"#; 200].join(","));
        assert_eq!(decode(&s, Format::Json, body.as_bytes(), &Limits::default()).unwrap_err().len(), MAX_ERRORS);
    }
}
