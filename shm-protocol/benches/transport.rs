//! Cross-process transport benchmark: `shm-protocol` against `ipc-channel`,
//! a Unix socketpair, (optionally) iceoryx2, and a bare shared cache line.
//!
//! ```text
//! cargo bench -p shm-protocol --bench transport                 # full run (≈ 2-3 min)
//! cargo bench -p shm-protocol --bench transport --features bench-iceoryx2
//! LOCKSTEP_BENCH_QUICK=1 cargo bench -p shm-protocol --bench transport   # smoke test (< 20 s)
//! ```
//!
//! Everything is measured between two real processes: the bench executable
//! re-executes itself (`std::env::current_exe()`) with `LOCKSTEP_BENCH_CHILD`
//! set, and parent and child are pinned to two different CPUs when at least
//! two are allowed.  Every measurement runs in a fresh child process, and is
//! repeated `LOCKSTEP_BENCH_RUNS` times (default 5); the table shows the
//! median with the spread (min–max) over the runs.
//!
//! Per run:
//!
//! * **Throughput** — the parent streams N fixed-size messages one way; the
//!   child checks every sequence number, XOR-folds every payload word (so the
//!   whole payload is read, on every transport) and acknowledges the batch
//!   with its count and checksum, which the parent verifies.  The time runs
//!   from the first send to the acknowledgement.  N is calibrated so that a
//!   run streams for about 0.3 s.  shm-protocol commits frames with zero-copy
//!   `try_reserve`/`commit` and `publish`es once per batch
//!   (`LOCKSTEP_BENCH_BATCH`, default 64 frames or a quarter of the ring);
//!   the other transports send one message per call, which is how they are
//!   used (a socketpair write is one `write(2)` per message; its reader reads
//!   up to 256 KiB per `read(2)`).
//! * **Round trip** — ping-pong of one message: the child copies each ping
//!   back as the pong.  Each round trip is timed with `Instant::now()`.
//!
//! Modes: `spin` busy-polls on both sides (`WaitPolicy::SPIN`, non-blocking
//! socket reads, `try_recv`, iceoryx2 `receive()` polling); `park` blocks
//! (`WaitPolicy::PARK`, blocking reads, iceoryx2 event listener).
//!
//! Environment: `LOCKSTEP_BENCH_RUNS` (runs per row, default 5),
//! `LOCKSTEP_BENCH_QUICK=1` (one short run per row), `LOCKSTEP_BENCH_FILTER`
//! (comma-separated substrings of the row name `transport/size/mode`, e.g.
//! `shm,cache`), `LOCKSTEP_BENCH_BATCH` (shm-protocol frames per publish),
//! `LOCKSTEP_BENCH_PIDFD=0` (shm-protocol endpoints without a peer pidfd; by
//! default each side watches the other through a pidfd, as the runtime does).
//! Positional arguments after `--` are filters too.  When the binary is run
//! without `--bench` (e.g. by `cargo test --benches`) it runs in quick mode.

// The bench uses std atomics directly for the bare cache-line ping-pong; the
// crate-wide ban only protects the loom facade of the library itself.
#![allow(clippy::disallowed_types)]

use lockstep_bench_support::pin::{pin_or_warn, two_cpus};
use lockstep_bench_support::quiet::CpuSnapshot;
use lockstep_bench_support::{Stat, preamble};
use shm_protocol::segment::{Backing, Segment, SegmentConfig};
use shm_protocol::{Endpoint, PidFd, Receiver, Sender, WaitPolicy};
use std::fmt::Write as _;
use std::hint::black_box;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ENV_CHILD: &str = "LOCKSTEP_BENCH_CHILD";
const ENV_ARG: &str = "LOCKSTEP_BENCH_CHILD_ARG";

/// Word 0 of every message: a sequence number (stream data) or a command.
const TAG_PING: u64 = 1 << 62;
const TAG_READY: u64 = u64::MAX - 2;
const TAG_QUIT: u64 = u64::MAX - 1;
const TAG_END: u64 = u64::MAX;

/// Frame kind used for shm-protocol messages.
const KIND_DATA: u32 = 1;

