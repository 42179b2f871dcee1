//! Config files: any text loads or gives an error that can be shown, never a panic; a config that
//! loads also passes its own validation and renders (redacted) as TOML.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match hookd::config::Config::from_text(std::path::Path::new("fuzz.toml"), text) {
        Ok(config) => {
            assert!(config.validate().is_ok(), "a loaded config fails validation: {config:?}");
            let _ = config.to_redacted_toml();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
