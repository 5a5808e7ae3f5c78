//! Ping half of a ping-pong pair: sends its counter to agent `agent_id() + 1`, waits for the echo, repeats.
#![cfg_attr(target_arch = "wasm32", no_std)]

use core::sync::atomic::{AtomicU64, Ordering};

use lockstep_agent_sdk::{
    Agent, Message, MessageKind, StepContext, export_agent, host, info, warn,
};

/// Re-send the outstanding ping if no echo arrived within this many ticks.
const RESEND_AFTER: u64 = 10;

/// Echoes received (exposed through `ping_echoes`).
static ECHOES: AtomicU64 = AtomicU64::new(0);

/// The ping agent.
#[derive(Debug)]
pub struct Ping {
    peer: u64,
    counter: u64,
    /// Counter value in flight and the tick it was (last) sent in.
    outstanding: Option<(u64, u64)>,
    refused: bool,
}

impl Agent for Ping {
    fn init() -> Self {
        ECHOES.store(0, Ordering::Relaxed);
        Ping {
            peer: host::agent_id() + 1,
            counter: 0,
            outstanding: None,
            refused: false,
        }
    }

    fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
        let due = match self.outstanding {
            None => true,
            Some((_, sent)) => ctx.tick.saturating_sub(sent) >= RESEND_AFTER,
        };
        if !due {
            return Ok(());
        }
        if self.outstanding.is_some() {
            let _ = warn!("ping: no echo for {} yet, re-sending", self.counter);
        }
        match host::send(self.peer, &self.counter.to_le_bytes()) {
            Ok(()) => {
                self.outstanding = Some((self.counter, ctx.tick));
                self.refused = false;
            }
            Err(e) if !self.refused => {
                self.refused = true;
                let _ = warn!("ping: send to {} refused: {}", self.peer, e);
            }
            Err(_) => {}
        }
        Ok(())
    }

    fn receive(&mut self, msg: &Message<'_>) -> Result<(), i32> {
        if msg.kind != MessageKind::Direct || msg.sender != self.peer {
            return Ok(());
        }
        let Ok(bytes) = <[u8; 8]>::try_from(msg.payload) else {
            let _ = warn!("ping: malformed echo ({} bytes)", msg.payload.len());
            return Ok(());
        };
        let value = u64::from_le_bytes(bytes);
        match self.outstanding {
            Some((expected, _)) if expected == value => {
                self.outstanding = None;
                self.counter += 1;
                let echoes = ECHOES.fetch_add(1, Ordering::Relaxed) + 1;
                if echoes % 100 == 0 {
                    let _ = info!("ping: {} echoes", echoes);
                }
            }
            // A stale echo (e.g. of a re-sent ping, or from before a restart).
            _ => {
                let _ = warn!("ping: ignoring stale echo {}", value);
            }
        }
        Ok(())
    }
}

export_agent!(Ping);

/// Extra export (ignored by the runtime): echoes received since `agent_init`.
#[unsafe(no_mangle)]
pub extern "C" fn ping_echoes() -> i64 {
    ECHOES.load(Ordering::Relaxed) as i64
}
