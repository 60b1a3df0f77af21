//! Aggregate numerics: how one reading folds into an [`Aggregate`].
//!
//! The rule, in one place:
//! * NaN and the infinities are not numbers: `reading` rejects them, and
//!   the fold counts them as `dropped.not_numeric` (in band too, in the
//!   batch's `dropped()`), exactly like a payload with no reading. Taking
//!   them would poison `sum` and `mean` for the whole window while `min`
//!   and `max` skipped them; rejecting them keeps every figure of an
//!   aggregate finite and all of them about the same readings.
//! * Integer readings are summed exactly in an `i128` (every `u64` and
//!   `i64` fits, and 2^64 readings of `u64::MAX` would be needed to
//!   overflow it); float readings in an `f64`. `sum()` adds the two;
//!   `sum_exact()` gives the integer sum when no float was folded in.
//!   Should the integer sum ever overflow, it moves into the float sum and
//!   the aggregate stops claiming exactness: no panic, no wrap.
//! * `min`, `max`, `first` and `last` are `f64` (integers beyond 2^53
//!   rounded).
//! * The float sum is kept scaled by 2^-64 (`scaled`), so it stays finite
//!   for any count of finite readings and `mean()` never overflows (the
//!   mean of `[f64::MAX, f64::MAX]` was infinite). Scaling by a power of
//!   two is exact; only readings below 2^-958 in magnitude (about 4e-289)
//!   lose bits, as subnormals, in that sum.

use std::time::Instant;

use crate::event::{Aggregate, InternedStr, FLOAT_SUM_SHIFT};
use crate::intern::EventKey;
use crate::value::Number;

/// The reading the aggregate takes, or `None` if it is not a number (NaN
/// or infinite).
#[inline]
pub(super) fn reading(n: Number) -> Option<Number> {
    n.is_finite().then_some(n)
}

/// A new aggregate holding one (finite) reading.
pub(super) fn start(name: InternedStr, key: EventKey, n: Number, at: Instant) -> Aggregate {
    let v = n.to_f64();
    let mut agg = Aggregate {
        name,
        key,
        count: 0,
        int_sum: 0,
        float_sum: 0.0,
        exact: true,
        min: v,
        max: v,
        first: (v, at),
        last: (v, at),
    };
    add(&mut agg, n, at);
    agg
}

/// Folds one more (finite) reading into `agg`.
#[inline]
pub(super) fn add(agg: &mut Aggregate, n: Number, at: Instant) {
    agg.count += 1;
    let v = match n {
        Number::Int(i) => {
            match agg.int_sum.checked_add(i) {
                Some(sum) => agg.int_sum = sum,
                None => overflow(agg, i),
            }
            i as f64
        }
        Number::Float(f) => {
            agg.float_sum += scaled(f);
            agg.exact = false;
            f
        }
    };
    agg.min = agg.min.min(v);
    agg.max = agg.max.max(v);
    agg.last = (v, at);
}

/// `v` as `Aggregate::float_sum` holds it: times 2^-FLOAT_SUM_SHIFT.
#[inline]
fn scaled(v: f64) -> f64 {
    // A power of two, so exact (bar subnormal results); `powi` of 2 is
    // exact too.
    v * 2f64.powi(-FLOAT_SUM_SHIFT)
}

/// The exact integer sum would overflow: fold it into the float sum.
#[cold]
fn overflow(agg: &mut Aggregate, i: i128) {
    agg.float_sum += scaled(agg.int_sum as f64) + scaled(i as f64);
    agg.int_sum = 0;
    agg.exact = false;
}

