//! The worker's error types.

/// Why a module was refused at load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The engine could not be built.
    #[error("wasmtime engine: {0}")]
    Engine(String),
    /// The module file could not be read.
    #[error("module {module}: cannot read {path}: {reason}")]
    Read {
        /// Module name.
        module: String,
        /// Its path.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The file's hash differs from the one the manifest pins.
    #[error("module {module}: BLAKE3 {actual} does not match the expected {expected}")]
    HashMismatch {
        /// Module name.
        module: String,
        /// Expected hash (hex).
        expected: String,
        /// Actual hash (hex).
        actual: String,
    },
    /// Not valid WebAssembly (or uses a disabled feature).
    #[error("module {module}: invalid: {reason}")]
    Invalid {
        /// Module name.
        module: String,
        /// Validator message.
        reason: String,
    },
    /// Uses something ABI v1 forbids.
    #[error("module {module}: {item} is not allowed: {why}")]
    Forbidden {
        /// Module name.
        module: String,
        /// The offending item.
        item: String,
        /// Why.
        why: String,
    },
    /// Imports something the host does not provide.
    #[error("module {module}: imports `{import}`, which the lockstep host does not provide")]
    UnknownImport {
        /// Module name.
        module: String,
        /// `module::name` of the import.
        import: String,
    },
    /// Imports a host function with the wrong signature.
    #[error("module {module}: import `lockstep::{import}` must have signature {expected}")]
    ImportSignature {
        /// Module name.
        module: String,
        /// Import name.
        import: String,
        /// The right signature.
        expected: String,
    },
    /// A required export is missing.
    #[error("module {module}: missing required export `{export}`")]
    MissingExport {
        /// Module name.
        module: String,
        /// The export.
        export: String,
    },
    /// An export has the wrong type.
    #[error("module {module}: export `{export}` must have signature {expected}")]
    ExportSignature {
        /// Module name.
        module: String,
        /// The export.
        export: String,
        /// The right signature.
        expected: String,
    },
    /// The memory's declared minimum exceeds the limit.
    #[error(
        "module {module}: memory declares {declared} bytes minimum, above the limit of {limit}"
    )]
    MemoryTooLarge {
        /// Module name.
        module: String,
        /// Declared minimum.
        declared: u64,
        /// The limit.
        limit: u64,
    },
    /// The module's ABI version is not one this worker implements.
    #[error(
        "module {module}: ABI version {major}.{minor} is not supported (this worker implements 1.0)"
    )]
    AbiVersion {
        /// Module name.
        module: String,
        /// Declared major.
        major: u32,
        /// Declared minor.
        minor: u32,
    },
}
