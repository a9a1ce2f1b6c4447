//! Reading frames: the [`Decoder`] state machine and its nom parsers.
//!
//! A frame is read in three steps, each resumable: the command line, the
//! header lines (one at a time, each unescaped and kept as it completes),
//! then the body. Between calls the decoder keeps what it has parsed and
//! where it stopped, never the bytes themselves: the caller's buffer keeps
//! them until the whole frame is split off it.
//!
//! Every check fails at a definite byte: a limit at the first byte past
//! it, a NUL or a stray octet where it stands, a malformed line at its LF.
//! When several checks would fail within the bytes at hand, the one whose
//! byte comes first is reported, so the outcome for a stream is the same
//! however it is split into reads (the `decode_split` fuzz target checks
//! this).

use bytes::{Buf, BytesMut};
use nom::bytes::{complete, streaming};
use nom::combinator::rest;
use nom::sequence::{separated_pair, terminated};
use nom::{IResult, Parser};

use super::error::{CodecError, ErrorKind};
use super::escape::{Escaping, unescape};
use super::frame::{Command, Frame, Headers, Version};
use super::limits::Limits;

/// The longest command line without its LF: `UNSUBSCRIBE` and a CR. A
/// command line that reaches 13 bytes without an LF is unknown.
const MAX_COMMAND_LINE: usize = 12;

/// At most this much room is reserved ahead of the bytes of a
/// `content-length` body, so one read can take in a large part of it.
/// Reserving the whole announced body would let peers that announce large
/// bodies and send nothing make the broker allocate up to the frame limit
/// each.
const RESERVE_AHEAD: usize = 64 * 1024;

/// At most this much of a bad `content-length` is quoted in the error.
const QUOTE_CHARS: usize = 32;

/// What one call to [`Decoder::decode`] found at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// No whole frame is buffered yet; nothing was consumed. Call again
    /// when more bytes arrive.
    Incomplete,
    /// One or more EOLs between frames were consumed: heart-beats, or the
    /// optional EOLs after a frame's NUL. Any byte shows the peer alive.
    HeartBeat,
    /// A frame, whose bytes were consumed.
    Frame(Frame),
}

/// Decodes the frames of one connection's byte stream.
///
/// Feed it the same buffer every time, as the connection reads into it:
/// the decoder remembers how far into that buffer it has parsed (it never
/// consumes before a whole frame is there), so a frame that trickles in is
/// parsed once, not once per read. After an error the buffer's content is
/// unspecified and the connection must close.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Decides the header escaping of the frames read from now on.
    version: Version,
    /// The bounds every frame is checked against as it streams in.
    limits: Limits,
    /// The frame read so far, from its command line on; `None` between
    /// frames.
    partial: Option<Partial>,
}

/// A frame whose command line has been read but whose end has not.
#[derive(Debug, Clone)]
struct Partial {
    command: Command,
    /// Fixed when the command line is read, so a version change applies
    /// from the next frame on.
    escaping: Escaping,
    headers: Headers,
    /// The first `content-length` header, once read.
    content_length: Option<usize>,
    /// Offset in the buffer of the first byte not yet parsed: the next
    /// header line, then (for a body without `content-length`) the first
    /// byte not yet searched for the NUL.
    pos: usize,
    /// Offset of the body, once the blank line that ends the headers has
    /// been read.
    body_start: Option<usize>,
}

impl Partial {
    /// `kind` for this frame, with its receipt when it has one.
    fn error(&self, kind: ErrorKind) -> CodecError {
        let receipt = if self.command.may_request_receipt() {
            self.headers.get("receipt").map(str::to_owned)
        } else {
            None
        };
        CodecError::new(kind, receipt)
    }
}

impl Decoder {
    /// A decoder for a stream that speaks `version` (before CONNECT, any:
    /// CONNECT frames are never escaped).
    pub fn new(version: Version, limits: Limits) -> Self {
        Decoder {
            version,
            limits,
            partial: None,
        }
    }

