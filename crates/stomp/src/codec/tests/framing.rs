//! Frames in the stream: commands, incomplete input, heart-beats, many
//! frames per read, one frame over many reads.

use super::*;

#[test]
fn stomp_every_command_parses_and_prints_itself() {
    for command in Command::ALL {
        assert_eq!(Command::parse(command.as_str().as_bytes()), Some(command));
        assert_eq!(command.to_string(), command.as_str());
        let bytes = format!("{command}\n\n\0");
        assert_eq!(frame(bytes.as_bytes(), Version::V1_2).command, command);
    }
}

#[test]
fn stomp_unknown_command_is_an_error() {
    for (bytes, text) in [
        (&b"FOO\n\n\0"[..], "FOO"),
        (b"send\n\n\0", "send"),
        (b"SEND \n\n\0", "SEND "),
        (b"\rSEND\n\n\0", "\rSEND"),
        (b"SEND\r\r\n\n\0", "SEND\r"),
    ] {
        assert_eq!(
            error(bytes, Version::V1_2),
            ErrorKind::UnknownCommand(text.into()),
            "{bytes:?}"
        );
    }
}

#[test]
fn stomp_long_command_line_fails_at_its_13th_byte() {
    let err = error(b"SUBSCRIBEXXXX", Version::V1_2);
    assert_eq!(err, ErrorKind::UnknownCommand("SUBSCRIBEXXXX".into()));
    // 12 bytes may still be `UNSUBSCRIBE\r`.
    assert_eq!(
        dec_with(b"UNSUBSCRIBE\r", Version::V1_2, &BIG),
        Ok(Decoded::Incomplete)
    );
}

#[test]
fn stomp_nul_in_the_command_line_fails_at_once() {
    assert_eq!(error(b"SE\0", Version::V1_2), ErrorKind::UnexpectedNul);
    assert_eq!(error(b"\0", Version::V1_2), ErrorKind::UnexpectedNul);
}

#[test]
fn stomp_version_and_command_helpers() {
    assert_eq!(Version::parse("1.1"), Some(Version::V1_1));
    assert_eq!(Version::parse("1.3"), None);
    assert!(Version::V1_0 < Version::V1_1 && Version::V1_1 < Version::V1_2);
    assert_eq!(Version::V1_2.to_string(), "1.2");
    assert!(Command::Send.is_client() && !Command::Message.is_client());
    assert!(Command::Error.may_have_body() && !Command::Subscribe.may_have_body());
}

#[test]
fn stomp_empty_buffer_is_incomplete() {
    let mut buf = BytesMut::new();
    assert_eq!(
        decode(&mut buf, Version::V1_2, &BIG),
        Ok(Decoded::Incomplete)
    );
}

#[test]
fn stomp_every_prefix_of_a_frame_is_incomplete_and_untouched() {
    for (bytes, v) in [
        (
            &b"SEND\ndestination:/q/a\ncontent-length:3\n\na\0b\0"[..],
            Version::V1_2,
        ),
        (b"MESSAGE\r\nk:a\\nb\r\n\r\nbody\0", Version::V1_2),
        (b"CONNECT\naccept-version:1.0\n\n\0", Version::V1_0),
    ] {
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(
                decode(&mut buf, v, &BIG),
                Ok(Decoded::Incomplete),
                "cut at {cut}"
            );
            assert_eq!(&buf[..], &bytes[..cut], "cut at {cut}");
        }
        frame(bytes, v);
    }
}

#[test]
fn stomp_heartbeats_before_and_between_frames_are_consumed() {
    let mut buf = BytesMut::from(&b"\n\r\n\nSEND\n\n\0\n\nRECEIPT\nreceipt-id:1\n\n\0\r\n"[..]);
    let v = Version::V1_2;
    assert_eq!(decode(&mut buf, v, &BIG), Ok(Decoded::HeartBeat));
    assert!(buf.starts_with(b"SEND"));
    let Ok(Decoded::Frame(send)) = decode(&mut buf, v, &BIG) else {
        panic!("no SEND");
    };
    assert_eq!(send.command, Command::Send);
    assert_eq!(decode(&mut buf, v, &BIG), Ok(Decoded::HeartBeat));
    let Ok(Decoded::Frame(receipt)) = decode(&mut buf, v, &BIG) else {
        panic!("no RECEIPT");
    };
    assert_eq!(receipt.get("receipt-id"), Some("1"));
    assert_eq!(decode(&mut buf, v, &BIG), Ok(Decoded::HeartBeat));
    assert!(buf.is_empty());
    assert_eq!(decode(&mut buf, v, &BIG), Ok(Decoded::Incomplete));
}

