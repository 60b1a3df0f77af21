//! `Value`, a ready payload type, and `Sample`, how aggregation reads numbers.

use std::fmt;
use std::sync::Arc;

/// Longest string stored inline in a [`Value`] (no allocation).
pub const SHORT_STR_MAX: usize = 22;

/// A small payload for telemetry: numbers, flags and short strings.
///
/// Strings up to [`SHORT_STR_MAX`] bytes are stored inline, so publishing
/// them allocates nothing; longer ones become [`Value::Text`].
///
/// ```
/// use ringfold::Value;
/// assert_eq!(Value::from(3u32), Value::U64(3));
/// assert_eq!(Value::from(-2), Value::I64(-2));
/// assert_eq!(Value::from("rows").as_str(), Some("rows"));
/// assert_eq!(Value::from(1.5).as_f64(), Some(1.5));
/// assert_eq!(Value::from(true).as_f64(), None);
/// ```
#[derive(Clone, PartialEq)]
pub enum Value {
    /// No payload.
    Unit,
    /// A flag.
    Bool(bool),
    /// A signed integer.
    I64(i64),
    /// An unsigned integer.
    U64(u64),
    /// A float.
    F64(f64),
    /// A string of at most [`SHORT_STR_MAX`] bytes, stored inline.
    Str(ShortStr),
    /// A longer string, shared.
    Text(Arc<str>),
}

impl Value {
    /// The numeric value, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::I64(v) => Some(v as f64),
            Value::U64(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s.as_str()),
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Unit => f.write_str("Unit"),
            Value::Bool(v) => write!(f, "Bool({v})"),
            Value::I64(v) => write!(f, "I64({v})"),
            Value::U64(v) => write!(f, "U64({v})"),
            Value::F64(v) => write!(f, "F64({v})"),
            Value::Str(s) => write!(f, "Str({:?})", s.as_str()),
            Value::Text(s) => write!(f, "Text({s:?})"),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Unit => f.write_str("()"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Str(s) => f.write_str(s.as_str()),
            Value::Text(s) => f.write_str(s),
        }
    }
}

/// An inline string of at most [`SHORT_STR_MAX`] bytes.
///
/// ```
/// use ringfold::ShortStr;
/// assert_eq!(ShortStr::new("ok").unwrap().as_str(), "ok");
/// assert!(ShortStr::new("this string is far too long to fit").is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShortStr {
    len: u8,
    bytes: [u8; SHORT_STR_MAX],
}

impl ShortStr {
    /// Stores `s` inline, or `None` if it is longer than [`SHORT_STR_MAX`].
    pub fn new(s: &str) -> Option<ShortStr> {
        (s.len() <= SHORT_STR_MAX).then(|| {
            let mut bytes = [0; SHORT_STR_MAX];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            ShortStr {
                len: s.len() as u8,
                bytes,
            }
        })
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // Built only from a whole `&str` in `new`, so always valid UTF-8.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

macro_rules! from_int {
    ($variant:ident as $target:ty: $($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::$variant(v as $target)
            }
        }
    )*};
}
from_int!(I64 as i64: i8, i16, i32, i64, isize);
from_int!(U64 as u64: u8, u16, u32, u64, usize);
from_int!(F64 as f64: f32, f64);

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}

impl From<()> for Value {
    fn from(_: ()) -> Value {
        Value::Unit
    }
}

impl From<&str> for Value {
    /// Short strings are stored inline; longer ones are shared (`Text`),
    /// never truncated.
    fn from(s: &str) -> Value {
        ShortStr::new(s).map_or_else(|| Value::Text(s.into()), Value::Str)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::from(s.as_str())
    }
}

/// One reading taken from a payload by [`Sample::sample`]: an exact
/// integer or a float.
///
/// Integers are kept apart from floats so that `Policy::aggregate` sums
/// them exactly (`Aggregate::sum_exact`); an `f64` holds integers exactly
/// only up to 2^53. `i128` holds every `i64` and every `u64`.
///
/// ```
/// use ringfold::{Number, Sample, Value};
/// assert_eq!(Value::from(u64::MAX).sample(), Some(Number::Int(u64::MAX as i128)));
/// assert_eq!(Value::from(-3).sample(), Some(Number::Int(-3)));
/// assert_eq!(2.5f64.sample(), Some(Number::Float(2.5)));
/// assert_eq!(Number::Int(1 << 60).to_f64(), (1u64 << 60) as f64);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// An integer reading, summed exactly.
    Int(i128),
    /// A float reading. Only finite floats are aggregated: NaN and the
    /// infinities are rejected like non-numeric payloads.
    Float(f64),
}

