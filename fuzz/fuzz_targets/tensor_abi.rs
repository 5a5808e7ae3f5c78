//! Tensors in the ABI layout (what an agent passes to `infer`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = shm_protocol::inference::Tensor::decode_abi(data);
});