#[test]
fn stomp_lone_cr_waits_for_its_lf() {
    let mut buf = BytesMut::from(&b"\n\r"[..]);
    assert_eq!(
        decode(&mut buf, Version::V1_2, &BIG),
        Ok(Decoded::HeartBeat)
    );
    assert_eq!(
        decode(&mut buf, Version::V1_2, &BIG),
        Ok(Decoded::Incomplete)
    );
    assert_eq!(&buf[..], b"\r");
    buf.extend_from_slice(b"\n");
    assert_eq!(
        decode(&mut buf, Version::V1_2, &BIG),
        Ok(Decoded::HeartBeat)
    );
    assert!(buf.is_empty());
}

#[test]
fn stomp_lone_cr_between_frames_is_not_counted_against_the_frame_limit() {
    let limits = Limits {
        max_frame: 1,
        ..BIG
    };
    let mut buf = BytesMut::from(&b"\r"[..]);
    assert_eq!(
        decode(&mut buf, Version::V1_2, &limits),
        Ok(Decoded::Incomplete)
    );
    buf.extend_from_slice(b"\n");
    assert_eq!(
        decode(&mut buf, Version::V1_2, &limits),
        Ok(Decoded::HeartBeat)
    );
}

#[test]
fn stomp_many_frames_in_one_buffer_decode_in_order() {
    let frames: Vec<Frame> = samples::samples(Version::V1_2);
    let mut bytes = Vec::new();
    for f in &frames {
        bytes.extend(enc(f, Version::V1_2));
    }
    let outcome = feed_whole(&bytes, Version::V1_2, &BIG);
    assert_eq!(outcome.frames, frames);
    assert_eq!(outcome.end, End::Incomplete(Vec::new()));
}

#[test]
fn stomp_one_byte_at_a_time_decodes_as_whole() {
    for v in Version::ALL {
        let mut bytes = b"\n".to_vec();
        for f in samples::samples(v) {
            bytes.extend(enc(&f, v));
            bytes.extend(b"\r\n");
        }
        bytes.extend(b"SEND\nk:v\n");
        let whole = feed_whole(&bytes, v, &BIG);
        assert_eq!(whole.frames, samples::samples(v), "{v}");
        assert_eq!(whole.end, End::Incomplete(b"SEND\nk:v\n".to_vec()), "{v}");
        assert_eq!(feed_bytewise(&bytes, v, &BIG), whole, "{v}");
    }
}

#[test]
fn stomp_decoder_resumes_a_trickling_body() {
    let mut decoder = Decoder::new(Version::V1_2, BIG);
    let mut buf = BytesMut::from(&b"SEND\nk:v\n\nab"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Incomplete));
    buf.extend_from_slice(b"cd");
    assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Incomplete));
    buf.extend_from_slice(b"e\0SEND\n");
    let Ok(Decoded::Frame(f)) = decoder.decode(&mut buf) else {
        panic!("no frame");
    };
    assert_eq!((&f.body[..], f.get("k")), (&b"abcde"[..], Some("v")));
    assert_eq!(&buf[..], b"SEND\n");
}

#[test]
fn stomp_version_change_applies_to_the_next_frame() {
    let mut decoder = Decoder::new(Version::V1_0, BIG);
    let mut buf = BytesMut::from(&b"CONNECT\naccept-version:1.2\n\n\0SEND\nk:a\\cb\n\n\0"[..]);
    let Ok(Decoded::Frame(connect)) = decoder.decode(&mut buf) else {
        panic!("no CONNECT");
    };
    assert_eq!(connect.get("accept-version"), Some("1.2"));
    decoder.set_version(Version::V1_2);
    assert_eq!(decoder.version(), Version::V1_2);
    let Ok(Decoded::Frame(send)) = decoder.decode(&mut buf) else {
        panic!("no SEND");
    };
    assert_eq!(send.get("k"), Some("a:b"));
}

#[test]
fn stomp_decoder_given_a_shorter_buffer_starts_afresh() {
    let mut decoder = Decoder::new(Version::V1_2, BIG);
    let mut buf = BytesMut::from(&b"SEND\nk:v\n\nabcdef"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Incomplete));
    let mut other = BytesMut::from(&b"ACK\n"[..]);
    assert_eq!(decoder.decode(&mut other), Ok(Decoded::Incomplete));
    other.extend_from_slice(b"\n\0");
    let Ok(Decoded::Frame(f)) = decoder.decode(&mut other) else {
        panic!("no frame");
    };
    assert_eq!(f.command, Command::Ack);
}

#[test]
fn stomp_unknown_command_text_is_cut_on_a_character_boundary() {
    let line = "é".repeat(7);
    let mut buf = BytesMut::from(format!("{line}\n\n\0").as_bytes());
    let err = decode(&mut buf, Version::V1_2, &Limits::default()).unwrap_err();
    match err.kind() {
        ErrorKind::UnknownCommand(text) => {
            assert!(!text.contains('\u{FFFD}'), "{text:?}");
            assert!(
                !text.is_empty() && line.starts_with(text.as_str()),
                "{text:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}
