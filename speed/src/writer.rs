//! The ingest path of one dataset: a writer thread that owns the dataset's log and its
//! views, and group-commits requests.
//!
//! Each request is one message to the thread. The thread takes every message waiting,
//! drops events whose id was already accepted within the dedup window, appends one log
//! record per request and fsyncs once; then it folds the records into every view a slice of
//! requests at a time, answering each slice's requests as soon as every view holds their
//! events. A failed fsync answers every request of the group with an error, and nothing of
//! the group is visible or remembered as a duplicate.
//!
//! A request may carry an idempotency key: a retry with a key accepted within the window
//! gets the first answer and appends nothing. Keys live in the log records (see
//! `tandem_model::log`), so they survive restarts like the events do.
//!
//! Backpressure: at most `max_queued` requests wait for the thread; past that, `append`
//! fails at once with [`WriteError::Overloaded`] instead of queueing without bound.
//!
//! The thread is also the only place that rolls segments and adds views, so both happen
//! between requests, never inside one.
//!
//! Two helper threads per dataset take work off it: one merges a view's sealed speed maps
//! after a seal (`ViewLive::coalesce`), one brings a view's kept query shapes up to date
//! after a group commit (`ViewLive::catch_up`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tandem_model::log::{self, LogError, LogWriter, Recovery};
use tandem_model::{DatasetSpec, Row, Value};
use tokio::sync::oneshot;

use crate::live::{FOLD_SLICE_ROWS, ViewLive};
use crate::shapes::thread_cpu_time;

/// A request of at least this many events frees them itself (see [`DatasetWriter::append`]).
const FREED_BY_REQUEST_ROWS: usize = 64;

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Ids accepted within this window make later events with the same id duplicates.
    pub dedup_window: Duration,
    /// A retry with an idempotency key answered within this window gets the first answer.
    pub key_window: Duration,
    /// The active segment is sealed when it holds events and is this old...
    pub roll_interval: Duration,
    /// ...or this large.
    pub roll_bytes: u64,
    /// Most requests in one group commit.
    pub max_group: usize,
    /// Most requests waiting for the writer; more are refused with `Overloaded`.
    pub max_queued: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            dedup_window: Duration::from_secs(24 * 3600),
            key_window: Duration::from_secs(24 * 3600),
            roll_interval: Duration::from_secs(60),
            roll_bytes: 512 << 20,
            max_group: 4096,
            max_queued: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the writer of dataset {0:?} has stopped")]
    Stopped(String),
    #[error("view: {0}")]
    View(String),
    #[error("the writer of dataset {0:?} has {1} requests waiting; retry shortly")]
    Overloaded(String, usize),
}

impl WriteError {
    /// The log could not be written because its disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, WriteError::Log(LogError::Io { source, .. }) if source.kind() == std::io::ErrorKind::StorageFull)
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub accepted: usize,
    pub duplicates: usize,
}

