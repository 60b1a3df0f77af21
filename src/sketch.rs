//! A mergeable quantile sketch with a relative-error bound: DDSketch's
//! logarithmic bucketing (Masson, Rim, Lee, "DDSketch: a fast and fully
//! mergeable quantile sketch with relative-error guarantees", VLDB 2019),
//! written out here in ~200 lines rather than taken from a crate, because
//! its users need three things the crates do not all give: the buckets
//! themselves (the `metrics` layer forwards a window to the inner recorder
//! as `record_many(representative, count)`), a `clear` that keeps the
//! bucket array (no allocation from one window to the next: the fold reuses
//! a histogram window's sketch, see `Policy::histogram`), and
//! `min`/`max`/`sum` kept exactly beside the buckets. In the core (default
//! features, no dependency): `Policy::histogram` folds samples into one,
//! and the `metrics` feature's layer re-exports it.
//!
//! # The bound
//!
//! With relative accuracy `α` the bucket growth factor is
//! `γ = (1 + α) / (1 - α)`; a value `v > 0` goes to bucket
//! `i = ⌈log_γ v⌉`, which holds the values in `(γ^(i-1), γ^i]`, and the
//! bucket is represented by `2γ^i / (γ + 1)`, within relative error `α` of
//! every value in it. Negative values use a mirrored store of magnitudes,
//! values of magnitude below [`Sketch::MIN_MAGNITUDE`] count as zero.
//!
//! [`Sketch::quantile`]`(q)` returns the representative of the bucket holding
//! the element of rank `⌊q (n - 1)⌋` (0-based, in sorted order), clamped to
//! `[min, max]`, so it is within relative error `α` of that exact order
//! statistic, as long as each store spans at most [`Sketch::MAX_BUCKETS`]
//! buckets (with the default `α = 0.01`: magnitudes within a factor
//! `1.0202^2048`, about `6 · 10^17`, of each other). Past that span the
//! lowest buckets are collapsed into one (DDSketch's collapsing-lowest
//! store): high quantiles keep the bound, the lowest ones lose it, and
//! memory stays bounded.

/// One sign's bucket counts: a contiguous run of bucket indices.
#[derive(Debug, Clone, Default)]
struct Store {
    /// `counts[j]` is bucket `offset + j`.
    counts: Vec<u64>,
    offset: i32,
    /// Lowest and highest non-empty bucket (valid when `total > 0`).
    lo: i32,
    hi: i32,
    total: u64,
}

impl Store {
    fn add(&mut self, index: i32, n: u64) {
        if n == 0 {
            return;
        }
        let index = if self.total == 0 {
            self.lo = index;
            self.hi = index;
            index
        } else {
            // Keep the highest MAX_BUCKETS buckets; a lower index joins the
            // lowest kept bucket.
            let hi = self.hi.max(index);
            let floor = hi - (Sketch::MAX_BUCKETS as i32 - 1);
            let index = index.max(floor);
            if floor > self.lo {
                self.collapse_below(floor);
            }
            self.lo = self.lo.min(index);
            self.hi = hi;
            index
        };
        self.ensure(self.lo, self.hi);
        self.counts[(index - self.offset) as usize] += n;
        self.total += n;
    }

    /// Moves every count below `floor` into bucket `floor`.
    fn collapse_below(&mut self, floor: i32) {
        let mut moved = 0;
        for i in self.lo..floor.min(self.hi + 1) {
            let j = (i - self.offset) as usize;
            moved += self.counts[j];
            self.counts[j] = 0;
        }
        self.lo = floor;
        self.ensure(floor, self.hi.max(floor));
        self.counts[(floor - self.offset) as usize] += moved;
    }

    /// Makes `lo..=hi` addressable, keeping counts; allocates only when
    /// the run must grow. Counts outside `self.lo..=self.hi` are always
    /// zero (`clear` and `collapse_below` keep it so).
    fn ensure(&mut self, lo: i32, hi: i32) {
        let len = self.counts.len() as i32;
        if !self.counts.is_empty() && lo >= self.offset && hi < self.offset + len {
            return;
        }
        let span = (hi - lo + 1) as usize;
        if span <= self.counts.len() {
            // The array is long enough, only placed elsewhere (a reused
            // sketch whose new window's values lie in another range): slide
            // the counts instead of reallocating, so a pooled sketch stays
            // allocation-free whatever range its next window covers.
            self.recenter(lo, hi);
            return;
        }
        let new_len = span
            .max(self.counts.len() * 2)
            .max(64)
            .min(Sketch::MAX_BUCKETS.max(span));
        let new_offset = lo - ((new_len - span) / 2) as i32;
        let mut counts = vec![0u64; new_len];
        if self.total > 0 {
            for i in self.lo.max(self.offset)..=self.hi.min(self.offset + len - 1) {
                let c = self.counts[(i - self.offset) as usize];
                if c > 0 {
                    counts[(i - new_offset) as usize] = c;
                }
            }
        }
        self.counts = counts;
        self.offset = new_offset;
    }

