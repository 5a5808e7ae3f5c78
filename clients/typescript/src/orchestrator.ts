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
 * The specification's `ModelRegistry`, as far as a running supervisor
 * offers it: the models and their versions are the manifest's
 * `[[models]]`, loaded by the inference host at start-up; a run can switch
 * a model to another declared version (journaled, so replays switch at the
 * same tick).
 */
export class ModelRegistry {
  readonly #orchestrator: Orchestrator;

  constructor(orchestrator: Orchestrator) {
    this.#orchestrator = orchestrator;
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
