//! [`DistinctCount`]: a HyperLogLog sketch of the distinct users behind an experiment's counts.
//!
//! Precision 14 (16,384 one-byte registers, standard relative error 1.04/√m ≈ 0.81 %), estimated
//! with Otmar Ertl's improved raw estimator ("New cardinality estimation algorithms for
//! HyperLogLog sketches", 2017), which needs neither bias tables nor a switch to linear counting.
//! Sketches merge by register-wise maximum, so nodes can count the same user in several places
//! and still count them once.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bits of the hash that choose the register.
pub const PRECISION: u32 = 14;
/// Number of registers, `2^PRECISION`.
pub const REGISTERS: usize = 1 << PRECISION;
/// Largest register value: the 50 hash bits left after the index, all zero, plus one.
pub const MAX_RANK: u8 = (64 - PRECISION + 1) as u8;

/// Hash bits left after the register index (`q` in Ertl's paper).
const Q: usize = 64 - PRECISION as usize;
/// The σ and τ series converge in well under 64 steps for every input a sketch can produce;
/// the cap only guarantees termination.
const SERIES_CAP: usize = 100;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The 64-bit hash a key is counted by: FNV-1a 64 over the key's UTF-8 bytes, then MurmurHash3's
/// `fmix64` finalizer.
///
/// Stable across platforms, Rust versions and processes (no random seed), because an SDK and the
/// node must put the same user in the same register. FNV-1a alone mixes its high bits poorly;
/// the finalizer spreads every input bit over the index and the rank.
pub fn key_hash(key: &str) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in key.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Register index (top 14 bits) and rank (leading zeros of the other 50 bits, plus one).
fn index_and_rank(hash: u64) -> (usize, u8) {
    let index = (hash >> Q) as usize;
    let rest = hash << PRECISION;
    let rank = if rest == 0 {
        MAX_RANK
    } else {
        // `rest` is non-zero, so at most 49 leading zeros: the rank stays below MAX_RANK.
        rest.leading_zeros() as u8 + 1
    };
    (index, rank)
}

/// A HyperLogLog distinct-count sketch with 16,384 registers.
///
/// An empty sketch allocates nothing; the first insert (or merge of a non-empty sketch)
/// allocates the 16 KiB of registers. Invariant: when registers are allocated, at least one is
/// non-zero, so equality and the wire form never depend on whether an empty sketch allocated.
///
/// On the wire (serde) a sketch is a plain sequence of `u32`, the [sparse
/// entries](DistinctCount::to_sparse) of its non-zero registers. Decoding validates every entry
/// and refuses the input at the first bad one; it never holds more than 16,384 entries.
#[derive(Clone, Default)]
pub struct DistinctCount {
    registers: Option<Box<[u8]>>,
}

/// What is wrong with one entry of a sparse sketch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparseFault {
    /// The register index (`entry >> 8`) is not below 16,384.
    IndexOutOfRange,
    /// The rank (`entry & 0xff`) is not in `1..=51`.
    RankOutOfRange,
    /// The index is not greater than the previous entry's: entries are sorted and unique.
    NotIncreasing,
}

/// A sparse sketch refused by [`DistinctCount::from_sparse`], [`DistinctCount::merge_sparse`]
/// or deserialization: which entry, its value, and what is wrong with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SketchDecodeError {
    /// Zero-based position of the first bad entry in the sequence.
    pub position: usize,
    /// The entry as it was received.
    pub entry: u32,
    /// What is wrong with it.
    pub fault: SparseFault,
}

impl fmt::Display for SketchDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let index = self.entry >> 8;
        let rank = self.entry & 0xff;
        write!(f, "sketch entry {} ({:#x}): ", self.position, self.entry)?;
        match self.fault {
            SparseFault::IndexOutOfRange => {
                write!(f, "register index {index} is not below {REGISTERS}")
            }
            SparseFault::RankOutOfRange => {
                write!(f, "rank {rank} is not in 1..={MAX_RANK}")
            }
            SparseFault::NotIncreasing => write!(
                f,
                "register index {index} does not follow the previous entry's (entries are sorted and unique)"
            ),
        }
    }
}

