//! Safe wrappers over the `lockstep` host imports (`docs/abi.md`, "Imports").
//!
//! On `wasm32` these call the real imports (see [`raw`]).  On other targets
//! they go to an in-process [`mock`] that records every call, so agent logic
//! can be unit-tested on the host.

use core::fmt;

/// A refusal returned by a host import (a negative return value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostError {
    /// `-1`: invalid argument.
    InvalidArgument,
    /// `-2`: quota exceeded.
    QuotaExceeded,
    /// `-3`: too large.
    TooLarge,
    /// `-4`: unknown target.
    UnknownTarget,
    /// Another negative code (from a later minor version).
    Other(i64),
}

impl HostError {
    /// Maps a negative return value to an error.
    pub fn from_code(code: i64) -> Self {
        match code {
            -1 => Self::InvalidArgument,
            -2 => Self::QuotaExceeded,
            -3 => Self::TooLarge,
            -4 => Self::UnknownTarget,
            other => Self::Other(other),
        }
    }

    /// The raw (negative) code, saturated to `i32`: usable as an agent error
    /// code, which is what `?` does in an [`Agent`](crate::Agent) method.
    pub fn code(self) -> i32 {
        match self {
            Self::InvalidArgument => -1,
            Self::QuotaExceeded => -2,
            Self::TooLarge => -3,
            Self::UnknownTarget => -4,
            Self::Other(c) => c.clamp(i32::MIN as i64, -1) as i32,
        }
    }
}

impl From<HostError> for i32 {
    fn from(e: HostError) -> i32 {
        e.code()
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidArgument => f.write_str("invalid argument"),
            Self::QuotaExceeded => f.write_str("quota exceeded"),
            Self::TooLarge => f.write_str("too large"),
            Self::UnknownTarget => f.write_str("unknown target"),
            Self::Other(c) => write!(f, "refused ({c})"),
        }
    }
}

/// Result of a host call.
pub type HostResult<T> = Result<T, HostError>;

fn status(code: i32) -> HostResult<()> {
    if code < 0 {
        Err(HostError::from_code(code as i64))
    } else {
        Ok(())
    }
}

fn id(code: i64) -> HostResult<u64> {
    if code < 0 {
        Err(HostError::from_code(code))
    } else {
        Ok(code as u64)
    }
}

/// Log levels for [`log`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i32)]
pub enum Level {
    /// `0`
    Error = 0,
    /// `1`
    Warn = 1,
    /// `2`
    Info = 2,
    /// `3`
    Debug = 3,
    /// `4`
    Trace = 4,
}

/// Pointer and length of a byte slice, as the ABI passes them (`i32`,
/// interpreted as unsigned by the host).
#[cfg(target_arch = "wasm32")]
#[inline]
fn pl(bytes: &[u8]) -> (i32, i32) {
    (bytes.as_ptr() as usize as i32, bytes.len() as i32)
}

