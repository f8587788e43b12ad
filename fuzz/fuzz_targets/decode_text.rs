//! Text frames in both serializers: `protocol::decode_text(Vsn::V1 | Vsn::V2, …)`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgrelay_fuzz::check_decode_text(data));
