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

/// Payloads that `Policy::aggregate` can read a number from.
///
/// ```
/// use ringfold::{Sample, Value};
/// assert_eq!(7u32.as_f64(), Some(7.0));
/// assert_eq!(Sample::as_f64(&Value::from("x")), None);
/// ```
pub trait Sample {
    /// The reading, or `None` when the payload is not numeric (such events
    /// are counted as rejected, never aggregated as 0).
    fn as_f64(&self) -> Option<f64>;
}

impl Sample for Value {
    fn as_f64(&self) -> Option<f64> {
        Value::as_f64(self)
    }
}

macro_rules! sample_prim {
    ($($t:ty),*) => {$(
        impl Sample for $t {
            fn as_f64(&self) -> Option<f64> {
                Some(*self as f64)
            }
        }
    )*};
}
sample_prim!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize, f32, f64);