/// The raw imports, exactly as declared in `docs/abi.md`.
///
/// Calling them is memory-safe for the agent whatever the arguments (the host
/// only reads agent memory, and validates every pointer and length: a bad one
/// faults the agent with `bad_host_call`), but they are `unsafe` because a
/// wrong pointer is a fault rather than a refusal.  Prefer the safe wrappers
/// in [`host`](crate::host).
#[cfg(target_arch = "wasm32")]
pub mod raw {
    #[link(wasm_import_module = "lockstep")]
    unsafe extern "C" {
        /// Direct message to agent `to`.
        pub fn send(to: i64, ptr: i32, len: i32) -> i32;
        /// Message to every subscriber of the topic.
        pub fn publish(topic_ptr: i32, topic_len: i32, ptr: i32, len: i32) -> i32;
        /// Subscribe (from the next tick).
        pub fn subscribe(topic_ptr: i32, topic_len: i32) -> i32;
        /// Unsubscribe.
        pub fn unsubscribe(topic_ptr: i32, topic_len: i32) -> i32;
        /// Join a channel.
        pub fn join_channel(name_ptr: i32, name_len: i32) -> i32;
        /// Leave a channel.
        pub fn leave_channel(name_ptr: i32, name_len: i32) -> i32;
        /// Message to every current member of the channel.
        pub fn channel_send(name_ptr: i32, name_len: i32, ptr: i32, len: i32) -> i32;
        /// Schedules a task; returns the task id (`> 0`) or a negative refusal.
        pub fn schedule_task(
            agent: i64,
            priority: i32,
            ptr: i32,
            len: i32,
            deps_ptr: i32,
            deps_len: i32,
        ) -> i64;
        /// Asynchronous inference; returns the request id (`> 0`) or a refusal.
        pub fn infer(model_ptr: i32, model_len: i32, input_ptr: i32, input_len: i32) -> i64;
        /// Logs a UTF-8 line at `level` (`0` error … `4` trace).
        pub fn log(level: i32, ptr: i32, len: i32) -> i32;
        /// Next value of the agent's deterministic random stream.
        pub safe fn random() -> i64;
        /// The current tick.
        pub safe fn tick() -> i64;
        /// This agent's id.
        pub safe fn agent_id() -> i64;
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use mock::raw;

/// Host-side stand-in for the imports (non-`wasm32` targets only): records
/// every call in a thread-local log so agent logic can be unit-tested.
#[cfg(not(target_arch = "wasm32"))]
pub mod mock {
    extern crate std;

    use alloc::string::String;
    use alloc::vec::Vec;
    use std::cell::RefCell;

    /// One recorded host call.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum HostCall {
        /// `send`
        Send {
            /// Target agent.
            to: u64,
            /// Payload.
            payload: Vec<u8>,
        },
        /// `publish`
        Publish {
            /// Topic.
            topic: Vec<u8>,
            /// Payload.
            payload: Vec<u8>,
        },
        /// `subscribe`
        Subscribe(Vec<u8>),
        /// `unsubscribe`
        Unsubscribe(Vec<u8>),
        /// `join_channel`
        JoinChannel(Vec<u8>),
        /// `leave_channel`
        LeaveChannel(Vec<u8>),
        /// `channel_send`
        ChannelSend {
            /// Channel name.
            name: Vec<u8>,
            /// Payload.
            payload: Vec<u8>,
        },
        /// `schedule_task`
        ScheduleTask {
            /// Target agent.
            agent: u64,
            /// Priority.
            priority: i32,
            /// Payload.
            payload: Vec<u8>,
            /// Dependencies.
            deps: Vec<u64>,
        },
        /// `infer`
        Infer {
            /// Model name.
            model: Vec<u8>,
            /// Encoded input tensor.
            input: Vec<u8>,
        },
        /// `log`
        Log {
            /// Level (`0`..=`4`).
            level: i32,
            /// The line (lossily decoded).
            line: String,
        },
    }

    #[derive(Default)]
    struct State {
        tick: u64,
        agent_id: u64,
        random_n: u64,
        next_task: u64,
        next_request: u64,
        refuse: Option<i32>,
        calls: Vec<HostCall>,
    }

    std::thread_local! {
        static STATE: RefCell<State> = RefCell::new(State { agent_id: 1, ..State::default() });
    }

    /// Resets this thread's mock (agent id 1, tick 0, nothing recorded).
    pub fn reset() {
        STATE.with(|s| {
            *s.borrow_mut() = State {
                agent_id: 1,
                ..State::default()
            }
        });
    }

    /// Sets the value `tick()` returns.
    pub fn set_tick(tick: u64) {
        STATE.with(|s| s.borrow_mut().tick = tick);
    }

    /// Sets the value `agent_id()` returns.
    pub fn set_agent_id(id: u64) {
        STATE.with(|s| s.borrow_mut().agent_id = id);
    }

    /// Makes every following call return `code` (negative), or accept again
    /// with `None`.  Calls are recorded either way.
    pub fn set_refusal(code: Option<i32>) {
        STATE.with(|s| s.borrow_mut().refuse = code);
    }

    /// Takes the calls recorded so far.
    pub fn take_calls() -> Vec<HostCall> {
        STATE.with(|s| core::mem::take(&mut s.borrow_mut().calls))
    }

    fn record(call: HostCall) -> i32 {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.calls.push(call);
            s.refuse.unwrap_or(0)
        })
    }

    /// Host-side replacements for the raw imports.  They take slices rather
    /// than addresses; the safe wrappers are the only callers.
    pub mod raw {
        use super::*;

        pub(crate) fn send(to: u64, payload: &[u8]) -> i32 {
            record(HostCall::Send {
                to,
                payload: payload.to_vec(),
            })
        }
        pub(crate) fn publish(topic: &[u8], payload: &[u8]) -> i32 {
            record(HostCall::Publish {
                topic: topic.to_vec(),
                payload: payload.to_vec(),
            })
        }
        pub(crate) fn subscribe(topic: &[u8]) -> i32 {
            record(HostCall::Subscribe(topic.to_vec()))
        }
        pub(crate) fn unsubscribe(topic: &[u8]) -> i32 {
            record(HostCall::Unsubscribe(topic.to_vec()))
        }
        pub(crate) fn join_channel(name: &[u8]) -> i32 {
            record(HostCall::JoinChannel(name.to_vec()))
        }
        pub(crate) fn leave_channel(name: &[u8]) -> i32 {
            record(HostCall::LeaveChannel(name.to_vec()))
        }
        pub(crate) fn channel_send(name: &[u8], payload: &[u8]) -> i32 {
            record(HostCall::ChannelSend {
                name: name.to_vec(),
                payload: payload.to_vec(),
            })
        }
        pub(crate) fn schedule_task(
            agent: u64,
            priority: i32,
            payload: &[u8],
            deps: &[u64],
        ) -> i64 {
            let call = HostCall::ScheduleTask {
                agent,
                priority,
                payload: payload.to_vec(),
                deps: deps.to_vec(),
            };
            match record(call) {
                0 => STATE.with(|s| {
                    let mut s = s.borrow_mut();
                    s.next_task += 1;
                    (s.agent_id << 32 | s.next_task) as i64
                }),
                refused => refused as i64,
            }
        }
        pub(crate) fn infer(model: &[u8], input: &[u8]) -> i64 {
            match record(HostCall::Infer {
                model: model.to_vec(),
                input: input.to_vec(),
            }) {
                0 => STATE.with(|s| {
                    let mut s = s.borrow_mut();
                    s.next_request += 1;
                    s.next_request as i64
                }),
                refused => refused as i64,
            }
        }
        pub(crate) fn log(level: i32, line: &[u8]) -> i32 {
            record(HostCall::Log {
                level,
                line: String::from_utf8_lossy(line).into_owned(),
            })
        }
        /// Deterministic stand-in: splitmix64 over a per-thread counter.
        pub fn random() -> i64 {
            STATE.with(|s| {
                let mut s = s.borrow_mut();
                s.random_n = s.random_n.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s.random_n;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)) as i64
            })
        }
        /// The value set with [`set_tick`](super::set_tick).
        pub fn tick() -> i64 {
            STATE.with(|s| s.borrow().tick as i64)
        }
        /// The value set with [`set_agent_id`](super::set_agent_id).
        pub fn agent_id() -> i64 {
            STATE.with(|s| s.borrow().agent_id as i64)
        }
    }
}

