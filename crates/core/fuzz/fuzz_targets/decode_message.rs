//! `decode_message` on arbitrary bytes (a `messages` record as the store
//! hands it back). It must never panic, and a message that decodes must
//! encode to bytes that decode to the same message.

#![no_main]

use junction_core_fuzz::check_message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_message(data));
