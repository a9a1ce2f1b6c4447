//! `decode` on arbitrary bytes: the input is the stream a client sends
//! after the protocol header. Frames are decoded until `decode` asks for
//! more bytes or fails. It must never panic, must consume exactly the
//! frame it returns (the size its header announces) and nothing when it
//! asks for more, and every frame it yields must match its bytes and
//! encode and decode back to itself.

#![no_main]

use bytes::BytesMut;
use junction_amqp::codec::decode;
use junction_amqp_fuzz::{FRAME_MAX, assert_round_trip, check_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // How far into `data` the buffer starts.
    let mut offset = 0;
    loop {
        let len = buf.len();
        match decode(&mut buf, FRAME_MAX) {
            Ok(Some(frame)) => {
                let consumed = len - buf.len();
                check_frame(&frame, &data[offset..offset + consumed]);
                offset += consumed;
                assert_round_trip(&frame);
            }
            Ok(None) => {
                assert_eq!(
                    &buf[..],
                    &data[offset..],
                    "an incomplete frame was consumed"
                );
                break;
            }
            Err(_) => break,
        }
    }
});
