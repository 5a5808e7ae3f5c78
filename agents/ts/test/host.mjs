// A stand-in for lockstep-worker for host-side tests of TypeScript agents:
// instantiates a built module with `lockstep` imports that record every
// call, and drives its exports the way the worker does (the host buffer,
// step contexts, messages).

import { readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const MODULES = join(ROOT, "target", "agents");

export const RUNTIME_SENDER = 0xffff_ffff_ffff_ffffn;
export const Kind = { Direct: 0, Topic: 1, Channel: 2, InferenceResult: 3, InferenceError: 4, Notice: 5 };

/** Path of a built module (target/agents, or target/agents-build/ts for the
 *  SDK's test agent), or null if it has not been built. */
export function modulePath(name) {
  for (const dir of [MODULES, join(ROOT, "target", "agents-build", "ts")]) {
    const p = join(dir, `${name}.wasm`);
    if (existsSync(p)) return p;
  }
  return null;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export function splitmix64(x) {
  const M = (1n << 64n) - 1n;
  let z = (x + 0x9e3779b97f4a7c15n) & M;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M;
  return z ^ (z >> 31n);
}

function u64le(v) {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, BigInt(v)), true);
  return b;
}

export function bytesOf(x) {
  if (x === undefined || x === null) return new Uint8Array(0);
  if (typeof x === "string") return enc.encode(x);
  return x;
}

/** One agent instance under a recording mock host. */
export class TestAgent {
  constructor(name, { id = 1n, seed = 1n } = {}) {
    const path = modulePath(name);
    if (!path) throw new Error(`${name}.wasm is not built (scripts/build-agents.sh)`);
    this.name = name;
    this.id = BigInt(id);
    this.seed = BigInt(seed);
    this.tick = 0n;
    this.calls = [];
    this.randomN = 0n;
    this.nextTask = 0n;
    this.nextRequest = 0n;
    this.refuse = 0;
    this.buffer = [0, 0];
    const module = new WebAssembly.Module(readFileSync(path));
    const self = this;
    const mem = () => new Uint8Array(self.instance.exports.memory.buffer);
    const read = (p, l) => mem().slice(p >>> 0, (p >>> 0) + (l >>> 0));
    const record = (call) => {
      self.calls.push(call);
      return self.refuse;
    };
    const lockstep = {
      send: (to, p, l) => record({ op: "send", to, payload: read(p, l) }),
      publish: (tp, tl, p, l) => record({ op: "publish", topic: dec.decode(read(tp, tl)), payload: read(p, l) }),
      subscribe: (tp, tl) => record({ op: "subscribe", topic: dec.decode(read(tp, tl)) }),
      unsubscribe: (tp, tl) => record({ op: "unsubscribe", topic: dec.decode(read(tp, tl)) }),
      join_channel: (np, nl) => record({ op: "join_channel", name: dec.decode(read(np, nl)) }),
      leave_channel: (np, nl) => record({ op: "leave_channel", name: dec.decode(read(np, nl)) }),
      channel_send: (np, nl, p, l) =>
        record({ op: "channel_send", name: dec.decode(read(np, nl)), payload: read(p, l) }),
      schedule_task: (agent, priority, p, l, dp, dn) => {
        const depBytes = read(dp, dn * 8);
        const dv = new DataView(depBytes.buffer);
        const deps = [];
        for (let i = 0; i < dn; i++) deps.push(dv.getBigUint64(i * 8, true));
        const r = record({ op: "schedule_task", agent, priority, payload: read(p, l), deps });
        if (r) return BigInt(r);
        self.nextTask += 1n;
        return (self.id << 32n) | self.nextTask;
      },
      infer: (mp, ml, p, l) => {
        const r = record({ op: "infer", model: dec.decode(read(mp, ml)), input: read(p, l) });
        if (r) return BigInt(r);
        self.nextRequest += 1n;
        return self.nextRequest;
      },
      log: (level, p, l) => record({ op: "log", level, line: dec.decode(read(p, l)) }),
      random: () => {
        // Not the runtime's stream (that needs BLAKE3), but as deterministic.
        const v = splitmix64((self.seed << 40n) ^ (self.id << 20n) ^ self.tick ^ (self.randomN << 48n));
        self.randomN += 1n;
        self.lastRandom.push(v);
        return BigInt.asIntN(64, v);
      },
      tick: () => self.tick,
      agent_id: () => self.id,
    };
    this.lastRandom = [];
    this.instance = new WebAssembly.Instance(module, { lockstep });
  }

  get exports() {
    return this.instance.exports;
  }

  /** Calls made since the last `take()`. */
  take() {
    const c = this.calls;
    this.calls = [];
    return c;
  }

  logs() {
    return this.calls.filter((c) => c.op === "log").map((c) => c.line);
  }

  setTick(t) {
    this.tick = BigInt(t);
    this.randomN = 0n;
    this.lastRandom = [];
  }

  // Copies `bytes` into the agent's buffer like the worker: asks for a
  // larger one (next power of two, at least 256) only when it must.
  place(bytes) {
    let [ptr, cap] = this.buffer;
    if (cap < bytes.length) {
      let want = 256;
      while (want < bytes.length) want *= 2;
      ptr = this.exports.agent_buffer(want);
      if (ptr === 0 || ptr % 8 !== 0) throw new Error(`agent_buffer(${want}) returned ${ptr}`);
      this.buffer = [ptr, want];
    }
    new Uint8Array(this.exports.memory.buffer).set(bytes, ptr);
    return ptr;
  }

  init() {
    return this.exports.agent_init();
  }

  /** A step context (ABI v1.0 layout). */
  static context({ tick = 0n, id = 1n, taskId = 0n, priority = 0, payload, mailboxLen = 0, flags = 0, size = 64, abi = 0x10000 }) {
    const p = bytesOf(payload);
    const b = new Uint8Array(64 + p.length);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, size, true);
    dv.setUint32(4, abi, true);
    dv.setBigUint64(8, BigInt(tick), true);
    dv.setBigUint64(16, BigInt(id), true);
    dv.setBigUint64(24, BigInt(taskId), true);
    dv.setInt32(32, priority, true);
    dv.setUint32(36, p.length, true);
    dv.setUint32(40, mailboxLen, true);
    dv.setUint32(44, flags, true);
    b.set(p, 64);
    return b;
  }

  /** A message (ABI v1.0 layout). */
  static message({ kind = 0, sender = 2n, sentTick = 0n, seq = 1n, topic, payload }) {
    const t = bytesOf(topic);
    const p = bytesOf(payload);
    const b = new Uint8Array(48 + t.length + p.length);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, 48, true);
    dv.setUint32(4, kind, true);
    dv.setBigUint64(8, BigInt(sender), true);
    dv.setBigUint64(16, BigInt(sentTick), true);
    dv.setBigUint64(24, BigInt(seq), true);
    dv.setUint32(32, t.length, true);
    dv.setUint32(36, p.length, true);
    b.set(t, 48);
    b.set(p, 48 + t.length);
    return b;
  }

  step(ctx = {}) {
    const tick = BigInt(ctx.tick ?? this.tick);
    this.setTick(tick);
    return this.exports.agent_step(this.place(TestAgent.context({ id: this.id, ...ctx, tick })));
  }

  stepRaw(bytes) {
    return this.exports.agent_step(this.place(bytes));
  }

  receive(msg) {
    return this.exports.agent_receive(this.place(TestAgent.message(msg)));
  }
}

export { u64le };
