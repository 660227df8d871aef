//! The live state of one view: the published batch version and the speed layer's groups
//! for every event past its watermark, behind one lock.
//!
//! Invariant: `segments` holds exactly the view's events with sequence number greater than
//! `floor`, and `floor` is the watermark of `batch` once one is published. Installing a
//! version and dropping the speed groups it covers happens in [`ViewLive::publish`] under
//! the write lock, so every reader sees either the old pair or the new one.
//!
//! Speed groups are kept in maps keyed by the first sequence number they may hold: one for
//! the active log segment, and one for all sealed segments together. When the writer seals
//! a segment, its map is merged into the sealed one in the background ([`ViewLive::coalesce`]),
//! so the speed layer's memory grows with groups, not with the number of segments between
//! batch runs. A batch watermark is always the last sequence number of a sealed segment:
//! publishing drops the maps wholly below it, and a map it cuts through (a run that compacted
//! fewer segments than the sealed map holds) is folded afresh from the log for the events past
//! the watermark. Sketch states cannot be subtracted, so rebuilding is the only exact way.
//!
//! Beside the state, behind a lock of its own, the view keeps what a query of a kept shape
//! needs of it (`Latest`): the events folded since the shapes last took them, and the
//! [`Moment`] (version and speed-layer counts) they bring the shapes to. The writer updates it
//! under the state's write lock at the end of each fold slice, so such a query reads a
//! consistent pair without waiting for a slice in progress.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};
use tandem_model::agg::{GroupKey, Groups, MeasureState, fold_rows, groups_bytes, merge_groups, merge_states};
use tandem_model::log;
use tandem_model::view::{CompiledView, DAY};
use tandem_model::{Row, Value};

use crate::filter::ViewFilter;
use crate::shapes::{Chunk, Merged, SHAPES_IDLE, Shape, Shapes, thread_cpu_time};

/// Events queued for a kept shape at most (see [`crate::shapes`]); past this, it is dropped.
/// A background round after every group commit keeps the queues far shorter; this bounds
/// what a shape whose rows stay locked (answering) can hold on to.
const MAX_QUEUED_ROWS: usize = 250_000;

/// Coalescing holds the write lock (and so holds up the writer) at most about this long at a
/// time. The writer holds it for a slice of [`FOLD_SLICE_ROWS`] events, a millisecond or so:
/// with slices as long as the writer's, a merge halved the writer's share of the lock while it
/// lasted (a few hundred ms after each seal), and acknowledgements queued up behind it.
const COALESCE_SLICE: Duration = Duration::from_micros(100);

/// After each slice, coalescing rests this many times the slice's length with the lock
/// released, so that a merge takes at most about a quarter of a core while it lasts instead of
/// nearly all of one for a burst of 100 ms or so: the writer, the request threads and the
/// load share two cores, and that burst right after a seal queued acknowledgements up. In
/// session 32's alternated runs (with [`crate::writer`]'s merge at nice 19), the median of
/// 36 runs' ack p99 went from 8.2 to 5.7 ms and the runs over 10 ms from 13 to 7; a merge
/// then takes about 0.85 s instead of 0.16 (up to 4.6 s in those runs, 6.6 s in that
/// session's full suite). A segment lasts about 7 s at that rate and 3.5 s at the maximum; a
/// merge still running at the next seal is followed by one that takes in all the sealed maps
/// then present.
const COALESCE_REST: u32 = 3;

/// The writer folds about this many events at a time under the view's lock (see
/// [`ViewLive::apply`]): a 1,000-event request is one slice, a group commit of several is
/// several. It also answers a group commit's requests a slice of this size at a time, one
/// `apply` per slice (`crate::writer`).
pub(crate) const FOLD_SLICE_ROWS: usize = 1000;

/// A query whose speed-layer part takes this long logs where its time went (at debug level).
const SLOW_QUERY: Duration = Duration::from_millis(1);

/// A published batch version, loaded into memory.
#[derive(Debug)]
pub struct BatchSnapshot {
    pub version: i64,
    /// Last sequence number the version covers.
    pub watermark: u64,
    /// When the run that made it finished, RFC 3339.
    pub finished_at: Option<String>,
    /// In order of bucket (see [`groups_in`](Self::groups_in)).
    pub groups: BucketOrdered,
    /// The newest event day (days since the epoch, UTC) the version holds groups for.
    pub newest_day: Option<i64>,
    /// Rows folded from the groups of ranges that queries' ranges cut out of an output bucket,
    /// by shape and range, the last [`CUT_ROWS_KEPT`] asked (see [`cut_rows`](Self::cut_rows)).
    cut_rows: Mutex<lru::LruCache<(Shape, i64, i64), Arc<CutRows>>>,
}

/// Rows of a query shape, each its key and its measures' values.
pub type CutRows = Vec<(GroupKey, Vec<Value>)>;

/// The cut ranges a version keeps the rows of: a dashboard's few queries cut one or two
/// output buckets each, the same ones until their range moves past a view bucket.
const CUT_ROWS_KEPT: usize = 16;

/// Groups in order of bucket.
pub type BucketOrdered = IndexMap<GroupKey, Vec<MeasureState>, foldhash::fast::RandomState>;

impl BatchSnapshot {
    /// Puts `groups` in order of bucket (a sort of the version's groups, once per version).
    pub fn new(version: i64, watermark: u64, finished_at: Option<String>, groups: Groups) -> BatchSnapshot {
        let mut groups: BucketOrdered = groups.into_iter().collect();
        groups.sort_unstable_by(|a, _, b, _| a.bucket.cmp(&b.bucket));
        let newest_day = groups.last().map(|(k, _)| k.bucket.div_euclid(DAY));
        let cut_rows = Mutex::new(lru::LruCache::new(CUT_ROWS_KEPT.try_into().expect("not 0")));
        BatchSnapshot { version, watermark, finished_at, groups, newest_day, cut_rows }
    }

    /// The rows of `shape` folded from this version's groups whose bucket lies in `[from,
    /// to)`: what a query whose range cuts an output bucket takes from the version for it
    /// when the speed layer holds nothing there. Folded once and kept, for the version's life
    /// (a version is immutable): a 30-day query whose `from` is a moving "now minus 30 days"
    /// cuts its first day at the same view bucket for up to an hour, and folding that day
    /// (its hours × groups, each merge of sketches about a microsecond) took 9 ms of every
    /// such query over 1,200 groups (session 58 in `bench/HISTORY.md`). `from` and `to`
    /// should be view bucket starts, so that one range is one entry.
    pub fn cut_rows(&self, shape: &Shape, from: i64, to: i64) -> Arc<CutRows> {
        let key = (shape.clone(), from, to);
        if let Some(rows) = self.cut_rows.lock().get(&key) {
            return rows.clone();
        }
        let mut folded = Groups::default();
        shape.fold((Some(from), Some(to)), self.groups_in(from, to), &mut folded);
        let rows: Arc<CutRows> = Arc::new(
            folded.into_iter().map(|(key, states)| (key, states.iter().map(MeasureState::value).collect())).collect(),
        );
        self.cut_rows.lock().put(key, rows.clone());
        rows
    }

    /// The groups whose bucket starts in `[from, to)`, without visiting any other: a query
    /// whose range cuts an output bucket (the 30 days before now cut the first day) folds the
    /// version's groups of that bucket afresh, and finding them among all of them was 2 ms of
    /// every such query over 50 M events (session 25 in `bench/HISTORY.md`).
    pub fn groups_in(&self, from: i64, to: i64) -> impl Iterator<Item = (&GroupKey, &Vec<MeasureState>)> {
        let groups = self.groups.as_slice();
        let start = groups.partition_point(|k, _| k.bucket < from);
        let end = groups.partition_point(|k, _| k.bucket < to).max(start);
        groups[start..end].iter()
    }
}

impl Default for BatchSnapshot {
    fn default() -> Self {
        BatchSnapshot::new(0, 0, None, Groups::default())
    }
}

