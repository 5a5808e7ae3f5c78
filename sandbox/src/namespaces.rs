//! Step 3: new namespaces.
//!
//! A child gets its own network namespace (no interface but a loopback
//! that is down: no network at all), IPC namespace (no System V or POSIX
//! message-queue objects of anyone else), mount namespace (step 4 empties
//! it), UTS namespace, and cgroup namespace (rooted at the cgroup it just
//! joined: it cannot even name the rest of the tree).  A supervisor that is not root cannot create
//! those: its children first create a user namespace in which they map
//! their own uid and gid to themselves (they stay the same unprivileged
//! user outside) and hold, inside it only, the capabilities the next steps
//! need; step 7 drops them.
//!
//! Not a PID namespace: a process cannot move itself into one (only its
//! future children would be), and the supervisor's pidfds, reaper and
//! signals name children by their pid.  What a PID namespace would hide is
//! hidden by the other layers: the child sees no `/proc` (step 4), may not
//! signal or trace anyone (seccomp: no `kill`, `ptrace`; Landlock scopes
//! signals to its own domain).

use crate::{Mode, State, unavailable};
use nix::sched::{CloneFlags, unshare};

pub(crate) fn unshare_all(root: bool, mode: Mode) -> Result<State, String> {
    if !root {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER) {
            return unavailable(
                mode,
                "the namespaces layer",
                format!(
                    "cannot create a user namespace as uid {uid} ({e}): unprivileged user namespaces are disabled here (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, or an AppArmor restriction)"
                ),
            );
        }
        let write = |file: &str, text: String| {
            std::fs::write(format!("/proc/self/{file}"), &text)
                .map_err(|e| format!("cannot write `{}` to /proc/self/{file}: {e}", text.trim()))
        };
        write("setgroups", "deny".into())?;
        write("uid_map", format!("{uid} {uid} 1\n"))?;
        write("gid_map", format!("{gid} {gid} 1\n"))?;
    }
    let flags = CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    unshare(flags).map_err(|e| {
        format!("cannot create network, IPC, mount, UTS and cgroup namespaces: {e} (the process must be single-threaded and hold CAP_SYS_ADMIN)")
    })?;
    Ok(State::On)
}
