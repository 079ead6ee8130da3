//! Fuzz target: `qbroker::parse::fuzz::json_payload` (its invariants are documented there).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qbroker::parse::fuzz::json_payload(data);
});
