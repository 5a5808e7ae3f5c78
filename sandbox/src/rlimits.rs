//! Step 8: resource limits.

use crate::{MAX_OPEN_FILES, State};
use nix::sys::resource::{Resource, setrlimit};

/// Sets `RLIMIT_AS` (when `address_space` > 0), `RLIMIT_NOFILE` and
/// `RLIMIT_CORE` 0.  (Not `RLIMIT_FSIZE`: stderr may be a file the
/// operator redirected to.)
pub(crate) fn set(address_space: u64) -> Result<State, String> {
    let set = |resource, name: &str, value: u64| {
        setrlimit(resource, value, value).map_err(|e| format!("cannot set {name} to {value}: {e}"))
    };
    if address_space > 0 {
        set(Resource::RLIMIT_AS, "RLIMIT_AS", address_space)?;
    }
    set(Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE", MAX_OPEN_FILES)?;
    set(Resource::RLIMIT_CORE, "RLIMIT_CORE", 0)?;
    Ok(State::On)
}
