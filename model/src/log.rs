//! The event log: append-only segment files, one directory per dataset.
//!
//! # Layout
//! `DIR/{first_seq:020}.seg`, where `first_seq` is the sequence number of the segment's
//! first event. Every accepted event gets the next sequence number of its dataset, starting
//! at 1, so segment `i` holds exactly the events `first_seq(i) ..= first_seq(i+1) - 1`.
//! The segment with the highest number is the active one; every other is sealed and never
//! changes again, until log retention deletes it (oldest first, once the master dataset holds
//! its events: `tandem_batch::retention`), after which the log's first segment starts later.
//! Sequence numbers, not event time, are what batch watermarks count.
//!
//! # Segment format
//! An 8-byte magic `TNDMLOG1`, then records:
//!
//! ```text
//! u32 LE  payload length
//! u32 LE  CRC-32 of the payload
//! payload:
//!   u64 LE  sequence number of the first event
//!   i64 LE  ingest time, UTC microseconds
//!   u32 LE  number of events
//!   u32 LE  values per event (the dataset's field count)
//!   u32 LE  events of the request dropped as duplicate ids (to answer a retry the same way)
//!   u16 LE  length of the request's idempotency key (0: none), then the key
//!   events: each value of each row, in field order, as a tag byte and a body:
//!     0 null | 1 string (u32 LE length, UTF-8) | 2 int64 | 3 float64 bits | 4 false | 5 true
//!     | 6 timestamp (i64 LE micros)
//! ```
//!
//! One record is one ingest request, so a request is stored whole or not at all: a record
//! whose length or checksum does not hold is not a record. A request with an idempotency key
//! is recorded even when all its events were duplicates (a record of no events), so that a
//! retry after a restart still gets the first answer.
//!
//! # Durability and recovery
//! The writer appends records and the caller calls [`LogWriter::sync`] (fsync) before it
//! acknowledges anything; many requests share one sync (group commit, see the speed layer).
//! A new segment is created empty, without an fsync of its own: its header goes out with its
//! first records, and that first sync makes the header, the records and the directory entry
//! durable before any of them is acknowledged (a failed one leaves the file empty again, and
//! the next sync writes the header anew), so a seal adds no fsync to the writer's path. A crash
//! before that sync can leave the new segment gone, empty or headerless, which loses nothing
//! acknowledged (log retention syncs the directory before it deletes a sealed segment, so the
//! log is never left with no segment, which would number events from 1 again).
//! On open, the active segment is read back: a torn or corrupt tail (a crash mid-write, a
//! lost header) is cut off at the last whole record and reported in [`Recovery`]; a sealed
//! segment that does not read back whole is an error, never skipped.
//!
//! Written by hand rather than taken from a crate: the log is tandem's own contract (record =
//! request, sequence numbers = watermarks), and it is small.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::value::{Row, Value, ValueRef};

const MAGIC: &[u8; 8] = b"TNDMLOG1";
const RECORD_HEADER: usize = 8;
const PAYLOAD_HEADER: usize = 30;
/// A record larger than this is corruption, not data (requests are capped far below it).
const MAX_RECORD: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("sealed log segment {path} is corrupt at byte {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.to_path_buf(), source }
}

/// One ingest request's events, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub first_seq: u64,
    pub ingest_time: i64,
    pub rows: Vec<Row>,
    /// Events of the request dropped as duplicates.
    pub duplicates: u32,
    /// The request's idempotency key.
    pub key: Option<String>,
}

impl Record {
    /// The sequence number after the record's last event.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.rows.len() as u64
    }
}

/// A segment file and the first sequence number it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub first_seq: u64,
    pub path: PathBuf,
}

/// The segments in `dir`, oldest first. A missing directory has none.
pub fn list_segments(dir: &Path) -> Result<Vec<Segment>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else { continue };
        if let Ok(first_seq) = stem.parse::<u64>() {
            segments.push(Segment { first_seq, path: entry.path() });
        }
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments)
}

/// Sealed segments with the last sequence number each holds: every segment but the newest.
pub fn sealed_segments(dir: &Path) -> Result<Vec<(Segment, u64)>> {
    let segments = list_segments(dir)?;
    Ok(segments.windows(2).map(|pair| (pair[0].clone(), pair[1].first_seq - 1)).collect())
}

