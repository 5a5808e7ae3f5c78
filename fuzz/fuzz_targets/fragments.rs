//! Message fragments from an untrusted peer: reassembly and decoding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shm_protocol::endpoint::fuzz_fragments(data);
});
