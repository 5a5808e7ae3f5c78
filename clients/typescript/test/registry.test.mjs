// The ModelRegistry against a real supervisor: models loaded and unloaded
// while the run runs, a model ONNX Runtime cannot load refused with its
// code, outside inference answered by the run's inference host — and the
// journal read back with `lockstep log`: the loads and unloads are inputs,
// the outside inference is not.
//
// Needs target/debug/lockstep and lockstep-inference-host (`cargo build
// --workspace --bins`), the example agents (scripts/build-agents.sh) and the
// test models (scripts/gen-models.sh); LOCKSTEP_BIN, LOCKSTEP_AGENTS and
// LOCKSTEP_MODELS override where they are looked for.  Without them the
// test says why and skips.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, writeFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { LockstepError, ModelRegistry, Orchestrator } from "../dist/index.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const bin = process.env.LOCKSTEP_BIN ?? join(root, "target/debug/lockstep");
const agents = process.env.LOCKSTEP_AGENTS ?? join(root, "target/agents");
const models = process.env.LOCKSTEP_MODELS ?? join(root, ".deps/models");
const module = (name) => join(agents, `${name}.wasm`);
const NEEDED = [bin, module("inferrer"), module("counter"), join(models, "mlp.onnx"), join(models, "broken.onnx")];

const missing = NEEDED.filter((p) => !existsSync(p));
const skip = missing.length > 0 && `not built: ${missing.join(", ")}`;
if (skip) console.log(`# skipping the model registry test: ${skip}`);

async function rejectsWith(promise, code) {
  await assert.rejects(promise, (e) => {
    assert.ok(e instanceof LockstepError, `a LockstepError, not ${e}`);
    assert.equal(e.code, code, `code of: ${e.message}`);
    assert.ok(e.message.length > 0);
    return true;
  });
}

const input = (seed) => ({ dtype: "f32", shape: [1, 16], data: Array.from({ length: 16 }, (_, i) => ((i * 7 + seed) % 11) / 4) });

