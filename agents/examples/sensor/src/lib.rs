//! Publishes a reading from the deterministic `random()` stream on topic "sensors" every step.
//!
//! Payload (16 bytes): `tick: u64 LE`, `value: i64 LE` with `value` in `0..1000`.
#![cfg_attr(target_arch = "wasm32", no_std)]

use lockstep_agent_sdk::{Agent, Message, StepContext, export_agent, host, warn};

/// Topic the readings go to.
pub const TOPIC: &str = "sensors";

/// The sensor agent.
#[derive(Debug)]
pub struct Sensor {
    published: u64,
    refused: u64,
}

impl Agent for Sensor {
    fn init() -> Self {
        Sensor {
            published: 0,
            refused: 0,
        }
    }

    fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
        let value = (host::random() % 1000) as i64;
        let mut payload = [0u8; 16];
        payload[..8].copy_from_slice(&ctx.tick.to_le_bytes());
        payload[8..].copy_from_slice(&value.to_le_bytes());
        match host::publish(TOPIC, &payload) {
            Ok(()) => self.published += 1,
            Err(e) => {
                self.refused += 1;
                if self.refused == 1 {
                    let _ = warn!("sensor: publish refused: {}", e);
                }
            }
        }
        Ok(())
    }

    fn receive(&mut self, _msg: &Message<'_>) -> Result<(), i32> {
        Ok(())
    }
}

export_agent!(Sensor);
