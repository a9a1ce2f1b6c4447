//! Header lines: order and repeats ("Repeated Header Entries"), the first
//! colon, EOLs, UTF-8, and the [`Headers`] API.

use super::*;

#[test]
fn stomp_repeated_header_first_wins_and_all_are_kept() {
    for v in Version::ALL {
        let f = frame(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0", v);
        assert_eq!(f.get("foo"), Some("World"), "{v}");
        let all: Vec<_> = f.headers.iter().collect();
        assert_eq!(all, [("foo", "World"), ("foo", "Hello")], "{v}");
    }
}

#[test]
fn stomp_value_keeps_colons_after_the_first() {
    for v in Version::ALL {
        let f = frame(b"SEND\nk:a:b::\n\n\0", v);
        assert_eq!(f.get("k"), Some("a:b::"), "{v}");
    }
}

#[test]
fn stomp_crlf_lines_are_accepted_in_every_version() {
    for v in Version::ALL {
        let f = frame(b"SEND\r\nk:v\r\nempty:\r\n\r\nbody\0", v);
        assert_eq!(f.command, Command::Send, "{v}");
        let all: Vec<_> = f.headers.iter().collect();
        assert_eq!(all, [("k", "v"), ("empty", "")], "{v}");
        assert_eq!(&f.body[..], b"body", "{v}");
    }
}

#[test]
fn stomp_mixed_lf_and_crlf_lines_are_accepted() {
    let f = frame(b"SEND\nk:v\r\nj:w\n\r\n\0", Version::V1_2);
    assert_eq!((f.get("k"), f.get("j")), (Some("v"), Some("w")));
}

#[test]
fn stomp_cr_inside_a_line_is_an_error() {
    for v in Version::ALL {
        assert_eq!(error(b"SEND\nk:a\rb\n\n\0", v), ErrorKind::StrayCr, "{v}");
        assert_eq!(error(b"SEND\nk:v\r\r\n\n\0", v), ErrorKind::StrayCr, "{v}");
    }
}

#[test]
fn stomp_header_without_colon_is_an_error() {
    assert_eq!(
        error(b"SEND\nnocolon\n\n\0", Version::V1_2),
        ErrorKind::MissingColon
    );
}

#[test]
fn stomp_empty_header_name_is_kept() {
    let f = frame(b"SEND\n:v\n\n\0", Version::V1_2);
    assert_eq!(f.get(""), Some("v"));
}

#[test]
fn stomp_invalid_utf8_in_a_name_or_value_is_an_error() {
    for v in Version::ALL {
        assert_eq!(
            error(b"SEND\nk:\xff\xfe\n\n\0", v),
            ErrorKind::InvalidUtf8,
            "{v}"
        );
        assert_eq!(
            error(b"SEND\n\xc3:v\n\n\0", v),
            ErrorKind::InvalidUtf8,
            "{v}"
        );
    }
}

#[test]
fn stomp_unicode_headers_decode() {
    let f = frame("SEND\nключ:значение ✓\n\n\0".as_bytes(), Version::V1_2);
    assert_eq!(f.get("ключ"), Some("значение ✓"));
}

#[test]
fn stomp_nul_in_a_header_is_an_error_at_once() {
    // A client that forgot the blank line: the NUL fails before any LF.
    let mut buf = BytesMut::from(&b"SEND\ndestination:/q/a\nhello\0"[..]);
    let err = decode(&mut buf, Version::V1_2, &BIG).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::UnexpectedNul);
}

#[test]
fn stomp_headers_set_replaces_the_first_and_drops_repeats() {
    let mut h: Headers = [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("a", "5")]
        .into_iter()
        .collect();
    h.set("a", "x");
    let all: Vec<_> = h.iter().collect();
    assert_eq!(all, [("a", "x"), ("b", "2"), ("c", "4")]);
    h.set("d", "y");
    assert_eq!(h.iter().last(), Some(("d", "y")));
    assert_eq!(h.len(), 4);
}

#[test]
fn stomp_headers_push_keeps_the_first_value() {
    let mut h = Headers::new();
    assert!(h.is_empty());
    h.push("a", "1");
    h.push("a", "2");
    assert_eq!((h.get("a"), h.len()), (Some("1"), 2));
    assert_eq!(h.get("b"), None);
}

#[test]
fn stomp_headers_remove_drops_every_repeat() {
    let mut h: Headers = [("a", "1"), ("b", "2"), ("a", "3")].into_iter().collect();
    assert_eq!(h.remove("a"), Some("1".to_owned()));
    assert_eq!(h.remove("a"), None);
    let all: Vec<_> = (&h).into_iter().collect();
    assert_eq!(all, [("b", "2")]);
}