/// The records of a sealed segment, in order, read one at a time: the segment is streamed,
/// never held whole, so reading one costs the memory of its largest record (one ingest
/// request), whatever the segment's size. Any damage is an error, after which the iterator
/// ends.
pub fn sealed_records(path: &Path) -> Result<SealedRecords> {
    match RecordStream::open(path)? {
        (stream, None) => Ok(SealedRecords { stream, done: false }),
        (_, Some(reason)) => Err(corrupt(path, 0, &reason)),
    }
}

/// See [`sealed_records`].
pub struct SealedRecords {
    stream: RecordStream,
    done: bool,
}

impl Iterator for SealedRecords {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if self.done {
            return None;
        }
        let read = match self.stream.next_raw() {
            Ok(Ok(None)) => return None,
            Ok(Ok(Some(raw))) => raw.into_record(),
            Ok(Err(reason)) => Err(reason),
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        let read = read.map_err(|reason| corrupt(&self.stream.path, self.stream.start, &reason));
        self.done = read.is_err();
        Some(read)
    }
}

fn corrupt(path: &Path, offset: u64, reason: &str) -> LogError {
    LogError::Corrupt { path: path.to_path_buf(), offset, reason: reason.to_string() }
}

/// What reading a segment found.
#[derive(Debug)]
pub struct SegmentContents {
    pub records: Vec<Record>,
    /// Bytes of whole records, from the start of the file.
    pub valid_len: u64,
    /// Why reading stopped before the end of the file, if it did.
    pub damage: Option<String>,
}

/// Reads every whole record of a segment and says where and why it stopped, if early.
pub fn read_segment(path: &Path) -> Result<SegmentContents> {
    let mut records = Vec::new();
    let (valid_len, damage) = walk(path, |record| {
        records.push(record.into_record()?);
        Ok(())
    })?;
    Ok(SegmentContents { records, valid_len, damage })
}

/// Calls `each` with the sequence number and the values (in field order, borrowed from the
/// record being read) of every event of a sealed segment; any damage is an error. Reads
/// what [`sealed_records`] reads without building a row of owned values per event.
pub fn visit_sealed(
    path: &Path,
    mut each: impl FnMut(u64, &[ValueRef<'_>]) -> std::result::Result<(), String>,
) -> Result<()> {
    let (offset, damage) = walk(path, |record| record.read_events(&mut each))?;
    match damage {
        None => Ok(()),
        Some(reason) => Err(corrupt(path, offset, &reason)),
    }
}

/// Runs `on_record` on every whole record of a segment, in order; returns the bytes of whole
/// records (from the start of the file) and why it stopped early, if it did (a bad record,
/// or `on_record`'s error).
fn walk(
    path: &Path,
    mut on_record: impl FnMut(RawRecord<'_>) -> std::result::Result<(), String>,
) -> Result<(u64, Option<String>)> {
    let (mut stream, damage) = RecordStream::open(path)?;
    if damage.is_some() {
        return Ok((0, damage));
    }
    loop {
        match stream.next_raw()? {
            Ok(None) => return Ok((stream.end, None)),
            Ok(Some(record)) => {
                if let Err(reason) = on_record(record) {
                    return Ok((stream.start, Some(reason)));
                }
            }
            Err(reason) => return Ok((stream.start, Some(reason))),
        }
    }
}

/// A segment file read record by record into one reused buffer.
struct RecordStream {
    path: PathBuf,
    file: io::BufReader<File>,
    /// Where the record last read starts, and where it ends.
    start: u64,
    end: u64,
    payload: Vec<u8>,
}

impl RecordStream {
    /// Opens a segment and checks its header; says why it is not a segment, if it is not.
    fn open(path: &Path) -> Result<(RecordStream, Option<String>)> {
        let file = File::open(path).map_err(io_err(path))?;
        let mut stream = RecordStream {
            path: path.to_path_buf(),
            file: io::BufReader::with_capacity(1 << 20, file),
            start: 0,
            end: 0,
            payload: Vec::new(),
        };
        let mut magic = [0u8; MAGIC.len()];
        let whole = stream.fill(&mut magic)? == MAGIC.len() && &magic == MAGIC;
        stream.end = MAGIC.len() as u64;
        Ok((stream, (!whole).then(|| "missing segment header".to_string())))
    }

    /// The next record: `None` at the end of the file, or why the bytes from `start` on are
    /// not a whole record. The outer error is the file's (i/o), the inner one the bytes'.
    fn next_raw(&mut self) -> Result<std::result::Result<Option<RawRecord<'_>>, String>> {
        self.start = self.end;
        let mut header = [0u8; RECORD_HEADER];
        match self.fill(&mut header)? {
            0 => return Ok(Ok(None)),
            RECORD_HEADER => {}
            _ => return Ok(Err("truncated record header".into())),
        }
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
        if !(PAYLOAD_HEADER..=MAX_RECORD).contains(&len) {
            return Ok(Err(format!("impossible record length {len}")));
        }
        // grows as the bytes arrive: a torn tail's garbage length allocates nothing
        self.payload.clear();
        (&mut self.file).take(len as u64).read_to_end(&mut self.payload).map_err(io_err(&self.path))?;
        if self.payload.len() < len {
            return Ok(Err("truncated record".into()));
        }
        self.end = self.start + (RECORD_HEADER + len) as u64;
        Ok(raw_record(&self.payload, crc).map(Some))
    }

    /// Reads into `buf` until it is full or the file ends; returns the bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(&self.path)(e)),
            }
        }
        Ok(filled)
    }
}

