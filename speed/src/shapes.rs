//! Query shapes kept merged and up to date, so that a dashboard query reads its answer
//! instead of folding the view for it.
//!
//! A [`Shape`] is a query without its time range: output granularity, grouped dimensions,
//! dimension filters, measures. For each recently asked shape a view keeps a [`Merged`]: the
//! published batch version's groups and every speed-layer event, folded to the shape's rows.
//!
//! While shapes are kept, the writer folds each request into the view's speed map as always
//! and also hands the request's rows (shared, not copied) to the view's *delta* (see
//! `ViewLive::apply`). The delta is taken and queued in every kept shape's inbox, in
//! [`Chunk`]s, by a background round after each group commit (`ViewLive::catch_up`, on the
//! dataset's `shapes` thread) and by every query. The round then folds each shape's inbox
//! into its rows (straight into the rows it keeps; new rows join them in order once per
//! catch-up), and a query folds its own shape's, so a query folds at most the
//! events of a group commit or two, whatever the ingest rate and however long since it was
//! last asked. (Queries used to merge the delta's view *groups* into their rows when asked:
//! about 2 µs a group, so the first query after half a second of ingest at 200 k events/s
//! spent 40–120 ms catching up, and the writer built those groups, sketches and all, for
//! every event.) Each shape's rows have their own lock: a query answering from one shape
//! holds up no other, and a round skips a shape being answered from (its inbox waits).
//!
//! The background work grows with events × kept shapes, so it is bounded: a shape nobody
//! asked for in [`SHAPES_IDLE`] is dropped, and when the rounds use more than half of a
//! core's time a shape is dropped, one whose base is kept first (a dropped shape is built
//! again when asked: see [`Shapes::spent`]). A row's measure values, and its text in an
//! answer (and, once an Arrow answer asked, its run's record batch), are cached until an
//! event reaches it; a round makes the reached rows' values and text again (at most every
//! [`MAKE_BEHIND_EVERY`], within its share of a core), and a query those of the rows reached
//! since (an Arrow answer writes their new values into their runs' batches). States fold and
//! merge exactly, so a kept shape equals one fold of all events at the moment the newest chunk
//! it folded was queued.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indexmap::IndexMap;
use indexmap::map::RawEntryApiV1;
use lru::LruCache;
use parking_lot::{Mutex, MutexGuard};
use tandem_model::agg::{
    Found, GroupKey, Groups, KeyParts, MeasureState, RowKey, fold_found, merge_states, prefetch, update_group,
};
use tandem_model::value::field;
use tandem_model::view::CompiledView;
use tandem_model::zone::{self, Tz};
use tandem_model::{Granularity, Row, Value};

/// A kept shape nobody has asked for in this long is dropped; when no shape of a view has been
/// asked for in this long, the writer stops keeping the view's delta. Long enough for a
/// dashboard refreshing once a minute: rebuilding a shape folds every group of the batch
/// version (170-380 ms over 50 M events, session 18), which with 10 s here was the slowest
/// query of every bench round whose queries were more than 10 s apart. Background rounds stay
/// bounded by [`MAX_BUSY_SHARE`] whatever this is.
pub const SHAPES_IDLE: Duration = Duration::from_secs(60);

/// Background rounds may keep a core busy at most this share of the time (over windows of
/// [`BUSY_WINDOW`]) before the least recently asked shape is dropped.
const MAX_BUSY_SHARE: f64 = 0.5;

/// A background round makes the values and text of a kept shape's rows that events reached
/// (see [`Merged::make_behind`]) at most this often, while the rounds are within
/// [`MAKE_BEHIND_SHARE`]. Under ingest a row of the current day is reached many times between
/// two queries; the 30-day query under ingest then made 0.9-1.7 k rows' values itself instead
/// of 5.1-5.8 k, and its answer step took 1.3-3.1 ms instead of 6.4-9.1 (values only: 4.0-4.4
/// ms; every 20 or 50 ms: fewer rows made ahead, slower answers; session 29 in
/// `bench/HISTORY.md`).
const MAKE_BEHIND_EVERY: Duration = Duration::from_millis(10);

/// Background rounds make rows ahead of the queries only while below this share (see
/// [`Shapes::may_make_behind`]): close under [`MAX_BUSY_SHARE`], so that making rows ahead
/// never drops a shape (without this bound it dropped one or two in most bench runs; at 0.4
/// or 0.45 it made few rows on a slow hour, whose folds alone took 0.4 of a core).
const MAKE_BEHIND_SHARE: f64 = 0.48;
const BUSY_WINDOW: Duration = Duration::from_secs(1);

/// Events of one request past the view's floor, shared with the writer's group commit: the
/// rows from `from` on, and which of them pass the view's filter (all without a mask).
#[derive(Debug)]
pub struct Chunk {
    pub rows: Arc<Vec<Row>>,
    pub from: usize,
    pub mask: Option<Vec<bool>>,
}

impl Chunk {
    pub(crate) fn len(&self) -> usize {
        self.rows.len() - self.from
    }

    /// The events that pass the view's filter.
    fn events(&self) -> impl Iterator<Item = &Row> {
        let rows = &self.rows[self.from..];
        rows.iter().enumerate().filter(|(i, _)| self.mask.as_ref().is_none_or(|m| m[*i])).map(|(_, row)| row)
    }
}

/// A query shape without its time range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    pub granularity: Granularity,
    /// The time zone whose clocks cut the buckets (`None`: UTC); see `tandem_model::zone`.
    pub zone: Option<Tz>,
    /// Positions (in the view's dimensions) of the dimensions to group by.
    pub group: Vec<usize>,
    /// Allowed values per filtered dimension position; by position, values sorted and unique.
    filters: Vec<(usize, Vec<Value>)>,
    /// Values not allowed per dimension position, kept alike.
    excluded: Vec<(usize, Vec<Value>)>,
    /// Positions of the measures to return.
    pub measures: Vec<usize>,
}

/// Value lists by dimension position, as a shape keeps them: each list sorted and without
/// repeats (so that it is searched, and so that two shapes that list the same values in
/// another order are one), the lists by position.
fn value_lists(lists: Vec<(usize, Vec<Value>)>) -> Vec<(usize, Vec<Value>)> {
    let mut lists: Vec<(usize, Vec<Value>)> = lists
        .into_iter()
        .map(|(pos, mut values)| {
            values.sort_by(Value::total_cmp);
            values.dedup_by(|a, b| a.total_cmp(b).is_eq());
            (pos, values)
        })
        .collect();
    lists.sort_by_key(|(pos, _)| *pos);
    lists
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
        Shape { granularity, zone: None, group, filters: value_lists(filters), excluded: Vec::new(), measures }
    }

    /// This shape without the events whose dimension at each position takes one of the values
    /// listed for it.
    pub fn excluding(self, excluded: Vec<(usize, Vec<Value>)>) -> Shape {
        Shape { excluded: value_lists(excluded), ..self }
    }

    /// This shape with its buckets cut by `zone`'s clocks.
    pub fn in_zone(self, zone: Option<Tz>) -> Shape {
        Shape { zone, ..self }
    }

    /// The start of this shape's bucket holding the view bucket (or time) `bucket`.
    #[inline]
    pub fn bucket_of(&self, bucket: i64) -> i64 {
        match self.zone {
            None => self.granularity.truncate(bucket),
            Some(zone) => zone::truncate(self.granularity, zone, bucket),
        }
    }

    /// [`bucket_of`](Self::bucket_of) for many view buckets: in a zone, each distinct one is
    /// converted once (a conversion by a zone's clocks takes a few hundred nanoseconds, and a
    /// 30-day answer re-keys tens of thousands of view groups from 720 hours).
    fn buckets(&self) -> impl FnMut(i64) -> i64 + '_ {
        let mut seen: std::collections::HashMap<i64, i64, foldhash::fast::RandomState> = Default::default();
        move |bucket| match self.zone {
            None => self.granularity.truncate(bucket),
            Some(_) => *seen.entry(bucket).or_insert_with(|| self.bucket_of(bucket)),
        }
    }

    /// The start of the bucket after this shape's bucket starting at `bucket` (`None` for
    /// `All`).
    pub fn bucket_end(&self, bucket: i64) -> Option<i64> {
        match self.zone {
            None => self.granularity.bucket_end(bucket),
            Some(zone) => zone::bucket_end(self.granularity, zone, bucket),
        }
    }

    fn admits(&self, key: &GroupKey) -> bool {
        self.admits_dims(|pos| &key.dims[pos])
    }

    /// Whether the dimension values (`dim(position in the view's dimensions)`) pass the
    /// filters.
    fn admits_dims<'v>(&self, dim: impl Fn(usize) -> &'v Value) -> bool {
        let listed = |values: &[Value], pos: usize| values.binary_search_by(|v| v.total_cmp(dim(pos))).is_ok();
        self.filters.iter().all(|(pos, allowed)| listed(allowed, *pos))
            && !self.excluded.iter().any(|(pos, excluded)| listed(excluded, *pos))
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
        let mut bucket_of = self.buckets();
        for (key, states) in groups {
            if from.is_some_and(|f| key.bucket < f) || to.is_some_and(|t| key.bucket >= t) || !self.admits(key) {
                continue;
            }
            f(&RowKey { bucket: bucket_of(key.bucket), row: &key.dims, dims: &self.group }, states);
        }
    }

    /// A view group's states of this shape's measures.
    fn selected<'a>(&'a self, states: &'a [MeasureState]) -> impl Iterator<Item = &'a MeasureState> {
        self.measures.iter().map(move |&m| &states[m])
    }

    /// Folds the events of `chunk` into this shape's rows: into `merged`'s row where it
    /// has one, else into `fresh` (rows not kept yet, keyed by this shape, with its
    /// measures); each event as [`tandem_model::agg::fold_row`] folds it into the view's
    /// groups and [`fold`](Self::fold) then into this shape's rows. In two passes, as the
    /// writer folds (`tandem_model::agg::fold_rows`): every event's row first, then the events
    /// into their rows a measure at a time, with the rows' memory a few events ahead on its
    /// way into the cache. At the ingest limit with a dashboard open the rounds spent two
    /// thirds of their time in the sketches' inserts, waiting on an HLL register or a DDSketch
    /// bin (session 40 in `bench/HISTORY.md`). Finding the rows goes by the guesses of
    /// [`Recent`], so that a row's memory too is on its way a few events ahead.
    #[allow(unsafe_code)] // see the SAFETY note
    fn fold_chunk<'c>(&self, view: &CompiledView, merged: &mut Merged, fresh: &mut Groups, chunk: &'c Chunk) {
        let dims: Vec<usize> = self.group.iter().map(|pos| view.dimension_index[*pos]).collect();
        let key = |row: &'c Row, bucket: i64| RowKey { bucket, row, dims: &dims };
        // first every event's row key (by its bucket), its hash, and where the rows found last
        // lay (a guess, checked below)
        let mut keys: Vec<(&Row, i64, u64, Option<usize>)> = Vec::with_capacity(chunk.len());
        let mut bucket_of = self.buckets();
        for row in chunk.events() {
            let Value::Timestamp(ts) = row[view.time_index] else { continue };
            if !self.admits_dims(|pos| field(row, view.dimension_index[pos])) {
                continue;
            }
            let bucket = bucket_of(view.spec.granularity.truncate(ts));
            let hash = merged.rows.hasher().hash_one(&key(row, bucket) as &dyn KeyParts);
            keys.push((row, bucket, hash, merged.recent.get(hash)));
        }
        // then each event's row, with the rows guessed a few events ahead on their way into
        // the cache
        let mut found: Vec<Found<'c>> = Vec::with_capacity(keys.len());
        for (i, &(row, bucket, hash, guess)) in keys.iter().enumerate() {
            if let Some(&(_, _, _, Some(ahead))) = keys.get(i + FIND_AHEAD) {
                prefetch_row(&merged.rows, ahead);
            }
            let key = key(row, bucket);
            let key = &key as &dyn KeyParts;
            let is_key = |kept: &GroupKey| kept as &dyn KeyParts == key;
            let guessed = guess.filter(|&p| merged.rows.get_index(p).is_some_and(|(kept, _)| is_key(kept)));
            // a wrong or missing guess: the map, searched with the hash made above
            let place = guessed.or_else(|| {
                let found = merged.rows.raw_entry_v1().index_from_hash(hash, is_key);
                found.inspect(|&p| merged.recent.put(hash, p, merged.rows.len()))
            });
            if let Some(place) = place {
                let (_, kept) = merged.rows.get_index_mut(place).expect("found");
                if kept.changed() {
                    merged.buckets.get_mut(&bucket).expect("a kept row's bucket").reached(kept.slot);
                }
                found.push((kept.states.as_mut_ptr(), kept.states.len(), row));
                continue;
            }
            update_group(
                fresh,
                key,
                || self.measures.iter().map(|&m| MeasureState::empty(&view.measures[m].0)).collect(),
                |states| found.push((states.as_mut_ptr(), states.len(), row)),
            );
        }
        // SAFETY: every pointer is the heap buffer of the states vector of a row in
        // `merged.rows` or in `fresh`, with its length and a state per measure of this shape.
        // Nothing was inserted into `merged.rows` above; inserting rows into `fresh` moved each
        // new vector into the map and may have moved the others within it, never their
        // buffers; both stay borrowed mutably until `fold_found` returns, so nothing else
        // inserts, removes, grows or drops a vector.
        unsafe { fold_found(&found, self.measures.iter().map(|&m| &view.measures[m])) }
    }
}

