//! Buckets in a time zone: a query may ask for days, weeks or months (or hours, minutes) as a
//! time zone's clocks and calendar have them, with its daylight-saving changes (a day of 23 or
//! 25 hours). Such a bucket is a union of the view's UTC buckets only where the zone's offset
//! from UTC is a whole number of them, so a query is answered only where it is: see
//! [`check_aligned`]. A bucket is named by the local time it starts at, with the zone's offset
//! then ([`format()`]): `2026-11-01T00:00:00-04:00`, one instant, as any RFC 3339 time.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use chrono::{NaiveDateTime, TimeZone};
pub use chrono_tz::Tz;

use crate::value::{TIMESTAMP_RANGE, format_timestamp};
use crate::view::{DAY, Granularity};

/// The zone named `name` (IANA, e.g. `Europe/Berlin`); `None` for UTC itself, whose buckets
/// are the plain ones.
pub fn parse(name: &str) -> Result<Option<Tz>, String> {
    let zone: Tz = name.parse().map_err(|_| format!("unknown time zone {name:?} (IANA names, e.g. Europe/Berlin)"))?;
    Ok((!matches!(
        zone,
        Tz::UTC | Tz::Etc__UTC | Tz::Etc__UCT | Tz::Etc__Universal | Tz::Etc__Zulu | Tz::UCT | Tz::Universal | Tz::Zulu
    ))
    .then_some(zone))
}

/// The start of the bucket of `granularity` holding `micros` on `zone`'s clocks.
pub fn truncate(granularity: Granularity, zone: Tz, micros: i64) -> i64 {
    if granularity == Granularity::All {
        return 0;
    }
    // the local clock's time as if it were UTC, cut to its bucket there, and back
    let local = micros + offset_micros(zone, micros);
    instant(zone, naive(granularity.truncate(local)))
}

/// The start of the bucket after the one starting at `bucket` (`None` for `All`).
pub fn bucket_end(granularity: Granularity, zone: Tz, bucket: i64) -> Option<i64> {
    let local = naive(bucket + offset_micros(zone, bucket));
    let next = match granularity {
        Granularity::Minute | Granularity::Hour | Granularity::Day => {
            local + chrono::Duration::microseconds(granularity.width()?)
        }
        Granularity::Week => local + chrono::Duration::days(7),
        Granularity::Month => local.checked_add_months(chrono::Months::new(1))?,
        Granularity::All => return None,
    };
    Some(instant(zone, next))
}

/// Checks that `zone`'s offset from UTC is a whole number of `width` (a view's bucket) at
/// every instant of `[from, to)` (`None`: from the first or to the last time an event may
/// have), so that each of its local buckets is a union of the view's. Else says where it is
/// not, and from when on it is, if it is from some time on (most zones keep a local mean time
/// of minutes and seconds before 1900).
pub fn check_aligned(zone: Tz, width: i64, from: Option<i64>, to: Option<i64>) -> Result<(), String> {
    let spans = offsets(zone);
    let (from, to) = (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX));
    let misaligned = |i: usize| spans[i].1 % width != 0;
    let end_of = |i: usize| spans.get(i + 1).map_or(i64::MAX, |s| s.0);
    let overlaps = |i: usize| spans[i].0 < to && end_of(i) > from;
    let Some(bad) = (0..spans.len()).rfind(|&i| overlaps(i) && misaligned(i)) else { return Ok(()) };
    let unit = if width >= DAY {
        "days"
    } else if width >= 3_600_000_000 {
        "hours"
    } else {
        "minutes"
    };
    let offset = spans[bad].1 / 1_000_000;
    let mut message = format!(
        "time zone {} is UTC{}{:02}:{:02}:{:02} at {}, not a whole number of the view's {unit}",
        zone.name(),
        if offset < 0 { '-' } else { '+' },
        offset.abs() / 3600,
        offset.abs() % 3600 / 60,
        offset.abs() % 60,
        format_timestamp(spans[bad].0.max(from).max(TIMESTAMP_RANGE.start)),
    );
    if (bad + 1..spans.len()).all(|i| !misaligned(i)) && end_of(bad) < i64::MAX {
        message.push_str(&format!("; it is from {} on: ask from then", format_timestamp(end_of(bad))));
    } else {
        message.push_str("; ask a view of finer buckets, or UTC");
    }
    Err(message)
}

