//! Log retention: sealed log segments that nothing will read again are deleted, oldest first,
//! once the server is given a retention age (`--log-retention`; without it the log is kept
//! whole, as before).
//!
//! A sealed segment goes only when all of these hold:
//! - its events are in the master dataset: the segment ends at or below the dataset's
//!   `compacted_seq`, and its master files (one per event day, named after the segment) read
//!   back whole (their checksums hold) and hold together as many rows as the segment has
//!   sequence numbers. They are fsynced, with their directories, before the segment is
//!   removed: from then on they are the durable copy of those events (the object store's
//!   `put` does not sync);
//! - every view of the dataset has a version whose watermark covers the segment (while a view
//!   is still building, or the dataset has no view, the log is kept), so no view's speed layer
//!   reads it back after a restart, nor does a version's publish (which folds the log only
//!   past the new watermark);
//! - it was last written longer ago than the retention age, which is at least the windows of
//!   duplicate ids and idempotency keys: a restart reads those back from the log.
//!
//! Only a run of the oldest segments goes (the first segment kept ends the pass), so the
//! segments left stay contiguous, and the active segment is never one of them.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use object_store::path::Path;

use crate::compaction::sealed_segments;
use crate::store::{list, master_file_segment, master_prefix, verified_rows};
use crate::{BatchEnv, Error, Result};

/// What [`prune_log`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub segments: usize,
    pub events: u64,
    pub bytes: u64,
}

/// Most segments one pass deletes: a pass reads each segment's master files whole to check
/// them, and the server's poller, which installs new versions, waits for it; a backlog (the
/// first pass after retention is turned on) goes a few segments a poll.
const SEGMENTS_PER_PASS: usize = 8;

/// Deletes the sealed segments of `dataset`'s log that the rules above allow, for a
/// retention age of `min_age`, at most [`SEGMENTS_PER_PASS`] of them.
pub async fn prune_log(env: &BatchEnv, dataset: &str, min_age: Duration) -> Result<Pruned> {
    let mut pruned = Pruned::default();
    let Some(record) = env.catalog.dataset(dataset).await? else { return Ok(pruned) };
    let Some(covered) = covered_by_every_view(env, dataset).await? else { return Ok(pruned) };
    let bound = record.compacted_seq.min(covered);
    let dir = env.log_dir(dataset);
    let sealed = sealed_segments(env, dataset).await?;
    let now = SystemTime::now();
    let mut master: Option<Vec<Path>> = None;
    for (segment, last_seq) in sealed.into_iter().take(SEGMENTS_PER_PASS) {
        let age = std::fs::metadata(&segment.path)
            .and_then(|m| m.modified())
            .map_err(|e| Error::Io(segment.path.display().to_string(), e))?;
        if last_seq > bound || now.duration_since(age).unwrap_or_default() < min_age {
            break;
        }
        let events = last_seq + 1 - segment.first_seq;
        let files = match &master {
            Some(files) => files,
            None => master.insert(list(&env.store, &master_prefix(dataset)).await?),
        };
        let mine: Vec<Path> =
            files.iter().filter(|p| master_file_segment(p) == Some(segment.first_seq)).cloned().collect();
        let rows = verified_rows(&env.store, &mine).await?;
        if rows != events as i64 {
            let segment = segment.path.display();
            tracing::warn!(%segment, events, rows, "a log segment's master files do not hold its events; it is kept");
            break;
        }
        let local: Vec<PathBuf> = mine.iter().map(|p| env.data_dir.join(p.as_ref())).collect();
        let (seg_path, log_dir) = (segment.path.clone(), dir.clone());
        let first_of_pass = pruned.segments == 0;
        let bytes = tokio::task::spawn_blocking(move || -> Result<u64> {
            for file in &local {
                sync(file)?;
                sync(file.parent().expect("a master file lies in a day's directory"))?;
            }
            let bytes = std::fs::metadata(&seg_path).map(|m| m.len()).unwrap_or(0);
            // the active segment's entry is synced with its first records (`tandem_model::log`):
            // made durable before a removal, so that a crash can never leave a log whose
            // segments are all gone, which would number events from 1 again (after the first
            // removal of a pass, the sync that followed it did that)
            if first_of_pass {
                sync(&log_dir)?;
            }
            std::fs::remove_file(&seg_path).map_err(|e| Error::Io(seg_path.display().to_string(), e))?;
            sync(&log_dir)?;
            Ok(bytes)
        })
        .await
        .map_err(|e| Error::Invalid(format!("retention task: {e}")))??;
        pruned.segments += 1;
        pruned.events += events;
        pruned.bytes += bytes;
    }
    Ok(pruned)
}

/// The lowest watermark of the dataset's views, or `None` if it has no view or one has no
/// version yet.
async fn covered_by_every_view(env: &BatchEnv, dataset: &str) -> Result<Option<u64>> {
    let watermarks = env.catalog.served_watermarks(dataset).await?;
    if watermarks.is_empty() {
        return Ok(None);
    }
    Ok(watermarks.into_iter().try_fold(u64::MAX, |low, w| w.map(|w| low.min(w))))
}

fn sync(path: &std::path::Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::Io(path.display().to_string(), e))
}