    /// The version frames are read with.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Sets the version agreed with the peer. It applies from the next
    /// frame whose command line has not been read yet.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes what is at the front of `buf`: see [`Decoded`]. Consumes
    /// exactly the heart-beat EOLs or the frame it returns (a frame's
    /// trailing EOLs are left for the next call), and nothing when the
    /// frame is incomplete.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, CodecError> {
        let outcome = self.step(buf);
        if !matches!(outcome, Ok(Decoded::Incomplete)) {
            self.partial = None;
        }
        outcome
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Decoded, CodecError> {
        if self.partial.as_ref().is_some_and(|p| p.pos > buf.len()) {
            // Not the buffer this decoder was reading: start afresh rather
            // than index past its end.
            self.partial = None;
        }
        if self.partial.is_none() {
            let eols = leading_eols(buf);
            if eols > 0 {
                buf.advance(eols);
                return Ok(Decoded::HeartBeat);
            }
            if buf[..] == b"\r"[..] {
                // Maybe a CRLF heart-beat, not a frame: no frame check yet.
                return Ok(Decoded::Incomplete);
            }
            let Some((command, pos)) = command_line(buf, &self.limits)? else {
                return Ok(Decoded::Incomplete);
            };
            self.partial = Some(Partial {
                command,
                escaping: Escaping::of(command, self.version),
                headers: Headers::new(),
                content_length: None,
                pos,
                body_start: None,
            });
        }
        let Some(partial) = self.partial.as_mut() else {
            return Ok(Decoded::Incomplete);
        };
        let body_start = match partial.body_start {
            Some(start) => start,
            None => match read_headers(partial, buf, &self.limits)? {
                Some(start) => start,
                None => return Ok(Decoded::Incomplete),
            },
        };
        Ok(match read_body(partial, body_start, buf, &self.limits)? {
            Some(frame) => Decoded::Frame(frame),
            None => Decoded::Incomplete,
        })
    }
}

/// Decodes what is at the front of `buf` with a fresh [`Decoder`]: the
/// same outcome, but a frame still incomplete is parsed again from its
/// start on the next call. For tests and one-shot use; a connection keeps
/// a `Decoder`.
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    limits: &Limits,
) -> Result<Decoded, CodecError> {
    Decoder::new(version, *limits).decode(buf)
}

/// How many bytes of EOLs (`\n` or `\r\n`) start `buf`. A lone CR at the
/// end is not counted: it may be the start of a CRLF.
fn leading_eols(buf: &[u8]) -> usize {
    let mut n = 0;
    loop {
        match buf.get(n..) {
            Some([b'\n', ..]) => n += 1,
            Some([b'\r', b'\n', ..]) => n += 2,
            _ => return n,
        }
    }
}

/// One line: the octets before the next LF (a CR before it included).
/// Streaming: `Incomplete` until the LF is buffered, which is its only
/// failure.
fn line(input: &[u8]) -> IResult<&[u8], &[u8]> {
    terminated(
        streaming::take_until(&b"\n"[..]),
        streaming::tag(&b"\n"[..]),
    )
    .parse(input)
}

/// A whole header line's name and value, split on its first colon.
fn header_fields(line: &[u8]) -> IResult<&[u8], (&[u8], &[u8])> {
    separated_pair(
        complete::take_till(|b| b == b':'),
        complete::tag(&b":"[..]),
        rest,
    )
    .parse(line)
}

/// A `content-length` body: exactly `len` octets, then a NUL.
fn sized_body(input: &[u8], len: usize) -> IResult<&[u8], &[u8]> {
    terminated(streaming::take(len), streaming::tag(&b"\0"[..])).parse(input)
}

/// A body without `content-length`: the octets before the first NUL.
fn nul_terminated(input: &[u8]) -> IResult<&[u8], &[u8]> {
    streaming::take_until(&b"\0"[..]).parse(input)
}

/// A line without the CR of its CRLF.
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The line that starts at `start` in `buf` when its LF is buffered:
/// the line (CR included) and the offset of its LF; otherwise `None`
/// and the end of the buffer.
fn line_at(buf: &[u8], start: usize) -> (Option<&[u8]>, usize) {
    let rest = buf.get(start..).unwrap_or_default();
    match line(rest) {
        Ok((_, raw)) => (Some(raw), start + raw.len()),
        Err(_) => (None, buf.len()),
    }
}

/// Of several checks, the one that fails first: each candidate is the
/// offset of the byte at which it fails, and its error. On a tie the
/// earlier candidate wins.
fn first_failure<const N: usize>(candidates: [Option<(usize, ErrorKind)>; N]) -> Option<ErrorKind> {
    candidates
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)
        .map(|(_, kind)| kind)
}

