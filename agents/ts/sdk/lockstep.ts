// Guest-side SDK for Lockstep agents written in AssemblyScript (agent ABI
// v1.0, docs/abi.md).  The TypeScript counterpart of agents/sdk (Rust).
//
// An agent is a class extending `Agent`, registered once at top level; the
// module re-exports the ABI exports from `abi.ts`:
//
//     import { Agent, StepContext, Message, register, line } from "../sdk/lockstep";
//     export * from "../sdk/abi";
//
//     class Hello extends Agent {
//       step(ctx: StepContext): i32 {
//         if (ctx.tick % 10 == 0) line().s("hello at tick ").u64(ctx.tick).info();
//         return 0;
//       }
//     }
//
//     register((): Agent => new Hello());
//
// Contents:
// * `Agent`, `register` — the agent and its factory (`agent_init`);
// * `StepContext`, `Message`, `View` — the host's layouts, parsed and
//   bounds-checked, without allocating;
// * `send`, `publish`, `subscribe`, `unsubscribe`, `joinChannel`,
//   `leaveChannel`, `channelSend`, `scheduleTask`, `scheduleTaskAfter`,
//   `infer`, `random`, `randomF32`, `randomF64`, `tick`, `agentId` — the
//   imports, with names and payloads
//   given as `string`, `Name`, `Bytes`, `View`, `ArrayBuffer`,
//   `Uint8Array`, `StaticArray<u8>` or `Array<u8>`;
// * `Bytes` — a reusable little-endian byte writer for payloads;
// * `Line`, `line()`, `log`, `error`, `warn`, `info`, `debug`, `traceLine` —
//   logging through a fixed 256-byte line, without allocating;
// * `DType`, `encodeTensor`, `writeTensorHeader`, `TensorView` — the tensor
//   encoding of inference inputs and results.
//
// Nothing here allocates after start-up except `Bytes` growth, `Name`
// construction and the `toString`/`toBytes` copies, so agents run on the
// `stub` runtime (a bump allocator that never frees), which keeps the fuel
// per call low and the state small.  See agents/ts/README.md.

import "./abort";
import * as raw from "./raw";

// --- constants ---------------------------------------------------------------

/** The ABI version this SDK implements: `(major << 16) | minor`. */
export const ABI_VERSION: u32 = 0x0001_0000;
/** The major part of `ABI_VERSION`. */
export const ABI_MAJOR: u32 = ABI_VERSION >> 16;
/** Size of the fixed part of a step context in ABI v1.0. */
export const STEP_CONTEXT_SIZE: u32 = 64;
/** Size of the fixed part of a message in ABI v1.0. */
export const MESSAGE_SIZE: u32 = 48;
/** Sender id of messages from the runtime or an external input. */
export const RUNTIME_SENDER: u64 = 0xFFFF_FFFF_FFFF_FFFF;
/** `flags` bit 0 of the step context: first step after `agent_init`. */
export const FLAG_FIRST_STEP: u32 = 1;
/** Longest topic, channel or model name the host accepts, in UTF-8 bytes. */
export const MAX_NAME_LEN: i32 = 256;
/** Most dependencies of one task. */
export const MAX_DEPS: i32 = 64;

/** Host refusal `-1`: invalid argument (bad name, agent id, too many deps). */
export const ERR_INVALID_ARGUMENT: i32 = -1;
/** Host refusal `-2`: quota exceeded (outputs per call, bytes per tick, log lines). */
export const ERR_QUOTA_EXCEEDED: i32 = -2;
/** Host refusal `-3`: one payload above the agent's `max_payload`. */
export const ERR_TOO_LARGE: i32 = -3;
/** Host refusal `-4`: unknown target. */
export const ERR_UNKNOWN_TARGET: i32 = -4;

/** Agent error: `agent_step`/`agent_receive` before `agent_init` (or no `register`). */
export const ERR_NOT_INITIALIZED: i32 = -1000;
/** Agent error: the host's context or message failed validation. */
export const ERR_BAD_LAYOUT: i32 = -1001;
/** Agent error: `agent_migrate` found the SDK's globals reset (the old
 *  module's globals were not carried over), so the old state is unreachable. */
export const ERR_STATE_LOST: i32 = -1003;

/** A short description of a host refusal code (`-1` … `-4`). */
export function refusalText(code: i64): string {
  if (code == -1) return "invalid argument";
  if (code == -2) return "quota exceeded";
  if (code == -3) return "too large";
  if (code == -4) return "unknown target";
  return "refused";
}

/** The `kind` of a `Message`. */
export enum MessageKind {
  /** A direct message (`send`). */
  Direct = 0,
  /** A topic publication; the topic is in `Message.topic`. */
  Topic = 1,
  /** A channel message; the channel name is in `Message.topic`. */
  Channel = 2,
  /** An inference result; the payload is a tensor, `seq` the request id. */
  InferenceResult = 3,
  /** An inference error; the payload is UTF-8, `seq` the request id. */
  InferenceError = 4,
  /** A runtime notice (UTF-8 payload). */
  Notice = 5,
}

/** Log levels of `log`. */
export enum Level {
  Error = 0,
  Warn = 1,
  Info = 2,
  Debug = 3,
  Trace = 4,
}

// --- byte views --------------------------------------------------------------

/** A read-only window `[ptr, ptr + length)` of this module's memory: a part of
 *  a context or message in the host buffer (valid during the call only), or
 *  any other bytes.  Reads are bounds-checked (out of range aborts). */
export class View {
  ptr: usize = 0;
  length: i32 = 0;

  /** A view of `length` bytes at `ptr`. */
  static of(ptr: usize, length: i32): View {
    const v = new View();
    v.ptr = ptr;
    v.length = length;
    return v;
  }

  /** Re-points this view (no allocation). */
  set(ptr: usize, length: i32): View {
    this.ptr = ptr;
    this.length = length;
    return this;
  }

