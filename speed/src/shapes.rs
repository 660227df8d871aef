//! Query shapes kept merged and up to date, so that a dashboard query reads its answer
//! instead of folding the view for it.
//!
//! A [`Shape`] is a query without its time range: output granularity, grouped dimensions,
//! dimension filters, measures. For each recently asked shape a view keeps a [`Merged`]: the
//! published batch version's groups and every speed-layer event, folded to the shape's rows.
//! While shapes are kept, the writer folds each event into the view's speed map as always and
//! also into a small *delta* map (see `ViewLive::apply`); each query takes the delta and
//! queues it, and a shape merges the queued deltas it has not seen when it is asked, so a
//! query costs what arrived since that shape was last asked, not what the speed layer holds,
//! and never pays for the other kept shapes. A delta leaves the queue once every kept shape
//! has merged it; a shape that lags so far that the queue would hold more groups than the
//! speed layer is dropped instead (it is built again when asked). A row's measure values are
//! cached until an event reaches it. States merge exactly, so a kept shape equals one fold of
//! all events at the moment the newest delta it merged was taken.

use std::collections::VecDeque;
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
    fn absorb(&mut self, shape: &Shape, delta: &Groups) {
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

/// The kept shapes of one view, all merging the same batch version, and the deltas some of
/// them have not merged yet.
#[derive(Debug)]
pub struct Shapes {
    /// The batch version they merge (0: none).
    pub(crate) version: i64,
    kept: LruCache<Shape, Kept>,
    /// Deltas, oldest first, that some kept shape has not merged; `pending[i]` is delta
    /// number `first + i`.
    pending: VecDeque<Groups>,
    first: u64,
    /// Groups in `pending`, all deltas together.
    pending_groups: usize,
}

#[derive(Debug)]
struct Kept {
    merged: Merged,
    /// It has merged every delta numbered below this.
    next: u64,
}

impl Default for Shapes {
    fn default() -> Self {
        Shapes {
            version: 0,
            kept: LruCache::new(NonZeroUsize::new(SHAPES_PER_VIEW).expect("not zero")),
            pending: VecDeque::new(),
            first: 0,
            pending_groups: 0,
        }
    }
}

impl Shapes {
    /// Forgets every shape; they will merge `version` from now on.
    pub fn reset(&mut self, version: i64) {
        self.kept.clear();
        self.first += self.pending.len() as u64;
        self.pending.clear();
        self.pending_groups = 0;
        self.version = version;
    }

    /// Queues a delta (view groups) for every kept shape.
    pub fn push(&mut self, delta: Groups) {
        if !delta.is_empty() && !self.kept.is_empty() {
            self.pending_groups += delta.len();
            self.pending.push_back(delta);
        }
    }

    /// Whether `shape` is kept (and so needs no building).
    pub fn contains(&self, shape: &Shape) -> bool {
        self.kept.contains(shape)
    }

    /// The kept rows of `shape`, after merging the deltas it has not seen. Then deltas every
    /// kept shape has merged leave the queue, and while it holds more than `max_pending`
    /// groups, the shape that lags most is dropped.
    pub fn get(&mut self, shape: &Shape, max_pending: usize) -> Option<&mut Merged> {
        let kept = self.kept.get_mut(shape)?;
        let end = self.first + self.pending.len() as u64;
        for delta in self.pending.range((kept.next - self.first) as usize..) {
            kept.merged.absorb(shape, delta);
        }
        kept.next = end;
        self.trim(max_pending);
        self.kept.peek_mut(shape).map(|kept| &mut kept.merged)
    }

    fn trim(&mut self, max_pending: usize) {
        loop {
            let seen_by_all = self.kept.iter().map(|(_, k)| k.next).min().unwrap_or(u64::MAX);
            while self.first < seen_by_all && !self.pending.is_empty() {
                let delta = self.pending.pop_front().expect("not empty");
                self.pending_groups -= delta.len();
                self.first += 1;
            }
            if self.pending_groups <= max_pending {
                return;
            }
            let lagging = self.kept.iter().min_by_key(|(_, k)| k.next).map(|(shape, _)| shape.clone());
            if let Some(lagging) = lagging {
                self.kept.pop(&lagging);
            }
        }
    }

    /// Keeps `merged` for `shape`, up to date with every queued delta, dropping the least
    /// recently used shapes while all of them hold more than `budget` rows (the one just kept
    /// always stays).
    pub fn keep(&mut self, shape: Shape, merged: Merged, budget: usize) {
        let next = self.first + self.pending.len() as u64;
        self.kept.put(shape, Kept { merged, next });
        while self.kept.len() > 1 && self.kept.iter().map(|(_, k)| k.merged.len()).sum::<usize>() > budget {
            self.kept.pop_lru();
        }
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
        assert!(shapes.get(&shape(Granularity::Hour), usize::MAX).is_some(), "900 rows fit");
        // the hour shape was used last: the day shape goes first
        shapes.keep(shape(Granularity::All), merged(200), 1000);
        assert!(!shapes.contains(&shape(Granularity::Day)));
        assert!(shapes.contains(&shape(Granularity::Hour)));
        // a shape over the budget on its own is still kept, alone
        shapes.keep(shape(Granularity::Minute), merged(5000), 1000);
        assert_eq!(shapes.kept.len(), 1);
        assert!(shapes.contains(&shape(Granularity::Minute)));
    }

    /// Each row's bucket and count, sorted.
    fn counts(merged: &mut Merged) -> Vec<(i64, Value)> {
        let mut rows: Vec<_> = merged.rows(|_| true).map(|(k, v)| (k.bucket, v[0].clone())).collect();
        rows.sort_by_key(|(b, _)| *b);
        rows
    }

    #[test]
    fn a_shape_merges_the_deltas_it_missed_and_a_lagging_one_is_dropped() {
        const HOUR: i64 = 3_600_000_000;
        let (hourly, all) = (
            Shape::new(Granularity::Hour, vec![], vec![], vec![0]),
            Shape::new(Granularity::All, vec![], vec![], vec![0]),
        );
        let delta = |hours: &[i64]| -> Groups {
            hours
                .iter()
                .map(|&h| (GroupKey { bucket: h * HOUR, dims: vec![] }, vec![MeasureState::Count(h + 1)]))
                .collect()
        };
        let mut shapes = Shapes::default();
        shapes.keep(hourly.clone(), Merged::default(), 1000);
        shapes.keep(all.clone(), Merged::default(), 1000);
        shapes.push(delta(&[0, 1]));
        assert_eq!(counts(shapes.get(&hourly, 100).unwrap()), vec![(0, Value::Int(1)), (HOUR, Value::Int(2))]);
        shapes.push(delta(&[1, 2]));
        assert_eq!(
            counts(shapes.get(&hourly, 100).unwrap()),
            vec![(0, Value::Int(1)), (HOUR, Value::Int(4)), (2 * HOUR, Value::Int(3))]
        );
        assert_eq!(shapes.pending.len(), 2, "the shape of all time has merged neither");
        // asked at last, it merges both, and nobody needs them any more
        assert_eq!(counts(shapes.get(&all, 100).unwrap()), vec![(0, Value::Int(1 + 2 + 2 + 3))]);
        assert!(shapes.pending.is_empty() && shapes.pending_groups == 0);

        // the shape of all time is not asked again: once its backlog passes the bound, it goes
        for round in 0..3 {
            shapes.push(delta(&[round, round + 5]));
            assert!(shapes.get(&hourly, 4).is_some());
            assert_eq!(shapes.contains(&all), round < 2, "round {round}");
        }
        assert!(shapes.pending.is_empty() && shapes.pending_groups == 0);
        // and a version change forgets every shape and delta
        shapes.push(delta(&[9]));
        shapes.reset(7);
        assert!(!shapes.contains(&hourly) && shapes.pending.is_empty() && shapes.pending_groups == 0);
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
