//! The live state of one view: the published batch version and the speed layer's groups
//! for every event past its watermark, behind one lock.
//!
//! Invariant: `segments` holds exactly the view's events with sequence number greater than
//! `floor`, and `floor` is the watermark of `batch` once one is published. Installing a
//! version and dropping the speed groups it covers happens in [`ViewLive::publish`] under
//! the write lock, so every reader sees either the old pair or the new one.
//!
//! Speed groups are kept per log segment (keyed by the segment's first sequence number).
//! A batch watermark is always the last sequence number of a sealed segment, so retiring
//! what a version covers is dropping whole segment maps, never subtracting.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::{Mutex, RwLock};
use tandem_model::agg::{GroupKey, Groups, MeasureState, fold_row, merge_groups};
use tandem_model::columnar::rows_to_batch;
use tandem_model::view::CompiledView;
use tandem_model::{Granularity, Row, Value};

use crate::filter::ViewFilter;

const DAY: i64 = 86_400_000_000;

/// A published batch version, loaded into memory.
#[derive(Debug)]
pub struct BatchSnapshot {
    pub version: i64,
    /// Last sequence number the version covers.
    pub watermark: u64,
    /// When the run that made it finished, RFC 3339.
    pub finished_at: Option<String>,
    pub groups: Groups,
    /// The newest event day (days since the epoch, UTC) the version holds groups for.
    pub newest_day: Option<i64>,
    /// Rollups of this version for recent query shapes; they live and die with the version.
    rollups: Mutex<LruCache<RollupKey, Arc<Rollup>>>,
}

/// A query shape without its time range: granularity, grouped dimension positions, the
/// allowed values per filtered dimension position (sorted), measure positions.
pub type RollupKey = (Granularity, Vec<usize>, Vec<(usize, Vec<Value>)>, Vec<usize>);

/// A batch version's groups re-keyed to a query shape, each with its merged states (to merge
/// speed groups into) and their values (to answer with when there is nothing to merge).
pub type Rollup = HashMap<GroupKey, (Vec<MeasureState>, Vec<Value>), foldhash::fast::RandomState>;

/// Rollups kept per version. Each holds at most as many groups as the version.
const ROLLUPS_PER_VERSION: usize = 32;

impl BatchSnapshot {
    pub fn new(version: i64, watermark: u64, finished_at: Option<String>, groups: Groups) -> BatchSnapshot {
        let newest_day = groups.keys().map(|k| k.bucket.div_euclid(DAY)).max();
        let rollups = Mutex::new(LruCache::new(NonZeroUsize::new(ROLLUPS_PER_VERSION).expect("not zero")));
        BatchSnapshot { version, watermark, finished_at, groups, newest_day, rollups }
    }

    /// The rollup for `key`, built by `build` from the version's groups on first use (outside
    /// the cache's lock; two queries racing may both build it).
    pub fn rollup(&self, key: RollupKey, build: impl FnOnce(&Groups) -> Rollup) -> Arc<Rollup> {
        if let Some(found) = self.rollups.lock().get(&key) {
            return found.clone();
        }
        let built = Arc::new(build(&self.groups));
        self.rollups.lock().put(key, built.clone());
        built
    }
}

impl Default for BatchSnapshot {
    fn default() -> Self {
        BatchSnapshot::new(0, 0, None, Groups::default())
    }
}

/// The groups of one log segment's events past the floor.
#[derive(Debug, Default)]
pub struct SegmentGroups {
    pub groups: Groups,
    /// Events of the dataset (before the view's filter) folded into this segment.
    pub events: u64,
    /// Newest ingest time, UTC micros.
    pub newest_ingest: i64,
    /// Events per event day (days since the epoch, UTC).
    pub days: BTreeMap<i64, u64>,
}

#[derive(Debug)]
pub struct LiveState {
    pub batch: Option<Arc<BatchSnapshot>>,
    /// Events with sequence numbers up to here are not in the speed layer.
    pub floor: u64,
    pub segments: BTreeMap<u64, SegmentGroups>,
}

impl LiveState {
    /// A view answers once it has a batch version, or if it was created before its dataset
    /// had any events (then the speed layer alone holds everything).
    pub fn is_ready(&self) -> bool {
        self.batch.is_some() || self.floor == 0
    }

