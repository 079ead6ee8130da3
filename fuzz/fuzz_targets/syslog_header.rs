//! Fuzz target: `qbroker::parse::fuzz::syslog_header` (its invariants are documented there).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qbroker::parse::fuzz::syslog_header(data);
});
