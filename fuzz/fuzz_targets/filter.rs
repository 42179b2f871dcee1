//! Payload filters: any text parses or gives an error with a column inside it, never a panic; a filter
//! that parses evaluates against a fixed payload without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match hookd::filter::Filter::parse(text) {
        Ok(filter) => {
            let payload = serde_json::json!({
                "role": "MEMBER", "n": 1.5, "ok": true, "none": null,
                "addresses": [{"is_main": true, "zip_code": "13008"}, {"is_main": false}],
            });
            let _ = filter.matches(&payload);
        }
        Err(e) => assert!(e.column >= 1 && e.column <= text.chars().count() + 1, "{e}"),
    }
});
