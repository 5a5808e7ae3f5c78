import { stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { LockstepError, type ErrorCode } from "./errors.js";
import { encodeRequest, roundTrip } from "./socket.js";
import { TelemetryTail, type TelemetryHook, type TelemetryOptions } from "./telemetry.js";

/** An agent: its name, or its numeric id (sent as `#id`). */
export type AgentRef = string | number;

/** Options of a connection. */
export interface ConnectOptions {
  /** Deadline of each request, in milliseconds (default 30 000). */
  timeoutMs?: number;
}

/** Options of {@link Orchestrator.connect}. */
export interface WaitOptions extends ConnectOptions {
  /** How long to wait for `control.sock` to appear and answer (default 30 000 ms). */
  waitMs?: number;
}

/** Per-request options. */
export interface RequestOptions {
  /** Deadline of this request, in milliseconds. */
  timeoutMs?: number;
}

/** What {@link Orchestrator.spawnAgent} starts. */
export interface AgentSpec {
  /** Instance name (1 to 128 bytes, not starting with `#`). */
  name: string;
  /** The module (`.wasm`), a path on the supervisor's machine. */
  module: string;
  /** Tenant (default `"default"`). */
  tenant?: string;
  /** Scheduling priority (default 0). */
  priority?: number;
  /** Linear-memory limit in bytes (default: the supervisor's, 16 MiB). */
  memory?: number;
  /** Fuel per call (default: the supervisor's). */
  fuel?: number;
}

/** A task for {@link Orchestrator.scheduleTask}. */
export interface Task {
  /** Payload text (default empty). */
  payload?: string;
  /** Priority (default 0). */
  priority?: number;
  /** Ids of tasks it runs after (at most 64; they must exist). */
  deps?: readonly bigint[];
}

/** Every accepted input: the tick it takes effect at. */
export interface Applied {
  /** The tick the input is applied at (the next one). */
  tick: number;
}

/** {@link Orchestrator.spawnAgent}'s result. */
export interface SpawnResult extends Applied {
  /** The new agent's id. */
  agentId: number;
  /** Its name. */
  name: string;
}

/** {@link Orchestrator.scheduleTask}'s result. */
export interface TaskResult extends Applied {
  /** The task's id (64 bits: a `bigint`). */
  taskId: bigint;
  /** The agent it runs on. */
  agentId: number;
}

/** {@link Orchestrator.publish}'s result. */
export interface PublishResult extends Applied {
  /** The topic. */
  topic: string;
  /** How many agents it was delivered to. */
  subscribers: number;
}

/** The result of inputs aimed at one agent (send, stop). */
export interface AgentResult extends Applied {
  /** The agent's id. */
  agentId: number;
}

/** {@link Orchestrator.joinChannel}'s result. */
export interface JoinResult extends AgentResult {
  /** The channel. */
  channel: string;
}

/** {@link Orchestrator.upgradeAgent}'s result. */
export interface UpgradeResult extends AgentResult {
  /** The module it upgrades to (as the supervisor resolved it). */
  module: string;
}

/** {@link Orchestrator.snapshotState}'s result. */
export interface Snapshot {
  /** The tick it was taken after. */
  tick: number;
  /** The snapshot file, relative to the run directory. */
  file: string;
  /** The same, absolute. */
  path: string;
  /** The global state hash (hex). */
  stateHash: string;
}

/** {@link Orchestrator.status}'s result. */
export interface Status {
  /** The last tick run. */
  tick: number;
  /** The state hash after it (hex). */
  hash: string;
  /** Live agents. */
  agents: number;
  /** Steps so far. */
  steps: number;
  /** Messages so far. */
  messages: number;
  /** Agent faults so far. */
  faults: number;
}

/** {@link Orchestrator.stop}'s result. */
export interface StopResult {
  /** The last tick the run executes. */
  stopsAfterTick: number;
}

/** A handle on a registered telemetry hook. */
export interface TelemetrySubscription {
  /** Stops reading; resolves once the last callback returned. */
  close(): Promise<void>;
}

function agentRef(a: AgentRef): string {
  return typeof a === "number" ? `#${a}` : a;
}

function num(data: Record<string, unknown>, key: string): number {
  const v = data[key];
  if (typeof v !== "number") throw new LockstepError("protocol", `answer lacks number \`${key}\``);
  return v;
}

function str(data: Record<string, unknown>, key: string): string {
  const v = data[key];
  if (typeof v !== "string") throw new LockstepError("protocol", `answer lacks string \`${key}\``);
  return v;
}

/**
 * The specification's `Orchestrator`, for a running `lockstep run … --forever`
 * (or any run still going): every call is one request on
 * `<run-dir>/control.sock`, applied by the supervisor at the next tick
 * boundary and journaled, so a replay reproduces it.
 */
export class Orchestrator {
  /** The run directory. */
  readonly runDir: string;
  /** Its control socket. */
  readonly socketPath: string;
  /** Default deadline of a request, ms. */
  readonly timeoutMs: number;

  constructor(runDir: string, options: ConnectOptions = {}) {
    this.runDir = resolve(runDir);
    this.socketPath = join(this.runDir, "control.sock");
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  /**
   * Waits until the run in `runDir` answers on its control socket, then
   * returns an orchestrator for it.
   */
  static async connect(runDir: string, options: WaitOptions = {}): Promise<Orchestrator> {
    const o = new Orchestrator(runDir, options);
    const deadline = Date.now() + (options.waitMs ?? 30_000);
    for (;;) {
      try {
        await stat(o.socketPath);
        await o.status();
        return o;
      } catch (e) {
        const code = e instanceof LockstepError ? e.code : "connect-failed";
        const retry = code === "connect-failed" || (e as NodeJS.ErrnoException).code === "ENOENT";
        if (!retry || Date.now() >= deadline) {
          if (e instanceof LockstepError) throw e;
          throw new LockstepError("connect-failed", `no control socket at ${o.socketPath}`, { cause: e });
        }
      }
      await sleep(50);
    }
  }

  /**
   * Sends one command (`{"cmd": …}` as in `supervisor/src/ctl.rs`) and
   * returns its `data` and `tick`; a refusal rejects with a
   * {@link LockstepError}.
   */
  async request(
    cmd: Record<string, unknown> & { cmd: string },
    options: RequestOptions = {},
  ): Promise<{ tick: number; data: Record<string, unknown> }> {
    const answer = await roundTrip(this.socketPath, encodeRequest(cmd), options.timeoutMs ?? this.timeoutMs);
    if (!answer.ok) throw new LockstepError(answer.code as ErrorCode, answer.message);
    return { tick: answer.tick, data: answer.data ?? {} };
  }

  /** `spawnAgent(spec: AgentSpec): AgentId`: starts an agent at the next tick. */
  async spawnAgent(spec: AgentSpec, options?: RequestOptions): Promise<SpawnResult> {
    const cmd: Record<string, unknown> & { cmd: string } = {
      cmd: "spawn",
      name: spec.name,
      module: resolve(spec.module),
    };
    if (spec.tenant !== undefined) cmd.tenant = spec.tenant;
    if (spec.priority !== undefined) cmd.priority = spec.priority;
    if (spec.memory !== undefined) cmd.memory = spec.memory;
    if (spec.fuel !== undefined) cmd.fuel = spec.fuel;
    const { tick, data } = await this.request(cmd, options);
    return { tick, agentId: num(data, "agent"), name: str(data, "name") };
  }

  /** `scheduleTask(agentId, task)`: submits a task (issuer: the runtime). */
  async scheduleTask(agent: AgentRef, task: Task = {}, options?: RequestOptions): Promise<TaskResult> {
    const { tick, data } = await this.request(
      {
        cmd: "task",
        agent: agentRef(agent),
        payload: task.payload ?? "",
        priority: task.priority ?? 0,
        deps: [...(task.deps ?? [])],
      },
      options,
    );
    return { tick, taskId: BigInt(str(data, "task")), agentId: num(data, "agent") };
  }

  /** `publish(topic, message)`: publishes on a topic (sender: the runtime). */
  async publish(topic: string, message: string, options?: RequestOptions): Promise<PublishResult> {
    const { tick, data } = await this.request({ cmd: "publish", topic, payload: message }, options);
    return { tick, topic: str(data, "topic"), subscribers: num(data, "subscribers") };
  }

  /** `send(agentId, message)`: a direct message (sender: the runtime). */
  async send(agent: AgentRef, message: string, options?: RequestOptions): Promise<AgentResult> {
    const { tick, data } = await this.request({ cmd: "send", agent: agentRef(agent), payload: message }, options);
    return { tick, agentId: num(data, "agent") };
  }

  /** `joinChannel(agentId, channel)`: makes the agent a member of a channel. */
  async joinChannel(agent: AgentRef, channel: string, options?: RequestOptions): Promise<JoinResult> {
    const { tick, data } = await this.request({ cmd: "join-channel", agent: agentRef(agent), channel }, options);
    return { tick, agentId: num(data, "agent"), channel: str(data, "channel") };
  }

  /** Stops one agent at the next tick. */
  async stopAgent(agent: AgentRef, options?: RequestOptions): Promise<AgentResult> {
    const { tick, data } = await this.request({ cmd: "stop-agent", agent: agentRef(agent) }, options);
    return { tick, agentId: num(data, "agent") };
  }

  /**
   * Hot-swaps an agent to another module at the next tick boundary (same
   * ABI major version; a changed state layout needs `agent_migrate`).
   */
  async upgradeAgent(agent: AgentRef, module: string, options?: RequestOptions): Promise<UpgradeResult> {
    const { tick, data } = await this.request(
      { cmd: "upgrade", agent: agentRef(agent), module: resolve(module) },
      options,
    );
    return { tick, agentId: num(data, "agent"), module: str(data, "module") };
  }

  /** `snapshotState(): Snapshot`: a checkpoint now, between two ticks. */
  async snapshotState(options?: RequestOptions): Promise<Snapshot> {
    const { tick, data } = await this.request({ cmd: "snapshot" }, options);
    const file = str(data, "file");
    return { tick, file, path: join(this.runDir, file), stateHash: str(data, "state_hash") };
  }

  /** The run's tick, state hash and counters. */
  async status(options?: RequestOptions): Promise<Status> {
    const { tick, data } = await this.request({ cmd: "status" }, options);
    return {
      tick,
      hash: str(data, "hash"),
      agents: num(data, "agents"),
      steps: num(data, "steps"),
      messages: num(data, "messages"),
      faults: num(data, "faults"),
    };
  }

  /** The run's child processes and their sandbox reports (what `lockstep doctor` reads). */
  async children(options?: RequestOptions): Promise<unknown> {
    const { data } = await this.request({ cmd: "children" }, options);
    return data;
  }

  /** Stops the run at the next tick boundary. */
  async stop(options?: RequestOptions): Promise<StopResult> {
    const { data } = await this.request({ cmd: "stop" }, options);
    return { stopsAfterTick: num(data, "stops_after_tick") };
  }

  /**
   * `registerTelemetryHook(hook)`: calls `hook` with the records the
   * supervisor appends to `<run-dir>/metrics.jsonl` (ticks, sampled agents,
   * inference batches, checkpoints, failures), following its rotation to
   * `metrics.1.jsonl`.  Observation only: it never changes the run.
   */
  registerTelemetryHook(hook: TelemetryHook, options: TelemetryOptions = {}): TelemetrySubscription {
    const tail = new TelemetryTail(join(this.runDir, "metrics.jsonl"), hook, options);
    tail.start();
    return { close: () => tail.close() };
  }
}

/**
 * The specification's `ModelRegistry` for a running run.  `loadModel`,
 * `unloadModel` and `swapModel` are inputs: checked first (a model file is
 * read, hashed and loaded by the run's inference host before anything is
 * journaled), applied at the next tick boundary and journaled, so a replay
 * loads the same bytes at the same tick.  `infer` and `batchInfer` ask the
 * model from outside the run: answered between ticks with the model's
 * current version, never journaled and never seen by agents — they do not
 * change the run.
 */
export class ModelRegistry {
  readonly #orchestrator: Orchestrator;

  constructor(orchestrator: Orchestrator) {
    this.#orchestrator = orchestrator;
  }

  /**
   * `loadModel(modelId, version)`: loads the `.onnx` file at `path` (on the
   * supervisor's machine; made absolute here) as `modelId@version`; it is
   * the model's current version from the next tick on.  Refused with
   * `model-refused` (file unreadable, hash mismatch, a model ONNX Runtime
   * cannot load), `conflict` (already loaded) or `bad-request`.
   */
  async loadModel(
    modelId: string,
    version: string,
    path: string,
    options: ModelOptions & RequestOptions = {},
  ): Promise<ModelLoad> {
    const cmd: Record<string, unknown> & { cmd: string } = {
      cmd: "load-model",
      id: modelId,
      version,
      path: resolve(path),
    };
    if (options.blake3 !== undefined) cmd.blake3 = options.blake3;
    if (options.maxBatch !== undefined) cmd.max_batch = options.maxBatch;
    if (options.latencyTicks !== undefined) cmd.latency_ticks = options.latencyTicks;
    const { tick, data } = await this.#orchestrator.request(cmd, options);
    const previous = data.previous;
    return {
      tick,
      modelId: str(data, "model"),
      version: str(data, "version"),
      blake3: str(data, "blake3"),
      previous: typeof previous === "string" ? previous : null,
    };
  }

  /**
   * `unloadModel(modelId)`: unloads every version of `modelId` (or only
   * `version`, which must not be the current one while others remain) at
   * the next tick.  Agents asking for it then get the unknown-model error.
   */
  async unloadModel(modelId: string, version?: string, options?: RequestOptions): Promise<ModelUnload> {
    const cmd: Record<string, unknown> & { cmd: string } = { cmd: "unload-model", id: modelId };
    if (version !== undefined) cmd.version = version;
    const { tick, data } = await this.#orchestrator.request(cmd, options);
    const versions = data.versions;
    if (!Array.isArray(versions) || !versions.every((v) => typeof v === "string")) {
      throw new LockstepError("protocol", "answer lacks string array `versions`");
    }
    return { tick, modelId: str(data, "model"), versions: versions as string[] };
  }

  /**
   * Makes `version` the version agents get when they ask for `modelId`
   * without one, from the next tick on.
   */
  async swapModel(modelId: string, version: string, options?: RequestOptions): Promise<ModelSwap> {
    const { tick, data } = await this.#orchestrator.request({ cmd: "swap-model", id: modelId, version }, options);
    const previous = data.previous;
    return {
      tick,
      modelId: str(data, "model"),
      version: str(data, "version"),
      previous: typeof previous === "string" ? previous : null,
    };
  }

  /**
   * `infer(modelId, input): Tensor`: one answer from `modelId` (its current
   * version, or `id@version`), asked from outside the run.  Rejects with
   * `unknown-model`, `inference-failed` (the model refused the input) or
   * `bad-request` (a malformed tensor).
   */
  async infer(modelId: string, input: Tensor, options?: RequestOptions): Promise<Tensor> {
    const { data } = await this.#orchestrator.request({ cmd: "infer", model: modelId, input: tensorOut(input) }, options);
    return tensorIn(data.output);
  }

  /**
   * `batchInfer(requests)`: one answer per request, in order, each
   * `{ ok: true, output }` or `{ ok: false, error }`.  The specification's
   * form takes `{ modelId, input }` requests over any models (one
   * `batch-infer` per model, the unit the inference host batches; a model
   * that is unknown fails its own requests with `unknown-model`); the
   * short form `batchInfer(modelId, inputs)` asks one model.  A failure of
   * one input is its own `LockstepError` (`inference-failed`); the others
   * are answered.
   */
  async batchInfer(requests: readonly InferenceRequest[], options?: RequestOptions): Promise<InferenceResponse[]>;
  async batchInfer(modelId: string, inputs: readonly Tensor[], options?: RequestOptions): Promise<InferenceResponse[]>;
  async batchInfer(
    first: string | readonly InferenceRequest[],
    second?: readonly Tensor[] | RequestOptions,
    third?: RequestOptions,
  ): Promise<InferenceResponse[]> {
    if (typeof first === "string") {
      return this.#batchOne(first, (second ?? []) as readonly Tensor[], third);
    }
    const options = second as RequestOptions | undefined;
    const byModel = new Map<string, number[]>();
    first.forEach((r, i) => {
      const list = byModel.get(r.modelId) ?? [];
      list.push(i);
      byModel.set(r.modelId, list);
    });
    const out: InferenceResponse[] = new Array(first.length);
    for (const [modelId, indices] of byModel) {
      let answers: InferenceResponse[];
      try {
        answers = await this.#batchOne(modelId, indices.map((i) => first[i].input), options);
      } catch (e) {
        if (!(e instanceof LockstepError) || e.code !== "unknown-model") throw e;
        answers = indices.map(() => ({ ok: false, error: e }));
      }
      indices.forEach((i, k) => {
        out[i] = answers[k];
      });
    }
    return out;
  }

  async #batchOne(modelId: string, inputs: readonly Tensor[], options?: RequestOptions): Promise<InferenceResponse[]> {
    const { data } = await this.#orchestrator.request(
      { cmd: "batch-infer", model: modelId, inputs: inputs.map(tensorOut) },
      options,
    );
    const outputs = data.outputs;
    if (!Array.isArray(outputs)) throw new LockstepError("protocol", "answer lacks array `outputs`");
    return outputs.map((o: unknown): InferenceResponse => {
      const r = o as { output?: unknown; error?: unknown };
      if (typeof r.error === "string") return { ok: false, error: new LockstepError("inference-failed", r.error) };
      return { ok: true, output: tensorIn(r.output) };
    });
  }
}

