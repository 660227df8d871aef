//! Query shapes kept merged and up to date, so that a dashboard query reads its answer
//! instead of folding the view for it.
//!
//! A [`Shape`] is a query without its time range: output granularity, grouped dimensions,
//! dimension filters, measures. For each recently asked shape a view keeps a [`Merged`]: the
//! published batch version's groups and every speed-layer event, folded to the shape's rows.
//! While shapes are kept, the writer folds each event into the view's speed map as always and
//! also into a small *delta* map (see `ViewLive::apply`); each query takes the delta and
//! merges it into every kept shape, so a query costs what arrived since the previous one,
//! not what the speed layer holds. A row's measure values are cached until an event reaches
//! it. States merge exactly, so a kept shape equals one fold of all events at the moment its
//! delta was taken.

use std::num::NonZeroUsize;

use lru::LruCache;
use tandem_model::agg::{GroupKey, Groups, KeyParts, MeasureState, RowKey, merge_states};
use tandem_model::{Granularity, Value};

/// A query shape without its time range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    pub granularity: Granularity,
    /// Positions (in the view's dimensions) of the dimensions to group by.
    pub group: Vec<usize>,
    /// Allowed values per filtered dimension position; by position, values sorted and unique.
    filters: Vec<(usize, Vec<Value>)>,
    /// Positions of the measures to return.
    pub measures: Vec<usize>,
}

/// A half-open time range `[from, to)` over the start of the view's buckets (UTC micros).
pub type Range = (Option<i64>, Option<i64>);

impl Shape {
    pub fn new(
        granularity: Granularity,
        group: Vec<usize>,
        filters: Vec<(usize, Vec<Value>)>,
        measures: Vec<usize>,
    ) -> Shape {
        let mut filters: Vec<(usize, Vec<Value>)> = filters
            .into_iter()
            .map(|(pos, mut values)| {
                values.sort_by(Value::total_cmp);
                values.dedup_by(|a, b| a.total_cmp(b).is_eq());
                (pos, values)
            })
            .collect();
        filters.sort_by_key(|(pos, _)| *pos);
        Shape { granularity, group, filters, measures }
    }

    fn admits(&self, key: &GroupKey) -> bool {
        self.filters.iter().all(|(pos, allowed)| allowed.binary_search_by(|v| v.total_cmp(&key.dims[*pos])).is_ok())
    }

    /// Folds view groups (keyed at the view's granularity and dimensions) whose bucket lies in
    /// `range` into `into`, keyed by this shape, with its measures only.
    pub fn fold<'a>(
        &self,
        range: Range,
        groups: impl IntoIterator<Item = (&'a GroupKey, &'a Vec<MeasureState>)>,
        into: &mut Groups,
    ) {
        self.each(range, groups, |key, states| match into.get_mut(key as &dyn KeyParts) {
            Some(existing) => merge_states(existing, self.selected(states)),
            None => {
                into.insert(key.to_key(), self.selected(states).cloned().collect());
            }
        });
    }

    /// Calls `f` with the shape's key and the states of each view group in `range` that
    /// passes the filters.
    fn each<'a>(
        &self,
        (from, to): Range,
        groups: impl IntoIterator<Item = (&'a GroupKey, &'a Vec<MeasureState>)>,
        mut f: impl FnMut(&RowKey<'_>, &'a [MeasureState]),
    ) {
        for (key, states) in groups {
            if from.is_some_and(|f| key.bucket < f) || to.is_some_and(|t| key.bucket >= t) || !self.admits(key) {
                continue;
            }
            f(&RowKey { bucket: self.granularity.truncate(key.bucket), row: &key.dims, dims: &self.group }, states);
        }
    }

    /// A view group's states of this shape's measures.
    fn selected<'a>(&'a self, states: &'a [MeasureState]) -> impl Iterator<Item = &'a MeasureState> {
        self.measures.iter().map(move |&m| &states[m])
    }
}

/// One shape's rows over all events: merged states, and their values once asked for.
#[derive(Debug, Default)]
pub struct Merged {
    rows: std::collections::HashMap<GroupKey, MergedRow, foldhash::fast::RandomState>,
}

#[derive(Debug)]
struct MergedRow {
    states: Vec<MeasureState>,
    /// The states' values; `None` after an event reached the row, until asked for again.
    values: Option<Vec<Value>>,
}

impl Merged {
    /// The rows of `folded` (already keyed by the shape).
    pub fn from_groups(folded: Groups) -> Merged {
        Merged { rows: folded.into_iter().map(|(key, states)| (key, MergedRow { states, values: None })).collect() }
    }

