//! Snapshot decoding and validation from arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lockstep_supervisor::snapshot::fuzz_decode(data);
});
