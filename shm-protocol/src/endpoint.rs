//! Blocking, liveness-aware ends of a segment's ring pair.
//!
//! [`Endpoint`] = [`Sender`] + [`Receiver`] over one [`Segment`].  Waiting is
//! a bounded spin followed by parking on the ring's futex in slices of
//! [`WaitPolicy::park_slice`]; between slices (and every few thousand spins)
//! the [`PeerMonitor`] is consulted, so a dead or hung peer releases every
//! blocked call with [`ChannelError::PeerGone`] instead of leaving it hanging.

use crate::codec::{self, CodecError, KIND_FRAGMENT, KIND_MESSAGE, MAX_MESSAGE};
use crate::peer::{PeerGone, PeerMonitor, PidFd};
use crate::ring::{Consumer, Frame, Producer, Reservation, RingError};
use crate::segment::Segment;
use crate::sync::spin_hint;
use serde::{Serialize, de::DeserializeOwned};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a blocked call waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Spin iterations before parking (`u32::MAX`: never park).
    pub spin: u32,
    /// Longest single futex sleep before the peer is checked again.
    pub park_slice: Duration,
    /// Spin by yielding the CPU (`sched_yield`) instead of a pause
    /// instruction: for a process that shares too few cores with its peers,
    /// so that polling never delays a peer that has just been woken.
    pub yielding: bool,
}

impl WaitPolicy {
    /// One spin of a wait.
    #[inline]
    pub fn pause(&self) {
        if self.yielding {
            std::thread::yield_now();
        } else {
            spin_hint();
        }
    }

    /// Spin briefly (≈ tens of µs), then park.
    pub const ADAPTIVE: Self = Self {
        spin: 20_000,
        park_slice: Duration::from_millis(10),
        yielding: false,
    };
    /// Never park (lowest latency, burns a core while waiting).
    pub const SPIN: Self = Self {
        spin: u32::MAX,
        park_slice: Duration::from_millis(10),
        yielding: false,
    };
    /// Park at once (no spinning).
    pub const PARK: Self = Self {
        spin: 0,
        park_slice: Duration::from_millis(10),
        yielding: false,
    };
}

impl Default for WaitPolicy {
    fn default() -> Self {
        Self::ADAPTIVE
    }
}

/// Errors of blocking channel operations.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The ring itself failed (corrupt, broken, frame too large).
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The peer died, hung or closed.
    #[error(transparent)]
    PeerGone(#[from] PeerGone),
    /// The deadline passed.
    #[error("timed out")]
    Timeout,
    /// A message could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A frame of an unexpected kind arrived where a message was expected.
    #[error("expected a message frame, got kind {0}")]
    UnexpectedKind(u32),
    /// The peer's fragments add up to more than [`MAX_MESSAGE`] bytes.
    #[error("message of more than {MAX_MESSAGE} bytes (peer sent {0} bytes of fragments)")]
    TooLarge(usize),
}

impl ChannelError {
    /// Whether the error means the peer broke the protocol (a corrupt ring,
    /// an undecodable or oversized message, a frame of the wrong kind) as
    /// opposed to being gone or slow.
    pub fn is_violation(&self) -> bool {
        matches!(
            self,
            ChannelError::Ring(_)
                | ChannelError::Codec(_)
                | ChannelError::UnexpectedKind(_)
                | ChannelError::TooLarge(_)
        )
    }
}

/// Largest scratch buffer a sender keeps between messages (a larger one,
/// left by a large message, is released).
const KEEP_SCRATCH: usize = 4 << 20;

enum Step {
    Spin,
    Park(Duration),
}

/// Spin/park bookkeeping of one blocking call.
struct Waiter {
    policy: WaitPolicy,
    deadline: Option<Instant>,
    spins: u32,
}

impl Waiter {
    fn new(policy: WaitPolicy, deadline: Option<Instant>) -> Self {
        Self {
            policy,
            deadline,
            spins: 0,
        }
    }

    fn step(&mut self, monitor: &PeerMonitor) -> Result<Step, ChannelError> {
        if self.spins < self.policy.spin {
            self.spins += 1;
            if !self.spins.is_multiple_of(4096) {
                return Ok(Step::Spin);
            }
            // Every 4096 spins: deadline and liveness, then keep spinning.
            self.check(monitor)?;
            return Ok(Step::Spin);
        }
        let slice = self.check(monitor)?;
        Ok(Step::Park(slice))
    }

