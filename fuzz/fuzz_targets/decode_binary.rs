//! Binary frames: `protocol::decode_binary` (kind 3 pushes, every other kind refused).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgrelay_fuzz::check_decode_binary(data));
