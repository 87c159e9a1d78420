#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drawbridge::fuzzing::admin_body(data));