/// The offset of the byte at which a frame still unfinished holds
/// `max_frame` bytes, and is therefore at least one byte too large.
fn frame_limit_at(limits: &Limits) -> usize {
    limits.max_frame.saturating_sub(1)
}

/// The frame limit check for a frame whose first `len` bytes are known
/// not to end it (so it has at least `len + 1`): if they are too many, the
/// offset of the byte at which that became certain, and the error.
fn frame_check(len: usize, limits: &Limits) -> Option<(usize, ErrorKind)> {
    let limit = frame_limit_at(limits);
    (limit < len).then_some((
        limit,
        ErrorKind::FrameTooLarge {
            max: limits.max_frame,
        },
    ))
}

/// Peer bytes as text for an error message: a multi-byte character cut
/// off by the end of `bytes` (a window of the input) is left out rather
/// than replaced; other invalid UTF-8 shows as U+FFFD.
fn quoted(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Reads the command line at the front of `buf`: the command and the
/// offset after its LF, or `None` while the LF is not buffered.
fn command_line(buf: &[u8], limits: &Limits) -> Result<Option<(Command, usize)>, ErrorKind> {
    let (raw, end) = line_at(buf, 0);
    // What fails before the LF (or within the bytes buffered).
    let window = buf.get(..end.min(MAX_COMMAND_LINE + 1)).unwrap_or_default();
    let nul = window
        .iter()
        .position(|&b| b == 0)
        .map(|at| (at, ErrorKind::UnexpectedNul));
    let too_long = (MAX_COMMAND_LINE < end)
        .then(|| (MAX_COMMAND_LINE, ErrorKind::UnknownCommand(quoted(window))));
    if let Some(kind) = first_failure([nul, too_long, frame_check(end, limits)]) {
        return Err(kind);
    }
    let Some(raw) = raw else {
        return Ok(None);
    };
    let text = strip_cr(raw);
    let Some(command) = Command::parse(text) else {
        return Err(ErrorKind::UnknownCommand(quoted(text)));
    };
    // The LF itself may be the byte that reaches the limit.
    if let Some((_, kind)) = frame_check(end + 1, limits) {
        return Err(kind);
    }
    Ok(Some((command, end + 1)))
}

/// What fails first in the header line from `start` to `end` (its LF, or
/// the end of the buffer), before the LF: one line too many, a NUL, the
/// line limit, the frame limit.
fn header_line_failure(
    buf: &[u8],
    start: usize,
    end: usize,
    headers: usize,
    limits: &Limits,
) -> Option<ErrorKind> {
    let line = buf.get(start..end).unwrap_or_default();
    let too_many = if headers >= limits.max_headers {
        // A blank line (LF or CRLF) may still end the headers; anything
        // else starts one header too many.
        match line {
            [] | [b'\r'] => None,
            [b'\r', ..] => Some(start + 1),
            [..] => Some(start),
        }
    } else {
        None
    }
    .map(|at| {
        (
            at,
            ErrorKind::TooManyHeaders {
                max: limits.max_headers,
            },
        )
    });
    let max = limits.max_header_line;
    // The line limit fails at the first byte past `max` that is not a CR
    // (which may belong to the EOL), at the latest the byte after.
    let too_long = match line.get(max) {
        Some(&b) if b != b'\r' => Some(start + max),
        _ if line.len() > max.saturating_add(1) => Some(start + max + 1),
        _ => None,
    }
    .map(|at| (at, ErrorKind::HeaderLineTooLong { max }));
    // A NUL past that point cannot fail first.
    let window = line.get(..max.saturating_add(2)).unwrap_or(line);
    let nul = window
        .iter()
        .position(|&b| b == 0)
        .map(|at| (start + at, ErrorKind::UnexpectedNul));
    first_failure([too_many, nul, too_long, frame_check(end, limits)])
}

/// Reads header lines from `partial.pos` until the blank line; returns the
/// offset of the body then, `None` while lines are missing.
fn read_headers(
    partial: &mut Partial,
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<usize>, CodecError> {
    loop {
        let start = partial.pos;
        let (raw, end) = line_at(buf, start);
        if let Some(kind) = header_line_failure(buf, start, end, partial.headers.len(), limits) {
            return Err(partial.error(kind));
        }
        let Some(raw) = raw else {
            return Ok(None);
        };
        let line = strip_cr(raw);
        partial.pos = end + 1;
        if line.is_empty() {
            // The blank line: the headers are done, and with a
            // content-length the frame's size is known.
            let body_start = end + 1;
            // Where the closing NUL will be, at the earliest (an empty
            // body without content-length): no frame limit below it.
            let nul_at = partial
                .content_length
                .map_or(body_start, |len| body_start.saturating_add(len));
            if let Some((_, kind)) = frame_check(nul_at, limits) {
                return Err(partial.error(kind));
            }
            partial.body_start = Some(body_start);
            return Ok(Some(body_start));
        }
        let (name, value) = header(line, partial.escaping).map_err(|kind| partial.error(kind))?;
        if name == "content-length" && partial.content_length.is_none() {
            let len = content_length(&value, limits).map_err(|kind| partial.error(kind))?;
            partial.content_length = Some(len);
        }
        partial.headers.push(name, value);
        if let Some((_, kind)) = frame_check(end + 1, limits) {
            return Err(partial.error(kind));
        }
    }
}

/// Parses one whole header line (EOL removed): name and value, unescaped.
fn header(line: &[u8], escaping: Escaping) -> Result<(String, String), ErrorKind> {
    if line.contains(&b'\r') {
        return Err(ErrorKind::StrayCr);
    }
    let Ok((_, (name, value))) = header_fields(line) else {
        return Err(ErrorKind::MissingColon);
    };
    // The colon is ASCII, so it never splits a UTF-8 sequence.
    let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
        return Err(ErrorKind::InvalidUtf8);
    };
    Ok((unescape(name, escaping)?, unescape(value, escaping)?))
}

/// The body length a `content-length` value announces: decimal digits,
/// spaces and tabs around them tolerated (STOMP 1.0 clients pad headers;
/// the header itself is kept as sent).
fn content_length(value: &str, limits: &Limits) -> Result<usize, ErrorKind> {
    let digits = value.trim_matches([' ', '\t']);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ErrorKind::BadContentLength(
            value.chars().take(QUOTE_CHARS).collect(),
        ));
    }
    let len = digits.bytes().fold(0usize, |n, d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    });
    if len > limits.max_body {
        return Err(ErrorKind::BodyTooLarge {
            max: limits.max_body,
        });
    }
    Ok(len)
}

