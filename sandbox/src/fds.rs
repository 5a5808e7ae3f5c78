//! Step 1: close every inherited descriptor but stdio and the segment.

use crate::State;
use std::os::fd::RawFd;

pub(crate) fn close_inherited(keep: &[RawFd]) -> Result<State, String> {
    let closed = shm_protocol::bootstrap::close_inherited_fds(keep)
        .map_err(|e| format!("cannot list /proc/self/fd: {e}"))?;
    // The listing's own descriptor is always among them.
    if closed.len() > 1 {
        tracing::debug!(?closed, "closed inherited descriptors");
    }
    Ok(State::On)
}
