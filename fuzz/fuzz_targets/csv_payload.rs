//! Fuzz target: `qbroker::parse::fuzz::csv_payload` (its invariants are documented there).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qbroker::parse::fuzz::csv_payload(data);
});
