//! Stored-record decoding: a corrupt or truncated record or log frame is an error, never a panic or a
//! huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hookd::store::records::decode::<hookd::model::LogRecord>(b"fuzz", data);
    let _ = hookd::store::records::decode::<hookd::model::EndpointRecord>(b"fuzz", data);
    let _ = hookd::store::records::decode::<hookd::model::AttemptRecord>(b"fuzz", data);
    // A segment frame: its header and CRC, then its body (also fed directly, as a frame that passed
    // its CRC but was written wrong would be).
    if let Some((_, body)) = hookd::store::segment::check_frame(data) {
        let _ = hookd::store::segment::decode_body(body, None);
    }
    let _ = hookd::store::segment::decode_body(data, None);
    let _ = hookd::store::segment::decode_body(data, Some(3));
});
