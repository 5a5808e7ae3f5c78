/**
 * `@lockstep/client`: drive a running Lockstep run from Node.js with the
 * specification's `Orchestrator` and `ModelRegistry` interfaces.
 */
export { LockstepError, SUPERVISOR_ERROR_CODES, type ErrorCode } from "./errors.js";
export {
  Orchestrator,
  ModelRegistry,
  type AgentRef,
  type AgentResult,
  type AgentSpec,
  type Applied,
  type ConnectOptions,
  type JoinResult,
  type DType,
  type InferenceRequest,
  type InferenceResponse,
  type ModelLoad,
  type ModelOptions,
  type ModelSwap,
  type ModelUnload,
  type Tensor,
  type PublishResult,
  type RequestOptions,
  type Snapshot,
  type SpawnResult,
  type Status,
  type StopResult,
  type Task,
  type TaskResult,
  type TelemetrySubscription,
  type UpgradeResult,
  type WaitOptions,
} from "./orchestrator.js";
export type {
  AgentTelemetry,
  CheckpointTelemetry,
  FailureTelemetry,
  InferenceTelemetry,
  TelemetryHook,
  TelemetryOptions,
  TelemetryRecord,
  TickTelemetry,
} from "./telemetry.js";
