//! Where the CUDA build of ONNX Runtime and the CUDA libraries are, as
//! `scripts/fetch-onnxruntime.sh --gpu` installs them, and why CUDA cannot
//! be used on a machine (for the messages of `--device cuda`).
//!
//! Layout, found like the CPU library by walking up from the executable to
//! the first directory holding `.deps/`:
//!
//! ```text
//! .deps/onnxruntime-gpu/libonnxruntime.so.1.31.1        ONNX Runtime built for CUDA 13
//! .deps/onnxruntime-gpu/libonnxruntime_providers_*.so   its CUDA provider (next to it)
//! .deps/cuda/lib/                                       CUDA 13 + cuDNN 9 libraries,
//!                                                       only where the system lacks them
//! ```
//!
//! The CUDA libraries are preloaded by path ([`preload_cuda_libraries`])
//! before the CUDA provider is registered, so that neither
//! `LD_LIBRARY_PATH` nor the loader's cache needs to know about them (the
//! host's environment is cleared by its sandbox).

use std::path::{Path, PathBuf};

/// File name of the pinned CUDA build of ONNX Runtime.
pub const ORT_GPU_LIB_NAME: &str = "libonnxruntime.so.1.31.1";

/// The fetched GPU runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuRuntime {
    /// `.deps/onnxruntime-gpu/libonnxruntime.so.1.31.1`.
    pub lib: PathBuf,
    /// `.deps/cuda/lib`, when the script installed CUDA libraries there.
    pub cuda_libs: Option<PathBuf>,
}

/// The GPU runtime under the first `.deps/` above `exe` that has one.
pub fn locate_gpu_runtime(exe: Option<&Path>) -> Option<GpuRuntime> {
    exe.into_iter()
        .flat_map(Path::ancestors)
        .skip(1)
        .map(|dir| dir.join(".deps"))
        .find_map(|deps| {
            let lib = deps.join("onnxruntime-gpu").join(ORT_GPU_LIB_NAME);
            lib.is_file().then(|| {
                let cuda = deps.join("cuda").join("lib");
                GpuRuntime {
                    lib,
                    cuda_libs: cuda.is_dir().then_some(cuda),
                }
            })
        })
}

/// Loads the CUDA and cuDNN libraries of `dir` (by full path, leaves
/// first), so that the CUDA provider's dependencies resolve to them.
pub fn preload_cuda_libraries(dir: &Path) -> Result<(), String> {
    ort::ep::cuda::preload_dylibs(Some(dir), Some(dir))
        .map_err(|e| format!("{e} (from {})", dir.display()))
}

/// The NVIDIA kernel driver's version, if the machine has one.
pub fn driver_version() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    driver_version_of(&text)
}

fn driver_version_of(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains("Kernel Module"))?;
    line.split_whitespace()
        .find(|w| w.split('.').count() >= 2 && w.split('.').all(|p| p.parse::<u32>().is_ok()))
        .map(str::to_owned)
}

/// What to do about CUDA not working with library `lib`, for the error of
/// `--device cuda`.
pub fn hint(lib: &Path, driver: Option<&str>) -> String {
    let gpu_build = lib.file_name().is_some_and(|n| n == ORT_GPU_LIB_NAME);
    match (gpu_build, driver) {
        (_, None) => "this machine has no NVIDIA driver (/proc/driver/nvidia/version); \
                      use --device cpu or auto"
            .to_owned(),
        (false, Some(d)) => format!(
            "{} is ONNX Runtime's CPU build (driver {d} found): \
             scripts/fetch-onnxruntime.sh --gpu installs the CUDA build",
            lib.display()
        ),
        (true, Some(d)) => format!(
            "driver {d}, {}: scripts/fetch-onnxruntime.sh --gpu reports which CUDA or cuDNN \
             libraries are missing",
            lib.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_version_parses_the_kernel_module_line() {
        let text = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U22-I3-AE18-23-3)  Tue Sep 23 09:55:41 UTC 2025\nGCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04.2)\n";
        assert_eq!(driver_version_of(text).as_deref(), Some("580.95.05"));
        assert_eq!(driver_version_of("nothing here"), None);
    }

    #[test]
    fn the_gpu_runtime_is_found_above_the_executable() {
        let tmp = tempfile::Builder::new()
            .prefix("lockstep-gpu-locate-")
            .tempdir()
            .unwrap();
        let root = tmp.path();
        let bin = root.join("target/debug/lockstep-inference-host");
        assert_eq!(locate_gpu_runtime(Some(&bin)), None);
        let gpu = root.join(".deps/onnxruntime-gpu");
        std::fs::create_dir_all(&gpu).unwrap();
        std::fs::write(gpu.join(ORT_GPU_LIB_NAME), b"").unwrap();
        let found = locate_gpu_runtime(Some(&bin)).unwrap();
        assert_eq!(found.lib, gpu.join(ORT_GPU_LIB_NAME));
        assert_eq!(found.cuda_libs, None);
        std::fs::create_dir_all(root.join(".deps/cuda/lib")).unwrap();
        let found = locate_gpu_runtime(Some(&bin)).unwrap();
        assert_eq!(found.cuda_libs, Some(root.join(".deps/cuda/lib")));
    }

    #[test]
    fn hints_name_the_fix() {
        let cpu = Path::new("/x/libonnxruntime.so.1.32.0");
        let gpu = Path::new("/x/libonnxruntime.so.1.31.1");
        assert!(hint(cpu, None).contains("no NVIDIA driver"));
        assert!(hint(cpu, Some("580.1")).contains("fetch-onnxruntime.sh --gpu installs"));
        assert!(hint(gpu, Some("580.1")).contains("reports which CUDA"));
    }
}
