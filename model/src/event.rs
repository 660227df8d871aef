//! Decoding and validating incoming events against a dataset's schema.
//!
//! A request is all-or-nothing: [`decode`] either returns every event as a typed row or
//! the list of what was wrong (the first [`MAX_ERRORS`]), and the caller stores nothing.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::schema::{DatasetSpec, FieldType};
use crate::value::{Row, TIMESTAMP_RANGE, Value, parse_timestamp};

/// How many problems a rejected request reports.
pub const MAX_ERRORS: usize = 100;

/// Bounds on one request, so that no request can take unbounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_events: usize,
    pub max_string_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_events: 100_000, max_string_bytes: 64 << 10 }
    }
}

/// The body's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One object or an array of objects.
    Json,
    /// One object a line; blank lines are skipped.
    Ndjson,
}

/// One problem with one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventError {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl EventError {
    fn new(index: usize, field: Option<&str>, message: impl Into<String>) -> Self {
        EventError { index, field: field.map(str::to_string), message: message.into() }
    }
}

/// Decodes a request body into rows, or every problem found (up to [`MAX_ERRORS`]).
/// JSON nested deeper than 128 levels is malformed (serde_json's recursion limit), so no
/// body can exhaust the stack.
///
/// Events are read straight into typed rows (a serde visitor per event that looks each key
/// up in the schema), never through a `serde_json::Value` tree: building and tearing down
/// that tree was the largest cost of ingest after the allocator. A malformed body anywhere
/// is reported alone, as the only problem; otherwise every event's problems are.
///
/// A server keeps one [`Decoder`] a dataset instead, so that what one request learns of the
/// order of its clients' keys serves the next.
pub fn decode(spec: &DatasetSpec, format: Format, body: &[u8], limits: &Limits) -> Result<Vec<Row>, Vec<EventError>> {
    Decoder::new(spec).decode(format, body, limits)
}

/// A dataset's fields as the decoder looks them up, made once for the dataset.
pub struct Decoder {
    /// In column order, as rows hold them.
    fields: Vec<(String, FieldType)>,
    /// Positions in `fields` sorted by their names, to search for a key. The identity until
    /// the dataset gains a field (added fields follow the others, whatever their names).
    by_name: Box<[u32]>,
    time: usize,
    /// The field positions (plus one; 0 for none) in the order the previous event gave its
    /// keys: clients write their events' keys in one order, so the n-th key is looked for
    /// there first (one comparison instead of a search; the search was a tenth of ingest).
    /// Kept from request to request (a single-event request used to learn the order afresh
    /// and search for every key: 3 % of its instructions, session 46); a guess is only a
    /// guess, so racing requests that store different ones cost a search, never a wrong row.
    order: Box<[AtomicU32]>,
}

impl Decoder {
    pub fn new(spec: &DatasetSpec) -> Decoder {
        let fields: Vec<(String, FieldType)> = spec.columns().map(|(n, t)| (n.to_string(), t)).collect();
        let time = fields.iter().position(|(n, _)| *n == spec.time_field).unwrap_or(usize::MAX);
        let order = fields.iter().map(|_| AtomicU32::new(0)).collect();
        let mut by_name: Vec<u32> = (0..fields.len() as u32).collect();
        by_name.sort_by(|&a, &b| fields[a as usize].0.cmp(&fields[b as usize].0));
        Decoder { fields, by_name: by_name.into(), time, order }
    }

    /// [`decode`] with this dataset's fields.
    pub fn decode(&self, format: Format, body: &[u8], limits: &Limits) -> Result<Vec<Row>, Vec<EventError>> {
        decode_with(&Schema { decoder: self, limits }, format, body)
    }

    /// The position of the field named `name`, given as an event's `nth` key.
    fn position(&self, nth: usize, name: &str) -> Option<usize> {
        let slot = self.order.get(nth);
        if let Some(guess) = slot.map(|s| s.load(Ordering::Relaxed)).filter(|&g| g > 0)
            && let Some((field, _)) = self.fields.get(guess as usize - 1)
            && same_key(field, name)
        {
            return Some(guess as usize - 1);
        }
        let found = self.by_name.binary_search_by(|&p| self.fields[p as usize].0.as_str().cmp(name)).ok()?;
        let found = self.by_name[found] as usize;
        if let Some(slot) = slot {
            slot.store(found as u32 + 1, Ordering::Relaxed);
        }
        Some(found)
    }
}

