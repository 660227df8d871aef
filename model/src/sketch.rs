//! The two sketch states, `approx_distinct` and `approx_percentile`, built on maintained
//! crates: the Apache DataSketches HyperLogLog and DataDog's DDSketch.
//!
//! Both merge exactly, so a sketch merged from any split of the events is the sketch of one
//! pass over them, and so is every estimate read from it:
//! - [`Distinct`] is an HLL union at precision 14 (about 0.8 % standard error) in its 8-bit
//!   register form. It starts as a short list of coupons (bytes, not 16 KiB, for a group
//!   with few values) and turns into registers as it grows; both depend only on the set of
//!   values. Its estimate is the *composite* estimator, read from the registers alone, not the
//!   HIP estimator, whose value depends on insertion order.
//! - [`Quantiles`] is a DDSketch with 1 % relative accuracy whose bins are integer counts,
//!   added on merge. Its bin limit is large enough that no finite float ever triggers the
//!   order-dependent collapse of low bins; values below the smallest normal float count as 0.
//!
//! Both layers feed values through [`Distinct::insert`] and [`Quantiles::insert`] (the batch
//! layer from a DataFusion aggregate), so they hash and bin identically.

use datasketches::hll::{HllSketch, HllType, HllUnion};
use sketches_ddsketch::{Config, DDSketch};

use crate::value::Value;

const HLL_LG_K: u8 = 14;
const DD_ALPHA: f64 = 0.01;
/// Covers every normal f64 (about 71,000 bins at 1 %), so bins never collapse.
const DD_MAX_BINS: u32 = 1 << 17;

/// An `approx_distinct` state.
#[derive(Clone)]
pub struct Distinct(HllUnion);

impl Distinct {
    pub fn new() -> Distinct {
        Distinct(HllUnion::new(HLL_LG_K).expect("precision 14 is valid"))
    }

    /// Adds one value (nulls are the caller's to skip). A value is hashed as the bytes of
    /// a type tag followed by its own bytes (a string's UTF-8, a number's little-endian
    /// bits), fed to the sketch's hasher as one byte slice would be: this is part of the
    /// stored states' format, since states built by another build must merge with these.
    pub fn insert(&mut self, value: &Value) {
        let bits: [u8; 8];
        let (tag, bytes): (u8, &[u8]) = match value {
            Value::Null => return,
            Value::String(s) => return self.insert_str(s),
            Value::Int(i) => {
                bits = i.to_le_bytes();
                (2, &bits)
            }
            Value::Float(f) => {
                let f = if *f == 0.0 { 0.0 } else { *f }; // -0.0 and 0.0 are one value
                bits = f.to_bits().to_le_bytes();
                (3, &bits)
            }
            Value::Bool(b) => (if *b { 5 } else { 4 }, &[]),
            Value::Timestamp(t) => {
                bits = t.to_le_bytes();
                (6, &bits)
            }
        };
        self.0.update_value(SketchKey { tag, bytes });
    }

    /// Adds a string value, as [`insert`](Self::insert) of `Value::String` does.
    pub fn insert_str(&mut self, s: &str) {
        self.0.update_value(SketchKey { tag: 1, bytes: s.as_bytes() });
    }

    pub fn merge(&mut self, other: &Distinct) {
        self.0.update(&other.0.to_sketch(HllType::Hll8));
    }

    /// The estimate, rounded to a count.
    pub fn estimate(&self) -> i64 {
        self.0.composite_estimate().round() as i64
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_sketch(HllType::Hll8).serialize()
    }

    /// About how many bytes it holds: four bytes a coupon slot while it keeps a list or set
    /// of them, then one register byte each of its 2^14 registers (the crate's own count,
    /// read without computing an estimate, which for registers visits every one of them).
    pub fn heap_size(&self) -> usize {
        self.0.estimated_size() + 64
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Distinct, String> {
        let sketch = HllSketch::deserialize(bytes).map_err(|e| format!("bad approx_distinct state: {e}"))?;
        let mut d = Distinct::new();
        d.0.update(&sketch);
        Ok(d)
    }
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::new()
    }
}

/// Equal when they estimate the same: a list-mode sketch stores its coupons in arrival
/// order, so equal sets need not serialize to equal bytes.
impl PartialEq for Distinct {
    fn eq(&self, other: &Distinct) -> bool {
        self.estimate() == other.estimate()
    }
}

impl std::fmt::Debug for Distinct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Distinct(~{})", self.estimate())
    }
}

