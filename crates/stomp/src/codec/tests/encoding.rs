//! The encoder: exact bytes, content-length helpers, heart-beats, and the
//! sample frames round-tripping in every version.

use bytes::Bytes;

use super::*;

#[test]
fn stomp_encodes_exact_bytes() {
    let f = Frame::new(Command::Message)
        .header("subscription", "0")
        .header("message-id", "m-1")
        .header("destination", "/queue/a")
        .with_body(Bytes::from_static(b"hi\0"));
    assert_eq!(
        enc(&f, Version::V1_2),
        b"MESSAGE\nsubscription:0\nmessage-id:m-1\ndestination:/queue/a\ncontent-length:3\n\nhi\0\0"
    );
}

#[test]
fn stomp_encoder_adds_no_content_length() {
    let f = Frame {
        body: Bytes::from_static(b"text"),
        ..Frame::new(Command::Send).header("destination", "/q")
    };
    assert_eq!(enc(&f, Version::V1_2), b"SEND\ndestination:/q\n\ntext\0");
}

#[test]
fn stomp_with_body_replaces_an_existing_content_length() {
    let f = Frame::new(Command::Send)
        .header("content-length", "99")
        .header("x", "y")
        .header("content-length", "7")
        .with_body(Bytes::from_static(b"abc"));
    let all: Vec<_> = f.headers.iter().collect();
    assert_eq!(all, [("content-length", "3"), ("x", "y")]);
}

#[test]
fn stomp_heartbeat_is_one_lf() {
    let mut out = BytesMut::new();
    encode_heartbeat(&mut out);
    assert_eq!(&out[..], b"\n");
}

#[test]
fn stomp_encode_appends_to_the_buffer() {
    let mut out = BytesMut::from(&b"x"[..]);
    encode(&Frame::new(Command::Disconnect), Version::V1_2, &mut out);
    assert_eq!(&out[..], b"xDISCONNECT\n\n\0");
}

#[test]
fn stomp_error_frame_builder() {
    let f = Frame::error("bad").header("receipt-id", "1");
    assert_eq!(
        enc(&f, Version::V1_2),
        b"ERROR\nmessage:bad\nreceipt-id:1\n\n\0"
    );
}

#[test]
fn stomp_samples_round_trip_in_every_version() {
    for v in Version::ALL {
        let frames = samples::samples(v);
        let commands: Vec<Command> = frames.iter().map(|f| f.command).collect();
        for command in Command::ALL {
            assert!(commands.contains(&command), "{v}: no {command} sample");
        }
        for f in frames {
            assert_eq!(frame(&enc(&f, v), v), f, "{v}");
        }
    }
}