    fn check(&self, monitor: &PeerMonitor) -> Result<Duration, ChannelError> {
        monitor.check()?;
        let mut slice = self.policy.park_slice;
        if let Some(d) = self.deadline {
            let now = Instant::now();
            if now >= d {
                return Err(ChannelError::Timeout);
            }
            slice = slice.min(d - now);
        }
        Ok(slice)
    }
}

/// The sending end.
#[derive(Debug)]
pub struct Sender {
    prod: Producer,
    monitor: Arc<PeerMonitor>,
    policy: WaitPolicy,
    scratch: Vec<u8>,
}

impl Sender {
    /// Blocks until a frame of `len` bytes fits, then reserves it.  Frames
    /// committed earlier are published first, so the peer can make room.
    pub fn reserve(
        &mut self,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<Reservation<'_>, ChannelError> {
        self.wait_space(len, deadline)?;
        match self.prod.try_reserve(len)? {
            Some(r) => Ok(r),
            // Unreachable for a sole producer (space only grows), but never panic.
            None => Err(ChannelError::Timeout),
        }
    }

    fn wait_space(&mut self, len: usize, deadline: Option<Instant>) -> Result<(), ChannelError> {
        if self.prod.ensure_space(len)? {
            return Ok(());
        }
        self.prod.publish();
        let mut w = Waiter::new(self.policy, deadline);
        loop {
            if self.prod.ensure_space(len)? {
                return Ok(());
            }
            if self.prod.consumer_closed() {
                return Err(PeerGone::Closed.into());
            }
            match w.step(&self.monitor)? {
                Step::Spin => self.policy.pause(),
                Step::Park(d) => self.prod.wait_for_space(len, d),
            }
        }
    }

    /// Sends one frame and publishes it.
    pub fn send(
        &mut self,
        kind: u32,
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), ChannelError> {
        self.push(kind, payload, deadline)?;
        self.prod.publish();
        Ok(())
    }

    /// Commits one frame without publishing it (for batches; call
    /// [`Sender::publish`] afterwards).
    pub fn push(
        &mut self,
        kind: u32,
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), ChannelError> {
        self.wait_space(payload.len(), deadline)?;
        if !self.prod.try_push(kind, payload)? {
            return Err(ChannelError::Timeout);
        }
        Ok(())
    }

    /// Encodes `msg` and commits it (unpublished) as one [`KIND_MESSAGE`]
    /// frame, or — when it is larger than the ring's largest frame — as
    /// [`KIND_FRAGMENT`] frames and a final [`KIND_MESSAGE`] frame (earlier
    /// fragments are published while later ones wait for space, so a
    /// message may be many times the ring's size).
    pub fn push_msg<T: Serialize + ?Sized>(
        &mut self,
        msg: &T,
        deadline: Option<Instant>,
    ) -> Result<(), ChannelError> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let res = codec::encode_into(msg, &mut buf)
            .map_err(ChannelError::from)
            .and_then(|()| self.push_split(&buf, deadline));
        if buf.capacity() > KEEP_SCRATCH {
            buf = Vec::new();
        }
        self.scratch = buf;
        res
    }

    /// Commits an encoded message, split into fragments if it must be.
    fn push_split(&mut self, bytes: &[u8], deadline: Option<Instant>) -> Result<(), ChannelError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(ChannelError::TooLarge(bytes.len()));
        }
        // A quarter of the ring per fragment: the consumer can drain one
        // while the next is written.
        let piece = (self.prod.capacity() / 4)
            .min(self.prod.max_payload())
            .max(1);
        if bytes.len() <= self.prod.max_payload() {
            return self.push(KIND_MESSAGE, bytes, deadline);
        }
        let mut chunks = bytes.chunks(piece).peekable();
        while let Some(c) = chunks.next() {
            let kind = if chunks.peek().is_some() {
                KIND_FRAGMENT
            } else {
                KIND_MESSAGE
            };
            self.push(kind, c, deadline)?;
        }
        Ok(())
    }

    /// [`Sender::send_msg`] encoding straight into the ring: two passes
    /// over `msg` (its length, then its bytes) instead of one into a
    /// scratch buffer and a copy — for large messages of little structure
    /// (chunks of memory), where the copy is most of the cost.  A message
    /// larger than the ring's largest frame goes through [`Sender::send_msg`].
    pub fn send_msg_direct<T: Serialize + ?Sized>(
        &mut self,
        msg: &T,
        deadline: Option<Instant>,
    ) -> Result<(), ChannelError> {
        let len = codec::encoded_len(msg)?;
        if len > self.prod.max_payload() {
            return self.send_msg(msg, deadline);
        }
        self.wait_space(len, deadline)?;
        let Some(mut r) = self.prod.try_reserve(len)? else {
            return Err(ChannelError::Timeout);
        };
        let written = codec::encode_to_slice(msg, r.buf())?;
        r.commit(KIND_MESSAGE, written)?;
        self.prod.publish();
        Ok(())
    }

    /// Encodes `msg`, sends it and publishes it.
    pub fn send_msg<T: Serialize + ?Sized>(
        &mut self,
        msg: &T,
        deadline: Option<Instant>,
    ) -> Result<(), ChannelError> {
        self.push_msg(msg, deadline)?;
        self.prod.publish();
        Ok(())
    }

    /// Sends a message already encoded with [`codec::encode`] (split into
    /// fragments if it must be) and publishes it: for a sender that keeps
    /// the bytes it sent.
    pub fn send_encoded(
        &mut self,
        bytes: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), ChannelError> {
        self.push_split(bytes, deadline)?;
        self.prod.publish();
        Ok(())
    }

    /// Publishes every committed frame.
    pub fn publish(&mut self) -> bool {
        self.prod.publish()
    }

    /// The underlying producer (for zero-copy batching).
    pub fn producer(&mut self) -> &mut Producer {
        &mut self.prod
    }

    /// The peer monitor.
    pub fn monitor(&self) -> &PeerMonitor {
        &self.monitor
    }

    /// Publishes what is pending and marks the ring closed.
    pub fn close(&mut self) {
        self.prod.close();
    }
}

