//! "Size Limits": each limit fails as soon as the buffer holds one byte
//! too many (never waiting for the rest), a frame at the limit parses, and
//! errors carry what the ERROR frame needs.

use super::*;

/// Limits small enough to test at their edges.
const SMALL: Limits = Limits {
    max_frame: 200,
    max_headers: 3,
    max_header_line: 20,
    max_body: 50,
};

/// `bytes` decoded with [`SMALL`] limits: whole, and one byte at a time,
/// which must end the same way.
fn small(bytes: &[u8]) -> Outcome {
    let whole = feed_whole(bytes, Version::V1_2, &SMALL);
    assert_eq!(feed_bytewise(bytes, Version::V1_2, &SMALL), whole);
    whole
}

/// The error `bytes` gives with [`SMALL`] limits (whole and bytewise).
fn small_error(bytes: &[u8]) -> CodecError {
    match small(bytes).end {
        End::Error(e) => e,
        End::Incomplete(rest) => panic!("no error; {} bytes waiting", rest.len()),
    }
}

/// Whether `bytes` is incomplete (no frame, no error) with [`SMALL`].
fn small_waits(bytes: &[u8]) -> bool {
    small(bytes)
        == Outcome {
            frames: Vec::new(),
            end: End::Incomplete(bytes.to_vec()),
        }
}

/// A header line `k:vvv…` of exactly `len` bytes, without EOL.
fn line_of(len: usize) -> Vec<u8> {
    let mut line = b"k:".to_vec();
    line.resize(len, b'v');
    line
}

#[test]
fn stomp_defaults_are_documented_values() {
    let d = Limits::default();
    assert_eq!(d.max_body, 16 * 1024 * 1024);
    assert_eq!(d.max_frame, d.max_body + 64 * 1024);
    assert_eq!((d.max_headers, d.max_header_line), (1000, 10 * 1024));
}

#[test]
fn stomp_100k_without_newline_fails_at_once() {
    let mut bytes = b"SEND\n".to_vec();
    bytes.extend(vec![b'a'; 100 * 1024]);
    let err = error_with(&bytes, Version::V1_2, &Limits::default());
    assert_eq!(
        err.kind(),
        &ErrorKind::HeaderLineTooLong {
            max: Limits::DEFAULT_MAX_HEADER_LINE
        }
    );
}

#[test]
fn stomp_header_line_over_the_limit_fails_before_its_lf() {
    let mut over = b"SEND\n".to_vec();
    over.extend(line_of(21));
    assert_eq!(
        small_error(&over).kind(),
        &ErrorKind::HeaderLineTooLong { max: 20 }
    );
    let mut at = b"SEND\n".to_vec();
    at.extend(line_of(20));
    assert!(small_waits(&at));
    // A CR after 20 bytes may be the EOL's.
    at.push(b'\r');
    assert!(small_waits(&at));
    at.extend(b"\n\n\0");
    assert_eq!(small(&at).frames.len(), 1);
}

#[test]
fn stomp_too_many_headers_fail_at_the_first_byte_of_one_more() {
    let ok = b"SEND\na:1\nb:2\nc:3\n\n\0";
    assert_eq!(small(ok).frames.len(), 1);
    assert!(small_waits(b"SEND\na:1\nb:2\nc:3\n\r"));
    assert_eq!(
        small_error(b"SEND\na:1\nb:2\nc:3\nd").kind(),
        &ErrorKind::TooManyHeaders { max: 3 }
    );
    assert_eq!(
        small_error(b"SEND\na:1\nb:2\nc:3\n\rd").kind(),
        &ErrorKind::TooManyHeaders { max: 3 }
    );
}

#[test]
fn stomp_content_length_over_the_body_limit_fails_at_its_header() {
    let err = small_error(b"SEND\nreceipt:r1\ncontent-length:51\n");
    assert_eq!(err.kind(), &ErrorKind::BodyTooLarge { max: 50 });
    assert_eq!(err.receipt(), Some("r1"));
    let err = small_error(b"SEND\ncontent-length:99999\n");
    assert_eq!(err.kind(), &ErrorKind::BodyTooLarge { max: 50 });
    // Past usize::MAX the count saturates: too large, not malformed.
    let err = error(
        b"SEND\ncontent-length:99999999999999999999999999999\n",
        Version::V1_2,
    );
    assert_eq!(err, ErrorKind::BodyTooLarge { max: BIG.max_body });
    let mut at = b"SEND\ncontent-length:50\n\n".to_vec();
    at.extend([0; 50]);
    at.push(0);
    assert_eq!(small(&at).frames[0].body.len(), 50);
}

#[test]
fn stomp_body_without_content_length_over_the_limit_fails_without_nul() {
    let mut over = b"SEND\n\n".to_vec();
    over.extend([b'x'; 51]);
    let err = small_error(&over);
    assert_eq!(err.kind(), &ErrorKind::BodyTooLarge { max: 50 });
    let mut at = b"SEND\n\n".to_vec();
    at.extend([b'x'; 50]);
    assert!(small_waits(&at));
    at.push(0);
    assert_eq!(small(&at).frames[0].body.len(), 50);
}