/// One shape's rows over all events: merged states, and their values and answer text once
/// asked for.
///
/// The rows are kept in order of bucket, then dimension values (the order of an answer), so
/// a query reads the rows of its time range without looking at any other and without
/// sorting them. (Scanning every kept row for those in range, then sorting them, was a
/// quarter of the server's time for the idle 24 h query: session 10 in the README.)
#[derive(Debug, Default)]
pub struct Merged {
    /// The rows by key. A row keeps its place (index) in this map: rows are never removed.
    rows: RowMap,
    /// Each bucket's rows, in order of their dimension values, and their text in blocks.
    buckets: BTreeMap<i64, Bucket>,
    /// How many rows' values the last [`fresh`](Self::fresh) or [`encoded`](Self::encoded)
    /// made again (for the slow-query log).
    pub(crate) made: usize,
    /// When a background round last made the rows events reached (see
    /// [`make_behind`](Self::make_behind)).
    made_behind: Option<Instant>,
    /// How the answers write a row's text; the background rounds write it with the same.
    render: Option<RowText>,
    /// Where the rows events reached lately lie in `rows`.
    recent: Recent,
}

type RowMap = IndexMap<GroupKey, MergedRow, foldhash::fast::RandomState>;

/// How many rows ahead of the one whose values are being made [`make_values`] starts loading
/// a row, and half and a quarter as many ahead, the memory the row points to.
const MAKE_AHEAD: usize = 8;

/// Makes again the values of the rows at `places` (in `rows`) that are stale, as
/// [`MergedRow::make_values`] does one row at a time; returns how many it made.
///
/// Like folding events (`tandem_model::agg::fold_rows`), making values is bound by cache
/// misses, one after the other: the row, its states, each sketch's own memory, and the key the
/// row's text is written from. Knowing the rows ahead, it asks for that memory a few rows
/// before it needs it.
fn make_values(rows: &mut RowMap, places: &[usize]) -> usize {
    let mut made = 0;
    for (k, &place) in places.iter().enumerate() {
        let entry = |place: usize| rows.get_index(place).expect("kept");
        if let Some(&ahead) = places.get(k + MAKE_AHEAD) {
            prefetch_row(rows, ahead);
        }
        if let Some(&ahead) = places.get(k + MAKE_AHEAD / 2) {
            let (key, row) = entry(ahead);
            prefetch(row.states.as_ptr().cast(), size_of_val(row.states.as_slice()));
            prefetch(row.values.as_ptr().cast(), size_of_val(row.values.as_slice()));
            prefetch(key.dims.as_ptr().cast(), size_of_val(key.dims.as_slice()));
        }
        if let Some(&ahead) = places.get(k + MAKE_AHEAD / 4) {
            entry(ahead).1.states.iter().for_each(MeasureState::prefetch);
        }
        made += usize::from(rows.get_index_mut(place).expect("kept").1.make_values());
    }
    made
}

/// Starts loading the row at `place` in `rows`, if there is one (its key and its states'
/// vector), into the cache.
fn prefetch_row(rows: &RowMap, place: usize) {
    if let Some((key, row)) = rows.get_index(place) {
        prefetch((key as *const GroupKey).cast(), size_of::<GroupKey>());
        prefetch((row as *const MergedRow).cast(), size_of::<MergedRow>());
    }
}

/// Writes a row's text in an answer: the serving layer's JSON writer.
pub type Render = Box<dyn FnMut(&GroupKey, &[Value], &mut Vec<u8>) + Send>;

struct RowText(Render);

impl std::fmt::Debug for RowText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowText")
    }
}

/// Rows of one run of a bucket's text (see [`Run`]). An event reaching a row makes its run's
/// text again; small runs keep most of a bucket's text where events reach a few rows of many
/// buckets (late events, under ingest), large ones make fewer pieces for an answer to send
/// (the HTTP layer writes at most 16 pieces a system call: with 32 rows, a 4.8 MB answer took
/// 2.8-3.1 ms to reach a plain socket client, against 1.8-1.9 ms with 128 and 2.0-2.1 ms as
/// one copied buffer; session 24 in `bench/HISTORY.md`). At most 128: see [`Run::stale`].
const BLOCK_ROWS: usize = 128;
const _: () = assert!(BLOCK_ROWS <= 128);

/// The rows of one output bucket.
#[derive(Debug, Default)]
struct Bucket {
    /// The rows' places in `Merged::rows`, in order of their dimension values.
    places: Vec<usize>,
    /// The text of each run of [`BLOCK_ROWS`] rows in `places` (the last may be shorter).
    runs: Vec<Run>,
}

/// The text of a run of rows as an answer writes them, each row's text preceded by a comma,
/// shared with the answers that send it. An answer sends one piece for each run instead of
/// visiting every row (whose scattered texts were most of the idle 30-day query's time:
/// session 22 in `bench/HISTORY.md`); a run some event reached is made again from the text of
/// its other rows, copied in stretches, and the reached rows' texts, written afresh (session
/// 28 in `bench/HISTORY.md`).
#[derive(Debug, Default, Clone)]
struct Run {
    text: Bytes,
    /// Where each row's text (with its comma) ends in `text`.
    ends: Vec<u32>,
    /// The rows (bit `i`: the run's `i`th) an event reached since `text` was made: their
    /// values and text are stale.
    stale: u128,
    /// Whether `text` holds the run's rows: not before it is first made, nor after rows joined
    /// the bucket before or in the run (which moves rows between runs).
    made: bool,
    /// The rows as an answer in another format last encoded them (see [`Merged::encoded`]):
    /// none until first asked, nor after rows joined the bucket before or in the run.
    encoded: Option<Encoded>,
}

/// The rows of a run in a mask of them (bit `i`: the run's `i`th), in order.
fn rows_in(mut mask: u128) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let i = (mask != 0).then(|| mask.trailing_zeros() as usize)?;
        mask &= mask - 1;
        Some(i)
    })
}

/// A run's rows as [`RunEncoder::encode`] wrote them, and since.
#[derive(Debug, Clone)]
struct Encoded {
    bytes: Bytes,
    /// The rows (bit `i`: the run's `i`th) an event reached since they were written: their
    /// measure values in `bytes` are stale.
    stale: u128,
}

