//! Knowing whether the process on the other side of a segment is alive.
//!
//! Two independent signals, checked only on slow paths (while waiting):
//!
//! * **Death** — a `pidfd` of the peer becomes readable the moment the peer
//!   exits, whatever killed it.  The supervisor holds a pidfd per child; a
//!   child opens one on its parent at attach time.  pidfds never suffer from
//!   pid reuse.
//! * **Hang** — every side bumps its heartbeat counter in the segment header
//!   whenever it waits or calls [`crate::segment::SegmentStatus::beat`].  A
//!   peer whose counter does not move for longer than the configured limit is
//!   declared hung.
//!
//! A peer that announced a clean close (its closed flag) is reported as
//! [`PeerGone::Closed`] once its frames are drained.

use crate::segment::SegmentStatus;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why the peer is no longer there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerGone {
    /// The peer process exited or was killed.
    #[error("peer process {pid} exited")]
    Exited {
        /// The peer's pid.
        pid: u32,
    },
    /// The peer's heartbeat did not move for too long.
    #[error("peer process {pid} is hung (no heartbeat for {silent:?})")]
    Hung {
        /// The peer's pid (0 if unknown).
        pid: u32,
        /// How long it has been silent.
        silent: Duration,
    },
    /// The peer closed its side cleanly.
    #[error("peer closed the connection")]
    Closed,
}

/// A pidfd for a process, pollable for its exit.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: u32,
}

impl PidFd {
    /// Opens a pidfd for `pid`.
    pub fn open(pid: u32) -> std::io::Result<Self> {
        let raw = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
        let p = rustix::process::Pid::from_raw(raw)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid 0"))?;
        let fd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())?;
        Ok(Self { fd, pid })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has exited (non-blocking poll).
    pub fn has_exited(&self) -> bool {
        self.wait_exit(Some(Duration::ZERO))
    }

    /// Waits up to `timeout` (forever for `None`) for the process to exit;
    /// returns whether it did.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.fd,
            rustix::event::PollFlags::IN,
        )];
        let ts = timeout.map(|t| rustix::event::Timespec {
            tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        matches!(rustix::event::poll(&mut fds, ts.as_ref()), Ok(n) if n > 0)
    }

    /// Sends `signal` to the process through the pidfd (no pid-reuse race).
    pub fn kill(&self, signal: rustix::process::Signal) -> std::io::Result<()> {
        rustix::process::pidfd_send_signal(&self.fd, signal)?;
        Ok(())
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[derive(Debug)]
struct BeatState {
    last: u64,
    since: Instant,
    /// Longest silence before the peer counts as hung (`None`: never).
    limit: Option<Duration>,
}

/// Watches one peer through its pidfd and its heartbeat.
#[derive(Debug)]
pub struct PeerMonitor {
    pidfd: Option<PidFd>,
    status: SegmentStatus,
    beat: Mutex<BeatState>,
}

impl PeerMonitor {
    /// Watches the peer of `status`'s segment.  `pidfd` detects its death;
    /// `hung_after` (if any) declares it hung when its heartbeat stalls.
    pub fn new(status: SegmentStatus, pidfd: Option<PidFd>, hung_after: Option<Duration>) -> Self {
        let last = status.peer_heartbeat();
        Self {
            pidfd,
            status,
            beat: Mutex::new(BeatState {
                last,
                since: Instant::now(),
                limit: hung_after,
            }),
        }
    }

    /// Changes how long the peer's heartbeat may stall before it counts as
    /// hung (`None`: never); the silence is measured from now.
    pub fn set_hung_after(&self, limit: Option<Duration>) {
        let mut st = self.beat.lock().unwrap_or_else(|p| p.into_inner());
        st.limit = limit;
        st.last = self.status.peer_heartbeat();
        st.since = Instant::now();
    }

    /// The peer's pid, if known.
    pub fn pid(&self) -> u32 {
        self.pidfd.as_ref().map_or(0, PidFd::pid)
    }

    /// The segment's liveness view.
    pub fn status(&self) -> &SegmentStatus {
        &self.status
    }

    /// Bumps our own heartbeat and checks the peer.
    pub fn check(&self) -> Result<(), PeerGone> {
        self.status.beat();
        if let Some(fd) = &self.pidfd
            && fd.has_exited()
        {
            return Err(PeerGone::Exited { pid: fd.pid() });
        }
        let mut st = self.beat.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(limit) = st.limit {
            let now = self.status.peer_heartbeat();
            if now != st.last {
                st.last = now;
                st.since = Instant::now();
            } else if st.since.elapsed() > limit {
                return Err(PeerGone::Hung {
                    pid: self.pid(),
                    silent: st.since.elapsed(),
                });
            }
        }
        Ok(())
    }

    /// Whether the peer closed its side cleanly.
    pub fn peer_closed(&self) -> bool {
        self.status.peer_closed()
    }
}