    /// Merges view groups (a delta) into the rows, through `shape`: in place, one lookup
    /// per group.
    pub fn absorb(&mut self, shape: &Shape, delta: &Groups) {
        shape.each((None, None), delta, |key, states| match self.rows.get_mut(key as &dyn KeyParts) {
            Some(row) => {
                merge_states(&mut row.states, shape.selected(states));
                row.values = None;
            }
            None => {
                let states = shape.selected(states).cloned().collect();
                self.rows.insert(key.to_key(), MergedRow { states, values: None });
            }
        });
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    /// Each row whose output bucket `keep` accepts, with its measure values.
    pub fn rows(&mut self, mut keep: impl FnMut(i64) -> bool) -> impl Iterator<Item = (&GroupKey, &Vec<Value>)> {
        self.rows.iter_mut().filter(move |(key, _)| keep(key.bucket)).map(|(key, row)| {
            let values = row.values.get_or_insert_with(|| row.states.iter().map(MeasureState::value).collect());
            (key, &*values)
        })
    }
}

/// Shapes kept at most, per view; together they hold at most a budget of rows given by the
/// caller (least recently used go first).
const SHAPES_PER_VIEW: usize = 32;

/// The kept shapes of one view, all merging the same batch version.
#[derive(Debug)]
pub struct Shapes {
    /// The batch version they merge (0: none).
    pub(crate) version: i64,
    kept: LruCache<Shape, Merged>,
}

impl Default for Shapes {
    fn default() -> Self {
        Shapes { version: 0, kept: LruCache::new(NonZeroUsize::new(SHAPES_PER_VIEW).expect("not zero")) }
    }
}

impl Shapes {
    /// Forgets every shape; they will merge `version` from now on.
    pub fn reset(&mut self, version: i64) {
        self.kept.clear();
        self.version = version;
    }

    /// Merges a delta (view groups) into every kept shape.
    pub fn absorb(&mut self, delta: &Groups) {
        if delta.is_empty() {
            return;
        }
        for (shape, merged) in self.kept.iter_mut() {
            merged.absorb(shape, delta);
        }
    }

    pub fn get(&mut self, shape: &Shape) -> Option<&mut Merged> {
        self.kept.get_mut(shape)
    }

    /// Keeps `merged` for `shape`, dropping the least recently used shapes while all of them
    /// hold more than `budget` rows (the one just kept always stays).
    pub fn keep(&mut self, shape: Shape, merged: Merged, budget: usize) -> &mut Merged {
        self.kept.put(shape.clone(), merged);
        while self.kept.len() > 1 && self.kept.iter().map(|(_, m)| m.len()).sum::<usize>() > budget {
            self.kept.pop_lru();
        }
        self.kept.get_mut(&shape).expect("just kept")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(rows: i64) -> Merged {
        Merged::from_groups((0..rows).map(|b| (GroupKey { bucket: b, dims: vec![] }, vec![])).collect())
    }

    #[test]
    fn kept_shapes_stay_within_their_row_budget() {
        let shape = |g| Shape::new(g, vec![], vec![], vec![0]);
        let mut shapes = Shapes::default();
        shapes.keep(shape(Granularity::Hour), merged(600), 1000);
        shapes.keep(shape(Granularity::Day), merged(300), 1000);
        assert!(shapes.get(&shape(Granularity::Hour)).is_some(), "900 rows fit");
        // the hour shape was used last: the day shape goes first
        shapes.keep(shape(Granularity::All), merged(200), 1000);
        assert!(shapes.get(&shape(Granularity::Day)).is_none());
        assert!(shapes.get(&shape(Granularity::Hour)).is_some());
        // a shape over the budget on its own is still kept, alone
        shapes.keep(shape(Granularity::Minute), merged(5000), 1000);
        assert_eq!(shapes.kept.len(), 1);
        assert!(shapes.get(&shape(Granularity::Minute)).is_some());
    }

    #[test]
    fn filter_values_are_a_set() {
        let a = Shape::new(
            Granularity::Day,
            vec![0],
            vec![(1, vec![Value::Int(2), Value::Int(1), Value::Int(2)])],
            vec![0],
        );
        let b = Shape::new(Granularity::Day, vec![0], vec![(1, vec![Value::Int(1), Value::Int(2)])], vec![0]);
        assert_eq!(a, b);
        let key = |d: i64| GroupKey { bucket: 0, dims: vec![Value::Null, Value::Int(d)] };
        assert!(a.admits(&key(1)) && a.admits(&key(2)) && !a.admits(&key(3)));
    }
}