/// A bucket's start as RFC 3339: with `zone`'s offset at that instant (`2026-11-01T00:00:00-04:00`,
/// the local time a bucket starts at, and the same instant), or in UTC with a `Z`.
pub fn format(micros: i64, zone: Option<Tz>) -> String {
    match (zone, chrono::DateTime::from_timestamp_micros(micros)) {
        (Some(zone), Some(t)) => t.with_timezone(&zone).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false),
        _ => format_timestamp(micros),
    }
}

fn offset_micros(zone: Tz, micros: i64) -> i64 {
    use chrono::Offset;
    let utc = chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default().naive_utc();
    zone.offset_from_utc_datetime(&utc).fix().local_minus_utc() as i64 * 1_000_000
}

fn naive(micros: i64) -> NaiveDateTime {
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default().naive_utc()
}

/// The instant `local` is on `zone`'s clocks: the earlier one where clocks go back; where they
/// skip it (a gap), the instant they skip to, the first one past it.
fn instant(zone: Tz, local: NaiveDateTime) -> i64 {
    let mut at = local;
    // gaps are at most a few hours; a minute at a time finds the end of one
    for _ in 0..=24 * 60 {
        if let Some(t) = zone.from_local_datetime(&at).earliest() {
            return t.timestamp_micros();
        }
        at += chrono::Duration::minutes(1);
    }
    local.and_utc().timestamp_micros()
}

/// A zone's offsets: where each starts (UTC micros) and the offset (micros).
type Offsets = Arc<Vec<(i64, i64)>>;

