//! Subscribes to "sensors", sums and counts the readings, and publishes a summary on "summary" every 10 ticks.
//!
//! Summary payload (40 bytes, LE): `tick: u64`, `window_count: u64`,
//! `window_sum: i64` (readings since the previous summary), `total_count: u64`,
//! `total_sum: i64`.
#![cfg_attr(target_arch = "wasm32", no_std)]

use lockstep_agent_sdk::{
    Agent, Message, MessageKind, StepContext, export_agent, host, info, warn,
};

/// How often (in ticks) a summary is published.
pub const EVERY: u64 = 10;

/// The aggregator agent.
#[derive(Debug)]
pub struct Aggregator {
    subscribed: bool,
    window_count: u64,
    window_sum: i64,
    total_count: u64,
    total_sum: i64,
    malformed: u64,
}

fn subscribe() -> bool {
    match host::subscribe("sensors") {
        Ok(()) => true,
        Err(e) => {
            let _ = warn!("aggregator: subscribe refused: {}", e);
            false
        }
    }
}

impl Agent for Aggregator {
    fn init() -> Self {
        Aggregator {
            subscribed: subscribe(),
            window_count: 0,
            window_sum: 0,
            total_count: 0,
            total_sum: 0,
            malformed: 0,
        }
    }

    fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
        if !self.subscribed {
            self.subscribed = subscribe();
        }
        if ctx.tick % EVERY != 0 {
            return Ok(());
        }
        let mut payload = [0u8; 40];
        payload[0..8].copy_from_slice(&ctx.tick.to_le_bytes());
        payload[8..16].copy_from_slice(&self.window_count.to_le_bytes());
        payload[16..24].copy_from_slice(&self.window_sum.to_le_bytes());
        payload[24..32].copy_from_slice(&self.total_count.to_le_bytes());
        payload[32..40].copy_from_slice(&self.total_sum.to_le_bytes());
        if let Err(e) = host::publish("summary", &payload) {
            let _ = warn!("aggregator: publish refused: {}", e);
        }
        let _ = info!(
            "aggregator: tick {} window {} readings sum {}; total {} malformed {}",
            ctx.tick, self.window_count, self.window_sum, self.total_count, self.malformed
        );
        self.window_count = 0;
        self.window_sum = 0;
        Ok(())
    }

    fn receive(&mut self, msg: &Message<'_>) -> Result<(), i32> {
        if msg.kind != MessageKind::Topic || msg.topic != b"sensors" {
            return Ok(());
        }
        let Some(value) = msg.payload.get(8..16).filter(|_| msg.payload.len() == 16) else {
            self.malformed += 1;
            return Ok(());
        };
        let mut b = [0u8; 8];
        b.copy_from_slice(value);
        let value = i64::from_le_bytes(b);
        self.window_count += 1;
        self.window_sum = self.window_sum.wrapping_add(value);
        self.total_count += 1;
        self.total_sum = self.total_sum.wrapping_add(value);
        Ok(())
    }
}

export_agent!(Aggregator);
