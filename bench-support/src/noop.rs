//! The minimal agent every benchmark measures against.

/// The ABI's exports; `agent_step` increments a global.
pub const NOOP_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (global $n (mut i64) (i64.const 0))
  (func (export "agent_abi_version") (result i32) (i32.const 0x10000))
  (func (export "agent_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_init") (result i32) (i32.const 0))
  (func (export "agent_step") (param i32) (result i32)
    (global.set $n (i64.add (global.get $n) (i64.const 1)))
    (i32.const 0))
  (func (export "agent_receive") (param i32) (result i32) (i32.const 0))
  (func (export "agent_shutdown") (result i32) (i32.const 0)))"#;