const SIZES: [usize; 3] = [64, 1024, 64 * 1024];

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Shm,
    Iceoryx2,
    IpcChannel,
    Socketpair,
    CacheLine,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Shm => "shm-protocol",
            Transport::Iceoryx2 => "iceoryx2",
            Transport::IpcChannel => "ipc-channel",
            Transport::Socketpair => "socketpair",
            Transport::CacheLine => "cache-line",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Transport::Shm,
            Transport::Iceoryx2,
            Transport::IpcChannel,
            Transport::Socketpair,
            Transport::CacheLine,
        ]
        .into_iter()
        .find(|t| t.name() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Spin,
    Park,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Spin => "spin",
            Mode::Park => "park",
        }
    }

    fn policy(self) -> WaitPolicy {
        match self {
            Mode::Spin => WaitPolicy::SPIN,
            Mode::Park => WaitPolicy::PARK,
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    runs: usize,
    quick: bool,
    /// Target duration of one measured throughput stream.
    stream_time: Duration,
    /// Minimum duration of the calibration stream.
    calib_time: Duration,
    /// Duration of the measured round-trip loop.
    rtt_time: Duration,
    rtt_warmup: Duration,
    rtt_min_samples: usize,
    rtt_max_samples: usize,
    /// Frames per `publish` for shm-protocol (capped by a quarter ring).
    batch: usize,
    /// Give shm-protocol endpoints a pidfd of the peer (as the runtime does).
    pidfd: bool,
    filters: Vec<String>,
    cpus: Option<(usize, usize)>,
}

impl Config {
    fn from_env() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let bench_mode = args.iter().any(|a| a == "--bench");
        let quick = std::env::var("LOCKSTEP_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
            || !bench_mode;
        let env_usize = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
        let runs = env_usize("LOCKSTEP_BENCH_RUNS")
            .unwrap_or(if quick { 1 } else { 5 })
            .max(1);
        let mut filters: Vec<String> = args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .cloned()
            .collect();
        if let Ok(f) = std::env::var("LOCKSTEP_BENCH_FILTER") {
            filters.extend(f.split(',').filter(|s| !s.is_empty()).map(str::to_owned));
        }
        let ms = Duration::from_millis;
        Self {
            runs,
            quick,
            stream_time: if quick { ms(20) } else { ms(300) },
            calib_time: if quick { ms(5) } else { ms(40) },
            rtt_time: if quick { ms(20) } else { ms(300) },
            rtt_warmup: if quick { ms(2) } else { ms(30) },
            rtt_min_samples: if quick { 50 } else { 2_000 },
            rtt_max_samples: 2_000_000,
            batch: env_usize("LOCKSTEP_BENCH_BATCH").unwrap_or(64).max(1),
            pidfd: std::env::var("LOCKSTEP_BENCH_PIDFD").map_or(true, |v| v != "0"),
            filters,
            cpus: two_cpus(),
        }
    }

    fn selected(&self, row: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| row.contains(f.as_str()))
    }
}

// ---------------------------------------------------------------------------
// Message helpers
// ---------------------------------------------------------------------------

#[inline]
fn word(m: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&m[i * 8..i * 8 + 8]);
    u64::from_le_bytes(b)
}

/// XOR of every little-endian u64 word of `m` (reads the whole payload).
#[inline]
fn fold(m: &[u8]) -> u64 {
    let mut acc = [0u64; 4];
    let mut chunks = m.chunks_exact(32);
    for c in &mut chunks {
        for (i, a) in acc.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&c[i * 8..i * 8 + 8]);
            *a ^= u64::from_le_bytes(b);
        }
    }
    let mut x = acc[0] ^ acc[1] ^ acc[2] ^ acc[3];
    let mut words = chunks.remainder().chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        x ^= u64::from_le_bytes(b);
    }
    x
}

/// XOR of 0..n.
fn xor_upto(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let m = n - 1;
    match m % 4 {
        0 => m,
        1 => 1,
        2 => m + 1,
        _ => 0,
    }
}

