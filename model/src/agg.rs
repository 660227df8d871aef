//! Aggregate states: what a view keeps per group, in memory (speed layer) and in Parquet
//! (batch layer), and the one merge that combines them.
//!
//! A state is a partial aggregate that can absorb an event ([`MeasureState::update`]) or
//! another state ([`MeasureState::merge`]). Merging is exact: merging the states of two
//! disjoint sets of events gives the state of their union (float sums up to rounding), which
//! is what lets the serving layer answer from batch + speed as if from one pass.

use std::collections::HashMap;

use crate::FieldType;
use crate::sketch::{Distinct, Quantiles};
use crate::value::{Row, Value};
use crate::view::{CompiledView, Measure, MeasureKind};

/// The state of one measure in one group.
#[derive(Debug, Clone, PartialEq)]
pub enum MeasureState {
    /// `count` and `count(f)`.
    Count(i64),
    /// `sum` of an int64 field; wraps on overflow as DataFusion's `sum` does. `None` until a
    /// non-null value arrives.
    SumInt(Option<i64>),
    /// `sum` of a float64 field.
    SumFloat(Option<f64>),
    Min(Option<Value>),
    Max(Option<Value>),
    /// `avg`: the sum and count of non-null values.
    Avg {
        sum: f64,
        count: i64,
    },
    /// `approx_distinct`.
    Distinct(Box<Distinct>),
    /// `approx_percentile` at `p`.
    Percentile {
        sketch: Box<Quantiles>,
        p: f64,
    },
}

impl MeasureState {
    /// The state of no events.
    pub fn empty(measure: &Measure) -> MeasureState {
        match measure.kind {
            MeasureKind::Count | MeasureKind::CountField => MeasureState::Count(0),
            MeasureKind::Sum => match measure.field.as_ref().map(|f| f.1) {
                Some(FieldType::Int64) => MeasureState::SumInt(None),
                _ => MeasureState::SumFloat(None),
            },
            MeasureKind::Min => MeasureState::Min(None),
            MeasureKind::Max => MeasureState::Max(None),
            MeasureKind::Avg => MeasureState::Avg { sum: 0.0, count: 0 },
            MeasureKind::ApproxDistinct => MeasureState::Distinct(Box::default()),
            MeasureKind::ApproxPercentile => {
                MeasureState::Percentile { sketch: Box::default(), p: measure.percentile.unwrap_or(0.5) }
            }
        }
    }

    /// Folds one event in. `value` is the measure's field (ignored by `count`); `counts_all`
    /// is true for `count`, which counts events rather than values.
    pub fn update(&mut self, value: &Value, counts_all: bool) {
        if counts_all {
            if let MeasureState::Count(n) = self {
                *n += 1;
            }
            return;
        }
        if matches!(value, Value::Null) {
            return;
        }
        match self {
            MeasureState::Count(n) => *n += 1,
            MeasureState::SumInt(s) => {
                if let Value::Int(v) = value {
                    *s = Some(s.unwrap_or(0).wrapping_add(*v));
                }
            }
            MeasureState::SumFloat(s) => {
                if let Some(v) = as_f64(value) {
                    *s = Some(s.unwrap_or(0.0) + v);
                }
            }
            MeasureState::Min(m) => {
                if m.as_ref().is_none_or(|cur| value.total_cmp(cur).is_lt()) {
                    *m = Some(value.clone());
                }
            }
            MeasureState::Max(m) => {
                if m.as_ref().is_none_or(|cur| value.total_cmp(cur).is_gt()) {
                    *m = Some(value.clone());
                }
            }
            MeasureState::Avg { sum, count } => {
                if let Some(v) = as_f64(value) {
                    *sum += v;
                    *count += 1;
                }
            }
            MeasureState::Distinct(d) => d.insert(value),
            MeasureState::Percentile { sketch, .. } => sketch.insert(value),
        }
    }

