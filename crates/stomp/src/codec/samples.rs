//! Sample frames: every command, with repeated headers, escapes where the
//! version has them, binary and NUL-terminated bodies. The codec's tests
//! round-trip them; the fuzz targets' seed corpus is written from them
//! (`fuzz/examples/seeds.rs`, feature `samples`). Also [`decode_chunks`],
//! the stream decoder the tests and the fuzz targets compare splits with.

use bytes::{Bytes, BytesMut};

use super::{CodecError, Command, Decoded, Decoder, Frame, Limits, Version, decode};

/// Header values that need escaping in `version` (none in 1.0, which
/// cannot carry them): every escape the version defines, a raw colon, and
/// text that only looks like an escape.
fn escaped_headers(version: Version, frame: Frame) -> Frame {
    match version {
        Version::V1_0 => frame.header("path", "C:\\dir\\n").header("colon", "a:b:c"),
        Version::V1_1 => frame
            .header("multi\nline", "one\ntwo")
            .header("co:lon", "a:b")
            .header("back\\slash", "\\n is not a newline here"),
        Version::V1_2 => frame
            .header("multi\nline", "one\ntwo")
            .header("co:lon", "a:b")
            .header("back\\slash", "\\n is not a newline here")
            .header("crlf", "one\r\ntwo\r"),
    }
}

/// One frame of every command for `version`, and a few shapes more: a
/// binary body with NULs (content-length), a body up to its NUL (no
/// content-length), repeated headers, Unicode, an empty value, escapes.
pub fn samples(version: Version) -> Vec<Frame> {
    let v = version.as_str();
    vec![
        Frame::new(Command::Connect)
            .header("accept-version", "1.0,1.1,1.2")
            .header("host", "/")
            .header("login", "guest")
            .header("passcode", "pa:ss\\word")
            .header("heart-beat", "10000,10000"),
        Frame::new(Command::Stomp)
            .header("accept-version", v)
            .header("host", "vhost"),
        Frame::new(Command::Connected)
            .header("version", v)
            .header("heart-beat", "0,10000")
            .header("server", "junction/0.1.0")
            .header("session", "session-1"),
        Frame::new(Command::Send)
            .header("destination", "/queue/a")
            .header("receipt", "r-1")
            .header("content-type", "text/plain")
            .with_body(Bytes::from_static(b"hello queue a")),
        escaped_headers(
            version,
            Frame::new(Command::Send)
                .header("destination", "/topic/a.b.c")
                .header("k", "first")
                .header("k", "second")
                .header("empty", "")
                .header("ключ", "значение ✓"),
        )
        .with_body(Bytes::from_static(b"\x00binary\x00\xff\x00")),
        // A body that runs to its NUL.
        Frame {
            body: Bytes::from_static(b"no content-length\n"),
            ..Frame::new(Command::Send)
                .header("destination", "/exchange/amq.direct/key")
                .header("transaction", "tx-1")
        },
        Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", "/topic/a.*.c")
            .header("ack", "client-individual")
            .header("prefetch-count", "10"),
        Frame::new(Command::Unsubscribe)
            .header("id", "0")
            .header("receipt", "r-2"),
        Frame::new(Command::Ack)
            .header("id", "ack-1")
            .header("message-id", "m-1")
            .header("subscription", "0")
            .header("transaction", "tx-1"),
        Frame::new(Command::Nack)
            .header("id", "ack-2")
            .header("message-id", "m-2")
            .header("subscription", "0"),
        Frame::new(Command::Begin).header("transaction", "tx-1"),
        Frame::new(Command::Commit)
            .header("transaction", "tx-1")
            .header("receipt", "r-3"),
        Frame::new(Command::Abort).header("transaction", "tx-2"),
        Frame::new(Command::Disconnect).header("receipt", "bye"),
        Frame::new(Command::Disconnect),
        escaped_headers(
            version,
            Frame::new(Command::Message)
                .header("subscription", "0")
                .header("message-id", "m-1")
                .header("destination", "/queue/a")
                .header("ack", "ack-1")
                .header("content-type", "application/octet-stream"),
        )
        .with_body(Bytes::from_static(b"\x00\x01\x02\n\r\n\x00")),
        Frame::new(Command::Receipt).header("receipt-id", "r-1"),
        Frame::error("malformed frame received")
            .header("receipt-id", "r-4")
            .header("content-type", "text/plain")
            .with_body(Bytes::from_static(b"The frame:\n-----\nSEND\n-----\n")),
    ]
}

/// How decoding a stream ended, after the frames it yielded.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The decoder asked for more bytes; these were left unconsumed.
    Incomplete(Vec<u8>),
    /// The decoder failed (the buffer's content is then unspecified).
    Error(CodecError),
}

/// Everything decoding a stream yielded. Heart-beats are not counted: EOLs
/// that arrive in several reads are reported in several pieces.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The frames, in order.
    pub frames: Vec<Frame>,
    /// How it ended.
    pub end: End,
}

/// How [`decode_chunks`] decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One [`Decoder`] for the whole stream, as a connection keeps.
    Stateful,
    /// A fresh decoder for every call (the stateless [`decode`]).
    Stateless,
}

/// Decodes `chunks` as they would arrive on a connection: each chunk is
/// appended to the read buffer, then frames are decoded until the decoder
/// asks for more bytes or fails. A failure ends the stream, as it closes
/// the connection. Panics if the decoder breaks its contract: a heart-beat
/// that consumed nothing, an incomplete frame that consumed something.
pub fn decode_chunks(version: Version, limits: &Limits, mode: Mode, chunks: &[&[u8]]) -> Outcome {
    let mut decoder = Decoder::new(version, *limits);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            let decoded = match mode {
                Mode::Stateful => decoder.decode(&mut buf),
                Mode::Stateless => decode(&mut buf, version, limits),
            };
            match decoded {
                Ok(Decoded::Frame(frame)) => frames.push(frame),
                Ok(Decoded::HeartBeat) => assert!(buf.len() < before, "empty heart-beat"),
                Ok(Decoded::Incomplete) => {
                    assert_eq!(buf.len(), before, "an incomplete frame was consumed");
                    break;
                }
                Err(e) => {
                    return Outcome {
                        frames,
                        end: End::Error(e),
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        end: End::Incomplete(buf.to_vec()),
    }
}
