#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| synchro::fuzzing::chunked(data));