    /// Starts loading the memory of a sketch state (see [`fold_rows`]); nothing for the
    /// others, whose state is in the slice of states itself.
    pub fn prefetch(&self) {
        match self {
            MeasureState::Distinct(d) => prefetch(&**d as *const Distinct as *const u8, size_of::<Distinct>()),
            MeasureState::Percentile { sketch, .. } => {
                prefetch(&**sketch as *const Quantiles as *const u8, size_of::<Quantiles>())
            }
            _ => {}
        }
    }

    /// Absorbs the state of a disjoint set of events.
    pub fn merge(&mut self, other: &MeasureState) {
        match (self, other) {
            (MeasureState::Count(a), MeasureState::Count(b)) => *a += b,
            (MeasureState::SumInt(a), MeasureState::SumInt(b)) => {
                if let Some(b) = b {
                    *a = Some(a.unwrap_or(0).wrapping_add(*b));
                }
            }
            (MeasureState::SumFloat(a), MeasureState::SumFloat(b)) => {
                if let Some(b) = b {
                    *a = Some(a.unwrap_or(0.0) + b);
                }
            }
            (MeasureState::Min(a), MeasureState::Min(Some(b))) => {
                if a.as_ref().is_none_or(|cur| b.total_cmp(cur).is_lt()) {
                    *a = Some(b.clone());
                }
            }
            (MeasureState::Max(a), MeasureState::Max(Some(b))) => {
                if a.as_ref().is_none_or(|cur| b.total_cmp(cur).is_gt()) {
                    *a = Some(b.clone());
                }
            }
            (MeasureState::Avg { sum, count }, MeasureState::Avg { sum: s, count: c }) => {
                *sum += s;
                *count += c;
            }
            (MeasureState::Distinct(a), MeasureState::Distinct(b)) => a.merge(b),
            (MeasureState::Percentile { sketch: a, .. }, MeasureState::Percentile { sketch: b, .. }) => a.merge(b),
            (MeasureState::Min(_), MeasureState::Min(None)) | (MeasureState::Max(_), MeasureState::Max(None)) => {}
            (a, b) => debug_assert!(false, "merging unlike states {a:?} and {b:?}"),
        }
    }

    /// The answer: count → integer, sums keep their type, min/max the field's, avg → float,
    /// approx_distinct → integer, approx_percentile → float; null when no value contributed.
    pub fn value(&self) -> Value {
        match self {
            MeasureState::Count(n) => Value::Int(*n),
            MeasureState::SumInt(s) => s.map(Value::Int).unwrap_or(Value::Null),
            MeasureState::SumFloat(s) => s.map(Value::Float).unwrap_or(Value::Null),
            MeasureState::Min(v) | MeasureState::Max(v) => v.clone().unwrap_or(Value::Null),
            MeasureState::Avg { sum, count } => {
                if *count == 0 {
                    Value::Null
                } else {
                    Value::Float(sum / *count as f64)
                }
            }
            MeasureState::Distinct(d) => Value::Int(d.estimate()),
            MeasureState::Percentile { sketch, p } => sketch.quantile(*p).map(Value::Float).unwrap_or(Value::Null),
        }
    }

    /// The stored form of a sketch state (`approx_distinct`, `approx_percentile`), as a batch
    /// version's binary column holds it; `None` for other states.
    pub fn sketch_bytes(&self) -> Option<Vec<u8>> {
        match self {
            MeasureState::Distinct(d) => Some(d.to_bytes()),
            MeasureState::Percentile { sketch, .. } => Some(sketch.to_bytes()),
            _ => None,
        }
    }

    /// Merges a stored sketch state (see [`sketch_bytes`](Self::sketch_bytes)) into this one.
    pub fn merge_sketch_bytes(&mut self, bytes: &[u8]) -> Result<(), String> {
        match self {
            MeasureState::Distinct(d) => d.merge(&Distinct::from_bytes(bytes)?),
            MeasureState::Percentile { sketch, .. } => sketch.merge(&Quantiles::from_bytes(bytes)?),
            other => return Err(format!("{other:?} is not a sketch state")),
        }
        Ok(())
    }

