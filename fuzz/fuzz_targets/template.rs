//! URL and payload templates: any text parses or gives an error with a position inside it, never a
//! panic; a payload template that parses renders valid JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let event = serde_json::json!({
        "id": "evt_1", "type": "a.b", "timestamp": "2026-11-23T00:00:00Z", "channels": ["c"],
        "data": {"s": "x \"y\" \\ z", "n": 3, "o": {"k": [1, null]}},
    });
    let chars = text.chars().count();
    match hookd::template::UrlTemplate::parse(text) {
        Ok(t) => {
            let _ = t.render(&event);
        }
        Err(e) => assert!(e.position >= 1 && e.position <= chars + 1, "{e}"),
    }
    match hookd::template::PayloadTemplate::parse(text) {
        Ok(t) => {
            let rendered = t.render(&event);
            assert!(serde_json::from_str::<serde_json::Value>(&rendered).is_ok(), "{rendered}");
        }
        Err(e) => assert!(e.position >= 1 && e.position <= chars + 1, "{e}"),
    }
});
