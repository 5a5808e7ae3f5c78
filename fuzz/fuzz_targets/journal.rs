//! Journal parsing from arbitrary bytes (a damaged or hostile run directory).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lockstep_supervisor::journal::fuzz_parse(data);
});
