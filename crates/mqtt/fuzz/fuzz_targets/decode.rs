//! `decode` on arbitrary bytes. Input: one byte that picks the starting
//! version (none, 3.1, 3.1.1, 5.0), then the stream. Packets are decoded
//! until `decode` asks for more bytes or fails; it must never panic, must
//! consume nothing when it asks for more, and every packet it yields must
//! encode and decode back to itself.

#![no_main]

use bytes::BytesMut;
use junction_mqtt::codec::decode;
use junction_mqtt_fuzz::{MAX_PACKET_SIZE, assert_round_trip, next_version, version_from};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let mut version = version_from(first);
    let mut buf = BytesMut::from(stream);
    loop {
        let len = buf.len();
        match decode(&mut buf, version, MAX_PACKET_SIZE) {
            Ok(Some(packet)) => {
                assert!(buf.len() < len, "decoded a packet without consuming bytes");
                assert_round_trip(&packet, version);
                version = next_version(version, &packet);
            }
            Ok(None) => {
                assert_eq!(buf.len(), len, "an incomplete packet was consumed");
                break;
            }
            Err(_) => break,
        }
    }
});
