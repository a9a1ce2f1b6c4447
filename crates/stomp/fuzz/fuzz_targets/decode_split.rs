//! Framing: a stream fed in pieces decodes as it does fed whole. Input:
//! one byte that picks the version and the limits, two bytes
//! (little-endian) that pick the split point (modulo the stream's length
//! plus one), then the stream. Fed whole, in two pieces (to one decoder,
//! and to a fresh decoder per call) and one byte at a time, it must yield
//! the same frames, then end the same way: the same error (with the same
//! receipt), or the same bytes left over.

#![no_main]

use junction_stomp_fuzz::{Mode, decode_chunks, limits_from, version_from};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [first, lo, hi, stream @ ..] = data else {
        return;
    };
    let (version, limits) = (version_from(*first), limits_from(*first));
    let at = usize::from(u16::from_le_bytes([*lo, *hi])) % (stream.len() + 1);
    let whole = decode_chunks(version, &limits, Mode::Stateful, &[stream]);
    let halves = [&stream[..at], &stream[at..]];
    let split = decode_chunks(version, &limits, Mode::Stateful, &halves);
    assert_eq!(
        whole,
        split,
        "fed whole vs split at {at} of {} ({version}, {limits:?})",
        stream.len()
    );
    let stateless = decode_chunks(version, &limits, Mode::Stateless, &halves);
    assert_eq!(
        whole, stateless,
        "fed whole vs split at {at} to fresh decoders ({version}, {limits:?})"
    );
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    let bytewise = decode_chunks(version, &limits, Mode::Stateful, &bytes);
    assert_eq!(
        whole, bytewise,
        "fed whole vs one byte at a time ({version}, {limits:?})"
    );
});
