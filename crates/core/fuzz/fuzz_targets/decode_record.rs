//! The broker's other store records on arbitrary bytes. Input: one byte
//! that picks the record (`byte % 8`: exchange, queue, binding, queue
//! entry, queue entry key, retained key, one field value, one field
//! table; see `Kind`), then the record. Decoding must never panic, and
//! what decodes must encode to bytes that decode to the same value (keys
//! and queue entries: to the input's own bytes).

#![no_main]

use junction_core_fuzz::{Kind, check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, record)) = data.split_first() else {
        return;
    };
    check(Kind::from_byte(first), record);
});