/// The groups of the events past the floor in one or more log segments.
#[derive(Debug, Default, Clone)]
pub struct SegmentGroups {
    pub groups: Groups,
    /// Events of the dataset (before the view's filter) folded into this map.
    pub events: u64,
    /// Newest ingest time, UTC micros.
    pub newest_ingest: i64,
    /// Events per event day (days since the epoch, UTC).
    pub days: BTreeMap<i64, u64>,
    /// The last sequence number this map covers.
    pub through: u64,
    /// Whether its segments are all sealed (nothing more will be added but by coalescing).
    pub sealed: bool,
}

impl SegmentGroups {
    fn with_capacity(groups: usize) -> SegmentGroups {
        SegmentGroups { groups: Groups::with_capacity_and_hasher(groups, Default::default()), ..Default::default() }
    }

    fn absorb(&mut self, other: &SegmentGroups) {
        merge_groups(&mut self.groups, &other.groups);
        self.events += other.events;
        self.newest_ingest = self.newest_ingest.max(other.newest_ingest);
        for (day, n) in &other.days {
            *self.days.entry(*day).or_default() += n;
        }
        self.through = self.through.max(other.through);
    }
}

#[derive(Debug)]
pub struct LiveState {
    pub batch: Option<Arc<BatchSnapshot>>,
    /// Events with sequence numbers up to here are not in the speed layer.
    pub floor: u64,
    /// Behind `Arc`s so that coalescing can take the sealed maps (which never change) and
    /// merge them with no lock held; the active map is never shared, so it is changed in
    /// place.
    pub segments: BTreeMap<u64, Arc<SegmentGroups>>,
}

/// What a query of a kept shape needs of the state, as of the end of the writer's last fold
/// slice (or publish): so that such a query takes it without waiting for a slice in
/// progress. Its own lock is taken after the state's, and the writer updates it under the
/// state's write lock before each release, so with the state locked it is the state's own.
#[derive(Debug)]
struct Latest {
    moment: Moment,
    /// While query shapes are kept: the events folded since the delta was last taken (see
    /// [`crate::shapes`]). `None` when no shapes are kept. It becomes `Some` only under the
    /// state's lock, so a fold slice that began without it has nothing to hand over.
    delta: Option<Vec<Chunk>>,
    /// When a query last asked for a shape.
    asked: Instant,
}

/// The batch version and the speed layer's counts at one moment: what an answer's
/// freshness reports.
#[derive(Debug, Clone, Default)]
pub struct Moment {
    pub batch: Option<Arc<BatchSnapshot>>,
    pub floor: u64,
    pub speed_events: u64,
    /// When the newest event in the speed layer was acknowledged (UTC micros).
    pub newest_ingest: Option<i64>,
    pub late_events: u64,
}

/// [`LiveState::is_ready`], for the state or a [`Moment`] of it.
fn ready(batch: &Option<Arc<BatchSnapshot>>, floor: u64) -> bool {
    batch.is_some() || floor == 0
}

impl Moment {
    /// See [`LiveState::is_ready`].
    pub fn is_ready(&self) -> bool {
        ready(&self.batch, self.floor)
    }

    fn version(&self) -> i64 {
        self.batch.as_ref().map_or(0, |b| b.version)
    }
}

impl LiveState {
    pub fn moment(&self) -> Moment {
        Moment {
            batch: self.batch.clone(),
            floor: self.floor,
            speed_events: self.speed_events(),
            newest_ingest: self.newest_ingest(),
            late_events: self.late_events(),
        }
    }

    /// A view answers once it has a batch version, or if it was created before its dataset
    /// had any events (then the speed layer alone holds everything).
    pub fn is_ready(&self) -> bool {
        ready(&self.batch, self.floor)
    }

    pub fn speed_events(&self) -> u64 {
        self.segments.values().map(|s| s.events).sum()
    }

    /// About how many bytes the speed layer's groups hold (see [`groups_bytes`]: a map of many
    /// groups is sized from a sample of them), taken under the view's read lock (sealed maps
    /// are not sized apart from it, as a merge holding the only reference changes them in place
    /// instead of copying them).
    pub fn speed_bytes(&self) -> usize {
        self.segments.values().map(|s| groups_bytes(&s.groups)).sum()
    }

    /// When the newest event in the speed layer was acknowledged (UTC micros).
    pub fn newest_ingest(&self) -> Option<i64> {
        self.segments.values().map(|s| s.newest_ingest).max()
    }

    /// Speed-layer events of days the batch version already holds: late events, each of
    /// which makes its day dirty for the next (incremental) run.
    pub fn late_events(&self) -> u64 {
        let Some(newest) = self.batch.as_ref().and_then(|b| b.newest_day) else { return 0 };
        self.segments.values().flat_map(|s| s.days.range(..=newest)).map(|(_, n)| n).sum()
    }

    /// Whether the speed layer may hold groups of buckets starting in `[from, to)` (UTC
    /// micros): whether it counted events of a day those buckets touch. A query folds the speed
    /// groups of the buckets its range cuts by visiting all of them (a median 0.24 ms under the
    /// lock, under ingest), so it first asks this: a range from 30 days ago cuts a day long
    /// before any speed-layer event. Asked of all maps together, as coalescing moves groups
    /// into another map before their days' counts (`coalesce_in_slices`).
    pub fn may_hold(&self, from: i64, to: i64) -> bool {
        if from >= to {
            return false;
        }
        let days = from.div_euclid(DAY)..=(to - 1).div_euclid(DAY);
        self.segments.values().any(|s| s.days.range(days.clone()).next().is_some())
    }
}

/// One view, live.
#[derive(Debug)]
pub struct ViewLive {
    pub view: CompiledView,
    filter: Option<ViewFilter>,
    state: RwLock<LiveState>,
    /// Locked after `state` when both are.
    latest: Mutex<Latest>,
    /// Recently asked query shapes, merged. Locked before `state` and `latest`.
    shapes: Mutex<Shapes>,
    /// Held while sealed maps are coalesced or a version is published, so the two never
    /// work from the same maps at once.
    coalescing: Mutex<()>,
    /// Whether a background round for the kept shapes is due (see [`ViewLive::catch_up`]).
    catch_up_due: AtomicBool,
}

/// What [`ViewLive::apply`] did besides folding.
#[derive(Debug, Default, Clone, Copy)]
pub struct Applied {
    /// A background round for the kept shapes became due ([`ViewLive::catch_up`]): the caller
    /// runs it, or has it run, once.
    pub catch_up_due: bool,
    /// How long the fold waited for the view's lock (for the writer's slow-commit log).
    pub lock_wait: Duration,
}

