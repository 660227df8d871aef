//! The speed layer of tandem: durable ingest and in-memory incremental aggregates.
//!
//! An accepted request travels: [`writer::DatasetWriter::append`] hands the typed rows to the
//! dataset's writer thread, which drops duplicate ids, appends one log record, fsyncs once
//! for every request that arrived meanwhile (group commit), folds the rows into each view's
//! [`live::ViewLive`] and only then answers, so an acknowledged event is both durable and
//! visible to the next query.
//!
//! [`live::ViewLive`] is also where a published batch version is installed: the serving layer
//! merges the two under one lock, so a query never sees an event twice or not at all.

pub mod filter;
pub mod live;
pub mod shapes;
pub mod writer;

pub use filter::ViewFilter;
pub use live::{BatchSnapshot, LiveState, Moment, ViewLive};
pub use writer::{AppendOutcome, DatasetWriter, WriterConfig};
