//! Steps 5–7: capabilities and identity.
//!
//! The bounding and ambient sets are emptied first (that needs
//! `CAP_SETPCAP`, which the uid change below takes away), then a root
//! supervisor's child drops to its unprivileged uid and gid (supplementary
//! groups included), then the effective, permitted and inheritable sets are
//! emptied and `no_new_privs` set: nothing the child executes or does can
//! give it a capability back.  A child of a supervisor that is not root
//! already runs as that user; inside its user namespace it held
//! capabilities for steps 3–4 only, and loses them here.

use crate::State;
use caps::CapSet;
use nix::unistd::{Gid, Uid};

pub(crate) fn drop_bounding() -> Result<State, String> {
    let mut kept = 0;
    for cap in caps::all() {
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
            && caps::drop(None, CapSet::Bounding, cap).is_err()
        {
            kept += 1;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("cannot clear the ambient set: {e}"))?;
    if kept > 0 {
        // Without CAP_SETPCAP (namespaces off, not root) the bounding set
        // stays; no_new_privs and the empty permitted set still mean no
        // capability can be gained.
        return Ok(State::Partial(format!(
            "{kept} capabilities stay in the bounding set (no CAP_SETPCAP)"
        )));
    }
    Ok(State::On)
}

pub(crate) fn drop_identity(root: bool, uid: u32, gid: u32) -> Result<State, String> {
    if !root {
        return Ok(State::On);
    }
    if uid == 0 || gid == 0 {
        return Err(format!(
            "refusing to run children as uid {uid}, gid {gid}: set [sandbox] uid and gid to an unprivileged user, or disable the identity layer"
        ));
    }
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    nix::unistd::setgroups(&[g]).map_err(|e| format!("setgroups([{gid}]): {e}"))?;
    nix::unistd::setresgid(g, g, g).map_err(|e| format!("setresgid({gid}): {e}"))?;
    nix::unistd::setresuid(u, u, u).map_err(|e| format!("setresuid({uid}): {e}"))?;
    let ids = nix::unistd::getresuid().map_err(|e| format!("getresuid: {e}"))?;
    if [ids.real, ids.effective, ids.saved] != [u, u, u] {
        return Err(format!("uids are {ids:?} after setresuid({uid})"));
    }
    Ok(State::On)
}

pub(crate) fn drop_capabilities() -> Result<State, String> {
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::clear(None, set).map_err(|e| format!("cannot clear the {set:?} set: {e}"))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("cannot clear the ambient set: {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    let left = caps::read(None, CapSet::Permitted).map_err(|e| format!("capget: {e}"))?;
    if !left.is_empty() {
        return Err(format!(
            "capabilities left after dropping them all: {left:?}"
        ));
    }
    Ok(State::On)
}
