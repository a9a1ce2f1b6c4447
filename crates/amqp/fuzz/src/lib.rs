//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! The targets read their input as what a client sends after the protocol
//! header: a stream of frames, decoded with [`FRAME_MAX`] as the
//! negotiated `frame_max`. Every frame [`decode`] yields is checked
//! against the bytes it came from ([`check_frame`]) and encoded again
//! ([`assert_round_trip`]).

use std::fmt::Debug;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, gen_frame};
use amq_protocol::protocol::basic::AMQPProperties;
use bytes::{Bytes, BytesMut};
use junction_amqp::codec::{CodecError, FRAME_OVERHEAD, Frame, Output, decode};

/// The `frame_max` passed to `decode`: far above libFuzzer's default input
/// size, so only a frame that announces more hits it.
pub const FRAME_MAX: usize = 1 << 20;

/// Body frames re-encoded through [`Output::content`] are at most this
/// many bytes: 4096 is the smallest `frame_max` a peer may negotiate
/// (AMQP 0-9-1 `frame-min-size`), so a body of a few KiB takes several
/// frames.
const CONTENT_FRAME_MAX: usize = 4096;

/// Content headers announcing at most this many body bytes are re-encoded
/// with a body through [`Output::content`]; larger ones (a `u64` may
/// announce anything) through the generator alone, as are headers of
/// another class than basic (60), which `Output` never writes.
const CONTENT_BODY_MAX: u64 = 16 * 1024;

/// `a` and `b` are equal, or print the same: a NaN in a field table
/// (float `f`, double `d`) is not equal to itself, but decodes and encodes
/// to the same bits. The byte comparisons next to every use catch what
/// printing would hide.
pub fn same<T: PartialEq + Debug>(a: &T, b: &T) -> bool {
    a == b || format!("{a:?}") == format!("{b:?}")
}

/// Everything queued in `out`, as one byte string.
fn flat(out: &mut Output) -> Vec<u8> {
    out.take().iter().flat_map(|b| b.iter().copied()).collect()
}

/// Decodes one frame from `bytes`, which must hold exactly that frame.
fn decode_exactly(bytes: &[u8], what: &dyn Debug) -> Frame {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, FRAME_MAX) {
        Ok(Some(frame)) => {
            assert!(
                buf.is_empty(),
                "re-encoded {what:?} decoded with {} of {} bytes left",
                buf.len(),
                bytes.len()
            );
            frame
        }
        other => panic!("re-encoded {what:?} does not decode: {other:?}\nbytes: {bytes:02x?}"),
    }
}

/// Checks a frame `decode` returned against the bytes it consumed
/// (`consumed`, the whole frame): the header's type, channel and size,
/// and a body's payload.
pub fn check_frame(frame: &Frame, consumed: &[u8]) {
    assert!(
        consumed.len() >= FRAME_OVERHEAD,
        "frame of {} bytes",
        consumed.len()
    );
    let channel = u16::from_be_bytes([consumed[1], consumed[2]]);
    let size = u32::from_be_bytes([consumed[3], consumed[4], consumed[5], consumed[6]]) as usize;
    assert_eq!(
        consumed.len(),
        size + FRAME_OVERHEAD,
        "consumed other than the announced frame"
    );
    assert_eq!(
        frame.channel(),
        channel,
        "channel differs from the header's"
    );
    let kind = match frame {
        Frame::Method(..) => 1,
        Frame::Header(..) => 2,
        Frame::Body(_, body) => {
            assert_eq!(&body[..], &consumed[7..7 + size], "body is not the payload");
            3
        }
        Frame::Heartbeat(_) => 8,
    };
    assert_eq!(
        consumed[0], kind,
        "frame type differs from the header's: {frame:?}"
    );
}

