//! Step 4: an empty, read-only root file system.
//!
//! In its own mount namespace (step 3) the child mounts a tiny tmpfs, binds
//! into it — read-only, at their own paths — the few things its class
//! reads later, makes it the root (`pivot_root`), detaches the old root and
//! remounts the new one read-only: nothing else of the machine's file
//! system is reachable any more, by any path.
//!
//! * Workers bind nothing: modules arrive over their ring.
//! * The CPU inference host binds the ONNX Runtime library's directory
//!   (`Jail::allow_read`) and the system library directories its loader
//!   needs to resolve that library's dependencies ([`SYSTEM_LIBRARIES`]);
//!   models arrive over its ring.
//! * The CUDA class is the documented exception: the driver and the CUDA
//!   libraries are loaded lazily, from many places, and read `/proc` and
//!   `/sys`, so it keeps the machine's view (private to its namespace); its
//!   Landlock layer (step 9) limits it to reading those libraries and using
//!   the `/dev/nvidia*` devices.

use crate::{Class, State};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use std::path::{Path, PathBuf};

/// Where the new root's tmpfs is mounted before it becomes `/` (in the
/// child's own namespace only; nothing outside sees it).
const STAGING: &str = "/tmp";

/// What the inference host reads besides ONNX Runtime: the system
/// libraries its dynamic loader resolves ONNX Runtime's dependencies (the
/// C++ runtime) from, and the CPU description ONNX Runtime's `cpuinfo`
/// reads to pick its kernels.
pub const SYSTEM_LIBRARIES: &[&str] = &[
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/etc/ld.so.cache",
    "/proc/cpuinfo",
    "/sys/devices/system/cpu",
];

/// What a class may read after step 4: its binds (`read_only` plus, for
/// the inference host, [`SYSTEM_LIBRARIES`]), existing paths only.
pub(crate) fn readable(class: Class, read_only: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = read_only.to_vec();
    if class != Class::Worker {
        out.extend(SYSTEM_LIBRARIES.iter().map(PathBuf::from));
    }
    out.retain(|p| p.exists());
    out.sort();
    out.dedup();
    out
}

pub(crate) fn confine(class: Class, read_only: &[PathBuf]) -> Result<State, String> {
    let none = None::<&str>;
    // The mount points made below must be traversable by the unprivileged
    // uid the child drops to, whatever umask it inherited.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // Nothing done here propagates back to the supervisor's namespace.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("cannot make the mounts private: {e}"))?;
    if class == Class::InferenceCuda {
        return Ok(State::Partial(
            "CUDA keeps the machine's file system view; Landlock limits it".into(),
        ));
    }
    // Opened before the tmpfs covers the staging directory (a bind's source
    // is then named by its descriptor, wherever it lives).
    let mut binds = Vec::new();
    for src in readable(class, read_only) {
        binds.push(Bind::open(&src)?);
    }
    let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        Some("tmpfs"),
        STAGING,
        Some("tmpfs"),
        quiet | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )
    .map_err(|e| format!("cannot mount a tmpfs on {STAGING}: {e}"))?;
    for b in &binds {
        b.mount_below(Path::new(STAGING))?;
    }
    drop(binds);
    let old = format!("{STAGING}/.old");
    std::fs::create_dir(&old).map_err(|e| format!("cannot create {old}: {e}"))?;
    nix::unistd::pivot_root(STAGING, old.as_str())
        .map_err(|e| format!("pivot_root to an empty tmpfs failed: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    umount2("/.old", MntFlags::MNT_DETACH)
        .map_err(|e| format!("cannot detach the old root: {e}"))?;
    std::fs::remove_dir("/.old").map_err(|e| format!("cannot remove /.old: {e}"))?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | quiet | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(|e| format!("cannot make the new root read-only: {e}"))?;
    Ok(State::On)
}

/// A path to bind into the new root: where it is seen, where it really is
/// (symbolic links resolved) and an open descriptor on it.
struct Bind {
    /// The path as named (may be a symbolic link, e.g. `/lib` → `usr/lib`).
    named: PathBuf,
    /// Its link target, when `named` is a symbolic link.
    link: Option<PathBuf>,
    /// The canonical path.
    real: PathBuf,
    /// Whether it is a directory (known from the descriptor: once the
    /// staging tmpfs is mounted, a path below the staging directory no
    /// longer names it).
    dir: bool,
    file: std::fs::File,
}

impl Bind {
    fn open(src: &Path) -> Result<Self, String> {
        let real = src
            .canonicalize()
            .map_err(|e| format!("cannot resolve {}: {e}", src.display()))?;
        let link = std::fs::read_link(src).ok();
        let file = std::fs::File::open(&real)
            .map_err(|e| format!("cannot open {}: {e}", real.display()))?;
        let dir = file
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", real.display()))?
            .is_dir();
        Ok(Self {
            named: src.to_path_buf(),
            link,
            real,
            dir,
            file,
        })
    }

    /// Binds it read-only at its real path below `root` (and recreates the
    /// symbolic link it was named by).
    fn mount_below(&self, root: &Path) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        let below = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        if let Some(link) = &self.link {
            let at = below(&self.named);
            if let Some(parent) = at.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            if std::fs::symlink_metadata(&at).is_err() {
                std::os::unix::fs::symlink(link, &at)
                    .map_err(|e| format!("cannot link {}: {e}", at.display()))?;
            }
        }
        let target = below(&self.real);
        if std::fs::symlink_metadata(&target).is_ok() {
            // Already bound (two names of one directory).
            return Ok(());
        }
        if self.dir {
            std::fs::create_dir_all(&target)
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            std::fs::write(&target, b"")
        }
        .map_err(|e| format!("cannot create the mount point {}: {e}", target.display()))?;
        let none = None::<&str>;
        let source = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        mount(
            Some(source.as_str()),
            &target,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .map_err(|e| format!("cannot bind {}: {e}", self.real.display()))?;
        mount(
            none,
            &target,
            none,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            none,
        )
        .map_err(|e| format!("cannot make {} read-only: {e}", self.real.display()))?;
        Ok(())
    }
}
