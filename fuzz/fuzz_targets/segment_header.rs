//! Segment header validation against arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = shm_protocol::segment::validate_header_bytes(data);
});
