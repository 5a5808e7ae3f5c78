//! Step 9: Landlock.
//!
//! Every file system access right the kernel knows is handled (denied
//! unless a rule allows it), as are TCP bind and connect, and — on ABI ≥ 6
//! — signals to and abstract UNIX sockets of processes outside the
//! child's own domain.  Workers get no rule at all; the CPU inference host
//! may read what its empty root binds (ONNX Runtime and the system
//! libraries: `crate::filesystem`).  The CUDA class may read its libraries ([`crate::Config::read_only`]
//! and the system library directories), `/proc`, `/sys` and `/etc`, and
//! read, write and `ioctl` the devices under `/dev` (the driver opens
//! `/dev/nvidia*`).  Best effort across ABIs: rights an older kernel does
//! not know are left out, and the layer reports itself partial.

use crate::{Class, Config, State, unavailable};
use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use std::path::PathBuf;

/// The newest Landlock ABI these rules were written and tested against.
const ABI: landlock::ABI = landlock::ABI::V7;

/// System directories the CUDA class reads (libraries, the loader cache,
/// the driver's view of the machine).
const CUDA_READ: &[&str] = &["/usr", "/lib", "/lib64", "/etc", "/proc", "/sys", "/opt"];

/// Reading `path`: its files, and its entries if it is a directory (a
/// directory right on a file would make the ruleset only partly enforced).
fn read_access(path: &std::path::Path) -> BitFlags<AccessFs> {
    if path.is_dir() {
        AccessFs::ReadFile | AccessFs::ReadDir
    } else {
        AccessFs::ReadFile.into()
    }
}

pub(crate) fn restrict(class: Class, cfg: &Config) -> Result<State, String> {
    let ll = |e: landlock::RulesetError| format!("Landlock: {e}");
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(ABI))
        .map_err(ll)?
        .handle_access(AccessNet::from_all(ABI))
        .map_err(ll)?
        .scope(Scope::from_all(ABI))
        .map_err(ll)?
        .create()
        .map_err(ll)?;
    if class == Class::InferenceCpu {
        for path in crate::filesystem::readable(class, &cfg.read_only) {
            let Ok(fd) = PathFd::new(&path) else {
                continue;
            };
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, read_access(&path)))
                .map_err(ll)?;
        }
    }
    if class == Class::InferenceCuda {
        let device =
            AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::WriteFile | AccessFs::IoctlDev;
        let mut rules: Vec<(PathBuf, BitFlags<AccessFs>)> = CUDA_READ
            .iter()
            .map(PathBuf::from)
            .chain(cfg.read_only.iter().cloned())
            .map(|p| {
                let a = read_access(&p);
                (p, a)
            })
            .collect();
        rules.push((PathBuf::from("/dev"), device));
        for (path, access) in rules {
            let Ok(fd) = PathFd::new(&path) else {
                continue;
            };
            ruleset = ruleset.add_rule(PathBeneath::new(fd, access)).map_err(ll)?;
        }
    }
    let status = ruleset.restrict_self().map_err(ll)?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(State::On),
        RulesetStatus::PartiallyEnforced => Ok(State::Partial(format!(
            "kernel ABI {:?} is older than {ABI:?}",
            status.landlock
        ))),
        RulesetStatus::NotEnforced => unavailable(
            cfg.mode,
            "Landlock",
            format!(
                "Landlock is not enforced by this kernel ({:?})",
                status.landlock
            ),
        ),
    }
}
