// Host-side tests of the TypeScript SDK and example agents: each built module
// (target/agents/ts_*.wasm) runs under the recording mock host of host.mjs.
//
//   cd agents/ts && npm test      (after scripts/build-ts-agents.sh)

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { TestAgent, Kind, RUNTIME_SENDER, modulePath, u64le } from "./host.mjs";

const ERR_NOT_INITIALIZED = -1000;
const ERR_BAD_LAYOUT = -1001;

function dv(bytes) {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function f32Tensor(values, dims) {
  const b = new Uint8Array(8 + 8 * dims.length + 4 * values.length);
  const v = dv(b);
  b[0] = 1;
  b[1] = dims.length;
  dims.forEach((d, i) => v.setBigUint64(8 + 8 * i, BigInt(d), true));
  values.forEach((x, i) => v.setFloat32(8 + 8 * dims.length + 4 * i, x, true));
  return b;
}

const built = ["ts_counter", "ts_counter_v2", "ts_sensor", "ts_aggregator", "ts_ping", "ts_pong", "ts_inferrer", "ts_coordinator"];
const missing = built.filter((n) => !modulePath(n));
if (missing.length) {
  throw new Error(`not built: ${missing.join(", ")} (run scripts/build-ts-agents.sh first)`);
}

test("every module imports only lockstep functions and exports the ABI", () => {
  for (const name of built) {
    const a = new TestAgent(name);
    const mod = new WebAssembly.Module(readFileSync(modulePath(name)));
    for (const imp of WebAssembly.Module.imports(mod)) {
      assert.equal(imp.module, "lockstep", `${name}: ${imp.module}.${imp.name}`);
    }
    assert.equal(a.exports.agent_abi_version(), 0x10000);
    for (const e of ["agent_buffer", "agent_init", "agent_step", "agent_receive", "agent_shutdown"]) {
      assert.equal(typeof a.exports[e], "function", `${name}: ${e}`);
    }
  }
});

test("exports before agent_init and malformed layouts are agent errors", () => {
  const a = new TestAgent("ts_counter");
  assert.equal(a.step({ tick: 1 }), ERR_NOT_INITIALIZED);
  assert.equal(a.exports.agent_shutdown(), 0);
  assert.equal(a.init(), 0);
  assert.equal(a.stepRaw(TestAgent.context({ tick: 1, size: 8 })), ERR_BAD_LAYOUT);
  assert.equal(a.stepRaw(TestAgent.context({ tick: 1, abi: 0x20000 })), ERR_BAD_LAYOUT);
  assert.equal(a.exports.agent_step(0), ERR_BAD_LAYOUT);
  // A payload length beyond memory.
  const ctx = TestAgent.context({ tick: 1 });
  dv(ctx).setUint32(36, 0x7fff_0000, true);
  assert.equal(a.stepRaw(ctx), ERR_BAD_LAYOUT);
  assert.equal(a.step({ tick: 2 }), 0);
});

test("agent_buffer: aligned, reused, grown, refuses negative lengths", () => {
  const a = new TestAgent("ts_pong");
  const p1 = a.exports.agent_buffer(256);
  assert.equal(p1 % 8, 0);
  assert.equal(a.exports.agent_buffer(100), p1, "reused while large enough");
  const p2 = a.exports.agent_buffer(100_000);
  assert.notEqual(p2, 0);
  assert.equal(p2 % 8, 0);
  assert.ok(new Uint8Array(a.exports.memory.buffer).length >= p2 + 100_000);
  assert.equal(a.exports.agent_buffer(-1), 0);
});

test("counter counts steps, tasks and messages, logs every 100 ticks", () => {
  const a = new TestAgent("ts_counter");
  assert.equal(a.init(), 0);
  for (let t = 1; t <= 100; t++) {
    if (t === 50) assert.equal(a.receive({ kind: Kind.Direct, payload: "x" }), 0);
    assert.equal(a.step({ tick: t, taskId: t === 60 ? (7n << 32n) | 1n : 0n, priority: 3 }), 0);
  }
  assert.equal(a.exports.counter_steps(), 100n);
  assert.equal(a.exports.counter_version(), 1);
  assert.deepEqual(a.logs(), ["counter: tick 100 steps 100 tasks 1 received 1"]);
  // agent_init resets the agent.
  assert.equal(a.init(), 0);
  assert.equal(a.exports.counter_steps(), 0n);
  // agent_migrate accepts ABI major 1 only.
  a.take();
  assert.equal(a.exports.agent_migrate(0x10000), 0);
  assert.equal(a.exports.counter_migrated_from(), 0x10000);
  assert.equal(a.exports.agent_migrate(0x20000), 2);
  assert.deepEqual(a.logs(), ["counter: migrated from ABI 0x00010000", "counter: cannot migrate from ABI 0x00020000"]);
});

test("counter v2 logs as v2 and has the same memory layout as v1", () => {
  const a = new TestAgent("ts_counter_v2");
  assert.equal(a.init(), 0);
  assert.equal(a.exports.counter_version(), 2);
  assert.equal(a.step({ tick: 100 }), 0);
  assert.deepEqual(a.logs(), ["counter v2: tick 100 steps 1 tasks 0 received 0"]);
  // A hot-swap keeps the old memory: after the same calls both versions
  // hold byte-identical memories (static data, heap, agent object).
  const v1 = new TestAgent("ts_counter");
  const v2 = new TestAgent("ts_counter_v2");
  for (const x of [v1, v2]) {
    assert.equal(x.init(), 0);
    for (let t = 1; t <= 5; t++) assert.equal(x.step({ tick: t }), 0);
  }
  assert.deepEqual(new Uint8Array(v2.exports.memory.buffer), new Uint8Array(v1.exports.memory.buffer));
});

test("sensor publishes (tick, random % 1000) on sensors", () => {
  const a = new TestAgent("ts_sensor", { id: 4 });
  assert.equal(a.init(), 0);
  assert.equal(a.step({ tick: 7 }), 0);
  const [call] = a.take();
  assert.equal(call.op, "publish");
  assert.equal(call.topic, "sensors");
  assert.equal(call.payload.length, 16);
  assert.equal(dv(call.payload).getBigUint64(0, true), 7n);
  assert.equal(dv(call.payload).getBigInt64(8, true), a.lastRandom[0] % 1000n);
  // A refusal is logged once, not a fault.
  a.refuse = -2;
  assert.equal(a.step({ tick: 8 }), 0);
  assert.equal(a.step({ tick: 9 }), 0);
  assert.deepEqual(a.logs(), ["sensor: publish refused: quota exceeded"]);
});

test("aggregator subscribes in init and publishes window and totals every 10 ticks", () => {
  const a = new TestAgent("ts_aggregator");
  assert.equal(a.init(), 0);
  assert.deepEqual(a.take(), [{ op: "subscribe", topic: "sensors" }]);
  const reading = (tick, value) => {
    const p = new Uint8Array(16);
    dv(p).setBigUint64(0, BigInt(tick), true);
    dv(p).setBigInt64(8, BigInt(value), true);
    return p;
  };
  assert.equal(a.receive({ kind: Kind.Topic, topic: "sensors", payload: reading(9, 5) }), 0);
  assert.equal(a.receive({ kind: Kind.Topic, topic: "sensors", payload: reading(9, 7) }), 0);
  assert.equal(a.receive({ kind: Kind.Topic, topic: "sensors", payload: "short" }), 0);
  assert.equal(a.receive({ kind: Kind.Topic, topic: "other", payload: reading(9, 100) }), 0);
  assert.equal(a.step({ tick: 9 }), 0);
  assert.deepEqual(a.take(), []);
  assert.equal(a.step({ tick: 10 }), 0);
  const calls = a.take();
  assert.equal(calls[0].op, "publish");
  assert.equal(calls[0].topic, "summary");
  const s = dv(calls[0].payload);
  assert.equal(calls[0].payload.length, 40);
  assert.deepEqual(
    [s.getBigUint64(0, true), s.getBigUint64(8, true), s.getBigInt64(16, true), s.getBigUint64(24, true), s.getBigInt64(32, true)],
    [10n, 2n, 12n, 2n, 12n],
  );
  assert.equal(calls[1].line, "aggregator: tick 10 window 2 readings sum 12; total 2 malformed 1");
});

test("ping and pong bounce a counter", () => {
  const ping = new TestAgent("ts_ping", { id: 5 });
  const pong = new TestAgent("ts_pong", { id: 6 });
  assert.equal(ping.init(), 0);
  assert.equal(pong.init(), 0);
  for (let t = 1; t <= 20; t++) {
    assert.equal(ping.step({ tick: t }), 0);
    for (const c of ping.take().filter((c) => c.op === "send")) {
      assert.equal(c.to, 6n);
      assert.equal(pong.receive({ kind: Kind.Direct, sender: 5n, payload: c.payload }), 0);
    }
    for (const c of pong.take().filter((c) => c.op === "send")) {
      assert.equal(c.to, 5n);
      assert.equal(ping.receive({ kind: Kind.Direct, sender: 6n, payload: c.payload }), 0);
    }
  }
  assert.equal(ping.exports.ping_echoes(), 20n);
  assert.equal(pong.exports.pong_replies(), 20n);
  // Runtime messages are not echoed; a stale echo is ignored.
  assert.equal(pong.receive({ kind: Kind.Direct, sender: RUNTIME_SENDER, payload: "x" }), 0);
  assert.deepEqual(pong.take(), []);
  assert.equal(ping.receive({ kind: Kind.Direct, sender: 6n, payload: u64le(3) }), 0);
  assert.deepEqual(ping.logs(), ["ping: ignoring stale echo 3"]);
});

test("ping re-sends after 10 ticks without an echo", () => {
  const ping = new TestAgent("ts_ping", { id: 1 });
  assert.equal(ping.init(), 0);
  for (let t = 1; t <= 11; t++) assert.equal(ping.step({ tick: t }), 0);
  const calls = ping.take();
  assert.deepEqual(
    calls.map((c) => c.op),
    ["send", "log", "send"],
  );
  assert.equal(calls[1].line, "ping: no echo for 0 yet, re-sending");
});

test("inferrer sends f32[1,16] from randomF32 and logs each answer's argmax", () => {
  const a = new TestAgent("ts_inferrer", { id: 3 });
  assert.equal(a.init(), 0);
  assert.equal(a.step({ tick: 4 }), 0);
  assert.deepEqual(a.take(), []);
  assert.equal(a.step({ tick: 5 }), 0);
  const [call] = a.take();
  assert.equal(call.op, "infer");
  assert.equal(call.model, "mlp");
  const t = dv(call.input);
  assert.equal(call.input.length, 8 + 16 + 64);
  assert.deepEqual([call.input[0], call.input[1]], [1, 2]);
  assert.deepEqual([...call.input.slice(2, 8)], [0, 0, 0, 0, 0, 0]);
  assert.deepEqual([t.getBigUint64(8, true), t.getBigUint64(16, true)], [1n, 16n]);
  assert.equal(a.lastRandom.length, 16);
  a.lastRandom.forEach((r, i) => {
    // The Rust SDK's random_f32: the top 24 bits over 2^24.
    assert.equal(t.getFloat32(24 + 4 * i, true), Number(r >> 40n) / 16777216);
  });
  const result = f32Tensor([0.1, 0.7, 0.7, NaN, 0.2], [1, 5]);
  assert.equal(a.receive({ kind: Kind.InferenceResult, sender: RUNTIME_SENDER, seq: 1n, payload: result }), 0);
  assert.equal(a.exports.inferrer_answers(), 1n);
  assert.equal(a.exports.inferrer_last_argmax(), 1n);
  assert.equal(a.receive({ kind: Kind.InferenceError, sender: RUNTIME_SENDER, seq: 9n, payload: "no model" }), 0);
  assert.deepEqual(a.logs(), ["inferrer: request 1 argmax 1", "inferrer: request 9 failed: no model"]);
  // A malformed tensor is agent error 3 (trailing bytes, bad dtype, truncated).
  const bad = [new Uint8Array([...result, 0]), new Uint8Array([9, 0, 0, 0, 0, 0, 0, 0]), result.slice(0, 20)];
  for (const payload of bad) {
    assert.equal(a.receive({ kind: Kind.InferenceResult, sender: RUNTIME_SENDER, seq: 2n, payload }), 3);
  }
});

test("coordinator schedules three prioritised tasks and a join task", () => {
  const a = new TestAgent("ts_coordinator", { id: 10 });
  assert.equal(a.init(), 0);
  assert.equal(a.step({ tick: 5 }), 0);
  const calls = a.take();
  const tasks = calls.filter((c) => c.op === "schedule_task");
  assert.deepEqual(
    tasks.map((c) => [c.agent, c.priority, c.deps.length]),
    [
      [11n, 30, 0],
      [12n, 20, 0],
      [13n, 10, 0],
      [11n, 0, 3],
    ],
  );
  assert.deepEqual(tasks[3].deps, [(10n << 32n) | 1n, (10n << 32n) | 2n, (10n << 32n) | 3n]);
  assert.equal(dv(tasks[1].payload).getBigUint64(0, true), 1n);
  assert.equal(dv(tasks[1].payload).getUint32(8, true), 2);
  assert.equal(
    calls.find((c) => c.op === "log").line,
    `coordinator: round 1 scheduled 3 tasks, join Some(${(10n << 32n) | 4n}) (total 4, refused 0)`,
  );
  // A task step does not start a round.
  assert.equal(a.step({ tick: 10, taskId: 5n }), 0);
  assert.deepEqual(a.take(), []);
});

// --- the SDK, through test/probe.ts --------------------------------------------

function probe() {
  const a = new TestAgent("ts_probe", { id: 9 });
  assert.equal(a.init(), 0);
  return a;
}

function op(a, code, arg = new Uint8Array(0), extra = {}) {
  const payload = new Uint8Array([code, ...(typeof arg === "string" ? new TextEncoder().encode(arg) : arg)]);
  return a.receive({ kind: Kind.Direct, sender: 2n, payload, ...extra });
}

test("Line formats numbers without allocating", () => {
  const a = probe();
  assert.equal(op(a, 1), 0);
  assert.deepEqual(a.logs(), [
    "-9223372036854775808 18446744073709551615 0x0000beef -2.50 0.333 NaN -inf 6.02e23 true",
  ]);
});

test("a long line is cut at 256 bytes on a character boundary", () => {
  const a = probe();
  assert.equal(op(a, 2), 0);
  const [long, len] = a.logs();
  assert.equal(Buffer.byteLength(long), Number(len));
  assert.ok(Number(len) <= 256 && Number(len) > 250, len);
  assert.ok(long.startsWith("é€é€"));
  assert.ok(!long.includes("\ufffd"), "no broken character");
});

test("names and payloads as strings, Names and views; local refusals", () => {
  const a = probe();
  a.take();
  assert.equal(op(a, 3, "ops-channel"), 0);
  const calls = a.take();
  assert.deepEqual(
    calls.map((c) => [c.op, c.topic ?? c.name]),
    [
      ["subscribe", "température"],
      ["unsubscribe", "ops"],
      ["join_channel", "ops-channel"],
      ["channel_send", "ops-channel"],
      ["leave_channel", "ops-channel"],
      ["publish", "results"],
    ],
  );
  assert.equal(new TextDecoder().decode(calls[3].payload), "héllo");
  // An empty name and a 257-byte one are refused (-1) without a host call.
  assert.deepEqual([dv(calls[5].payload).getInt32(0, true), dv(calls[5].payload).getInt32(4, true)], [-1, -1]);
});

test("scheduleTaskAfter passes the dependencies; a task step sees id, priority and payload", () => {
  const a = probe();
  const deps = new Uint8Array(16);
  dv(deps).setBigUint64(0, 11n, true);
  dv(deps).setBigUint64(8, 12n, true);
  a.take();
  assert.equal(op(a, 4, deps), 0);
  const [task, reply] = a.take();
  assert.equal(task.op, "schedule_task");
  assert.deepEqual([task.agent, task.priority, task.deps, task.payload.length], [2n, -5, [11n, 12n], 16]);
  assert.equal(dv(reply.payload).getBigUint64(0, true), (9n << 32n) | 1n);
  assert.equal(a.step({ tick: 3, taskId: (9n << 32n) | 1n, priority: -5, payload: "abc" }), 0);
  assert.deepEqual(a.logs(), ["task 0x0000000900000001 priority -5 payload 3"]);
});

test("Math.random is seeded from the lockstep random stream", () => {
  const draw = () => {
    const a = probe();
    a.setTick(4);
    a.take();
    assert.equal(op(a, 5), 0);
    const [reply] = a.take();
    assert.equal(a.lastRandom.length, 1, "one seed drawn from random()");
    return [dv(reply.payload).getFloat64(0, true), dv(reply.payload).getFloat64(8, true)];
  };
  const [x, y] = draw();
  assert.ok(x >= 0 && x < 1 && y >= 0 && y < 1 && x !== y);
  assert.deepEqual(draw(), [x, y], "same stream, same values");
});

test("abort: out-of-range reads and failed assertions are logged, then trap", () => {
  for (const [code, text] of [
    [6, "abort: View: read out of range"],
    [7, "abort: probe assertion at test/probe.ts:"],
  ]) {
    const a = probe();
    a.take();
    assert.throws(() => op(a, code, "abc"), WebAssembly.RuntimeError);
    const logs = a.calls.filter((c) => c.op === "log");
    assert.equal(logs.length, 1);
    assert.equal(logs[0].level, 0);
    assert.ok(logs[0].line.startsWith(text), logs[0].line);
  }
});

test("trace() logs at trace level", () => {
  const a = probe();
  a.take();
  assert.equal(op(a, 8), 0);
  const [c] = a.take();
  assert.deepEqual([c.level, c.line], [4, "probe trace 1.500000 -2.000000"]);
});

test("views compare with strings and decode UTF-8", () => {
  const a = probe();
  a.take();
  assert.equal(op(a, 9, "grüße"), 0);
  assert.deepEqual(a.logs(), ["empty topic", "grüße!"]);
});

test("agent_migrate calls the agent's migrate", () => {
  const a = probe();
  assert.equal(a.exports.agent_migrate(0x10000), 0);
  assert.equal(a.exports.agent_migrate(0x20000), 7);
  // A fresh instance (globals not carried over) reports the state as lost.
  const fresh = new TestAgent("ts_probe");
  assert.equal(fresh.exports.agent_migrate(0x10000), -1003);
});
