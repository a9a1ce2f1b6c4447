//! STOMP 1.2 frame codec ("STOMP 1.2 Frames", "Value Encoding", "Size
//! Limits"). Pure: bytes in, frames out; no tokio.
//!
//! `decode` first checks that a whole frame is buffered (blank line after
//! the headers, then `content-length` bytes or up to the first NUL) and only
//! then parses; an unfinished frame is `Ok(None)`, not an error. A frame that
//! would exceed the size cap is rejected as soon as that is known, so a bad
//! peer cannot make the client buffer without bound.

use bytes::{BufMut, Bytes, BytesMut};

/// A STOMP frame: command, headers in wire order, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command line, e.g. `SEND`.
    pub command: String,
    /// Headers in the order sent; on repeats the first one counts ("Repeated
    /// Header Entries").
    pub headers: Vec<(String, String)>,
    /// Body bytes (binary-safe when `content-length` is given).
    pub body: Bytes,
}

/// Why bytes are not a STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The frame is (or would become) larger than the cap.
    #[error("frame larger than {0} bytes")]
    TooLarge(usize),
    /// Command or header bytes are not UTF-8 ("Value Encoding").
    #[error("frame head is not UTF-8")]
    NotUtf8,
    /// Empty command line.
    #[error("empty command")]
    EmptyCommand,
    /// A header line without a colon.
    #[error("header line without ':': {0:?}")]
    BadHeader(String),
    /// An undefined `\` escape in a header ("Value Encoding").
    #[error("undefined escape in header {0:?}")]
    BadEscape(String),
    /// `content-length` that is not a non-negative integer.
    #[error("bad content-length {0:?}")]
    BadContentLength(String),
    /// The byte after `content-length` body bytes is not NUL.
    #[error("body not terminated by NUL")]
    MissingNul,
}