/// How answers in another format than JSON (Arrow) write a run of rows (see
/// [`Merged::encoded`]).
pub trait RunEncoder {
    type Error;

    /// The rows, in order, each with its measure values.
    fn encode(&self, rows: &[(&GroupKey, &[Value])]) -> Result<Bytes, Self::Error>;

    /// `encoded` (as [`encode`](Self::encode) wrote some rows) with the measure values of the
    /// rows at `changed` (their index among those rows) replaced by these; `None` when they
    /// cannot be written in place, and the rows are then encoded again. Answers sent earlier
    /// may still hold `encoded`, which must then be left as it is.
    fn patch(&self, encoded: Bytes, changed: &[(usize, &[Value])]) -> Option<Bytes>;
}

/// How many events ahead of the one whose row [`Shape::fold_chunk`] finds it starts loading
/// the row [`Recent`] guesses for that event.
const FIND_AHEAD: usize = 8;

/// Where rows events reached lately lie in [`Merged::rows`], by the hash of their key: a
/// direct-mapped table of guesses, each the upper half of a hash and a place, which a fold
/// checks against the row's key before it trusts it (rows keep their place: see
/// [`Merged::rows`]).
///
/// Finding a row in the map is three loads, each waiting on the one before and most of them
/// cache misses on a shape of many rows (the slot of the map's index table, the index in it,
/// then the row): a fifth of the background rounds' samples at the ingest limit with a
/// dashboard open (session 43 in `bench/HISTORY.md`). A guess is one load from a table far
/// smaller than the rows (about two slots a row, within [`RECENT_SLOTS`]), and tells the row,
/// so the fold can start loading it a few events before it gets there.
#[derive(Debug, Default)]
struct Recent(Vec<u64>);

/// The smallest and largest table of [`Recent`] (8 bytes a slot).
const RECENT_SLOTS: (usize, usize) = (1 << 10, 1 << 15);

impl Recent {
    /// The place of the row last remembered with a hash whose slot and upper half are
    /// `hash`'s, if any: most likely the row with key hash `hash`.
    fn get(&self, hash: u64) -> Option<usize> {
        let slot = *self.0.get(hash as usize & self.0.len().wrapping_sub(1))?;
        let place = slot as u32;
        (place != 0 && slot >> 32 == hash >> 32).then(|| place as usize - 1)
    }

    /// Remembers that the row with key hash `hash` lies at `place`, of `rows` rows.
    fn put(&mut self, hash: u64, place: usize, rows: usize) {
        let Ok(place) = u32::try_from(place + 1) else { return };
        let size = (rows * 2).next_power_of_two().clamp(RECENT_SLOTS.0, RECENT_SLOTS.1);
        if self.0.len() < size {
            self.0 = vec![0; size];
        }
        let at = hash as usize & (self.0.len() - 1);
        self.0[at] = (hash >> 32) << 32 | u64::from(place);
    }
}

#[derive(Debug)]
struct MergedRow {
    states: Vec<MeasureState>,
    /// The states' values, as of the last [`Merged::fresh`] that reached the row; `stale` from
    /// when an event reaches it until the next. Made again in the same buffer: freeing the
    /// values and text on the thread that folds events, which is not the one that made them,
    /// and allocating them again for every row an event reached, was a fifth of a 30-day
    /// answer's time under ingest (session 28 in `bench/HISTORY.md`). The row's text is kept
    /// in its run's (see [`Run`]).
    values: Vec<Value>,
    stale: bool,
    /// Its index in its bucket's `places`.
    slot: usize,
}

impl MergedRow {
    fn new(states: Vec<MeasureState>) -> MergedRow {
        MergedRow { states, values: Vec::new(), stale: true, slot: 0 }
    }

    /// Marks the values stale, after the states changed; whether they were fresh (if not,
    /// the row's run knows it already).
    fn changed(&mut self) -> bool {
        !std::mem::replace(&mut self.stale, true)
    }

    /// Makes the values again if stale; whether they were.
    fn make_values(&mut self) -> bool {
        let stale = std::mem::replace(&mut self.stale, false);
        if stale {
            self.values.clear();
            self.values.extend(self.states.iter().map(MeasureState::value));
        }
        stale
    }
}

impl Merged {
    /// The rows of `folded` (already keyed by the shape).
    pub fn from_groups(folded: Groups) -> Merged {
        let mut rows: IndexMap<_, _, _> =
            folded.into_iter().map(|(key, states)| (key, MergedRow::new(states))).collect();
        let mut buckets: BTreeMap<i64, Bucket> = BTreeMap::new();
        for (place, key) in rows.keys().enumerate() {
            buckets.entry(key.bucket).or_default().places.push(place);
        }
        for bucket in buckets.values_mut() {
            bucket
                .places
                .sort_unstable_by(|&a, &b| rows.get_index(a).unwrap().0.total_cmp(rows.get_index(b).unwrap().0));
            bucket.placed(&mut rows, 0);
        }
        Merged { rows, buckets, made: 0, made_behind: None, render: None, recent: Recent::default() }
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    /// Adds a row not kept yet, in its place in the order.
    fn insert(&mut self, key: GroupKey, row: MergedRow) {
        let bucket = key.bucket;
        let (place, _) = self.rows.insert_full(key, row);
        let key = self.rows.get_index(place).expect("just inserted").0;
        let bucket = self.buckets.entry(bucket).or_default();
        let at = bucket.places.partition_point(|&p| self.rows.get_index(p).expect("kept").0.total_cmp(key).is_lt());
        bucket.places.insert(at, place);
        bucket.placed(&mut self.rows, at);
    }

    /// Folds the events of `chunks` into these rows (of `shape`): straight into the rows
    /// kept already, and into rows of their own for the others, which then join these in
    /// their places in the order once.
    fn fold_chunks<'c>(&mut self, view: &CompiledView, shape: &Shape, chunks: impl IntoIterator<Item = &'c Chunk>) {
        let mut fresh = Groups::default();
        for chunk in chunks {
            shape.fold_chunk(view, self, &mut fresh, chunk);
        }
        for (key, states) in fresh {
            self.insert(key, MergedRow::new(states));
        }
    }

    /// Keeps how answers write a row's text (`make`'s, unless one is kept already): one
    /// render for every text of these rows, whether an answer or a background round makes it.
    pub fn keep_render(&mut self, make: impl FnOnce() -> Render) {
        self.render.get_or_insert_with(|| RowText(make()));
    }

    /// Makes the values and text of the rows events reached, as an answer would; returns
    /// how many rows. Nothing before an answer kept its render. A background round does it
    /// right after folding the events, whose states are then still in its core's cache, so
    /// that a query finds most rows made.
    fn make_behind(&mut self) -> usize {
        if self.render.is_none() {
            return 0;
        }
        self.made_behind = Some(Instant::now());
        self.fresh(|_| true);
        self.made
    }