fn decode_with(schema: &Schema<'_>, format: Format, body: &[u8]) -> Result<Vec<Row>, Vec<EventError>> {
    let limits = schema.limits;
    let mut out = Collector::default();
    match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let parsed = BodySeed { schema, out: &mut out }.deserialize(&mut de).and_then(|()| de.end());
            if let Err(e) = parsed {
                return Err(vec![match out.too_many {
                    true => too_many(limits),
                    false => EventError::new(0, None, format!("malformed JSON: {e}")),
                }]);
            }
            if out.not_a_body {
                return Err(vec![EventError::new(0, None, "body must be a JSON object or an array of objects")]);
            }
        }
        Format::Ndjson => {
            let text = std::str::from_utf8(body).map_err(|_| vec![EventError::new(0, None, "body is not UTF-8")])?;
            let mut malformed = Vec::new();
            for (line_no, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                if out.seen == limits.max_events {
                    return Err(vec![too_many(limits)]);
                }
                let mut de = serde_json::Deserializer::from_str(line);
                let index = out.seen;
                let parsed = EventSeed { schema, index, skip: !malformed.is_empty() || out.is_full() }
                    .deserialize(&mut de)
                    .and_then(|event| de.end().map(|()| event));
                out.seen += 1;
                match parsed {
                    Ok(event) => out.push(event),
                    Err(e) => {
                        malformed.push(EventError::new(
                            index,
                            None,
                            format!("line {}: malformed JSON: {e}", line_no + 1),
                        ));
                        if malformed.len() >= MAX_ERRORS {
                            break;
                        }
                    }
                }
            }
            if !malformed.is_empty() {
                return Err(malformed);
            }
        }
    }
    if out.errors.is_empty() { Ok(out.rows) } else { Err(out.errors) }
}

fn too_many(limits: &Limits) -> EventError {
    EventError::new(0, None, format!("request holds more than {} events, the limit", limits.max_events))
}

/// A dataset's [`Decoder`] and the request's limits.
struct Schema<'a> {
    decoder: &'a Decoder,
    limits: &'a Limits,
}

impl Schema<'_> {
    fn fields(&self) -> &[(String, FieldType)] {
        &self.decoder.fields
    }

    fn time(&self) -> usize {
        self.decoder.time
    }

    fn position(&self, nth: usize, name: &str) -> Option<usize> {
        self.decoder.position(nth, name)
    }
}

/// `a == b` for field names, compared in place: keys are short, and the call to `memcmp` that
/// `==` makes cost as much as the comparison (5 % of `decode`).
#[inline]
fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (mut a8, mut b8) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut a8).zip(&mut b8) {
        if u64::from_ne_bytes(x.try_into().expect("8 bytes")) != u64::from_ne_bytes(y.try_into().expect("8 bytes")) {
            return false;
        }
    }
    a8.remainder().iter().zip(b8.remainder()).all(|(x, y)| x == y)
}

/// What the events of one body came to so far.
#[derive(Default)]
struct Collector {
    rows: Vec<Row>,
    errors: Vec<EventError>,
    /// Events seen, valid or not.
    seen: usize,
    too_many: bool,
    not_a_body: bool,
}

impl Collector {
    fn is_full(&self) -> bool {
        self.errors.len() >= MAX_ERRORS
    }

    fn push(&mut self, event: Option<Result<Row, Vec<EventError>>>) {
        match event {
            Some(Ok(row)) if self.errors.is_empty() => self.rows.push(row),
            Some(Ok(_)) | None => {}
            Some(Err(mut errs)) => {
                self.rows = Vec::new(); // the request is refused; rows are no longer needed
                errs.truncate(MAX_ERRORS - self.errors.len());
                self.errors.extend(errs);
            }
        }
    }
}

/// A JSON body: one event object or an array of them.
struct BodySeed<'s, 'a> {
    schema: &'s Schema<'a>,
    out: &'s mut Collector,
}