    /// About how many bytes the state holds on the heap, cheaply (without serializing it):
    /// what DataFusion asks of an aggregate after every batch to account its memory.
    pub fn heap_size(&self) -> usize {
        match self {
            MeasureState::Min(Some(Value::String(s))) | MeasureState::Max(Some(Value::String(s)))
                if s.is_heap_allocated() =>
            {
                s.capacity()
            }
            MeasureState::Distinct(d) => size_of::<Distinct>() + d.heap_size(),
            MeasureState::Percentile { sketch, .. } => size_of::<Quantiles>() + sketch.heap_size(),
            _ => 0,
        }
    }

    /// [`value`](Self::value) as it appears in a JSON answer.
    pub fn finish(&self) -> serde_json::Value {
        self.value().to_json()
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// A group: bucket start (UTC micros) and the dimension values in the view's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKey {
    pub bucket: i64,
    pub dims: Dims,
}

/// A group key's dimension values: up to two lie in the key itself, and with them their
/// strings of up to 24 bytes ([`Value`]), so that finding a group in a map compares the key in
/// the map's own memory instead of following a vector and then each string (the compare was
/// 15 % of the writer's samples, and 1 % after: `bench/HISTORY.md`, session 34).
pub type Dims = smallvec::SmallVec<[Value; 2]>;

impl GroupKey {
    /// The order of rows in an answer: by bucket, then by dimension values
    /// ([`Value::total_cmp`]). Total over the keys of one view or query shape.
    pub fn total_cmp(&self, other: &GroupKey) -> std::cmp::Ordering {
        self.bucket.cmp(&other.bucket).then_with(|| {
            let mut dims = self.dims.iter().zip(&other.dims).map(|(a, b)| a.total_cmp(b));
            dims.find(|o| o.is_ne()).unwrap_or(std::cmp::Ordering::Equal)
        })
    }
}

/// A group key's parts wherever they lie, so that a group can be looked up in [`Groups`]
/// from a row (or another key) in place: building a key (a vector and a copy of every
/// dimension string) for each event only to find its group was a large part of folding.
pub trait KeyParts {
    fn bucket(&self) -> i64;
    fn dim_count(&self) -> usize;
    fn dim(&self, i: usize) -> &Value;

    /// The key, built.
    fn to_key(&self) -> GroupKey {
        GroupKey { bucket: self.bucket(), dims: (0..self.dim_count()).map(|i| self.dim(i).clone()).collect() }
    }
}

impl KeyParts for GroupKey {
    fn bucket(&self) -> i64 {
        self.bucket
    }

    fn dim_count(&self) -> usize {
        self.dims.len()
    }

    fn dim(&self, i: usize) -> &Value {
        &self.dims[i]
    }
}

/// The key of a group read from a row: a bucket, and the row's values at `dims`.
pub struct RowKey<'a> {
    pub bucket: i64,
    pub row: &'a [Value],
    pub dims: &'a [usize],
}

impl KeyParts for RowKey<'_> {
    fn bucket(&self) -> i64 {
        self.bucket
    }

    fn dim_count(&self) -> usize {
        self.dims.len()
    }

    fn dim(&self, i: usize) -> &Value {
        crate::value::field(self.row, self.dims[i])
    }
}

impl std::hash::Hash for dyn KeyParts + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_i64(self.bucket());
        state.write_usize(self.dim_count());
        (0..self.dim_count()).for_each(|i| self.dim(i).hash(state));
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.bucket() == other.bucket()
            && self.dim_count() == other.dim_count()
            && (0..self.dim_count()).all(|i| self.dim(i) == other.dim(i))
    }
}

impl Eq for dyn KeyParts + '_ {}

/// Hashes as its parts do, so maps keyed by it can be searched with any [`KeyParts`].
impl std::hash::Hash for GroupKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self as &dyn KeyParts).hash(state)
    }
}

