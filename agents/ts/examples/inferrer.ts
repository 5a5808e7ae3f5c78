// Every 5 ticks asks `infer("mlp", f32[1,16])` with inputs from `randomF32()`,
// records the kind-3 answers and logs their argmax, and — in the step of the
// tick an answer arrived in — the tick it was asked in and that tick.  The
// TypeScript twin of agents/examples/inferrer (same requests, same log lines).

import {
  Agent,
  Bytes,
  Message,
  MessageKind,
  Name,
  StepContext,
  TensorView,
  encodeTensor,
  infer,
  line,
  randomF32,
  refusalText,
  register,
} from "../sdk/lockstep";
export * from "../sdk/abi";

/** Ticks between requests. */
const EVERY: u64 = 5;
/** Agent error returned for a malformed result tensor. */
const ERR_BAD_RESULT: i32 = 3;
/** Requests awaiting an answer that are remembered (the oldest is forgotten). */
const MAX_PENDING: i32 = 64;
/** Answers remembered, as `(request id, argmax)` (a ring). */
const KEEP_ANSWERS: i32 = 32;

const DIMS: StaticArray<u64> = [1, 16];

/** Results received since `agent_init` (exported as `inferrer_answers`). */
let ANSWERS: u64 = 0;
/** Argmax of the last result, `-1` if none (exported as `inferrer_last_argmax`). */
let LAST_ARGMAX: i64 = -1;

class Inferrer extends Agent {
  model: Name = new Name("mlp");
  input: StaticArray<f32> = new StaticArray<f32>(16);
  request: Bytes = new Bytes(8 + 16 + 64);
  result: TensorView = new TensorView();
  /** Request ids not answered yet (`pendingLen` of them), and their ask ticks. */
  pending: StaticArray<u64> = new StaticArray<u64>(MAX_PENDING);
  pendingAsked: StaticArray<u64> = new StaticArray<u64>(MAX_PENDING);
  pendingLen: i32 = 0;
  /** Answered request ids and their ask ticks, not logged yet. */
  arrived: StaticArray<u64> = new StaticArray<u64>(MAX_PENDING);
  arrivedAsked: StaticArray<u64> = new StaticArray<u64>(MAX_PENDING);
  arrivedLen: i32 = 0;
  /** The last answers: request ids and argmaxes. */
  answerIds: StaticArray<u64> = new StaticArray<u64>(KEEP_ANSWERS);
  answerArgmax: StaticArray<u32> = new StaticArray<u32>(KEEP_ANSWERS);
  errors: u64 = 0;

  constructor() {
    super();
    ANSWERS = 0;
    LAST_ARGMAX = -1;
  }

  step(ctx: StepContext): i32 {
    for (let i = 0; i < this.arrivedLen; i++) {
      line()
        .s("inferrer: request ")
        .u64(this.arrived[i])
        .s(" asked at tick ")
        .u64(this.arrivedAsked[i])
        .s(" answered at tick ")
        .u64(ctx.tick)
        .info();
    }
    this.arrivedLen = 0;
    if (ctx.tick % EVERY != 0) return 0;
    for (let i = 0; i < this.input.length; i++) this.input[i] = randomF32();
    if (encodeTensor(this.request, DIMS, this.input) != 0) return 2;
    const id = infer(this.model, this.request);
    if (id > 0) {
      if (this.pendingLen == MAX_PENDING) this.forget(0);
      this.pending[this.pendingLen] = <u64>id;
      this.pendingAsked[this.pendingLen] = ctx.tick;
      this.pendingLen++;
    } else {
      line().s("inferrer: request refused: ").s(refusalText(id)).warn();
    }
    return 0;
  }

  forget(i: i32): void {
    for (let k = i + 1; k < this.pendingLen; k++) {
      this.pending[k - 1] = this.pending[k];
      this.pendingAsked[k - 1] = this.pendingAsked[k];
    }
    this.pendingLen--;
  }

  receive(msg: Message): i32 {
    const isAnswer = msg.kind == MessageKind.InferenceResult || msg.kind == MessageKind.InferenceError;
    let known = false;
    if (isAnswer) {
      for (let i = 0; i < this.pendingLen; i++) {
        if (this.pending[i] == msg.seq) {
          if (this.arrivedLen < MAX_PENDING) {
            this.arrived[this.arrivedLen] = msg.seq;
            this.arrivedAsked[this.arrivedLen] = this.pendingAsked[i];
            this.arrivedLen++;
          }
          this.forget(i);
          known = true;
          break;
        }
      }
    }
    if (msg.kind == MessageKind.InferenceResult) {
      if (!known) line().s("inferrer: answer for unknown request ").u64(msg.seq).warn();
      const t = this.result;
      const argmax = t.parse(msg.payload) == 0 ? t.argmax() : -1;
      if (argmax < 0) {
        line().s("inferrer: malformed result for request ").u64(msg.seq).error();
        return ERR_BAD_RESULT;
      }
      const slot = <i32>(ANSWERS % <u64>KEEP_ANSWERS);
      this.answerIds[slot] = msg.seq;
      this.answerArgmax[slot] = <u32>argmax;
      ANSWERS += 1;
      LAST_ARGMAX = argmax;
      line().s("inferrer: request ").u64(msg.seq).s(" argmax ").u64(<u64>argmax).info();
    } else if (msg.kind == MessageKind.InferenceError) {
      this.errors += 1;
      const l = line().s("inferrer: request ").u64(msg.seq).s(" failed: ");
      if (msg.payload.isUtf8()) l.view(msg.payload);
      else l.s("<non-UTF-8 error>");
      l.warn();
    }
    return 0;
  }
}

register((): Agent => new Inferrer());

/** Extra export (ignored by the runtime): results received since `agent_init`. */
export function inferrer_answers(): i64 {
  return <i64>ANSWERS;
}

/** Extra export (ignored by the runtime): argmax of the last result, `-1` if none. */
export function inferrer_last_argmax(): i64 {
  return LAST_ARGMAX;
}
