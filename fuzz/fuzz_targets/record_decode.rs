//! Stored-record decoding: a corrupt or truncated record is an error, never a panic or a huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hookd::store::records::decode::<hookd::model::LogRecord>(b"fuzz", data);
    let _ = hookd::store::records::decode::<hookd::model::EndpointRecord>(b"fuzz", data);
    let _ = hookd::store::records::decode::<hookd::model::AttemptRecord>(b"fuzz", data);
});
