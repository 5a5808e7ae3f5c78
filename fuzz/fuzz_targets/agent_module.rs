//! Agent module bytes (binary or text) through validation, instrumentation
//! and compilation.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lockstep_worker::instrument::fuzz_load(data);
});