impl std::error::Error for SketchDecodeError {}

/// Checks sparse entries one at a time, so a decoder can stop at the first bad one.
struct SparseChecker {
    position: usize,
    previous: Option<u32>,
}

impl SparseChecker {
    fn new() -> Self {
        SparseChecker {
            position: 0,
            previous: None,
        }
    }

    /// The entry's register index and rank, or why it is refused.
    fn check(&mut self, entry: u32) -> Result<(usize, u8), SketchDecodeError> {
        let fail = |fault| SketchDecodeError {
            position: self.position,
            entry,
            fault,
        };
        let index = entry >> 8;
        let rank = (entry & 0xff) as u8;
        if index as usize >= REGISTERS {
            return Err(fail(SparseFault::IndexOutOfRange));
        }
        if rank == 0 || rank > MAX_RANK {
            return Err(fail(SparseFault::RankOutOfRange));
        }
        if self.previous.is_some_and(|p| index <= p) {
            return Err(fail(SparseFault::NotIncreasing));
        }
        self.previous = Some(index);
        self.position += 1;
        Ok((index as usize, rank))
    }
}

fn sparse_entry(index: usize, rank: u8) -> u32 {
    // index < 2^14, so the shift cannot overflow u32.
    ((index as u32) << 8) | u32::from(rank)
}

impl DistinctCount {
    /// An empty sketch; allocates nothing. Its estimate is 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when nothing has been counted.
    pub fn is_empty(&self) -> bool {
        self.registers.is_none()
    }

    /// The sketch's standard relative error, 1.04/√m = 0.008125 for 16,384 registers: about
    /// two thirds of estimates fall within this fraction of the true count.
    pub fn relative_error() -> f64 {
        1.04 / (REGISTERS as f64).sqrt()
    }

    fn registers_mut(&mut self) -> &mut [u8] {
        self.registers
            .get_or_insert_with(|| vec![0u8; REGISTERS].into_boxed_slice())
    }

    /// Counts `key` (hashed with [`key_hash`]). Counting a key again changes nothing.
    pub fn insert(&mut self, key: &str) {
        self.insert_hash(key_hash(key));
    }

    /// Counts an already computed [`key_hash`], for callers that hash once and count in
    /// several sketches.
    pub fn insert_hash(&mut self, hash: u64) {
        let (index, rank) = index_and_rank(hash);
        let registers = self.registers_mut();
        if registers[index] < rank {
            registers[index] = rank;
        }
    }

    /// Adds everything `other` counted: afterwards `self` is the sketch of the union.
    /// Commutative, associative and idempotent.
    pub fn merge(&mut self, other: &DistinctCount) {
        let Some(theirs) = other.registers.as_deref() else {
            return;
        };
        match self.registers.as_deref_mut() {
            None => self.registers = Some(theirs.into()),
            Some(ours) => {
                for (a, &b) in ours.iter_mut().zip(theirs) {
                    *a = (*a).max(b);
                }
            }
        }
    }

    /// Merges sparse entries (from [`to_sparse`](Self::to_sparse) or
    /// [`delta_from`](Self::delta_from)) into this sketch. All entries are checked first: on
    /// error the sketch is unchanged.
    pub fn merge_sparse(&mut self, entries: &[u32]) -> Result<(), SketchDecodeError> {
        let mut checker = SparseChecker::new();
        for &entry in entries {
            checker.check(entry)?;
        }
        if entries.is_empty() {
            return Ok(());
        }
        let registers = self.registers_mut();
        for &entry in entries {
            let index = (entry >> 8) as usize;
            let rank = (entry & 0xff) as u8;
            registers[index] = registers[index].max(rank);
        }
        Ok(())
    }

    /// The non-zero registers as `index << 8 | rank`, sorted by index. Empty for an empty sketch.
    pub fn to_sparse(&self) -> Vec<u32> {
        self.iter_sparse().collect()
    }