// The safe wrappers.  Each `cfg` pair keeps the wasm and host paths side by side.

/// Sends `payload` directly to agent `to` (delivered next tick).
pub fn send(to: u64, payload: &[u8]) -> HostResult<()> {
    #[cfg(target_arch = "wasm32")]
    {
        let (p, l) = pl(payload);
        // SAFETY: `p`/`l` describe a live slice in this module's memory.
        status(unsafe { raw::send(to as i64, p, l) })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        status(raw::send(to, payload))
    }
}

/// Publishes `payload` on `topic` to every subscriber (delivered next tick).
pub fn publish(topic: &str, payload: &[u8]) -> HostResult<()> {
    #[cfg(target_arch = "wasm32")]
    {
        let ((tp, tl), (p, l)) = (pl(topic.as_bytes()), pl(payload));
        // SAFETY: both pairs describe live slices in this module's memory.
        status(unsafe { raw::publish(tp, tl, p, l) })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        status(raw::publish(topic.as_bytes(), payload))
    }
}

/// Subscribes to `topic` (effective from the next tick).
pub fn subscribe(topic: &str) -> HostResult<()> {
    #[cfg(target_arch = "wasm32")]
    {
        let (p, l) = pl(topic.as_bytes());
        // SAFETY: `p`/`l` describe a live slice in this module's memory.
        status(unsafe { raw::subscribe(p, l) })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        status(raw::subscribe(topic.as_bytes()))
    }
}