    /// The rows of the output buckets `keep` accepts, to be read: each row an event reached
    /// since it was last read has its values made again, and each run of rows (see [`Run`])
    /// its text, the text of each such row written with the kept render (see
    /// [`keep_render`](Self::keep_render), which must have been called).
    pub fn fresh<K: Fn(i64) -> bool>(&mut self, keep: K) -> Fresh<'_, K> {
        // first the values of the rows whose text is made again below, all in one pass
        self.made = self.make_stale_values(&keep);
        let Merged { rows, buckets, render, .. } = &mut *self;
        let render = &mut render.as_mut().expect("an answer keeps its render before reading rows").0;
        // where a run with no text yet is written, to be kept at its size (grown row by row,
        // a run's text moved several times and took fresh pages for each size: session 25 in
        // `bench/HISTORY.md`)
        let mut scratch = Vec::new();
        for bucket in buckets.iter_mut().filter(|(start, _)| keep(**start)).map(|(_, b)| b) {
            for (run, places) in bucket.runs.iter_mut().zip(bucket.places.chunks(BLOCK_ROWS)) {
                if run.made && run.stale == 0 {
                    continue;
                }
                let mut write = |i: usize, text: &mut Vec<u8>| {
                    let (key, row) = rows.get_index(places[i]).expect("kept");
                    debug_assert!(!row.stale, "made above");
                    text.push(b',');
                    render(key, &row.values, text);
                };
                let mut ends = Vec::with_capacity(places.len());
                let text: Bytes = if run.made {
                    // the rows no event reached are copied, in stretches between those reached
                    // (room for each reached row to grow by a few characters: a Vec grown past
                    // its capacity would keep twice the run's size)
                    let room = 16 * run.stale.count_ones() as usize;
                    let (old, mut text) = (&run.text, Vec::with_capacity(run.text.len() + room));
                    let (mut copied, mut grown) = (0, 0_i64);
                    for (i, &end) in run.ends.iter().enumerate() {
                        if run.stale & (1 << i) != 0 {
                            let start = if i == 0 { 0 } else { run.ends[i - 1] as usize };
                            text.extend_from_slice(&old[copied..start]);
                            write(i, &mut text);
                            copied = end as usize;
                            grown = text.len() as i64 - end as i64;
                        }
                        ends.push((end as i64 + grown) as u32);
                    }
                    text.extend_from_slice(&old[copied..]);
                    text.into()
                } else {
                    scratch.clear();
                    for i in 0..places.len() {
                        write(i, &mut scratch);
                        ends.push(scratch.len() as u32);
                    }
                    Bytes::copy_from_slice(&scratch)
                };
                // (an encoding is kept: it knows which rows it has stale, see `reached`)
                (run.text, run.ends, run.stale, run.made) = (text, ends, 0, true);
            }
        }
        Fresh { merged: self, keep }
    }

    /// Makes the values of the rows of the output buckets `keep` accepts whose text is to be
    /// made again (see [`Run`]), all in one pass (see `make_values`); returns how many were
    /// stale.
    fn make_stale_values(&mut self, keep: impl Fn(i64) -> bool) -> usize {
        let mut again = Vec::new();
        for bucket in self.buckets.iter().filter(|(start, _)| keep(**start)).map(|(_, b)| b) {
            for (run, places) in bucket.runs.iter().zip(bucket.places.chunks(BLOCK_ROWS)) {
                if !run.made {
                    again.extend_from_slice(places);
                    continue;
                }
                again.extend(rows_in(run.stale).map(|i| places[i]));
            }
        }
        make_values(&mut self.rows, &again)
    }

    /// Each run of rows (see [`Run`]) of the output buckets `keep` accepts, in order, with
    /// its bucket's start, as `encoder` writes the run's rows. A run's encoding is kept with
    /// it until rows join the bucket before or in it, so that an answer in another format
    /// than JSON (Arrow) writes only what changed since it was last asked, as a JSON answer
    /// does: encoding the bench's 30-day answer row by row took 6-19 ms, against 3 ms to send
    /// its JSON from the kept text (session 48 in `bench/HISTORY.md`). The rows an event
    /// reached since are written into the kept encoding in place when the encoder can
    /// ([`RunEncoder::patch`]): under ingest, whose late events reach most runs between two
    /// answers, encoding every run reached again took the 30-day answer 5.9 ms at the
    /// median, and patching 2.9 (session 49 in `bench/HISTORY.md`). Makes the values of the
    /// rows events reached, not their text (which a JSON answer, or a background round, makes
    /// when it needs it). Use the same encoder for all answers of a shape.
    pub fn encoded<R: RunEncoder>(
        &mut self,
        keep: impl Fn(i64) -> bool,
        encoder: &R,
    ) -> Result<Vec<(i64, Bytes)>, R::Error> {
        self.made = self.make_stale_values(&keep);
        let Merged { rows, buckets, .. } = self;
        let values = |place: usize| {
            let row = rows.get_index(place).expect("kept").1;
            debug_assert!(!row.stale, "made above");
            row.values.as_slice()
        };
        let mut blocks = Vec::new();
        for (&start, bucket) in buckets.iter_mut().filter(|(start, _)| keep(**start)) {
            for (run, places) in bucket.runs.iter_mut().zip(bucket.places.chunks(BLOCK_ROWS)) {
                let patched = match run.encoded.take() {
                    Some(Encoded { bytes, stale: 0 }) => Some(bytes),
                    Some(Encoded { bytes, stale }) => {
                        let changed: Vec<_> = rows_in(stale).map(|i| (i, values(places[i]))).collect();
                        encoder.patch(bytes, &changed)
                    }
                    None => None,
                };
                let bytes = match patched {
                    Some(bytes) => bytes,
                    None => {
                        let run_rows: Vec<(&GroupKey, &[Value])> = places
                            .iter()
                            .enumerate()
                            .map(|(i, &place)| {
                                if let Some(&ahead) = places.get(i + MAKE_AHEAD) {
                                    prefetch_row(rows, ahead);
                                }
                                (rows.get_index(place).expect("kept").0, values(place))
                            })
                            .collect();
                        encoder.encode(&run_rows)?
                    }
                };
                run.encoded = Some(Encoded { bytes: bytes.clone(), stale: 0 });
                blocks.push((start, bytes));
            }
        }
        Ok(blocks)
    }
}

#[cfg(test)]
impl Merged {
    /// Every row's key and values (from its states), in order.
    pub(crate) fn values(&self) -> Vec<(GroupKey, Vec<Value>)> {
        let places = self.buckets.values().flat_map(|bucket| &bucket.places);
        places
            .map(|&place| {
                let (key, row) = self.rows.get_index(place).expect("kept");
                (key.clone(), row.states.iter().map(MeasureState::value).collect())
            })
            .collect()
    }
}

/// The rows of some output buckets with their values and text made (see [`Merged::fresh`]).
pub struct Fresh<'a, K> {
    merged: &'a Merged,
    keep: K,
}

impl<'a, K: Fn(i64) -> bool> Fresh<'a, K> {
    /// Each row, in order of bucket then dimension values, with its measure values and its
    /// text in an answer.
    pub fn rows(&self) -> impl Iterator<Item = (&'a GroupKey, &'a [Value], &'a [u8])> + '_ {
        self.buckets().flat_map(|bucket| bucket.rows())
    }

    /// The output buckets, in order, each with its rows.
    pub fn buckets(&self) -> impl Iterator<Item = BucketRows<'a>> + '_ {
        let merged = self.merged;
        merged.buckets.iter().filter(|(start, _)| (self.keep)(**start)).map(move |(&start, bucket)| BucketRows {
            start,
            merged,
            bucket,
        })
    }
}

impl Bucket {
    /// After the rows from `places[from]` on moved: tells them their slots, and forgets the
    /// texts of the runs they are in.
    fn placed(&mut self, rows: &mut RowMap, from: usize) {
        for (slot, &place) in self.places.iter().enumerate().skip(from) {
            rows.get_index_mut(place).expect("kept").1.slot = slot;
        }
        self.runs.truncate(from / BLOCK_ROWS);
        self.runs.resize(self.places.len().div_ceil(BLOCK_ROWS), Run::default());
    }

    /// After an event reached the row at `slot`, whose values were fresh.
    fn reached(&mut self, slot: usize) {
        let run = &mut self.runs[slot / BLOCK_ROWS];
        let bit = 1 << (slot % BLOCK_ROWS);
        run.stale |= bit;
        if let Some(encoded) = &mut run.encoded {
            encoded.stale |= bit;
        }
    }
}

/// One output bucket's rows (see [`Fresh::buckets`]).
pub struct BucketRows<'a> {
    pub start: i64,
    merged: &'a Merged,
    bucket: &'a Bucket,
}

impl<'a> BucketRows<'a> {
    /// The rows in order of dimension values, with their measure values and their text in
    /// an answer.
    pub fn rows(&self) -> impl Iterator<Item = (&'a GroupKey, &'a [Value], &'a [u8])> + use<'a> {
        let rows = &self.merged.rows;
        let texts = self.bucket.runs.iter().flat_map(|run| {
            let starts = std::iter::once(0).chain(run.ends.iter().map(|&end| end as usize));
            starts.zip(&run.ends).map(|(start, &end)| &run.text[start + 1..end as usize])
        });
        let places = &self.bucket.places;
        places.iter().enumerate().zip(texts).map(move |((i, &place), text)| {
            // the rows of a bucket lie all over the map: load those ahead (as `make_values`)
            if let Some(&ahead) = places.get(i + MAKE_AHEAD) {
                prefetch_row(rows, ahead);
            }
            if let Some(&ahead) = places.get(i + MAKE_AHEAD / 2) {
                let values = &rows.get_index(ahead).expect("kept").1.values;
                prefetch(values.as_ptr().cast(), size_of_val(values.as_slice()));
            }
            let (key, row) = rows.get_index(place).expect("kept");
            debug_assert!(!row.stale, "rows are read fresh");
            (key, row.values.as_slice(), text)
        })
    }

    /// The text of its rows in runs of [`BLOCK_ROWS`], each row's text preceded by a comma;
    /// each run's kept until an event reaches one of its rows.
    pub fn blocks(&self) -> impl Iterator<Item = &'a Bytes> + use<'a> {
        self.bucket.runs.iter().map(|run| &run.text)
    }
}

/// Shapes kept at most, per view; together they hold at most a budget of rows given by the
/// caller (least recently used go first).
const SHAPES_PER_VIEW: usize = 32;

/// A shape's rows over the batch version alone (its *base*) are kept for a rebuild when the
/// version has at least this many groups per base row (copying a base is then far cheaper
/// than folding the version again: the bench's 24 h shape has 2.9-3.7 k rows from 31-45 k
/// groups at 3 M events); all bases together hold no more rows than the version has groups
/// (least recently used go first).
const BASE_REDUCTION: usize = 8;

/// The kept shapes of one view, all merging the same batch version. Locked only to find a
/// shape, queue events and keep or drop shapes; each shape's rows have a lock of their own,
/// so a query answering from one shape (30 days of rows take tens of milliseconds to write)
/// holds up neither the queries of other shapes nor the background rounds.
#[derive(Debug)]
pub struct Shapes {
    /// The batch version they merge (0: none).
    pub(crate) version: i64,
    kept: LruCache<Shape, Entry>,
    /// Rows all kept shapes may hold together (the latest given to [`keep`](Self::keep)).
    budget: usize,
    /// Thread CPU time spent in background rounds since `window` began, and the events they
    /// queued for the kept shapes.
    busy: Duration,
    busy_events: usize,
    /// Rows they made ahead of the queries, values and text (see [`Merged::make_behind`]).
    busy_values: usize,
    window: Instant,
    /// Bases of shapes asked for since `version` was installed, whether or not the shapes
    /// themselves are still kept (see [`keep_base`](Self::keep_base)): a shape dropped by the
    /// bounds on background work is rebuilt from its base and the speed layer, instead of
    /// folding every group of the version again (170-600 ms over 50 M events, and under
    /// ingest the background bound drops shapes every few seconds: session 19).
    bases: LruCache<Shape, Arc<Groups>>,
}

#[derive(Debug)]
struct Entry {
    kept: Arc<Kept>,
    /// When a query last asked for it.
    asked: Instant,
}

/// One kept shape: its rows, and the events queued for it that it has not folded yet.
#[derive(Debug, Default)]
pub struct Kept {
    merged: Mutex<Merged>,
    inbox: Mutex<Inbox>,
    /// Rows in `merged` (readable without its lock, for the row budget).
    rows: AtomicUsize,
    /// Thread CPU time (µs) the background rounds spent on it since their window began, for
    /// the window's debug line (see [`Shapes::spent`]).
    rounds_us: AtomicU64,
}

#[derive(Debug, Default)]
struct Inbox {
    chunks: Vec<Arc<Chunk>>,
    rows: usize,
}

impl Kept {
    /// The shape's rows, locked; [`catch_up`](Self::catch_up) them before reading.
    pub fn lock(&self) -> MutexGuard<'_, Merged> {
        self.merged.lock()
    }