/// `zone`'s offsets over the times an event may have: where each starts (UTC micros; the first
/// at `i64::MIN`) and the offset (micros), found once a zone by looking at each day and then
/// finding the second a change happened. (Two changes within a day would hide from it; the
/// time zone database has none in the years events may lie in.)
fn offsets(zone: Tz) -> Offsets {
    static FOUND: LazyLock<Mutex<HashMap<Tz, Offsets>>> = LazyLock::new(Default::default);
    if let Some(found) = FOUND.lock().expect("zone offsets lock").get(&zone) {
        return Arc::clone(found);
    }
    let (first, last) = (TIMESTAMP_RANGE.start, TIMESTAMP_RANGE.end);
    let mut spans = vec![(i64::MIN, offset_micros(zone, first))];
    let mut day = first;
    while day < last {
        let next = (day + DAY).min(last);
        let offset = offset_micros(zone, next);
        if offset != spans.last().expect("one span at least").1 {
            // the first second with the new offset
            let (mut lo, mut hi) = (day / 1_000_000, next / 1_000_000);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if offset_micros(zone, mid * 1_000_000) == offset { hi = mid } else { lo = mid }
            }
            spans.push((hi * 1_000_000, offset));
        }
        day = next;
    }
    let spans = Arc::new(spans);
    FOUND.lock().expect("zone offsets lock").insert(zone, Arc::clone(&spans));
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::parse_timestamp;

    fn at(text: &str) -> i64 {
        parse_timestamp(text).unwrap()
    }

    fn zone(name: &str) -> Tz {
        parse(name).unwrap().unwrap()
    }

    /// Bucket starts as the zone's clocks have them (the figures from Python's `zoneinfo`
    /// over the system's time zone database, not from this code): New York's 1 November
    /// 2026 has 25 hours, Berlin's days and months start at 23:00 UTC in winter, and São
    /// Paulo's 4 November 2018 has no midnight (its clocks went from 00:00 to 01:00), so it
    /// starts at 01:00 local.
    #[test]
    fn buckets_follow_the_zones_clocks() {
        let s = format_timestamp;
        let ny = zone("America/New_York");
        let day = truncate(Granularity::Day, ny, at("2026-11-01T12:00:00Z"));
        assert_eq!(s(day), "2026-11-01T04:00:00Z");
        assert_eq!(s(bucket_end(Granularity::Day, ny, day).unwrap()), "2026-11-02T05:00:00Z");
        assert_eq!(s(truncate(Granularity::Day, ny, at("2026-11-02T04:59:59Z"))), "2026-11-01T04:00:00Z");
        assert_eq!(s(truncate(Granularity::Hour, ny, at("2026-11-01T05:30:00Z"))), "2026-11-01T05:00:00Z");
        let berlin = zone("Europe/Berlin");
        let month = truncate(Granularity::Month, berlin, at("2026-10-31T23:30:00Z"));
        assert_eq!(s(month), "2026-10-31T23:00:00Z");
        assert_eq!(s(bucket_end(Granularity::Month, berlin, month).unwrap()), "2026-11-30T23:00:00Z");
        // the week of Monday 26 October, which began in summer time
        let week = truncate(Granularity::Week, berlin, at("2026-11-01T12:00:00Z"));
        assert_eq!(s(week), "2026-10-25T23:00:00Z");
        assert_eq!(s(bucket_end(Granularity::Week, berlin, week).unwrap()), "2026-11-01T23:00:00Z");
        let sao_paulo = zone("America/Sao_Paulo");
        assert_eq!(s(truncate(Granularity::Day, sao_paulo, at("2018-11-04T12:00:00Z"))), "2018-11-04T03:00:00Z");
        assert_eq!(truncate(Granularity::All, ny, at("2026-11-01T12:00:00Z")), 0);
        // the hour New York's clocks repeat (01:00 EDT, then 01:00 EST) is one bucket of two
        let repeated = truncate(Granularity::Hour, ny, at("2026-11-01T06:30:00Z"));
        assert_eq!(s(repeated), "2026-11-01T05:00:00Z");
        assert_eq!(s(bucket_end(Granularity::Hour, ny, repeated).unwrap()), "2026-11-01T07:00:00Z");
        // and the hour its clocks skip in spring (02:00) is none: 01:00 EST is followed by 03:00 EDT
        let before_gap = truncate(Granularity::Hour, ny, at("2026-03-08T06:30:00Z"));
        assert_eq!(s(bucket_end(Granularity::Hour, ny, before_gap).unwrap()), "2026-03-08T07:00:00Z");
        assert_eq!(
            format(bucket_end(Granularity::Hour, ny, before_gap).unwrap(), Some(ny)),
            "2026-03-08T03:00:00-04:00"
        );
        // named by the local time it starts at, with the offset there
        assert_eq!(format(day, Some(ny)), "2026-11-01T00:00:00-04:00");
        assert_eq!(format(bucket_end(Granularity::Day, ny, day).unwrap(), Some(ny)), "2026-11-02T00:00:00-05:00");
        assert_eq!(format(day, None), "2026-11-01T04:00:00Z");
        assert_eq!(bucket_end(Granularity::All, ny, 0), None);
    }

    #[test]
    fn utc_and_unknown_names() {
        assert_eq!(parse("UTC"), Ok(None));
        assert_eq!(parse("Etc/UTC"), Ok(None));
        assert!(parse("Mars/Olympus").is_err());
    }

    /// Berlin kept its local mean time (UTC+00:53:28) until 1 April 1893, so an hourly view
    /// answers its days from then on; Kolkata is UTC+05:30, so only a view of minutes answers
    /// its days (from when its mean times of seconds ended).
    #[test]
    fn a_zone_is_answered_where_its_offset_is_whole_view_buckets() {
        const HOUR: i64 = 3_600_000_000;
        const MINUTE: i64 = 60_000_000;
        let berlin = zone("Europe/Berlin");
        let refused = check_aligned(berlin, HOUR, None, None).unwrap_err();
        assert!(refused.contains("UTC+00:53:28") && refused.contains("from 1893-03-31T23:06:32Z on"), "{refused}");
        assert_eq!(check_aligned(berlin, HOUR, Some(at("1893-03-31T23:06:32Z")), None), Ok(()));
        assert!(check_aligned(berlin, HOUR, Some(at("1893-03-31T23:06:31Z")), None).is_err());
        assert!(check_aligned(berlin, HOUR, None, Some(at("1893-03-31T23:06:31Z"))).is_err());
        let kolkata = zone("Asia/Kolkata");
        let refused = check_aligned(kolkata, HOUR, Some(at("2026-01-01T00:00:00Z")), None).unwrap_err();
        assert!(refused.contains("UTC+05:30:00") && refused.contains("finer buckets"), "{refused}");
        assert_eq!(check_aligned(kolkata, MINUTE, Some(at("1960-01-01T00:00:00Z")), None), Ok(()));
        assert!(
            check_aligned(zone("America/New_York"), 86_400_000_000, Some(at("2026-01-01T00:00:00Z")), None).is_err()
        );
    }
}