  @inline private at(off: i32, n: i32): usize {
    if (off < 0 || n > this.length || off > this.length - n) abort("View: read out of range");
    return this.ptr + <usize>off;
  }

  u8(off: i32): u8 {
    return load<u8>(this.at(off, 1));
  }
  u16(off: i32): u16 {
    return load<u16>(this.at(off, 2));
  }
  u32(off: i32): u32 {
    return load<u32>(this.at(off, 4));
  }
  i32(off: i32): i32 {
    return load<i32>(this.at(off, 4));
  }
  u64(off: i32): u64 {
    return load<u64>(this.at(off, 8));
  }
  i64(off: i32): i64 {
    return load<i64>(this.at(off, 8));
  }
  f32(off: i32): f32 {
    return load<f32>(this.at(off, 4));
  }
  f64(off: i32): f64 {
    return load<f64>(this.at(off, 8));
  }

  /** A sub-view (no allocation: re-points `into`, or a new view). */
  slice(off: i32, length: i32, into: View | null = null): View {
    const p = this.at(off, length);
    return into ? into.set(p, length) : View.of(p, length);
  }

  /** Whether the bytes equal the UTF-8 encoding of `s` (no allocation). */
  equals(s: string): bool {
    const b = NAME_SCRATCH.clear().str(s);
    return b.length == this.length && memory.compare(b.dataStart, this.ptr, this.length) == 0;
  }

  /** Whether the bytes equal `name`. */
  equalsName(name: Name): bool {
    return name.length == this.length && memory.compare(name.ptr, this.ptr, this.length) == 0;
  }

  /** Whether the bytes equal `other`'s. */
  equalsView(other: View): bool {
    return other.length == this.length && memory.compare(other.ptr, this.ptr, this.length) == 0;
  }

  /** Whether the bytes are valid UTF-8. */
  isUtf8(): bool {
    return utf8Valid(this.ptr, this.length);
  }

  /** The bytes decoded as UTF-8 (allocates; invalid sequences become U+FFFD). */
  toString(): string {
    return String.UTF8.decodeUnsafe(this.ptr, <usize>this.length);
  }

  /** A copy of the bytes (allocates). */
  toBytes(): Uint8Array {
    const out = new Uint8Array(this.length);
    memory.copy(out.dataStart, this.ptr, this.length);
    return out;
  }
}

