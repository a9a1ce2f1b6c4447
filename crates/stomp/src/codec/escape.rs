//! Header escaping ("STOMP 1.2 Value Encoding"): which frames escape, how
//! a header name or value is unescaped when read and escaped when
//! written.

use bytes::{BufMut, BytesMut};

use super::error::ErrorKind;
use super::frame::{Command, Version};

/// How the header names and values of one frame are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escaping {
    /// No escaping: STOMP 1.0, and CONNECT, STOMP and CONNECTED frames in
    /// every version.
    None,
    /// STOMP 1.1: `\n`, `\c`, `\\`.
    V1_1,
    /// STOMP 1.2: `\r`, `\n`, `\c`, `\\`.
    V1_2,
}

impl Escaping {
    /// The escaping of a `command` frame in `version`.
    pub(crate) fn of(command: Command, version: Version) -> Escaping {
        if !command.escapes_headers() {
            return Escaping::None;
        }
        match version {
            Version::V1_0 => Escaping::None,
            Version::V1_1 => Escaping::V1_1,
            Version::V1_2 => Escaping::V1_2,
        }
    }
}

/// Unescapes a header name or value read from the wire. Any escape the
/// version does not define, and a `\` with nothing after it, is an
/// [`ErrorKind::UndefinedEscape`].
pub(crate) fn unescape(text: &str, escaping: Escaping) -> Result<String, ErrorKind> {
    if escaping == Escaping::None || !text.contains('\\') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            Some('r') if escaping == Escaping::V1_2 => out.push('\r'),
            Some(other) => {
                return Err(ErrorKind::UndefinedEscape(format!(
                    "\\{}",
                    other.escape_debug()
                )));
            }
            None => return Err(ErrorKind::UndefinedEscape("\\".to_owned())),
        }
    }
    Ok(out)
}

/// Which part of a header line a text is; a raw `:` is only a problem in
/// a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Name,
    Value,
}

/// Octets that may need escaping or replacing in a header.
fn is_special(b: u8) -> bool {
    matches!(b, b'\\' | b'\n' | b'\r' | b':' | 0)
}

/// Appends a header name or value, escaped as `escaping` requires. What
/// the frame cannot carry becomes a space, so the frame stays well formed
/// whatever the text holds (header values can come from messages published
/// over AMQP or MQTT): a NUL in any frame (the decoder refuses NULs in
/// headers; naive clients split frames on them), an LF or CR without
/// escaping, a CR in 1.1 (which has no `\r`; a 1.2-aware reader would take
/// a CR before the LF for the EOL), a `:` in an unescaped name.
pub(crate) fn write_escaped(text: &str, escaping: Escaping, part: Part, out: &mut BytesMut) {
    let bytes = text.as_bytes();
    if !bytes.iter().any(|&b| is_special(b)) {
        out.put_slice(bytes);
        return;
    }
    let escaped = escaping != Escaping::None;
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let replacement: &[u8] = match b {
            b'\\' if escaped => b"\\\\",
            b'\n' if escaped => b"\\n",
            b'\r' if escaping == Escaping::V1_2 => b"\\r",
            b':' if escaped => b"\\c",
            b':' if part == Part::Name => b" ",
            b'\n' | b'\r' | 0 => b" ",
            _ => continue,
        };
        out.put_slice(&bytes[start..i]);
        out.put_slice(replacement);
        start = i + 1;
    }
    out.put_slice(&bytes[start..]);
}