    fn iter_sparse(&self) -> impl Iterator<Item = u32> + '_ {
        self.registers
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .filter(|(_, &rank)| rank != 0)
            .map(|(index, &rank)| sparse_entry(index, rank))
    }

    /// The sketch whose non-zero registers are `entries`. Refuses an index not below 16,384, a
    /// rank outside `1..=51` or an index not greater than the previous one, naming the entry.
    pub fn from_sparse(entries: &[u32]) -> Result<Self, SketchDecodeError> {
        let mut sketch = DistinctCount::new();
        sketch.merge_sparse(entries)?;
        Ok(sketch)
    }

    /// The sparse entries of the registers where `self` exceeds `base`: what a node proposes
    /// after counting locally, since merging them into `base` gives the same sketch as merging
    /// all of `self`. Empty when `self` adds nothing to `base`.
    pub fn delta_from(&self, base: &DistinctCount) -> Vec<u32> {
        let Some(ours) = self.registers.as_deref() else {
            return Vec::new();
        };
        let theirs = base.registers.as_deref();
        ours.iter()
            .enumerate()
            .filter(|&(index, &rank)| rank > theirs.map_or(0, |t| t[index]))
            .map(|(index, &rank)| sparse_entry(index, rank))
            .collect()
    }

    /// The estimated number of distinct keys counted; exactly 0 for an empty sketch, never
    /// negative, NaN or infinite. Its standard relative error is
    /// [`relative_error`](Self::relative_error).
    pub fn estimate(&self) -> f64 {
        let Some(registers) = self.registers.as_deref() else {
            return 0.0;
        };
        let mut histogram = [0u32; Q + 2];
        for &r in registers {
            // Registers only ever hold 0..=MAX_RANK, but a clamp costs nothing and keeps the
            // index in bounds whatever happens.
            histogram[usize::from(r.min(MAX_RANK))] += 1;
        }
        let m = REGISTERS as f64;
        if histogram[0] as usize == REGISTERS {
            return 0.0;
        }
        let mut z = m * tau(1.0 - f64::from(histogram[Q + 1]) / m);
        for k in (1..=Q).rev() {
            z = 0.5 * (z + f64::from(histogram[k]));
        }
        z += m * sigma(f64::from(histogram[0]) / m);
        m * m / (2.0 * std::f64::consts::LN_2 * z)
    }

    /// Number of non-zero registers (for diagnostics).
    pub fn occupied_registers(&self) -> usize {
        self.registers
            .as_deref()
            .map_or(0, |r| r.iter().filter(|&&v| v != 0).count())
    }
}

/// Ertl's σ(x) = x + Σ_{k≥1} x^(2^k)·2^(k−1), for x in [0, 1); infinite at 1.
fn sigma(mut x: f64) -> f64 {
    if x >= 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    for _ in 0..SERIES_CAP {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if z == previous {
            break;
        }
    }
    z
}

/// Ertl's τ(x) = (1 − x − Σ_{k≥1} (1 − x^(2^−k))²·2^−k) / 3, for x in [0, 1]; 0 at both ends.
fn tau(mut x: f64) -> f64 {
    if x <= 0.0 || x >= 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    for _ in 0..SERIES_CAP {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        let d = 1.0 - x;
        z -= d * d * y;
        if z == previous {
            break;
        }
    }
    z / 3.0
}

impl PartialEq for DistinctCount {
    fn eq(&self, other: &Self) -> bool {
        self.iter_sparse().eq(other.iter_sparse())
    }
}

impl Eq for DistinctCount {}

impl fmt::Debug for DistinctCount {
    // 16,384 registers in a failed assertion help nobody; the summary does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistinctCount")
            .field("occupied_registers", &self.occupied_registers())
            .field("estimate", &self.estimate())
            .finish()
    }
}