impl Frame {
    /// A frame with no headers and an empty body.
    pub fn new(command: &str) -> Self {
        Frame {
            command: command.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header (builder style).
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Sets the body (builder style).
    pub fn body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }

    /// The first value of header `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// CONNECT and CONNECTED headers are not escaped ("Value Encoding").
    fn escapes_headers(command: &str) -> bool {
        command != "CONNECT" && command != "CONNECTED"
    }
}

fn escape_into(s: &str, dst: &mut BytesMut) {
    for c in s.chars() {
        match c {
            '\\' => dst.put_slice(b"\\\\"),
            '\r' => dst.put_slice(b"\\r"),
            '\n' => dst.put_slice(b"\\n"),
            ':' => dst.put_slice(b"\\c"),
            c => {
                let mut utf8 = [0u8; 4];
                dst.put_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

fn unescape(s: &str) -> Result<String, CodecError> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            _ => return Err(CodecError::BadEscape(s.to_string())),
        }
    }
    Ok(out)
}

/// Appends `frame` to `dst`. A non-empty body gets a `content-length`
/// header unless the frame already has one, so binary bodies survive.
pub fn encode(frame: &Frame, dst: &mut BytesMut) {
    let escape = Frame::escapes_headers(&frame.command);
    dst.reserve(frame.command.len() + frame.body.len() + 64);
    dst.put_slice(frame.command.as_bytes());
    dst.put_u8(b'\n');
    for (name, value) in &frame.headers {
        if escape {
            escape_into(name, dst);
            dst.put_u8(b':');
            escape_into(value, dst);
        } else {
            dst.put_slice(name.as_bytes());
            dst.put_u8(b':');
            dst.put_slice(value.as_bytes());
        }
        dst.put_u8(b'\n');
    }
    if !frame.body.is_empty() && frame.get("content-length").is_none() {
        dst.put_slice(format!("content-length:{}\n", frame.body.len()).as_bytes());
    }
    dst.put_u8(b'\n');
    dst.put_slice(&frame.body);
    dst.put_u8(0);
}

/// Where the head of a buffered frame ends.
struct Head {
    /// Offset of the first body byte.
    body_start: usize,
}

/// Finds the blank line that ends the command and headers; `None` if it is
/// not buffered yet.
fn find_head(buf: &[u8]) -> Option<Head> {
    let mut line_start = 0;
    while let Some(nl) = buf[line_start..].iter().position(|&b| b == b'\n') {
        let line_end = line_start + nl;
        let line = &buf[line_start..line_end];
        if line.is_empty() || line == b"\r" {
            return (line_start > 0).then_some(Head {
                body_start: line_end + 1,
            });
        }
        line_start = line_end + 1;
    }
    None
}

/// Takes one frame off the front of `buf`. Heart-beat EOLs before a frame
/// are skipped. `Ok(None)` means more bytes are needed; `buf` is then left
/// as it was (bar skipped EOLs).
pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, CodecError> {
    let eols = buf
        .iter()
        .take_while(|&&b| b == b'\n' || b == b'\r')
        .count();
    let _ = buf.split_to(eols);
    let Some(head) = find_head(buf) else {
        return if buf.len() > max_frame {
            Err(CodecError::TooLarge(max_frame))
        } else {
            Ok(None)
        };
    };
    if head.body_start > max_frame {
        return Err(CodecError::TooLarge(max_frame));
    }
    let head_text =
        std::str::from_utf8(&buf[..head.body_start]).map_err(|_| CodecError::NotUtf8)?;
    let mut lines = head_text.lines();
    let command = lines.next().unwrap_or("").trim_end_matches('\r');
    if command.is_empty() {
        return Err(CodecError::EmptyCommand);
    }
    let escaped = Frame::escapes_headers(command);
    let mut headers = Vec::new();
    for line in lines
        .map(|l| l.trim_end_matches('\r'))
        .take_while(|l| !l.is_empty())
    {
        let Some((name, value)) = line.split_once(':') else {
            return Err(CodecError::BadHeader(line.to_string()));
        };
        if escaped {
            headers.push((unescape(name)?, unescape(value)?));
        } else {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    let mut frame = Frame {
        command: command.to_string(),
        headers,
        body: Bytes::new(),
    };
    let body_end = match frame.get("content-length") {
        Some(len) => {
            let len: usize = len
                .trim()
                .parse()
                .map_err(|_| CodecError::BadContentLength(len.to_string()))?;
            let end = head.body_start.saturating_add(len);
            if end.saturating_add(1) > max_frame {
                return Err(CodecError::TooLarge(max_frame));
            }
            if buf.len() <= end {
                return Ok(None);
            }
            if buf[end] != 0 {
                return Err(CodecError::MissingNul);
            }
            end
        }
        None => match buf[head.body_start..].iter().position(|&b| b == 0) {
            Some(n) => head.body_start + n,
            None if buf.len() > max_frame => return Err(CodecError::TooLarge(max_frame)),
            None => return Ok(None),
        },
    };
    let mut whole = buf.split_to(body_end + 1).freeze();
    whole.truncate(body_end);
    frame.body = whole.slice(head.body_start..);
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    fn encoded(frame: &Frame) -> Vec<u8> {
        let mut dst = BytesMut::new();
        encode(frame, &mut dst);
        dst.to_vec()
    }

    #[test]
    fn send_encodes_to_exact_bytes_with_content_length() {
        let frame = Frame::new("SEND")
            .header("destination", "/queue/a")
            .header("receipt", "7")
            .body(Bytes::from_static(b"hi"));
        assert_eq!(
            encoded(&frame),
            b"SEND\ndestination:/queue/a\nreceipt:7\ncontent-length:2\n\nhi\0"
        );
    }

    #[test]
    fn empty_body_gets_no_content_length() {
        let frame = Frame::new("DISCONNECT").header("receipt", "bye");
        assert_eq!(encoded(&frame), b"DISCONNECT\nreceipt:bye\n\n\0");
    }

    #[test]
    fn header_values_are_escaped_except_in_connect() {
        let send = Frame::new("SEND").header("x", "a:b\nc\\\r");
        assert_eq!(encoded(&send), b"SEND\nx:a\\cb\\nc\\\\\\r\n\n\0");
        let connect = Frame::new("CONNECT").header("passcode", "p:w");
        assert_eq!(encoded(&connect), b"CONNECT\npasscode:p:w\n\n\0");
    }

    #[test]
    fn message_with_binary_body_is_read_by_content_length() {
        let mut buf = BytesMut::from(
            &b"MESSAGE\nsubscription:0\nmessage-id:m1\ncontent-length:5\n\n\x00\x01\x00\xff\n\0"[..],
        );
        let frame = decode(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(frame.command, "MESSAGE");
        assert_eq!(frame.get("message-id"), Some("m1"));
        assert_eq!(&frame.body[..], b"\x00\x01\x00\xff\n");
        assert!(buf.is_empty());
    }

    #[test]
    fn body_without_content_length_ends_at_the_first_nul() {
        let mut buf = BytesMut::from(&b"RECEIPT\nreceipt-id:3\n\n\0MESSAGE\n\nabc\0"[..]);
        let first = decode(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(
            (first.command.as_str(), first.get("receipt-id")),
            ("RECEIPT", Some("3"))
        );
        let second = decode(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(
            (second.command.as_str(), &second.body[..]),
            ("MESSAGE", &b"abc"[..])
        );
        assert_eq!(decode(&mut buf, MAX), Ok(None));
    }

    #[test]
    fn partial_input_is_incomplete_until_the_last_byte() {
        let whole = b"MESSAGE\ncontent-length:3\n\nx\0y\0";
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(decode(&mut buf, MAX), Ok(None), "cut at {cut}");
            assert_eq!(&buf[..], &whole[..cut]);
        }
        let mut buf = BytesMut::from(&whole[..]);
        let frame = decode(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(&frame.body[..], b"x\0y");
    }

    #[test]
    fn oversize_frames_are_rejected() {
        let mut declared = BytesMut::from(&b"MESSAGE\ncontent-length:2000\n\n"[..]);
        assert_eq!(decode(&mut declared, MAX), Err(CodecError::TooLarge(MAX)));
        let mut endless_head = BytesMut::from(&b"MESSAGE\nx:"[..]);
        endless_head.extend_from_slice(&[b'a'; MAX]);
        assert_eq!(
            decode(&mut endless_head, MAX),
            Err(CodecError::TooLarge(MAX))
        );
        let mut endless_body = BytesMut::from(&b"MESSAGE\n\n"[..]);
        endless_body.extend_from_slice(&[b'a'; MAX]);
        assert_eq!(
            decode(&mut endless_body, MAX),
            Err(CodecError::TooLarge(MAX))
        );
    }

    #[test]
    fn heartbeats_and_crlf_lines_are_accepted() {
        let mut buf =
            BytesMut::from(&b"\n\r\nCONNECTED\r\nversion:1.2\r\nheart-beat:0,0\r\n\r\n\0"[..]);
        let frame = decode(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(frame.command, "CONNECTED");
        assert_eq!(frame.get("version"), Some("1.2"));
        assert_eq!(frame.get("heart-beat"), Some("0,0"));
    }

    #[test]
    fn escaped_headers_decode_and_the_first_repeat_wins() {
        let mut buf = BytesMut::from(&b"MESSAGE\nk:a\\cb\\n\nk:second\n\n\0"[..]);
        let frame = decode(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(frame.get("k"), Some("a:b\n"));
    }

    #[test]
    fn malformed_heads_are_errors() {
        let mut undefined_escape = BytesMut::from(&b"MESSAGE\nk:\\t\n\n\0"[..]);
        assert!(matches!(
            decode(&mut undefined_escape, MAX),
            Err(CodecError::BadEscape(_))
        ));
        let mut no_colon = BytesMut::from(&b"MESSAGE\nnocolon\n\n\0"[..]);
        assert!(matches!(
            decode(&mut no_colon, MAX),
            Err(CodecError::BadHeader(_))
        ));
        let mut bad_len = BytesMut::from(&b"MESSAGE\ncontent-length:x\n\n\0"[..]);
        assert!(matches!(
            decode(&mut bad_len, MAX),
            Err(CodecError::BadContentLength(_))
        ));
        let mut no_nul = BytesMut::from(&b"MESSAGE\ncontent-length:1\n\nab"[..]);
        assert_eq!(decode(&mut no_nul, MAX), Err(CodecError::MissingNul));
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let frame = Frame::new("SEND")
            .header("destination", "/topic/a.b")
            .header("weird", "x:y\\z")
            .body(Bytes::from_static(b"\0\0payload"));
        let mut buf = BytesMut::from(&encoded(&frame)[..]);
        let back = decode(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(back.get("weird"), Some("x:y\\z"));
        assert_eq!(back.body, frame.body);
        assert_eq!(back.get("content-length"), Some("9"));
    }
}
