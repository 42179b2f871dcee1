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
    use hookd::model::{AttemptRecord, EventRecord};
    use hookd::store::segment::{check_frame, decode_body};
    if let Some((_, body)) = check_frame(data) {
        let _ = decode_body::<EventRecord>(body, None);
        let _ = decode_body::<AttemptRecord>(body, None);
    }
    let _ = decode_body::<EventRecord>(data, None);
    let _ = decode_body::<EventRecord>(data, Some(3));
    let _ = decode_body::<AttemptRecord>(data, Some(1));
});