/// What fails first in a body from `start` to `end` (its NUL, or the end
/// of the buffer): the body limit or the frame limit.
fn body_failure(start: usize, end: usize, limits: &Limits) -> Option<ErrorKind> {
    let too_large = start
        .checked_add(limits.max_body)
        .filter(|&at| at < end)
        .map(|at| {
            (
                at,
                ErrorKind::BodyTooLarge {
                    max: limits.max_body,
                },
            )
        });
    first_failure([too_large, frame_check(end, limits)])
}

/// Reads the body that starts at `start`; once it and its NUL are
/// buffered, splits the frame off `buf` and returns it.
fn read_body(
    partial: &mut Partial,
    start: usize,
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Frame>, CodecError> {
    let end = match partial.content_length {
        Some(len) => match sized_body(buf.get(start..).unwrap_or_default(), len) {
            Ok(_) => start + len,
            Err(nom::Err::Incomplete(_)) => {
                let missing = start
                    .saturating_add(len)
                    .saturating_add(1)
                    .saturating_sub(buf.len());
                buf.reserve(missing.min(RESERVE_AHEAD));
                return Ok(None);
            }
            Err(_) => return Err(partial.error(ErrorKind::MissingNul)),
        },
        None => {
            // Search only the bytes not searched by an earlier call.
            let from = partial.pos.max(start);
            match nul_terminated(buf.get(from..).unwrap_or_default()) {
                Ok((_, before)) => {
                    let nul = from + before.len();
                    if let Some(kind) = body_failure(start, nul, limits) {
                        return Err(partial.error(kind));
                    }
                    nul
                }
                Err(_) => {
                    if let Some(kind) = body_failure(start, buf.len(), limits) {
                        return Err(partial.error(kind));
                    }
                    partial.pos = buf.len();
                    return Ok(None);
                }
            }
        }
    };
    // The whole frame leaves the buffer; the body is a slice of it.
    let frame = buf.split_to(end + 1).freeze();
    Ok(Some(Frame {
        command: partial.command,
        headers: std::mem::take(&mut partial.headers),
        body: frame.slice(start..end),
    }))
}