    /// Folds the queued events into `merged` (this shape's rows, locked). An event reaching a
    /// kept row is folded straight into it. (Until session 20 every event went into rows of
    /// the catch-up's own first, merged into the kept ones once per catch-up, so that each
    /// kept row was reached once per catch-up rather than once per event; but making, merging
    /// and freeing those rows' sketch states was about a third of the background rounds'
    /// time: see `bench/HISTORY.md`, session 20.)
    pub fn catch_up(&self, view: &CompiledView, shape: &Shape, merged: &mut Merged) {
        let inbox = std::mem::take(&mut *self.inbox.lock());
        merged.fold_chunks(view, shape, inbox.chunks.iter().map(|c| &**c));
        self.rows.store(merged.len(), Ordering::Relaxed);
    }

    /// [`catch_up`](Self::catch_up), unless the rows are locked (being answered from): then
    /// the events stay queued for the next round or query. Then, if `make_behind`, makes the
    /// values and text of the rows events reached (see [`Merged::make_behind`]); returns how
    /// many rows.
    pub fn try_catch_up(&self, view: &CompiledView, shape: &Shape, make_behind: bool) -> usize {
        let Some(mut merged) = self.merged.try_lock() else { return 0 };
        let cpu = thread_cpu_time();
        self.catch_up(view, shape, &mut merged);
        let made = if !make_behind || merged.made_behind.is_some_and(|at| at.elapsed() < MAKE_BEHIND_EVERY) {
            0
        } else {
            merged.make_behind()
        };
        let spent = thread_cpu_time().saturating_sub(cpu);
        self.rounds_us.fetch_add(spent.as_micros() as u64, Ordering::Relaxed);
        made
    }
}

impl Default for Shapes {
    fn default() -> Self {
        Shapes {
            version: 0,
            kept: LruCache::new(NonZeroUsize::new(SHAPES_PER_VIEW).expect("not zero")),
            budget: usize::MAX,
            busy: Duration::ZERO,
            busy_events: 0,
            busy_values: 0,
            window: Instant::now(),
            bases: LruCache::new(NonZeroUsize::new(SHAPES_PER_VIEW).expect("not zero")),
        }
    }
}

impl Shapes {
    /// Forgets every shape; they will merge `version` from now on.
    pub fn reset(&mut self, version: i64) {
        self.kept.clear();
        if version != self.version {
            self.bases.clear();
        }
        self.version = version;
    }

    /// The base of `shape` (its rows over the batch version alone), if kept.
    pub fn base(&mut self, shape: &Shape) -> Option<Arc<Groups>> {
        self.bases.get(shape).cloned()
    }

    /// Keeps `base`, the rows of `shape` over batch version `version` (of `groups` groups),
    /// if the shapes still merge that version and it folds at least [`BASE_REDUCTION`]
    /// groups into each row (a shape with about as many rows as the version has groups
    /// costs as much to copy as to fold again); drops the least recently used bases while
    /// all of them hold more rows than `groups`.
    pub fn keep_base(&mut self, version: i64, shape: &Shape, base: &Arc<Groups>, groups: usize) {
        let kept = version == self.version && base.len().saturating_mul(BASE_REDUCTION) <= groups;
        tracing::debug!(?shape, version, rows = base.len(), groups, kept, "a shape's base");
        if kept {
            self.bases.put(shape.clone(), base.clone());
            while self.bases.iter().map(|(_, b)| b.len()).sum::<usize>() > groups {
                self.bases.pop_lru();
            }
        }
    }

    /// Queues events for every kept shape. A shape with more than `max_queued` events
    /// waiting (its rows were locked for that long) is dropped; it is built again when asked.
    /// Returns how many events the chunks hold.
    pub fn push(&mut self, chunks: Vec<Chunk>, max_queued: usize) -> usize {
        let chunks: Vec<Arc<Chunk>> = chunks.into_iter().filter(|c| c.len() > 0).map(Arc::new).collect();
        if chunks.is_empty() {
            return 0;
        }
        let rows: usize = chunks.iter().map(|c| c.len()).sum();
        let mut lagging = Vec::new();
        for (shape, entry) in self.kept.iter() {
            let mut inbox = entry.kept.inbox.lock();
            inbox.chunks.extend(chunks.iter().cloned());
            inbox.rows += rows;
            if inbox.rows > max_queued {
                lagging.push(shape.clone());
            }
        }
        lagging.iter().for_each(|shape| drop(self.kept.pop(shape)));
        rows
    }

    /// Whether `shape` is kept (without asking for it).
    pub fn contains(&self, shape: &Shape) -> bool {
        self.kept.contains(shape)
    }

    /// The rows `shape` holds and the events queued for it, if kept (without asking for it)
    /// and its rows are not locked right now (being caught up or answered from).
    pub fn idle_size(&self, shape: &Shape) -> Option<(usize, usize)> {
        let entry = self.kept.peek(shape)?;
        if entry.kept.merged.is_locked() {
            return None;
        }
        let queued = entry.kept.inbox.lock().rows;
        Some((entry.kept.rows.load(Ordering::Relaxed), queued))
    }

    /// The kept shape `shape`, asked for by a query.
    pub fn get(&mut self, shape: &Shape) -> Option<Arc<Kept>> {
        let entry = self.kept.get_mut(shape)?;
        entry.asked = Instant::now();
        let kept = entry.kept.clone();
        self.fit();
        Some(kept)
    }

    /// Keeps a new, empty shape; all shapes together may hold `budget` rows. The caller
    /// fills it (see [`Kept::lock`]) before anyone else can: lock it before releasing `self`.
    pub fn keep(&mut self, shape: Shape, budget: usize) -> Arc<Kept> {
        let kept = Arc::new(Kept::default());
        self.kept.put(shape, Entry { kept: kept.clone(), asked: Instant::now() });
        self.budget = budget;
        self.fit();
        kept
    }

    /// Drops the least recently used shapes while all of them hold more rows than the
    /// budget (the most recently used always stays). A shape is counted once it has been
    /// filled, so one kept just now counts from the next call.
    fn fit(&mut self) {
        let rows = |kept: &LruCache<Shape, Entry>| {
            kept.iter().map(|(_, e)| e.kept.rows.load(Ordering::Relaxed)).sum::<usize>()
        };
        while self.kept.len() > 1 && rows(&self.kept) > self.budget {
            self.kept.pop_lru();
        }
    }

    /// Drops `shape` as the bounds on background work would.
    #[cfg(test)]
    pub(crate) fn forget(&mut self, shape: &Shape) {
        self.kept.pop(shape);
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Events queued for the kept shapes and not folded yet, all shapes together.
    #[cfg(test)]
    pub(crate) fn queued_rows(&self) -> usize {
        self.kept.iter().map(|(_, e)| e.kept.inbox.lock().rows).sum()
    }

    /// The shapes a background round brings up to date, after dropping those nobody asked
    /// for in [`SHAPES_IDLE`].
    pub fn for_round(&mut self) -> Vec<(Shape, Arc<Kept>)> {
        let idle: Vec<Shape> =
            self.kept.iter().filter(|(_, e)| e.asked.elapsed() > SHAPES_IDLE).map(|(s, _)| s.clone()).collect();
        idle.iter().for_each(|shape| drop(self.kept.pop(shape)));
        self.fit();
        self.kept.iter().map(|(shape, e)| (shape.clone(), e.kept.clone())).collect()
    }

    /// Whether the rounds may make the reached rows' values and text (see
    /// [`Kept::try_catch_up`]): only while they have kept a core less than
    /// [`MAKE_BEHIND_SHARE`] busy in the current window. Folding the events must be done, making
    /// rows ahead of the queries need not: it is left to the queries before it could push the
    /// rounds over [`MAX_BUSY_SHARE`] and drop a shape.
    pub fn may_make_behind(&self) -> bool {
        self.busy.as_secs_f64() <= MAKE_BEHIND_SHARE * self.window.elapsed().as_secs_f64()
    }

    /// Counts a background round's thread CPU time and the events it queued; the window's
    /// debug line also gives each shape's share (see [`Kept::try_catch_up`]). When the rounds
    /// of the last [`BUSY_WINDOW`] kept a core more than [`MAX_BUSY_SHARE`] busy, a shape is
    /// dropped (one always stays): the least recently asked of those whose base is kept, else
    /// the least recently asked. A shape with a base is built again in milliseconds; the 30-day
    /// shape, which keeps none (too many rows for the version's groups: see
    /// [`keep_base`](Self::keep_base)), took 114-490 ms to build again at the ingest limit,
    /// where the rounds go over their bound in every window (session 40 in `bench/HISTORY.md`).
    pub fn spent(&mut self, view: &str, cpu: Duration, events: usize, values_made: usize) {
        self.busy += cpu;
        self.busy_events += events;
        self.busy_values += values_made;
        let window = self.window.elapsed();
        if window < BUSY_WINDOW {
            return;
        }
        let (busy_ms, events, shapes) = (self.busy.as_millis() as u64, self.busy_events, self.kept.len());
        // what keeping the shapes costs, for `TANDEM_LOG=tandem_speed=debug`
        let window_ms = window.as_millis() as u64;
        let each_ms: Vec<(Granularity, &[usize], u64)> = self
            .kept
            .iter()
            .map(|(s, e)| (s.granularity, s.group.as_slice(), e.kept.rounds_us.swap(0, Ordering::Relaxed) / 1000))
            .collect();
        tracing::debug!(
            view,
            busy_ms,
            window_ms,
            events,
            values_made = self.busy_values,
            shapes,
            ?each_ms,
            "background rounds"
        );
        if self.busy.as_secs_f64() > MAX_BUSY_SHARE * window.as_secs_f64() && self.kept.len() > 1 {
            let dropped = self.cheapest_to_build_again();
            if let Some(shape) = &dropped {
                self.kept.pop(shape);
            }
            tracing::debug!(view, ?dropped, busy_ms, "kept shapes cost too much to keep up; dropped one");
        }
        (self.busy, self.busy_events, self.busy_values, self.window) = (Duration::ZERO, 0, 0, Instant::now());
    }

    /// The shape the rounds' bound drops (see [`spent`](Self::spent)).
    fn cheapest_to_build_again(&self) -> Option<Shape> {
        let least_recent_first = || self.kept.iter().rev().map(|(shape, _)| shape);
        least_recent_first().find(|shape| self.bases.contains(*shape)).or(least_recent_first().next()).cloned()
    }
}

/// CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_model::agg::Dims;