impl ViewLive {
    /// A view whose speed layer starts after `floor`, with `batch` installed if it has one.
    pub fn new(view: CompiledView, batch: Option<BatchSnapshot>) -> Result<ViewLive, String> {
        let filter = match &view.spec.filter {
            Some(sql) => Some(ViewFilter::compile(&view.dataset, sql)?),
            None => None,
        };
        let floor = batch.as_ref().map(|b| b.watermark).unwrap_or(0);
        let state = LiveState { batch: batch.map(Arc::new), floor, segments: BTreeMap::new() };
        Ok(ViewLive {
            view,
            filter,
            latest: Mutex::new(Latest { moment: state.moment(), delta: None, asked: Instant::now() }),
            state: RwLock::new(state),
            shapes: Mutex::new(Shapes::default()),
            coalescing: Mutex::new(()),
            catch_up_due: AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.view.spec.name
    }

    /// Sets where the speed layer starts for a view that has no batch version yet.
    pub fn set_floor(&self, floor: u64) {
        let mut state = self.state.write();
        if state.batch.is_none() {
            state.floor = floor;
            state.segments.retain(|&first, _| first > floor);
            self.start_over(&state);
        }
    }

    pub fn floor(&self) -> u64 {
        self.state.read().floor
    }

    /// Folds log records (each its first sequence number and rows) into the speed map keyed
    /// `map` (the first sequence number of their segment), and hands their rows to the delta
    /// while query shapes are kept. Events at or below the floor are skipped. Nothing is
    /// folded for a record whose filter failed; the first such error is returned.
    ///
    /// The filter runs outside the lock; the fold happens under it, straight into the map.
    /// (Folding each request into a map of its own and merging that in made fresh sketch
    /// states for every group a request touched, only to merge and drop them: 8 % of ingest.)
    /// The lock is handed to a waiting query after every [`FOLD_SLICE_ROWS`] events or so,
    /// always between two records, and when the call ends (the writer calls once per slice),
    /// so a query waits for a slice, not for a whole group commit, and never sees part of a
    /// request's events.
    pub fn apply(&self, map: u64, ingest_time: i64, records: &[(u64, &Arc<Vec<Row>>)]) -> Result<Applied, String> {
        let masks = self.masks(records);
        let mut waited = Duration::ZERO;
        let mut write = || {
            let asked = Instant::now();
            let guard = self.state.write();
            waited += asked.elapsed();
            guard
        };
        let mut guard = write();
        let mut keeping = self.keeping_delta(true);
        let mut chunks = Vec::new();
        let mut handed = false;
        let mut failed = None;
        let mut in_slice = 0;
        for ((first_seq, rows), mask) in records.iter().zip(masks) {
            if in_slice >= FOLD_SLICE_ROWS {
                self.show(&guard, &mut chunks);
                guard = {
                    RwLockWriteGuard::unlock_fair(guard);
                    write()
                };
                keeping = self.keeping_delta(false);
                in_slice = 0;
            }
            let state = &mut *guard;
            let skip = state.floor.saturating_sub(first_seq - 1).min(rows.len() as u64) as usize;
            if skip == rows.len() {
                continue; // a version covering these events is already published
            }
            match mask {
                Ok(mut mask) => {
                    // a new segment's map starts at the size of the newest one (the segment just
                    // sealed), so it does not grow, rehashing every group each time, while
                    // acknowledgements wait for the fold
                    let newest = state.segments.last_key_value().map_or(0, |(_, s)| s.groups.len());
                    let into = Arc::make_mut(
                        state.segments.entry(map).or_insert_with(|| Arc::new(SegmentGroups::with_capacity(newest))),
                    );
                    if let Some(mask) = &mut mask {
                        mask.drain(..skip);
                    }
                    self.fold(into, first_seq + skip as u64, ingest_time, &rows[skip..], mask.as_deref());
                    if keeping {
                        chunks.push(Chunk { rows: Arc::clone(rows), from: skip, mask });
                        handed = true;
                    }
                    in_slice += rows.len() - skip;
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        self.show(&guard, &mut chunks);
        // handed over as between slices: the writer's next call is the next slice
        RwLockWriteGuard::unlock_fair(guard);
        match failed {
            Some(e) => Err(e),
            None => Ok(Applied {
                catch_up_due: handed && !self.catch_up_due.swap(true, Ordering::AcqRel),
                lock_wait: waited,
            }),
        }
    }

    /// Whether the delta is kept (for the writer, with the state's write lock held), having
    /// first stopped keeping it if `may_stop` and no query has asked for a shape lately.
    fn keeping_delta(&self, may_stop: bool) -> bool {
        let mut latest = self.latest.lock();
        if may_stop && latest.delta.is_some() && latest.asked.elapsed() > SHAPES_IDLE {
            latest.delta = None; // nobody asks: stop keeping it (the shapes are rebuilt when asked)
        }
        latest.delta.is_some()
    }

    /// Makes `state` (write-locked, changed other than by a fold) the latest moment, and
    /// stops keeping the delta: the kept shapes no longer merge what the state holds, so they
    /// start over when next asked.
    fn start_over(&self, state: &LiveState) {
        let mut latest = self.latest.lock();
        latest.moment = state.moment();
        latest.delta = None;
    }

    /// Makes `state` (write-locked, about to be released) the latest moment, and hands the
    /// writer's `chunks` folded into it over to the delta.
    fn show(&self, state: &LiveState, chunks: &mut Vec<Chunk>) {
        let mut latest = self.latest.lock();
        latest.moment = state.moment();
        match &mut latest.delta {
            Some(delta) => delta.append(chunks),
            None => chunks.clear(), // a publish in between: the shapes start over
        }
    }

    /// A background round for the kept shapes: the delta is queued and every kept shape
    /// folds what it has not seen (see [`crate::shapes`]), so that no query pays for the
    /// events that arrived since it was last asked.
    pub fn catch_up(&self) {
        self.catch_up_due.store(false, Ordering::Release);
        let cpu = thread_cpu_time();
        let (round, events, make_behind) = {
            let mut shapes = self.shapes.lock();
            // a delta is kept only from a query on (which made the shapes merge the installed
            // version) until a publish: it is always the shapes' to fold
            let Some(delta) = self.latest.lock().delta.as_mut().map(std::mem::take) else { return };
            let events = shapes.push(delta, MAX_QUEUED_ROWS);
            (shapes.for_round(), events, shapes.may_make_behind())
        };
        // a shape being answered catches up when asked next
        let made: usize = round.iter().map(|(shape, kept)| kept.try_catch_up(&self.view, shape, make_behind)).sum();
        self.shapes.lock().spent(self.name(), thread_cpu_time().saturating_sub(cpu), events, made);
    }

    /// Which of `rows` pass the view's filter; `None` when the view has none.
    fn mask(&self, rows: &[Row]) -> Result<Option<Vec<bool>>, String> {
        let Some(filter) = &self.filter else { return Ok(None) };
        filter.mask(&rows.iter().collect::<Vec<_>>()).map(Some)
    }

    /// [`mask`](Self::mask) of each record's rows, from one evaluation over the rows of all
    /// of them: a group commit of many small requests built an Arrow batch and ran the filter
    /// once per request (two thirds of the writer's fold for single-event requests). Filters
    /// are total, so that evaluation does not fail; if it did, each record is evaluated on
    /// its own, so that only the records that fail are left out.
    fn masks(&self, records: &[(u64, &Arc<Vec<Row>>)]) -> Vec<Result<Option<Vec<bool>>, String>> {
        let Some(filter) = &self.filter else { return records.iter().map(|_| Ok(None)).collect() };
        let all: Vec<&Row> = records.iter().flat_map(|(_, rows)| rows.iter()).collect();
        match filter.mask(&all) {
            Ok(mask) => {
                let mut rest = mask.as_slice();
                records
                    .iter()
                    .map(|(_, rows)| {
                        let (mine, after) = rest.split_at(rows.len());
                        rest = after;
                        Ok(Some(mine.to_vec()))
                    })
                    .collect()
            }
            Err(_) => records.iter().map(|(_, rows)| self.mask(rows)).collect(),
        }
    }

    /// Folds events numbered from `first_seq` into `into`: those `mask` keeps (all without
    /// one) into its groups, all of them into its event counts.
    fn fold(&self, into: &mut SegmentGroups, first_seq: u64, ingest_time: i64, rows: &[Row], mask: Option<&[bool]>) {
        self.fold_groups(&mut into.groups, rows, mask);
        into.events += rows.len() as u64;
        into.newest_ingest = into.newest_ingest.max(ingest_time);
        for row in rows {
            if let Value::Timestamp(ts) = row[self.view.time_index] {
                *into.days.entry(ts.div_euclid(DAY)).or_default() += 1;
            }
        }
        into.through = into.through.max(first_seq + rows.len() as u64 - 1);
    }

    /// Folds the events `mask` keeps (all without one) into `groups`.
    fn fold_groups(&self, groups: &mut Groups, rows: &[Row], mask: Option<&[bool]>) {
        match mask {
            Some(mask) => {
                fold_rows(&self.view, groups, rows.iter().zip(mask).filter(|(_, keep)| **keep).map(|(row, _)| row))
            }
            None => fold_rows(&self.view, groups, rows),
        }
    }

    /// The writer sealed the map keyed `map`, through sequence number `through`. Returns
    /// whether there is now more than one sealed map, i.e. whether [`coalesce`](Self::coalesce)
    /// has work.
    pub fn seal(&self, map: u64, through: u64) -> bool {
        let mut state = self.state.write();
        if let Some(entry) = state.segments.get_mut(&map) {
            let entry = Arc::make_mut(entry);
            entry.sealed = true;
            entry.through = entry.through.max(through);
        }
        state.segments.values().filter(|s| s.sealed).count() > 1
    }

    /// Merges all sealed maps into one: the largest takes in the others. Those others (the
    /// maps of segments sealed since the last merge) are first merged together with no lock
    /// held and swapped in for them; then their groups move into the largest map in place, a
    /// slice at a time under the write lock (each slice at most [`COALESCE_SLICE`], and the
    /// lock handed straight to a waiting writer after it). Every event stays in exactly one
    /// map throughout, so a reader between two slices sees the same totals. (Building the
    /// merged map as a copy of the largest with no lock held copied the whole sealed speed
    /// layer at every seal: with dense sketches, hundreds of MiB each time. Moving all groups
    /// under one lock stalled the writer, and every acknowledgement behind it, for as long
    /// as merging a whole segment's groups: 35 ms for 22 k groups.) Between slices it rests
    /// ([`COALESCE_REST`]).
    pub fn coalesce(&self) {
        self.coalesce_in_slices(COALESCE_SLICE);
    }

    fn coalesce_in_slices(&self, slice_time: Duration) {
        let _only = self.coalescing.lock();
        let started = std::time::Instant::now();
        let cpu = thread_cpu_time();
        let sealed: Vec<(u64, Arc<SegmentGroups>)> =
            self.state.read().segments.iter().filter(|(_, s)| s.sealed).map(|(k, s)| (*k, s.clone())).collect();
        if sealed.len() < 2 {
            return;
        }
        let largest = (0..sealed.len()).max_by_key(|&i| sealed[i].1.groups.len()).expect("two or more");
        let keys: Vec<u64> = sealed.iter().map(|(k, _)| *k).collect();
        let (first, largest_key) = (keys[0], keys[largest]);
        let others: Vec<u64> = keys.iter().copied().filter(|&k| k != largest_key).collect();
        // only `publish` removes sealed maps, and it holds `coalescing` too
        let (newer_key, moving): (u64, Vec<GroupKey>) = if let [only] = others[..] {
            let map = &sealed.iter().find(|(k, _)| *k == only).expect("listed above").1;
            (only, map.groups.keys().cloned().collect())
        } else {
            let mut newer = SegmentGroups { sealed: true, ..SegmentGroups::default() };
            sealed.iter().filter(|(k, _)| *k != largest_key).for_each(|(_, map)| newer.absorb(map));
            let moving = newer.groups.keys().cloned().collect();
            let mut state = self.state.write();
            let retired: Vec<_> = others.iter().filter_map(|k| state.segments.remove(k)).collect();
            state.segments.insert(others[0], Arc::new(newer));
            drop(state);
            drop(retired); // freed here, not under the lock
            (others[0], moving)
        };
        drop(sealed); // so that both maps are the state's alone and change in place
        let mut moved = 0;
        while moved < moving.len() {
            let mut state = self.state.write();
            let slice = std::time::Instant::now();
            let gone = "sealed maps stay until a publish";
            let mut newer = state.segments.remove(&newer_key).expect(gone);
            let mut into = state.segments.remove(&largest_key).expect(gone);
            let (from, to) = (Arc::make_mut(&mut newer), Arc::make_mut(&mut into));
            for key in &moving[moved..] {
                moved += 1;
                if let Some(states) = from.groups.remove(key) {
                    match to.groups.get_mut(key) {
                        Some(existing) => merge_states(existing, &states),
                        None => {
                            to.groups.insert(key.clone(), states);
                        }
                    }
                }
                if slice.elapsed() >= slice_time {
                    break;
                }
            }
            state.segments.insert(newer_key, newer);
            state.segments.insert(largest_key, into);
            let held = slice.elapsed();
            RwLockWriteGuard::unlock_fair(state);
            std::thread::sleep(held * COALESCE_REST);
        }
        let mut state = self.state.write();
        let newer = state.segments.remove(&newer_key).expect("sealed maps stay until a publish");
        let mut merged = state.segments.remove(&largest_key).expect("sealed maps stay until a publish");
        Arc::make_mut(&mut merged).absorb(&newer); // its groups have all moved: the counts remain
        let groups = merged.groups.len();
        state.segments.insert(first, merged);
        drop(state);
        drop(newer);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let cpu_ms = thread_cpu_time().saturating_sub(cpu).as_millis() as u64;
        let maps = keys.len();
        if elapsed_ms >= 250 {
            tracing::warn!(view = self.name(), maps, groups, elapsed_ms, cpu_ms, "slow merge of sealed speed maps");
        } else {
            tracing::debug!(view = self.name(), maps, groups, elapsed_ms, cpu_ms, "merged sealed speed maps");
        }
    }

    /// Installs a batch version and retires the speed groups it covers, atomically for
    /// readers. A version older than the installed one is ignored; so is a first version
    /// that does not reach the floor (the speed layer lacks what lies between). Returns
    /// whether it was installed.
    ///
    /// A sealed map that holds events on both sides of the watermark is replaced by
    /// `rebuild(watermark, through)`: the view's groups of the events numbered
    /// `watermark + 1 ..= through`, folded afresh (from the log, see [`ViewLive::fold_log`]).
    pub fn publish(
        &self,
        snapshot: BatchSnapshot,
        rebuild: impl FnOnce(u64, u64) -> Result<SegmentGroups, String>,
    ) -> Result<bool, String> {
        let _only = self.coalescing.lock();
        let watermark = snapshot.watermark;
        let cut = {
            let state = self.state.read();
            let newer = state.batch.as_ref().is_none_or(|b| snapshot.version > b.version);
            if !newer || watermark < state.floor {
                return Ok(false);
            }
            state
                .segments
                .iter()
                .find(|(first, map)| **first <= watermark && map.through > watermark)
                .map(|(_, m)| m.through)
        };
        let rebuilt = match cut {
            Some(through) => Some(rebuild(watermark, through)?),
            None => None,
        };
        let mut state = self.state.write();
        let old_batch = state.batch.replace(Arc::new(snapshot));
        state.floor = watermark;
        let kept = state.segments.split_off(&(watermark + 1));
        let retired = std::mem::replace(&mut state.segments, kept);
        if let Some(mut map) = rebuilt {
            map.sealed = true;
            state.segments.insert(watermark + 1, Arc::new(map));
        }
        self.start_over(&state); // the kept shapes merge the old version
        drop(state);
        drop((old_batch, retired)); // freed here, not under the lock
        Ok(true)
    }

    /// The view's groups of the events numbered `after + 1 ..= through`, read from the sealed
    /// segments of the dataset's log in `dir`.
    pub fn fold_log(&self, dir: &Path, after: u64, through: u64) -> Result<SegmentGroups, String> {
        let mut map = SegmentGroups { sealed: true, ..SegmentGroups::default() };
        for (segment, last) in log::sealed_segments(dir).map_err(|e| e.to_string())? {
            if last <= after || segment.first_seq > through {
                continue;
            }
            for record in log::sealed_records(&segment.path).map_err(|e| e.to_string())? {
                let record = record.map_err(|e| e.to_string())?;
                let end = record.first_seq + record.rows.len() as u64; // exclusive
                let (from, to) = (record.first_seq.max(after + 1), end.min(through + 1));
                if from >= to {
                    continue;
                }
                let rows = &record.rows[(from - record.first_seq) as usize..(to - record.first_seq) as usize];
                let mask = self.mask(rows)?;
                self.fold(&mut map, from, record.ingest_time, rows, mask.as_deref());
            }
        }
        map.through = through;
        Ok(map)
    }

    /// Runs `f` on a consistent view of batch and speed.
    pub fn read<T>(&self, f: impl FnOnce(&LiveState) -> T) -> T {
        f(&self.state.read())
    }

    /// Whether a query of `shape` would find it kept (no rebuild), holding at most `rows`
    /// rows, with at most `events` events to fold first: queued for it, or folded since the
    /// delta was last taken. This is asked on an async worker, so not if the query would
    /// wait for a lock: the shapes' (a query building a shape holds them while it folds the
    /// speed layer) or the shape's rows' (a background round folding into them: up to a
    /// round's events, 1.5 ms at the median of the slow queries of session 23).
    pub fn is_light(&self, shape: &Shape, rows: usize, events: usize) -> bool {
        let Some(shapes) = self.shapes.try_lock() else { return false };
        let Some((held, queued)) = shapes.idle_size(shape) else { return false };
        let latest = self.latest.lock();
        let Some(delta) = latest.delta.as_ref().filter(|_| latest.moment.version() == shapes.version) else {
            return false; // the shapes start over
        };
        held <= rows && queued + delta.iter().map(Chunk::len).sum::<usize>() <= events
    }

    /// Answers through the kept query shape `shape` (see [`crate::shapes`]), brought up to
    /// date first: the events folded since the delta was last taken are queued for the kept
    /// shapes and `shape` folds what it has not seen, or, if not kept yet, is built (its
    /// speed part under the read lock, its batch part after). `answer` gets the moment the
    /// shape's rows are of (for freshness), the speed groups `edges` picks from the state of
    /// that same moment (the buckets a time range cuts), and the rows.
    ///
    /// A kept shape with no `edges` to pick takes the delta and the moment of the writer's
    /// last finished fold slice without the state's lock, so it does not wait for a slice in
    /// progress (under ingest, half a slice on average: about half a millisecond).
    pub fn query<T>(
        &self,
        shape: &Shape,
        edges: Option<impl FnOnce(&LiveState) -> Groups>,
        answer: impl FnOnce(&Moment, Groups, &mut Merged) -> T,
    ) -> T {
        let started = Instant::now();
        let mut shapes = self.shapes.lock();
        let shapes_at = Instant::now();
        let mut state = None;
        let (moment, delta) = loop {
            let mut latest = self.latest.lock();
            let current = latest.delta.is_some() && latest.moment.version() == shapes.version;
            if state.is_none() && (edges.is_some() || !current || !shapes.contains(shape)) {
                drop(latest);
                state = Some(self.state.read());
                continue;
            }
            latest.asked = Instant::now();
            // (a `None` delta becomes `Some` here only with the state locked: see `Latest`)
            break (latest.moment.clone(), latest.delta.replace(Vec::new()));
        };
        let locked_at = Instant::now();
        let version = moment.version();
        // without a delta to catch them up (none kept, or a new version) the shapes start over
        let delta = delta.filter(|_| shapes.version == version);
        if delta.is_none() {
            shapes.reset(version);
        }
        let kept = shapes.get(shape);
        let mut speed = None;
        let mut budget = 0;
        let mut speed_edges = Groups::default();
        if let Some(state) = state {
            if kept.is_none() {
                let mut folded = Groups::default();
                state.segments.values().for_each(|s| shape.fold((None, None), &s.groups, &mut folded));
                speed = Some(folded);
                let speed_groups = state.segments.values().map(|s| s.groups.len()).sum::<usize>();
                budget = moment.batch.as_ref().map_or(0, |b| b.groups.len()) + speed_groups;
            }
            if let Some(edges) = edges {
                speed_edges = edges(&state);
            }
        }
        let edges_at = Instant::now();
        if let Some(delta) = delta {
            shapes.push(delta, MAX_QUEUED_ROWS);
        }
        // a new shape is locked before anyone else can find it, and filled below; a kept one
        // is locked only after `shapes` is released, as its rows may be busy answering
        let built = kept.is_none();
        let base = if built { shapes.base(shape) } else { None };
        let from_base = base.is_some();
        let kept = kept.unwrap_or_else(|| shapes.keep(shape.clone(), budget.max(1024)));
        let mut merged = if built {
            let merged = kept.lock();
            drop(shapes);
            merged
        } else {
            drop(shapes);
            kept.lock()
        };
        let shape_locked_at = Instant::now();
        if let Some(speed) = speed {
            let mut folded = match (base, &moment.batch) {
                (Some(base), _) => Groups::clone(&base),
                (None, Some(batch)) => {
                    let mut base = Groups::default();
                    shape.fold((None, None), &batch.groups, &mut base);
                    // `shapes` is locked while holding this new shape's rows, which no one
                    // else can hold: a query locks the rows of a new shape under `shapes`
                    // only, and any other rows only after releasing it
                    let base = Arc::new(base);
                    self.shapes.lock().keep_base(version, shape, &base, batch.groups.len());
                    Arc::unwrap_or_clone(base)
                }
                (None, None) => Groups::default(),
            };
            merge_groups(&mut folded, &speed);
            *merged = Merged::from_groups(folded);
        }
        let built_at = Instant::now();
        kept.catch_up(&self.view, shape, &mut merged);
        let caught_up_at = Instant::now();
        // the answer's own CPU time, against its wall time: how long it waited for a core
        let answer_cpu = tracing::enabled!(tracing::Level::DEBUG).then(thread_cpu_time);
        let answered = answer(&moment, speed_edges, &mut merged);
        if started.elapsed() >= SLOW_QUERY {
            // where a slow query spent its time, for `TANDEM_LOG=tandem_speed=debug`
            let ms = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64() * 1e3;
            tracing::debug!(
                view = %self.view.spec.name,
                ?shape,
                total_ms = started.elapsed().as_secs_f64() * 1e3,
                shapes_ms = ms(started, shapes_at),
                lock_ms = ms(shapes_at, locked_at),
                edges_ms = ms(locked_at, edges_at),
                shape_lock_ms = ms(edges_at, shape_locked_at),
                build_ms = ms(shape_locked_at, built_at),
                built,
                from_base,
                catch_up_ms = ms(built_at, caught_up_at),
                answer_ms = caught_up_at.elapsed().as_secs_f64() * 1e3,
                answer_cpu_ms = answer_cpu.map(|cpu| thread_cpu_time().saturating_sub(cpu).as_secs_f64() * 1e3),
                rows_made = merged.made,
                "slow query"
            );
        }
        answered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_model::agg::{GroupKey, MeasureState, fold_row};
    use tandem_model::{DatasetSpec, Granularity, Value, ViewSpec};

    fn view(filter: Option<&str>) -> CompiledView {
        let d: DatasetSpec =
            serde_json::from_str(r#"{"name":"d","time_field":"ts","fields":{"ts":"timestamp","n":"int64"}}"#).unwrap();
        let mut v: ViewSpec = serde_json::from_str(
            r#"{"name":"v","dataset":"d","granularity":"day","measures":{"c":"count","s":"sum(n)"}}"#,
        )
        .unwrap();
        v.filter = filter.map(str::to_string);
        v.compile(&d).unwrap()
    }

    fn rows(ns: &[i64]) -> Arc<Vec<Row>> {
        Arc::new(ns.iter().map(|&n| vec![Value::Int(n), Value::Timestamp(0)]).collect())
    }

    fn no_rebuild(_: u64, _: u64) -> Result<SegmentGroups, String> {
        Err("nothing should need rebuilding".into())
    }

    fn total(live: &ViewLive) -> Groups {
        live.read(|s| {
            let mut all = Groups::default();
            if let Some(b) = &s.batch {
                merge_groups(&mut all, &b.groups);
            }
            s.segments.values().for_each(|seg| merge_groups(&mut all, &seg.groups));
            all
        })
    }

    /// A group commit of many requests is folded a few at a time, handing the lock to
    /// readers between them; a reader beside it sees whole requests only, and at the end
    /// all of them.
    #[test]
    fn a_fold_hands_the_lock_over_between_requests_never_inside_one() {
        const REQUEST: usize = 700;
        let live = ViewLive::new(view(None), None).unwrap();
        let requests: Vec<Arc<Vec<Row>>> = (0..40)
            .map(|r| {
                Arc::new((0..REQUEST).map(|i| vec![Value::Int(r * 1000 + i as i64), Value::Timestamp(0)]).collect())
            })
            .collect();
        let records: Vec<(u64, &Arc<Vec<Row>>)> =
            requests.iter().enumerate().map(|(r, rows)| (1 + (r * REQUEST) as u64, rows)).collect();
        let done = std::sync::atomic::AtomicBool::new(false);
        let seen = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut seen = std::collections::BTreeSet::new();
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let (events, counted) = live.read(|s| {
                        let counted: i64 = s
                            .segments
                            .values()
                            .flat_map(|seg| seg.groups.values())
                            .map(|states| match states[0].value() {
                                Value::Int(c) => c,
                                other => panic!("count is {other:?}"),
                            })
                            .sum();
                        (s.speed_events(), counted)
                    });
                    assert_eq!(events % REQUEST as u64, 0, "a reader saw part of a request");
                    assert_eq!(counted as u64, events, "a reader saw the counts and the groups disagree");
                    seen.insert(events);
                }
                seen
            });
            live.apply(1, 0, &records).unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            reader.join().unwrap()
        });
        assert!(!seen.is_empty());
        assert_eq!(live.read(LiveState::speed_events), (40 * REQUEST) as u64);
        let sum: i64 =
            requests.iter().flat_map(|r| r.iter()).map(|r| if let Value::Int(n) = r[0] { n } else { 0 }).sum();
        assert_eq!(total(&live).values().map(|s| s[1].value()).collect::<Vec<_>>(), vec![Value::Int(sum)]);
    }

    /// A group commit's requests (of any size, none at all included) are filtered in one
    /// evaluation and the mask split between them: each event counts where it passes, and the
    /// events a published version already covers are skipped, as if each request had been
    /// filtered on its own.
    #[test]
    fn a_group_commit_is_filtered_as_its_requests_would_be() {
        let live = ViewLive::new(view(Some("n % 3 = 1")), None).unwrap();
        live.set_floor(4); // a version covers events 1..=4
        let sizes = [0usize, 1, 5, 0, 1, 17, 2];
        let mut next = 0i64;
        let requests: Vec<Arc<Vec<Row>>> = sizes
            .iter()
            .map(|&n| {
                let ns: Vec<i64> = (0..n as i64).map(|i| (next + i) * 7 % 11).collect();
                next += n as i64;
                rows(&ns)
            })
            .collect();
        let mut seq = 1;
        let records: Vec<(u64, &Arc<Vec<Row>>)> = requests
            .iter()
            .map(|rows| {
                let first = seq;
                seq += rows.len() as u64;
                (first, rows)
            })
            .collect();
        live.apply(1, 0, &records).unwrap();
        // independently: every event numbered past 4 whose n is 1 modulo 3
        let passing: Vec<i64> = requests
            .iter()
            .flat_map(|r| r.iter())
            .zip(1u64..)
            .filter_map(|(row, seq)| match row[0] {
                Value::Int(n) if seq > 4 && n % 3 == 1 => Some(n),
                _ => None,
            })
            .collect();
        assert!(passing.len() > 2 && passing.len() < 20, "the filter must keep some events and drop others");
        let groups = total(&live);
        let states = groups.values().next().expect("one day");
        assert_eq!(states[0].value(), Value::Int(passing.len() as i64));
        assert_eq!(states[1].value(), Value::Int(passing.iter().sum()));
        assert_eq!(live.read(LiveState::speed_events), seq - 1 - 4);
    }

    /// Sealed maps coalesce into the first one, while a reader running beside it sees the
    /// same totals at every moment: every event is in exactly one map between two slices.
    #[test]
    fn coalescing_keeps_every_event_in_one_map_between_slices() {
        let live = ViewLive::new(view(None), None).unwrap();
        let at = |n: i64, day: i64| vec![Value::Int(n), Value::Timestamp(day * DAY)];
        let mut seq = 1;
        let mut segment = |live: &ViewLive, days: std::ops::Range<i64>, seal: bool| {
            let (map, rows): (u64, Arc<Vec<Row>>) = (seq, Arc::new(days.map(|d| at(d % 7, d)).collect()));
            live.apply(map, 0, &[(map, &rows)]).unwrap();
            seq += rows.len() as u64;
            if seal {
                live.seal(map, seq - 1);
            }
            map
        };
        let first = segment(&live, 0..3000, true);
        segment(&live, 1500..4500, true);
        segment(&live, 4000..4100, true);
        let active = segment(&live, 10..20, false);
        let expected = total(&live);
        let events = live.read(LiveState::speed_events);
        live.read(|s| {
            assert!(s.may_hold(4499 * DAY + 5, 4499 * DAY + 6) && s.may_hold(3 * DAY, 4 * DAY));
            assert!(!s.may_hold(4500 * DAY, 9000 * DAY) && !s.may_hold(-DAY, 0) && !s.may_hold(DAY, DAY));
        });
        let done = std::sync::atomic::AtomicBool::new(false);
        let reads = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    assert!(total(&live) == expected, "a reader saw other totals mid-coalesce");
                    assert_eq!(live.read(LiveState::speed_events), events);
                    live.read(|s| {
                        let mut held = s.segments.values().flat_map(|m| m.groups.keys());
                        assert!(held.all(|k| s.may_hold(k.bucket, k.bucket + 1)), "a group's day not counted");
                    });
                    reads += 1;
                }
                reads
            });
            // three sealed maps (merged together first), then one more beside the merged one
            live.coalesce_in_slices(Duration::ZERO);
            live.read(|s| assert_eq!(s.segments.keys().copied().collect::<Vec<_>>(), vec![first, active]));
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            reader.join().unwrap()
        });
        assert!(reads > 0);
        let sealed_through = segment(&live, 9000..9500, true) + 499;
        let expected = total(&live);
        live.coalesce_in_slices(Duration::ZERO);
        assert!(total(&live) == expected);
        live.read(|s| {
            assert_eq!(s.segments.keys().copied().collect::<Vec<_>>(), vec![first, active]);
            let merged = &s.segments[&first];
            assert!(merged.sealed && merged.through == sealed_through);
            assert_eq!(merged.events, 3000 + 3000 + 100 + 500);
            assert_eq!(merged.days.len(), 4500 + 500);
            assert_eq!(merged.groups.len(), 4500 + 500);
        });
    }

    #[test]
    fn publish_retires_exactly_the_covered_segments() {
        let live = ViewLive::new(view(Some("n > 0")), None).unwrap();
        live.apply(1, 0, &[(1, &rows(&[1, 2, -5]))]).unwrap();
        live.apply(4, 0, &[(4, &rows(&[10]))]).unwrap();
        let before = total(&live);
        // a batch version covering segment 1 (seq 1..=3) with the same numbers
        let mut covered = Groups::default();
        rows(&[1, 2]).iter().for_each(|r| fold_row(&live.view, &mut covered, r));
        assert!(live.publish(BatchSnapshot::new(1, 3, None, covered), no_rebuild).unwrap());
        assert_eq!(total(&live), before);
        live.read(|s| assert_eq!(s.segments.keys().copied().collect::<Vec<_>>(), vec![4]));
        // replaying covered events changes nothing
        live.apply(1, 0, &[(1, &rows(&[1, 2, -5]))]).unwrap();
        assert_eq!(total(&live), before);
        // an older version is refused
        assert!(!live.publish(BatchSnapshot { version: 1, watermark: 4, ..Default::default() }, no_rebuild).unwrap());
    }

    /// The rows a kept shape answers with, read through [`ViewLive::query`].
    fn shape_rows(live: &ViewLive, shape: &Shape) -> Vec<(GroupKey, Vec<Value>)> {
        let mut rows: Vec<_> = live.query(shape, None::<fn(&LiveState) -> Groups>, |_, _, merged| merged.values());
        rows.sort_by_key(|(k, _)| k.bucket);
        rows
    }

    /// The same shape folded in one pass from everything the view holds.
    fn folded_rows(live: &ViewLive, shape: &Shape) -> Vec<(GroupKey, Vec<Value>)> {
        let mut folded = Groups::default();
        shape.fold((None, None), &total(live), &mut folded);
        let mut rows: Vec<_> =
            folded.into_iter().map(|(k, s)| (k, s.iter().map(MeasureState::value).collect())).collect();
        rows.sort_by_key(|(k, _)| k.bucket);
        rows
    }

    /// An event of the test view: `n`, on day `day`.
    fn day_row(n: i64, day: i64) -> Row {
        vec![Value::Int(n), Value::Timestamp(day * DAY + 5)]
    }

    /// Folds one request as the writer would, its events numbered from `seq` on.
    fn ingest_at(seq: &std::cell::Cell<u64>, live: &ViewLive, rows: Vec<Row>) {
        let n = rows.len() as u64;
        live.apply(seq.get(), 0, &[(seq.get(), &Arc::new(rows))]).unwrap();
        seq.set(seq.get() + n);
    }

    #[test]
    fn kept_shapes_follow_every_event_version_and_pause() {
        let live = ViewLive::new(view(Some("n > 0")), None).unwrap();
        let by_day = Shape::new(Granularity::Day, vec![], vec![], vec![0, 1]);
        let all = Shape::new(Granularity::All, vec![], vec![], vec![1]);
        let seq = std::cell::Cell::new(1);
        let ingest = |live: &ViewLive, rows: Vec<Row>| ingest_at(&seq, live, rows);
        for round in 0..6i64 {
            ingest(&live, (0..5).map(|i| day_row(i - 1, (round + i) % 3)).collect());
            assert_eq!(shape_rows(&live, &by_day), folded_rows(&live, &by_day), "round {round}");
            ingest(&live, vec![day_row(round + 1, 7)]);
            assert_eq!(shape_rows(&live, &all), folded_rows(&live, &all), "round {round}");
        }
        assert!(live.latest.lock().delta.is_some(), "events are kept for the shapes while they are asked for");

        // a background round is due once after events reach the delta (until it runs), and folds them into
        // every kept shape: the queries then find nothing left to fold
        let n = 200;
        let more = Arc::new((0..n).map(|i| day_row(i % 9 - 2, i % 4)).collect::<Vec<_>>());
        live.catch_up(); // the loop above made one due
        let (at, then) = (seq.get(), seq.get() + n as u64);
        assert!(live.apply(at, 0, &[(at, &more)]).unwrap().catch_up_due, "the first fold makes a round due");
        let again = Arc::new(vec![day_row(6, 2)]);
        assert!(!live.apply(then, 0, &[(then, &again)]).unwrap().catch_up_due, "already due");
        seq.set(then + 1);
        live.catch_up();
        assert!(live.latest.lock().delta.as_ref().is_some_and(Vec::is_empty));
        assert!(!live.shapes.lock().is_empty());
        assert_eq!(live.shapes.lock().queued_rows(), 0, "every kept shape folded the round's events");
        assert_eq!(shape_rows(&live, &by_day), folded_rows(&live, &by_day));
        assert_eq!(shape_rows(&live, &all), folded_rows(&live, &all));

        // a version covering everything so far: the shapes start over on it
        let covered = total(&live);
        let through = live.read(|s| s.segments.values().map(|m| m.through).max().unwrap());
        assert!(live.publish(BatchSnapshot::new(1, through, None, covered), no_rebuild).unwrap());
        ingest(&live, vec![day_row(3, 1), day_row(-3, 1), day_row(9, 8)]);
        assert_eq!(shape_rows(&live, &by_day), folded_rows(&live, &by_day));
        assert_eq!(shape_rows(&live, &all), folded_rows(&live, &all));

        // nobody asks for a while: the writer stops keeping the delta, and the next query
        // does not trust the shapes it has
        live.latest.lock().asked -= SHAPES_IDLE + Duration::from_secs(1);
        ingest(&live, vec![day_row(4, 1)]);
        assert!(live.latest.lock().delta.is_none());
        ingest(&live, vec![day_row(5, 2)]);
        assert_eq!(shape_rows(&live, &all), folded_rows(&live, &all));
        assert_eq!(shape_rows(&live, &by_day), folded_rows(&live, &by_day));
    }

    #[test]
    fn a_kept_shape_is_answered_while_a_fold_holds_the_lock() {
        let live = Arc::new(ViewLive::new(view(None), None).unwrap());
        let all = Shape::new(Granularity::All, vec![], vec![], vec![0]);
        let seq = std::cell::Cell::new(1);
        ingest_at(&seq, &live, (0..10).map(|i| day_row(i, 0)).collect());
        assert_eq!(shape_rows(&live, &all), folded_rows(&live, &all)); // now kept
        ingest_at(&seq, &live, (0..5).map(|i| day_row(i, 1)).collect());
        let expected = folded_rows(&live, &all);

        // a fold in progress: the state write-locked, as the writer holds it for a slice
        let slice = live.state.write();
        let (tx, rx) = std::sync::mpsc::channel();
        let asking = Arc::clone(&live);
        let query = std::thread::spawn(move || {
            let answer = asking.query(&all, None::<fn(&LiveState) -> Groups>, |moment, _, merged| {
                (moment.speed_events, merged.values())
            });
            tx.send(answer).unwrap();
        });
        let answered = rx.recv_timeout(Duration::from_secs(10));
        drop(slice);
        query.join().unwrap();
        let (events, rows): (u64, Vec<_>) = answered.expect("the query did not wait for the fold in progress");
        assert_eq!((events, rows), (15, expected), "as of the last finished fold");

        // a shape not kept yet is built from the speed maps: it waits for the state
        let by_day = Shape::new(Granularity::Day, vec![], vec![], vec![0]);
        assert_eq!(shape_rows(&live, &by_day), folded_rows(&live, &by_day));
    }

    #[test]
    fn an_answer_and_its_moment_hold_the_same_whole_requests() {
        // requests of 700 events, folded a few per call: the lock changes hands between
        // requests inside a call, and each query must see whole requests, as many as its
        // moment counts
        const REQUEST: i64 = 700;
        let live = Arc::new(ViewLive::new(view(None), None).unwrap());
        let all = Shape::new(Granularity::All, vec![], vec![], vec![0, 1]);
        let answer = |live: &ViewLive| {
            live.query(&all, None::<fn(&LiveState) -> Groups>, |moment, _, merged| {
                let values: Vec<Value> = merged.values().into_iter().flat_map(|(_, v)| v).collect();
                (moment.speed_events, values)
            })
        };
        answer(&live); // kept from here on
        let writing = Arc::clone(&live);
        let writer = std::thread::spawn(move || {
            let mut seq = 1;
            for _ in 0..300 {
                let requests: Vec<(u64, Arc<Vec<Row>>)> = (0..3)
                    .map(|_| {
                        let first = seq;
                        seq += REQUEST as u64;
                        (first, Arc::new((0..REQUEST).map(|i| day_row(i, i % 3)).collect()))
                    })
                    .collect();
                let records: Vec<(u64, &Arc<Vec<Row>>)> = requests.iter().map(|(s, r)| (*s, r)).collect();
                writing.apply(1, 0, &records).unwrap();
            }
        });
        let per_request: i64 = (0..REQUEST).sum();
        let mut answers = 0;
        while !writer.is_finished() || answers == 0 {
            let (events, values) = answer(&live);
            let (count, sum) = match values[..] {
                [] => (0, 0),
                [Value::Int(c), Value::Int(s)] => (c, s),
                ref other => panic!("unexpected row {other:?}"),
            };
            assert_eq!(count as u64, events, "the rows and the moment are of one moment");
            assert_eq!(count % REQUEST, 0, "whole requests only");
            assert_eq!(sum, count / REQUEST * per_request, "whole requests only");
            answers += 1;
        }
        writer.join().unwrap();
        assert_eq!(answer(&live).0, 300 * 3 * REQUEST as u64);
    }

    #[test]
    fn a_query_is_light_while_its_shape_is_kept_small_and_nearly_caught_up() {
        let live = ViewLive::new(view(None), None).unwrap();
        let by_day = Shape::new(Granularity::Day, vec![], vec![], vec![0]);
        let seq = std::cell::Cell::new(1);
        let ingest = |live: &ViewLive, n: i64| ingest_at(&seq, live, (0..n).map(|i| day_row(i, i % 4)).collect());
        ingest(&live, 10);
        assert!(!live.is_light(&by_day, 100, 100), "not kept: the query builds it");
        shape_rows(&live, &by_day);
        assert!(live.is_light(&by_day, 100, 100));
        assert!(!live.is_light(&by_day, 3, 100), "4 rows, one a day");
        let kept = live.shapes.lock().get(&by_day).unwrap();
        let rows = kept.lock();
        assert!(!live.is_light(&by_day, 100, 100), "its rows are locked: the query would wait");
        drop(rows);
        // events folded since the delta was last taken count, until a round queues and folds them
        ingest(&live, 60);
        ingest(&live, 60);
        assert!(!live.is_light(&by_day, 100, 100));
        assert!(live.is_light(&by_day, 100, 120));
        live.catch_up();
        assert!(live.is_light(&by_day, 100, 0));
        // a new version: the shapes start over
        let through = live.read(|s| s.segments.values().map(|m| m.through).max().unwrap());
        assert!(live.publish(BatchSnapshot::new(1, through, None, total(&live)), no_rebuild).unwrap());
        assert!(!live.is_light(&by_day, 100, 100));
        assert_eq!(shape_rows(&live, &by_day), folded_rows(&live, &by_day));
        assert!(live.is_light(&by_day, 100, 100));
    }

    #[test]
    fn a_dropped_shape_is_rebuilt_from_its_base_and_the_speed_layer() {
        let live = ViewLive::new(view(None), None).unwrap();
        let all = Shape::new(Granularity::All, vec![], vec![], vec![0, 1]);
        let by_day = Shape::new(Granularity::Day, vec![], vec![], vec![0, 1]);
        let seq = std::cell::Cell::new(1);
        let ingest = |live: &ViewLive, rows: Vec<Row>| ingest_at(&seq, live, rows);
        // a version of 64 daily groups: `all` folds them into one row, `by_day` into 64
        let publish = |live: &ViewLive, version: i64| {
            let through = seq.get() - 1;
            assert!(live.publish(BatchSnapshot::new(version, through, None, total(live)), no_rebuild).unwrap());
        };
        ingest(&live, (0..64).map(|d| day_row(d, d)).collect());
        publish(&live, 1);
        ingest(&live, vec![day_row(100, 3), day_row(7, 70)]);
        assert_eq!(shape_rows(&live, &all), folded_rows(&live, &all));
        assert_eq!(shape_rows(&live, &by_day), folded_rows(&live, &by_day));
        let base = {
            let mut shapes = live.shapes.lock();
            assert!(shapes.base(&by_day).is_none(), "a row for each group: not worth keeping");
            shapes.base(&all).expect("one row from 64 groups: kept")
        };
        let int = |v: &Value| match v {
            Value::Int(n) => *n,
            other => panic!("not a count: {other:?}"),
        };
        let batch_only: Vec<i64> = base.values().map(|s| int(&s[0].value())).collect();
        assert_eq!(batch_only, vec![64], "the base holds the version's events alone");

        // dropped, then asked for again after more events (late ones too): its base and the
        // speed layer make the same rows as one fold of everything
        live.shapes.lock().forget(&all);
        ingest(&live, vec![day_row(1, 2), day_row(2, 80), day_row(-5, 1)]);
        assert_eq!(shape_rows(&live, &all), folded_rows(&live, &all));
        // and the rebuild read the base, not the version's groups: a base that says
        // otherwise shows in the answer
        let mut shapes = live.shapes.lock();
        shapes.forget(&all);
        let mut wrong = (*base).clone();
        wrong.values_mut().for_each(|s| s[0] = MeasureState::Count(1000));
        shapes.keep_base(1, &all, &Arc::new(wrong), 64);
        drop(shapes);
        let count = |rows: Vec<(GroupKey, Vec<Value>)>| int(&rows[0].1[0]);
        assert_eq!(count(shape_rows(&live, &all)), count(folded_rows(&live, &all)) - 64 + 1000);

        // a new version: bases of the old one are forgotten, and the rebuild is right again
        publish(&live, 2);
        ingest(&live, vec![day_row(9, 5)]);
        live.shapes.lock().forget(&all);
        assert_eq!(shape_rows(&live, &all), folded_rows(&live, &all));
        assert_eq!(shape_rows(&live, &by_day), folded_rows(&live, &by_day));
    }

    #[test]
    fn a_building_view_refuses_a_version_short_of_its_floor() {
        let live = ViewLive::new(view(None), None).unwrap();
        live.set_floor(10);
        assert!(!live.read(LiveState::is_ready));
        assert!(!live.publish(BatchSnapshot { version: 1, watermark: 9, ..Default::default() }, no_rebuild).unwrap());
        assert!(live.publish(BatchSnapshot { version: 1, watermark: 10, ..Default::default() }, no_rebuild).unwrap());
        assert!(live.read(LiveState::is_ready));
    }

    #[test]
    fn a_version_finds_the_groups_of_a_range_of_buckets_and_no_other() {
        let hour = 3_600_000_000;
        // buckets given out of order, several groups in some, one before 1970
        let buckets = [5, -3, 2, 5, 0, 9, 2, 2, 7];
        let groups: Groups = buckets
            .iter()
            .enumerate()
            .map(|(i, b)| (GroupKey { bucket: b * hour, dims: vec![Value::Int(i as i64)].into() }, vec![]))
            .collect();
        let snapshot = BatchSnapshot::new(1, 1, None, groups);
        assert_eq!(snapshot.newest_day, Some(0));
        for (from, to) in [(2, 3), (-5, 1), (3, 5), (0, 100), (6, 6), (8, 2), (-3, 10), (10, 20)] {
            let mut found: Vec<i64> =
                snapshot.groups_in(from * hour, to * hour).map(|(k, _)| k.bucket / hour).collect();
            found.sort();
            let mut expected: Vec<i64> = buckets.iter().copied().filter(|b| (from..to).contains(b)).collect();
            expected.sort();
            assert_eq!(found, expected, "[{from}, {to})");
        }
    }

    #[test]
    fn a_versions_cut_rows_are_folded_once_per_shape_and_range() {
        let hour = 3_600_000_000;
        // two countries' counts in each of 48 hours
        let groups: Groups = (0..96)
            .map(|i: i64| {
                let key = GroupKey { bucket: (i / 2) * hour, dims: vec![Value::Int(i % 2)].into() };
                (key, vec![MeasureState::Count(i + 1)])
            })
            .collect();
        let batch = BatchSnapshot::new(1, 96, None, groups);
        let by_day = Shape::new(Granularity::Day, vec![0], vec![], vec![0]);
        // hours 20 to 29: day 0's last 4 and day 1's first 6
        let rows = batch.cut_rows(&by_day, 20 * hour, 30 * hour);
        let count = |rows: &CutRows, bucket: i64, dim: i64| {
            rows.iter().find(|(k, _)| k.bucket == bucket && k.dims[0] == Value::Int(dim)).map(|(_, v)| v[0].clone())
        };
        // an independent sum: group i (hour i / 2, dim i % 2) counts i + 1
        let want = |hours: std::ops::Range<i64>, dim: i64| Value::Int(hours.map(|h| 2 * h + dim + 1).sum());
        assert_eq!(rows.len(), 4);
        assert_eq!(count(&rows, 0, 1), Some(want(20..24, 1)));
        assert_eq!(count(&rows, 24 * hour, 0), Some(want(24..30, 0)));
        assert!(Arc::ptr_eq(&rows, &batch.cut_rows(&by_day, 20 * hour, 30 * hour)), "kept, not folded again");
        let other = batch.cut_rows(&by_day, 20 * hour, 31 * hour);
        assert!(!Arc::ptr_eq(&rows, &other));
        assert_eq!(count(&other, 24 * hour, 0), Some(want(24..31, 0)));
        let by_all = Shape::new(Granularity::All, vec![], vec![], vec![0]);
        assert_eq!(batch.cut_rows(&by_all, 20 * hour, 30 * hour)[0].1[0], Value::Int((40..60).map(|i| i + 1).sum()));
    }
}