test("loads, unloads and asks models of a running supervisor", { skip, timeout: 120_000 }, async () => {
  const tmp = await mkdtemp(join(tmpdir(), "lockstep-models-"));
  const runDir = join(tmp, "run");
  const manifest = join(tmp, "models.toml");
  await writeFile(
    manifest,
    `[run]\nseed = 5\nticks = 100\nworkers = 1\ncheckpoint_every = 0\n\n` +
      `[[agents]]\nname = "inferrer"\nmodule = "${module("inferrer")}"\n\n` +
      `[[agents]]\nname = "counter"\nmodule = "${module("counter")}"\n`,
  );
  const child = spawn(bin, ["run", manifest, "--forever", "--run-dir", runDir], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const exited = new Promise((r) => child.on("exit", (code, signal) => r({ code, signal })));
  try {
    const o = await Orchestrator.connect(runDir, { waitMs: 60_000, timeoutMs: 60_000 });
    const reg = new ModelRegistry(o);

    // No model yet: the agents' `mlp` is unknown, and so it is from outside.
    await rejectsWith(reg.infer("mlp", input(1)), "unknown-model");
    // The built-in model answers with its input.
    assert.deepEqual((await reg.infer("echo", input(1))).data, input(1).data);

    const loaded = await reg.loadModel("mlp", "v1", join(models, "mlp.onnx"), { maxBatch: 8 });
    assert.equal(loaded.modelId, "mlp");
    assert.equal(loaded.version, "v1");
    assert.match(loaded.blake3, /^[0-9a-f]{64}$/);
    assert.equal(loaded.previous, null);
    await rejectsWith(reg.loadModel("mlp", "v1", join(models, "mlp.onnx")), "conflict");
    await rejectsWith(reg.loadModel("mlp", "v2", join(models, "mlp.onnx"), { blake3: "0".repeat(64) }), "model-refused");
    await rejectsWith(reg.loadModel("bad id", "v1", join(models, "mlp.onnx")), "bad-request");
    await rejectsWith(reg.loadModel("nothing", "v1", join(tmp, "nope.onnx")), "model-refused");

    // A model ONNX Runtime cannot load: refused with the reason, the run goes on.
    const before = await o.status();
    await assert.rejects(reg.loadModel("broken", "v1", join(models, "broken.onnx")), (e) => {
      assert.ok(e instanceof LockstepError);
      assert.equal(e.code, "model-refused");
      assert.match(e.message, /broken/);
      return true;
    });
    for (let i = 0; ; i++) {
      const now = await o.status();
      if (now.tick > before.tick + 2) break;
      assert.ok(i < 200, "the run goes on after a refused load");
      await sleep(20);
    }

    // Outside inference: the current version answers, the same as naming it.
    const out = await reg.infer("mlp", input(3));
    assert.equal(out.dtype, "f32");
    assert.equal(out.shape[0], 1);
    assert.equal(out.data.length, out.shape.reduce((a, b) => a * b, 1));
    assert.deepEqual(await reg.infer("mlp@v1", input(3)), out);
    const batch = await reg.batchInfer("mlp", [input(3), { shape: [1, 3], data: [1, 2, 3] }, input(4)]);
    assert.equal(batch.length, 3);
    assert.ok(batch[0].ok && batch[2].ok, JSON.stringify(batch));
    assert.deepEqual(batch[0].output, out);
    assert.equal(batch[1].ok, false);
    assert.ok(batch[1].error instanceof LockstepError);
    assert.equal(batch[1].error.code, "inference-failed");
    // The specification's form: requests over models, answered in order;
    // an unknown model fails its own requests only.
    const mixed = await reg.batchInfer([
      { modelId: "mlp", input: input(3) },
      { modelId: "nope", input: input(3) },
      { modelId: "mlp@v1", input: input(4) },
    ]);
    assert.equal(mixed.length, 3);
    assert.ok(mixed[0].ok && mixed[2].ok, JSON.stringify(mixed));
    assert.deepEqual(mixed[0].output, out);
    assert.deepEqual(mixed[2].output, batch[2].output);
    assert.equal(mixed[1].ok, false);
    assert.equal(mixed[1].error.code, "unknown-model");
    await rejectsWith(reg.infer("mlp", { shape: [2, 16], data: [1] }), "bad-request");
    await rejectsWith(reg.infer("mlp@v9", input(1)), "unknown-model");

    // A second version, current once loaded; the first cannot be unloaded
    // alone while current... the second is current now, so the first can.
    const v2 = await reg.loadModel("mlp", "v2", join(models, "mlp.onnx"));
    assert.equal(v2.previous, "v1");
    await rejectsWith(reg.unloadModel("mlp", "v2"), "conflict");
    assert.deepEqual((await reg.unloadModel("mlp", "v1")).versions, ["v1"]);
    await rejectsWith(reg.infer("mlp@v1", input(1)), "unknown-model");
    const gone = await reg.unloadModel("mlp");
    assert.deepEqual(gone.versions, ["v2"]);
    await rejectsWith(reg.infer("mlp", input(1)), "unknown-model");
    await rejectsWith(reg.unloadModel("mlp"), "unknown-model");

    await o.stop();
    const { code } = await exited;
    assert.equal(code, 0, `the run ended cleanly:\n${output}`);

    // The loads and unloads are journaled inputs; the refused and the
    // outside requests are not.
    const log = execFileSync(bin, ["log", runDir, "--kind", "input"], { encoding: "utf8" });
    const lines = log.split("\n").filter((l) => l.includes(" input "));
    assert.equal(lines.filter((l) => / input load-model .*-> applied/.test(l)).length, 2, log);
    assert.equal(lines.filter((l) => / input unload-model .*-> applied/.test(l)).length, 2, log);
    assert.ok(lines.some((l) => l.includes(`"blake3":"${loaded.blake3}"`)), log);
    assert.ok(!lines.some((l) => /infer|broken/.test(l)), log);
    const verify = execFileSync(bin, ["verify", runDir], { encoding: "utf8" });
    assert.match(verify, /^identical/);
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      await exited;
    }
    await rm(tmp, { recursive: true, force: true });
  }
});
