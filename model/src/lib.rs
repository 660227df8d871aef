//! The shared model of tandem: what the speed layer and the batch layer both need to agree on.
//!
//! An event enters as JSON, is checked against its dataset's [`schema`] by [`event`], is
//! written to the dataset's [`log`] as a typed [`Row`], and is then folded into
//! the [`agg`] states of every [`view`] of the dataset. The batch layer reads the same log
//! (through the master dataset, see [`columnar`]) and writes the same states as Parquet, so
//! that the serving layer can merge the two with [`agg::MeasureState::merge`].
//!
//! Nothing here knows about tokio, HTTP or SQL databases.

pub mod agg;
pub mod columnar;
pub mod event;
pub mod log;
pub mod schema;
pub mod sketch;
pub mod value;
pub mod view;
pub mod zone;

pub use schema::{DatasetSpec, FieldType};
pub use value::{Row, Value};
pub use view::{Granularity, Measure, MeasureKind, ViewSpec};

/// Names of datasets, fields, views and measures: `[a-z][a-z0-9_]{0,62}`.
///
/// Names are the only user text that ever reaches SQL or a file path, so this is the one
/// check that keeps both safe.
pub fn validate_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
    if ok { Ok(()) } else { Err(format!("invalid name {name:?}: names match [a-z][a-z0-9_]{{0,62}}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("pageviews").is_ok());
        assert!(validate_name("a1_b").is_ok());
        assert!(validate_name(&"a".repeat(63)).is_ok());
        for bad in ["", "1a", "_a", "A", "a-b", "../etc", "a b", "a;drop", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