impl BodySeed<'_, '_> {
    /// A scalar body: consumed, and reported once parsing has succeeded.
    fn not_a_body<E>(self) -> Result<(), E> {
        self.out.not_a_body = true;
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object or an array of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(n) = seq.size_hint() {
            self.out.rows.reserve(n.min(self.schema.limits.max_events));
        }
        loop {
            if self.out.seen == self.schema.limits.max_events {
                // one more element means one too many; stop reading the body here
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    self.out.too_many = true;
                    return Err(de::Error::custom("too many events"));
                }
                return Ok(());
            }
            let skip = self.out.is_full();
            let seed = EventSeed { schema: self.schema, index: self.out.seen, skip };
            match seq.next_element_seed(seed)? {
                Some(event) => {
                    self.out.seen += 1;
                    self.out.push(event);
                }
                None => return Ok(()),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let event = EventSeed { schema: self.schema, index: 0, skip: false }.visit_map(map)?;
        self.out.seen = 1;
        self.out.push(event);
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.not_a_body()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.not_a_body()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.not_a_body()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.not_a_body()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.not_a_body()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_a_body()
    }
}

/// One event: its row, or its problems. `None` when `skip` (the request already holds
/// [`MAX_ERRORS`] problems; the event is only parsed, to find malformed JSON).
struct EventSeed<'s, 'a> {
    schema: &'s Schema<'a>,
    index: usize,
    skip: bool,
}

type Event = Option<Result<Row, Vec<EventError>>>;

impl<'de> DeserializeSeed<'de> for EventSeed<'_, '_> {
    type Value = Event;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Event, D::Error> {
        if self.skip {
            IgnoredAny::deserialize(deserializer)?;
            return Ok(None);
        }
        deserializer.deserialize_any(self)
    }
}

impl EventSeed<'_, '_> {
    fn not_an_object(&self) -> Event {
        Some(Err(vec![EventError::new(self.index, None, "event must be a JSON object")]))
    }
}

impl<'de> Visitor<'de> for EventSeed<'_, '_> {
    type Value = Event;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        let schema = self.schema;
        // a key given twice counts once, with its last value (as in a JSON object model)
        // made in place, not cloned from one `Null` as `vec!` does (that was 3 % of `decode`)
        let mut row: Row = std::iter::repeat_with(|| Value::Null).take(schema.fields().len()).collect();
        let mut refused: Vec<(usize, String)> = Vec::new();
        let mut unknown: Vec<String> = Vec::new();
        let mut nth = 0;
        while let Some(key) = map.next_key_seed(KeySeed(schema, nth))? {
            nth += 1;
            match key {
                Ok(i) => {
                    let seed =
                        FieldSeed { ty: schema.fields()[i].1, is_time: i == schema.time(), limits: schema.limits };
                    let value = map.next_value_seed(seed)?;
                    if !refused.is_empty() {
                        refused.retain(|(field, _)| *field != i);
                    }
                    match value {
                        Ok(v) => row[i] = v,
                        Err(message) => {
                            row[i] = Value::Null;
                            refused.push((i, message));
                        }
                    }
                }
                Err(name) => {
                    map.next_value::<IgnoredAny>()?;
                    if !unknown.contains(&name) {
                        unknown.push(name);
                    }
                }
            }
        }
        if row.get(schema.time()).is_some_and(|t| matches!(t, Value::Null))
            && !refused.iter().any(|(i, _)| *i == schema.time())
        {
            refused.push((schema.time(), "missing time value".into()));
        }
        if refused.is_empty() && unknown.is_empty() {
            return Ok(Some(Ok(row)));
        }
        refused.sort_by_key(|(i, _)| *i);
        unknown.sort();
        let field = |i: usize| Some(schema.fields()[i].0.as_str());
        let errors = refused
            .into_iter()
            .map(|(i, message)| EventError::new(self.index, field(i), message))
            .chain(unknown.iter().map(|name| EventError::new(self.index, Some(name), "unknown field")))
            .collect();
        Ok(Some(Err(errors)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Event, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.not_an_object())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Event, E> {
        Ok(self.not_an_object())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Event, E> {
        Ok(self.not_an_object())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Event, E> {
        Ok(self.not_an_object())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Event, E> {
        Ok(self.not_an_object())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Event, E> {
        Ok(self.not_an_object())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Event, E> {
        Ok(self.not_an_object())
    }
}

/// An event's `.1`-th key: the field's position, or the unknown name.
struct KeySeed<'s, 'a>(&'s Schema<'a>, usize);

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = Result<usize, String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_> {
    type Value = Result<usize, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.0.position(self.1, name).ok_or_else(|| name.to_string()))
    }
}

/// One field's value, converted to the field's type or refused with the reason.
struct FieldSeed<'a> {
    ty: FieldType,
    is_time: bool,
    limits: &'a Limits,
}

impl FieldSeed<'_> {
    fn mismatch(&self, got: &str) -> Result<Value, String> {
        Err(format!("expected {}, got {got}", type_name(self.ty)))
    }

    fn epoch_millis(ms: Option<i64>) -> Result<Value, String> {
        ms.and_then(|ms| ms.checked_mul(1000))
            .filter(|t| TIMESTAMP_RANGE.contains(t))
            .map(Value::Timestamp)
            .ok_or_else(|| "bad timestamp: epoch milliseconds must be an integer within the years 1678 to 2261".into())
    }
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Result<Value, String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Result<Value, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(type_name(self.ty))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(if self.is_time { Err("missing time value".into()) } else { Ok(Value::Null) })
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(match self.ty {
            FieldType::Bool => Ok(Value::Bool(b)),
            _ => self.mismatch("a boolean"),
        })
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Self::Value, E> {
        Ok(match self.ty {
            FieldType::Int64 => Ok(Value::Int(i)),
            FieldType::Float64 => Ok(Value::Float(i as f64)),
            FieldType::Timestamp => Self::epoch_millis(Some(i)),
            _ => self.mismatch("a number"),
        })
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Self::Value, E> {
        Ok(match (self.ty, i64::try_from(u)) {
            (FieldType::Int64, Ok(i)) => Ok(Value::Int(i)),
            (FieldType::Int64, Err(_)) => Err("integer out of int64 range".into()),
            (FieldType::Float64, _) => Ok(Value::Float(u as f64)),
            (FieldType::Timestamp, i) => Self::epoch_millis(i.ok()),
            _ => self.mismatch("a number"),
        })
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Self::Value, E> {
        Ok(match self.ty {
            // serde_json reads an integer beyond `u64`, or below `i64::MIN`, as a float (one
            // just below rounds to -2^63, which an integer in range comes as `visit_i64`)
            FieldType::Int64 if f.fract() == 0.0 && f.abs() >= 2f64.powi(63) => {
                Err("integer out of int64 range".into())
            }
            FieldType::Int64 => Err("expected an integer, got a float".into()),
            FieldType::Float64 if f.is_finite() => Ok(Value::Float(f)),
            FieldType::Float64 => Err("number out of float64 range".into()),
            FieldType::Timestamp => Self::epoch_millis(None),
            _ => self.mismatch("a number"),
        })
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(match self.ty {
            FieldType::String if s.len() > self.limits.max_string_bytes => {
                Err(format!("string of {} bytes; the limit is {}", s.len(), self.limits.max_string_bytes))
            }
            FieldType::String => Ok(Value::String(s.into())),
            FieldType::Timestamp => match parse_timestamp(s) {
                Some(t) if TIMESTAMP_RANGE.contains(&t) => Ok(Value::Timestamp(t)),
                Some(_) => Err(format!("timestamp {s:?} is outside the accepted years 1678 to 2261")),
                None => Err(format!("bad timestamp {s:?}: expected RFC 3339 or epoch milliseconds")),
            },
            _ => self.mismatch("a string"),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.mismatch("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self.mismatch("an object"))
    }
}

fn type_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "a string",
        FieldType::Int64 => "an integer",
        FieldType::Float64 => "a number",
        FieldType::Bool => "true or false",
        FieldType::Timestamp => "an RFC 3339 string or epoch milliseconds",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DatasetSpec {
        serde_json::from_str(
            r#"{"name":"pv","time_field":"ts","id_field":"id","fields":{"ts":"timestamp","id":"string","n":"int64","f":"float64","b":"bool"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn same_key_is_string_equality() {
        let short = ["", "a", "b", "ab", "ts", "user_id", "user_ie"];
        let long =
            ["duration_ms", "duration_mt", "durbtion_ms", "xduration_ms", "a_field_name_of_17", "a_field_name_of_18"];
        for a in short.iter().chain(&long) {
            for b in short.iter().chain(&long) {
                assert_eq!(same_key(a, b), a == b, "{a:?} against {b:?}");
            }
        }
    }

    /// One decoder serves every request of a dataset and keeps the key order it last saw: a
    /// request whose keys come in another order, fewer or more of them, repeated or unknown,
    /// decodes as it would alone.
    #[test]
    fn a_shared_decoder_decodes_each_request_as_a_fresh_one_would() {
        let s = spec();
        let shared = Decoder::new(&s);
        let bodies = [
            r#"{"ts":1,"id":"a","n":3,"f":1.5,"b":true}"#,
            r#"{"b":false,"f":2.5,"n":4,"id":"b","ts":2}"#,
            r#"{"ts":3,"id":"c"}"#,
            r#"{"id":"d","ts":4,"n":5}"#,
            r#"{"ts":5,"id":"e","n":6,"n":7,"f":1}"#,
            r#"{"ts":6,"x":1,"id":"f"}"#,
            r#"{"n":"text","ts":7}"#,
            r#"{"ts":8,"id":"a","n":3,"f":1.5,"b":true}"#,
        ];
        for round in 0..2 {
            for (i, body) in bodies.iter().enumerate() {
                let ours = shared.decode(Format::Json, body.as_bytes(), &Limits::default());
                assert_eq!(ours, decode(&s, Format::Json, body.as_bytes(), &Limits::default()), "{round}, {i}: {body}");
            }
        }
    }

    /// Added fields sit after the others in a row whatever their names, and are found by name
    /// as any other (the search must not assume the row's order is the names' order).
    #[test]
    fn added_fields_decode_into_their_own_columns() {
        let added = [("a".to_string(), FieldType::Int64), ("zz".to_string(), FieldType::String)];
        let s = spec().add_fields(&added.into_iter().collect()).unwrap();
        let decoder = Decoder::new(&s);
        for body in [r#"{"zz":"q","a":9,"ts":1,"n":2,"b":true}"#, r#"{"ts":1,"b":true,"n":2,"a":9,"zz":"q"}"#] {
            for _ in 0..2 {
                let rows = decoder.decode(Format::Json, body.as_bytes(), &Limits::default()).unwrap();
                let at = |field: &str| rows[0][s.index_of(field).unwrap()].clone();
                assert_eq!((at("a"), at("zz"), at("n")), (Value::Int(9), Value::String("q".into()), Value::Int(2)));
                assert_eq!((s.index_of("a"), s.index_of("zz")), (Some(5), Some(6)));
                assert_eq!(at("ts"), Value::Timestamp(1000));
            }
        }
        let wrong = decoder.decode(Format::Json, br#"{"ts":1,"a":"x"}"#, &Limits::default()).unwrap_err();
        assert_eq!(wrong[0].field.as_deref(), Some("a"));
    }

    #[test]
    fn decodes_arrays_objects_and_ndjson() {
        let s = spec();
        let one = decode(&s, Format::Json, br#"{"ts":1000,"id":"a","n":3}"#, &Limits::default()).unwrap();
        assert_eq!(one.len(), 1);
        // fields in name order: b, f, id, n, ts
        assert_eq!(
            one[0],
            vec![Value::Null, Value::Null, Value::String("a".into()), Value::Int(3), Value::Timestamp(1_000_000)]
        );
        let many =
            decode(&s, Format::Json, br#"[{"ts":"2026-01-01T00:00:00Z"},{"ts":0,"f":1}]"#, &Limits::default()).unwrap();
        assert_eq!(many[1][1], Value::Float(1.0));
        let nd = decode(&s, Format::Ndjson, b"{\"ts\":1}\n\n{\"ts\":2,\"b\":true}\n", &Limits::default()).unwrap();
        assert_eq!(nd.len(), 2);
        assert_eq!(nd[1][0], Value::Bool(true));
    }

    #[test]
    fn reports_every_bad_field_with_its_index() {
        let s = spec();
        let errs = decode(&s, Format::Json, br#"[{"ts":1},{"ts":"nope","n":1.5,"x":1},{"n":1}]"#, &Limits::default())
            .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| (e.index, e.field.clone().unwrap())).collect();
        assert!(fields.contains(&(1, "ts".into())));
        assert!(fields.contains(&(1, "n".into())));
        assert!(fields.contains(&(1, "x".into())));
        assert!(fields.contains(&(2, "ts".into())));
        assert!(!fields.iter().any(|(i, _)| *i == 0));
    }

    #[test]
    fn refuses_wrong_types() {
        let s = spec();
        for bad in [
            r#"{"ts":1,"n":9223372036854775808}"#,
            r#"{"ts":1,"n":"1"}"#,
            r#"{"ts":1,"b":1}"#,
            r#"{"ts":1,"id":5}"#,
            r#"{"ts":1,"f":"1.0"}"#,
            r#"{"ts":1,"f":[1]}"#,
            r#"{"ts":1.5}"#,
            r#"{"ts":9223372036854775807}"#,
            r#"{"ts":null}"#,
            r#"[1]"#,
            r#""text""#,
            r#"{"ts":1"#,
        ] {
            assert!(decode(&s, Format::Json, bad.as_bytes(), &Limits::default()).is_err(), "{bad} accepted");
        }
    }

    /// An int64 field takes exactly int64's range, and says why it refuses a number.
    #[test]
    fn int64_edges_are_kept_or_refused_with_the_reason() {
        let s = spec();
        let message = |text: &str| {
            let body = format!(r#"{{"ts":1,"n":{text}}}"#);
            match decode(&s, Format::Json, body.as_bytes(), &Limits::default()) {
                Ok(rows) => Ok(rows[0][3].clone()),
                Err(errs) => Err(errs[0].message.clone()),
            }
        };
        assert_eq!(message("9223372036854775807"), Ok(Value::Int(i64::MAX)));
        assert_eq!(message("-9223372036854775808"), Ok(Value::Int(i64::MIN)));
        let out_of_range = Err("integer out of int64 range".to_string());
        for text in ["9223372036854775808", "18446744073709551616", "-9223372036854775809", "1e19", "-1e30"] {
            assert_eq!(message(text), out_of_range, "{text}");
        }
        for text in ["1.5", "1.0", "-0.25", "1e3"] {
            assert_eq!(message(text), Err("expected an integer, got a float".to_string()), "{text}");
        }
    }

    /// A float arrives as exactly the number the client wrote (correctly rounded parsing).
    #[test]
    fn floats_are_parsed_exactly() {
        let s = spec();
        for text in ["516597.24625005835", "0.1", "1e-300", "2.2250738585072014e-308", "9007199254740993"] {
            let rows =
                decode(&s, Format::Json, format!(r#"{{"ts":1,"f":{text}}}"#).as_bytes(), &Limits::default()).unwrap();
            assert_eq!(rows[0][1], Value::Float(text.parse::<f64>().unwrap()), "{text}");
        }
    }

    #[test]
    fn bounds_requests() {
        let s = spec();
        let limits = Limits { max_events: 2, max_string_bytes: 4 };
        assert!(decode(&s, Format::Json, br#"[{"ts":1},{"ts":2}]"#, &limits).is_ok());
        assert!(decode(&s, Format::Json, br#"[{"ts":1},{"ts":2},{"ts":3}]"#, &limits).is_err());
        assert!(decode(&s, Format::Json, br#"{"ts":1,"id":"abcd"}"#, &limits).is_ok());
        assert!(decode(&s, Format::Json, br#"{"ts":1,"id":"abcde"}"#, &limits).is_err());
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode(&s, Format::Json, deep.as_bytes(), &Limits::default()).is_err());
        assert!(decode(&s, Format::Ndjson, deep.as_bytes(), &Limits::default()).is_err());
    }

    #[test]
    fn caps_the_error_list() {
        let s = spec();
        let body = format!("[{}]", vec![r#"{"ts":"x","n":"y"}"#; 200].join(","));
        assert_eq!(decode(&s, Format::Json, body.as_bytes(), &Limits::default()).unwrap_err().len(), MAX_ERRORS);
    }
}