impl<'a> std::borrow::Borrow<dyn KeyParts + 'a> for GroupKey {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

/// Runs `f` on the states of `key`'s group in `groups`, made from `empty` first if the group
/// is new. One lookup, and a key is built only for a new group.
pub fn update_group(
    groups: &mut Groups,
    key: &dyn KeyParts,
    empty: impl FnOnce() -> Vec<MeasureState>,
    f: impl FnOnce(&mut Vec<MeasureState>),
) {
    match groups.get_mut(key) {
        Some(states) => f(states),
        None => {
            let mut states = empty();
            f(&mut states);
            groups.insert(key.to_key(), states);
        }
    }
}

/// Aggregated groups of a view, each with one state per measure (in the view's measure order).
/// Hashed with foldhash (seeded per process): SipHash was a tenth of the ingest profile.
pub type Groups = HashMap<GroupKey, Vec<MeasureState>, foldhash::fast::RandomState>;

/// How many of a map's groups [`groups_bytes`] sizes one by one at most; a larger map is
/// sized from that many of its groups, spread evenly over its table, and its other groups
/// counted at their average. A scrape of `/metrics` sizes every speed map of every view under
/// the view's read lock, which the writer waits for: sizing each of 24 k groups, five
/// measures and two sketches each, held it 6–10 ms (session 53); this many take a twentieth.
pub const SIZED_GROUPS: usize = 1024;

/// About how many bytes `groups` holds: its table, the dimension values that do not fit in
/// their keys, and each group's states with what they hold on the heap, exact up to
/// [`SIZED_GROUPS`] groups and estimated from that many beyond. It reads sizes kept by the
/// structures (never a sketch's estimate).
pub fn groups_bytes(groups: &Groups) -> usize {
    groups_bytes_from(groups, SIZED_GROUPS)
}

/// [`groups_bytes`], sizing at most `sized` groups one by one (`usize::MAX`: all of them).
pub fn groups_bytes_from(groups: &Groups, sized: usize) -> usize {
    let table = groups.capacity() * (size_of::<(GroupKey, Vec<MeasureState>)>() + 1);
    if groups.is_empty() {
        return table;
    }
    // stepping over the table's slots reads only its control bytes, not the groups
    let step = groups.len().div_ceil(sized.max(1));
    let (counted, held) = groups
        .iter()
        .step_by(step)
        .fold((0usize, 0usize), |(counted, held), (key, states)| (counted + 1, held + group_bytes(key, states)));
    table + (held as u128 * groups.len() as u128 / counted as u128) as usize
}

/// What one group holds beyond its slot in the table.
fn group_bytes(key: &GroupKey, states: &Vec<MeasureState>) -> usize {
    let dims = if key.dims.spilled() { key.dims.capacity() * size_of::<Value>() } else { 0 };
    let strings: usize = key
        .dims
        .iter()
        .map(|v| match v {
            Value::String(s) if s.is_heap_allocated() => s.capacity(),
            _ => 0,
        })
        .sum();
    let states_held: usize = states.iter().map(MeasureState::heap_size).sum();
    dims + strings + states.capacity() * size_of::<MeasureState>() + states_held
}

/// The states of a view's measures for no events.
pub fn empty_states(view: &CompiledView) -> Vec<MeasureState> {
    view.measures.iter().map(|(m, _)| MeasureState::empty(m)).collect()
}

/// The key of `row`'s group in `view`, or `None` for an event without a time.
fn row_key<'a>(view: &'a CompiledView, row: &'a Row) -> Option<RowKey<'a>> {
    let Value::Timestamp(ts) = row[view.time_index] else {
        return None;
    };
    Some(RowKey { bucket: view.spec.granularity.truncate(ts), row, dims: &view.dimension_index })
}

/// Folds one event (already known to pass the view's filter) into `groups`. The speed layer
/// folds through [`fold_rows`], which gives the same result for many events, faster; this
/// one-event form is what the tests hold it to.
pub fn fold_row(view: &CompiledView, groups: &mut Groups, row: &Row) {
    let Some(key) = row_key(view, row) else {
        return;
    };
    update_group(
        groups,
        &key,
        || empty_states(view),
        |states| states.iter_mut().zip(&view.measures).for_each(|(state, measure)| fold_measure(state, measure, row)),
    );
}

/// How many events ahead of the one being folded [`fold_rows`] starts loading a group's
/// states, and half as many ahead, the sketches they point to.
const PREFETCH_AHEAD: usize = 8;

/// Folds events (already known to pass the view's filter) into `groups`, as [`fold_row`]
/// folds each in turn, with the same result, in two passes: the first finds (or makes) every
/// event's group, the second folds the events into their groups' states, one measure at a
/// time over all the events, while the memory of the groups a few events ahead is already on
/// its way into the cache.
///
/// Folding is bound by cache misses on per-group memory (the map's slot, the states, each
/// sketch's own memory: dependent loads, one after the other). Knowing the groups ahead lets
/// the second pass ask for the states and the sketches before it needs them, which is what
/// pays: the two passes without the prefetches folded no faster than one event at a time
/// (`bench/HISTORY.md`, session 35). A measure at a time, consecutive updates (say, two
/// DDSketch adds, each waiting on its bin) are short and independent, so the CPU overlaps
/// their misses; a group's events still fold in order, so the result is the same.
#[allow(unsafe_code)] // see the SAFETY note; `fold_found` holds the rest
pub fn fold_rows<'r>(view: &CompiledView, groups: &mut Groups, rows: impl IntoIterator<Item = &'r Row>) {
    let rows = rows.into_iter();
    let mut found: Vec<Found<'r>> = Vec::with_capacity(rows.size_hint().0);
    for row in rows {
        let Some(key) = row_key(view, row) else {
            continue;
        };
        update_group(
            groups,
            &key,
            || empty_states(view),
            |states| found.push((states.as_mut_ptr(), states.len(), row)),
        );
    }
    // SAFETY: every pointer is the heap buffer of a group's states vector in `groups`, with
    // its length and a state per measure of the view. Inserting groups above moved each new
    // vector into the map and may have moved the others within it, never their buffers;
    // `groups` stays borrowed mutably until `fold_found` returns, so nothing else inserts,
    // removes, grows or drops a vector.
    unsafe { fold_found(&found, &view.measures) }
}