/// Merges `from` (a later window's summary of the same name) into `into`,
/// exactly as if `from`'s readings had been folded into `into`'s window:
/// the integer sums add exactly (overflowing into the float sum, which
/// ends exactness, as `add` does), the float sums add in their scaled form,
/// first and last by stamp. A lagging subscriber's queue merges windows
/// with it (`delivery::merge`).
pub(crate) fn merge(into: &mut Aggregate, from: &Aggregate) {
    into.count += from.count;
    match into.int_sum.checked_add(from.int_sum) {
        Some(sum) => into.int_sum = sum,
        None => overflow(into, from.int_sum),
    }
    into.float_sum += from.float_sum;
    into.exact &= from.exact;
    into.min = into.min.min(from.min);
    into.max = into.max.max(from.max);
    if from.first.1 < into.first.1 {
        into.first = from.first;
    }
    if from.last.1 >= into.last.1 {
        into.last = from.last;
    }
}

#[cfg(all(test, not(ringfold_loom)))]
mod tests {
    use super::*;

    fn agg(readings: &[Number]) -> Aggregate {
        let name = InternedStr::new(&std::sync::Arc::from("gpu:0:x"));
        let key = EventKey::for_tests(0, 0);
        let at = Instant::now();
        let mut a = start(name, key, readings[0], at);
        for &n in &readings[1..] {
            add(&mut a, n, at);
        }
        a
    }

    #[test]
    fn integer_sums_are_exact_beyond_2_pow_53() {
        let a = agg(&[Number::Int(1 << 53), Number::Int(1)]);
        assert_eq!(a.sum_exact(), Some((1 << 53) + 1));
        let a = agg(&[Number::Int(u64::MAX.into()); 3]);
        assert_eq!(a.sum_exact(), Some(3 * i128::from(u64::MAX)));
        assert_eq!(a.count(), 3);
    }

    #[test]
    fn a_float_reading_ends_exactness_but_not_the_sum() {
        let a = agg(&[Number::Int(3), Number::Float(0.5), Number::Int(4)]);
        assert_eq!(a.sum_exact(), None);
        assert_eq!(a.sum(), 7.5);
        assert_eq!((a.min(), a.max(), a.mean()), (0.5, 4.0, 2.5));
    }

    #[test]
    fn an_overflowing_integer_sum_goes_float_without_panicking() {
        let a = agg(&[Number::Int(i128::MAX), Number::Int(i128::MAX)]);
        assert_eq!(a.sum_exact(), None);
        assert_eq!(a.sum(), 2.0 * i128::MAX as f64);
    }

    #[test]
    fn the_mean_of_huge_readings_does_not_overflow() {
        let max = Number::Float(f64::MAX);
        let a = agg(&[max, max]);
        assert_eq!(a.mean(), f64::MAX);
        assert_eq!(a.sum(), f64::INFINITY, "the true sum is beyond f64");
        let a = agg(&[max, Number::Float(-f64::MAX)]);
        assert_eq!((a.mean(), a.sum()), (0.0, 0.0));
        let a = agg(&[max, Number::Float(f64::MAX / 2.0)]);
        assert_eq!(a.mean(), f64::MAX / 4.0 * 3.0);
        let a = agg(&[max; 1000]);
        assert_eq!(a.mean(), f64::MAX);
        // Integers and floats together, and an ordinary mean unchanged.
        let a = agg(&[Number::Int(1), Number::Float(2.5), Number::Int(3)]);
        assert_eq!((a.mean(), a.sum()), (6.5 / 3.0, 6.5));
        let a = agg(&[Number::Float(0.1), Number::Float(0.2)]);
        assert_eq!(a.sum(), 0.1 + 0.2);
        assert_eq!(a.mean(), (0.1 + 0.2) / 2.0);
    }

    #[test]
    fn non_finite_readings_are_not_numbers() {
        assert_eq!(reading(Number::Float(f64::NAN)), None);
        assert_eq!(reading(Number::Float(f64::INFINITY)), None);
        assert_eq!(reading(Number::Float(f64::NEG_INFINITY)), None);
        assert_eq!(reading(Number::Float(-0.0)), Some(Number::Float(-0.0)));
        assert_eq!(
            reading(Number::Int(i128::MIN)),
            Some(Number::Int(i128::MIN))
        );
    }
}
