//! Memory-mapped, cross-process message passing for Lockstep.
//!
//! Every process of a Lockstep runtime — the supervisor, its workers, the
//! inference host — talks through this crate: a [`Segment`] per child holds
//! one single-producer/single-consumer [`ring`] per direction; a read-only
//! UI follows the run through the [`board`].  The crate holds all of the
//! runtime's cross-process `unsafe`; everything above it is safe code.
//!
//! ```
//! use shm_protocol::{Backing, Endpoint, Segment, SegmentConfig, WaitPolicy};
//! use shm_protocol::control::{Down, Up};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The supervisor creates a segment (normally it hands the fd to a child).
//! let seg = Segment::create(SegmentConfig::default(), Backing::Memfd { name: "demo".into() })?;
//! let file = std::fs::File::from(seg.fd().try_clone_to_owned()?);
//! // The child attaches to the same bytes and validates the header.
//! let child_seg = Segment::attach(file, "demo")?;
//!
//! let mut sup = Endpoint::new(seg, None, None, WaitPolicy::ADAPTIVE);
//! let mut child = Endpoint::new(child_seg, None, None, WaitPolicy::ADAPTIVE);
//! sup.send_msg(&Down::Ping { seq: 7 }, None)?;
//! let Down::Ping { seq } = child.recv_msg::<Down>(None)? else { unreachable!() };
//! child.send_msg(&Up::Pong { seq }, None)?;
//! assert_eq!(sup.recv_msg::<Up>(None)?, Up::Pong { seq: 7 });
//! # Ok(()) }
//! ```
//!
//! # Core concepts
//!
//! * [`Segment`] — a memfd or file with a validated `#[repr(C)]` header
//!   (magic, version, sizes, pids, heartbeats) and two rings.
//! * [`ring::Producer`] / [`ring::Consumer`] — the lock-free SPSC frame ring:
//!   zero-copy `try_reserve`/`commit`, copying `try_send`, batched `publish`;
//!   every index the peer writes is validated.
//! * [`Endpoint`] — blocking `send`/`recv` on top: bounded spin, then futex
//!   parking with a needs-wake-up flag; a dead or hung peer releases waiters
//!   with [`PeerGone`].
//! * [`board`] — a double-buffered seqlock that one writer updates and any
//!   number of `PROT_READ` readers follow.
//! * [`codec`] / [`control`] — postcard-encoded control messages, the
//!   bring-up handshake and the children's exit codes.
//! * [`sync`](crate) — the single atomics/futex facade, switched to loom under
//!   `cfg(loom)` for model checking.

#![deny(clippy::disallowed_types)]

pub(crate) mod region;
pub(crate) mod sync;

pub mod alloc;
pub mod block;
pub mod board;
pub mod codec;
pub mod control;
pub mod inference;
pub mod messages;
pub mod oom;
pub mod outputs;
pub mod payload;
pub mod prefetch;
pub mod ring;
pub mod worker;

#[cfg(not(loom))]
pub mod bootstrap;
#[cfg(not(loom))]
pub mod endpoint;
#[cfg(not(loom))]
pub mod peer;
#[cfg(not(loom))]
#[doc(hidden)]
pub mod rogue;
#[cfg(not(loom))]
pub mod segment;

#[cfg(not(loom))]
pub use endpoint::{ChannelError, Endpoint, Receiver, Sender, WaitPolicy};
#[cfg(not(loom))]
pub use peer::{PeerGone, PeerMonitor, PidFd};
pub use ring::{Frame, RingError};
#[cfg(not(loom))]
pub use segment::{Backing, Segment, SegmentConfig, SegmentError, Side};