/// Unsubscribes from `topic`.
pub fn unsubscribe(topic: &str) -> HostResult<()> {
    #[cfg(target_arch = "wasm32")]
    {
        let (p, l) = pl(topic.as_bytes());
        // SAFETY: `p`/`l` describe a live slice in this module's memory.
        status(unsafe { raw::unsubscribe(p, l) })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        status(raw::unsubscribe(topic.as_bytes()))
    }
}

/// Joins channel `name`.
pub fn join_channel(name: &str) -> HostResult<()> {
    #[cfg(target_arch = "wasm32")]
    {
        let (p, l) = pl(name.as_bytes());
        // SAFETY: `p`/`l` describe a live slice in this module's memory.
        status(unsafe { raw::join_channel(p, l) })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        status(raw::join_channel(name.as_bytes()))
    }
}

/// Leaves channel `name`.
pub fn leave_channel(name: &str) -> HostResult<()> {
    #[cfg(target_arch = "wasm32")]
    {
        let (p, l) = pl(name.as_bytes());
        // SAFETY: `p`/`l` describe a live slice in this module's memory.
        status(unsafe { raw::leave_channel(p, l) })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        status(raw::leave_channel(name.as_bytes()))
    }
}

/// Sends `payload` to every current member of channel `name`.
pub fn channel_send(name: &str, payload: &[u8]) -> HostResult<()> {
    #[cfg(target_arch = "wasm32")]
    {
        let ((np, nl), (p, l)) = (pl(name.as_bytes()), pl(payload));
        // SAFETY: both pairs describe live slices in this module's memory.
        status(unsafe { raw::channel_send(np, nl, p, l) })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        status(raw::channel_send(name.as_bytes(), payload))
    }
}

/// Schedules a task for `agent` with `payload`, depending on the task ids in
/// `deps`; returns the new task id.
pub fn schedule_task(agent: u64, priority: i32, payload: &[u8], deps: &[u64]) -> HostResult<u64> {
    #[cfg(target_arch = "wasm32")]
    {
        let (p, l) = pl(payload);
        let dp = deps.as_ptr() as usize as i32;
        let dl = deps.len() as i32;
        // SAFETY: `p`/`l` describe a live byte slice and `dp`/`dl` a live
        // `u64` slice (`dl` elements), both in this module's memory.
        id(unsafe { raw::schedule_task(agent as i64, priority, p, l, dp, dl) })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        id(raw::schedule_task(agent, priority, payload, deps))
    }
}

/// Requests inference on `model` (`id` or `id@version`) with an encoded
/// [tensor](crate::tensor) `input`; returns the request id.  The answer
/// arrives later as a kind 3 or 4 message whose `seq` is the request id.
pub fn infer(model: &str, input: &[u8]) -> HostResult<u64> {
    #[cfg(target_arch = "wasm32")]
    {
        let ((mp, ml), (p, l)) = (pl(model.as_bytes()), pl(input));
        // SAFETY: both pairs describe live slices in this module's memory.
        id(unsafe { raw::infer(mp, ml, p, l) })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        id(raw::infer(model.as_bytes(), input))
    }
}

/// Logs `line` at `level` (rate-limited per agent by the runtime).
pub fn log(level: Level, line: &str) -> HostResult<()> {
    #[cfg(target_arch = "wasm32")]
    {
        let (p, l) = pl(line.as_bytes());
        // SAFETY: `p`/`l` describe a live slice in this module's memory.
        status(unsafe { raw::log(level as i32, p, l) })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        status(raw::log(level as i32, line.as_bytes()))
    }
}

/// Next value of this agent's deterministic random stream.
pub fn random() -> u64 {
    raw::random() as u64
}