fn template(size: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A message of `size` bytes whose first words are `words` (zero padded).
fn control(size: usize, words: &[u64]) -> Vec<u8> {
    let mut m = vec![0u8; size];
    for (i, w) in words.iter().enumerate() {
        m[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    m
}

// ---------------------------------------------------------------------------
// Transport interface
// ---------------------------------------------------------------------------

/// Sending half: `send` copies `src` into a message whose word 0 is `tag`.
trait Tx {
    fn send(&mut self, src: &[u8], tag: u64);
    /// Makes everything sent so far visible (a no-op for most transports).
    fn flush(&mut self) {}
}

/// Receiving half: blocks (spinning or parking) for the next message.
trait Rx {
    fn recv<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> R;
}

// --- shm-protocol ----------------------------------------------------------

struct ShmTx(Sender);

impl Tx for ShmTx {
    #[inline]
    fn send(&mut self, src: &[u8], tag: u64) {
        let len = src.len();
        // Zero-copy fast path; `Sender::reserve` publishes what is pending and
        // waits (spins or parks, per the policy) only when the ring is full.
        match self.0.producer().try_reserve(len) {
            Ok(Some(mut r)) => {
                let buf = r.buf();
                buf.copy_from_slice(src);
                buf[..8].copy_from_slice(&tag.to_le_bytes());
                r.commit(KIND_DATA, len).expect("commit");
            }
            Ok(None) => {
                let mut r = self.0.reserve(len, None).expect("reserve");
                let buf = r.buf();
                buf.copy_from_slice(src);
                buf[..8].copy_from_slice(&tag.to_le_bytes());
                r.commit(KIND_DATA, len).expect("commit");
            }
            Err(e) => panic!("try_reserve: {e}"),
        }
    }

    #[inline]
    fn flush(&mut self) {
        self.0.publish();
    }
}

struct ShmRx(Receiver);

impl Rx for ShmRx {
    #[inline]
    fn recv<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> R {
        let frame = self.0.recv(None).expect("shm recv");
        f(frame.payload())
    }
}

// --- Unix socketpair ---------------------------------------------------------

struct SockTx {
    s: UnixStream,
    scratch: Vec<u8>,
}

fn write_all_spin(s: &mut UnixStream, mut buf: &[u8]) {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => panic!("socket closed"),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("socket write: {e}"),
        }
    }
}

impl Tx for SockTx {
    fn send(&mut self, src: &[u8], tag: u64) {
        if word(src, 0) == tag {
            write_all_spin(&mut self.s, src);
        } else {
            self.scratch.clear();
            self.scratch.extend_from_slice(src);
            self.scratch[..8].copy_from_slice(&tag.to_le_bytes());
            write_all_spin(&mut self.s, &self.scratch);
        }
    }
}

struct SockRx {
    s: UnixStream,
    size: usize,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl SockRx {
    fn new(s: UnixStream, size: usize) -> Self {
        Self {
            s,
            size,
            buf: vec![0; (256 << 10).max(4 * size)],
            start: 0,
            end: 0,
        }
    }
}

impl Rx for SockRx {
    fn recv<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> R {
        while self.end - self.start < self.size {
            if self.buf.len() - self.start < self.size {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            match self.s.read(&mut self.buf[self.end..]) {
                Ok(0) => panic!("socket closed by peer"),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("socket read: {e}"),
            }
        }
        let m = &self.buf[self.start..self.start + self.size];
        self.start += self.size;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        f(m)
    }
}

// --- ipc-channel -------------------------------------------------------------

type IpcPair = (
    ipc_channel::ipc::IpcBytesSender,
    ipc_channel::ipc::IpcBytesReceiver,
);

struct IpcTx {
    tx: ipc_channel::ipc::IpcBytesSender,
    scratch: Vec<u8>,
}

impl Tx for IpcTx {
    fn send(&mut self, src: &[u8], tag: u64) {
        if word(src, 0) == tag {
            self.tx.send(src).expect("ipc send");
        } else {
            self.scratch.clear();
            self.scratch.extend_from_slice(src);
            self.scratch[..8].copy_from_slice(&tag.to_le_bytes());
            self.tx.send(&self.scratch).expect("ipc send");
        }
    }
}

struct IpcRx {
    rx: ipc_channel::ipc::IpcBytesReceiver,
    spin: bool,
}

impl Rx for IpcRx {
    fn recv<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> R {
        let v = if self.spin {
            loop {
                match self.rx.try_recv() {
                    Ok(v) => break v,
                    Err(ipc_channel::TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(e) => panic!("ipc try_recv: {e:?}"),
                }
            }
        } else {
            self.rx.recv().expect("ipc recv")
        };
        f(&v)
    }
}

// --- iceoryx2 (optional) -----------------------------------------------------

#[cfg(feature = "bench-iceoryx2")]
mod ice {
    use super::{Rx, Tx};
    use iceoryx2::port::listener::Listener;
    use iceoryx2::port::notifier::Notifier;
    use iceoryx2::port::publisher::Publisher;
    use iceoryx2::port::subscriber::Subscriber;
    use iceoryx2::prelude::*;

    type Svc = ipc::Service;

    /// One process's ports: publish on `<prefix>/<out>`, subscribe to
    /// `<prefix>/<inn>`; with `park`, an event service per direction too.
    pub(super) struct Ports {
        pub(super) tx: IceTx,
        pub(super) rx: IceRx,
        _node: Node<Svc>,
    }

    pub(super) struct IceTx {
        publisher: Publisher<Svc, [u8], ()>,
        notifier: Option<Notifier<Svc>>,
    }

    pub(super) struct IceRx {
        subscriber: Subscriber<Svc, [u8], ()>,
        listener: Option<Listener<Svc>>,
    }

    /// Subscriber queue depth: about 1 MiB of payload, like the shm ring.
    fn buffer(size: usize) -> usize {
        ((1usize << 20) / size).clamp(16, 1024)
    }

    fn service_name(prefix: &str, dir: &str) -> ServiceName {
        format!("{prefix}/{dir}")
            .as_str()
            .try_into()
            .expect("service name")
    }

    pub(super) fn ports(prefix: &str, out: &str, inn: &str, size: usize, park: bool) -> Ports {
        set_log_level_from_env_or(LogLevel::Error);
        let node = NodeBuilder::new().create::<Svc>().expect("iceoryx2 node");
        let pubsub = |dir: &str| {
            node.service_builder(&service_name(prefix, dir))
                .publish_subscribe::<[u8]>()
                .enable_safe_overflow(false)
                .subscriber_max_buffer_size(buffer(size))
                .subscriber_max_borrowed_samples(4)
                .history_size(0)
                .max_publishers(1)
                .max_subscribers(1)
                .open_or_create()
                .expect("iceoryx2 pub/sub service")
        };
        let events = |dir: &str| {
            node.service_builder(&service_name(prefix, &format!("{dir}-ev")))
                .event()
                .open_or_create()
                .expect("iceoryx2 event service")
        };
        let in_svc = pubsub(inn);
        let out_svc = pubsub(out);
        let subscriber = in_svc
            .subscriber_builder()
            .buffer_size(buffer(size))
            .create()
            .expect("subscriber");
        let publisher = out_svc
            .publisher_builder()
            .initial_max_slice_len(size)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .max_loaned_samples(2)
            .create()
            .expect("publisher");
        let (notifier, listener) = if park {
            let n = events(out).notifier_builder().create().expect("notifier");
            let l = events(inn).listener_builder().create().expect("listener");
            (Some(n), Some(l))
        } else {
            (None, None)
        };
        Ports {
            tx: IceTx {
                publisher,
                notifier,
            },
            rx: IceRx {
                subscriber,
                listener,
            },
            _node: node,
        }
    }

    impl Tx for IceTx {
        fn send(&mut self, src: &[u8], tag: u64) {
            let sample = loop {
                match self.publisher.loan_slice_uninit(src.len()) {
                    Ok(s) => break s,
                    Err(_) => std::hint::spin_loop(),
                }
            };
            let mut sample = sample.write_from_slice(src);
            sample.payload_mut()[..8].copy_from_slice(&tag.to_le_bytes());
            sample.send().expect("iceoryx2 send");
            if let Some(n) = &self.notifier {
                n.notify().expect("iceoryx2 notify");
            }
        }
    }

    impl Rx for IceRx {
        fn recv<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> R {
            loop {
                match self.subscriber.receive() {
                    Ok(Some(s)) => return f(s.payload()),
                    Ok(None) => match &self.listener {
                        Some(l) => {
                            l.blocking_wait(|_| {}).expect("iceoryx2 wait");
                        }
                        None => std::hint::spin_loop(),
                    },
                    Err(e) => panic!("iceoryx2 receive: {e:?}"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The protocol both processes run
// ---------------------------------------------------------------------------

/// Child side: acknowledge streams, echo pings, until QUIT.
fn child_loop<T: Tx, R: Rx>(tx: &mut T, rx: &mut R, size: usize) {
    enum Next {
        Nothing,
        Ack,
        Quit,
    }
    let ready = control(size, &[TAG_READY]);
    tx.send(&ready, TAG_READY);
    tx.flush();
    let (mut expected, mut xor, mut errors) = (0u64, 0u64, 0u64);
    loop {
        let next = rx.recv(|m| {
            let tag = word(m, 0);
            if tag < TAG_PING {
                errors += u64::from(tag != expected || m.len() != size);
                expected += 1;
                xor ^= fold(m);
                Next::Nothing
            } else if tag == TAG_END {
                Next::Ack
            } else if tag == TAG_QUIT {
                Next::Quit
            } else {
                // Ping: the copy back reads the whole payload.
                tx.send(m, tag);
                tx.flush();
                Next::Nothing
            }
        });
        match next {
            Next::Nothing => {}
            Next::Ack => {
                let ack = control(size, &[expected, xor, errors]);
                let count = expected;
                tx.send(&ack, count);
                tx.flush();
                (expected, xor, errors) = (0, 0, 0);
            }
            Next::Quit => break,
        }
    }
}

/// Streams `n` messages, returns the time until the child's verified ack.
fn stream<T: Tx, R: Rx>(tx: &mut T, rx: &mut R, tmpl: &[u8], n: u64, batch: usize) -> Duration {
    let size = tmpl.len();
    let end = control(size, &[TAG_END]);
    let t0 = Instant::now();
    let mut pending = 0;
    for seq in 0..n {
        tx.send(tmpl, seq);
        pending += 1;
        if pending == batch {
            tx.flush();
            pending = 0;
        }
    }
    tx.send(&end, TAG_END);
    tx.flush();
    let (count, xor, errors) = rx.recv(|m| (word(m, 0), word(m, 1), word(m, 2)));
    let dt = t0.elapsed();
    let rest = fold(&tmpl[8..]);
    let want = xor_upto(n) ^ if n % 2 == 1 { rest } else { 0 };
    assert_eq!(count, n, "child received a different number of messages");
    assert_eq!(errors, 0, "child saw out-of-order or mis-sized messages");
    assert_eq!(xor, want, "payload checksum mismatch");
    dt
}

/// One ping-pong; returns the round-trip time.
#[inline]
fn ping<T: Tx, R: Rx>(tx: &mut T, rx: &mut R, tmpl: &[u8], seq: u64) -> Duration {
    let tag = TAG_PING | seq;
    let t0 = Instant::now();
    tx.send(tmpl, tag);
    tx.flush();
    let back = rx.recv(|m| word(m, 0) ^ fold(&m[m.len() - 8..]));
    let dt = t0.elapsed();
    assert_eq!(back ^ word(tmpl, tmpl.len() / 8 - 1), tag, "wrong pong");
    dt
}

#[derive(Debug, Clone, Copy, Default)]
struct RunResult {
    msgs_per_s: Option<f64>,
    rtt: Option<[f64; 3]>,
}

fn percentiles(mut ns: Vec<u64>) -> [f64; 3] {
    ns.sort_unstable();
    let at = |p: f64| {
        let rank = ((p * ns.len() as f64).ceil() as usize).clamp(1, ns.len());
        ns[rank - 1] as f64
    };
    [at(0.50), at(0.99), at(0.999)]
}

/// Parent side of one run: handshake, calibrate, stream, ping-pong, quit.
fn parent_session<T: Tx, R: Rx>(
    tx: &mut T,
    rx: &mut R,
    size: usize,
    batch: usize,
    cfg: &Config,
) -> RunResult {
    let tag = rx.recv(|m| word(m, 0));
    assert_eq!(tag, TAG_READY, "child did not report ready");
    let tmpl = template(size);

    // Throughput: calibrate (also warms caches, page tables, ring pages).
    let mut n = 256u64;
    let rate = loop {
        let dt = stream(tx, rx, &tmpl, n, batch);
        if dt >= cfg.calib_time || n >= 1 << 30 {
            break n as f64 / dt.as_secs_f64();
        }
        n *= 4;
    };
    let n = ((rate * cfg.stream_time.as_secs_f64()) as u64).max(256);
    let dt = stream(tx, rx, &tmpl, n, batch);
    let msgs_per_s = n as f64 / dt.as_secs_f64();

    // Round trips.
    let mut seq = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < cfg.rtt_warmup {
        ping(tx, rx, &tmpl, seq);
        seq += 1;
    }
    let mut ns = Vec::with_capacity(1 << 16);
    let t0 = Instant::now();
    while ns.len() < cfg.rtt_max_samples
        && (ns.len() < cfg.rtt_min_samples || t0.elapsed() < cfg.rtt_time)
    {
        ns.push(ping(tx, rx, &tmpl, seq).as_nanos() as u64);
        seq += 1;
    }

    let quit = control(size, &[TAG_QUIT]);
    tx.send(&quit, TAG_QUIT);
    tx.flush();
    RunResult {
        msgs_per_s: Some(msgs_per_s),
        rtt: Some(percentiles(ns)),
    }
}

// ---------------------------------------------------------------------------
// Bare cache-line ping-pong (the hardware floor)
// ---------------------------------------------------------------------------

struct SharedLine {
    map: memmap2::MmapMut,
}

impl SharedLine {
    fn open(path: &std::path::Path, create: bool) -> Self {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .open(path)
            .expect("open cache-line file");
        if create {
            file.set_len(4096).expect("size cache-line file");
        }
        // SAFETY: a 4 KiB file that only this bench's two processes use; all
        // access to the mapped bytes goes through the atomic below.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }.expect("map cache line");
        Self { map }
    }

    fn word(&self) -> &AtomicU64 {
        // SAFETY: the mapping is page-aligned, at least 8 bytes long and lives
        // as long as `self`; both processes access the word only atomically.
        unsafe { AtomicU64::from_ptr(self.map.as_ptr().cast_mut().cast::<u64>()) }
    }
}

fn cacheline_child(path: &std::path::Path) {
    let line = SharedLine::open(path, false);
    let w = line.word();
    let mut expect = 1u64;
    loop {
        let v = w.load(Ordering::Acquire);
        if v == expect {
            w.store(expect + 1, Ordering::Release);
            expect += 2;
        } else if v == TAG_QUIT {
            break;
        } else {
            std::hint::spin_loop();
        }
    }
}

fn cacheline_run(cfg: &Config, child_cpu: Option<usize>) -> RunResult {
    let path = unique_path("cl");
    let line = SharedLine::open(&path, true);
    let mut child = spawn_child(Transport::CacheLine, 8, Mode::Spin, child_cpu, &path);
    let w = line.word();
    let mut v = 1u64;
    let round = |v: &mut u64| {
        let t0 = Instant::now();
        w.store(*v, Ordering::Release);
        while w.load(Ordering::Acquire) != *v + 1 {
            std::hint::spin_loop();
        }
        let dt = t0.elapsed();
        *v += 2;
        dt
    };
    // The first round also waits for the child to start.
    round(&mut v);
    let t0 = Instant::now();
    while t0.elapsed() < cfg.rtt_warmup {
        round(&mut v);
    }
    let mut ns = Vec::with_capacity(1 << 16);
    let t0 = Instant::now();
    while ns.len() < cfg.rtt_max_samples
        && (ns.len() < cfg.rtt_min_samples || t0.elapsed() < cfg.rtt_time)
    {
        ns.push(round(&mut v).as_nanos() as u64);
    }
    w.store(TAG_QUIT, Ordering::Release);
    wait_child(&mut child);
    let _ = std::fs::remove_file(&path);
    RunResult {
        msgs_per_s: None,
        rtt: Some(percentiles(ns)),
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

fn unique_path(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!(
        "lockstep-bench-{}-{what}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn spawn_child(
    t: Transport,
    size: usize,
    mode: Mode,
    cpu: Option<usize>,
    arg: impl AsRef<std::ffi::OsStr>,
) -> Child {
    let exe = std::env::current_exe().expect("current_exe");
    let cpu = cpu.map_or_else(|| "-".to_owned(), |c| c.to_string());
    Command::new(exe)
        .env(
            ENV_CHILD,
            format!("{},{size},{},{cpu}", t.name(), mode.name()),
        )
        .env(ENV_ARG, arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn child")
}

fn wait_child(child: &mut Child) {
    let status = child.wait().expect("wait for child");
    assert!(status.success(), "child failed: {status}");
}

fn child_main(spec: &str) {
    // Die with the parent, whatever happens to it.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let parts: Vec<&str> = spec.split(',').collect();
    let [t, size, mode, cpu] = parts.as_slice() else {
        panic!("bad child spec {spec:?}");
    };
    let t = Transport::parse(t).expect("transport");
    let size: usize = size.parse().expect("size");
    let mode = if *mode == "spin" {
        Mode::Spin
    } else {
        Mode::Park
    };
    if let Ok(cpu) = cpu.parse::<usize>() {
        pin_or_warn(cpu);
    }
    let arg = std::env::var_os(ENV_ARG).expect("child argument");
    match t {
        Transport::Shm => {
            let seg = Segment::attach_path(std::path::Path::new(&arg)).expect("attach");
            let parent = if std::env::var("LOCKSTEP_BENCH_PIDFD").is_ok_and(|v| v == "0") {
                None
            } else {
                PidFd::open(nix::unistd::getppid().as_raw() as u32).ok()
            };
            let (tx, rx, _seg) = Endpoint::new(seg, parent, None, mode.policy()).split();
            child_loop(&mut ShmTx(tx), &mut ShmRx(rx), size);
        }
        Transport::Socketpair => {
            let fd: i32 = arg.to_str().and_then(|s| s.parse().ok()).expect("fd");
            // SAFETY: the parent passed us this inherited socket fd, which
            // nothing else in this process owns.
            let s = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            s.set_nonblocking(mode == Mode::Spin).expect("nonblocking");
            let w = s.try_clone().expect("clone socket");
            let mut tx = SockTx {
                s: w,
                scratch: Vec::new(),
            };
            child_loop(&mut tx, &mut SockRx::new(s, size), size);
        }
        Transport::IpcChannel => {
            let name = arg.into_string().expect("server name");
            let (to_child_tx, to_child_rx) = ipc_channel::ipc::bytes_channel().expect("channel");
            let (to_parent_tx, to_parent_rx) = ipc_channel::ipc::bytes_channel().expect("channel");
            let boot = ipc_channel::ipc::IpcSender::<IpcPair>::connect(name).expect("connect");
            boot.send((to_child_tx, to_parent_rx)).expect("bootstrap");
            let mut tx = IpcTx {
                tx: to_parent_tx,
                scratch: Vec::new(),
            };
            let mut rx = IpcRx {
                rx: to_child_rx,
                spin: mode == Mode::Spin,
            };
            child_loop(&mut tx, &mut rx, size);
        }
        Transport::Iceoryx2 => {
            #[cfg(feature = "bench-iceoryx2")]
            {
                let prefix = arg.into_string().expect("service prefix");
                let mut p = ice::ports(&prefix, "up", "down", size, mode == Mode::Park);
                child_loop(&mut p.tx, &mut p.rx, size);
            }
            #[cfg(not(feature = "bench-iceoryx2"))]
            panic!("built without the bench-iceoryx2 feature");
        }
        Transport::CacheLine => cacheline_child(std::path::Path::new(&arg)),
    }
}

/// One run of one row in a fresh child process.
fn run_once(t: Transport, size: usize, mode: Mode, cfg: &Config) -> RunResult {
    let child_cpu = cfg.cpus.map(|(_, c)| c);
    match t {
        Transport::CacheLine => cacheline_run(cfg, child_cpu),
        Transport::Shm => {
            let path = unique_path("seg");
            let seg = Segment::create(SegmentConfig::default(), Backing::File(path.clone()))
                .expect("create segment");
            let cap = seg.info().capacities[0];
            // A batch never exceeds a quarter of the ring.
            let batch = cfg.batch.min((cap / 4 / (size + 8)).max(1));
            let mut child = spawn_child(t, size, mode, child_cpu, &path);
            let pidfd = if cfg.pidfd {
                Some(PidFd::open(child.id()).expect("pidfd"))
            } else {
                None
            };
            let (tx, rx, seg) = Endpoint::new(seg, pidfd, None, mode.policy()).split();
            let r = parent_session(&mut ShmTx(tx), &mut ShmRx(rx), size, batch, cfg);
            wait_child(&mut child);
            drop(seg);
            r
        }
        Transport::Socketpair => {
            let (a, b) = UnixStream::pair().expect("socketpair");
            // `dup` clears close-on-exec, so the child inherits this copy.
            let inherit = nix::unistd::dup(&b).expect("dup");
            let fd = std::os::fd::AsRawFd::as_raw_fd(&inherit);
            let mut child = spawn_child(t, size, mode, child_cpu, fd.to_string());
            drop(inherit);
            drop(b);
            a.set_nonblocking(mode == Mode::Spin).expect("nonblocking");
            let w = a.try_clone().expect("clone socket");
            let mut tx = SockTx {
                s: w,
                scratch: Vec::new(),
            };
            let r = parent_session(&mut tx, &mut SockRx::new(a, size), size, 1, cfg);
            wait_child(&mut child);
            r
        }
        Transport::IpcChannel => {
            let (server, name) =
                ipc_channel::ipc::IpcOneShotServer::<IpcPair>::new().expect("ipc server");
            let mut child = spawn_child(t, size, mode, child_cpu, name);
            let (_boot, (to_child, from_child)) = server.accept().expect("ipc accept");
            let mut tx = IpcTx {
                tx: to_child,
                scratch: Vec::new(),
            };
            let mut rx = IpcRx {
                rx: from_child,
                spin: mode == Mode::Spin,
            };
            let r = parent_session(&mut tx, &mut rx, size, 1, cfg);
            wait_child(&mut child);
            r
        }
        Transport::Iceoryx2 => {
            #[cfg(feature = "bench-iceoryx2")]
            {
                static N: AtomicU64 = AtomicU64::new(0);
                let prefix = format!(
                    "lockstep-bench/{}/{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                );
                // Create both services (and our ports) before the child opens them.
                let mut p = ice::ports(&prefix, "down", "up", size, mode == Mode::Park);
                let mut child = spawn_child(t, size, mode, child_cpu, &prefix);
                let r = parent_session(&mut p.tx, &mut p.rx, size, 1, cfg);
                wait_child(&mut child);
                r
            }
            #[cfg(not(feature = "bench-iceoryx2"))]
            unreachable!("iceoryx2 rows are only listed with the bench-iceoryx2 feature")
        }
    }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Row {
    t: Transport,
    size: usize,
    mode: Mode,
    runs: Vec<RunResult>,
}

fn stat(v: Vec<f64>) -> Option<Stat> {
    Some(Stat::of(&v)).filter(|s| !s.is_empty())
}

impl Row {
    fn name(&self) -> String {
        format!(
            "{}/{}/{}",
            self.t.name(),
            size_name(self.size),
            self.mode.name()
        )
    }
    fn throughput(&self) -> Option<Stat> {
        stat(self.runs.iter().filter_map(|r| r.msgs_per_s).collect())
    }
    fn rtt(&self, i: usize) -> Option<Stat> {
        stat(
            self.runs
                .iter()
                .filter_map(|r| r.rtt.map(|p| p[i]))
                .collect(),
        )
    }
}

fn size_name(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn us(ns: f64) -> String {
    let u = ns / 1e3;
    if u < 10.0 {
        format!("{u:.2}")
    } else if u < 100.0 {
        format!("{u:.1}")
    } else {
        format!("{u:.0}")
    }
}

fn with_spread(s: Option<Stat>, f: impl Fn(f64) -> String, runs: usize) -> String {
    match s {
        None => "—".to_owned(),
        Some(s) if runs > 1 => format!("{} ({}–{})", f(s.med), f(s.min), f(s.max)),
        Some(s) => f(s.med),
    }
}

fn ratio(a: Option<Stat>, b: Option<Stat>, higher_is_better: bool) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.med > 0.0 && b.med > 0.0 => {
            let r = if higher_is_better {
                a.med / b.med
            } else {
                b.med / a.med
            };
            format!("{r:.2}×")
        }
        _ => "—".to_owned(),
    }
}

fn print_table(rows: &[Row], cfg: &Config) {
    let mut out = String::new();
    let runs = cfg.runs;
    let _ = writeln!(
        out,
        "\nMedian of {runs} run(s), spread (min–max) in parentheses.  RTT in µs.  \
         ×sock: throughput ratio and RTT p50 speed-up vs socketpair (same size and mode).\n"
    );
    let _ = writeln!(
        out,
        "| transport | size | mode | msg/s | GB/s | ×sock thr | RTT p50 µs | RTT p99 µs | RTT p99.9 µs | ×sock p50 |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let sock = rows
            .iter()
            .find(|s| s.t == Transport::Socketpair && s.size == r.size && s.mode == r.mode);
        let thr = r.throughput();
        let gbs = thr.map(|s| s.map(|v| v * r.size as f64 / 1e9));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.t.name(),
            size_name(r.size),
            r.mode.name(),
            with_spread(thr, si, runs),
            with_spread(gbs, |v| format!("{v:.2}"), runs),
            ratio(thr, sock.and_then(Row::throughput), true),
            with_spread(r.rtt(0), us, runs),
            with_spread(r.rtt(1), us, runs),
            with_spread(r.rtt(2), us, runs),
            ratio(r.rtt(0), sock.and_then(|s| s.rtt(0)), false),
        );
    }
    print!("{out}");
}

/// Median cost of two back-to-back `Instant::now()` calls.
fn timer_overhead_ns() -> f64 {
    let mut v: Vec<u64> = (0..10_001)
        .map(|_| {
            let t0 = Instant::now();
            black_box(t0).elapsed().as_nanos() as u64
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2] as f64
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

fn main() {
    if let Ok(spec) = std::env::var(ENV_CHILD) {
        child_main(&spec);
        return;
    }
    let cfg = Config::from_env();
    println!("# Transport benchmark");
    preamble();
    // A watchdog: a wedged run must not hang CI forever.
    static PROGRESS: AtomicU64 = AtomicU64::new(0);
    std::thread::spawn(|| {
        let mut last = u64::MAX;
        loop {
            std::thread::sleep(Duration::from_secs(120));
            let now = PROGRESS.load(Ordering::Relaxed);
            if now == last {
                eprintln!("transport bench: no progress for 120 s, aborting");
                std::process::exit(3);
            }
            last = now;
        }
    });
    if let Some((p, _)) = cfg.cpus {
        pin_or_warn(p);
    }
    let mut transports = vec![Transport::Shm];
    if cfg!(feature = "bench-iceoryx2") {
        transports.push(Transport::Iceoryx2);
    }
    transports.extend([Transport::IpcChannel, Transport::Socketpair]);
    let mut rows = Vec::new();
    for &size in &SIZES {
        for mode in [Mode::Spin, Mode::Park] {
            for &t in &transports {
                rows.push(Row {
                    t,
                    size,
                    mode,
                    runs: Vec::new(),
                });
            }
        }
    }
    rows.push(Row {
        t: Transport::CacheLine,
        size: 8,
        mode: Mode::Spin,
        runs: Vec::new(),
    });
    rows.retain(|r| cfg.selected(&r.name()));
    eprintln!(
        "transport bench: {} row(s) × {} run(s){}; CPUs {}; iceoryx2 {}",
        rows.len(),
        cfg.runs,
        if cfg.quick { " (quick mode)" } else { "" },
        cfg.cpus.map_or_else(
            || "not pinned (fewer than 2 allowed)".to_owned(),
            |(p, c)| format!("parent {p}, child {c}")
        ),
        if cfg!(feature = "bench-iceoryx2") {
            "included"
        } else {
            "not built (enable feature bench-iceoryx2)"
        },
    );
    eprintln!(
        "transport bench: Instant::now() pair costs ≈ {:.0} ns (included in every RTT sample)",
        timer_overhead_ns()
    );
    let started = Instant::now();
    let whole = CpuSnapshot::now();
    // Runs are interleaved (run 1 of every row, then run 2, ...) so that a
    // noisy phase of the machine spreads over all rows instead of one.
    for run in 0..cfg.runs {
        for row in rows.iter_mut() {
            let before = CpuSnapshot::now();
            let r = run_once(row.t, row.size, row.mode, &cfg);
            let foreign = before.and_then(|b| b.other_load_since());
            PROGRESS.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "  run {}/{} {:<32} {:>9} msg/s  rtt p50 {:>7} µs  p99.9 {:>7} µs  other load {:>4}",
                run + 1,
                cfg.runs,
                row.name(),
                r.msgs_per_s.map_or_else(|| "—".to_owned(), si),
                r.rtt.map_or_else(|| "—".to_owned(), |p| us(p[0])),
                r.rtt.map_or_else(|| "—".to_owned(), |p| us(p[2])),
                foreign.map_or_else(|| "?".to_owned(), |l| format!("{:.0}%", l.others * 100.0)),
            );
            row.runs.push(r);
        }
    }
    print_table(&rows, &cfg);
    if let Some(l) = whole.and_then(|w| w.other_load_since()) {
        println!("\nDuring the bench {l}; 0 % is a quiet machine.");
    }
    eprintln!(
        "transport bench: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