/// What [`Distinct::insert`] hashes: hashes exactly as the byte slice `[tag, bytes..]` does
/// (a length prefix, then the bytes; the sketch's hasher streams), without building it.
struct SketchKey<'a> {
    tag: u8,
    bytes: &'a [u8],
}

impl std::hash::Hash for SketchKey<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_usize(1 + self.bytes.len());
        state.write(&[self.tag]);
        state.write(self.bytes);
    }
}

/// An `approx_percentile` state.
#[derive(Clone)]
pub struct Quantiles(DDSketch);

impl Quantiles {
    pub fn new() -> Quantiles {
        Quantiles(DDSketch::new(Config::new(DD_ALPHA, DD_MAX_BINS, f64::MIN_POSITIVE)))
    }

    /// Adds one numeric value; other values are ignored.
    pub fn insert(&mut self, value: &Value) {
        match value {
            Value::Int(i) => self.0.add(*i as f64),
            Value::Float(f) if f.is_finite() => self.0.add(*f),
            _ => {}
        }
    }

    pub fn merge(&mut self, other: &Quantiles) {
        self.0.merge(&other.0).expect("all tandem DDSketches share one configuration");
    }

    /// The estimate of percentile `p`, or `None` with no values: the value at rank
    /// `floor(p * (n - 1))` of the values in order, within 1 %, and never outside the smallest
    /// and largest value (a bin's value may lie up to 1 % beyond them, the percentile never
    /// does: one value's percentiles are that value, and no p99 exceeds the max).
    pub fn quantile(&self, p: f64) -> Option<f64> {
        let estimate = self.0.quantile(p).ok().flatten()?;
        Some(estimate.clamp(self.0.min()?, self.0.max()?))
    }

    pub fn count(&self) -> usize {
        self.0.count()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.0).expect("DDSketch serializes")
    }

    /// About how many bytes it holds: its bins (eight bytes each) and the sketch itself.
    pub fn heap_size(&self) -> usize {
        self.0.length() * 8 + 128
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Quantiles, String> {
        let sketch: DDSketch = postcard::from_bytes(bytes).map_err(|e| format!("bad approx_percentile state: {e}"))?;
        Ok(Quantiles(sketch))
    }

    /// The bins, zero count, min and max: everything an estimate reads (the float `sum`,
    /// which depends on order, is not part of a state's identity).
    fn identity(&self) -> (Vec<Option<f64>>, usize) {
        let probes = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0];
        (probes.iter().map(|&p| self.quantile(p)).collect(), self.count())
    }
}

impl Default for Quantiles {
    fn default() -> Self {
        Quantiles::new()
    }
}

impl PartialEq for Quantiles {
    fn eq(&self, other: &Quantiles) -> bool {
        self.identity() == other.identity()
    }
}

