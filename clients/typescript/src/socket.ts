import { createConnection } from "node:net";
import { LockstepError, type ErrorCode } from "./errors.js";

/** Largest answer accepted (the supervisor's answers are one short line). */
const MAX_ANSWER = 16 << 20;

/**
 * The supervisor's JSON answer (`text` is the prose line for people; the
 * client never reads it).
 */
export type Answer =
  | { ok: true; tick: number; data: Record<string, unknown>; text?: string }
  | { ok: false; code: string; message: string; text?: string };

/**
 * Serialises a request; `bigint`s become JSON integers (task ids do not fit
 * in a JavaScript number).
 */
export function encodeRequest(cmd: Record<string, unknown>): string {
  const marker = "\u0000bigint:";
  const text = JSON.stringify({ ...cmd, format: "json" }, (_k, v: unknown) =>
    typeof v === "bigint" ? `${marker}${v.toString()}` : v,
  );
  return text.replace(/"\\u0000bigint:(-?\d+)"/g, "$1");
}

/**
 * One request on `<run-dir>/control.sock` (one per connection): sends the
 * JSON line, reads the one-line answer.
 */
export function roundTrip(socketPath: string, line: string, timeoutMs: number): Promise<Answer> {
  return new Promise<Answer>((resolve, reject) => {
    let buf = "";
    let settled = false;
    const sock = createConnection({ path: socketPath });
    const finish = (err: LockstepError | null, answer?: Answer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(answer as Answer);
    };
    const timer = setTimeout(
      () =>
        finish(
          new LockstepError(
            "timeout",
            `no answer from ${socketPath} within ${timeoutMs} ms (the request may still be applied)`,
          ),
        ),
      timeoutMs,
    );
    sock.setEncoding("utf8");
    sock.on("connect", () => sock.write(line + "\n"));
    sock.on("data", (chunk: string) => {
      buf += chunk;
      const nl = buf.indexOf("\n");
      if (nl < 0) {
        if (buf.length > MAX_ANSWER) finish(new LockstepError("protocol", "answer too long"));
        return;
      }
      try {
        finish(null, parseAnswer(buf.slice(0, nl)));
      } catch (e) {
        finish(e as LockstepError);
      }
    });
    sock.on("error", (e: NodeJS.ErrnoException) => {
      const code: ErrorCode =
        e.code === "ENOENT" || e.code === "ECONNREFUSED" || e.code === "ENOTSOCK"
          ? "connect-failed"
          : "io";
      const what = code === "connect-failed" ? "cannot connect to" : "I/O error on";
      finish(new LockstepError(code, `${what} ${socketPath} (is the run still going?): ${e.message}`, { cause: e }));
    });
    sock.on("close", () =>
      finish(new LockstepError("stopping", `${socketPath} closed without an answer (the run is ending)`)),
    );
  });
}

function parseAnswer(line: string): Answer {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    throw new LockstepError("protocol", `not a JSON answer: ${line.slice(0, 200)}`);
  }
  if (typeof v !== "object" || v === null || typeof (v as { ok?: unknown }).ok !== "boolean") {
    throw new LockstepError("protocol", `unexpected answer: ${line.slice(0, 200)}`);
  }
  return v as Answer;
}
