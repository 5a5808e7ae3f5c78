//! The ring's frame reader against arbitrary control words and ring bytes
//! written by an untrusted peer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shm_protocol::ring::fuzz_frame_reader(data);
});
