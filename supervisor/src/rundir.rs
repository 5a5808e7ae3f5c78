//! The run directory: its layout, and the non-deterministic files around
//! the journal (`meta.json`, `summary.json`).
//!
//! ```text
//! <run-dir>/                 mode 0700: journal, snapshots and agent memories are private
//!   journal.lsj              the deterministic record (crate::journal)
//!   manifest.toml            the manifest as run
//!   snapshots/tick-<T>.lss   checkpoints (crate::snapshot)
//!   pages.pack               their memory chunks, content-addressed (crate::pages)
//!   pages.idx                the pack's index (derived: rebuilt from the pack when missing)
//!   modules/<BLAKE3>.wasm    every module the run loaded, as loaded
//!   meta.json                versions, pid, wall time, settings (not deterministic)
//!   summary.json             the final counters (not deterministic: wall time)
//!   metrics.jsonl            telemetry, rotated (crate::telemetry)
//!   state.board              the live state for viewers (read-only mappings)
//!   control.sock             `lockstep ctl` (owner only)
//!   recovery.log             the worker pool's work log when it outgrows memory
//! ```

use std::fs::File;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Why the run directory is unusable.
#[derive(Debug, thiserror::Error)]
#[error("run directory {dir}: {reason}")]
pub struct RunDirError {
    /// The directory.
    pub dir: String,
    /// What is wrong.
    pub reason: String,
}

fn err(dir: &Path, reason: impl Into<String>) -> RunDirError {
    RunDirError {
        dir: dir.display().to_string(),
        reason: reason.into(),
    }
}

/// Creates `dir` (mode 0700), which must not exist or be empty.
pub fn prepare(dir: &Path) -> Result<(), RunDirError> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| err(dir, e.to_string()))?
            .next()
            .is_none();
        if !empty {
            return Err(err(
                dir,
                "already exists and is not empty (choose another --run-dir)",
            ));
        }
    }
    create(dir)
}

/// Creates `dir` if needed, private to its owner, and sets the process's
/// umask to 0077 so that everything the run creates in it afterwards —
/// journal, snapshots, pages, board, control socket, directories — is
/// private too (0600 files, 0700 directories), whoever creates it.
pub fn create(dir: &Path) -> Result<(), RunDirError> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    std::fs::create_dir_all(dir).map_err(|e| err(dir, format!("cannot create: {e}")))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| err(dir, format!("cannot make it private: {e}")))
}

/// Creates (truncates) a file readable and writable by its owner only.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
}

/// Writes a whole private file.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), RunDirError> {
    use std::io::Write;
    create_private(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| err(path, e.to_string()))
}

/// The settings `meta.json` records (for `resume`, `replay`, `inspect`).
#[derive(Debug, Clone)]
pub struct Meta<'a> {
    /// Worker processes.
    pub workers: usize,
    /// Seed.
    pub seed: u64,
    /// Where the manifest's relative paths resolve.
    pub manifest_dir: &'a Path,
    /// Ticks asked for.
    pub target_ticks: u64,
    /// Checkpoint period.
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub retain_checkpoints: Option<u64>,
    /// Whether this run runs until stopped.
    pub forever: bool,
    /// Layers of the sandbox turned off (loudly).
    pub sandbox_off: bool,
    /// The run this one was forked from, and where.
    pub forked: Option<(&'a Path, u64)>,
    /// The NATS server and the node of each shared worker slot, when
    /// some run on other machines.
    pub nodes: Option<(&'a str, Vec<String>)>,
}

/// Writes `meta.json` (non-deterministic facts: versions, pid, wall time).
pub fn write_meta(dir: &Path, m: &Meta<'_>) -> Result<(), RunDirError> {
    let mut meta = serde_json::json!({
        "lockstep": env!("CARGO_PKG_VERSION"),
        "workers": m.workers,
        "seed": m.seed,
        "manifest_dir": std::fs::canonicalize(m.manifest_dir)
            .unwrap_or_else(|_| m.manifest_dir.to_path_buf())
            .display()
            .to_string(),
        "target_ticks": m.target_ticks,
        "checkpoint_every": m.checkpoint_every,
        "retain_checkpoints": m.retain_checkpoints,
        "forever": m.forever,
        "sandbox_off": m.sandbox_off,
        "pid": std::process::id(),
        "started_unix_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    });
    if let Some((from, at)) = m.forked {
        meta["forked_from"] = from.display().to_string().into();
        meta["forked_at"] = at.into();
    }
    if let Some((nats, slots)) = &m.nodes {
        meta["nats"] = (*nats).into();
        meta["worker_nodes"] = slots.clone().into();
    }
    write_private(&dir.join("meta.json"), format!("{meta:#}\n").as_bytes())
}
