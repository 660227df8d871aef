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

/// A dataset as its creator described it, with the fields added since. A [`Row`] holds the
/// values in [column order](Self::columns): the fields the dataset was made with, sorted by
/// name, then each added field in the order it was added. So a field keeps its position for
/// good, and an event stored before a field was added is a shorter row whose missing values are
/// null (see [`DatasetSpec::add_fields`]).
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
    /// The fields of `fields` added after the dataset was made, oldest first
    /// (`PATCH /v1/datasets/{name}`); each holds null in every event stored before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(example = json!(["plan"]))]
    pub added_fields: Vec<String>,
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
        for (i, name) in self.added_fields.iter().enumerate() {
            if !self.fields.contains_key(name) {
                problems.push(format!("added field {name:?} is not a field"));
            } else if self.added_fields[..i].contains(name) {
                problems.push(format!("field {name:?} is added twice"));
            } else if *name == self.time_field || self.id_field.as_ref() == Some(name) {
                // every event has a time (and an id, when the dataset has one)
                problems.push(format!("field {name:?} is the time or id field, which cannot be added later"));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// The fields in column order, as a [`Row`](crate::Row) holds their values: the fields the
    /// dataset was made with, by name, then the added ones, oldest first.
    pub fn columns(&self) -> impl Iterator<Item = (&str, FieldType)> + '_ {
        let added = |name: &str| self.added_fields.iter().any(|a| a == name);
        let made_with = self.fields.iter().filter(move |(name, _)| !added(name));
        let added = self.added_fields.iter().filter_map(|name| self.fields.get_key_value(name));
        made_with.chain(added).map(|(name, ty)| (name.as_str(), *ty))
    }

    /// Position of a field in a [`Row`](crate::Row).
    pub fn index_of(&self, field: &str) -> Option<usize> {
        self.columns().position(|(f, _)| f == field)
    }

    /// This dataset with `fields` added after its own, by name among themselves: every field
    /// already there keeps its position, so rows stored before stay readable as they are
    /// (shorter, the new fields null). A field may not be added twice, nor may an added field
    /// be required: the time and id fields stay the ones the dataset was made with.
    pub fn add_fields(&self, fields: &BTreeMap<String, FieldType>) -> Result<DatasetSpec, Vec<String>> {
        let mut problems = Vec::new();
        if fields.is_empty() {
            problems.push("add_fields names no field".to_string());
        }
        for name in fields.keys() {
            if let Err(e) = validate_name(name) {
                problems.push(format!("field: {e}"));
            } else if self.fields.contains_key(name) {
                problems.push(format!("field {name:?} already exists"));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut spec = self.clone();
        for (name, ty) in fields {
            spec.fields.insert(name.clone(), *ty);
            spec.added_fields.push(name.clone());
        }
        spec.validate()?;
        Ok(spec)
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

    #[test]
    fn added_fields_follow_the_fields_a_dataset_was_made_with() {
        let s = spec(r#"{"name":"p","time_field":"ts","fields":{"ts":"timestamp","m":"int64"}}"#);
        let added = |names: &[(&str, FieldType)]| names.iter().map(|(n, t)| (n.to_string(), *t)).collect();
        let wider = s.add_fields(&added(&[("z", FieldType::Bool), ("a", FieldType::String)])).unwrap();
        let order: Vec<&str> = wider.columns().map(|(n, _)| n).collect();
        assert_eq!(order, ["m", "ts", "a", "z"]);
        assert_eq!((wider.index_of("m"), wider.time_index(), wider.index_of("a")), (Some(0), 1, Some(2)));
        // a later addition goes after those, whatever its name
        let wider = wider.add_fields(&added(&[("b", FieldType::Float64)])).unwrap();
        assert_eq!(wider.columns().map(|(n, _)| n).collect::<Vec<_>>(), ["m", "ts", "a", "z", "b"]);
        assert_eq!(wider.added_fields, ["a", "z", "b"]);
        // the order survives the catalog's JSON
        let back: DatasetSpec = serde_json::from_str(&serde_json::to_string(&wider).unwrap()).unwrap();
        assert_eq!(back.columns().collect::<Vec<_>>(), wider.columns().collect::<Vec<_>>());
        // an existing field, a bad name, nothing at all
        assert!(wider.add_fields(&added(&[("m", FieldType::Int64)])).is_err());
        assert!(wider.add_fields(&added(&[("Bad", FieldType::Int64)])).is_err());
        assert!(wider.add_fields(&BTreeMap::new()).is_err());
        // the time field cannot be one that was added
        let mut bad = wider.clone();
        bad.time_field = "ts2".into();
        bad.fields.insert("ts2".into(), FieldType::Timestamp);
        bad.added_fields.push("ts2".into());
        assert!(bad.validate().is_err());
        let mut twice = wider.clone();
        twice.added_fields.push("a".into());
        assert!(twice.validate().is_err());
    }
}
