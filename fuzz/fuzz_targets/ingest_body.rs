//! Ingest body parsing: any bytes give an event, a batch, or a problem — never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hookd::ingest::parse_single(data, None);
    let _ = hookd::ingest::parse_batch(data, 1000);
});