    /// Grows the array to `Sketch::MAX_BUCKETS` (keeping counts), the
    /// most a store ever needs: it never allocates again.
    fn reserve_full(&mut self) {
        if self.counts.len() >= Sketch::MAX_BUCKETS {
            return;
        }
        let old = std::mem::take(&mut self.counts);
        let old_offset = self.offset;
        let (lo, hi) = if self.total > 0 {
            (self.lo, self.hi)
        } else {
            (0, 0)
        };
        let span = (hi - lo + 1) as usize;
        self.counts = vec![0u64; Sketch::MAX_BUCKETS];
        self.offset = lo - ((Sketch::MAX_BUCKETS - span) / 2) as i32;
        if self.total > 0 {
            for i in lo..=hi {
                self.counts[(i - self.offset) as usize] = old[(i - old_offset) as usize];
            }
        }
    }

    /// `ensure` when `lo..=hi` fits the array: moves the live counts (the
    /// part of `lo..=hi` the array covers now) to a new offset centring
    /// `lo..=hi`, zeroing what they leave behind.
    fn recenter(&mut self, lo: i32, hi: i32) {
        let len = self.counts.len();
        let span = (hi - lo + 1) as usize;
        let new_offset = lo - ((len - span) / 2) as i32;
        let (from, to) = (lo.max(self.offset), hi.min(self.offset + len as i32 - 1));
        if self.total > 0 && from <= to {
            let src = (from - self.offset) as usize..=(to - self.offset) as usize;
            let dst = (from - new_offset) as usize;
            let dst_end = dst + (to - from) as usize;
            self.counts.copy_within(src.clone(), dst);
            for j in src.filter(|&j| j < dst || j > dst_end) {
                self.counts[j] = 0;
            }
        }
        self.offset = new_offset;
    }

    fn clear(&mut self) {
        if self.total > 0 {
            let (a, b) = (
                (self.lo - self.offset) as usize,
                (self.hi - self.offset) as usize,
            );
            self.counts[a..=b].fill(0);
        }
        self.total = 0;
    }

    /// Non-empty buckets, lowest index first.
    fn buckets(&self) -> impl DoubleEndedIterator<Item = (i32, u64)> + '_ {
        let range = if self.total == 0 {
            0..0
        } else {
            (self.lo - self.offset) as usize..(self.hi - self.offset) as usize + 1
        };
        self.counts[range]
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(move |(j, c)| (self.lo + j as i32, *c))
    }
}

/// A windowed quantile sketch: count, sum, min, max and quantiles within a
/// stated relative error (see [`Sketch::new`] for the bound).
///
/// ```
/// use ringfold::Sketch;
/// let mut s = Sketch::new(0.01)?;
/// for v in 1..=1000 {
///     s.add(v as f64);
/// }
/// let p99 = s.quantile(0.99).unwrap();
/// // The exact order statistic of rank ⌊0.99 · 999⌋ is 990.
/// assert!((p99 - 990.0).abs() <= 0.01 * 990.0);
/// assert_eq!((s.count(), s.sum(), s.min(), s.max()), (1000, 500500.0, Some(1.0), Some(1000.0)));
/// # Ok::<(), ringfold::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sketch {
    alpha: f64,
    gamma: f64,
    /// `1 / ln γ`.
    inv_ln_gamma: f64,
    pos: Store,
    neg: Store,
    zero: u64,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    not_numeric: u64,
}

/// A window's figures from a [`Sketch`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Values recorded (not-numeric ones excluded).
    pub count: u64,
    /// Their exact (floating-point) sum.
    pub sum: f64,
    /// Smallest value (exact).
    pub min: f64,
    /// Largest value (exact).
    pub max: f64,
    /// Median, within the sketch's relative error.
    pub p50: f64,
    /// 90th percentile, likewise.
    pub p90: f64,
    /// 99th percentile, likewise.
    pub p99: f64,
    /// 99.9th percentile, likewise.
    pub p999: f64,
}