    /// Keeps `shape` with `rows` rows, as a query building it does.
    fn keep(shapes: &mut Shapes, shape: &Shape, rows: i64, budget: usize) {
        let kept = shapes.keep(shape.clone(), budget);
        let mut merged = kept.lock();
        *merged = Merged::from_groups((0..rows).map(|b| (GroupKey { bucket: b, dims: Dims::new() }, vec![])).collect());
        kept.catch_up(&view(), shape, &mut merged);
    }

    #[test]
    fn kept_shapes_stay_within_their_row_budget() {
        let shape = |g| Shape::new(g, vec![], vec![], vec![0]);
        let mut shapes = Shapes::default();
        keep(&mut shapes, &shape(Granularity::Hour), 600, 1000);
        keep(&mut shapes, &shape(Granularity::Day), 300, 1000);
        assert!(shapes.get(&shape(Granularity::Hour)).is_some(), "900 rows fit");
        assert!(shapes.contains(&shape(Granularity::Day)));
        // the hour shape was used last but for the new one: the day shape goes first
        keep(&mut shapes, &shape(Granularity::All), 200, 1000);
        assert!(shapes.get(&shape(Granularity::All)).is_some());
        assert!(!shapes.contains(&shape(Granularity::Day)));
        assert!(shapes.contains(&shape(Granularity::Hour)));
        // a shape over the budget on its own is still kept, alone
        keep(&mut shapes, &shape(Granularity::Minute), 5000, 1000);
        assert!(shapes.get(&shape(Granularity::Minute)).is_some());
        assert_eq!(shapes.kept.len(), 1);
    }

    #[test]
    fn the_rounds_bound_drops_a_shape_with_a_base_first() {
        let shape = |g: Granularity| Shape::new(g, vec![0], vec![], vec![0]);
        let mut shapes = Shapes::default();
        shapes.reset(1);
        for g in [Granularity::Day, Granularity::Hour, Granularity::All] {
            keep(&mut shapes, &shape(g), 10, 1000);
        }
        let few = Arc::new(Groups::default());
        shapes.keep_base(1, &shape(Granularity::Hour), &few, 100);
        shapes.keep_base(1, &shape(Granularity::All), &few, 100);
        let over_the_bound = |shapes: &mut Shapes| {
            shapes.window = Instant::now() - BUSY_WINDOW;
            shapes.spent("v", BUSY_WINDOW, 1, 0);
        };
        // day was asked least recently but has no base: hour goes, then all; day stays alone
        over_the_bound(&mut shapes);
        assert!(!shapes.contains(&shape(Granularity::Hour)));
        assert!(shapes.contains(&shape(Granularity::Day)) && shapes.contains(&shape(Granularity::All)));
        over_the_bound(&mut shapes);
        assert!(!shapes.contains(&shape(Granularity::All)));
        // one shape always stays
        over_the_bound(&mut shapes);
        assert!(shapes.contains(&shape(Granularity::Day)));
        // within the bound nothing goes
        keep(&mut shapes, &shape(Granularity::Hour), 10, 1000);
        shapes.window = Instant::now() - BUSY_WINDOW;
        shapes.spent("v", BUSY_WINDOW / 4, 1, 0);
        assert_eq!(shapes.kept.len(), 2);
        // without bases, the least recently asked goes
        shapes.reset(2);
        keep(&mut shapes, &shape(Granularity::Day), 10, 1000);
        keep(&mut shapes, &shape(Granularity::Hour), 10, 1000);
        over_the_bound(&mut shapes);
        assert!(!shapes.contains(&shape(Granularity::Day)) && shapes.contains(&shape(Granularity::Hour)));
    }

    #[test]
    fn bases_are_kept_for_shapes_far_smaller_than_the_version_within_its_groups() {
        let shape = |dim: usize| Shape::new(Granularity::Hour, vec![dim], vec![], vec![0]);
        let rows =
            |n: i64| Arc::new((0..n).map(|b| (GroupKey { bucket: b, dims: Dims::new() }, vec![])).collect::<Groups>());
        let mut shapes = Shapes::default();
        shapes.reset(1);
        shapes.keep_base(1, &shape(0), &rows(13), 100);
        assert!(shapes.base(&shape(0)).is_none(), "more than an eighth of the version's groups");
        shapes.keep_base(2, &shape(0), &rows(12), 100);
        assert!(shapes.base(&shape(0)).is_none(), "not the version the shapes merge");
        for dim in 0..8 {
            shapes.keep_base(1, &shape(dim), &rows(12), 100);
        }
        assert!(shapes.base(&shape(0)).is_some(), "96 rows for 100 groups");
        // a ninth: 108 rows, so the least recently used goes (not 0, just asked for)
        shapes.keep_base(1, &shape(8), &rows(12), 100);
        assert!(shapes.base(&shape(1)).is_none());
        assert!((0..9).filter(|&d| d != 1).all(|d| shapes.base(&shape(d)).is_some()));
        // a new version forgets them all; the same one keeps them
        shapes.reset(1);
        assert!(shapes.base(&shape(0)).is_some());
        shapes.reset(2);
        assert!(shapes.base(&shape(0)).is_none());
    }

    const HOUR: i64 = 3_600_000_000;

