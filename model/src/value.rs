//! Typed values and rows.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use chrono::{DateTime, SecondsFormat, Utc};
pub use compact_str::CompactString;

/// One typed value. Timestamps are UTC microseconds since the epoch. A string of up to 24
/// bytes is held inline ([`CompactString`]), so most dimension values and ids are no allocation
/// of their own and a group key's strings lie in the key's own memory.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    String(CompactString),
    Int(i64),
    Float(f64),
    Bool(bool),
    Timestamp(i64),
}

/// The values of one event, in its dataset's column order (see `DatasetSpec::columns`). A row
/// may be shorter than its dataset's columns: it was stored before the dataset gained the
/// fields it lacks, which hold null there. Read a field that may have been added with [`field`].
pub type Row = Vec<Value>;

/// The value of the field at `index` of `row`: null past the row's end (a field added to the
/// dataset after the event was stored). The time and id fields are never added, so a row
/// always holds those.
#[inline]
pub fn field(row: &[Value], index: usize) -> &Value {
    row.get(index).unwrap_or(&Value::Null)
}

/// A value borrowed from where it lies (a string is not copied out of a log segment).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    String(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    Timestamp(i64),
}

impl ValueRef<'_> {
    pub fn into_value(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::String(s) => Value::String(s.into()),
            ValueRef::Int(i) => Value::Int(i),
            ValueRef::Float(f) => Value::Float(f),
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::Timestamp(t) => Value::Timestamp(t),
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Value::Null => {}
            Value::String(s) => s.hash(state),
            Value::Int(i) | Value::Timestamp(i) => i.hash(state),
            Value::Float(f) => f.to_bits().hash(state),
            Value::Bool(b) => b.hash(state),
        }
    }
}

impl Value {
    #[inline]
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::String(s) => ValueRef::String(s),
            Value::Int(i) => ValueRef::Int(*i),
            Value::Float(f) => ValueRef::Float(*f),
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::Timestamp(t) => ValueRef::Timestamp(*t),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::Float(_) => 3,
            Value::Timestamp(_) => 4,
            Value::String(_) => 5,
        }
    }

    /// A total order for sorting answers: nulls first, then by value.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::String(a), Value::String(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) | (Value::Timestamp(a), Value::Timestamp(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::Int(a), Value::Float(b)) => (*a as f64).total_cmp(b),
            (Value::Float(a), Value::Int(b)) => a.total_cmp(&(*b as f64)),
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }

    /// The value as it appears in a JSON answer: what its [`Serialize`](serde::Serialize)
    /// writes (non-finite floats as `null`, timestamps as RFC 3339 text).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a value always serializes")
    }
}

/// A value in a JSON answer, written straight to the output.
impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::String(v) => s.serialize_str(v),
            Value::Int(v) => s.serialize_i64(*v),
            Value::Float(v) if v.is_finite() => s.serialize_f64(*v),
            Value::Float(_) => s.serialize_unit(),
            Value::Bool(v) => s.serialize_bool(*v),
            Value::Timestamp(t) => s.serialize_str(&format_timestamp(*t)),
        }
    }
}

/// RFC 3339 in UTC with a `Z`, seconds unless the value has a fraction.
pub fn format_timestamp(micros: i64) -> String {
    match DateTime::<Utc>::from_timestamp_micros(micros) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => micros.to_string(),
    }
}

/// Accepted event times: 1678-01-01 (inclusive) to 2262-01-01 (exclusive), UTC micros. Within
/// this range every time also fits in nanoseconds, so no cast, truncation or comparison in
/// either layer (DataFusion compares timestamp literals in nanoseconds) can overflow on an
/// event that was acknowledged.
pub const TIMESTAMP_RANGE: std::ops::Range<i64> = -9_214_560_000_000_000..9_214_646_400_000_000;

/// Parses an RFC 3339 string into UTC microseconds.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let t = parse_timestamp("2026-11-01T10:30:00+02:00").unwrap();
        assert_eq!(format_timestamp(t), "2026-11-01T08:30:00Z");
        let t = parse_timestamp("2026-11-01T08:30:00.250Z").unwrap();
        assert_eq!(format_timestamp(t), "2026-11-01T08:30:00.250Z");
        assert!(parse_timestamp("yesterday").is_none());
    }

    #[test]
    fn serializes_as_json() {
        let cases = [
            (Value::Null, "null"),
            (Value::String("a \"quoted\" \u{e9}".into()), r#""a \"quoted\" é""#),
            (Value::Int(i64::MIN), "-9223372036854775808"),
            (Value::Float(-0.0), "-0.0"),
            (Value::Float(0.1), "0.1"),
            (Value::Float(1e300), "1e+300"),
            (Value::Float(f64::NAN), "null"),
            (Value::Float(f64::NEG_INFINITY), "null"),
            (Value::Bool(true), "true"),
            (Value::Timestamp(1_793_491_200_250_000), r#""2026-11-01T00:00:00.250Z""#),
        ];
        for (v, text) in cases {
            assert_eq!(serde_json::to_string(&v).unwrap(), text, "{v:?}");
            assert_eq!(v.to_json(), serde_json::from_str::<serde_json::Value>(text).unwrap(), "{v:?}");
        }
    }

    #[test]
    fn nulls_sort_first() {
        let mut v = [Value::String("b".into()), Value::Null, Value::String("a".into())];
        v.sort_by(|a, b| a.total_cmp(b));
        assert_eq!(v[0], Value::Null);
        assert_eq!(v[1], Value::String("a".into()));
    }
}