impl std::fmt::Debug for Quantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Quantiles(n={}, p50={:?})", self.count(), self.quantile(0.5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: i64) -> Vec<Value> {
        (0..n)
            .map(|i| Value::Int((i * 7919) % (n / 2 + 1) - 30))
            .chain([Value::Float(1e300), Value::Float(-2.5e-300)])
            .collect()
    }

    /// Any split, merged in any order, gives the same state and the same estimates, to the bit.
    #[test]
    fn estimates_do_not_depend_on_the_split() {
        for n in [3, 50, 3000, 40_000] {
            let vs = values(n);
            let (mut d, mut q) = (Distinct::new(), Quantiles::new());
            vs.iter().for_each(|v| {
                d.insert(v);
                q.insert(v);
            });
            for parts in [2usize, 3, 7] {
                let chunk = vs.len().div_ceil(parts);
                let mut pieces: Vec<(Distinct, Quantiles)> = vs
                    .chunks(chunk)
                    .map(|c| {
                        let (mut d, mut q) = (Distinct::new(), Quantiles::new());
                        c.iter().for_each(|v| {
                            d.insert(v);
                            q.insert(v);
                        });
                        // through bytes, as the batch layer stores them
                        (Distinct::from_bytes(&d.to_bytes()).unwrap(), Quantiles::from_bytes(&q.to_bytes()).unwrap())
                    })
                    .collect();
                pieces.reverse();
                let (mut md, mut mq) = (Distinct::new(), Quantiles::new());
                for (pd, pq) in &pieces {
                    md.merge(pd);
                    mq.merge(pq);
                }
                assert_eq!(md.estimate(), d.estimate(), "n={n} parts={parts}");
                for p in [0.01, 0.5, 0.95, 0.999] {
                    assert_eq!(mq.quantile(p).map(f64::to_bits), q.quantile(p).map(f64::to_bits), "n={n} p={p}");
                }
            }
        }
    }

    /// Values hash as the byte slice `[tag, bytes..]`, the format states were first stored
    /// in: a sketch fed those slices directly is identical, byte for byte.
    #[test]
    fn values_hash_as_their_tagged_bytes() {
        let tagged = |v: &Value| -> Vec<u8> {
            let (tag, bytes) = match v {
                Value::String(s) => (1, s.as_bytes().to_vec()),
                Value::Int(i) => (2, i.to_le_bytes().to_vec()),
                Value::Float(f) => (3, f.to_bits().to_le_bytes().to_vec()),
                Value::Bool(b) => (if *b { 5 } else { 4 }, vec![]),
                Value::Timestamp(t) => (6, t.to_le_bytes().to_vec()),
                Value::Null => unreachable!(),
            };
            [vec![tag], bytes].concat()
        };
        for n in [5, 5000] {
            let vs: Vec<Value> = (0..n)
                .flat_map(|i| {
                    [
                        Value::String(format!("user-{i}-{}", "x".repeat(i as usize % 40)).into()),
                        Value::Int(i * 31 - 7),
                        Value::Float(i as f64 / 3.0),
                        Value::Timestamp(i * 1_000_007),
                        Value::Bool(i % 2 == 0),
                    ]
                })
                .collect();
            let (mut ours, mut bytes) = (Distinct::new(), HllUnion::new(HLL_LG_K).unwrap());
            for v in &vs {
                ours.insert(v);
                bytes.update_value(tagged(v).as_slice());
            }
            assert_eq!(ours.to_bytes(), bytes.to_sketch(HllType::Hll8).serialize(), "n={n}");
        }
    }

    #[test]
    fn estimates_are_within_their_error() {
        let mut d = Distinct::new();
        (0..100_000).for_each(|i| d.insert(&Value::String(format!("user-{i}").into())));
        let e = d.estimate() as f64;
        assert!((e - 100_000.0).abs() / 100_000.0 < 0.03, "{e}");
        let mut small = Distinct::new();
        ["a", "b", "a", "c"].iter().for_each(|s| small.insert(&Value::String((*s).into())));
        assert_eq!(small.estimate(), 3);
        assert!(small.to_bytes().len() < 100, "a small set stays small: {} bytes", small.to_bytes().len());

        let mut q = Quantiles::new();
        (1..=10_000).for_each(|i| q.insert(&Value::Int(i)));
        for (p, exact) in [(0.5, 5000.0), (0.99, 9900.0), (0.01, 100.0)] {
            let got = q.quantile(p).unwrap();
            assert!((got - exact).abs() / exact <= 0.0101, "p{p}: {got} vs {exact}");
        }
        assert_eq!(Quantiles::new().quantile(0.5), None);
    }

    /// Percentiles stay between the smallest and the largest value, and within 1 % of the
    /// value at rank `floor(p * (n - 1))`, for small groups too.
    #[test]
    fn percentiles_stay_within_the_values_seen() {
        let sets: [&[f64]; 6] = [
            &[3.0],
            &[3.0, 10.5],
            &[-2.5],
            &[-7.0, -1.0, 0.0, 4.0],
            &[0.001, 1e9],
            &[250.0, 251.0, 252.0, 253.0, 254.0, 255.0, 256.0],
        ];
        for values in sets {
            let mut q = Quantiles::new();
            values.iter().for_each(|v| q.insert(&Value::Float(*v)));
            let mut sorted = values.to_vec();
            sorted.sort_by(f64::total_cmp);
            let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
            for p in [0.01, 0.25, 0.5, 0.9, 0.95, 0.99] {
                let got = q.quantile(p).unwrap();
                let exact = sorted[(p * (sorted.len() as f64 - 1.0)) as usize];
                assert!((lo..=hi).contains(&got), "{values:?} p{p}: {got} outside [{lo}, {hi}]");
                assert!((got - exact).abs() <= 0.01 * exact.abs() + 1e-12, "{values:?} p{p}: {got} vs {exact}");
            }
        }
        let mut one = Quantiles::new();
        one.insert(&Value::Int(42));
        assert_eq!(one.quantile(0.95), Some(42.0));
    }
}