/// An event and where its states were found: the heap buffer of a states vector, its length,
/// and the event (see [`fold_found`]).
pub type Found<'r> = (*mut MeasureState, usize, &'r Row);

/// The second pass of [`fold_rows`], for any states the caller found: folds each event of
/// `found` into its states, a measure at a time over all the events, with the states and the
/// sketch structs of the events a few ahead on their way into the cache. `measures` are the
/// states' measures, in their order, each with the position of its field in a row (as in
/// [`CompiledView::measures`]); the events of one states vector fold in the order of `found`.
///
/// # Safety
///
/// Every entry's pointer must be the heap buffer of a live `Vec<MeasureState>` of that many
/// states, one per entry of `measures`, which nothing else reads, writes, grows, shrinks or
/// drops until this returns. Entries may share a buffer (two events of one group).
#[allow(unsafe_code)] // the one place that reads through them: see the SAFETY notes
pub unsafe fn fold_found<'m>(found: &[Found<'_>], measures: impl IntoIterator<Item = &'m (Measure, Option<usize>)>) {
    for (m, measure) in measures.into_iter().enumerate() {
        for i in 0..found.len() {
            if m == 0
                && let Some(&(states, len, _)) = found.get(i + PREFETCH_AHEAD)
            {
                prefetch(states as *const u8, len * size_of::<MeasureState>());
            }
            // SAFETY (for each slice made below): by the contract above each pointer is a live
            // buffer of `len` states; two events of one group share a buffer, so each slice
            // lives only within its own statement.
            if let Some(&(states, len, _)) = found.get(i + PREFETCH_AHEAD / 2) {
                let ahead = unsafe { std::slice::from_raw_parts(states, len) };
                ahead[m].prefetch();
            }
            let (states, len, row) = found[i];
            let states = unsafe { std::slice::from_raw_parts_mut(states, len) };
            fold_measure(&mut states[m], measure, row);
        }
    }
}