/** Element types of a {@link Tensor}. */
export type DType = "f32" | "f64" | "i32" | "i64" | "u8";

/** A tensor: row-major `data`, as many values as `shape` has elements. */
export interface Tensor {
  /** Element type (default `"f32"`). */
  dtype?: DType;
  /** Dimensions. */
  shape: readonly number[];
  /** Values (a NaN or infinite output value arrives as `null`). */
  data: readonly (number | null)[];
}

/** One answer of {@link ModelRegistry.batchInfer}. */
export type InferenceResponse = { ok: true; output: Tensor } | { ok: false; error: LockstepError };

/** One request of {@link ModelRegistry.batchInfer}: a model (`id` or `id@version`) and its input. */
export interface InferenceRequest {
  modelId: string;
  input: Tensor;
}

/** Per-model options of {@link ModelRegistry.loadModel}, as in the manifest's `[[models]]`. */
export interface ModelOptions {
  /** The file's expected BLAKE3 (64 hex digits); the load is refused otherwise. */
  blake3?: string;
  /** Largest batch of one model run (default 32). */
  maxBatch?: number;
  /** Ticks between a request and its answer (default 1). */
  latencyTicks?: number;
}

function tensorOut(t: Tensor): Record<string, unknown> {
  return { dtype: t.dtype ?? "f32", shape: [...t.shape], data: [...t.data] };
}

