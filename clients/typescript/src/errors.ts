/**
 * Stable error codes.  The supervisor's codes (`lockstep ctl --json`) and
 * the client's own (`connect-failed`, `protocol`, `io`; `timeout` is both).
 */
export type ErrorCode =
  /** The request is not a valid command, or a field is out of range. */
  | "bad-request"
  /** No agent of that name or `#id`. */
  | "unknown-agent"
  /** No tenant of that name. */
  | "unknown-tenant"
  /** No such model is loaded, or no such version of it. */
  | "unknown-model"
  /** An agent of that name (or a task of that id) already exists. */
  | "conflict"
  /** The agent is stopped or not yet started. */
  | "not-running"
  /** The module cannot be read, fails its checks or needs more memory than the agent's limit. */
  | "module-refused"
  /** An upgrade changes the ABI major version, or the state layout without `agent_migrate`. */
  | "incompatible-upgrade"
  /** A task depends on itself, on a failed task or on an unknown task. */
  | "bad-dependency"
  /** A quota, size or count limit. */
  | "limit"
  /** The run is stopping or has stopped; nothing was applied. */
  | "stopping"
  /** No answer in time (from the supervisor, or the client's own deadline). */
  | "timeout"
  /** The supervisor failed to do it (for example a snapshot write). */
  | "internal"
  /** A model to load cannot be read, does not match its hash, or ONNX Runtime cannot load it. */
  | "model-refused"
  /** A model refused an input of `infer`/`batchInfer` or failed to run it. */
  | "inference-failed"
  /** The control socket cannot be reached (no such run, or it has ended). */
  | "connect-failed"
  /** The answer could not be understood. */
  | "protocol"
  /** Another I/O error on the socket or the metrics file. */
  | "io";

/** The codes the supervisor itself sends. */
export const SUPERVISOR_ERROR_CODES: readonly ErrorCode[] = [
  "bad-request",
  "unknown-agent",
  "unknown-tenant",
  "unknown-model",
  "conflict",
  "not-running",
  "module-refused",
  "incompatible-upgrade",
  "bad-dependency",
  "limit",
  "stopping",
  "timeout",
  "internal",
  "model-refused",
  "inference-failed",
];

/** A refused or failed request: `code` is stable, `message` is for people. */
export class LockstepError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "LockstepError";
    this.code = code;
  }
}