    /// Hourly groups by `k`, counting events and summing and counting the distinct `n`s of
    /// those with `n >= 0` (the mask of a chunk plays the view's filter).
    fn view() -> CompiledView {
        let d: tandem_model::DatasetSpec = serde_json::from_str(
            r#"{"name":"d","time_field":"ts","fields":{"ts":"timestamp","k":"string","n":"int64"}}"#,
        )
        .unwrap();
        let v: tandem_model::ViewSpec = serde_json::from_str(
            r#"{"name":"v","dataset":"d","granularity":"hour","dimensions":["k"],
                "measures":{"c":"count","s":"sum(n)","u":"approx_distinct(n)"}}"#,
        )
        .unwrap();
        v.compile(&d).unwrap()
    }

    /// Events (fields in name order: k, n, ts) from `(k, n, minute)`, past `from`, masked to
    /// those with `n >= 0`.
    fn chunk(events: &[(&str, i64, i64)], from: usize) -> Chunk {
        let rows: Vec<Row> = events
            .iter()
            .map(|(k, n, minute)| {
                vec![Value::String((*k).into()), Value::Int(*n), Value::Timestamp(minute * 60_000_000)]
            })
            .collect();
        let mask = rows[from..].iter().map(|r| matches!(r[1], Value::Int(n) if n >= 0)).collect();
        Chunk { rows: Arc::new(rows), from, mask: Some(mask) }
    }

    /// A shape's rows: bucket, dimension values and measure values, which must come in
    /// order of bucket and dimension values.
    fn answer(merged: &Merged) -> Vec<(i64, Vec<Value>, Vec<Value>)> {
        let rows: Vec<_> = merged.values().into_iter().map(|(k, v)| (k.bucket, k.dims.into_vec(), v)).collect();
        let mut sorted = rows.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| format!("{:?}", a.1).cmp(&format!("{:?}", b.1))));
        assert_eq!(rows, sorted, "rows in answer order");
        rows
    }

    /// The shape's rows folded the other way: every kept event into the view's groups
    /// (as the speed layer does), then the groups through the shape (as a build does).
    fn through_groups(view: &CompiledView, shape: &Shape, chunks: &[&Chunk]) -> Vec<(i64, Vec<Value>, Vec<Value>)> {
        let mut groups = Groups::default();
        chunks.iter().flat_map(|c| c.events()).for_each(|row| tandem_model::agg::fold_row(view, &mut groups, row));
        let mut folded = Groups::default();
        shape.fold((None, None), &groups, &mut folded);
        answer(&Merged::from_groups(folded))
    }

    #[test]
    fn folding_events_into_a_shape_equals_folding_them_into_groups_first() {
        let view = view();
        let events: Vec<(&str, i64, i64)> =
            (0..400).map(|i| (["a", "b", "c"][i as usize % 3], (i * 37) % 101 - 20, (i * 13) % 3000)).collect();
        let (first, second) = (chunk(&events[..250], 40), chunk(&events[250..], 0));
        let by = |g, group: Vec<usize>, filters: Vec<(usize, Vec<Value>)>, measures: Vec<usize>| {
            Shape::new(g, group, filters, measures)
        };
        for shape in [
            by(Granularity::Hour, vec![0], vec![], vec![0, 1, 2]),
            by(Granularity::Day, vec![], vec![], vec![2, 0]),
            by(
                Granularity::All,
                vec![0],
                vec![(0, vec![Value::String("c".into()), Value::String("a".into())])],
                vec![1],
            ),
            by(Granularity::Hour, vec![], vec![(0, vec![Value::String("b".into())])], vec![0, 2]),
        ] {
            // the first chunk makes rows, the second reaches them and makes more
            let mut merged = Merged::default();
            for chunk in [&first, &second] {
                merged.fold_chunks(&view, &shape, [chunk]);
            }
            let expected = through_groups(&view, &shape, &[&first, &second]);
            assert!(expected.len() > 1, "{shape:?} answers several rows");
            assert_eq!(answer(&merged), expected, "{shape:?}");
        }
    }

    #[test]
    fn a_wrong_guess_of_a_rows_place_is_never_trusted() {
        let view = view();
        let events: Vec<(&str, i64, i64)> =
            (0..300).map(|i| (["a", "b", "c", "d"][i as usize % 4], i % 50, (i * 7) % 600)).collect();
        let (first, second) = (chunk(&events[..150], 0), chunk(&events[150..], 0));
        let shape = Shape::new(Granularity::Hour, vec![0], vec![], vec![0, 1, 2]);
        let mut merged = Merged::default();
        merged.fold_chunks(&view, &shape, [&first]);
        // every row's guess names the place of the row after it
        let rows = merged.rows.len();
        assert!(rows > 4, "several rows");
        for place in 0..rows {
            let hash = merged.rows.hasher().hash_one(merged.rows.get_index(place).unwrap().0 as &dyn KeyParts);
            merged.recent.put(hash, (place + 1) % rows, rows);
            assert_eq!(merged.recent.get(hash), Some((place + 1) % rows));
        }
        merged.fold_chunks(&view, &shape, [&second]);
        assert_eq!(answer(&merged), through_groups(&view, &shape, &[&first, &second]));
    }

    /// Writes a row's text as these tests expect it.
    fn write(key: &GroupKey, values: &[Value], out: &mut Vec<u8>) {
        out.extend_from_slice(format!("{:?}={values:?}", key.dims).as_bytes());
    }

    /// A writer for rows whose text is kept: it must not be called.
    fn unused(_: &GroupKey, _: &[Value], _: &mut Vec<u8>) {
        panic!("a kept text was made again")
    }

    /// Each bucket's text, its blocks joined without the comma before the first row, for
    /// the buckets `keep` accepts, made fresh with `write` (kept as the rows' render in place
    /// of any other).
    fn texts(
        merged: &mut Merged,
        keep: impl Fn(i64) -> bool,
        write: impl FnMut(&GroupKey, &[Value], &mut Vec<u8>) + Send + 'static,
    ) -> Vec<String> {
        merged.render = Some(RowText(Box::new(write)));
        let fresh = merged.fresh(keep);
        fresh
            .buckets()
            .map(|bucket| {
                let text: Vec<u8> = bucket.blocks().flat_map(|b| b.to_vec()).collect();
                let rows: Vec<u8> = bucket.rows().flat_map(|(_, _, text)| [b",", text].concat()).collect();
                assert_eq!(text, rows, "each row's text follows a comma, in order");
                String::from_utf8(text.get(1..).unwrap_or_default().to_vec()).unwrap()
            })
            .collect()
    }

    /// Each bucket's text as `answer` reads its rows, written independently of their runs.
    fn expected(merged: &Merged) -> Vec<String> {
        let mut texts: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for (bucket, dims, values) in answer(merged) {
            texts.entry(bucket).or_default().push(format!("{dims:?}={values:?}"));
        }
        texts.into_values().map(|t| t.join(",")).collect()
    }

    /// A bucket's text is its rows' texts in order, comma-separated; it is kept while no
    /// event reaches its rows, and made again, from its rows' texts, once one does or a row
    /// joins it; only the rows an event reached are made again.
    #[test]
    fn a_buckets_text_is_kept_until_an_event_reaches_it() {
        let view = view();
        let shape = Shape::new(Granularity::Hour, vec![0], vec![], vec![0, 1]);
        let mut merged = Merged::default();
        merged.fold_chunks(&view, &shape, [&chunk(&[("b", 1, 0), ("a", 2, 5), ("a", 4, 61)], 0)]);
        let all = |_: i64| true;
        let first = texts(&mut merged, all, write);
        assert_eq!(merged.made, 3);
        assert_eq!(first, expected(&merged));
        assert_eq!(first[0], r#"[String("a")]=[Int(1), Int(2)],[String("b")]=[Int(1), Int(1)]"#);
        assert_eq!(texts(&mut merged, all, unused), first, "kept, not made again");
        assert_eq!(merged.made, 0);

        // an event reaches a row of hour 0; hour 1 keeps its text, and only that row is made
        merged.fold_chunks(&view, &shape, [&chunk(&[("b", 7, 30)], 0)]);
        assert_eq!(texts(&mut merged, |b| b == HOUR, unused), first[1..]);
        let reached = texts(&mut merged, all, write);
        assert_eq!(merged.made, 1);
        assert_eq!(reached, expected(&merged));
        assert!(reached[0].ends_with(r#"[String("b")]=[Int(2), Int(8)]"#));
        // a row joins hour 1, in its place
        merged.fold_chunks(&view, &shape, [&chunk(&[("0", 3, 90)], 0)]);
        let joined = texts(&mut merged, all, write);
        assert_eq!(merged.made, 1);
        assert_eq!(joined, expected(&merged));
        assert!(joined[1].starts_with(r#"[String("0")]=[Int(1), Int(3)],"#));
    }

    /// However many rows of a run events reach (the first, the last, neighbours), and
    /// whatever rows join, the runs hold the texts of their rows, in order.
    #[test]
    fn runs_keep_their_rows_texts_whatever_rows_events_reach() {
        let view = view();
        let shape = Shape::new(Granularity::Hour, vec![0], vec![], vec![0, 1]);
        let mut merged = Merged::default();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for round in 0..60 {
            // from 1 to 300 events over up to 700 keys in two hours, sums of any length
            let events: Vec<(String, i64, i64)> = (0..1 + next(300))
                .map(|_| {
                    let digits = 1 + next(9) as u32;
                    (format!("k{:03}", next(700)), next(10_u64.pow(digits)) as i64, next(120) as i64)
                })
                .collect();
            let events: Vec<(&str, i64, i64)> = events.iter().map(|(k, n, m)| (k.as_str(), *n, *m)).collect();
            merged.fold_chunks(&view, &shape, [&chunk(&events, 0)]);
            // now and then a background round makes the reached rows (before the first read,
            // nothing: no render is kept yet), and sometimes more events reach rows before
            // they are read
            if next(3) == 0 {
                merged.make_behind();
                if next(2) == 0 {
                    merged.fold_chunks(&view, &shape, [&chunk(&events[..events.len() / 2], 0)]);
                }
            }
            // now and then one hour only is read, the other's runs wait
            let keep = |bucket: i64| round % 5 != 3 || bucket == 0;
            let texts = texts(&mut merged, keep, write);
            let expected: Vec<String> = expected(&merged);
            assert_eq!(texts, expected[..texts.len()], "round {round}");
        }
        assert!(merged.len() > 2 * BLOCK_ROWS, "several runs an hour");
    }

    /// An event reaching one row of a bucket makes that row's block again and keeps the
    /// bucket's other blocks as they were (the same bytes, not copied); a row joining keeps
    /// the blocks before it.
    #[test]
    fn an_event_makes_again_only_the_block_of_the_row_it_reaches() {
        let view = view();
        let shape = Shape::new(Granularity::Hour, vec![0], vec![], vec![0, 1]);
        let mut merged = Merged::default();
        // three and a half blocks of rows in hour 0, k = "k00000", "k00002", .. (even numbers,
        // so that rows can join between them)
        let n = 3 * BLOCK_ROWS + BLOCK_ROWS / 2;
        let key = |i: usize| format!("k{i:05}");
        let events: Vec<(String, i64, i64)> = (0..n).map(|i| (key(2 * i), i as i64, 0)).collect();
        let events: Vec<(&str, i64, i64)> = events.iter().map(|(k, n, m)| (k.as_str(), *n, *m)).collect();
        merged.fold_chunks(&view, &shape, [&chunk(&events, 0)]);
        // the blocks, held (so that a block made again cannot take a dropped one's address),
        // by address and bytes
        merged.keep_render(|| Box::new(write));
        let blocks = |merged: &mut Merged| -> Vec<(usize, Bytes)> {
            let fresh = merged.fresh(|_| true);
            let bucket = fresh.buckets().next().unwrap();
            bucket.blocks().map(|b| (b.as_ptr() as usize, b.clone())).collect()
        };
        let before = blocks(&mut merged);
        assert_eq!(before.len(), 4);
        assert_eq!(blocks(&mut merged), before, "kept while no event arrives");
        // an event reaches a row of the second block
        let reached = BLOCK_ROWS + 8;
        merged.fold_chunks(&view, &shape, [&chunk(&[(key(2 * reached).as_str(), 5, 1)], 0)]);
        let after = blocks(&mut merged);
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            assert_eq!(a == b, i != 1, "block {i}");
        }
        let changed = format!(r#"[String("{}")]=[Int(2), Int({})]"#, key(2 * reached), reached + 5);
        assert!(String::from_utf8(after[1].1.to_vec()).unwrap().contains(&changed));
        // a row joins after a row of the third block: the blocks before it stay, the rest are
        // made again (from the texts of their rows, which are kept: only the new row is made)
        let before_join = 2 * BLOCK_ROWS + 6;
        merged.fold_chunks(&view, &shape, [&chunk(&[(key(2 * before_join + 1).as_str(), 1, 2)], 0)]);
        let joined = blocks(&mut merged);
        assert_eq!(merged.made, 1);
        for (i, (a, j)) in after.iter().zip(&joined).enumerate() {
            assert_eq!(a == j, i < 2, "block {i}");
        }
        assert_eq!(joined.len(), 4);
        let text: Vec<u8> = joined.iter().flat_map(|(_, b)| b.to_vec()).collect();
        let rows: Vec<String> = answer(&merged).iter().map(|(_, d, v)| format!(",{d:?}={v:?}")).collect();
        assert_eq!(rows.len(), n + 1);
        assert_eq!(String::from_utf8(text).unwrap(), rows.concat(), "the blocks hold every row in order");
    }

    /// A test encoder: a run's rows as text (see `write`), each patch prefixing it with the
    /// list of the rows it was given. It records what it was asked.
    #[derive(Default)]
    struct Encoder {
        /// For each call: the first row's key (encode) or each row's place and values (patch).
        calls: Mutex<Vec<(&'static str, Vec<String>)>>,
        refuse: bool,
    }

    impl RunEncoder for Encoder {
        type Error = ();

        fn encode(&self, rows: &[(&GroupKey, &[Value])]) -> Result<Bytes, ()> {
            let mut out = Vec::new();
            rows.iter().for_each(|(key, values)| write(key, values, &mut out));
            self.calls.lock().push(("encode", vec![format!("{:?}", rows[0].0.dims)]));
            Ok(out.into())
        }

        fn patch(&self, encoded: Bytes, changed: &[(usize, &[Value])]) -> Option<Bytes> {
            let places: Vec<String> = changed.iter().map(|(i, values)| format!("{i}:{values:?}")).collect();
            self.calls.lock().push(("patch", places.clone()));
            (!self.refuse).then(|| [format!("{places:?}").as_bytes(), &encoded].concat().into())
        }
    }

    /// A run's kept encoding is patched with exactly the rows events reached since it was
    /// written, however often the runs' text was made in between (as a background round
    /// does), and written afresh when the encoder refuses or rows join before it.
    #[test]
    fn a_kept_encoding_is_patched_with_the_rows_reached_since() {
        let view = view();
        let shape = Shape::new(Granularity::Hour, vec![0], vec![], vec![0, 1]);
        let mut merged = Merged::default();
        let key = |i: usize| format!("k{i:05}");
        let n = 2 * BLOCK_ROWS + 10;
        let events: Vec<(String, i64, i64)> = (0..n).map(|i| (key(2 * i), i as i64, 0)).collect();
        let events: Vec<(&str, i64, i64)> = events.iter().map(|(k, n, m)| (k.as_str(), *n, *m)).collect();
        merged.fold_chunks(&view, &shape, [&chunk(&events, 0)]);
        merged.keep_render(|| Box::new(write));
        let encoder = Encoder::default();
        let ask = |merged: &mut Merged, encoder: &Encoder| {
            let blocks = merged.encoded(|_| true, encoder).unwrap();
            let calls = std::mem::take(&mut *encoder.calls.lock());
            (blocks.into_iter().map(|(_, b)| b).collect::<Vec<_>>(), calls)
        };
        let (first, calls) = ask(&mut merged, &encoder);
        assert_eq!(calls.iter().filter(|(what, _)| *what == "encode").count(), 3);
        let (again, calls) = ask(&mut merged, &encoder);
        assert_eq!((again.clone(), calls), (first.clone(), vec![]), "kept while no event arrives");
        // events reach row 3 of the second run, then (after the text is made between) row 5
        // twice and row 3 again
        let fold = |merged: &mut Merged, i: usize, n: i64| {
            merged.fold_chunks(&view, &shape, [&chunk(&[(key(2 * (BLOCK_ROWS + i)).as_str(), n, 1)], 0)]);
        };
        fold(&mut merged, 3, 1000);
        merged.fresh(|_| true);
        fold(&mut merged, 5, 1);
        fold(&mut merged, 5, 2);
        merged.fresh(|_| true);
        fold(&mut merged, 3, 1);
        let (patched, calls) = ask(&mut merged, &encoder);
        let row = |i: usize, count: i64, sum: i64| format!("{i}:[Int({count}), Int({sum})]");
        let (three, five) = (BLOCK_ROWS as i64 + 3, BLOCK_ROWS as i64 + 5);
        assert_eq!(calls, vec![("patch", vec![row(3, 3, three + 1001), row(5, 3, five + 3)])]);
        assert_eq!((&patched[0], &patched[2]), (&first[0], &first[2]));
        assert!(patched[1].starts_with(b"[\"3:") && patched[1].ends_with(&first[1]));
        // once patched, the run is as kept until an event reaches it again
        assert_eq!(ask(&mut merged, &encoder), (patched.clone(), vec![]));
        // a refused patch encodes the run again
        fold(&mut merged, 0, 7);
        let refusing = Encoder { refuse: true, ..Encoder::default() };
        let (afresh, calls) = ask(&mut merged, &refusing);
        let first_key = format!("[String(\"{}\")]", key(2 * BLOCK_ROWS));
        assert_eq!(calls, vec![("patch", vec![row(0, 2, BLOCK_ROWS as i64 + 7)]), ("encode", vec![first_key])]);
        let text = |merged: &Merged, run: usize| {
            let places = &merged.buckets[&0].places[run * BLOCK_ROWS..];
            let mut out = Vec::new();
            for &place in places.iter().take(BLOCK_ROWS) {
                let (key, row) = merged.rows.get_index(place).unwrap();
                write(key, &row.values, &mut out);
            }
            out
        };
        assert_eq!(afresh[1], text(&merged, 1));
        // a row joining in the first run encodes every run from there again, unpatched
        merged.fold_chunks(&view, &shape, [&chunk(&[(key(1).as_str(), 1, 1)], 0)]);
        let (joined, calls) = ask(&mut merged, &encoder);
        assert_eq!(calls.len(), 3);
        assert!(calls.iter().all(|(what, _)| *what == "encode"));
        for (run, block) in joined.iter().enumerate() {
            assert_eq!(block, &text(&merged, run));
        }
    }

    /// A kept shape's rows after it folds what was queued for it.
    fn caught_up(view: &CompiledView, kept: &Kept, shape: &Shape) -> Vec<(i64, Vec<Value>, Vec<Value>)> {
        let mut merged = kept.lock();
        kept.catch_up(view, shape, &mut merged);
        answer(&merged)
    }

    #[test]
    fn a_shape_folds_the_events_queued_for_it_and_a_lagging_one_is_dropped() {
        let view = view();
        let (hourly, all) = (
            Shape::new(Granularity::Hour, vec![], vec![], vec![0]),
            Shape::new(Granularity::All, vec![], vec![], vec![0]),
        );
        let counts = |rows: Vec<(i64, Vec<Value>, Vec<Value>)>| -> Vec<(i64, Value)> {
            rows.into_iter().map(|(b, _, v)| (b, v[0].clone())).collect()
        };
        let mut shapes = Shapes::default();
        keep(&mut shapes, &hourly, 0, 1000);
        keep(&mut shapes, &all, 0, 1000);
        shapes.push(vec![chunk(&[("a", 1, 0), ("a", -1, 1), ("b", 2, 70)], 0)], 100);
        let kept = shapes.get(&hourly).unwrap();
        assert_eq!(counts(caught_up(&view, &kept, &hourly)), vec![(0, Value::Int(1)), (HOUR, Value::Int(1))]);
        shapes.push(vec![chunk(&[("a", 9, 61), ("a", 3, 62), ("b", 4, 130)], 1)], 100);
        assert_eq!(
            counts(caught_up(&view, &kept, &hourly)),
            vec![(0, Value::Int(1)), (HOUR, Value::Int(2)), (2 * HOUR, Value::Int(1))]
        );
        let other = shapes.get(&all).unwrap();
        assert_eq!(other.inbox.lock().chunks.len(), 2, "the shape of all time has folded neither");
        // asked at last, it folds both
        assert_eq!(counts(caught_up(&view, &other, &all)), vec![(0, Value::Int(4))]);
        assert_eq!(other.inbox.lock().rows, 0);

        // the shape of all time is not asked again: once its queue passes the bound, it goes
        for round in 0..3 {
            shapes.push(vec![chunk(&[("a", round, 0), ("a", round, 1)], 0)], 4);
            let kept = shapes.get(&hourly).unwrap();
            caught_up(&view, &kept, &hourly);
            assert_eq!(shapes.contains(&all), round < 2, "round {round}");
        }
        // and a version change forgets every shape
        shapes.reset(7);
        assert!(shapes.is_empty());
    }

    #[test]
    fn a_background_round_brings_idle_rows_up_to_date_and_drops_the_idle_shapes() {
        let view = view();
        let shape = |g| Shape::new(g, vec![0], vec![], vec![0, 2]);
        let (hourly, daily, all) = (shape(Granularity::Hour), shape(Granularity::Day), shape(Granularity::All));
        let mut shapes = Shapes::default();
        for s in [&hourly, &daily, &all] {
            keep(&mut shapes, s, 0, 1000);
        }
        let chunks =
            || vec![chunk(&[("a", 1, 0), ("b", -1, 1), ("b", 2, 70)], 0), chunk(&[("c", 5, 200), ("a", 1, 3)], 0)];
        shapes.kept.peek_mut(&daily).unwrap().asked -= SHAPES_IDLE + Duration::from_secs(1);
        shapes.push(chunks(), 100);
        let busy = shapes.get(&all).unwrap();
        let answering = busy.lock(); // a query is answering from this shape's rows
        let round = shapes.for_round();
        assert!(!shapes.contains(&daily), "nobody asked for it lately");
        assert_eq!(round.len(), 2);
        for (s, kept) in &round {
            kept.try_catch_up(&view, s, true);
        }
        let expected = chunks();
        let expected = |s: &Shape| through_groups(&view, s, &[&expected[0], &expected[1]]);
        // the idle shape's rows were folded in the round, the busy one's wait for it
        let hourly_kept = shapes.get(&hourly).unwrap();
        assert_eq!(hourly_kept.inbox.lock().rows, 0);
        assert_eq!(answer(&hourly_kept.lock()), expected(&hourly));
        assert_eq!(busy.inbox.lock().rows, 5);
        drop(answering);
        assert_eq!(caught_up(&view, &busy, &all), expected(&all));
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
        let key = |d: i64| GroupKey { bucket: 0, dims: vec![Value::Null, Value::Int(d)].into() };
        assert!(a.admits(&key(1)) && a.admits(&key(2)) && !a.admits(&key(3)));
    }
}
