//! Framing: a stream fed in two pieces decodes as it does fed whole.
//! Input: one byte that picks the starting version (none, 3.1, 3.1.1,
//! 5.0), two bytes (little-endian) that pick the split point (modulo the
//! stream's length + 1), then the stream. Both ways must yield the same
//! packets, then end the same way: the same error, or the same unconsumed
//! bytes.

#![no_main]

use junction_mqtt_fuzz::{decode_chunks, version_from};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [first, lo, hi, stream @ ..] = data else {
        return;
    };
    let version = version_from(*first);
    let at = usize::from(u16::from_le_bytes([*lo, *hi])) % (stream.len() + 1);
    let whole = decode_chunks(version, &[stream]);
    let split = decode_chunks(version, &[&stream[..at], &stream[at..]]);
    assert_eq!(
        whole,
        split,
        "fed whole vs split at {at} of {} ({version:?})",
        stream.len()
    );
});
