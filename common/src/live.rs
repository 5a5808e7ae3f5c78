//! The live state the supervisor publishes on the state board for read-only
//! viewers (`lockstep-ui`).  Encoded with postcard; versioned by
//! [`LIVE_STATE_VERSION`] so a viewer can refuse a board it cannot read.

use serde::{Deserialize, Serialize};

/// Version of [`LiveState`]'s encoding.
pub const LIVE_STATE_VERSION: u32 = 1;

/// Status of one child process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildStatus {
    /// Name (e.g. `worker-0`).
    pub name: String,
    /// Role (`worker`, `inference-host`).
    pub role: String,
    /// Process id.
    pub pid: u32,
    /// `starting`, `ready`, `exited: …`.
    pub state: String,
    /// Last ping round trip in nanoseconds (0 if none).
    pub last_rtt_ns: u64,
}

/// Everything a viewer shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveState {
    /// [`LIVE_STATE_VERSION`].
    pub version: u32,
    /// What the supervisor is doing (`starting`, `running`, `stopped`).
    pub phase: String,
    /// Current tick (0 before the first).
    pub tick: u64,
    /// Child processes.
    pub children: Vec<ChildStatus>,
    /// Recent log lines (newest last).
    pub log: Vec<String>,
}
