//! Where things are: the workspace ([`workspace_root`]), the binaries built
//! beside the bench ([`target_bin`]), and a bench's scratch directory
//! ([`Scratch`]).

use std::path::{Path, PathBuf};

/// The workspace's root directory (where `Cargo.toml`, `docs/` and
/// `examples/` are).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// The binary `name` of the profile the bench was built with
/// (`target/release/<name>` for `cargo bench`): the bench runs from
/// `target/<profile>/deps/`, the binaries sit one level up.  Whether it
/// exists is the caller's to check.
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map_or_else(
            || workspace_root().join("target/release"),
            Path::to_path_buf,
        )
        .join(name)
}

/// A bench's scratch directory, `$TMPDIR/lockstep-bench-<name>-<pid>`:
/// emptied when made, removed on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// Makes the directory (panics where it cannot: nothing runs without it).
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("lockstep-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)
            .unwrap_or_else(|e| panic!("scratch directory {}: {e}", p.display()));
        Self(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_workspace_and_cleans_up() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("bench-support").is_dir());
        assert!(target_bin("lockstep").ends_with("lockstep"));
        let s = Scratch::new("paths-test");
        let p = s.path().to_path_buf();
        std::fs::write(p.join("f"), b"x").expect("write");
        drop(s);
        assert!(!p.exists());
    }
}