/// Checks that `frame` encodes and decodes back to itself, through the
/// crate's own encoder ([`Output`]) wherever it can write that frame:
///
/// - a method: [`Output::method`], and encoding the result again gives
///   the same bytes;
/// - a basic content header with a small body: [`Output::content`] with
///   a body of that size, which must come back as the header and body
///   frames of at most [`CONTENT_FRAME_MAX`] bytes holding the whole body;
///   any other header: the generator `Output` uses (`gen_frame`);
/// - a non-empty body: [`Output::content`] with `frame_max` large enough
///   for one body frame;
/// - a heartbeat on channel 0: [`Output::heartbeat`] (it never writes
///   another channel's, which `decode` leaves to the connection to refuse).
pub fn assert_round_trip(frame: &Frame) {
    match frame {
        Frame::Method(channel, method) => {
            let mut out = Output::default();
            out.method(*channel, (**method).clone());
            let bytes = flat(&mut out);
            let again = decode_exactly(&bytes, frame);
            assert!(
                same(&again, frame),
                "method round trip changed the frame\n  was: {frame:?}\n  now: {again:?}"
            );
            let Frame::Method(c, m) = &again else {
                unreachable!("`same` frames are of one kind");
            };
            out.method(*c, (**m).clone());
            assert_eq!(flat(&mut out), bytes, "encoding is not stable: {frame:?}");
        }
        Frame::Header(channel, header) => {
            if header.class_id == 60 && header.body_size <= CONTENT_BODY_MAX {
                content_round_trip(*channel, header);
            } else {
                let amqp = AMQPFrame::Header(*channel, (**header).clone());
                let bytes = match cookie_factory::r#gen(gen_frame(&amqp), Vec::new()) {
                    Ok((bytes, _)) => bytes,
                    Err(e) => panic!("decoded header does not generate: {e:?}\n{frame:?}"),
                };
                let again = decode_exactly(&bytes, frame);
                assert!(
                    same(&again, frame),
                    "header round trip changed the frame\n  was: {frame:?}\n  now: {again:?}"
                );
            }
        }
        Frame::Body(channel, body) => {
            if body.is_empty() {
                return;
            }
            let mut out = Output::default();
            out.content(
                *channel,
                AMQPProperties::default(),
                body,
                body.len() + FRAME_OVERHEAD,
            );
            let mut buf = BytesMut::from(&flat(&mut out)[..]);
            match decode(&mut buf, FRAME_MAX) {
                Ok(Some(Frame::Header(c, h)))
                    if c == *channel && h.body_size == body.len() as u64 => {}
                other => panic!("content for a body does not start with its header: {other:?}"),
            }
            match decode(&mut buf, FRAME_MAX) {
                Ok(Some(again)) => assert_eq!(&again, frame, "body round trip changed the frame"),
                other => panic!("re-encoded body does not decode: {other:?}"),
            }
            assert!(
                buf.is_empty(),
                "one body frame expected, {} bytes left",
                buf.len()
            );
        }
        Frame::Heartbeat(0) => {
            let mut out = Output::default();
            out.heartbeat();
            let again = decode_exactly(&flat(&mut out), frame);
            assert_eq!(&again, frame);
        }
        Frame::Heartbeat(_) => {}
    }
}

/// A basic content header through [`Output::content`], with a body of the
/// announced size.
fn content_round_trip(channel: u16, header: &AMQPContentHeader) {
    let size = usize::try_from(header.body_size).expect("small body size");
    let body = Bytes::from(vec![0xA5; size]);
    let mut out = Output::default();
    out.content(channel, header.properties.clone(), &body, CONTENT_FRAME_MAX);
    let bytes = flat(&mut out);
    let mut buf = BytesMut::from(&bytes[..]);
    match decode(&mut buf, FRAME_MAX) {
        Ok(Some(Frame::Header(c, h))) => assert!(
            c == channel && same(&*h, header),
            "content round trip changed the header\n  was: {channel} {header:?}\n  now: {c} {h:?}"
        ),
        other => panic!("re-encoded content does not start with its header: {other:?}"),
    }
    let mut received = 0;
    while !buf.is_empty() {
        match decode(&mut buf, FRAME_MAX) {
            Ok(Some(Frame::Body(c, b))) => {
                assert_eq!(c, channel, "body frame on another channel");
                assert!(!b.is_empty(), "empty body frame");
                assert!(
                    b.len() + FRAME_OVERHEAD <= CONTENT_FRAME_MAX,
                    "body frame of {} bytes exceeds frame_max {CONTENT_FRAME_MAX}",
                    b.len() + FRAME_OVERHEAD
                );
                assert!(b.iter().all(|&x| x == 0xA5), "body bytes changed");
                received += b.len();
            }
            other => panic!("expected a body frame: {other:?}"),
        }
    }
    assert_eq!(received, size, "body size differs from the header's");
}

/// How decoding a stream ended, after the frames it yielded.
#[derive(Debug, PartialEq)]
pub enum End {
    /// `decode` asked for more bytes; these were left unconsumed.
    Incomplete(Vec<u8>),
    /// `decode` failed (the buffer's content is then unspecified).
    Error(CodecError),
}

/// Everything decoding a stream yielded.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    /// The frames, in order.
    pub frames: Vec<Frame>,
    /// How it ended.
    pub end: End,
}

/// Decodes `chunks` as they would arrive on a connection: each chunk is
/// appended to the read buffer, then frames are decoded until `decode`
/// asks for more bytes or fails. A failure ends the stream, as it closes
/// the connection.
pub fn decode_chunks(chunks: &[&[u8]]) -> Outcome {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decode(&mut buf, FRAME_MAX) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
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
