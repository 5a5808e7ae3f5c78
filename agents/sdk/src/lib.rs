//! Guest-side SDK for Lockstep agents (agent ABI v1.0, `docs/abi.md`).
//!
//! An agent is a type implementing [`Agent`]; [`export_agent!`] generates the
//! exports the runtime calls:
//!
//! ```
//! #![cfg_attr(target_arch = "wasm32", no_std)]
//! use lockstep_agent_sdk::{Agent, Message, StepContext, export_agent, info};
//!
//! /// Logs every 10th tick.
//! struct Hello;
//!
//! impl Agent for Hello {
//!     fn init() -> Self {
//!         Hello
//!     }
//!     fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
//!         if ctx.tick % 10 == 0 {
//!             let _ = info!("hello at tick {}", ctx.tick);
//!         }
//!         Ok(())
//!     }
//!     fn receive(&mut self, _msg: &Message<'_>) -> Result<(), i32> {
//!         Ok(())
//!     }
//! }
//!
//! export_agent!(Hello);
//! # fn main() {}
//! ```
//!
//! Build it as a `cdylib` for `wasm32-unknown-unknown` with `panic = "abort"`
//! (see `agents/README.md` and `scripts/build-agents.sh`).  The crate must be
//! `no_std` on wasm32: the macro supplies the `#[panic_handler]` (it logs the
//! panic, then executes `unreachable`), and the SDK supplies a deterministic
//! global allocator ([`heap`], feature `allocator`, on by default).
//!
//! Contents:
//! * [`host`] — safe wrappers over every `lockstep` import, plus the logging
//!   macros [`log!`], [`error!`], [`warn!`], [`info!`], [`debug!`];
//! * [`layout`] — [`StepContext`] and [`Message`] parsed (and validated) from
//!   the host's layouts;
//! * [`tensor`] — encoding and decoding of the inference tensor format;
//! * [`arch`] — `unreachable`, `memory.size` and `memory.grow`.
//!
//! Everything except the imports, the allocator and the panic handler also
//! compiles on the host, where the imports go to [`host::mock`], so agent
//! logic can be unit-tested with plain `cargo test`.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod arch;
pub mod heap;
pub mod host;
pub mod layout;
pub mod tensor;

#[doc(hidden)]
pub mod rt;

#[doc(hidden)]
pub use rt as __rt;

pub use host::{HostError, HostResult, Level};
pub use layout::{ABI_VERSION, Message, MessageKind, StepContext};

#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
#[global_allocator]
static ALLOCATOR: heap::LockstepAllocator = heap::LockstepAllocator::new();

/// Agent error codes the SDK itself returns from the exports.  (Host refusals
/// propagated with `?` are `-1` … `-4`; pick positive codes for your own.)
pub mod codes {
    /// `agent_step` / `agent_receive` before `agent_init`.
    pub const ERR_NOT_INITIALIZED: i32 = -1000;
    /// The host's context or message failed validation.
    pub const ERR_BAD_LAYOUT: i32 = -1001;
    /// The agent returned `Err(0)`, which would otherwise read as success.
    pub const ERR_ZERO_CODE: i32 = -1002;
}

