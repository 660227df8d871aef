//! The event log: append-only segment files, one directory per dataset.
//!
//! # Layout
//! `DIR/{first_seq:020}.seg`, where `first_seq` is the sequence number of the segment's
//! first event. Every accepted event gets the next sequence number of its dataset, starting
//! at 1, so segment `i` holds exactly the events `first_seq(i) ..= first_seq(i+1) - 1`.
//! The segment with the highest number is the active one; every other is sealed and never
//! changes again. Sequence numbers, not event time, are what batch watermarks count.
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
//! On open, the active segment is read back: a torn or corrupt tail (a crash mid-write) is
//! cut off at the last whole record and reported in [`Recovery`]; a sealed segment that
//! does not read back whole is an error, never skipped.
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

/// What reading a segment found.
#[derive(Debug)]
pub struct SegmentContents {
    pub records: Vec<Record>,
    /// Bytes of whole records, from the start of the file.
    pub valid_len: u64,
    /// Why reading stopped before the end of the file, if it did.
    pub damage: Option<String>,
}

/// Reads a sealed segment; any damage is an error.
pub fn read_sealed(path: &Path) -> Result<Vec<Record>> {
    let contents = read_segment(path)?;
    match contents.damage {
        None => Ok(contents.records),
        Some(reason) => Err(LogError::Corrupt { path: path.to_path_buf(), offset: contents.valid_len, reason }),
    }
}

/// Reads every whole record of a segment and says where and why it stopped, if early.
pub fn read_segment(path: &Path) -> Result<SegmentContents> {
    let bytes = read_file(path)?;
    let mut records = Vec::new();
    let (valid_len, damage) = walk(&bytes, |record| {
        let mut rows = Vec::with_capacity(record.events.min(1 << 16));
        let (first_seq, ingest_time, duplicates) = (record.first_seq, record.ingest_time, record.duplicates);
        let key = record.key.map(str::to_string);
        record.read_events(|_, values| {
            rows.push(values.iter().map(|v| v.into_value()).collect());
            Ok(())
        })?;
        records.push(Record { first_seq, ingest_time, rows, duplicates, key });
        Ok(())
    });
    Ok(SegmentContents { records, valid_len, damage })
}

/// Calls `each` with the sequence number and the values (in field order, borrowed from the
/// file's bytes) of every event of a sealed segment; any damage is an error. Reads what
/// [`read_sealed`] reads without building a row of owned values per event.
pub fn visit_sealed(
    path: &Path,
    mut each: impl FnMut(u64, &[ValueRef<'_>]) -> std::result::Result<(), String>,
) -> Result<()> {
    let bytes = read_file(path)?;
    let (offset, damage) = walk(&bytes, |record| record.read_events(&mut each));
    match damage {
        None => Ok(()),
        Some(reason) => Err(LogError::Corrupt { path: path.to_path_buf(), offset, reason }),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    let mut bytes = Vec::with_capacity(len);
    file.read_to_end(&mut bytes).map_err(io_err(path))?;
    Ok(bytes)
}

/// Runs `on_record` on every whole record of a segment's bytes, in order; returns the bytes
/// of whole records (from the start of the file) and why it stopped early, if it did (a bad
/// record, or `on_record`'s error).
fn walk<'a>(
    bytes: &'a [u8],
    mut on_record: impl FnMut(RawRecord<'a>) -> std::result::Result<(), String>,
) -> (u64, Option<String>) {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return (0, Some("missing segment header".into()));
    }
    let mut pos = MAGIC.len();
    while pos < bytes.len() {
        match raw_record(&bytes[pos..]).and_then(|(record, used)| on_record(record).map(|()| used)) {
            Ok(used) => pos += used,
            Err(reason) => return (pos as u64, Some(reason)),
        }
    }
    (pos as u64, None)
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
            recovery.truncated = Some((last.path.clone(), file_len.saturating_sub(keep), reason.clone()));
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
            };
            return Ok((writer, recovery));
        }
        Ok((LogWriter::create(dir, next_seq)?, recovery))
    }

    /// Starts segment `first_seq`. If that fails (a full disk), the half-made file is removed
    /// again so that a later attempt can start it afresh.
    fn create(dir: &Path, first_seq: u64) -> Result<LogWriter> {
        let path = dir.join(format!("{first_seq:020}.seg"));
        let mut file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io_err(&path))?;
        let started = file
            .write_all(MAGIC)
            .and_then(|_| file.sync_all())
            .and_then(|_| File::open(dir).and_then(|d| d.sync_all()));
        if let Err(e) = started {
            let _ = fs::remove_file(&path);
            return Err(io_err(&path)(e));
        }
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            path,
            first_seq,
            len: MAGIC.len() as u64,
            next_seq: first_seq,
            buf: Vec::new(),
        })
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

    /// Writes buffered records and fsyncs. On failure the segment is cut back to its last
    /// durable length and the buffered records are discarded with their sequence numbers.
    pub fn sync(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.file.write_all(&self.buf).and_then(|_| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.buf.clear();
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                let discarded = count_events(&self.buf);
                self.next_seq -= discarded;
                self.buf.clear();
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

/// Checks the record at the front of `bytes` and reads its header; returns it and the bytes
/// it takes.
fn raw_record(bytes: &[u8]) -> std::result::Result<(RawRecord<'_>, usize), String> {
    if bytes.len() < RECORD_HEADER {
        return Err("truncated record header".into());
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    if !(PAYLOAD_HEADER..=MAX_RECORD).contains(&len) {
        return Err(format!("impossible record length {len}"));
    }
    let Some(payload) = bytes.get(RECORD_HEADER..RECORD_HEADER + len) else {
        return Err("truncated record".into());
    };
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
    Ok((RawRecord { first_seq, ingest_time, events, width, duplicates, key, body }, RECORD_HEADER + len))
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

    fn row(i: i64) -> Row {
        vec![
            Value::Int(i),
            Value::String(format!("s{i}")),
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

    #[test]
    fn a_failed_sync_gives_back_its_sequence_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogWriter::open(dir.path()).unwrap();
        log.append(1, &[row(1), row(2)], 0, None);
        assert_eq!(count_events(&log.buf), 2);
    }
}