/// A deterministic random `f32` in `[0, 1)` (24 bits of [`random`]).
pub fn random_f32() -> f32 {
    (random() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// The current tick.
pub fn tick() -> u64 {
    raw::tick() as u64
}

/// This agent's id.
pub fn agent_id() -> u64 {
    raw::agent_id() as u64
}

/// A fixed-capacity `fmt::Write` sink used by the logging macros: formats
/// without allocating, truncating (at a UTF-8 boundary) when full.
#[derive(Debug)]
pub struct LineBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> LineBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        // Only whole `str`s or char-boundary prefixes of them are ever copied in.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// Whether some output was dropped.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl<const N: usize> Default for LineBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for LineBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() {
            self.truncated = true;
        }
        Ok(())
    }
}

/// Formats and logs a line at a [`Level`], without allocating (lines longer
/// than 256 bytes are truncated).  Evaluates to the [`HostResult`] of [`log`].
///
/// ```
/// use lockstep_agent_sdk::{log, host::Level};
/// let _ = log!(Level::Info, "tick {} done", 42);
/// ```
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {{
        let mut line = $crate::host::LineBuf::<256>::new();
        let _ = ::core::fmt::Write::write_fmt(&mut line, ::core::format_args!($($arg)+));
        $crate::host::log($level, line.as_str())
    }};
}

/// [`log!`] at [`Level::Error`].
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::host::Level::Error, $($arg)+) };
}

/// [`log!`] at [`Level::Warn`].
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::host::Level::Warn, $($arg)+) };
}

/// [`log!`] at [`Level::Info`].
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::host::Level::Info, $($arg)+) };
}

/// [`log!`] at [`Level::Debug`].
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::host::Level::Debug, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::mock::{self, HostCall};
    use super::*;
    use alloc::vec;

    #[test]
    fn wrappers_record_calls() {
        mock::reset();
        mock::set_agent_id(5);
        mock::set_tick(12);
        assert_eq!(agent_id(), 5);
        assert_eq!(tick(), 12);
        send(6, b"hi").unwrap();
        publish("sensors", b"r").unwrap();
        subscribe("t").unwrap();
        unsubscribe("t").unwrap();
        join_channel("c").unwrap();
        leave_channel("c").unwrap();
        channel_send("c", b"x").unwrap();
        assert_eq!(schedule_task(6, 3, b"job", &[1, 2]).unwrap(), (5 << 32) | 1);
        assert_eq!(infer("mlp", b"t").unwrap(), 1);
        assert_eq!(infer("mlp", b"t").unwrap(), 2);
        crate::info!("n={}", 3).unwrap();
        let calls = mock::take_calls();
        assert_eq!(calls.len(), 11);
        assert_eq!(
            calls[0],
            HostCall::Send {
                to: 6,
                payload: b"hi".to_vec()
            }
        );
        assert_eq!(
            calls[7],
            HostCall::ScheduleTask {
                agent: 6,
                priority: 3,
                payload: b"job".to_vec(),
                deps: vec![1, 2]
            }
        );
        assert_eq!(
            calls[10],
            HostCall::Log {
                level: 2,
                line: "n=3".into()
            }
        );
    }

    #[test]
    fn refusals_map_to_errors() {
        mock::reset();
        mock::set_refusal(Some(-2));
        assert_eq!(send(1, b""), Err(HostError::QuotaExceeded));
        assert_eq!(infer("m", b""), Err(HostError::QuotaExceeded));
        mock::set_refusal(Some(-9));
        assert_eq!(publish("t", b""), Err(HostError::Other(-9)));
        assert_eq!(HostError::Other(-9).code(), -9);
        assert_eq!(HostError::Other(i64::MIN).code(), i32::MIN);
        assert_eq!(i32::from(HostError::UnknownTarget), -4);
        mock::reset();
    }

    #[test]
    fn random_is_deterministic() {
        mock::reset();
        let a = [random(), random(), random()];
        mock::reset();
        let b = [random(), random(), random()];
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
        let f = random_f32();
        assert!((0.0..1.0).contains(&f));
    }

    #[test]
    fn line_buf_truncates_at_char_boundary() {
        use core::fmt::Write;
        let mut b = LineBuf::<5>::new();
        write!(b, "ab€cd").unwrap();
        assert_eq!(b.as_str(), "ab€");
        assert!(b.truncated());
        let mut b = LineBuf::<4>::new();
        write!(b, "ab€").unwrap();
        assert_eq!(b.as_str(), "ab");
    }
}
