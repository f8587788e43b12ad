//! NOTIFY payloads: `change::parse_payload` (changes and watermark markers).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgrelay_fuzz::check_payload(data));
