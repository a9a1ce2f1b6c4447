//! Framing: a stream fed in two pieces decodes as it does fed whole.
//! Input: two bytes (little-endian) that pick the split point (modulo the
//! stream's length + 1), then the stream. Both ways must yield the same
//! frames, then end the same way: the same error, or the same unconsumed
//! bytes.

#![no_main]

use junction_amqp_fuzz::{decode_chunks, same};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [lo, hi, stream @ ..] = data else {
        return;
    };
    let at = usize::from(u16::from_le_bytes([*lo, *hi])) % (stream.len() + 1);
    let whole = decode_chunks(&[stream]);
    let split = decode_chunks(&[&stream[..at], &stream[at..]]);
    assert!(
        same(&whole, &split),
        "fed whole vs split at {at} of {}\n  whole: {whole:?}\n  split: {split:?}",
        stream.len()
    );
});