/// What opening the log repaired.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The segment whose tail was cut, the bytes dropped and why.
    pub truncated: Option<(PathBuf, u64, String)>,
}

/// Appends records to the active segment.
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    first_seq: u64,
    len: u64,
    next_seq: u64,
    buf: Vec<u8>,
    /// Whether the active segment's directory entry is known to be durable; until it is,
    /// [`sync`](Self::sync) also syncs the directory.
    entry_durable: bool,
}

impl LogWriter {
    /// Opens the log in `dir` (creating it), repairs a torn tail of the active segment and
    /// starts a fresh active segment if the old one holds records.
    pub fn open(dir: &Path) -> Result<(LogWriter, Recovery)> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut recovery = Recovery::default();
        let segments = list_segments(dir)?;
        let Some(last) = segments.last() else {
            return Ok((LogWriter::create(dir, 1)?, recovery));
        };
        let contents = read_segment(&last.path)?;
        let file_len = fs::metadata(&last.path).map_err(io_err(&last.path))?.len();
        if let Some(reason) = &contents.damage {
            let keep = contents.valid_len.max(MAGIC.len() as u64);
            let file = OpenOptions::new().write(true).open(&last.path).map_err(io_err(&last.path))?;
            if contents.valid_len < MAGIC.len() as u64 {
                (&file).write_all(MAGIC).map_err(io_err(&last.path))?;
            }
            file.set_len(keep).map_err(io_err(&last.path))?;
            file.sync_all().map_err(io_err(&last.path))?;
            if file_len > 0 {
                // (an empty one is a segment started but never synced, see `create`: no damage)
                recovery.truncated = Some((last.path.clone(), file_len.saturating_sub(keep), reason.clone()));
            }
        }
        let next_seq = contents.records.last().map(Record::end_seq).unwrap_or(last.first_seq);
        if next_seq == last.first_seq {
            // no events yet (at most keyed records of duplicates): keep appending here
            let file = OpenOptions::new().append(true).open(&last.path).map_err(io_err(&last.path))?;
            let len = file.metadata().map_err(io_err(&last.path))?.len();
            let writer = LogWriter {
                dir: dir.to_path_buf(),
                file,
                path: last.path.clone(),
                first_seq: last.first_seq,
                len,
                next_seq,
                buf: Vec::new(),
                // a process that crashed may have left the entry in the page cache only
                entry_durable: false,
            };
            return Ok((writer, recovery));
        }
        Ok((LogWriter::create(dir, next_seq)?, recovery))
    }

    /// Starts segment `first_seq`: an empty file, its header buffered to go out with the first
    /// records (see the module's notes).
    fn create(dir: &Path, first_seq: u64) -> Result<LogWriter> {
        let path = dir.join(format!("{first_seq:020}.seg"));
        let file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io_err(&path))?;
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            path,
            first_seq,
            len: 0,
            next_seq: first_seq,
            buf: MAGIC.to_vec(),
            entry_durable: false,
        })
    }

    /// The records buffered since the last sync (without the header a new segment buffers).
    fn buffered_records(&self) -> &[u8] {
        let header = if self.len == 0 { MAGIC.len() } else { 0 };
        &self.buf[header..]
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// First sequence number of the active segment.
    pub fn active_first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Bytes in the active segment.
    pub fn active_len(&self) -> u64 {
        self.len
    }

    /// Buffers a record for a request's `rows`, numbering them from
    /// [`next_seq`](Self::next_seq), and returns the first sequence number. `duplicates` and
    /// `key` are kept to answer a retry of the request. Nothing reaches the file before
    /// [`sync`](Self::sync).
    pub fn append(&mut self, ingest_time: i64, rows: &[Row], duplicates: u32, key: Option<&str>) -> u64 {
        let first_seq = self.next_seq;
        encode_record(&mut self.buf, first_seq, ingest_time, rows, duplicates, key);
        self.next_seq += rows.len() as u64;
        first_seq
    }

    /// Writes buffered records and fsyncs (the first time in a segment, its header and its
    /// directory too). On failure the segment is cut back to its last durable length and the
    /// buffered records are discarded with their sequence numbers.
    pub fn sync(&mut self) -> Result<()> {
        if self.buffered_records().is_empty() {
            return Ok(());
        }
        let mut result = self.file.write_all(&self.buf).and_then(|_| self.file.sync_data());
        if result.is_ok() && !self.entry_durable {
            // after the file's sync, which on ext4 commits the entry with the file's size, so
            // this one mostly costs a flush of the device's cache (0.2 ms here, session 53)
            result = File::open(&self.dir).and_then(|d| d.sync_all());
            self.entry_durable = result.is_ok();
        }
        match result {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.buf.clear();
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                let discarded = count_events(self.buffered_records());
                self.next_seq -= discarded;
                self.buf.clear();
                if self.len == 0 {
                    // the header may never have reached the disk: it goes out again
                    self.buf.extend_from_slice(MAGIC);
                }
                Err(io_err(&self.path)(e))
            }
        }
    }

    /// Seals the active segment and starts a new one, if the active one holds records.
    /// Returns the sealed segment and its last sequence number.
    pub fn roll(&mut self) -> Result<Option<(Segment, u64)>> {
        self.sync()?;
        if self.next_seq == self.first_seq {
            return Ok(None);
        }
        let sealed = Segment { first_seq: self.first_seq, path: self.path.clone() };
        let last = self.next_seq - 1;
        *self = LogWriter::create(&self.dir, self.next_seq)?;
        Ok(Some((sealed, last)))
    }
}