function utf8Valid(p: usize, n: i32): bool {
  let i = 0;
  while (i < n) {
    const b = <u32>load<u8>(p + i);
    let extra = 0;
    let min: u32 = 0;
    let cp: u32 = 0;
    if (b < 0x80) {
      i++;
      continue;
    } else if ((b & 0xE0) == 0xC0) {
      extra = 1;
      min = 0x80;
      cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      extra = 2;
      min = 0x800;
      cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      extra = 3;
      min = 0x10000;
      cp = b & 0x07;
    } else {
      return false;
    }
    if (i + extra >= n) return false;
    for (let k = 1; k <= extra; k++) {
      const c = <u32>load<u8>(p + i + k);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

// --- byte writer -------------------------------------------------------------

/** A growable little-endian byte buffer for payloads.  Keep one per purpose
 *  and `clear()` it: after it has grown to its working size it no longer
 *  allocates. */
export class Bytes {
  private buf: ArrayBuffer;
  private n: i32 = 0;

  constructor(capacity: i32 = 64) {
    this.buf = new ArrayBuffer(max(capacity, 16));
  }

  /** Bytes written. */
  get length(): i32 {
    return this.n;
  }

  /** Address of the first byte (valid until the next growth). */
  get dataStart(): usize {
    return changetype<usize>(this.buf);
  }

  /** Forgets the contents (keeps the capacity). */
  clear(): Bytes {
    this.n = 0;
    return this;
  }

  /** Makes room for `extra` more bytes; returns where they go. */
  reserve(extra: i32): usize {
    if (extra < 0) abort("Bytes: negative reserve");
    const need = this.n + extra;
    const cap = this.buf.byteLength;
    if (need > cap) {
      let c = cap;
      while (c < need) c <<= 1;
      const nb = new ArrayBuffer(c);
      memory.copy(changetype<usize>(nb), changetype<usize>(this.buf), this.n);
      this.buf = nb;
    }
    return changetype<usize>(this.buf) + <usize>this.n;
  }

  u8(v: u8): Bytes {
    store<u8>(this.reserve(1), v);
    this.n += 1;
    return this;
  }
  u16(v: u16): Bytes {
    store<u16>(this.reserve(2), v);
    this.n += 2;
    return this;
  }
  u32(v: u32): Bytes {
    store<u32>(this.reserve(4), v);
    this.n += 4;
    return this;
  }
  i32(v: i32): Bytes {
    store<i32>(this.reserve(4), v);
    this.n += 4;
    return this;
  }
  u64(v: u64): Bytes {
    store<u64>(this.reserve(8), v);
    this.n += 8;
    return this;
  }
  i64(v: i64): Bytes {
    store<i64>(this.reserve(8), v);
    this.n += 8;
    return this;
  }
  f32(v: f32): Bytes {
    store<f32>(this.reserve(4), v);
    this.n += 4;
    return this;
  }
  f64(v: f64): Bytes {
    store<f64>(this.reserve(8), v);
    this.n += 8;
    return this;
  }

  /** Appends `length` raw bytes from `ptr`. */
  raw(ptr: usize, length: i32): Bytes {
    memory.copy(this.reserve(length), ptr, length);
    this.n += length;
    return this;
  }

  /** Appends the bytes of a view. */
  view(v: View): Bytes {
    return this.raw(v.ptr, v.length);
  }

  /** Appends the UTF-8 encoding of `s`. */
  str(s: string): Bytes {
    const len = String.UTF8.byteLength(s);
    const p = this.reserve(len);
    this.n += <i32>String.UTF8.encodeUnsafe(changetype<usize>(s), s.length, p);
    return this;
  }

  /** A view of the contents (valid until the next growth). */
  asView(into: View | null = null): View {
    return into ? into.set(this.dataStart, this.n) : View.of(this.dataStart, this.n);
  }

  /** A copy of the contents (allocates). */
  toBytes(): Uint8Array {
    const out = new Uint8Array(this.n);
    memory.copy(out.dataStart, this.dataStart, this.n);
    return out;
  }
}

/** A topic, channel or model name encoded to UTF-8 once: cheaper than a
 *  `string`, which is encoded on every call.  Create names at start-up or
 *  in the agent's constructor. */
export class Name {
  private bytes: ArrayBuffer;

  constructor(s: string) {
    this.bytes = String.UTF8.encode(s);
  }

  get ptr(): usize {
    return changetype<usize>(this.bytes);
  }

  get length(): i32 {
    return this.bytes.byteLength;
  }

  toString(): string {
    return String.UTF8.decode(this.bytes);
  }
}

// Scratch buffers for strings passed as names and as payloads.
const NAME_SCRATCH: Bytes = new Bytes(MAX_NAME_LEN);
const TEXT_SCRATCH: Bytes = new Bytes(256);

// Pointer and length of a name or payload argument.  A `string` is encoded
// into `scratch` by `ptrOf`, so call `ptrOf` before `lenOf`.
// @ts-ignore: decorator
@inline function ptrOf<T>(data: T, scratch: Bytes): usize {
  if (isString<T>()) {
    return scratch.clear().str(changetype<string>(data)).dataStart;
  } else if (data instanceof Bytes) {
    return (data as Bytes).dataStart;
  } else if (data instanceof View) {
    return (data as View).ptr;
  } else if (data instanceof Name) {
    return (data as Name).ptr;
  } else if (data instanceof ArrayBuffer) {
    return changetype<usize>(data);
  } else if (data instanceof Uint8Array) {
    return (data as Uint8Array).dataStart;
  } else if (data instanceof StaticArray<u8>) {
    return changetype<usize>(data);
  } else if (data instanceof Array<u8>) {
    return (data as Array<u8>).dataStart;
  } else {
    ERROR("lockstep: bytes must be a string, Name, Bytes, View, ArrayBuffer, Uint8Array, StaticArray<u8> or Array<u8>");
    return 0;
  }
}

// @ts-ignore: decorator
@inline function lenOf<T>(data: T, scratch: Bytes): usize {
  if (isString<T>()) {
    return scratch.length;
  } else if (data instanceof Bytes) {
    return (data as Bytes).length;
  } else if (data instanceof View) {
    return (data as View).length;
  } else if (data instanceof Name) {
    return (data as Name).length;
  } else if (data instanceof ArrayBuffer) {
    return (data as ArrayBuffer).byteLength;
  } else if (data instanceof Uint8Array) {
    return (data as Uint8Array).byteLength;
  } else if (data instanceof StaticArray<u8>) {
    return (data as StaticArray<u8>).length;
  } else if (data instanceof Array<u8>) {
    return (data as Array<u8>).length;
  } else {
    ERROR("lockstep: unsupported bytes type");
    return 0;
  }
}

// --- host calls --------------------------------------------------------------
//
// Each returns the host's answer: `0` (or an id `> 0`) when accepted, a
// negative refusal code otherwise (`ERR_INVALID_ARGUMENT` …).  A refusal is
// not a fault: the call goes on.  Names are checked here first (1–256 UTF-8
// bytes), which the host would refuse anyway.

// @ts-ignore: decorator
@inline function badName(len: usize): bool {
  return len == 0 || len > <usize>MAX_NAME_LEN;
}

/** Sends `payload` directly to agent `to` (delivered next tick). */
export function send<P>(to: u64, payload: P): i32 {
  const p = ptrOf<P>(payload, TEXT_SCRATCH);
  const l = lenOf<P>(payload, TEXT_SCRATCH);
  return raw.send(<i64>to, p, l);
}

/** Publishes `payload` on `topic` to every subscriber (delivered next tick). */
export function publish<N, P>(topic: N, payload: P): i32 {
  const tp = ptrOf<N>(topic, NAME_SCRATCH);
  const tl = lenOf<N>(topic, NAME_SCRATCH);
  if (badName(tl)) return ERR_INVALID_ARGUMENT;
  const p = ptrOf<P>(payload, TEXT_SCRATCH);
  const l = lenOf<P>(payload, TEXT_SCRATCH);
  return raw.publish(tp, tl, p, l);
}

/** Subscribes to `topic` (effective from the next tick). */
export function subscribe<N>(topic: N): i32 {
  const tp = ptrOf<N>(topic, NAME_SCRATCH);
  const tl = lenOf<N>(topic, NAME_SCRATCH);
  if (badName(tl)) return ERR_INVALID_ARGUMENT;
  return raw.subscribe(tp, tl);
}

/** Unsubscribes from `topic`. */
export function unsubscribe<N>(topic: N): i32 {
  const tp = ptrOf<N>(topic, NAME_SCRATCH);
  const tl = lenOf<N>(topic, NAME_SCRATCH);
  if (badName(tl)) return ERR_INVALID_ARGUMENT;
  return raw.unsubscribe(tp, tl);
}

/** Joins channel `name`. */
export function joinChannel<N>(name: N): i32 {
  const np = ptrOf<N>(name, NAME_SCRATCH);
  const nl = lenOf<N>(name, NAME_SCRATCH);
  if (badName(nl)) return ERR_INVALID_ARGUMENT;
  return raw.join_channel(np, nl);
}

/** Leaves channel `name`. */
export function leaveChannel<N>(name: N): i32 {
  const np = ptrOf<N>(name, NAME_SCRATCH);
  const nl = lenOf<N>(name, NAME_SCRATCH);
  if (badName(nl)) return ERR_INVALID_ARGUMENT;
  return raw.leave_channel(np, nl);
}

/** Sends `payload` to every current member of channel `name` (the sender
 *  included, if a member). */
export function channelSend<N, P>(name: N, payload: P): i32 {
  const np = ptrOf<N>(name, NAME_SCRATCH);
  const nl = lenOf<N>(name, NAME_SCRATCH);
  if (badName(nl)) return ERR_INVALID_ARGUMENT;
  const p = ptrOf<P>(payload, TEXT_SCRATCH);
  const l = lenOf<P>(payload, TEXT_SCRATCH);
  return raw.channel_send(np, nl, p, l);
}

/** Schedules a task for `agent` with `payload` and `priority`; returns the
 *  new task id (`> 0`) or a refusal.  The task runs in a later tick (in
 *  `priority`/`dag` scheduling modes, by priority) as a step whose context
 *  has `taskId`, `taskPriority` and `payload`. */
export function scheduleTask<P>(agent: u64, priority: i32, payload: P): i64 {
  const p = ptrOf<P>(payload, TEXT_SCRATCH);
  const l = lenOf<P>(payload, TEXT_SCRATCH);
  return raw.schedule_task(<i64>agent, priority, p, l, 0, 0);
}

/** `scheduleTask` for a task that runs only after the tasks in `deps` (at
 *  most 64 task ids, a `StaticArray<u64>` or `Array<u64>`) completed (in the
 *  `dag` scheduling mode). */
export function scheduleTaskAfter<P, D>(agent: u64, priority: i32, payload: P, deps: D): i64 {
  const p = ptrOf<P>(payload, TEXT_SCRATCH);
  const l = lenOf<P>(payload, TEXT_SCRATCH);
  let dp: usize = 0;
  let dl: i32 = 0;
  if (deps instanceof StaticArray<u64>) {
    dp = changetype<usize>(deps);
    dl = (deps as StaticArray<u64>).length;
  } else if (deps instanceof Array<u64>) {
    dp = (deps as Array<u64>).dataStart;
    dl = (deps as Array<u64>).length;
  } else {
    ERROR("lockstep: deps must be a StaticArray<u64> or Array<u64>");
  }
  if (dl > MAX_DEPS) return ERR_INVALID_ARGUMENT;
  return raw.schedule_task(<i64>agent, priority, p, l, dp, dl);
}

/** Asks model `model` (`id` or `id@version`) for an inference on an encoded
 *  tensor `input`; returns the request id (`> 0`) or a refusal.  The answer
 *  arrives in a later tick as a message of kind `InferenceResult` or
 *  `InferenceError` whose `seq` is the request id. */
export function infer<N, P>(model: N, input: P): i64 {
  const mp = ptrOf<N>(model, NAME_SCRATCH);
  const ml = lenOf<N>(model, NAME_SCRATCH);
  if (badName(ml)) return ERR_INVALID_ARGUMENT;
  const p = ptrOf<P>(input, TEXT_SCRATCH);
  const l = lenOf<P>(input, TEXT_SCRATCH);
  return raw.infer(mp, ml, p, l);
}

/** Next value of this agent's deterministic random stream (derived from the
 *  run seed, the agent id and the tick; see docs/abi.md "Random stream"). */
export function random(): u64 {
  return <u64>raw.random();
}

/** A deterministic random `f32` in `[0, 1)` (the top 24 bits of `random()`),
 *  the same values as the Rust SDK's `random_f32`. */
export function randomF32(): f32 {
  return <f32>(random() >> 40) * (<f32>1.0 / <f32>16777216.0);
}

/** A deterministic random `f64` in `[0, 1)` (the top 53 bits of `random()`). */
export function randomF64(): f64 {
  return <f64>(random() >> 11) * (1.0 / 9007199254740992.0);
}

/** The current tick. */
export function tick(): u64 {
  return <u64>raw.tick();
}

/** This agent's id. */
export function agentId(): u64 {
  return <u64>raw.agent_id();
}

// --- logging -----------------------------------------------------------------

/** Capacity of a log line in bytes; longer lines are truncated. */
export const LINE_CAPACITY: i32 = 256;

/** A log line built in a fixed buffer, without allocating:
 *  `line().s("tick ").u64(t).s(" done").info()`.  Text past 256 bytes is
 *  dropped (at a UTF-8 boundary). */
export class Line {
  // The line, then 24 spare bytes for formatting numbers.
  private buf: usize = heap.alloc(LINE_CAPACITY + 24);
  private n: i32 = 0;
  private cut: bool = false;

  /** Empties the line. */
  clear(): Line {
    this.n = 0;
    this.cut = false;
    return this;
  }

  /** Bytes written so far. */
  get length(): i32 {
    return this.n;
  }

  /** Whether text was dropped. */
  get truncated(): bool {
    return this.cut;
  }

  /** A view of the line. */
  asView(into: View | null = null): View {
    return into ? into.set(this.buf, this.n) : View.of(this.buf, this.n);
  }

  /** Appends raw UTF-8 bytes, truncating at a character boundary. */
  raw(ptr: usize, len: i32): Line {
    let take = min(len, LINE_CAPACITY - this.n);
    if (take < len) {
      this.cut = true;
      // Back up to a character boundary (a byte that is not 10xxxxxx).
      while (take > 0 && (load<u8>(ptr + take) & 0xC0) == 0x80) take--;
    }
    memory.copy(this.buf + this.n, ptr, take);
    this.n += take;
    return this;
  }

  /** Appends a string (UTF-8). */
  s(str: string): Line {
    // Encode at most what fits: 3 bytes per UTF-16 unit at worst.
    const room = LINE_CAPACITY - this.n;
    let units = min(str.length, room);
    // Do not split a surrogate pair.
    if (units < str.length && units > 0 && (str.charCodeAt(units - 1) & 0xFC00) == 0xD800) units--;
    const tmp = NAME_SCRATCH.clear();
    const p = tmp.reserve(units * 3);
    const len = <i32>String.UTF8.encodeUnsafe(changetype<usize>(str), units, p);
    if (units < str.length) this.cut = true;
    return this.raw(p, len);
  }

  /** Appends the bytes of a view (e.g. a topic or a UTF-8 payload). */
  view(v: View): Line {
    return this.raw(v.ptr, v.length);
  }

  /** Appends a name. */
  name(n: Name): Line {
    return this.raw(n.ptr, n.length);
  }

  /** Appends an unsigned integer in decimal. */
  u64(v: u64): Line {
    const tmp = this.buf + LINE_CAPACITY; // 24 spare bytes after the line
    let p = tmp + 20;
    do {
      p--;
      store<u8>(p, <u8>(48 + <u32>(v % 10)));
      v /= 10;
    } while (v != 0);
    return this.raw(p, <i32>(tmp + 20 - p));
  }

  /** Appends a signed integer in decimal. */
  i64(v: i64): Line {
    if (v < 0) {
      this.ch(45);
      return this.u64(<u64>0 - <u64>v);
    }
    return this.u64(<u64>v);
  }

  /** Appends `v` as `0x` and `width` (at least) hexadecimal digits. */
  hex(v: u64, width: i32 = 1): Line {
    this.ch(48).ch(120);
    let digits = 1;
    while (digits < 16 && v >> (<u64>digits * 4) != 0) digits++;
    for (let i = max(width, digits) - 1; i >= 0; i--) {
      const d = i < 16 ? <u32>((v >> (<u64>i * 4)) & 15) : 0;
      this.ch(d < 10 ? 48 + d : 87 + d);
    }
    return this;
  }

  /** Appends `v` with `decimals` digits after the point (`NaN`, `inf`,
   *  `-inf`; magnitudes of 1e15 and above in exponent form). */
  f64(v: f64, decimals: i32 = 3): Line {
    if (isNaN(v)) return this.s("NaN");
    if (!isFinite(v)) return this.s(v < 0 ? "-inf" : "inf");
    if (v < 0) {
      this.ch(45);
      v = -v;
    }
    if (v >= 1e15) {
      let e = 0;
      while (v >= 10) {
        v /= 10;
        e++;
      }
      return this.f64(v, decimals).ch(101).u64(<u64>e);
    }
    let d = <i32>min(max(decimals, 0), 9);
    // Keep the scaled value exact in an f64 (below 2^53).
    while (d > 0 && v * Math.pow(10, d) >= 9e15) d--;
    const scale = Math.pow(10, d);
    const scaled = Math.round(v * scale);
    const whole = <u64>Math.floor(scaled / scale);
    const frac = <u64>(scaled - <f64>whole * scale);
    this.u64(whole);
    if (d > 0) {
      this.ch(46);
      let div: u64 = <u64>scale / 10;
      for (let i = 0; i < d; i++) {
        this.ch(<u32>(48 + (frac / div) % 10));
        div /= 10;
      }
    }
    return this;
  }

  /** Appends a boolean. */
  bool(v: bool): Line {
    return this.s(v ? "true" : "false");
  }

  /** Appends one ASCII character. */
  ch(c: u32): Line {
    if (this.n < LINE_CAPACITY) {
      store<u8>(this.buf + this.n, <u8>c);
      this.n++;
    } else {
      this.cut = true;
    }
    return this;
  }

  /** Logs the line at `level`; returns the host's answer (`0` or a refusal). */
  emit(level: Level): i32 {
    return raw.log(<i32>level, this.buf, this.n);
  }
  error(): i32 {
    return this.emit(Level.Error);
  }
  warn(): i32 {
    return this.emit(Level.Warn);
  }
  info(): i32 {
    return this.emit(Level.Info);
  }
  debug(): i32 {
    return this.emit(Level.Debug);
  }
  trace(): i32 {
    return this.emit(Level.Trace);
  }
}

// The shared line; 24 spare bytes after it for number formatting.
const LINE: Line = new Line();

/** The shared log line, emptied.  Build and emit it within one call. */
export function line(): Line {
  return LINE.clear();
}

/** Logs `text` at `level` (rate-limited per agent by the runtime: at most 16
 *  lines per tick).  Returns `0` or a refusal. */
export function log(level: Level, text: string): i32 {
  return LINE.clear().s(text).emit(level);
}

/** `log(Level.Error, text)`. */
export function error(text: string): i32 {
  return log(Level.Error, text);
}
/** `log(Level.Warn, text)`. */
export function warn(text: string): i32 {
  return log(Level.Warn, text);
}
/** `log(Level.Info, text)`. */
export function info(text: string): i32 {
  return log(Level.Info, text);
}
/** `log(Level.Debug, text)`. */
export function debug(text: string): i32 {
  return log(Level.Debug, text);
}
/** `log(Level.Trace, text)`. */
export function traceLine(text: string): i32 {
  return log(Level.Trace, text);
}

// --- step context and message -----------------------------------------------

/** One scheduled step, as the host describes it to `agent_step`.  The SDK
 *  reuses one instance: do not keep it (or its views) past the call. */
export class StepContext {
  /** Size of the fixed part (64 in v1.0). */
  size: u32 = 0;
  /** ABI version the host speaks. */
  abiVersion: u32 = 0;
  /** The current logical tick. */
  tick: u64 = 0;
  /** This agent's id. */
  agentId: u64 = 0;
  /** The task being run; `0` for a plain (round-robin) step. */
  taskId: u64 = 0;
  /** The task's priority; `0` when there is no task. */
  taskPriority: i32 = 0;
  /** Messages delivered to this agent this tick (already passed to `receive`). */
  mailboxLen: u32 = 0;
  /** Flag bits; see `FLAG_FIRST_STEP`. */
  flags: u32 = 0;
  /** The task payload (empty for a plain step). */
  payload: View = new View();

  /** Whether this is the first step after `agent_init`. */
  get firstStep(): bool {
    return (this.flags & FLAG_FIRST_STEP) != 0;
  }

  /** Whether this step runs a scheduled task (rather than a plain step). */
  get isTask(): bool {
    return this.taskId != 0;
  }

  /** Parses the context at `ptr` (`ERR_BAD_LAYOUT` if malformed). */
  parse(ptr: usize): i32 {
    const end = inMemory(ptr, STEP_CONTEXT_SIZE);
    if (end == 0) return ERR_BAD_LAYOUT;
    const size = load<u32>(ptr, 0);
    const abi = load<u32>(ptr, 4);
    const payloadLen = load<u32>(ptr, 36);
    if (size < STEP_CONTEXT_SIZE || abi >> 16 != ABI_MAJOR) return ERR_BAD_LAYOUT;
    if (inMemory(ptr, <u64>size + <u64>payloadLen) == 0) return ERR_BAD_LAYOUT;
    this.size = size;
    this.abiVersion = abi;
    this.tick = load<u64>(ptr, 8);
    this.agentId = load<u64>(ptr, 16);
    this.taskId = load<u64>(ptr, 24);
    this.taskPriority = load<i32>(ptr, 32);
    this.mailboxLen = load<u32>(ptr, 40);
    this.flags = load<u32>(ptr, 44);
    this.payload.set(ptr + size, <i32>payloadLen);
    return 0;
  }
}

/** One delivered message, as the host passes it to `agent_receive`.  The SDK
 *  reuses one instance: do not keep it (or its views) past the call. */
export class Message {
  /** Size of the fixed part (48 in v1.0). */
  size: u32 = 0;
  /** What sort of message this is (`MessageKind`; later minors may add kinds). */
  kind: u32 = 0;
  /** Sender agent id; `RUNTIME_SENDER` for the runtime or external input. */
  sender: u64 = 0;
  /** Tick in which the message was produced. */
  sentTick: u64 = 0;
  /** Sender's output sequence number; the request id for kinds 3 and 4. */
  seq: u64 = 0;
  /** Topic or channel name (empty for direct messages). */
  topic: View = new View();
  /** The payload. */
  payload: View = new View();

  /** Whether the runtime (or an external input) sent this message. */
  get fromRuntime(): bool {
    return this.sender == RUNTIME_SENDER;
  }

  /** Parses the message at `ptr` (`ERR_BAD_LAYOUT` if malformed). */
  parse(ptr: usize): i32 {
    if (inMemory(ptr, MESSAGE_SIZE) == 0) return ERR_BAD_LAYOUT;
    const size = load<u32>(ptr, 0);
    const topicLen = load<u32>(ptr, 32);
    const payloadLen = load<u32>(ptr, 36);
    if (size < MESSAGE_SIZE) return ERR_BAD_LAYOUT;
    if (inMemory(ptr, <u64>size + <u64>topicLen + <u64>payloadLen) == 0) return ERR_BAD_LAYOUT;
    this.size = size;
    this.kind = load<u32>(ptr, 4);
    this.sender = load<u64>(ptr, 8);
    this.sentTick = load<u64>(ptr, 16);
    this.seq = load<u64>(ptr, 24);
    this.topic.set(ptr + size, <i32>topicLen);
    this.payload.set(ptr + size + topicLen, <i32>payloadLen);
    return 0;
  }
}

// Whether `[ptr, ptr + len)` lies in memory and `ptr` is non-null; returns
// the end (non-zero) or 0.
function inMemory(ptr: usize, len: u64): u64 {
  if (ptr == 0) return 0;
  const end = <u64>ptr + len;
  const mem = <u64>memory.size() << 16;
  return end <= mem && len <= 0x7FFF_FFFF ? end : 0;
}

// --- the agent ---------------------------------------------------------------

/** An agent: the state kept between calls and its reactions to the runtime.
 *  Every method returns `0` for success; any other value is an agent error
 *  (the runtime records the fault `agent_error:<code>` and applies the
 *  restart policy).  Host refusals are negative (`-1` … `-4`), the SDK's own
 *  codes `-1000` …; use positive codes for your own. */
export abstract class Agent {
  /** One scheduled step (`agent_step`). */
  step(ctx: StepContext): i32 {
    return 0;
  }
  /** One delivered message (`agent_receive`), before this tick's step. */
  receive(msg: Message): i32 {
    return 0;
  }
  /** Called once before the agent is stopped (`agent_shutdown`). */
  shutdown(): i32 {
    return 0;
  }
  /** Called after a hot-swap upgrade with the old module's
   *  `agent_abi_version`, before the next step (only in modules that
   *  re-export `agent_migrate`; see `migrate.ts`). */
  migrate(fromVersion: u32): i32 {
    return 0;
  }
}

/** Creates the agent (`agent_init`, also after a restart). */
export type AgentFactory = () => Agent;

// SDK state: the factory, the agent, the host buffer and a marker that the
// SDK's globals are live (set by `agent_init`, so zero in a fresh instance).
let FACTORY: AgentFactory | null = null;
let AGENT: Agent | null = null;
let BUFFER_PTR: usize = 0;
let BUFFER_CAP: usize = 0;
let LIVE: u32 = 0;
const CTX: StepContext = new StepContext();
const MSG: Message = new Message();

/** Registers the agent's factory.  Call once, at the top level of the
 *  agent's module (it runs when the module is instantiated, before
 *  `agent_init`; it must not call host imports). */
export function register(factory: AgentFactory): void {
  FACTORY = factory;
}

/** The registered agent (`null` before `agent_init`). */
export function currentAgent(): Agent | null {
  return AGENT;
}

// The bodies of the ABI exports (see abi.ts and migrate.ts).  Not a stable API.

export function __abiBuffer(len: i32): usize {
  if (len < 0) return 0;
  if (<usize>len <= BUFFER_CAP) return BUFFER_PTR;
  if (len > 0x4000_0000) return 0;
  const cap = max<usize>(<usize>len, 128);
  if (BUFFER_PTR != 0) heap.free(BUFFER_PTR);
  BUFFER_PTR = heap.alloc(cap);
  BUFFER_CAP = cap;
  return BUFFER_PTR;
}

export function __abiInit(): i32 {
  const f = FACTORY;
  if (f === null) return ERR_NOT_INITIALIZED;
  AGENT = null;
  AGENT = f();
  LIVE = 1;
  return 0;
}

export function __abiStep(ptr: usize): i32 {
  if (CTX.parse(ptr) != 0) return ERR_BAD_LAYOUT;
  const a = AGENT;
  if (a === null) return ERR_NOT_INITIALIZED;
  return a.step(CTX);
}

export function __abiReceive(ptr: usize): i32 {
  if (MSG.parse(ptr) != 0) return ERR_BAD_LAYOUT;
  const a = AGENT;
  if (a === null) return ERR_NOT_INITIALIZED;
  return a.receive(MSG);
}

export function __abiShutdown(): i32 {
  const a = AGENT;
  if (a === null) return 0;
  return a.shutdown();
}

export function __abiMigrate(fromVersion: i32): i32 {
  // A fresh instance of this module has LIVE == 0: if the old module's
  // globals were carried over, LIVE is 1 (it is set by agent_init).
  if (LIVE == 0) return ERR_STATE_LOST;
  let a = AGENT;
  if (a === null) {
    const f = FACTORY;
    if (f === null) return ERR_NOT_INITIALIZED;
    a = f();
    AGENT = a;
  }
  return a.migrate(<u32>fromVersion);
}

// --- traces and Math.random ---------------------------------------------------
//
// The build routes AssemblyScript's `trace` and `seed` (Math.random's seed)
// here, and `abort` to abort.ts, with `--use`, so a module never imports from
// `env`.

/** `trace()`: logs the message and its numbers at trace level. */
export function lockstepTrace(
  message: string,
  n: i32 = 0,
  a0: f64 = 0,
  a1: f64 = 0,
  a2: f64 = 0,
  a3: f64 = 0,
  a4: f64 = 0,
): void {
  const l = line().s(message);
  if (n > 0) l.ch(32).f64(a0, 6);
  if (n > 1) l.ch(32).f64(a1, 6);
  if (n > 2) l.ch(32).f64(a2, 6);
  if (n > 3) l.ch(32).f64(a3, 6);
  if (n > 4) l.ch(32).f64(a4, 6);
  l.trace();
}

/** Seed of `Math.random` (asked once per instance, on first use): drawn from
 *  the agent's deterministic random stream. */
export function lockstepSeed(): f64 {
  return <f64>(random() >> 11) + 1.0;
}

// --- tensors -----------------------------------------------------------------

/** Element type of a tensor (docs/abi.md "Tensor"). */
export enum DType {
  F32 = 1,
  I64 = 2,
  I32 = 3,
  U8 = 4,
  F64 = 5,
}

/** Maximum tensor rank. */
export const MAX_RANK: i32 = 8;
/** Size of the fixed tensor header (before the dimensions). */
export const TENSOR_HEADER_SIZE: i32 = 8;

/** Tensor errors (negative, usable as agent error codes). */
export const TENSOR_TRUNCATED: i32 = -2001;
export const TENSOR_TRAILING_BYTES: i32 = -2002;
export const TENSOR_BAD_DTYPE: i32 = -2003;
export const TENSOR_BAD_RANK: i32 = -2004;
export const TENSOR_OVERFLOW: i32 = -2005;
export const TENSOR_SHAPE_MISMATCH: i32 = -2006;
export const TENSOR_WRONG_DTYPE: i32 = -2007;

/** Bytes per element of `dtype` (0 if unknown). */
export function dtypeSize(dtype: u32): i32 {
  if (dtype == DType.U8) return 1;
  if (dtype == DType.F32 || dtype == DType.I32) return 4;
  if (dtype == DType.I64 || dtype == DType.F64) return 8;
  return 0;
}

// The dtype of element type `T` (a compile-time constant).
// @ts-ignore: decorator
@inline function dtypeOf<T>(): DType {
  if (isFloat<T>() && sizeof<T>() == 4) {
    return DType.F32;
  } else if (isFloat<T>() && sizeof<T>() == 8) {
    return DType.F64;
  } else if (isInteger<T>() && !isBoolean<T>() && sizeof<T>() == 1 && !isSigned<T>()) {
    return DType.U8;
  } else if (isInteger<T>() && sizeof<T>() == 4 && isSigned<T>()) {
    return DType.I32;
  } else if (isInteger<T>() && sizeof<T>() == 8 && isSigned<T>()) {
    return DType.I64;
  } else {
    ERROR("lockstep: tensor elements must be f32, f64, i64, i32 or u8");
    return DType.U8;
  }
}

// Element count of `dims` or -1 on overflow (a count above 2^31).
function elementCount(dims: usize, rank: i32): i64 {
  let n: u64 = 1;
  for (let i = 0; i < rank; i++) {
    const d = load<u64>(dims + <usize>i * 8);
    if (d != 0 && n > <u64>0x7FFF_FFFF / d) return -1;
    n *= d;
  }
  return <i64>n;
}

// @ts-ignore: decorator
@inline function dimsPtr<D>(dims: D): usize {
  if (dims instanceof StaticArray<u64>) return changetype<usize>(dims);
  else if (dims instanceof Array<u64>) return (dims as Array<u64>).dataStart;
  else {
    ERROR("lockstep: dims must be a StaticArray<u64> or Array<u64>");
    return 0;
  }
}

/** Appends a tensor header (`dtype`, rank, reserved zeros, dimensions) to
 *  `out`; the elements follow, appended by the caller.  Returns the number
 *  of elements expected, or a negative `TENSOR_*` error. */
export function writeTensorHeader<D>(out: Bytes, dtype: DType, dims: D): i32 {
  const rank = dims.length;
  if (rank > MAX_RANK) return TENSOR_BAD_RANK;
  const count = elementCount(dimsPtr<D>(dims), rank);
  if (count < 0 || count * <i64>dtypeSize(dtype) > 0x7FFF_FFFF) return TENSOR_OVERFLOW;
  out.u8(<u8>dtype).u8(<u8>rank).u16(0).u32(0);
  for (let i = 0; i < rank; i++) out.u64(dims[i]);
  return <i32>count;
}

/** Encodes a tensor into `out` (cleared first): `values` (row-major) is a
 *  `StaticArray`, `Array` or typed array of `f32`, `f64`, `i64`, `i32` or
 *  `u8`, which gives the dtype; `dims` a `StaticArray<u64>` or `Array<u64>`.
 *  Returns 0 or a `TENSOR_*` error. */
export function encodeTensor<D, V>(out: Bytes, dims: D, values: V): i32 {
  out.clear();
  const count = writeTensorHeader<D>(out, dtypeOf<valueof<V>>(), dims);
  if (count < 0) return count;
  if (count != values.length) {
    out.clear();
    return TENSOR_SHAPE_MISMATCH;
  }
  out.raw(valuesPtr<V>(values), count * sizeof<valueof<V>>());
  return 0;
}

// @ts-ignore: decorator
@inline function valuesPtr<V>(values: V): usize {
  if (values instanceof StaticArray<valueof<V>>) {
    return changetype<usize>(values);
  } else if (values instanceof Array<valueof<V>>) {
    return (values as Array<valueof<V>>).dataStart;
  } else if (values instanceof ArrayBufferView) {
    return (values as ArrayBufferView).dataStart;
  } else {
    ERROR("lockstep: values must be a StaticArray, Array or typed array");
    return 0;
  }
}

/** A validated view of an encoded tensor (no copy; valid as long as the
 *  bytes are, e.g. during `receive` for a result message). */
export class TensorView {
  dtype: u32 = 0;
  rank: i32 = 0;
  /** Number of elements (1 for a rank-0 scalar). */
  length: i32 = 0;
  /** Address of the elements. */
  dataPtr: usize = 0;
  private dimsPtr: usize = 0;

  /** Validates and parses the tensor in `bytes`, which must hold exactly one
   *  tensor.  Returns 0 or a negative `TENSOR_*` error.  Reserved header
   *  bytes are not checked (later minors may use them). */
  parse(bytes: View): i32 {
    if (bytes.length < TENSOR_HEADER_SIZE) return TENSOR_TRUNCATED;
    const dtype = <u32>load<u8>(bytes.ptr);
    const rank = <i32>load<u8>(bytes.ptr + 1);
    const size = dtypeSize(dtype);
    if (size == 0) return TENSOR_BAD_DTYPE;
    if (rank > MAX_RANK) return TENSOR_BAD_RANK;
    const dataOff = TENSOR_HEADER_SIZE + 8 * rank;
    if (bytes.length < dataOff) return TENSOR_TRUNCATED;
    const count = elementCount(bytes.ptr + TENSOR_HEADER_SIZE, rank);
    if (count < 0) return TENSOR_OVERFLOW;
    const total = <i64>dataOff + count * <i64>size;
    if (total > 0x7FFF_FFFF) return TENSOR_OVERFLOW;
    if (<i64>bytes.length < total) return TENSOR_TRUNCATED;
    if (<i64>bytes.length > total) return TENSOR_TRAILING_BYTES;
    this.dtype = dtype;
    this.rank = rank;
    this.length = <i32>count;
    this.dimsPtr = bytes.ptr + TENSOR_HEADER_SIZE;
    this.dataPtr = bytes.ptr + dataOff;
    return 0;
  }

  /** Dimension `i`. */
  dim(i: i32): u64 {
    if (i < 0 || i >= this.rank) abort("TensorView: dimension out of range");
    return load<u64>(this.dimsPtr + <usize>i * 8);
  }

  @inline private at(i: i32, dtype: u32): usize {
    if (this.dtype != dtype || i < 0 || i >= this.length) abort("TensorView: wrong dtype or index");
    return this.dataPtr + <usize>i * <usize>dtypeSize(dtype);
  }

  f32(i: i32): f32 {
    return load<f32>(this.at(i, DType.F32));
  }
  f64(i: i32): f64 {
    return load<f64>(this.at(i, DType.F64));
  }
  i64(i: i32): i64 {
    return load<i64>(this.at(i, DType.I64));
  }
  i32(i: i32): i32 {
    return load<i32>(this.at(i, DType.I32));
  }
  u8(i: i32): u8 {
    return load<u8>(this.at(i, DType.U8));
  }

  /** Index of the largest element (first one on ties; NaNs are skipped),
   *  whatever the dtype; -1 for an empty tensor or an all-NaN one. */
  argmax(): i32 {
    let best = -1;
    const d = this.dtype;
    const p = this.dataPtr;
    if (d == DType.F32 || d == DType.F64) {
      let bv: f64 = 0;
      for (let i = 0; i < this.length; i++) {
        const v = d == DType.F32 ? <f64>load<f32>(p + <usize>i * 4) : load<f64>(p + <usize>i * 8);
        if (isNaN(v)) continue;
        if (best < 0 || v > bv) {
          best = i;
          bv = v;
        }
      }
    } else {
      let bv: i64 = 0;
      for (let i = 0; i < this.length; i++) {
        let v: i64;
        if (d == DType.I64) v = load<i64>(p + <usize>i * 8);
        else if (d == DType.I32) v = <i64>load<i32>(p + <usize>i * 4);
        else v = <i64>load<u8>(p + <usize>i);
        if (best < 0 || v > bv) {
          best = i;
          bv = v;
        }
      }
    }
    return best;
  }
}
