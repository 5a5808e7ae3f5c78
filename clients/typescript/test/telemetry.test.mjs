// The telemetry tail on its own: appended lines, partial lines, rotation.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, writeFile, appendFile, rename, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Orchestrator } from "../dist/index.js";
import { encodeRequest } from "../dist/socket.js";

const tick = (n) => JSON.stringify({ type: "tick", tick: n, steps: n }) + "\n";

async function until(what, cond, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

test("follows metrics.jsonl across partial lines and rotation", async () => {
  const dir = await mkdtemp(join(tmpdir(), "lockstep-tail-"));
  try {
    const metrics = join(dir, "metrics.jsonl");
    await writeFile(metrics, tick(1) + tick(2));
    const o = new Orchestrator(dir);
    const seen = [];
    const other = [];
    const sub = o.registerTelemetryHook(
      { onTick: (t) => seen.push(t.tick), onCheckpoint: (c) => other.push(c.file) },
      { fromStart: true, pollMs: 5 },
    );
    await until("the first lines", () => seen.length === 2);
    const half = tick(3);
    await appendFile(metrics, half.slice(0, 7));
    await sleep(30);
    assert.deepEqual(seen, [1, 2], "a partial line waits for its end");
    await appendFile(metrics, half.slice(7) + JSON.stringify({ type: "checkpoint", tick: 3, file: "s" }) + "\n");
    await until("the completed line", () => seen.length === 3 && other.length === 1);
    // Rotation as the supervisor does it: rename, then a new file.
    await appendFile(metrics, tick(4));
    await rename(metrics, join(dir, "metrics.1.jsonl"));
    await writeFile(metrics, tick(5));
    await appendFile(metrics, tick(6));
    await until("the rotated lines", () => seen.length === 6);
    assert.deepEqual(seen, [1, 2, 3, 4, 5, 6]);
    await sub.close();
    await appendFile(metrics, tick(7));
    await sleep(30);
    assert.equal(seen.length, 6, "nothing after close");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("a hook registered without fromStart sees only new records", async () => {
  const dir = await mkdtemp(join(tmpdir(), "lockstep-tail-"));
  try {
    const metrics = join(dir, "metrics.jsonl");
    await writeFile(metrics, tick(1));
    const seen = [];
    const sub = new Orchestrator(dir).registerTelemetryHook((r) => seen.push(r.tick), { pollMs: 5 });
    await sleep(50);
    await appendFile(metrics, tick(2));
    await until("the new line", () => seen.length === 1);
    assert.deepEqual(seen, [2]);
    await sub.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("64-bit task ids travel as JSON integers", () => {
  const line = encodeRequest({ cmd: "task", agent: "a", deps: [0xffffffff00000001n] });
  assert.equal(line, '{"cmd":"task","agent":"a","deps":[18446744069414584321],"format":"json"}');
});