impl Number {
    /// The reading as an `f64` (rounded for integers beyond 2^53).
    pub fn to_f64(self) -> f64 {
        match self {
            Number::Int(v) => v as f64,
            Number::Float(v) => v,
        }
    }

    /// Whether `Policy::aggregate` takes this reading: every integer, and
    /// every float but NaN and the infinities.
    ///
    /// ```
    /// use ringfold::Number;
    /// assert!(Number::Int(-1).is_finite());
    /// assert!(Number::Float(0.5).is_finite());
    /// assert!(!Number::Float(f64::NAN).is_finite());
    /// assert!(!Number::Float(f64::NEG_INFINITY).is_finite());
    /// ```
    pub fn is_finite(self) -> bool {
        match self {
            Number::Int(_) => true,
            Number::Float(v) => v.is_finite(),
        }
    }
}

/// Payloads that `Policy::aggregate` can read a number from.
///
/// Implement [`Sample::as_f64`]; override [`Sample::sample`] too when the
/// payload can hold integers, so that they are summed exactly. A reading of
/// NaN or an infinity is not a number for the aggregate: it is counted as
/// `dropped.not_numeric`, like a payload with no reading.
///
/// ```
/// use ringfold::{Number, Sample, Value};
/// assert_eq!(7u32.as_f64(), Some(7.0));
/// assert_eq!(7u32.sample(), Some(Number::Int(7)));
/// assert_eq!(Sample::as_f64(&Value::from("x")), None);
/// assert_eq!(Value::from("x").sample(), None);
///
/// struct Celsius(f32);
/// impl Sample for Celsius {
///     fn as_f64(&self) -> Option<f64> {
///         Some(f64::from(self.0))
///     }
/// }
/// assert_eq!(Celsius(20.5).sample(), Some(Number::Float(20.5)));
/// ```
pub trait Sample {
    /// The reading as a float, or `None` when the payload is not numeric
    /// (such events are counted as rejected, never aggregated as 0).
    fn as_f64(&self) -> Option<f64>;

    /// The reading as an exact integer or a float; by default
    /// [`Sample::as_f64`] as a float.
    fn sample(&self) -> Option<Number> {
        self.as_f64().map(Number::Float)
    }
}

impl Sample for Value {
    fn as_f64(&self) -> Option<f64> {
        Value::as_f64(self)
    }

    fn sample(&self) -> Option<Number> {
        match *self {
            Value::I64(v) => Some(Number::Int(i128::from(v))),
            Value::U64(v) => Some(Number::Int(i128::from(v))),
            Value::F64(v) => Some(Number::Float(v)),
            _ => None,
        }
    }
}

macro_rules! sample_int {
    ($($t:ty),*) => {$(
        impl Sample for $t {
            fn as_f64(&self) -> Option<f64> {
                Some(*self as f64)
            }
            fn sample(&self) -> Option<Number> {
                Some(Number::Int(*self as i128))
            }
        }
    )*};
}
sample_int!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

macro_rules! sample_float {
    ($($t:ty),*) => {$(
        impl Sample for $t {
            fn as_f64(&self) -> Option<f64> {
                Some(f64::from(*self))
            }
        }
    )*};
}
sample_float!(f32, f64);

/// How the engine reads numbers from payloads: a float reader from
/// `EngineBuilder::sample_with`, or `Sample::sample` (exact integers) from
/// `EngineBuilder::sampled`. A plain function pointer either way, so the
/// fold makes one indirect call per reading and nothing allocates.
pub(crate) enum Sampler<T> {
    Float(fn(&T) -> Option<f64>),
    Number(fn(&T) -> Option<Number>),
}

// Manual impls: a derive would require `T: Clone`, but only fn pointers
// are copied.
impl<T> Clone for Sampler<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Sampler<T> {}

impl<T> Sampler<T> {
    /// The payload's reading, or `None` if it has none.
    #[inline]
    pub(crate) fn read(self, payload: &T) -> Option<Number> {
        match self {
            Sampler::Float(f) => f(payload).map(Number::Float),
            Sampler::Number(f) => f(payload),
        }
    }
}