#[test]
fn stomp_frame_over_the_limit_fails_when_its_size_is_known() {
    // 3 headers of 20 + "SEND\n" + blank line = 69 bytes of head; a body
    // of 50 fits the body limit but not a 100-byte frame.
    let limits = Limits {
        max_frame: 100,
        ..SMALL
    };
    let mut head = b"SEND\n".to_vec();
    for name in [b'a', b'b'] {
        let mut line = line_of(20);
        line[0] = name;
        head.extend(line);
        head.push(b'\n');
    }
    head.extend(b"content-length:31\n");
    let announced = [&head[..], b"\n"].concat();
    // 5 + 42 + 18 + 1 = 66 bytes of head, 31 of body, a NUL: 98.
    let mut fits = announced.clone();
    fits.extend([b'x'; 31]);
    fits.push(0);
    assert_eq!(fits.len(), 98);
    assert_eq!(feed_whole(&fits, Version::V1_2, &limits).frames.len(), 1);
    // content-length 34: 101 bytes, refused at the blank line.
    let too_big = [&head[..head.len() - 3], b"34\n\n"].concat();
    let outcome = feed_whole(&too_big, Version::V1_2, &limits);
    assert_eq!(
        outcome.end,
        End::Error(CodecError::from(ErrorKind::FrameTooLarge { max: 100 }))
    );
    // Without content-length: refused once 100 bytes are buffered.
    let mut open = b"SEND\n\n".to_vec();
    open.extend([b'x'; 93]);
    let limits = Limits {
        max_frame: 100,
        max_body: 1000,
        ..SMALL
    };
    assert_eq!(
        feed_whole(&open, Version::V1_2, &limits).end,
        End::Incomplete(open.clone())
    );
    open.push(0);
    assert_eq!(feed_whole(&open, Version::V1_2, &limits).frames.len(), 1);
    open.pop();
    open.push(b'x');
    assert_eq!(
        feed_bytewise(&open, Version::V1_2, &limits).end,
        End::Error(CodecError::from(ErrorKind::FrameTooLarge { max: 100 }))
    );
}

#[test]
fn stomp_frame_of_exactly_the_limit_parses() {
    for max_frame in [7, 8, 30] {
        let limits = Limits { max_frame, ..BIG };
        let mut bytes = b"SEND\n\n".to_vec();
        bytes.resize(max_frame - 1, b'x');
        bytes.push(0);
        let outcome = feed_bytewise(&bytes, Version::V1_2, &limits);
        assert_eq!(outcome.frames.len(), 1, "max_frame {max_frame}");
        bytes.insert(6, b'x');
        assert_eq!(
            feed_bytewise(&bytes, Version::V1_2, &limits).end,
            End::Error(CodecError::from(ErrorKind::FrameTooLarge {
                max: max_frame
            })),
            "max_frame {max_frame}"
        );
    }
}

#[test]
fn stomp_head_over_the_frame_limit_fails_while_streaming() {
    let limits = Limits {
        max_frame: 12,
        ..BIG
    };
    assert_eq!(
        feed_whole(b"SEND\nk:vvvv\n", Version::V1_2, &limits).end,
        End::Error(CodecError::from(ErrorKind::FrameTooLarge { max: 12 }))
    );
    assert_eq!(
        feed_whole(b"SEND\nk:vvvvvvvvv", Version::V1_2, &limits).end,
        End::Error(CodecError::from(ErrorKind::FrameTooLarge { max: 12 }))
    );
    assert_eq!(
        feed_whole(b"SEND\nk:vvv\n", Version::V1_2, &limits).end,
        End::Incomplete(b"SEND\nk:vvv\n".to_vec())
    );
}

#[test]
fn stomp_the_earliest_failure_wins_however_the_stream_is_split() {
    // The line limit (offset 25) fails before the NUL (offset 30).
    let mut bytes = b"SEND\n".to_vec();
    bytes.extend(line_of(25));
    bytes.extend(b"\0\n\n\0");
    assert_eq!(
        small_error(&bytes).kind(),
        &ErrorKind::HeaderLineTooLong { max: 20 }
    );
    // The NUL (offset 9) fails before the LF, where the undefined escape
    // would be found.
    assert_eq!(
        small_error(b"SEND\nk:\\t\0\n\n\0").kind(),
        &ErrorKind::UnexpectedNul
    );
}

#[test]
fn stomp_errors_carry_the_receipt_read_before_them() {
    let err = small_error(b"SEND\nreceipt:77\nk:\\t\n\n\0");
    assert_eq!(err.receipt(), Some("77"));
    let frame = err.to_frame();
    assert_eq!(frame.command, Command::Error);
    assert_eq!(
        frame.get("message"),
        Some("undefined escape sequence \\t in a header")
    );
    assert_eq!(frame.get("receipt-id"), Some("77"));
    // Before the receipt header: unknown.
    let err = small_error(b"SEND\nk:\\t\nreceipt:77\n\n\0");
    assert_eq!(
        (err.receipt(), err.to_frame().get("receipt-id")),
        (None, None)
    );
    // CONNECT cannot ask for a receipt.
    let err = small_error(b"CONNECT\nreceipt:1\nnocolon\n\n\0");
    assert_eq!(err.receipt(), None);
}

#[test]
fn stomp_error_texts_are_short_messages() {
    for (kind, text) in [
        (
            ErrorKind::UnknownCommand("FOO".into()),
            "unknown command \"FOO\"",
        ),
        (ErrorKind::TooManyHeaders { max: 3 }, "more than 3 headers"),
        (
            ErrorKind::HeaderLineTooLong { max: 20 },
            "header line longer than 20 bytes",
        ),
        (
            ErrorKind::BodyTooLarge { max: 50 },
            "body larger than 50 bytes",
        ),
        (
            ErrorKind::FrameTooLarge { max: 200 },
            "frame larger than 200 bytes",
        ),
        (
            ErrorKind::MissingNul,
            "body does not end with NUL after content-length bytes",
        ),
    ] {
        assert_eq!(CodecError::from(kind).to_string(), text);
    }
}
