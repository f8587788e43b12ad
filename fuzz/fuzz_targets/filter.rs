//! Filters: `filter::parse`, then `bind` to a fixed table of many column types, then `matches`
//! on fixed rows. The input is the filter text, optionally followed by a NUL byte and a JSON
//! object used as one more row.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (filter, row) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(filter) = std::str::from_utf8(filter) else {
        return;
    };
    let row = row
        .and_then(|r| serde_json::from_slice::<serde_json::Value>(r).ok())
        .and_then(|v| match v {
            serde_json::Value::Object(m) => Some(m),
            _ => None,
        });
    pgrelay_fuzz::check_filter(filter, row.as_ref());
});