function tensorIn(v: unknown): Tensor {
  const t = v as { dtype?: unknown; shape?: unknown; data?: unknown };
  if (
    typeof v !== "object" ||
    v === null ||
    typeof t.dtype !== "string" ||
    !Array.isArray(t.shape) ||
    !Array.isArray(t.data)
  ) {
    throw new LockstepError("protocol", "answer lacks a tensor");
  }
  return { dtype: t.dtype as DType, shape: t.shape as number[], data: t.data as (number | null)[] };
}

/** {@link ModelRegistry.swapModel}'s result. */
export interface ModelSwap extends Applied {
  /** The model. */
  modelId: string;
  /** Its version from `tick` on. */
  version: string;
  /** The version it had been switched to before, if any. */
  previous: string | null;
}

/** {@link ModelRegistry.loadModel}'s result. */
export interface ModelLoad extends Applied {
  /** The model. */
  modelId: string;
  /** The version loaded (current from `tick` on). */
  version: string;
  /** BLAKE3 of the file (hex), pinned in the journal. */
  blake3: string;
  /** The model's current version before, if it had one. */
  previous: string | null;
}

/** {@link ModelRegistry.unloadModel}'s result. */
export interface ModelUnload extends Applied {
  /** The model. */
  modelId: string;
  /** The versions unloaded. */
  versions: string[];
}
