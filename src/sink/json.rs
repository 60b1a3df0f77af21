//! Hand-written JSON encoding: strings, numbers, [`Value`]s, timestamps.
//!
//! Everything appends to a `Vec<u8>` and cannot fail. Strings are escaped
//! per RFC 8259: `"` and `\` get a backslash, the control characters
//! U+0000 to U+001F become `\n`, `\r`, `\t`, `\b`, `\f` or `\u00XX`, and
//! every other character (any UTF-8, U+2028/U+2029 and U+007F included) is
//! copied as is, which JSON allows. A `&str` is always valid UTF-8, so the
//! output always is too.
//!
//! ```
//! use ringfold::sink::json;
//! let mut out = Vec::new();
//! json::write_str(&mut out, "tab\there \"q\" \u{1} é");
//! assert_eq!(String::from_utf8(out)?, r#""tab\there \"q\" \u0001 é""#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Value;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string (quoted and escaped).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends an unsigned integer.
pub fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends a signed integer.
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(out, v.unsigned_abs());
}

/// Appends a float: finite values as JSON numbers (`1.0`, `2.5e-8`), NaN
/// and the infinities, which JSON has no number for, as the strings
/// `"NaN"`, `"inf"` and `"-inf"`.
///
/// ```
/// let mut out = Vec::new();
/// ringfold::sink::json::write_f64(&mut out, f64::NAN);
/// out.push(b' ');
/// ringfold::sink::json::write_f64(&mut out, 0.5);
/// assert_eq!(out, b"\"NaN\" 0.5");
/// ```
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"\"inf\"" } else { b"\"-inf\"" });
    } else {
        // `{:?}` keeps a float a float (`1.0`, not `1`) and uses an
        // exponent for very large or small magnitudes: valid JSON either way.
        let _ = write!(out, "{v:?}");
    }
}

/// Appends `true` or `false`.
pub fn write_bool(out: &mut Vec<u8>, v: bool) {
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// Appends a [`Value`]: numbers and flags as such, strings escaped, `Unit`
/// as `null`.
pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Unit => out.extend_from_slice(b"null"),
        Value::Bool(b) => write_bool(out, *b),
        Value::I64(i) => write_i64(out, *i),
        Value::U64(u) => write_u64(out, *u),
        Value::F64(f) => write_f64(out, *f),
        Value::Str(s) => write_str(out, s.as_str()),
        Value::Text(s) => write_str(out, s),
    }
}

/// Appends `t` as a quoted RFC 3339 UTC timestamp with nanoseconds
/// (`"2026-12-07T00:54:48.123456789Z"`); a time before 1970 as the epoch,
/// a year past 9999 as 9999.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let mut out = Vec::new();
/// let t = UNIX_EPOCH + Duration::new(951_782_400, 5); // 2000-02-29
/// ringfold::sink::json::write_timestamp(&mut out, t);
/// assert_eq!(out, b"\"2000-02-29T00:00:00.000000005Z\"");
/// ```
pub fn write_timestamp(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    // Digits by hand: this runs once per line, and `write!` costs more.
    let mut b = *b"\"0000-00-00T00:00:00.000000000Z\"";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(1, 4, y.clamp(0, 9999) as u64);
    put(6, 2, u64::from(m));
    put(9, 2, u64::from(day));
    put(12, 2, sod / 3600);
    put(15, 2, sod / 60 % 60);
    put(18, 2, sod % 60);
    put(21, 9, u64::from(d.subsec_nanos()));
    out.extend_from_slice(&b);
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_control_character_is_escaped() {
        let s: String = (0u8..0x20).map(char::from).collect();
        let mut out = Vec::new();
        write_str(&mut out, &s);
        let text = String::from_utf8(out).unwrap();
        assert!(text.bytes().all(|b| b >= 0x20), "{text}");
        assert!(text.contains("\\u0000") && text.contains("\\n") && text.contains("\\u001f"));
    }

    #[test]
    fn integers() {
        let mut out = Vec::new();
        for v in [0i64, 7, -7, i64::MIN, i64::MAX] {
            out.clear();
            write_i64(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
        out.clear();
        write_u64(&mut out, u64::MAX);
        assert_eq!(out, u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn timestamps() {
        let mut out = Vec::new();
        write_timestamp(&mut out, UNIX_EPOCH);
        assert_eq!(out, b"\"1970-01-01T00:00:00.000000000Z\"");
        out.clear();
        // 2024-12-31T23:59:59Z = 1735689599
        write_timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(1_735_689_599));
        assert_eq!(out, b"\"2024-12-31T23:59:59.000000000Z\"");
    }
}