impl Serialize for DistinctCount {
    // Written by hand rather than derived through `Vec<u32>` so serializing streams the
    // registers without first cloning 16 KiB.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.occupied_registers()))?;
        for entry in self.iter_sparse() {
            seq.serialize_element(&entry)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for DistinctCount {
    // Checks each entry as it arrives, so hostile input is refused at its first bad entry and
    // never makes us buffer more than the 16,384 entries a valid sketch can have.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(SparseVisitor)
    }
}

struct SparseVisitor;

impl<'de> Visitor<'de> for SparseVisitor {
    type Value = DistinctCount;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sorted sequence of u32 sketch entries (index << 8 | rank)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DistinctCount, A::Error> {
        let mut checker = SparseChecker::new();
        let mut sketch = DistinctCount::new();
        while let Some(entry) = seq.next_element::<u32>()? {
            let (index, rank) = checker.check(entry).map_err(de::Error::custom)?;
            sketch.registers_mut()[index] = rank;
        }
        Ok(sketch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch_of(range: std::ops::Range<u64>) -> DistinctCount {
        let mut s = DistinctCount::new();
        let mut key = String::new();
        for i in range {
            key.clear();
            use std::fmt::Write;
            let _ = write!(key, "user-{i}");
            s.insert(&key);
        }
        s
    }

    #[test]
    fn key_hash_is_frozen() {
        // Pinned values (computed independently of this code): a change to either step would
        // put the SDK's and the node's users in different registers.
        let cases = [
            ("", 0xefd0_1f60_ba99_2926_u64),
            ("a", 0x82a2_a958_a9be_ce5b),
            ("user-1", 0x41a2_fca5_c684_01c5),
            ("user-1000000", 0x7ffc_a9d6_51ff_eac1),
            ("grüße 🚩", 0x5dfd_8ece_25bd_7261),
        ];
        for (key, hash) in cases {
            assert_eq!(key_hash(key), hash, "{key:?}");
        }
    }

    #[test]
    fn rank_and_index_cover_the_edges() {
        assert_eq!(index_and_rank(0), (0, MAX_RANK));
        assert_eq!(index_and_rank(u64::MAX), (REGISTERS - 1, 1));
        // Index bits all zero, the highest of the 50 rank bits set: rank 1.
        assert_eq!(index_and_rank(1 << 49), (0, 1));
        // Only the lowest bit set: 49 leading zeros in the rank bits, rank 50.
        assert_eq!(index_and_rank(1), (0, 50));
        assert_eq!(index_and_rank(3 << 50), (3, MAX_RANK));
    }

    #[test]
    fn empty_sketch_allocates_nothing_and_estimates_zero() {
        let s = DistinctCount::new();
        assert!(s.is_empty());
        assert_eq!(s.estimate(), 0.0);
        assert!(s.to_sparse().is_empty());
        let mut t = DistinctCount::new();
        t.merge(&s);
        assert!(t.is_empty(), "merging an empty sketch allocates nothing");
        assert_eq!(DistinctCount::from_sparse(&[]), Ok(DistinctCount::new()));
    }

    #[test]
    fn series_match_their_closed_forms() {
        assert_eq!(sigma(0.0), 0.0);
        assert_eq!(sigma(1.0), f64::INFINITY);
        // σ(x) ≥ x and grows without bound as x → 1.
        assert!(sigma(0.5) > 0.5 && sigma(1.0 - 1e-9) > 1e8);
        assert_eq!(tau(0.0), 0.0);
        assert_eq!(tau(1.0), 0.0);
        // τ(x) → (1 − x)/3 − ... stays in (0, 1/3).
        let t = tau(0.5);
        assert!(t > 0.0 && t < 1.0 / 3.0, "{t}");
    }

    #[test]
    fn estimates_are_within_four_standard_errors() {
        let mut previous = 0;
        let mut sketch = DistinctCount::new();
        for n in [0u64, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000] {
            // Grow one sketch through the checkpoints instead of rebuilding from zero.
            sketch.merge(&sketch_of(previous..n));
            previous = n;
            let estimate = sketch.estimate();
            let n = n as f64;
            println!("n = {n}: estimate {estimate:.2}");
            if n <= 10.0 {
                assert!((estimate - n).abs() <= 1.0, "n = {n}: estimate {estimate}");
            } else {
                let bound = 4.0 * DistinctCount::relative_error() * n;
                assert!(
                    (estimate - n).abs() <= bound,
                    "n = {n}: estimate {estimate}, allowed ±{bound}"
                );
            }
        }
    }

    #[test]
    fn inserting_again_changes_nothing() {
        let a = sketch_of(0..1000);
        let mut b = a.clone();
        b.merge(&sketch_of(0..1000));
        b.insert("user-5");
        assert_eq!(a, b);
    }

    #[test]
    fn merge_of_halves_equals_sketch_of_union() {
        let whole = sketch_of(0..20_000);
        let mut left = sketch_of(0..10_000);
        let right = sketch_of(10_000..20_000);
        let mut other_way = right.clone();
        other_way.merge(&left);
        left.merge(&right);
        assert_eq!(left, whole);
        assert_eq!(other_way, whole);
        assert_eq!(left.estimate(), whole.estimate());
    }

    #[test]
    fn sparse_round_trip() {
        for sketch in [DistinctCount::new(), sketch_of(0..1), sketch_of(0..50_000)] {
            let sparse = sketch.to_sparse();
            assert!(sparse.windows(2).all(|w| w[0] >> 8 < w[1] >> 8), "sorted");
            assert_eq!(DistinctCount::from_sparse(&sparse), Ok(sketch.clone()));
            let json = serde_json::to_string(&sketch).expect("serializes");
            let back: DistinctCount = serde_json::from_str(&json).expect("round-trips");
            assert_eq!(back, sketch);
        }
        assert_eq!(
            serde_json::to_string(&DistinctCount::new()).expect("serializes"),
            "[]"
        );
    }

    #[test]
    fn malformed_sparse_input_is_refused_with_its_position() {
        let good = (5 << 8) | 3;
        let cases: [(&[u32], usize, SparseFault); 7] = [
            (&[16_384 << 8 | 1], 0, SparseFault::IndexOutOfRange),
            (&[good, u32::MAX], 1, SparseFault::IndexOutOfRange),
            (&[good, 6 << 8], 1, SparseFault::RankOutOfRange),
            (&[good, (6 << 8) | 52], 1, SparseFault::RankOutOfRange),
            (&[good, (6 << 8) | 255], 1, SparseFault::RankOutOfRange),
            (&[good, good], 1, SparseFault::NotIncreasing),
            (
                &[(1 << 8) | 1, good, (4 << 8) | 1],
                2,
                SparseFault::NotIncreasing,
            ),
        ];
        for (entries, position, fault) in cases {
            let err = DistinctCount::from_sparse(entries).expect_err("refused");
            assert_eq!((err.position, err.fault), (position, fault), "{entries:?}");
            assert_eq!(err.entry, entries[position]);
            let json = serde_json::to_string(entries).expect("serializes");
            let msg = serde_json::from_str::<DistinctCount>(&json)
                .expect_err("refused on the wire too")
                .to_string();
            assert!(msg.contains(&format!("sketch entry {position} ")), "{msg}");
        }
        for json in [
            "{}",
            "[-1]",
            "[1.5]",
            "[4294967296]",
            "\"x\"",
            "[1,",
            "null",
        ] {
            assert!(
                serde_json::from_str::<DistinctCount>(json).is_err(),
                "{json} accepted"
            );
        }
    }

    #[test]
    fn merge_sparse_is_all_or_nothing() {
        let mut s = sketch_of(0..100);
        let before = s.clone();
        let err = s.merge_sparse(&[(1 << 8) | 51, 1 << 8 | 60]);
        assert!(err.is_err());
        assert_eq!(s, before);
    }

    #[test]
    fn delta_applied_to_base_equals_merge() {
        let base = sketch_of(0..5_000);
        let mut local = base.clone();
        local.merge(&sketch_of(4_000..9_000));
        let delta = local.delta_from(&base);
        assert!(!delta.is_empty() && delta.len() < local.to_sparse().len());
        let mut applied = base.clone();
        applied
            .merge_sparse(&delta)
            .expect("a delta is valid sparse input");
        let mut merged = base.clone();
        merged.merge(&local);
        assert_eq!(applied, merged);
        assert!(base.delta_from(&base).is_empty());
        assert_eq!(local.delta_from(&DistinctCount::new()), local.to_sparse());
        assert!(DistinctCount::new().delta_from(&base).is_empty());
    }
}
