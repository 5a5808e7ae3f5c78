//! The state board reader against an arbitrary board file.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shm_protocol::board::fuzz_board_reader(data);
});