    pub fn speed_events(&self) -> u64 {
        self.segments.values().map(|s| s.events).sum()
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
}

/// One view, live.
#[derive(Debug)]
pub struct ViewLive {
    pub view: CompiledView,
    filter: Option<ViewFilter>,
    state: RwLock<LiveState>,
}

impl ViewLive {
    /// A view whose speed layer starts after `floor`, with `batch` installed if it has one.
    pub fn new(view: CompiledView, batch: Option<BatchSnapshot>) -> Result<ViewLive, String> {
        let filter = match &view.spec.filter {
            Some(sql) => Some(ViewFilter::compile(&view.dataset, sql)?),
            None => None,
        };
        let floor = batch.as_ref().map(|b| b.watermark).unwrap_or(0);
        Ok(ViewLive {
            view,
            filter,
            state: RwLock::new(LiveState { batch: batch.map(Arc::new), floor, segments: BTreeMap::new() }),
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
        }
    }

    pub fn floor(&self) -> u64 {
        self.state.read().floor
    }

    /// Folds the events of one log record (numbered from `first_seq`, in the segment that
    /// starts at `segment`) into the speed layer. Events at or below the floor are skipped.
    pub fn apply(&self, segment: u64, first_seq: u64, ingest_time: i64, rows: &[Row]) -> Result<(), String> {
        let floor = self.floor();
        let skip = floor.saturating_sub(first_seq - 1).min(rows.len() as u64) as usize;
        let rows = &rows[skip..];
        if rows.is_empty() {
            return Ok(());
        }
        // fold outside the lock; only the (small) merge happens under it
        let mut partial = Groups::default();
        match &self.filter {
            Some(filter) => {
                let refs: Vec<&Row> = rows.iter().collect();
                let batch = rows_to_batch(&self.view.dataset, &refs, None).map_err(|e| e.to_string())?;
                let mask = filter.evaluate(&batch)?;
                rows.iter()
                    .zip(mask)
                    .filter(|(_, keep)| *keep)
                    .for_each(|(row, _)| fold_row(&self.view, &mut partial, row));
            }
            None => rows.iter().for_each(|row| fold_row(&self.view, &mut partial, row)),
        }
        let mut state = self.state.write();
        if first_seq + skip as u64 <= state.floor {
            return Ok(()); // a version covering these events was published meanwhile
        }
        let entry = state.segments.entry(segment).or_default();
        merge_groups(&mut entry.groups, &partial);
        entry.events += rows.len() as u64;
        entry.newest_ingest = entry.newest_ingest.max(ingest_time);
        for row in rows {
            if let Value::Timestamp(ts) = row[self.view.time_index] {
                *entry.days.entry(ts.div_euclid(DAY)).or_default() += 1;
            }
        }
        Ok(())
    }

    /// Installs a batch version and retires the speed groups it covers, atomically for
    /// readers. A version older than the installed one is ignored; so is a first version
    /// that does not reach the floor (the speed layer lacks what lies between). Returns
    /// whether it was installed.
    pub fn publish(&self, snapshot: BatchSnapshot) -> bool {
        let mut state = self.state.write();
        let newer = state.batch.as_ref().is_none_or(|b| snapshot.version > b.version);
        if !newer || snapshot.watermark < state.floor {
            return false;
        }
        let watermark = snapshot.watermark;
        state.batch = Some(Arc::new(snapshot));
        state.floor = watermark;
        state.segments.retain(|&first, _| first > watermark);
        true
    }

    /// Runs `f` on a consistent view of batch and speed.
    pub fn read<T>(&self, f: impl FnOnce(&LiveState) -> T) -> T {
        f(&self.state.read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_model::{DatasetSpec, Value, ViewSpec};

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

    fn rows(ns: &[i64]) -> Vec<Row> {
        ns.iter().map(|&n| vec![Value::Int(n), Value::Timestamp(0)]).collect()
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

    #[test]
    fn publish_retires_exactly_the_covered_segments() {
        let live = ViewLive::new(view(Some("n > 0")), None).unwrap();
        live.apply(1, 1, 0, &rows(&[1, 2, -5])).unwrap();
        live.apply(4, 4, 0, &rows(&[10])).unwrap();
        let before = total(&live);
        // a batch version covering segment 1 (seq 1..=3) with the same numbers
        let mut covered = Groups::default();
        rows(&[1, 2]).iter().for_each(|r| fold_row(&live.view, &mut covered, r));
        assert!(live.publish(BatchSnapshot::new(1, 3, None, covered)));
        assert_eq!(total(&live), before);
        live.read(|s| assert_eq!(s.segments.keys().copied().collect::<Vec<_>>(), vec![4]));
        // replaying covered events changes nothing
        live.apply(1, 1, 0, &rows(&[1, 2, -5])).unwrap();
        assert_eq!(total(&live), before);
        // an older version is refused
        assert!(!live.publish(BatchSnapshot { version: 1, watermark: 4, ..Default::default() }));
    }

    #[test]
    fn a_building_view_refuses_a_version_short_of_its_floor() {
        let live = ViewLive::new(view(None), None).unwrap();
        live.set_floor(10);
        assert!(!live.read(LiveState::is_ready));
        assert!(!live.publish(BatchSnapshot { version: 1, watermark: 9, ..Default::default() }));
        assert!(live.publish(BatchSnapshot { version: 1, watermark: 10, ..Default::default() }));
        assert!(live.read(LiveState::is_ready));
    }
}