/// The receiving end.
#[derive(Debug)]
pub struct Receiver {
    cons: Consumer,
    monitor: Arc<PeerMonitor>,
    policy: WaitPolicy,
    /// Fragments of a message being received.
    pieces: Vec<u8>,
}

impl Receiver {
    /// Blocks until a frame arrives (or the deadline passes, or the peer is
    /// gone) and returns it.
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Frame<'_>, ChannelError> {
        let (kind, off, len) = self.next(deadline)?;
        Ok(self.cons.frame_at(kind, off, len))
    }

    /// Marks this direction closed (the peer sees it after draining).
    pub fn close(&mut self) {
        self.cons.close();
    }

    /// Whether a frame is already there to receive (a broken ring counts
    /// as one: receiving then reports it).
    pub fn has_data(&mut self) -> bool {
        self.cons.has_data().unwrap_or(true)
    }

    /// Returns a frame if one is already there.
    pub fn try_recv(&mut self) -> Result<Option<Frame<'_>>, ChannelError> {
        self.maybe_release();
        match self.cons.poll_frame()? {
            Some((kind, off, len)) => Ok(Some(self.cons.frame_at(kind, off, len))),
            None => {
                self.cons.release();
                Ok(None)
            }
        }
    }

    fn maybe_release(&mut self) {
        if self.cons.unreleased() >= self.cons.capacity() / 4 {
            self.cons.release();
        }
    }

    fn next(&mut self, deadline: Option<Instant>) -> Result<(u32, usize, usize), ChannelError> {
        self.maybe_release();
        let mut w = Waiter::new(self.policy, deadline);
        loop {
            if let Some(f) = self.cons.poll_frame()? {
                return Ok(f);
            }
            // Empty: give the space back before waiting.
            self.cons.release();
            if self.cons.producer_closed() {
                if let Some(f) = self.cons.poll_frame()? {
                    return Ok(f);
                }
                return Err(PeerGone::Closed.into());
            }
            match w.step(&self.monitor) {
                Ok(Step::Spin) => self.policy.pause(),
                Ok(Step::Park(d)) => self.cons.wait_for_data(d),
                Err(e) => {
                    // A peer that died after publishing: deliver what it sent.
                    if let Some(f) = self.cons.poll_frame()? {
                        return Ok(f);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Receives one message (one [`KIND_MESSAGE`] frame, preceded by the
    /// [`KIND_FRAGMENT`] frames of a large message) and decodes it.  On a
    /// timeout the fragments received so far are kept for the next call.
    pub fn recv_msg<T: DeserializeOwned>(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<T, ChannelError> {
        loop {
            let (kind, off, len) = self.next(deadline)?;
            let frame = self.cons.frame_at(kind, off, len);
            if let Some(msg) = assemble(&mut self.pieces, frame.kind, frame.payload())? {
                return Ok(msg);
            }
        }
    }

    /// Returns consumed space to the producer now.
    pub fn release(&mut self) -> bool {
        self.cons.release()
    }

    /// The underlying consumer (for batched draining).
    pub fn consumer(&mut self) -> &mut Consumer {
        &mut self.cons
    }

    /// The peer monitor.
    pub fn monitor(&self) -> &PeerMonitor {
        &self.monitor
    }
}

/// Takes one frame of a message: a fragment is kept in `pieces` (`None`:
/// more to come); a message frame completes the message, which is decoded;
/// any other kind, or fragments adding up to more than [`MAX_MESSAGE`],
/// drop what was kept and are an error.
fn assemble<T: DeserializeOwned>(
    pieces: &mut Vec<u8>,
    kind: u32,
    payload: &[u8],
) -> Result<Option<T>, ChannelError> {
    match kind {
        KIND_FRAGMENT | KIND_MESSAGE => {
            let total = pieces.len() + payload.len();
            if total > MAX_MESSAGE {
                *pieces = Vec::new();
                return Err(ChannelError::TooLarge(total));
            }
            if kind == KIND_FRAGMENT {
                pieces.extend_from_slice(payload);
                return Ok(None);
            }
            if pieces.is_empty() {
                return Ok(Some(codec::decode(payload)?));
            }
            let mut whole = std::mem::take(pieces);
            whole.extend_from_slice(payload);
            Ok(Some(codec::decode(&whole)?))
        }
        other => {
            *pieces = Vec::new();
            Err(ChannelError::UnexpectedKind(other))
        }
    }
}

/// Feeds arbitrary frames (`kind u8, len u16, payload` records) to the
/// message assembler and decodes what completes as every control message
/// type (fuzz entry point).
#[doc(hidden)]
pub fn fuzz_fragments(data: &[u8]) {
    let mut pieces = Vec::new();
    let mut rest = data;
    while rest.len() >= 3 {
        let kind = u32::from(rest[0] % 4);
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let payload = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let _ = assemble::<crate::control::Up>(&mut pieces.clone(), kind, payload);
        let _ = assemble::<crate::control::Down>(&mut pieces, kind, payload);
    }
}

/// Both ends of one side of a segment.
#[derive(Debug)]
pub struct Endpoint {
    /// Sending half.
    pub tx: Sender,
    /// Receiving half.
    pub rx: Receiver,
    segment: Segment,
}

impl Endpoint {
    /// Builds this process's end of `segment`.  `peer` (a pidfd of the other
    /// process) lets blocked calls notice its death; `hung_after` lets them
    /// notice a stalled heartbeat.
    pub fn new(
        segment: Segment,
        peer: Option<PidFd>,
        hung_after: Option<Duration>,
        policy: WaitPolicy,
    ) -> Self {
        let monitor = Arc::new(PeerMonitor::new(segment.status(), peer, hung_after));
        let (prod, cons) = segment.rings();
        Self {
            tx: Sender {
                prod,
                monitor: monitor.clone(),
                policy,
                scratch: Vec::new(),
            },
            rx: Receiver {
                cons,
                monitor,
                policy,
                pieces: Vec::new(),
            },
            segment,
        }
    }

    /// The segment.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// Splits into halves (the segment moves into the returned guard, which
    /// must outlive neither half — the halves keep the mapping alive
    /// themselves; the guard only owns the file and its unlinking).
    pub fn split(self) -> (Sender, Receiver, Segment) {
        (self.tx, self.rx, self.segment)
    }

    /// Encodes and sends a message straight into the ring (see
    /// [`Sender::send_msg_direct`]).
    pub fn send_msg_direct<T: Serialize + ?Sized>(
        &mut self,
        msg: &T,
        deadline: Option<Instant>,
    ) -> Result<(), ChannelError> {
        self.tx.send_msg_direct(msg, deadline)
    }

    /// Sends a message and publishes it.
    pub fn send_msg<T: Serialize + ?Sized>(
        &mut self,
        msg: &T,
        deadline: Option<Instant>,
    ) -> Result<(), ChannelError> {
        self.tx.send_msg(msg, deadline)
    }

    /// Sends an encoded message and publishes it (see
    /// [`Sender::send_encoded`]).
    pub fn send_encoded(
        &mut self,
        bytes: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), ChannelError> {
        self.tx.send_encoded(bytes, deadline)
    }

    /// Receives and decodes a message.
    pub fn recv_msg<T: DeserializeOwned>(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<T, ChannelError> {
        self.rx.recv_msg(deadline)
    }

    /// Closes both directions cleanly (the peer sees [`PeerGone::Closed`]
    /// after draining).
    pub fn close(&mut self) {
        self.tx.close();
        self.rx.close();
        self.segment.status().mark_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{Backing, SegmentConfig};

    fn pair(policy: WaitPolicy) -> (Endpoint, Endpoint) {
        let seg = Segment::create(
            SegmentConfig {
                to_attacher: 4096,
                to_creator: 4096,
            },
            Backing::Memfd { name: "ep".into() },
        )
        .unwrap();
        let file = std::fs::File::from(seg.fd().try_clone_to_owned().unwrap());
        let other = Segment::attach(file, "ep").unwrap();
        (
            Endpoint::new(seg, None, None, policy),
            Endpoint::new(other, None, None, policy),
        )
    }

    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(20))
    }

    #[test]
    fn blocking_stream_larger_than_the_ring() {
        for policy in [WaitPolicy::SPIN, WaitPolicy::PARK, WaitPolicy::ADAPTIVE] {
            let (mut a, mut b) = pair(policy);
            let t = std::thread::spawn(move || {
                for i in 0..20_000u32 {
                    let len = (i % 300) as usize;
                    let data: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
                    a.tx.send(1 + i % 7, &data, soon()).unwrap();
                }
                a
            });
            for i in 0..20_000u32 {
                let f = b.rx.recv(soon()).unwrap();
                assert_eq!(f.kind, 1 + i % 7);
                let len = (i % 300) as usize;
                assert_eq!(f.payload().len(), len);
                assert!(
                    f.payload()
                        .iter()
                        .enumerate()
                        .all(|(j, v)| *v == (i as usize + j) as u8)
                );
            }
            t.join().unwrap();
        }
    }

    #[test]
    fn encoded_messages_arrive_as_sent_whole_or_in_fragments() {
        let (mut a, mut b) = pair(WaitPolicy::PARK);
        let t = std::thread::spawn(move || {
            // 100 bytes fits one frame; 20,000 needs fragments of a
            // 4 KiB ring.
            for len in [0usize, 100, 20_000] {
                let msg = vec![len as u8; len];
                let bytes = codec::encode(&msg).unwrap();
                a.send_encoded(&bytes, soon()).unwrap();
            }
            a
        });
        for len in [0usize, 100, 20_000] {
            assert_eq!(b.recv_msg::<Vec<u8>>(soon()).unwrap(), vec![len as u8; len]);
        }
        t.join().unwrap();
    }

    #[test]
    fn recv_times_out() {
        let (_a, mut b) = pair(WaitPolicy::ADAPTIVE);
        let t0 = Instant::now();
        let err = b.rx.recv(Some(t0 + Duration::from_millis(30))).unwrap_err();
        assert!(matches!(err, ChannelError::Timeout));
        assert!(t0.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn closed_peer_is_reported_after_draining() {
        let (mut a, mut b) = pair(WaitPolicy::PARK);
        a.send_msg(&crate::control::Down::Shutdown, None).unwrap();
        a.close();
        assert_eq!(
            b.recv_msg::<crate::control::Down>(soon()).unwrap(),
            crate::control::Down::Shutdown
        );
        assert!(matches!(
            b.rx.recv(soon()),
            Err(ChannelError::PeerGone(PeerGone::Closed))
        ));
    }

    #[test]
    fn dead_peer_releases_a_blocked_receiver() {
        let seg = Segment::create(
            SegmentConfig::default(),
            Backing::Memfd { name: "d".into() },
        )
        .unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("0.05")
            .spawn()
            .unwrap();
        let pidfd = PidFd::open(child.id()).unwrap();
        let mut ep = Endpoint::new(seg, Some(pidfd), None, WaitPolicy::PARK);
        let err = ep.rx.recv(soon()).unwrap_err();
        assert!(
            matches!(err, ChannelError::PeerGone(PeerGone::Exited { .. })),
            "{err}"
        );
        child.wait().unwrap();
    }

    #[test]
    fn hung_peer_is_detected_by_heartbeat() {
        let (mut a, _b) = pair(WaitPolicy::PARK);
        let seg = a.segment();
        let monitor = PeerMonitor::new(seg.status(), None, Some(Duration::from_millis(50)));
        a.rx.monitor = Arc::new(monitor);
        let err = a.rx.recv(soon()).unwrap_err();
        assert!(
            matches!(err, ChannelError::PeerGone(PeerGone::Hung { .. })),
            "{err}"
        );
    }

    #[test]
    fn sender_blocked_on_a_full_ring_is_released_by_peer_close() {
        let (mut a, mut b) = pair(WaitPolicy::PARK);
        while a.tx.producer().try_push(1, &[0; 500]).unwrap() {}
        a.tx.publish();
        b.rx.consumer().close();
        let err = a.tx.send(1, &[0; 500], soon()).unwrap_err();
        assert!(
            matches!(err, ChannelError::PeerGone(PeerGone::Closed)),
            "{err}"
        );
    }

    /// Messages encoded straight into the ring arrive as those encoded
    /// through the scratch buffer do, interleaved with them, larger than
    /// the ring's largest frame (split) included.
    #[test]
    fn direct_encoding_delivers_the_same_messages() {
        let (mut a, mut b) = pair(WaitPolicy::ADAPTIVE);
        let big: Vec<u8> = (0..100_000u32).map(|i| (i * 13) as u8).collect();
        let sizes = [0usize, 10, 3_000, 100_000, 7];
        let t = std::thread::spawn(move || {
            for (k, n) in sizes.into_iter().enumerate() {
                let m = (k as u32, serde_bytes::ByteBuf::from(big[..n].to_vec()));
                if k % 2 == 0 {
                    a.send_msg_direct(&m, soon()).unwrap();
                } else {
                    a.send_msg(&m, soon()).unwrap();
                }
            }
            a
        });
        for (k, n) in sizes.into_iter().enumerate() {
            let (i, got): (u32, serde_bytes::ByteBuf) = b.recv_msg(soon()).unwrap();
            assert_eq!((i, got.len()), (k as u32, n));
            assert!(
                got.iter()
                    .enumerate()
                    .all(|(i, v)| *v == (i as u32 * 13) as u8)
            );
        }
        t.join().unwrap();
    }

    #[test]
    fn messages_larger_than_the_ring_are_split_and_joined() {
        let (mut a, mut b) = pair(WaitPolicy::ADAPTIVE);
        let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let t = std::thread::spawn(move || {
            for n in [10usize, 3_000, 100_000, 5] {
                a.tx.send_msg(&serde_bytes::ByteBuf::from(big[..n].to_vec()), soon())
                    .unwrap();
            }
            a
        });
        for n in [10usize, 3_000, 100_000, 5] {
            let got: serde_bytes::ByteBuf = b.recv_msg(soon()).unwrap();
            assert_eq!(got.len(), n);
            assert!(
                got.iter()
                    .enumerate()
                    .all(|(i, v)| *v == (i as u32 * 7) as u8)
            );
        }
        t.join().unwrap();
    }

    #[test]
    fn a_fragment_stream_without_an_end_is_bounded() {
        let (mut a, mut b) = pair(WaitPolicy::ADAPTIVE);
        a.tx.send(crate::codec::KIND_FRAGMENT, &[1; 100], None)
            .unwrap();
        a.tx.send(9, b"x", None).unwrap();
        assert!(matches!(
            b.recv_msg::<crate::control::Up>(soon()),
            Err(ChannelError::UnexpectedKind(9))
        ));
        // The half-received message was dropped: the next one decodes.
        a.send_msg(&crate::control::Up::ShutdownAck, None).unwrap();
        assert_eq!(
            b.recv_msg::<crate::control::Up>(soon()).unwrap(),
            crate::control::Up::ShutdownAck
        );
    }

    #[test]
    fn unexpected_kind_is_an_error_not_a_panic() {
        let (mut a, mut b) = pair(WaitPolicy::ADAPTIVE);
        a.tx.send(9, b"raw", None).unwrap();
        assert!(matches!(
            b.recv_msg::<crate::control::Up>(soon()),
            Err(ChannelError::UnexpectedKind(9))
        ));
        a.tx.send(crate::codec::KIND_MESSAGE, &[255, 255], None)
            .unwrap();
        assert!(matches!(
            b.recv_msg::<crate::control::Up>(soon()),
            Err(ChannelError::Codec(_))
        ));
    }
}