impl Default for Sketch {
    /// A sketch with relative accuracy [`Sketch::DEFAULT_ALPHA`] (1 %), the
    /// one `Policy::histogram` uses.
    ///
    /// ```
    /// let s = ringfold::Sketch::default();
    /// assert_eq!(s.alpha(), ringfold::Sketch::DEFAULT_ALPHA);
    /// ```
    fn default() -> Self {
        Sketch::with_alpha(Sketch::DEFAULT_ALPHA)
    }
}

impl Sketch {
    /// Most buckets per sign (16 KiB of counts each); see the module docs.
    pub const MAX_BUCKETS: usize = 2048;
    /// Magnitudes below this count as zero.
    pub const MIN_MAGNITUDE: f64 = 1e-9;
    /// The default relative accuracy, 1 %: the `metrics` layer's and
    /// `Policy::histogram`'s.
    pub const DEFAULT_ALPHA: f64 = 0.01;

    /// A sketch with relative accuracy `alpha`, in `(0, 1)` (otherwise
    /// `Error::InvalidConfig`). Allocates nothing until the first value.
    pub fn new(alpha: f64) -> Result<Sketch, crate::Error> {
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(crate::Error::InvalidConfig(
                "sketch relative accuracy must be in (0, 1)",
            ));
        }
        Ok(Sketch::with_alpha(alpha))
    }

    /// `new` for an `alpha` known to be valid.
    fn with_alpha(alpha: f64) -> Sketch {
        let gamma = (1.0 + alpha) / (1.0 - alpha);
        Sketch {
            alpha,
            gamma,
            inv_ln_gamma: 1.0 / gamma.ln(),
            pos: Store::default(),
            neg: Store::default(),
            zero: 0,
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            not_numeric: 0,
        }
    }

    /// The relative accuracy `α`.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    fn index(&self, magnitude: f64) -> i32 {
        // Finite and >= MIN_MAGNITUDE, so the logarithm is in about
        // -20.7 ..= 709.8 and the index fits an i32 for any alpha > 1e-6.
        (magnitude.ln() * self.inv_ln_gamma).ceil() as i32
    }

    fn representative(&self, index: i32) -> f64 {
        2.0 * self.gamma.powi(index) / (self.gamma + 1.0)
    }

    /// Records `value`. NaN and infinities are not numeric: counted
    /// ([`Sketch::not_numeric`]) and otherwise ignored.
    pub fn add(&mut self, value: f64) {
        self.add_n(value, 1);
    }

    /// Records `value` `n` times.
    pub fn add_n(&mut self, value: f64, n: u64) {
        if !value.is_finite() {
            self.not_numeric += n;
            return;
        }
        if n == 0 {
            return;
        }
        let magnitude = value.abs();
        if magnitude < Self::MIN_MAGNITUDE {
            self.zero += n;
        } else if value > 0.0 {
            let i = self.index(magnitude);
            self.pos.add(i, n);
        } else {
            let i = self.index(magnitude);
            self.neg.add(i, n);
        }
        self.count += n;
        self.sum += value * n as f64;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds `other`'s values (windows merged). Both must have the same
    /// `alpha`, otherwise `Error::InvalidConfig` and nothing changes.
    pub fn merge(&mut self, other: &Sketch) -> Result<(), crate::Error> {
        if self.alpha != other.alpha {
            return Err(crate::Error::InvalidConfig(
                "sketches with different relative accuracy cannot merge",
            ));
        }
        for (i, c) in other.pos.buckets() {
            self.pos.add(i, c);
        }
        for (i, c) in other.neg.buckets() {
            self.neg.add(i, c);
        }
        self.zero += other.zero;
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.not_numeric += other.not_numeric;
        Ok(())
    }

    /// Sizes the bucket arrays of the signs `other` holds values of to
    /// their largest, so that merging sketches into this one never
    /// allocates again whatever span they cover (16 KiB per sign). For
    /// merges whose span is not known in advance: a lagging queue's merged
    /// windows.
    pub(crate) fn reserve_full_for(&mut self, other: &Sketch) {
        if other.pos.total > 0 {
            self.pos.reserve_full();
        }
        if other.neg.total > 0 {
            self.neg.reserve_full();
        }
    }

    /// Empties the sketch, keeping its bucket arrays (no allocation for
    /// the next window over the same range).
    pub fn clear(&mut self) {
        self.pos.clear();
        self.neg.clear();
        self.zero = 0;
        self.count = 0;
        self.sum = 0.0;
        self.min = f64::INFINITY;
        self.max = f64::NEG_INFINITY;
        self.not_numeric = 0;
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Their sum.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// The smallest value, `None` when empty.
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    /// The largest value, `None` when empty.
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// NaN and infinities offered and not recorded.
    pub fn not_numeric(&self) -> u64 {
        self.not_numeric
    }

    /// Non-empty buckets in ascending order of value, each as its
    /// representative value and count (what the `metrics` layer forwards). A
    /// representative is clamped to `[min, max]`, which only brings it
    /// closer to the values it stands for (a window of one value forwards
    /// that value exactly).
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let neg = self
            .neg
            .buckets()
            .rev()
            .map(|(i, c)| (-self.representative(i), c));
        let zero = (self.zero > 0).then_some((0.0, self.zero));
        let pos = self.pos.buckets().map(|(i, c)| (self.representative(i), c));
        let (lo, hi) = (self.min, self.max);
        neg.chain(zero)
            .chain(pos)
            .map(move |(v, c)| (v.clamp(lo, hi), c))
    }

    /// The `q`-quantile (`q` clamped to `[0, 1]`), `None` when empty: the
    /// element of rank `⌊q (n - 1)⌋` within the relative error bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        for (value, c) in self.buckets() {
            seen += c;
            if seen > rank {
                return Some(value);
            }
        }
        Some(self.max)
    }

    /// count, sum, min, max, p50, p90, p99, p99.9; `None` when empty.
    pub fn summary(&self) -> Option<Summary> {
        Some(Summary {
            count: self.count,
            sum: self.sum,
            min: self.min()?,
            max: self.max()?,
            p50: self.quantile(0.5)?,
            p90: self.quantile(0.9)?,
            p99: self.quantile(0.99)?,
            p999: self.quantile(0.999)?,
        })
    }

    /// Bytes of bucket arrays held (the sketch's memory beyond its struct).
    pub fn heap_bytes(&self) -> usize {
        (self.pos.counts.capacity() + self.neg.counts.capacity()) * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    fn check(values: &[f64], alpha: f64) {
        let mut s = Sketch::new(alpha).unwrap();
        for &v in values {
            s.add(v);
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0] {
            let got = s.quantile(q).unwrap();
            let want = exact(&sorted, q);
            // Past MAX_BUCKETS the lowest buckets collapse: only magnitudes
            // within the kept span keep the bound (the module docs).
            let top = sorted.iter().fold(0f64, |m, v| m.max(v.abs()));
            let gamma: f64 = (1.0 + alpha) / (1.0 - alpha);
            let kept_from = top / gamma.powi(Sketch::MAX_BUCKETS as i32 - 1);
            if want.abs() >= Sketch::MIN_MAGNITUDE && want.abs() < kept_from {
                continue;
            }
            let bound = if want.abs() < Sketch::MIN_MAGNITUDE {
                Sketch::MIN_MAGNITUDE
            } else {
                alpha * want.abs() * (1.0 + 1e-9)
            };
            assert!(
                (got - want).abs() <= bound,
                "q={q}: got {got}, exact {want}, bound {bound}"
            );
        }
        assert_eq!(s.count(), values.len() as u64);
        assert_eq!(s.min(), sorted.first().copied());
        assert_eq!(s.max(), sorted.last().copied());
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    fn rng(seed: u64) -> impl FnMut() -> f64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn quantiles_within_bound_on_several_shapes() {
        let mut r = rng(7);
        let uniform: Vec<f64> = (0..10_000).map(|_| r() * 1000.0).collect();
        let lognormal: Vec<f64> = (0..10_000).map(|_| (r() * 20.0 - 5.0).exp()).collect();
        let mixed: Vec<f64> = (0..10_000)
            .map(|i| {
                let v = r() * 100.0;
                match i % 3 {
                    0 => -v,
                    1 => 0.0,
                    _ => v,
                }
            })
            .collect();
        for alpha in [0.01, 0.001, 0.05] {
            check(&uniform, alpha);
            check(&lognormal, alpha);
            check(&mixed, alpha);
        }
        check(&[42.0], 0.01);
    }

    #[test]
    fn merge_equals_one_sketch_of_everything() {
        let mut r = rng(3);
        let values: Vec<f64> = (0..5000).map(|_| r() * 1e6).collect();
        let (mut a, mut b, mut all) = (
            Sketch::new(0.01).unwrap(),
            Sketch::new(0.01).unwrap(),
            Sketch::new(0.01).unwrap(),
        );
        for (i, &v) in values.iter().enumerate() {
            if i % 2 == 0 { &mut a } else { &mut b }.add(v);
            all.add(v);
        }
        a.merge(&b).unwrap();
        assert_eq!(a.count(), all.count());
        for q in [0.5, 0.9, 0.99, 0.999] {
            assert_eq!(a.quantile(q), all.quantile(q));
        }
        assert!(a.merge(&Sketch::new(0.02).unwrap()).is_err());
    }

    #[test]
    fn not_numeric_counted_and_ignored() {
        let mut s = Sketch::new(0.01).unwrap();
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 5.0] {
            s.add(v);
        }
        assert_eq!(s.not_numeric(), 3);
        assert_eq!(s.count(), 1);
        assert_eq!(s.quantile(0.5), Some(5.0));
    }

    #[test]
    fn clear_keeps_buckets_and_memory_is_bounded() {
        let mut s = Sketch::new(0.01).unwrap();
        let mut r = rng(11);
        for _ in 0..100_000 {
            s.add(r() * 1e3 + 1.0);
        }
        let held = s.heap_bytes();
        s.clear();
        assert_eq!(s.count(), 0);
        assert_eq!(s.quantile(0.5), None);
        for _ in 0..100_000 {
            s.add(r() * 1e3 + 1.0);
        }
        assert_eq!(s.heap_bytes(), held, "same range, no new buckets");
        // Extreme spread: collapsed, never more than MAX_BUCKETS per sign.
        for e in -300..300 {
            s.add(10f64.powi(e));
        }
        assert!(s.heap_bytes() <= Sketch::MAX_BUCKETS * 8);
        // High quantiles keep the bound after collapsing.
        let top = s.quantile(1.0).unwrap();
        assert!((top - 1e299).abs() <= 0.01 * 1e299 * (1.0 + 1e-9), "{top}");
    }

    #[test]
    fn a_cleared_sketch_reused_for_another_range_does_not_reallocate() {
        let mut s = Sketch::new(0.01).unwrap();
        let mut r = rng(5);
        // Grow the arrays (both signs) to cover a wide range once.
        for _ in 0..10_000 {
            let v = r() * 1e6 + 1.0;
            s.add(v);
            s.add(-v);
        }
        let held = s.heap_bytes();
        // Then windows over narrower, different ranges, of both signs:
        // counts slide within the arrays (`Store::recenter`).
        for (lo, hi) in [(1.0, 2.0), (1e5, 1e6), (50.0, 60.0), (1e3, 1e4)] {
            s.clear();
            let values: Vec<f64> = (0..2000).map(|_| lo + r() * (hi - lo)).collect();
            for &v in &values {
                s.add(v);
                s.add(-v);
            }
            assert_eq!(s.heap_bytes(), held, "range {lo}..{hi}");
            let mut all: Vec<f64> = values.iter().flat_map(|&v| [v, -v]).collect();
            all.sort_by(f64::total_cmp);
            for q in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
                let want = exact(&all, q);
                let got = s.quantile(q).unwrap();
                assert!(
                    (got - want).abs() <= 0.01 * want.abs() * (1.0 + 1e-9),
                    "{got} vs {want}"
                );
            }
        }
        // A window that grows while counts are live also slides them.
        s.clear();
        for e in 0..40 {
            s.add(1.5f64.powi(e));
        }
        let mut all: Vec<f64> = (0..40).map(|e| 1.5f64.powi(e)).collect();
        all.sort_by(f64::total_cmp);
        for q in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let (got, want) = (s.quantile(q).unwrap(), exact(&all, q));
            assert!(
                (got - want).abs() <= 0.01 * want * (1.0 + 1e-9),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn a_fully_reserved_sketch_keeps_its_counts_and_never_grows() {
        let mut r = rng(9);
        // Magnitudes over 13 decades: about 1500 buckets, none collapsed.
        let values: Vec<f64> = (0..3000).map(|_| (r() * 30.0 - 10.0).exp()).collect();
        let (mut s, mut plain) = (Sketch::default(), Sketch::default());
        for &v in &values[..1000] {
            s.add(v);
            plain.add(v);
        }
        let mut both = Sketch::default();
        both.add(1.0);
        both.add(-1.0);
        // The positive store holds counts, the negative one none yet.
        s.reserve_full_for(&both);
        let full = 2 * Sketch::MAX_BUCKETS * 8;
        assert_eq!(s.heap_bytes(), full);
        for &v in &values[1000..] {
            for x in [v, -v] {
                s.add(x);
                plain.add(x);
            }
        }
        assert_eq!(s.heap_bytes(), full, "never grows");
        assert_eq!(
            s.buckets().collect::<Vec<_>>(),
            plain.buckets().collect::<Vec<_>>()
        );
    }

    #[test]
    fn bad_alpha_is_an_error() {
        for a in [0.0, 1.0, -0.5, f64::NAN] {
            assert!(Sketch::new(a).is_err());
        }
    }
}
