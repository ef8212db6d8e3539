#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p12_fuzz::csr(data));
