//! Sinks: where delivered batches go. Feature `jsonl`.
//!
//! * [`JsonLinesFile`]: a JSON-lines file for any batches whose payload
//!   implements [`JsonLine`] (or with a closure that writes one line): one
//!   `write` call per batch, size-based rotation keeping N files, an fsync
//!   policy, and loss written in band as a `ringfold_loss` record.
//! * [`json`]: the hand-written JSON encoding the sink uses (strings are
//!   escaped correctly for any UTF-8, control characters included), for
//!   implementing [`JsonLine`] on your own payloads.

pub mod json;
mod jsonl;

pub use jsonl::{
    FsyncPolicy, JsonLinesFile, JsonLinesFileBuilder, SinkCounters, SinkError, SinkStats,
};

/// A payload that can write itself as one JSON object (one line of a
/// JSON-lines file, without the newline).
///
/// `name` is the event's name (`data:users:created`). Implementations
/// append exactly one JSON object to `out` and nothing else: no newline,
/// no surrounding whitespace. Use the helpers in [`json`] for strings
/// and numbers.
///
/// ```
/// use ringfold::sink::{json, JsonLine};
/// struct Row { id: u64, table: &'static str }
/// impl JsonLine for Row {
///     fn write_json_line(&self, name: &str, out: &mut Vec<u8>) {
///         out.extend_from_slice(b"{\"name\":");
///         json::write_str(out, name);
///         out.extend_from_slice(b",\"id\":");
///         json::write_u64(out, self.id);
///         out.extend_from_slice(b",\"table\":");
///         json::write_str(out, self.table);
///         out.push(b'}');
///     }
/// }
/// let mut out = Vec::new();
/// Row { id: 7, table: "users" }.write_json_line("data:users:created", &mut out);
/// assert_eq!(out, br#"{"name":"data:users:created","id":7,"table":"users"}"#);
/// ```
pub trait JsonLine {
    /// Appends this payload as one JSON object to `out`.
    fn write_json_line(&self, name: &str, out: &mut Vec<u8>);
}

/// `{"name":<name>,"value":<value>}`: numbers as JSON numbers (NaN and the
/// infinities as the strings `"NaN"`, `"inf"`, `"-inf"`), strings escaped,
/// `Unit` as `null`.
///
/// ```
/// use ringfold::{sink::JsonLine, Value};
/// let mut out = Vec::new();
/// Value::from("a\"b").write_json_line("chat:s1:delta", &mut out);
/// assert_eq!(out, br#"{"name":"chat:s1:delta","value":"a\"b"}"#);
/// ```
impl JsonLine for crate::Value {
    fn write_json_line(&self, name: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"name\":");
        json::write_str(out, name);
        out.extend_from_slice(b",\"value\":");
        json::write_value(out, self);
        out.push(b'}');
    }
}

macro_rules! json_line_number {
    ($($t:ty => $write:ident as $as:ty),*) => {$(
        /// `{"name":<name>,"value":<number>}`.
        impl JsonLine for $t {
            fn write_json_line(&self, name: &str, out: &mut Vec<u8>) {
                out.extend_from_slice(b"{\"name\":");
                json::write_str(out, name);
                out.extend_from_slice(b",\"value\":");
                json::$write(out, *self as $as);
                out.push(b'}');
            }
        }
    )*};
}
json_line_number!(
    u8 => write_u64 as u64, u16 => write_u64 as u64, u32 => write_u64 as u64,
    u64 => write_u64 as u64, usize => write_u64 as u64,
    i8 => write_i64 as i64, i16 => write_i64 as i64, i32 => write_i64 as i64,
    i64 => write_i64 as i64, isize => write_i64 as i64,
    f32 => write_f64 as f64, f64 => write_f64 as f64
);

/// `{"name":<name>,"value":<string>}`.
impl JsonLine for String {
    fn write_json_line(&self, name: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"name\":");
        json::write_str(out, name);
        out.extend_from_slice(b",\"value\":");
        json::write_str(out, self);
        out.push(b'}');
    }
}
