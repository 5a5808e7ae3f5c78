//! Decoding of control messages from arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shm_protocol::codec::fuzz_decode(data);
});