/// An agent: the state kept between calls and its reactions to the runtime.
///
/// A method returning `Err(code)` is an agent error: the runtime records the
/// fault `agent_error:<code>` and applies the restart policy.  A panic traps.
pub trait Agent: Sized {
    /// Creates the agent (`agent_init`; also after a restart by policy).
    fn init() -> Self;
    /// One scheduled step (`agent_step`).
    fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32>;
    /// One delivered message (`agent_receive`), before this tick's step.
    fn receive(&mut self, msg: &Message<'_>) -> Result<(), i32>;
    /// Called once before the agent is stopped (`agent_shutdown`).
    fn shutdown(&mut self) -> Result<(), i32> {
        Ok(())
    }
}

/// Agents that support hot-swap upgrades: `export_agent!(T, migrate)` also
/// exports `agent_migrate`.
pub trait Migrate: Agent {
    /// Called after a hot-swap upgrade, before the next step, with the old
    /// module's `agent_abi_version`.  If the runtime did not call `agent_init`
    /// on the new module, [`Agent::init`] runs first.
    fn migrate(&mut self, from_version: u32) -> Result<(), i32>;
}

/// Generates the ABI exports for an [`Agent`] type: `agent_abi_version`,
/// `agent_buffer`, `agent_init`, `agent_step`, `agent_receive`,
/// `agent_shutdown` (and `agent_migrate` with `export_agent!(T, migrate)`,
/// for `T: Migrate`), plus the `#[panic_handler]` on wasm32.  Use once per
/// module.
#[macro_export]
macro_rules! export_agent {
    (@opt migrate, $agent:ty, $cell:ident) => {
        /// ABI export: called after a hot-swap upgrade.
        #[unsafe(no_mangle)]
        pub extern "C" fn agent_migrate(from_version: i32) -> i32 {
            // SAFETY: the runtime calls exports one at a time on this
            // single-threaded instance, and never re-entrantly.
            unsafe { $crate::__rt::migrate::<$agent>(&$cell, from_version) }
        }
    };
    ($agent:ty $(, $opt:ident)? $(,)?) => {
        const _: () = {
            static AGENT: $crate::__rt::AgentCell<$agent> = $crate::__rt::AgentCell::new();

            /// ABI export: the ABI version this module implements.
            #[unsafe(no_mangle)]
            pub extern "C" fn agent_abi_version() -> i32 {
                $crate::ABI_VERSION as i32
            }

            /// ABI export: a buffer for the host to write a context or message into.
            #[unsafe(no_mangle)]
            pub extern "C" fn agent_buffer(len: i32) -> i32 {
                // SAFETY: exports run one at a time on a single-threaded
                // instance; the previous call's views into the buffer are gone.
                unsafe { $crate::__rt::buffer(len) as usize as i32 }
            }

            /// ABI export: create the agent.
            #[unsafe(no_mangle)]
            pub extern "C" fn agent_init() -> i32 {
                // SAFETY: exports run one at a time, never re-entrantly.
                unsafe { $crate::__rt::init::<$agent>(&AGENT) }
            }

            /// ABI export: one scheduled step.
            #[unsafe(no_mangle)]
            pub extern "C" fn agent_step(ctx_ptr: i32) -> i32 {
                let ctx = ctx_ptr as u32 as usize as *const u8;
                // SAFETY: exports run one at a time, never re-entrantly, and
                // the host wrote the context at `ctx_ptr` for this call.
                unsafe { $crate::__rt::step::<$agent>(&AGENT, ctx) }
            }

            /// ABI export: one delivered message.
            #[unsafe(no_mangle)]
            pub extern "C" fn agent_receive(msg_ptr: i32) -> i32 {
                let msg = msg_ptr as u32 as usize as *const u8;
                // SAFETY: exports run one at a time, never re-entrantly, and
                // the host wrote the message at `msg_ptr` for this call.
                unsafe { $crate::__rt::receive::<$agent>(&AGENT, msg) }
            }

            /// ABI export: the agent is about to be stopped.
            #[unsafe(no_mangle)]
            pub extern "C" fn agent_shutdown() -> i32 {
                // SAFETY: exports run one at a time, never re-entrantly.
                unsafe { $crate::__rt::shutdown::<$agent>(&AGENT) }
            }

            $( $crate::export_agent!(@opt $opt, $agent, AGENT); )?

            #[cfg(target_arch = "wasm32")]
            #[panic_handler]
            fn panic(info: &::core::panic::PanicInfo<'_>) -> ! {
                $crate::__rt::panic(info)
            }
        };
    };
}

/// Compiles the Rust examples in `agents/README.md` as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
