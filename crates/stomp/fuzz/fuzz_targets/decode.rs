//! `decode` on arbitrary bytes. Input: one byte that picks the version
//! (1.0, 1.1, 1.2) and the limits (roomy or tight), then the stream.
//! Frames are decoded until `decode` asks for more bytes or fails; it must
//! never panic, must consume nothing when it asks for more, only EOLs for
//! a heart-beat, and a frame within the limits; every frame it yields must
//! encode and decode back to itself.

#![no_main]

use bytes::BytesMut;
use junction_stomp::codec::{Decoded, decode};
use junction_stomp_fuzz::{assert_round_trip, limits_from, version_from};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let (version, limits) = (version_from(first), limits_from(first));
    let mut buf = BytesMut::from(stream);
    loop {
        let at = stream.len() - buf.len();
        let decoded = decode(&mut buf, version, &limits);
        let taken = &stream[at..stream.len() - buf.len()];
        match decoded {
            Ok(Decoded::Frame(frame)) => {
                assert!(
                    taken.len() <= limits.max_frame,
                    "frame of {} bytes",
                    taken.len()
                );
                assert_eq!(taken.last(), Some(&0), "a frame ends with NUL");
                assert!(frame.body.len() <= limits.max_body);
                assert!(frame.headers.len() <= limits.max_headers);
                assert_round_trip(&frame, version);
            }
            Ok(Decoded::HeartBeat) => {
                assert!(!taken.is_empty(), "an empty heart-beat");
                assert!(
                    taken.iter().all(|&b| b == b'\n' || b == b'\r'),
                    "a heart-beat took {taken:?}"
                );
            }
            Ok(Decoded::Incomplete) => {
                assert!(taken.is_empty(), "an incomplete frame was consumed");
                break;
            }
            Err(_) => break,
        }
    }
});