fn count_events(buf: &[u8]) -> u64 {
    let mut pos = 0;
    let mut n = 0;
    while pos + RECORD_HEADER + PAYLOAD_HEADER <= buf.len() {
        let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
        let p = pos + RECORD_HEADER;
        n += u32::from_le_bytes(buf[p + 16..p + 20].try_into().unwrap()) as u64;
        pos += RECORD_HEADER + len;
    }
    n
}

fn encode_record(
    out: &mut Vec<u8>,
    first_seq: u64,
    ingest_time: i64,
    rows: &[Row],
    duplicates: u32,
    key: Option<&str>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER]);
    out.extend_from_slice(&first_seq.to_le_bytes());
    out.extend_from_slice(&ingest_time.to_le_bytes());
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    let width = rows.first().map(Vec::len).unwrap_or(0);
    out.extend_from_slice(&(width as u32).to_le_bytes());
    out.extend_from_slice(&duplicates.to_le_bytes());
    let key = key.unwrap_or("").as_bytes();
    let key = &key[..key.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    for row in rows {
        debug_assert_eq!(row.len(), width, "rows of one record have one width");
        for value in row {
            match value {
                Value::Null => out.push(0),
                Value::String(s) => {
                    out.push(1);
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                Value::Int(i) => {
                    out.push(2);
                    out.extend_from_slice(&i.to_le_bytes());
                }
                Value::Float(f) => {
                    out.push(3);
                    out.extend_from_slice(&f.to_bits().to_le_bytes());
                }
                Value::Bool(false) => out.push(4),
                Value::Bool(true) => out.push(5),
                Value::Timestamp(t) => {
                    out.push(6);
                    out.extend_from_slice(&t.to_le_bytes());
                }
            }
        }
    }
    let payload_len = out.len() - start - RECORD_HEADER;
    let crc = crc32fast::hash(&out[start + RECORD_HEADER..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One record whose framing and checksum hold, with its header read and its events still
/// to read.
struct RawRecord<'a> {
    first_seq: u64,
    ingest_time: i64,
    events: usize,
    width: usize,
    duplicates: u32,
    key: Option<&'a str>,
    body: Reader<'a>,
}

impl RawRecord<'_> {
    /// The record with its events as owned rows.
    fn into_record(self) -> std::result::Result<Record, String> {
        let mut rows = Vec::with_capacity(self.events.min(1 << 16));
        let (first_seq, ingest_time, duplicates) = (self.first_seq, self.ingest_time, self.duplicates);
        let key = self.key.map(str::to_string);
        self.read_events(|_, values| {
            rows.push(values.iter().map(|v| v.into_value()).collect());
            Ok(())
        })?;
        Ok(Record { first_seq, ingest_time, rows, duplicates, key })
    }

    /// Calls `each` with the sequence number and values of each event, then checks that the
    /// record holds nothing else.
    fn read_events(
        mut self,
        mut each: impl FnMut(u64, &[ValueRef<'_>]) -> std::result::Result<(), String>,
    ) -> std::result::Result<(), String> {
        let mut values = Vec::with_capacity(self.width);
        for i in 0..self.events {
            values.clear();
            for _ in 0..self.width {
                values.push(self.body.value()?);
            }
            each(self.first_seq + i as u64, &values)?;
        }
        if self.body.pos != self.body.bytes.len() {
            return Err("trailing bytes in record".into());
        }
        Ok(())
    }
}

/// Checks a record's payload against its checksum and reads its header.
fn raw_record(payload: &[u8], crc: u32) -> std::result::Result<RawRecord<'_>, String> {
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    let mut body = Reader { bytes: payload, pos: 0 };
    let first_seq = body.u64()?;
    let ingest_time = body.u64()? as i64;
    let events = body.u32()? as usize;
    let width = body.u32()? as usize;
    let duplicates = body.u32()?;
    let key_len = u16::from_le_bytes(body.take(2)?.try_into().unwrap()) as usize;
    let key = std::str::from_utf8(body.take(key_len)?).map_err(|_| "idempotency key is not UTF-8")?;
    if events == 0 && key.is_empty() {
        return Err("empty record".into());
    }
    let key = (!key.is_empty()).then_some(key);
    Ok(RawRecord { first_seq, ingest_time, events, width, duplicates, key, body })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or("record ends mid-value")?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn value(&mut self) -> std::result::Result<ValueRef<'a>, String> {
        let tag = self.take(1)?[0];
        Ok(match tag {
            0 => ValueRef::Null,
            1 => {
                let n = self.u32()? as usize;
                ValueRef::String(std::str::from_utf8(self.take(n)?).map_err(|_| "string is not UTF-8")?)
            }
            2 => ValueRef::Int(self.u64()? as i64),
            3 => ValueRef::Float(f64::from_bits(self.u64()?)),
            4 => ValueRef::Bool(false),
            5 => ValueRef::Bool(true),
            6 => ValueRef::Timestamp(self.u64()? as i64),
            t => return Err(format!("unknown value tag {t}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_sealed(path: &Path) -> Result<Vec<Record>> {
        sealed_records(path)?.collect()
    }

    fn row(i: i64) -> Row {
        vec![
            Value::Int(i),
            Value::String(format!("s{i}").into()),
            Value::Null,
            Value::Timestamp(i * 10),
            Value::Bool(i % 2 == 0),
            Value::Float(i as f64 / 3.0),
        ]
    }

    #[test]
    fn appends_read_back_and_number_events() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogWriter::open(dir.path()).unwrap();
        assert_eq!(log.append(5, &[row(1), row(2)], 1, Some("k1")), 1);
        assert_eq!(log.append(6, &[row(3)], 0, None), 3);
        assert_eq!(log.append(6, &[], 4, Some("k2")), 4, "a keyed request of duplicates only");
        log.sync().unwrap();
        let (sealed, last) = log.roll().unwrap().unwrap();
        assert_eq!((sealed.first_seq, last), (1, 3));
        assert_eq!(log.append(7, &[row(4)], 0, None), 4);
        log.sync().unwrap();
        let records = read_sealed(&sealed.path).unwrap();
        assert_eq!(
            records,
            vec![
                Record {
                    first_seq: 1,
                    ingest_time: 5,
                    rows: vec![row(1), row(2)],
                    duplicates: 1,
                    key: Some("k1".into())
                },
                Record { first_seq: 3, ingest_time: 6, rows: vec![row(3)], duplicates: 0, key: None },
                Record { first_seq: 4, ingest_time: 6, rows: vec![], duplicates: 4, key: Some("k2".into()) },
            ]
        );
        assert_eq!(sealed_segments(dir.path()).unwrap().len(), 1);
        // reopening seals the active segment and continues the numbering
        drop(log);
        let (mut log, recovery) = LogWriter::open(dir.path()).unwrap();
        assert!(recovery.truncated.is_none());
        assert_eq!(log.next_seq(), 5);
        assert_eq!(sealed_segments(dir.path()).unwrap().len(), 2);
        assert_eq!(log.roll().unwrap(), None, "an empty active segment is not sealed");
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogWriter::open(dir.path()).unwrap();
        log.append(1, &[row(1)], 0, None);
        log.append(1, &[row(2), row(3)], 0, None);
        log.sync().unwrap();
        drop(log);
        let path = list_segments(dir.path()).unwrap()[0].path.clone();
        let full = fs::metadata(&path).unwrap().len();
        for cut in [1u64, 5, 20] {
            let tmp = tempfile::tempdir().unwrap();
            let copy = tmp.path().join(path.file_name().unwrap());
            fs::copy(&path, &copy).unwrap();
            OpenOptions::new().write(true).open(&copy).unwrap().set_len(full - cut).unwrap();
            let (log, recovery) = LogWriter::open(tmp.path()).unwrap();
            assert!(recovery.truncated.is_some());
            assert_eq!(log.next_seq(), 2, "only the first request survives a cut of {cut}");
            assert_eq!(read_sealed(&copy).unwrap().len(), 1);
        }
    }

    /// A new segment is not synced until its first sync: a crash before that may leave it
    /// gone, empty or with part of its header, and reopening must continue the numbering
    /// after the sealed segment's last event, losing none of them.
    #[test]
    fn a_new_segment_lost_before_its_first_sync_loses_nothing() {
        for lost in ["file", "everything", "part of the header"] {
            let dir = tempfile::tempdir().unwrap();
            let (mut log, _) = LogWriter::open(dir.path()).unwrap();
            log.append(1, &[row(1), row(2)], 0, None);
            log.sync().unwrap();
            let (sealed, last) = log.roll().unwrap().unwrap();
            assert!(!log.entry_durable, "a seal does not sync the new segment");
            let fresh = list_segments(dir.path()).unwrap().pop().unwrap().path;
            assert_ne!(fresh, sealed.path);
            drop(log);
            match lost {
                "file" => fs::remove_file(&fresh).unwrap(),
                "everything" => fs::write(&fresh, b"").unwrap(),
                _ => fs::write(&fresh, &MAGIC[..3]).unwrap(),
            }
            let (mut log, recovery) = LogWriter::open(dir.path()).unwrap();
            assert_eq!(recovery.truncated.is_some(), lost == "part of the header", "lost the new segment's {lost}");
            assert_eq!(log.next_seq(), last + 1, "lost the new segment's {lost}");
            assert_eq!(log.append(2, &[row(3)], 0, None), 3);
            log.sync().unwrap();
            assert!(log.entry_durable, "the first sync syncs the entry");
            drop(log);
            let (log, recovery) = LogWriter::open(dir.path()).unwrap();
            assert!(recovery.truncated.is_none(), "lost the new segment's {lost}: {:?}", recovery.truncated);
            assert_eq!(log.next_seq(), 4);
            let events: Vec<Row> = sealed_segments(dir.path())
                .unwrap()
                .iter()
                .flat_map(|(s, _)| read_sealed(&s.path).unwrap())
                .flat_map(|r| r.rows)
                .collect();
            assert_eq!(events, vec![row(1), row(2), row(3)], "lost the new segment's {lost}");
        }
    }

    #[test]
    fn a_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogWriter::open(dir.path()).unwrap();
        log.append(1, &[row(1)], 0, None);
        log.sync().unwrap();
        let path = list_segments(dir.path()).unwrap()[0].path.clone();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_sealed(&path), Err(LogError::Corrupt { .. })));
    }

    /// Visiting a sealed segment's events sees what reading it whole does, and refuses the
    /// same damage at the same place.
    #[test]
    fn visiting_events_reads_what_reading_records_does() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogWriter::open(dir.path()).unwrap();
        log.append(7, &[row(1), row(2)], 0, None);
        log.append(8, &[], 1, Some("k")); // a record of no events, kept for its key
        log.append(9, &[row(3)], 0, None);
        log.sync().unwrap();
        let path = list_segments(dir.path()).unwrap()[0].path.clone();
        let mut visited = Vec::new();
        visit_sealed(&path, |seq, values| {
            visited.push((seq, values.iter().map(|v| v.into_value()).collect::<Row>()));
            Ok(())
        })
        .unwrap();
        assert_eq!(visited, vec![(1, row(1)), (2, row(2)), (3, row(3))]);

        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let Err(LogError::Corrupt { offset, .. }) = read_sealed(&path) else { panic!("damage goes unseen") };
        let mut seen = 0;
        let visit = visit_sealed(&path, |_, _| {
            seen += 1;
            Ok(())
        });
        assert!(matches!(visit, Err(LogError::Corrupt { offset: o, .. }) if o == offset));
        assert_eq!(seen, 2, "the records before the damaged one are visited");
        // the visitor's own error stops the walk as damage at that record
        let refused = visit_sealed(&path, |seq, _| if seq == 2 { Err("no".into()) } else { Ok(()) });
        assert!(matches!(refused, Err(LogError::Corrupt { offset: o, reason, .. }) if o == 8 && reason == "no"));
    }

    /// Records are streamed one at a time, so one larger than the read buffer reads back
    /// whole; damage ends the records with an error at the damaged one.
    #[test]
    fn sealed_records_stream_large_records_and_stop_at_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogWriter::open(dir.path()).unwrap();
        let big: Vec<Row> = (0..60_000).map(row).collect(); // over 2 MiB in the log
        log.append(1, &big, 0, None);
        log.append(2, &[row(7)], 0, Some("k"));
        log.append(3, &[row(8)], 0, None);
        log.sync().unwrap();
        let (sealed, _) = log.roll().unwrap().unwrap();
        assert!(fs::metadata(&sealed.path).unwrap().len() > 2 << 20);
        let records = read_sealed(&sealed.path).unwrap();
        assert_eq!(records.iter().map(|r| r.rows.len()).collect::<Vec<_>>(), vec![60_000, 1, 1]);
        assert_eq!(records[0].rows, big);
        assert_eq!((records[1].first_seq, records[1].key.as_deref()), (60_001, Some("k")));

        let mut bytes = fs::read(&sealed.path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40;
        fs::write(&sealed.path, &bytes).unwrap();
        let read: Vec<Result<Record>> = sealed_records(&sealed.path).unwrap().collect();
        assert_eq!(read.len(), 3, "two records, then the error, then nothing");
        assert!(read[..2].iter().all(|r| r.is_ok()));
        let Err(LogError::Corrupt { offset, reason, .. }) = &read[2] else { panic!("damage goes unseen") };
        assert_eq!(reason, "checksum mismatch");
        assert_eq!(*offset, read_segment(&sealed.path).unwrap().valid_len);

        fs::write(&sealed.path, b"TNDM").unwrap();
        assert!(matches!(sealed_records(&sealed.path), Err(LogError::Corrupt { offset: 0, .. })), "no header");
    }

    #[test]
    fn a_failed_sync_gives_back_its_sequence_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogWriter::open(dir.path()).unwrap();
        log.append(1, &[row(1), row(2)], 0, None);
        assert_eq!(count_events(log.buffered_records()), 2);
        // the new segment's first sync fails (its file opened read-only: the write is refused)
        let writable = std::mem::replace(&mut log.file, File::open(&log.path).unwrap());
        assert!(log.sync().is_err());
        assert_eq!(log.next_seq(), 1, "the sequence numbers are given back");
        // the next sync writes the segment's header again, with its own records
        log.file = writable;
        assert_eq!(log.append(2, &[row(3)], 0, None), 1);
        log.sync().unwrap();
        drop(log);
        let (log, recovery) = LogWriter::open(dir.path()).unwrap();
        assert!(recovery.truncated.is_none(), "{:?}", recovery.truncated);
        assert_eq!(log.next_seq(), 2);
        let (sealed, _) = sealed_segments(dir.path()).unwrap().remove(0);
        let records = read_sealed(&sealed.path).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].first_seq, &records[0].rows), (1, &vec![row(3)]));
    }
}
