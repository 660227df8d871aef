//! Dataset schemas: the typed fields every event of a dataset must fit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate_name;

/// The type of one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(description = "A field's type. A timestamp is RFC 3339 text or epoch milliseconds in an event.")]
pub enum FieldType {
    String,
    Int64,
    Float64,
    Bool,
    Timestamp,
}

impl FieldType {
    pub fn is_numeric(self) -> bool {
        matches!(self, FieldType::Int64 | FieldType::Float64)
    }
}

/// A dataset as its creator described it. Fields are kept sorted by name; a [`Row`] holds
/// the values in that order.
///
/// [`Row`]: crate::Row
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(description = "A dataset's definition: its typed fields, which of them is the event time, and \
    optionally which is the event id that deduplicates retries.")]
pub struct DatasetSpec {
    #[schema(example = "pageviews")]
    pub name: String,
    /// The timestamp field events are bucketed and partitioned by.
    #[schema(example = "ts")]
    pub time_field: String,
    /// A string or int64 field: an event whose id was accepted within the dedup window is a
    /// duplicate and is not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "event_id")]
    pub id_field: Option<String>,
    /// Field name to type. An event may leave any field but the time field out (null).
    pub fields: BTreeMap<String, FieldType>,
}

impl DatasetSpec {
    /// Checks names and the roles of the time and id fields.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Err(e) = validate_name(&self.name) {
            problems.push(e);
        }
        if self.fields.is_empty() {
            problems.push("a dataset needs at least one field".to_string());
        }
        for name in self.fields.keys() {
            if let Err(e) = validate_name(name) {
                problems.push(format!("field: {e}"));
            }
        }
        match self.fields.get(&self.time_field) {
            Some(FieldType::Timestamp) => {}
            Some(other) => {
                problems.push(format!("time_field {:?} must be a timestamp field, not {other:?}", self.time_field))
            }
            None => problems.push(format!("time_field {:?} is not a field", self.time_field)),
        }
        if let Some(id) = &self.id_field {
            match self.fields.get(id) {
                Some(FieldType::String) | Some(FieldType::Int64) => {}
                Some(other) => problems.push(format!("id_field {id:?} must be a string or int64 field, not {other:?}")),
                None => problems.push(format!("id_field {id:?} is not a field")),
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// Position of a field in a [`Row`](crate::Row).
    pub fn index_of(&self, field: &str) -> Option<usize> {
        self.fields.keys().position(|f| f == field)
    }

    pub fn field_type(&self, field: &str) -> Option<FieldType> {
        self.fields.get(field).copied()
    }

    pub fn time_index(&self) -> usize {
        self.index_of(&self.time_field).expect("validated dataset has its time field")
    }

    pub fn id_index(&self) -> Option<usize> {
        self.id_field.as_deref().and_then(|f| self.index_of(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> DatasetSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn time_field_must_be_a_timestamp() {
        let ok = spec(r#"{"name":"p","time_field":"ts","fields":{"ts":"timestamp","c":"string"}}"#);
        assert!(ok.validate().is_ok());
        let bad = spec(r#"{"name":"p","time_field":"c","fields":{"ts":"timestamp","c":"string"}}"#);
        assert!(bad.validate().is_err());
        let missing = spec(r#"{"name":"p","time_field":"x","fields":{"ts":"timestamp"}}"#);
        assert!(missing.validate().is_err());
    }

    #[test]
    fn unknown_types_and_keys_are_refused() {
        assert!(
            serde_json::from_str::<DatasetSpec>(r#"{"name":"p","time_field":"ts","fields":{"ts":"date"}}"#).is_err()
        );
        assert!(
            serde_json::from_str::<DatasetSpec>(r#"{"name":"p","time_field":"ts","fields":{"ts":"timestamp"},"x":1}"#)
                .is_err()
        );
    }

    #[test]
    fn fields_are_ordered_by_name() {
        let s = spec(r#"{"name":"p","time_field":"ts","fields":{"ts":"timestamp","b":"bool","a":"int64"}}"#);
        assert_eq!(s.index_of("a"), Some(0));
        assert_eq!(s.index_of("b"), Some(1));
        assert_eq!(s.time_index(), 2);
    }
}