/// Asks the CPU to start loading the `len` bytes at `start` into its caches: a hint, which
/// changes no result and never faults, whatever the address.
#[inline(always)]
#[allow(unsafe_code)]
pub fn prefetch(start: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..len).step_by(64) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch only reads into the cache and is dropped on a bad address
        unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset) as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}

/// Folds one event into the state of one of the view's measures (with the row position of its
/// field, as in [`CompiledView::measures`]).
pub fn fold_measure(state: &mut MeasureState, (measure, index): &(Measure, Option<usize>), row: &Row) {
    let value = index.map_or(&Value::Null, |i| crate::value::field(row, i));
    state.update(value, measure.kind == MeasureKind::Count);
}

/// Merges one group's states into another's, measure by measure.
pub fn merge_states<'a>(into: &mut [MeasureState], from: impl IntoIterator<Item = &'a MeasureState>) {
    into.iter_mut().zip(from).for_each(|(a, b)| a.merge(b));
}

/// Merges every group of `from` into `into`.
pub fn merge_groups<'a>(into: &mut Groups, from: impl IntoIterator<Item = (&'a GroupKey, &'a Vec<MeasureState>)>) {
    for (key, states) in from {
        match into.get_mut(key) {
            Some(existing) => merge_states(existing, states),
            None => {
                into.insert(key.clone(), states.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(kind: MeasureKind, ty: FieldType) -> Measure {
        Measure { name: "m".into(), kind, field: Some(("f".into(), ty)), percentile: Some(0.5) }
    }

    /// Splitting a stream anywhere and merging the halves gives the state of the whole.
    #[test]
    fn merge_of_parts_equals_one_pass() {
        let values = [Value::Int(5), Value::Null, Value::Int(-3), Value::Int(7), Value::Null, Value::Int(i64::MAX)];
        for (kind, counts_all) in [
            (MeasureKind::Count, true),
            (MeasureKind::CountField, false),
            (MeasureKind::Sum, false),
            (MeasureKind::Min, false),
            (MeasureKind::Max, false),
            (MeasureKind::Avg, false),
        ] {
            let m = measure(kind, FieldType::Int64);
            let mut whole = MeasureState::empty(&m);
            values.iter().for_each(|v| whole.update(v, counts_all));
            for split in 0..=values.len() {
                let (mut a, mut b) = (MeasureState::empty(&m), MeasureState::empty(&m));
                values[..split].iter().for_each(|v| a.update(v, counts_all));
                values[split..].iter().for_each(|v| b.update(v, counts_all));
                a.merge(&b);
                assert_eq!(a, whole, "{kind:?} split at {split}");
            }
        }
    }

    /// A map of more than [`SIZED_GROUPS`] groups is sized from a sample of them: within a few
    /// percent of sizing every group, when the groups' sketches hold very different amounts; a
    /// smaller map is sized exactly.
    #[test]
    fn a_large_map_is_sized_from_a_sample_close_to_the_whole() {
        let dataset: crate::DatasetSpec = serde_json::from_str(
            r#"{"name":"d","time_field":"ts","fields":{"ts":"timestamp","g":"int64","u":"string","x":"float64"}}"#,
        )
        .unwrap();
        let spec: crate::ViewSpec = serde_json::from_str(
            r#"{"name":"v","dataset":"d","granularity":"hour","dimensions":["g"],
                "measures":{"n":"count","users":"approx_distinct(u)","p":"approx_percentile(x, 0.9)","top":"max(x)"}}"#,
        )
        .unwrap();
        let view = spec.compile(&dataset).unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // a heavy tail of events a group: most groups a few, some 80 (17 on average)
        let mut rows = Vec::new();
        for g in 0..6_000i64 {
            let events = 1 + (next() % 1_000).pow(4) * 80 / 1_000u64.pow(4);
            for _ in 0..events {
                let user = format!("user-{:0>40}", next() % 1_000_000); // too long to sit inline
                // fields in name order: g, ts, u, x
                rows.push(vec![
                    Value::Int(g),
                    Value::Timestamp((g % 24) * 3_600_000_000),
                    Value::String(user.into()),
                    Value::Float((next() % 10_000) as f64 / 7.0),
                ]);
            }
        }
        let mut groups = Groups::default();
        rows.chunks(1_000).for_each(|rows| fold_rows(&view, &mut groups, rows));
        assert_eq!(groups.len(), 6_000);
        let whole = groups_bytes_from(&groups, usize::MAX);
        let sampled = groups_bytes(&groups);
        let off = (sampled as f64 / whole as f64 - 1.0).abs();
        assert!(off < 0.05, "sampled {sampled} B against {whole} B sized whole");
        assert!(whole > 6_000 * 4 * size_of::<MeasureState>(), "the states are counted");

        let small: Groups = groups.into_iter().take(SIZED_GROUPS).collect();
        assert_eq!(groups_bytes(&small), groups_bytes_from(&small, usize::MAX), "a small map is sized exactly");
    }

    /// Folding finds each event's group from its row in place, whether the key's values lie in
    /// the key (two dimensions, strings of up to 24 bytes) or not (a third dimension, longer
    /// strings): the counts equal a plain count per (hour, values).
    #[test]
    fn folding_finds_groups_of_inline_and_spilled_keys() {
        let dataset: crate::DatasetSpec = serde_json::from_str(
            r#"{"name":"d","time_field":"ts","fields":{"ts":"timestamp","a":"string","b":"string","c":"string"}}"#,
        )
        .unwrap();
        let text = |i: u64| "x".repeat((i * 7 % 41) as usize) + &(i % 5).to_string();
        let rows: Vec<Row> = (0..5_000u64)
            .map(|i| {
                let (a, b, c) = (text(i % 13), text(i % 11), text(i % 3));
                // fields in name order: a, b, c, ts
                vec![
                    Value::String(a.into()),
                    Value::String(b.into()),
                    Value::String(c.into()),
                    Value::Timestamp((i % 4) as i64 * 3_600_000_000),
                ]
            })
            .collect();
        for dims in [r#"["a","b"]"#, r#"["a","b","c"]"#] {
            let spec: crate::ViewSpec = serde_json::from_str(&format!(
                r#"{{"name":"v","dataset":"d","granularity":"hour","dimensions":{dims},"measures":{{"n":"count"}}}}"#
            ))
            .unwrap();
            let view = spec.compile(&dataset).unwrap();
            let mut one_by_one = Groups::default();
            rows.iter().for_each(|row| fold_row(&view, &mut one_by_one, row));
            let mut in_passes = Groups::default();
            rows.chunks(1_000).for_each(|rows| fold_rows(&view, &mut in_passes, rows));
            let mut expected = std::collections::BTreeMap::<(i64, Vec<String>), i64>::new();
            for row in &rows {
                let Value::Timestamp(ts) = row[3] else { unreachable!() };
                let values = view.dimension_index.iter().map(|&i| format!("{:?}", row[i])).collect();
                *expected.entry((ts, values)).or_default() += 1;
            }
            for groups in [&one_by_one, &in_passes] {
                assert_eq!(groups.len(), expected.len(), "{dims}");
                for (key, states) in groups {
                    let values = key.dims.iter().map(|v| format!("{v:?}")).collect();
                    assert_eq!(
                        Some(&states[0].value()),
                        expected.get(&(key.bucket, values)).map(|n| Value::Int(*n)).as_ref()
                    );
                }
            }
        }
    }

    /// Folding a slice of events in two passes leaves every measure of every group as folding
    /// them one at a time does, bit for bit (float sums add in the same order), whether an
    /// event's group recurs within the prefetch distance or far after it, and skips events
    /// without a time as one at a time does.
    #[test]
    fn folding_in_passes_equals_folding_one_at_a_time() {
        let dataset: crate::DatasetSpec = serde_json::from_str(
            r#"{"name":"d","time_field":"ts","fields":{"ts":"timestamp","k":"string","u":"string","x":"float64","n":"int64"}}"#,
        )
        .unwrap();
        let spec: crate::ViewSpec = serde_json::from_str(
            r#"{"name":"v","dataset":"d","granularity":"hour","dimensions":["k"],"measures":{
                "c":"count","s":"sum(x)","si":"sum(n)","a":"avg(x)","lo":"min(x)","hi":"max(n)",
                "d":"approx_distinct(u)","p":"approx_percentile(x, 0.9)"}}"#,
        )
        .unwrap();
        let view = spec.compile(&dataset).unwrap();
        // fields in name order: k, n, ts, u, x; groups recur every 1, 3, 7 or 29 events
        let rows: Vec<Row> = (0..3_000u64)
            .map(|i| {
                let group = [1, 3, 7, 29][(i / 250 % 4) as usize];
                let ts = if i % 97 == 0 { Value::Null } else { Value::Timestamp((i % 2) as i64 * 3_600_000_000) };
                let x = if i % 11 == 0 { Value::Null } else { Value::Float((i as f64 * 0.37).sin() * 1e3) };
                vec![
                    Value::String(format!("k{}", i % group).into()),
                    Value::Int(i as i64 * 7 - 900),
                    ts,
                    Value::String(format!("user{}", i * 31 % 500).into()),
                    x,
                ]
            })
            .collect();
        let mut one_by_one = Groups::default();
        rows.iter().for_each(|row| fold_row(&view, &mut one_by_one, row));
        for slice in [1, 5, 64, 1_000, 3_000] {
            let mut in_passes = Groups::default();
            rows.chunks(slice).for_each(|rows| fold_rows(&view, &mut in_passes, rows));
            assert_eq!(in_passes.len(), one_by_one.len(), "slices of {slice}");
            for (key, states) in &one_by_one {
                let theirs = &in_passes[key];
                for (m, (a, b)) in states.iter().zip(theirs).enumerate() {
                    match (a.value(), b.value()) {
                        (Value::Float(a), Value::Float(b)) => assert_eq!(a.to_bits(), b.to_bits(), "{key:?} m{m}"),
                        (a, b) => assert_eq!(a, b, "{key:?} measure {m}, slices of {slice}"),
                    }
                }
                assert_eq!(states, theirs);
            }
        }
    }

    #[test]
    fn empty_aggregates_are_null_except_count() {
        let m = measure(MeasureKind::Sum, FieldType::Float64);
        assert_eq!(MeasureState::empty(&m).finish(), serde_json::Value::Null);
        let m = measure(MeasureKind::Avg, FieldType::Float64);
        assert_eq!(MeasureState::empty(&m).finish(), serde_json::Value::Null);
        let m = measure(MeasureKind::CountField, FieldType::Float64);
        assert_eq!(MeasureState::empty(&m).finish(), serde_json::json!(0));
    }

    #[test]
    fn answers_keep_their_types() {
        let mut s = MeasureState::empty(&measure(MeasureKind::Sum, FieldType::Int64));
        s.update(&Value::Int(2), false);
        assert_eq!(s.finish(), serde_json::json!(2));
        let mut a = MeasureState::empty(&measure(MeasureKind::Avg, FieldType::Int64));
        a.update(&Value::Int(1), false);
        a.update(&Value::Int(2), false);
        assert_eq!(a.finish(), serde_json::json!(1.5));
        let mut t = MeasureState::empty(&measure(MeasureKind::Max, FieldType::Timestamp));
        t.update(&Value::Timestamp(0), false);
        assert_eq!(t.finish(), serde_json::json!("1970-01-01T00:00:00Z"));
    }
}