enum Command {
    Append {
        rows: Arc<Vec<Row>>,
        key: Option<String>,
        reply: oneshot::Sender<Result<AppendOutcome, WriteError>>,
        /// When the request was queued.
        queued: Instant,
    },
    Roll {
        reply: oneshot::Sender<Result<u64, WriteError>>,
    },
    AddView {
        view: Arc<ViewLive>,
        reply: oneshot::Sender<Result<u64, WriteError>>,
    },
    RemoveView {
        name: String,
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to a dataset's writer thread. Dropping every handle stops the thread after it
/// has answered what it holds.
#[derive(Clone)]
pub struct DatasetWriter {
    name: String,
    tx: Sender<Command>,
    thread: Arc<parking_lot::Mutex<Option<JoinHandle<()>>>>,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    /// The last sequence number made durable (see [`DatasetWriter::stored_events`]).
    stored: Arc<AtomicU64>,
}

impl DatasetWriter {
    /// Opens the dataset's log in `dir`, rebuilds each view's speed layer and the dedup
    /// index from it, and starts the writer thread.
    pub fn open(
        dir: &Path,
        spec: DatasetSpec,
        views: Vec<Arc<ViewLive>>,
        config: WriterConfig,
    ) -> Result<(DatasetWriter, Recovery), WriteError> {
        let (log, recovery) = LogWriter::open(dir)?;
        let max_queued = config.max_queued;
        let spawn_error = |e| LogError::Io { path: dir.to_path_buf(), source: e };
        // long-lived helper threads, one per kind of work: a thread's allocator heap is reused
        // from one piece of work to the next (a thread per merge left a heap behind each time)
        let helper = |kind: &str, niceness: i32, work: fn(&ViewLive)| -> std::io::Result<Sender<Arc<ViewLive>>> {
            let (tx, rx) = crossbeam_channel::unbounded::<Arc<ViewLive>>();
            std::thread::Builder::new().name(format!("{kind}-{}", spec.name)).spawn(move || {
                lower_priority(niceness);
                rx.iter().for_each(|view| work(&view))
            })?;
            Ok(tx)
        };
        let coalesce = helper("coalesce", COALESCE_NICENESS, ViewLive::coalesce).map_err(spawn_error)?;
        let catch_up = helper("shapes", 0, ViewLive::catch_up).map_err(spawn_error)?;
        let stored = Arc::new(AtomicU64::new(0));
        let mut thread = WriterThread {
            stored: Arc::clone(&stored),
            coalesce,
            catch_up,
            spec: spec.clone(),
            log,
            views,
            dedup: Dedup::default(),
            config,
            opened: Instant::now(),
            dir: dir.to_path_buf(),
            group_ids: HashSet::default(),
            keys: HashMap::new(),
            group_keys: HashMap::new(),
            roll_failed: None,
            metrics: WriterMetrics::new(&spec.name),
            after_seal: None,
        };
        thread.replay()?;
        stored.store(thread.log.next_seq() - 1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::unbounded();
        let handle = std::thread::Builder::new()
            .name(format!("writer-{}", spec.name))
            .spawn(move || thread.run(rx))
            .map_err(spawn_error)?;
        let writer = DatasetWriter {
            name: spec.name,
            tx,
            thread: Arc::new(parking_lot::Mutex::new(Some(handle))),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued,
            stored,
        };
        Ok((writer, recovery))
    }

    /// How many events the dataset has stored since it was made (each event's sequence number
    /// is the next, so this is the last one made durable; duplicates are not stored).
    pub fn stored_events(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| WriteError::Stopped(self.name.clone()))?;
        rx.await.map_err(|_| WriteError::Stopped(self.name.clone()))
    }

    /// Stores `rows` durably as one record and folds them into every view. Answers only
    /// after the fsync and the fold. With a `key` already answered within the window, returns
    /// that answer and stores nothing.
    pub async fn append(&self, rows: Vec<Row>, key: Option<String>) -> Result<AppendOutcome, WriteError> {
        let waiting = self.queued.fetch_add(1, Ordering::SeqCst);
        let _leave = QueueSlot(&self.queued);
        if waiting >= self.max_queued {
            return Err(WriteError::Overloaded(self.name.clone(), waiting));
        }
        // a large request keeps a reference to its events until it is answered, so that they
        // are freed here, beside the thread that decoded them, not on the writer (their frees
        // were 7.7 % of the writer's samples at 1,000 events a request; session 23); a small
        // one does not, as sharing the count cost single-event requests more than they gained
        let rows = Arc::new(rows);
        let ours = (rows.len() >= FREED_BY_REQUEST_ROWS).then(|| Arc::clone(&rows));
        let answer = self.call(|reply| Command::Append { rows, key, reply, queued: Instant::now() }).await;
        drop(ours);
        answer?
    }

    /// Seals the active segment (if it holds events); returns the last sealed sequence number.
    pub async fn roll(&self) -> Result<u64, WriteError> {
        self.call(|reply| Command::Roll { reply }).await?
    }

    /// Adds a view. Its speed layer starts with the next event; everything before is sealed
    /// first, so the view's first batch run covers it. Returns that floor.
    pub async fn add_view(&self, view: Arc<ViewLive>) -> Result<u64, WriteError> {
        self.call(|reply| Command::AddView { view, reply }).await?
    }

    pub async fn remove_view(&self, name: &str) -> Result<(), WriteError> {
        self.call(|reply| Command::RemoveView { name: name.to_string(), reply }).await
    }

    /// Stops the thread after it has answered everything sent before, and waits for it (on a
    /// blocking thread: the writer drops its views' maps as it ends, which can take a while).
    pub async fn shutdown(&self) {
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
        let handle = self.thread.lock().take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// Takes a request off the queue count when it is answered or abandoned.
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepted ids and when they were accepted (UTC micros), by a 128-bit keyed hash of the id
/// (SipHash-1-3 of its type and bytes): 24 bytes an id whatever its length, and no allocation
/// per lookup. The keys are random per process (the index is rebuilt from the log at start,
/// never stored), so ids cannot be crafted to collide; two different ids collide with
/// probability about n²/2¹²⁹, i.e. never at any real volume.
struct Dedup {
    keys: (u64, u64),
    seen: HashMap<u128, i64, foldhash::fast::RandomState>,
}

impl Default for Dedup {
    fn default() -> Self {
        use std::hash::BuildHasher;
        let random = std::collections::hash_map::RandomState::new();
        Dedup { keys: (random.hash_one(1u8), random.hash_one(2u8)), seen: HashMap::default() }
    }
}

impl Dedup {
    fn key(&self, value: &Value) -> Option<u128> {
        use siphasher::sip128::{Hasher128, SipHasher13};
        use std::hash::Hasher;
        let mut h = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        match value {
            Value::String(s) => {
                h.write_u8(b's');
                h.write(s.as_bytes());
            }
            Value::Int(i) => {
                h.write_u8(b'i');
                h.write_i64(*i);
            }
            _ => return None,
        }
        Some(h.finish128().as_u128())
    }

    fn is_duplicate(&self, key: u128, now: i64, window: i64) -> bool {
        self.seen.get(&key).is_some_and(|&at| now - at < window)
    }

    fn evict(&mut self, now: i64, window: i64) {
        self.seen.retain(|_, at| now - *at < window);
    }
}

struct WriterThread {
    spec: DatasetSpec,
    log: LogWriter,
    /// The last sequence number made durable, for [`DatasetWriter::stored_events`].
    stored: Arc<AtomicU64>,
    views: Vec<Arc<ViewLive>>,
    /// Views with sealed speed maps to merge, for the coalescing thread (which stops when
    /// this is dropped with the writer).
    coalesce: Sender<Arc<ViewLive>>,
    /// Views whose kept query shapes have events to fold, for the shapes thread (likewise).
    catch_up: Sender<Arc<ViewLive>>,
    dedup: Dedup,
    config: WriterConfig,
    opened: Instant,
    dir: PathBuf,
    /// Ids staged in the group being committed.
    group_ids: HashSet<u128, foldhash::fast::RandomState>,
    /// Idempotency keys answered within the window: the answer and when (UTC micros).
    keys: HashMap<String, (AppendOutcome, i64)>,
    /// Keys staged in the group being committed, with their answer.
    group_keys: HashMap<String, AppendOutcome>,
    /// When sealing last failed (a full disk): the next timed attempt waits a second.
    roll_failed: Option<Instant>,
    metrics: WriterMetrics,
    /// While `TANDEM_LOG` shows debug lines: the events folded since the last seal and the
    /// writer's CPU time folding them, until [`AFTER_SEAL_EVENTS`], for the line that says what
    /// a seal's new maps cost.
    after_seal: Option<(usize, Duration)>,
}

/// How many events after a seal the writer's debug line `folds after a seal` covers: about
/// the first 150 ms at the bench's ack rate, when a new segment's maps make their groups.
const AFTER_SEAL_EVENTS: usize = 100_000;

/// What the writer reports to `GET /metrics`, through the `metrics` facade (a no-op without
/// an installed recorder). The handles are taken once, so a group commit pays an atomic add
/// per counter and a push per histogram, never a lookup by name.
struct WriterMetrics {
    /// Events made durable (after the fsync); duplicates and replayed requests store none.
    stored: metrics::Counter,
    duplicates: metrics::Counter,
    /// One sample a group commit.
    fsync: metrics::Histogram,
    fold: metrics::Histogram,
    failed_syncs: metrics::Counter,
    seals: metrics::Counter,
}

impl WriterMetrics {
    fn new(dataset: &str) -> WriterMetrics {
        use metrics::{Unit, describe_counter, describe_histogram};
        describe_counter!("tandem_events_stored_total", "Events made durable (counted after the fsync).");
        describe_counter!("tandem_events_duplicate_total", "Events dropped as duplicates of an id within the window.");
        describe_histogram!("tandem_log_fsync_seconds", Unit::Seconds, "The fsync of one group commit.");
        describe_histogram!("tandem_speed_fold_seconds", Unit::Seconds, "One group commit's fold into every view.");
        describe_counter!("tandem_log_failed_syncs_total", "Failed fsyncs; their requests got an error.");
        describe_counter!("tandem_log_segments_sealed_total", "Log segments sealed.");
        let label = [("dataset", dataset.to_string())];
        WriterMetrics {
            stored: metrics::counter!("tandem_events_stored_total", &label),
            duplicates: metrics::counter!("tandem_events_duplicate_total", &label),
            fsync: metrics::histogram!("tandem_log_fsync_seconds", &label),
            fold: metrics::histogram!("tandem_speed_fold_seconds", &label),
            failed_syncs: metrics::counter!("tandem_log_failed_syncs_total", &label),
            seals: metrics::counter!("tandem_log_segments_sealed_total", &label),
        }
    }
}

/// How much nicer than the writer the thread that merges sealed speed maps runs. A merge is
/// background work that nothing waits for, yet it takes a few hundred ms of a core after
/// each seal; at the writer's priority it took that share of the two cores from the writer
/// and the request threads, and from the acknowledgements of that moment. Niced, it runs on
/// what they leave, the nicest a thread can be. It holds the view's lock at most about
/// 100 µs at a time (`COALESCE_SLICE`) and then rests (`COALESCE_REST`); should it be
/// preempted inside a slice, a writer blocked on that lock leaves a core free that it can
/// resume on (unless the request threads take that core first: the measured p99s are the
/// judge). Session 30's suite saw the writer wait up to 28 ms for the view's lock while a
/// merge ran at nice 10; session 32's alternated runs, at nice 19 with the rest, had fewer
/// slow acknowledgements than at nice 10 without it (`bench/HISTORY.md`).
const COALESCE_NICENESS: i32 = 19;

/// Makes the calling thread `by` nicer (lower priority; 0 leaves it as it is), at most 19.
/// On Linux a thread id names one thread for `setpriority`; where that fails, the thread
/// keeps its priority (a slower acknowledgement now and then, nothing more).
fn lower_priority(by: i32) {
    if by == 0 {
        return;
    }
    let me = Some(rustix::thread::gettid());
    let lowered = rustix::process::getpriority_process(me)
        .and_then(|nice| rustix::process::setpriority_process(me, (nice + by).min(19)));
    if let Err(e) = lowered {
        tracing::debug!(by, error = %e, "could not lower a helper thread's priority");
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// An acknowledgement slower than this logs where its group commit spent the time.
const SLOW_ACK: Duration = Duration::from_millis(10);

/// How long a group commit's steps took.
#[derive(Debug, Default)]
struct CommitSteps {
    sync: Duration,
    fold: Duration,
    /// Of `fold`, how long the writer thread ran (the rest it waited: for the views' locks,
    /// or for a core).
    fold_cpu: Duration,
    /// Of `fold`, how long the views' locks were waited for.
    lock: Duration,
    /// Events folded.
    events: usize,
}

struct Pending {
    reply: oneshot::Sender<Result<AppendOutcome, WriteError>>,
    outcome: AppendOutcome,
    /// Its first sequence number and rows, shared with the views' deltas once folded.
    record: Option<(u64, Arc<Vec<Row>>)>,
    /// Whether the request holds a reference to those rows too (see `DatasetWriter::append`).
    shared: bool,
    /// A new idempotency key to remember once the group is durable.
    key: Option<String>,
    /// Events of the request dropped as duplicates (0 for a replayed idempotency key).
    duplicates: usize,
}

impl WriterThread {
    fn window(&self) -> i64 {
        self.config.dedup_window.as_micros() as i64
    }

    fn key_window(&self) -> i64 {
        self.config.key_window.as_micros() as i64
    }

    /// Rebuilds the views' speed layers and the dedup index from every segment.
    fn replay(&mut self) -> Result<(), WriteError> {
        let now = now_micros();
        let window = self.window();
        let segments = log::list_segments(&self.dir)?;
        let active = self.log.active_first_seq();
        // every sealed segment goes into one sealed map per view, keyed past its floor
        let maps: Vec<u64> = self.views.iter().map(|v| v.floor() + 1).collect();
        let mut sealed_through = None;
        for segment in segments {
            if segment.first_seq == active {
                continue;
            }
            for record in log::sealed_records(&segment.path)? {
                let record = record?;
                if let Some(key) = &record.key
                    && now - record.ingest_time < self.key_window()
                {
                    let outcome = AppendOutcome { accepted: record.rows.len(), duplicates: record.duplicates as usize };
                    self.keys.insert(key.clone(), (outcome, record.ingest_time));
                }
                if let Some(id) = self.spec.id_index() {
                    for row in &record.rows {
                        if let Some(key) = self.dedup.key(&row[id])
                            && now - record.ingest_time < window
                        {
                            self.dedup.seen.insert(key, record.ingest_time);
                        }
                    }
                }
                sealed_through = sealed_through.max(Some(record.end_seq().saturating_sub(1)));
                let rows = Arc::new(record.rows);
                for (view, map) in self.views.iter().zip(&maps) {
                    view.apply(*map, record.ingest_time, &[(record.first_seq, &rows)]).map_err(WriteError::View)?;
                }
            }
        }
        if let Some(through) = sealed_through {
            for (view, map) in self.views.iter().zip(&maps) {
                view.seal(*map, through);
            }
        }
        Ok(())
    }

    fn run(mut self, rx: Receiver<Command>) {
        let tick = Duration::from_millis(500);
        let mut last_evict = Instant::now();
        loop {
            let first = match rx.recv_timeout(tick) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    self.maybe_roll();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            while group.len() < self.config.max_group {
                match rx.try_recv() {
                    Ok(c) => group.push(c),
                    Err(_) => break,
                }
            }
            let mut pending = Vec::new();
            let mut stop = None;
            let started = Instant::now();
            let oldest = group
                .iter()
                .filter_map(|c| if let Command::Append { queued, .. } = c { Some(*queued) } else { None })
                .min();
            for command in group {
                match command {
                    Command::Append { rows, key, reply, .. } => {
                        let staged = self.stage(rows, key, reply);
                        pending.push(staged);
                    }
                    Command::Shutdown { reply } => stop = Some(reply),
                    other => {
                        self.commit(std::mem::take(&mut pending));
                        self.control(other);
                    }
                }
            }
            let staged = started.elapsed();
            let steps = self.commit(pending);
            if let Some(oldest) = oldest.filter(|o| o.elapsed() >= SLOW_ACK) {
                // where a slow acknowledgement spent its time, for `TANDEM_LOG=tandem_speed=debug`
                tracing::debug!(
                    dataset = %self.spec.name,
                    total_ms = oldest.elapsed().as_secs_f64() * 1e3,
                    queued_ms = started.duration_since(oldest).as_secs_f64() * 1e3,
                    stage_ms = staged.as_secs_f64() * 1e3,
                    sync_ms = steps.sync.as_secs_f64() * 1e3,
                    fold_ms = steps.fold.as_secs_f64() * 1e3,
                    fold_cpu_ms = steps.fold_cpu.as_secs_f64() * 1e3,
                    events = steps.events,
                    lock_ms = steps.lock.as_secs_f64() * 1e3,
                    "slow group commit"
                );
            }
            if let Some((events, cpu)) = &mut self.after_seal {
                *events += steps.events;
                *cpu += steps.fold_cpu;
                if *events >= AFTER_SEAL_EVENTS {
                    let (events, cpu) = (*events, cpu.as_secs_f64());
                    let us_per_event = cpu * 1e6 / events as f64;
                    tracing::debug!(dataset = %self.spec.name, events, fold_cpu_ms = cpu * 1e3, us_per_event, "folds after a seal");
                    self.after_seal = None;
                }
            }
            if let Some(reply) = stop {
                let _ = reply.send(());
                return;
            }
            let rolling = Instant::now();
            if self.maybe_roll() {
                tracing::debug!(dataset = %self.spec.name, ms = rolling.elapsed().as_secs_f64() * 1e3, "sealed the active segment");
                self.after_seal = tracing::enabled!(tracing::Level::DEBUG).then_some((0, Duration::ZERO));
            }
            if last_evict.elapsed() > Duration::from_secs(60) {
                let (now, window) = (now_micros(), self.window());
                self.dedup.evict(now, window);
                let key_window = self.key_window();
                self.keys.retain(|_, (_, at)| now - *at < key_window);
                last_evict = Instant::now();
            }
        }
        let _ = self.log.sync();
    }

    /// Drops duplicates and buffers the record; nothing is durable or visible yet.
    fn stage(
        &mut self,
        rows: Arc<Vec<Row>>,
        key: Option<String>,
        reply: oneshot::Sender<Result<AppendOutcome, WriteError>>,
    ) -> Pending {
        let now = now_micros();
        let window = self.window();
        if let Some(k) = &key {
            let key_window = self.key_window();
            let answered = self.keys.get(k).filter(|(_, at)| now - at < key_window).map(|(o, _)| *o);
            if let Some(outcome) = answered.or_else(|| self.group_keys.get(k).copied()) {
                return Pending { reply, outcome, record: None, shared: false, key: None, duplicates: 0 };
            }
        }
        let total = rows.len();
        let rows: Arc<Vec<Row>> = match self.spec.id_index() {
            None => rows,
            Some(id) => {
                let fresh: Vec<bool> = rows
                    .iter()
                    .map(|row| match self.dedup.key(&row[id]) {
                        None => true,
                        Some(k) => !self.dedup.is_duplicate(k, now, window) && self.group_ids.insert(k),
                    })
                    .collect();
                if fresh.iter().all(|f| *f) {
                    rows
                } else {
                    Arc::new(rows.iter().zip(&fresh).filter(|(_, f)| **f).map(|(row, _)| row.clone()).collect())
                }
            }
        };
        let outcome = AppendOutcome { accepted: rows.len(), duplicates: total - rows.len() };
        let shared = Arc::strong_count(&rows) > 1; // before any view's delta holds them
        let record = if rows.is_empty() && key.is_none() {
            None
        } else {
            let first_seq = self.log.append(now, &rows, outcome.duplicates as u32, key.as_deref());
            Some((first_seq, rows))
        };
        if let Some(k) = &key {
            self.group_keys.insert(k.clone(), outcome);
        }
        Pending { reply, outcome, record, shared, key, duplicates: outcome.duplicates }
    }

    /// Fsyncs the staged records, then makes them visible and remembered, then answers;
    /// returns how long the sync and the fold took.
    fn commit(&mut self, pending: Vec<Pending>) -> CommitSteps {
        self.group_ids.clear();
        self.group_keys.clear();
        let mut steps = CommitSteps::default();
        if pending.is_empty() {
            return steps;
        }
        let ingest_time = now_micros();
        let started = Instant::now();
        let synced = self.log.sync();
        steps.sync = started.elapsed();
        self.metrics.fsync.record(steps.sync);
        if let Err(e) = synced {
            self.metrics.failed_syncs.increment(1);
            let message = e.to_string();
            let kind = match &e {
                LogError::Io { source, .. } => source.kind(),
                LogError::Corrupt { .. } => std::io::ErrorKind::InvalidData,
            };
            tracing::error!(dataset = %self.spec.name, error = %message, "log sync failed; rejecting the group");
            for p in pending {
                let _ = p.reply.send(Err(WriteError::Log(LogError::Io {
                    path: self.dir.clone(),
                    source: std::io::Error::new(kind, message.clone()),
                })));
            }
            return steps;
        }
        self.stored.store(self.log.next_seq() - 1, Ordering::Relaxed);
        let segment = self.log.active_first_seq();
        let id = self.spec.id_index();
        let stored: usize = pending.iter().filter_map(|p| p.record.as_ref()).map(|(_, rows)| rows.len()).sum();
        self.metrics.stored.increment(stored as u64);
        self.metrics.duplicates.increment(pending.iter().map(|p| p.duplicates as u64).sum());
        for p in &pending {
            if let Some(key) = &p.key {
                self.keys.insert(key.clone(), (p.outcome, ingest_time));
            }
            for row in p.record.iter().flat_map(|(_, rows)| rows.iter()) {
                if let Some(key) = id.and_then(|id| self.dedup.key(&row[id])) {
                    self.dedup.seen.insert(key, ingest_time);
                }
            }
        }
        // the group is folded and answered a slice of whole requests (about `FOLD_SLICE_ROWS`
        // events) at a time: each slice goes to every view (`ViewLive::apply`, one call per
        // view, which hands the lock to a waiting query when it ends), and its requests are
        // answered as soon as every view holds their events, so that the first requests of a
        // large group do not wait for the whole group's fold
        let started = Instant::now();
        // the thread's CPU clock is a system call: read only for the debug line that shows it
        let cpu = tracing::enabled!(tracing::Level::DEBUG).then(thread_cpu_time);
        steps.events = stored;
        let mut pending = pending.into_iter().peekable();
        while pending.peek().is_some() {
            let mut events = 0;
            let slice: Vec<Pending> = std::iter::from_fn(|| {
                let p = pending.next_if(|_| events < FOLD_SLICE_ROWS)?;
                events += p.record.as_ref().map_or(0, |(_, rows)| rows.len());
                Some(p)
            })
            .collect();
            self.fold(segment, ingest_time, &slice, &mut steps);
            for mut p in slice {
                // a request that shares its events (see `append`) frees them: let go of ours
                // before answering; any other's are freed here, after answering
                if p.shared {
                    p.record = None;
                }
                let _ = p.reply.send(Ok(p.outcome));
            }
        }
        steps.fold = started.elapsed();
        steps.fold_cpu = cpu.map_or(Duration::ZERO, |cpu| thread_cpu_time().saturating_sub(cpu));
        self.metrics.fold.record(steps.fold);
        steps
    }

    /// Folds the records of `slice` into every view, each view under its lock in one call.
    fn fold(&self, segment: u64, ingest_time: i64, slice: &[Pending], steps: &mut CommitSteps) {
        let records: Vec<(u64, &Arc<Vec<Row>>)> =
            slice.iter().filter_map(|p| p.record.as_ref().map(|(seq, rows)| (*seq, rows))).collect();
        if records.is_empty() {
            return;
        }
        for view in &self.views {
            match view.apply(segment, ingest_time, &records) {
                Ok(applied) => {
                    if applied.catch_up_due {
                        let _ = self.catch_up.send(view.clone()); // that thread lives as long as this one
                    }
                    steps.lock += applied.lock_wait;
                }
                Err(e) => tracing::error!(view = view.name(), error = %e, "speed layer could not fold events"),
            }
        }
    }

    fn control(&mut self, command: Command) {
        match command {
            Command::Append { .. } | Command::Shutdown { .. } => unreachable!("handled by the loop"),
            Command::Roll { reply } => {
                let _ = reply.send(self.roll());
            }
            Command::AddView { view, reply } => {
                let result = self.roll();
                if let Ok(sealed_through) = result {
                    view.set_floor(sealed_through);
                    self.views.retain(|v| v.name() != view.name());
                    self.views.push(view);
                }
                let _ = reply.send(result);
            }
            Command::RemoveView { name, reply } => {
                self.views.retain(|v| v.name() != name);
                let _ = reply.send(());
            }
        }
    }

    /// Seals the active segment if it holds events; its speed maps are merged into the sealed
    /// ones in the background (see `ViewLive::coalesce`). Returns the last sealed sequence
    /// number.
    fn roll(&mut self) -> Result<u64, WriteError> {
        if let Some((segment, last)) = self.log.roll()? {
            self.metrics.seals.increment(1);
            for view in &self.views {
                if view.seal(segment.first_seq, last) {
                    let _ = self.coalesce.send(view.clone()); // that thread lives as long as this one
                }
            }
        }
        self.opened = Instant::now();
        Ok(self.log.next_seq() - 1)
    }

    /// Seals the active segment if it is due; whether it did.
    fn maybe_roll(&mut self) -> bool {
        let has_events = self.log.next_seq() > self.log.active_first_seq();
        let due = self.opened.elapsed() >= self.config.roll_interval || self.log.active_len() >= self.config.roll_bytes;
        let backing_off = self.roll_failed.is_some_and(|at| at.elapsed() < Duration::from_secs(1));
        if has_events && due && !backing_off {
            match self.roll() {
                Ok(_) => {
                    self.roll_failed = None;
                    return true;
                }
                Err(e) => {
                    tracing::error!(dataset = %self.spec.name, error = %e, "could not seal the active segment");
                    self.roll_failed = Some(Instant::now());
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_model::agg::{Groups, fold_row, merge_groups};
    use tandem_model::{Value, ViewSpec};

    fn dataset() -> DatasetSpec {
        serde_json::from_str(
            r#"{"name":"d","time_field":"ts","id_field":"id","fields":{"ts":"timestamp","id":"string","n":"int64"}}"#,
        )
        .unwrap()
    }

    fn view() -> Arc<ViewLive> {
        let v: ViewSpec = serde_json::from_str(
            r#"{"name":"v","dataset":"d","granularity":"day","measures":{"c":"count","s":"sum(n)"}}"#,
        )
        .unwrap();
        Arc::new(ViewLive::new(v.compile(&dataset()).unwrap(), None).unwrap())
    }

    fn event(id: &str, n: i64) -> Row {
        // fields in name order: id, n, ts
        vec![Value::String(id.into()), Value::Int(n), Value::Timestamp(0)]
    }

    fn totals(live: &ViewLive) -> serde_json::Value {
        live.read(|s| {
            let mut all = Groups::default();
            s.segments.values().for_each(|seg| merge_groups(&mut all, &seg.groups));
            let states = all.values().next().cloned().unwrap_or_default();
            serde_json::json!(states.iter().map(|s| s.finish()).collect::<Vec<_>>())
        })
    }

    /// The nice value of each of this process's threads named `name` (as /proc shows it).
    fn thread_nice(name: &str) -> Vec<i32> {
        let tasks = std::fs::read_dir("/proc/self/task").unwrap();
        tasks
            .filter_map(|task| {
                let path = task.unwrap().path();
                let comm = std::fs::read_to_string(path.join("comm")).ok()?;
                let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                // fields after the parenthesised name: state is the 3rd field, nice the 19th
                let after = &stat[stat.rfind(')')? + 2..];
                (comm.trim() == name).then(|| after.split(' ').nth(16).unwrap().parse().unwrap())
            })
            .collect()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn sealed_maps_merge_on_a_lower_priority_than_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        // a name of its own: other tests run writers of dataset "d" beside this one
        let spec = DatasetSpec { name: "prio".into(), ..dataset() };
        let (writer, _) = DatasetWriter::open(dir.path(), spec, vec![], WriterConfig::default()).unwrap();
        // a thread names itself, and lowers its own priority, once it runs
        let deadline = Instant::now() + Duration::from_secs(10);
        let (coalesce, shapes, main) = loop {
            let found = (thread_nice("coalesce-prio"), thread_nice("shapes-prio"), thread_nice("writer-prio"));
            let lowered = found.0.first().is_some_and(|n| found.2.first().is_some_and(|m| n > m));
            if (found.0.len(), found.1.len(), found.2.len()) == (1, 1, 1) && lowered || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!((coalesce.len(), shapes.len(), main.len()), (1, 1, 1), "one thread each");
        assert_eq!(shapes, main, "query shapes catch up at the writer's priority");
        assert_eq!(coalesce[0], (main[0] + COALESCE_NICENESS).min(19));
        writer.shutdown().await;
    }

    /// A request decoded before its dataset gained fields is shorter than a row of the new
    /// definition; it may reach the writer after a view over an added field was made (it was
    /// decoded, then waited), and it is in the log when that view replays it after a restart.
    /// Both times the view reads the added fields as null, its filter too.
    #[tokio::test]
    async fn rows_stored_before_fields_were_added_read_as_null_there() {
        let dir = tempfile::tempdir().unwrap();
        let added = [("plan".to_string(), tandem_model::FieldType::String)];
        let wider = dataset().add_fields(&added.into_iter().collect()).unwrap();
        let by_plan = || {
            let v: ViewSpec = serde_json::from_str(
                r#"{"name":"p","dataset":"d","granularity":"day","dimensions":["plan"],
                    "measures":{"c":"count","s":"sum(n)"},"filter":"plan IS NULL OR plan <> 'free'"}"#,
            )
            .unwrap();
            Arc::new(ViewLive::new(v.compile(&wider).unwrap(), None).unwrap())
        };
        let with_plan = |id: &str, n: i64, plan: &str| {
            let mut row = event(id, n);
            row.push(Value::String(plan.into()));
            row
        };
        let groups = |live: &ViewLive| {
            live.read(|s| {
                let mut all = Groups::default();
                s.segments.values().for_each(|seg| merge_groups(&mut all, &seg.groups));
                let mut groups: Vec<_> = all
                    .iter()
                    .map(|(k, states)| {
                        (format!("{:?}", k.dims[0]), states.iter().map(|s| s.finish()).collect::<Vec<_>>())
                    })
                    .collect();
                groups.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::json!(groups)
            })
        };
        let want = serde_json::json!([["Null", [2, 3]], ["String(\"pro\")", [1, 10]]]);
        let (writer, _) = DatasetWriter::open(dir.path(), dataset(), vec![], WriterConfig::default()).unwrap();
        let live = by_plan();
        writer.add_view(Arc::clone(&live)).await.unwrap();
        writer.append(vec![event("a", 1), event("b", 2)], None).await.unwrap();
        writer.append(vec![with_plan("c", 10, "pro"), with_plan("d", 100, "free")], None).await.unwrap();
        assert_eq!(groups(&live), want);
        writer.shutdown().await;
        // the log holds records of both widths; a view made anew folds every one of them
        let live = by_plan();
        let (writer, _) =
            DatasetWriter::open(dir.path(), wider, vec![Arc::clone(&live)], WriterConfig::default()).unwrap();
        assert_eq!(groups(&live), want);
        writer.shutdown().await;
    }

    /// Freshness 0: many requests at once (so that groups hold several, folded and answered
    /// a slice at a time), each checking that all its events are visible in every view the
    /// moment its answer arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_event_is_visible_when_its_acknowledgement_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let views = [view(), view()];
        let (writer, _) = DatasetWriter::open(dir.path(), dataset(), views.to_vec(), WriterConfig::default()).unwrap();
        let day = tandem_model::view::DAY;
        // requests of 2,000 events, each on a day of its own, so that folding one takes a while
        let tasks: Vec<_> = (0..100i64)
            .map(|i| {
                let (w, views) = (writer.clone(), views.clone());
                tokio::spawn(async move {
                    let rows = (0..2000).map(|j| {
                        vec![Value::String(format!("e{i}-{j}").into()), Value::Int(j), Value::Timestamp(i * day)]
                    });
                    assert_eq!(w.append(rows.collect(), None).await.unwrap().accepted, 2000);
                    for (v, live) in views.iter().enumerate() {
                        let counts = live.read(|s| {
                            let groups = s.segments.values().flat_map(|m| m.groups.iter());
                            groups
                                .filter(|(k, _)| k.bucket == i * day)
                                .map(|(_, states)| states[0].finish())
                                .collect::<Vec<_>>()
                        });
                        assert_eq!(
                            counts,
                            [serde_json::json!(2000)],
                            "request {i} answered before all of it was visible in view {v}"
                        );
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        for live in &views {
            let groups = live.read(|s| s.segments.values().map(|m| m.groups.len()).sum::<usize>());
            assert_eq!(groups, 100, "every request folded once into each view, into its own day");
        }
        writer.shutdown().await;
    }

    #[tokio::test]
    async fn duplicates_are_dropped_and_everything_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let live = view();
        let (writer, _) =
            DatasetWriter::open(dir.path(), dataset(), vec![live.clone()], WriterConfig::default()).unwrap();
        let out = writer.append(vec![event("a", 1), event("b", 2), event("a", 100)], None).await.unwrap();
        assert_eq!(out, AppendOutcome { accepted: 2, duplicates: 1 });
        // concurrent requests share group commits; all are applied exactly once
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let w = writer.clone();
                tokio::spawn(async move { w.append(vec![event(&format!("x{i}"), i)], None).await.unwrap() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().accepted, 1);
        }
        let expected = serde_json::json!([52, 3 + (0..50).sum::<i64>()]);
        assert_eq!(totals(&live), expected);
        writer.shutdown().await;
        assert!(writer.append(vec![event("z", 1)], None).await.is_err());

        let again = view();
        let (writer, recovery) =
            DatasetWriter::open(dir.path(), dataset(), vec![again.clone()], WriterConfig::default()).unwrap();
        assert!(recovery.truncated.is_none());
        assert_eq!(totals(&again), expected, "replay rebuilds the speed layer");
        let out = writer.append(vec![event("b", 5), event("c", 5)], None).await.unwrap();
        assert_eq!(out, AppendOutcome { accepted: 1, duplicates: 1 }, "dedup survives a restart");
    }

    /// Sealed maps are merged into one; a version whose watermark cuts through the merged
    /// map gets the events past it folded afresh from the log, and the total stays exact.
    #[tokio::test]
    async fn sealed_maps_coalesce_and_a_cutting_watermark_is_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let live = view();
        let (writer, _) =
            DatasetWriter::open(dir.path(), dataset(), vec![live.clone()], WriterConfig::default()).unwrap();
        let mut n = 0;
        let mut sealed_at = Vec::new();
        for segment in 0..4 {
            for _ in 0..3 {
                n += 1;
                writer.append(vec![event(&format!("e{n}"), n)], None).await.unwrap();
            }
            if segment < 3 {
                sealed_at.push(writer.roll().await.unwrap());
            }
        }
        let expected = serde_json::json!([n, (1..=n).sum::<i64>()]);
        // coalescing runs on its own thread: wait for one sealed map and the active one
        for _ in 0..200 {
            if live.read(|s| s.segments.len()) == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        live.read(|s| {
            assert_eq!(s.segments.len(), 2, "{:?}", s.segments.keys().collect::<Vec<_>>());
            assert_eq!(s.segments.values().next().unwrap().through, sealed_at[2]);
        });
        assert_eq!(totals(&live), expected);

        // a version covering the first segment only (events 1..=3)
        let watermark = sealed_at[0];
        let mut covered = Groups::default();
        for i in 1..=3 {
            fold_row(&live.view, &mut covered, &event(&format!("e{i}"), i));
        }
        let snapshot = crate::BatchSnapshot::new(1, watermark, None, covered);
        let installed = live.publish(snapshot, |after, to| live.fold_log(dir.path(), after, to)).unwrap();
        assert!(installed);
        let all = live.read(|s| {
            let mut all = Groups::default();
            merge_groups(&mut all, &s.batch.as_ref().unwrap().groups);
            s.segments.values().for_each(|seg| merge_groups(&mut all, &seg.groups));
            assert!(s.segments.keys().all(|&k| k > watermark));
            all
        });
        let states = all.values().next().unwrap();
        assert_eq!(serde_json::json!(states.iter().map(|s| s.finish()).collect::<Vec<_>>()), expected);
        assert_eq!(live.read(|s| s.speed_events()), (n - 3) as u64);
    }

    #[test]
    fn dedup_keys_tell_types_and_values_apart() {
        let d = Dedup::default();
        let k = |v: Value| d.key(&v).unwrap();
        assert_eq!(k(Value::String("a".into())), k(Value::String("a".into())));
        assert_ne!(k(Value::String("a".into())), k(Value::String("b".into())));
        assert_ne!(k(Value::String("1".into())), k(Value::Int(1)));
        assert_ne!(k(Value::Int(1)), k(Value::Int(-1)));
        assert!(d.key(&Value::Null).is_none());
        assert_ne!(Dedup::default().keys, d.keys, "keyed per index");
    }

    #[tokio::test]
    async fn a_view_added_later_starts_after_a_sealed_floor() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = DatasetWriter::open(dir.path(), dataset(), vec![], WriterConfig::default()).unwrap();
        writer.append(vec![event("a", 1), event("b", 2)], None).await.unwrap();
        let live = view();
        assert_eq!(writer.add_view(live.clone()).await.unwrap(), 2);
        assert_eq!(log::sealed_segments(dir.path()).unwrap().last().unwrap().1, 2);
        writer.append(vec![event("c", 3)], None).await.unwrap();
        assert_eq!(totals(&live), serde_json::json!([1, 3]));
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;
    use tandem_model::Value;

    fn dataset() -> DatasetSpec {
        serde_json::from_str(
            r#"{"name":"d","time_field":"ts","id_field":"id","fields":{"ts":"timestamp","id":"string"}}"#,
        )
        .unwrap()
    }

    fn event(id: &str) -> Row {
        vec![Value::String(id.into()), Value::Timestamp(0)]
    }

    /// The ids of every event in the log under `dir`, in log order.
    fn stored_ids(dir: &Path) -> Vec<String> {
        let segments = log::list_segments(dir).unwrap();
        let rows = segments.iter().flat_map(|s| log::read_segment(&s.path).unwrap().records).flat_map(|r| r.rows);
        rows.map(|row| match &row[0] {
            Value::String(id) => id.to_string(),
            other => panic!("an id field holds {other:?}"),
        })
        .collect()
    }

    #[tokio::test]
    async fn a_retried_key_gets_the_first_answer_and_stores_nothing_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = DatasetWriter::open(dir.path(), dataset(), vec![], WriterConfig::default()).unwrap();
        let first = writer.append(vec![event("a"), event("b")], Some("k1".into())).await.unwrap();
        assert_eq!(first, AppendOutcome { accepted: 2, duplicates: 0 });
        // concurrent retries, some in the same group commit
        let retries: Vec<_> = (0..20)
            .map(|_| {
                let w = writer.clone();
                tokio::spawn(async move { w.append(vec![event("c")], Some("k1".into())).await.unwrap() })
            })
            .collect();
        for r in retries {
            assert_eq!(r.await.unwrap(), first);
        }
        // a keyed request of duplicates only is remembered too
        let dups = writer.append(vec![event("a")], Some("k2".into())).await.unwrap();
        assert_eq!(dups, AppendOutcome { accepted: 0, duplicates: 1 });
        writer.shutdown().await;

        let (writer, _) = DatasetWriter::open(dir.path(), dataset(), vec![], WriterConfig::default()).unwrap();
        assert_eq!(writer.append(vec![event("x")], Some("k1".into())).await.unwrap(), first);
        assert_eq!(writer.append(vec![event("y")], Some("k2".into())).await.unwrap(), dups);
        // "c", "x", "y" were never stored: a new key may add them
        let fresh = writer.append(vec![event("c"), event("x"), event("y")], Some("k3".into())).await.unwrap();
        assert_eq!(fresh, AppendOutcome { accepted: 3, duplicates: 0 });
        writer.shutdown().await;
        assert_eq!(stored_ids(dir.path()), ["a", "b", "c", "x", "y"]);
    }

    #[tokio::test]
    async fn ids_shared_by_requests_queued_together_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = DatasetWriter::open(dir.path(), dataset(), vec![], WriterConfig::default()).unwrap();
        // requests of 3,000 events, each sharing 1,000 ids with the one before, all queued at
        // once: some share a group commit, others follow in the next ones
        let (requests, size, shared) = (24, 3_000, 1_000);
        let ids = |r: usize| (r * (size - shared)..r * (size - shared) + size).map(|i| format!("e{i}"));
        let sent: Vec<_> = (0..requests)
            .map(|r| {
                let w = writer.clone();
                let rows: Vec<Row> = ids(r).map(|id| event(&id)).collect();
                tokio::spawn(async move { w.append(rows, None).await.unwrap() })
            })
            .collect();
        let (mut accepted, mut duplicates) = (0, 0);
        for s in sent {
            let outcome = s.await.unwrap();
            accepted += outcome.accepted;
            duplicates += outcome.duplicates;
        }
        let distinct: HashSet<String> = (0..requests).flat_map(ids).collect();
        assert_eq!(accepted, distinct.len());
        assert_eq!(accepted + duplicates, requests * size);
        writer.shutdown().await;
        let stored = stored_ids(dir.path());
        assert_eq!(stored.len(), distinct.len(), "each id stored once");
        assert_eq!(stored.into_iter().collect::<HashSet<_>>(), distinct, "the ids sent, each of them");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        let config = WriterConfig { max_queued: 2, ..WriterConfig::default() };
        let (writer, _) = DatasetWriter::open(dir.path(), dataset(), vec![], config).unwrap();
        let attempts: Vec<_> = (0..64)
            .map(|i| {
                let w = writer.clone();
                tokio::spawn(async move { w.append(vec![event(&format!("e{i}"))], None).await })
            })
            .collect();
        let mut refused = 0;
        let mut accepted = 0;
        for a in attempts {
            match a.await.unwrap() {
                Ok(o) => accepted += o.accepted,
                Err(WriteError::Overloaded(..)) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(accepted + refused, 64);
        assert!(accepted >= 1 && refused >= 1, "accepted {accepted}, refused {refused}");
        assert_eq!(writer.queued.load(Ordering::SeqCst), 0, "every slot is given back");
    }
}
