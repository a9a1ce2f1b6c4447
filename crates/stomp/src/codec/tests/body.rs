//! "Header content-length" and "Body": sized bodies with NULs inside,
//! NUL-terminated bodies, and the NUL after a sized body.

use super::*;

#[test]
fn stomp_content_length_body_may_contain_nul() {
    for v in Version::ALL {
        let f = frame(b"SEND\ncontent-length:5\n\na\0b\0c\0", v);
        assert_eq!(&f.body[..], b"a\0b\0c", "{v}");
        assert_eq!(f.get("content-length"), Some("5"), "{v}");
    }
}

#[test]
fn stomp_body_without_content_length_ends_at_the_first_nul() {
    let mut buf = BytesMut::from(&b"SEND\n\nabc\0def\0"[..]);
    let Ok(Decoded::Frame(f)) = decode(&mut buf, Version::V1_2, &BIG) else {
        panic!("no frame");
    };
    assert_eq!(&f.body[..], b"abc");
    // The rest is the start of another frame ("def" is no command).
    assert_eq!(&buf[..], b"def\0");
}

#[test]
fn stomp_empty_body_with_and_without_content_length() {
    assert!(
        frame(b"SEND\ncontent-length:0\n\n\0", Version::V1_2)
            .body
            .is_empty()
    );
    assert!(frame(b"SEND\n\n\0", Version::V1_2).body.is_empty());
}

#[test]
fn stomp_missing_nul_after_content_length_body_is_an_error() {
    let err = error_with(
        b"SEND\nreceipt:r-9\ncontent-length:2\n\nabc\0",
        Version::V1_2,
        &BIG,
    );
    assert_eq!(err.kind(), &ErrorKind::MissingNul);
    assert_eq!(err.receipt(), Some("r-9"));
}

#[test]
fn stomp_bad_content_length_is_an_error() {
    for value in ["x", "", "-1", "1.5", "0x10", "+3", "1 2"] {
        let bytes = format!("SEND\ncontent-length:{value}\n\n\0");
        assert_eq!(
            error(bytes.as_bytes(), Version::V1_2),
            ErrorKind::BadContentLength(value.into()),
            "{value:?}"
        );
    }
}

#[test]
fn stomp_bad_content_length_is_quoted_short() {
    let value = "9".repeat(10) + &"x".repeat(100);
    let bytes = format!("SEND\ncontent-length:{value}\n\n\0");
    assert_eq!(
        error(bytes.as_bytes(), Version::V1_2),
        ErrorKind::BadContentLength(value[..32].into())
    );
}

#[test]
fn stomp_content_length_padding_is_tolerated_and_kept() {
    let f = frame(b"SEND\ncontent-length: 3\t\n\nabc\0", Version::V1_0);
    assert_eq!(
        (&f.body[..], f.get("content-length")),
        (&b"abc"[..], Some(" 3\t"))
    );
}

#[test]
fn stomp_first_content_length_wins() {
    let f = frame(
        b"SEND\ncontent-length:3\ncontent-length:junk\n\na\0c\0",
        Version::V1_2,
    );
    assert_eq!(&f.body[..], b"a\0c");
}

#[test]
fn stomp_body_is_a_slice_of_the_read_buffer() {
    let mut buf = BytesMut::from(&b"MESSAGE\ncontent-length:4\n\nbody\0"[..]);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Ok(Decoded::Frame(f)) = decode(&mut buf, Version::V1_2, &BIG) else {
        panic!("no frame");
    };
    assert!(
        range.contains(&(f.body.as_ptr() as usize)),
        "the body was copied"
    );
}
