import { open, stat, type FileHandle } from "node:fs/promises";
import { LockstepError } from "./errors.js";

/** One tick (`{"type":"tick",…}` in metrics.jsonl). */
export interface TickTelemetry {
  type: "tick";
  tick: number;
  /** Wall time of the whole tick, µs. */
  wall_us: number;
  /** Wall time waiting for workers, µs. */
  workers_us: number;
  steps: number;
  calls: number;
  messages: number;
  dropped: number;
  fuel: number;
  faults: number;
  /** Live agents. */
  agents: number;
  tasks_open: number;
  /** Messages waiting for the next tick. */
  queued: number;
  /** Per-worker wall time of its share, µs. */
  worker_us: number[];
  infer_wait_us: number;
  infer_pending: number;
  infer_batches_in_flight: number;
  infer_busy_us: number;
}

/** One agent in a sampled tick. */
export interface AgentTelemetry {
  type: "agent";
  tick: number;
  agent: number;
  calls: number;
  fuel: number;
  wall_ns: number;
  mailbox: number;
  faulted: boolean;
}

/** One inference batch. */
export interface InferenceTelemetry {
  type: "inference";
  tick: number;
  model: string;
  requests: number;
  batches: number;
  max_batch: number;
  latency_us: number;
  run_us: number;
  device: string;
  version: string;
  queue_us: number;
  rss_bytes: number;
  errors: number;
  host_restarts: number;
}

/** One checkpoint. */
export interface CheckpointTelemetry {
  type: "checkpoint";
  tick: number;
  file: string;
  state_hash: string;
  agents: number;
  wall_us: number;
  pages_bytes: number;
}

/** A child failure and its recovery. */
export interface FailureTelemetry {
  type: "failure";
  tick: number;
  line: string;
}

/** Any record of metrics.jsonl. */
export type TelemetryRecord =
  | TickTelemetry
  | AgentTelemetry
  | InferenceTelemetry
  | CheckpointTelemetry
  | FailureTelemetry;

/**
 * Receives telemetry: a function for every record, or an object with the
 * callbacks it wants (the names of the supervisor's `TelemetryHook`).
 */
export type TelemetryHook =
  | ((record: TelemetryRecord) => void)
  | {
      onTick?(t: TickTelemetry): void;
      onAgent?(a: AgentTelemetry): void;
      onInference?(i: InferenceTelemetry): void;
      onCheckpoint?(c: CheckpointTelemetry): void;
      onFailure?(f: FailureTelemetry): void;
      /** Reading failed (the subscription goes on polling). */
      onError?(e: LockstepError): void;
    };

/** Options of a telemetry hook. */
export interface TelemetryOptions {
  /** Read the file from its start, not only what is appended from now (default false). */
  fromStart?: boolean;
  /** How often to look for new lines, ms (default 100). */
  pollMs?: number;
}

/**
 * Follows metrics.jsonl: reads what is appended, and when the supervisor
 * rotates it (renames it to metrics.1.jsonl and starts a new one) finishes
 * the old file through the handle it holds before it opens the new one.
 */
export class TelemetryTail {
  readonly #path: string;
  readonly #hook: TelemetryHook;
  readonly #pollMs: number;
  #fromStart: boolean;
  #file: FileHandle | null = null;
  #ino = -1;
  #pos = 0;
  #partial = "";
  #closed = false;
  #loop: Promise<void> | null = null;
  #wake: (() => void) | null = null;

  constructor(path: string, hook: TelemetryHook, options: TelemetryOptions) {
    this.#path = path;
    this.#hook = hook;
    this.#pollMs = options.pollMs ?? 100;
    this.#fromStart = options.fromStart ?? false;
  }

  start(): void {
    this.#loop = this.#run();
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#wake?.();
    await this.#loop;
  }

  async #run(): Promise<void> {
    try {
      while (!this.#closed) {
        try {
          await this.#poll();
        } catch (e) {
          this.#error(e);
        }
        if (this.#closed) break;
        await new Promise<void>((r) => {
          const t = setTimeout(r, this.#pollMs);
          this.#wake = () => {
            clearTimeout(t);
            r();
          };
        });
      }
    } finally {
      await this.#file?.close().catch(() => {});
      this.#file = null;
    }
  }

  async #poll(): Promise<void> {
    let ino: number;
    try {
      ino = (await stat(this.#path)).ino;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return; // not yet, or mid-rotation
      throw e;
    }
    if (this.#file && ino !== this.#ino) {
      // Rotated: the rest of the old file, then the new one from its start.
      await this.#drain();
      this.#flushPartial();
      await this.#file.close();
      this.#file = null;
      this.#fromStart = true;
    }
    if (!this.#file) {
      this.#file = await open(this.#path, "r");
      this.#ino = (await this.#file.stat()).ino;
      this.#pos = this.#fromStart ? 0 : (await this.#file.stat()).size;
      this.#partial = "";
      this.#fromStart = true;
    }
    if ((await this.#file.stat()).size < this.#pos) {
      this.#pos = 0; // truncated: a new file under the same inode
      this.#partial = "";
    }
    await this.#drain();
  }

  async #drain(): Promise<void> {
    const f = this.#file;
    if (!f) return;
    const buf = Buffer.alloc(1 << 16);
    for (;;) {
      const { bytesRead } = await f.read(buf, 0, buf.length, this.#pos);
      if (bytesRead === 0) return;
      this.#pos += bytesRead;
      const text = this.#partial + buf.toString("utf8", 0, bytesRead);
      const lines = text.split("\n");
      this.#partial = lines.pop() ?? "";
      for (const line of lines) this.#line(line);
      if (this.#closed) return;
    }
  }

  #flushPartial(): void {
    if (this.#partial.length > 0) this.#line(this.#partial);
    this.#partial = "";
  }

  #line(line: string): void {
    if (line.trim() === "") return;
    let record: TelemetryRecord;
    try {
      record = JSON.parse(line) as TelemetryRecord;
    } catch (e) {
      this.#error(new LockstepError("protocol", `not a telemetry record: ${line.slice(0, 200)}`, { cause: e }));
      return;
    }
    const h = this.#hook;
    if (typeof h === "function") {
      h(record);
      return;
    }
    switch (record.type) {
      case "tick":
        h.onTick?.(record);
        break;
      case "agent":
        h.onAgent?.(record);
        break;
      case "inference":
        h.onInference?.(record);
        break;
      case "checkpoint":
        h.onCheckpoint?.(record);
        break;
      case "failure":
        h.onFailure?.(record);
        break;
    }
  }

  #error(e: unknown): void {
    const err =
      e instanceof LockstepError ? e : new LockstepError("io", `reading ${this.#path}: ${String(e)}`, { cause: e });
    if (typeof this.#hook !== "function" && this.#hook.onError) this.#hook.onError(err);
  }
}
