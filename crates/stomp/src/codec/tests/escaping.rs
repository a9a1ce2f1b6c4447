//! "Value Encoding": which escapes each version defines, that undefined
//! ones are fatal, and that CONNECT, STOMP and CONNECTED are never
//! unescaped.

use super::*;

const ESCAPING: [Version; 2] = [Version::V1_1, Version::V1_2];

#[test]
fn stomp_escape_n_c_and_backslash_decode_in_1_1_and_1_2() {
    for v in ESCAPING {
        let f = frame(b"SEND\nk:a\\nb\\cc\\\\d\n\n\0", v);
        assert_eq!(f.get("k"), Some("a\nb:c\\d"), "{v}");
    }
}

#[test]
fn stomp_escape_r_decodes_in_1_2() {
    let f = frame(b"SEND\nk:a\\rb\n\n\0", Version::V1_2);
    assert_eq!(f.get("k"), Some("a\rb"));
}

#[test]
fn stomp_escape_r_is_undefined_in_1_1() {
    assert_eq!(
        error(b"SEND\nk:a\\rb\n\n\0", Version::V1_1),
        ErrorKind::UndefinedEscape("\\r".into())
    );
}

#[test]
fn stomp_header_names_are_unescaped_too() {
    for v in ESCAPING {
        let f = frame(b"MESSAGE\na\\cb\\nc\\\\:v\n\n\0", v);
        assert_eq!(f.headers.iter().next(), Some(("a:b\nc\\", "v")), "{v}");
    }
}

#[test]
fn stomp_undefined_escape_is_fatal() {
    for v in ESCAPING {
        assert_eq!(
            error(b"SEND\nk:\\t\n\n\0", v),
            ErrorKind::UndefinedEscape("\\t".into()),
            "{v}"
        );
        assert_eq!(
            error(b"SEND\n\\x:v\n\n\0", v),
            ErrorKind::UndefinedEscape("\\x".into()),
            "{v}"
        );
    }
}

#[test]
fn stomp_backslash_ending_a_value_is_an_undefined_escape() {
    for v in ESCAPING {
        assert_eq!(
            error(b"SEND\nk:abc\\\n\n\0", v),
            ErrorKind::UndefinedEscape("\\".into()),
            "{v}"
        );
    }
}

#[test]
fn stomp_escape_of_a_non_ascii_character_is_quoted_whole() {
    assert_eq!(
        error("SEND\nk:\\é\n\n\0".as_bytes(), Version::V1_2),
        ErrorKind::UndefinedEscape("\\é".into())
    );
}

#[test]
fn stomp_1_0_does_not_unescape() {
    let f = frame(b"SEND\nk:a\\nb\\c\\t\\\n\n\0", Version::V1_0);
    assert_eq!(f.get("k"), Some("a\\nb\\c\\t\\"));
}

#[test]
fn stomp_connect_stomp_and_connected_are_never_unescaped() {
    for v in Version::ALL {
        for command in ["CONNECT", "STOMP", "CONNECTED"] {
            let bytes = format!("{command}\npasscode:p\\t:w\\c\n\n\0");
            let f = frame(bytes.as_bytes(), v);
            assert_eq!(f.get("passcode"), Some("p\\t:w\\c"), "{command} {v}");
        }
    }
}

#[test]
fn stomp_encoding_escapes_per_version() {
    let f = Frame::new(Command::Send)
        .header("n:a\nme", "a:b\nc\\d\re")
        .header("x", "\u{0}");
    assert_eq!(
        enc(&f, Version::V1_2),
        b"SEND\nn\\ca\\nme:a\\cb\\nc\\\\d\\re\nx: \n\n\0"
    );
    // 1.1 has no `\r`: the CR becomes a space.
    assert_eq!(
        enc(&f, Version::V1_1),
        b"SEND\nn\\ca\\nme:a\\cb\\nc\\\\d e\nx: \n\n\0"
    );
    // 1.0 escapes nothing: what it cannot carry becomes a space, a colon
    // in a value is kept (the first colon splits).
    assert_eq!(
        enc(&f, Version::V1_0),
        b"SEND\nn a me:a:b c\\d e\nx: \n\n\0"
    );
}

#[test]
fn stomp_connect_and_connected_are_never_escaped() {
    for v in Version::ALL {
        for command in [Command::Connect, Command::Stomp, Command::Connected] {
            let f = Frame::new(command).header("passcode", "p:w\\n");
            let expected = format!("{command}\npasscode:p:w\\n\n\n\0");
            assert_eq!(enc(&f, v), expected.as_bytes(), "{command} {v}");
        }
    }
}

#[test]
fn stomp_escaped_headers_round_trip() {
    for v in ESCAPING {
        let mut value = String::from("a:b\nc\\d\\n\\c:");
        if v == Version::V1_2 {
            value.push('\r');
        }
        let f = Frame::new(Command::Message).header(value.clone(), value.clone());
        assert_eq!(frame(&enc(&f, v), v), f, "{v}");
    }
}
