//! Writing frames and heart-beats.

use bytes::{BufMut, BytesMut};

use super::escape::{Escaping, Part, write_escaped};
use super::frame::{Frame, Version};

/// Appends `frame` to `out` as `version` writes it: the command, each
/// header in order (escaped as the version and command require: see the
/// [module docs](super)), a blank line, the body and a NUL. Lines end with
/// a bare LF, which every version reads.
///
/// The headers are written exactly as given: no `content-length` is added.
/// A frame whose body may hold a NUL (any body, for a broker: message
/// bodies are binary) needs one, and every MESSAGE should carry one ("STOMP
/// 1.2 MESSAGE"): build frames with [`Frame::with_body`] or call
/// [`Frame::set_content_length`]. Keeping the encoder literal keeps
/// `decode(encode(frame)) == frame` for every frame the decoder returns.
///
/// Never fails: a character a header cannot carry in this version (a NUL
/// anywhere; an LF, CR, or a `:` in a name, where nothing is escaped; a CR
/// in 1.1) is written as a space, so no header text can break the framing.
pub fn encode(frame: &Frame, version: Version, out: &mut BytesMut) {
    encode_head(frame, version, out, frame.body.len() + 1);
    out.put_slice(&frame.body);
    out.put_u8(0);
}

/// Appends what [`encode`] writes before the body: the command, the
/// headers and the blank line. The caller sends `frame.body` (or any
/// body) and a NUL after it: a broker hands a large body to a vectored
/// write as the `Bytes` it already is, instead of copying it.
/// `reserve` is extra room to reserve beyond the head.
pub fn encode_head(frame: &Frame, version: Version, out: &mut BytesMut, reserve: usize) {
    let escaping = Escaping::of(frame.command, version);
    let command = frame.command.as_str();
    // Exact unless something needs escaping; then `out` grows as needed.
    let head: usize = frame
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 2)
        .sum();
    out.reserve(command.len() + head + 2 + reserve);
    out.put_slice(command.as_bytes());
    out.put_u8(b'\n');
    for (name, value) in &frame.headers {
        write_escaped(name, escaping, Part::Name, out);
        out.put_u8(b':');
        write_escaped(value, escaping, Part::Value, out);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// Appends one heart-beat: a single EOL ("STOMP 1.2 Heart-beating": "if
/// the sender has no real STOMP frame to send, it MUST send an
/// end-of-line").
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.put_u8(b'\n');
}
