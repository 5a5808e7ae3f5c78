// Against a real supervisor: `lockstep run … --forever`, driven through the
// client, stopped through it, and its journal read back with `lockstep log`.
//
// Needs target/debug/lockstep (`cargo build --workspace --bins`) and the
// example agents (scripts/build-agents.sh); LOCKSTEP_BIN and
// LOCKSTEP_AGENTS override where they are looked for.  Without them the
// test says why and skips.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, writeFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { LockstepError, ModelRegistry, Orchestrator } from "../dist/index.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const bin = process.env.LOCKSTEP_BIN ?? join(root, "target/debug/lockstep");
const agents = process.env.LOCKSTEP_AGENTS ?? join(root, "target/agents");
const module = (name) => join(agents, `${name}.wasm`);
const NEEDED = ["counter", "sensor", "aggregator", "ping", "pong"];

const missing = [bin, ...NEEDED.map(module)].filter((p) => !existsSync(p));
const skip = missing.length > 0 && `not built: ${missing.join(", ")}`;
if (skip) console.log(`# skipping the supervisor test: ${skip}`);

async function rejectsWith(promise, code) {
  await assert.rejects(promise, (e) => {
    assert.ok(e instanceof LockstepError, `a LockstepError, not ${e}`);
    assert.equal(e.code, code, `code of: ${e.message}`);
    assert.ok(e.message.length > 0);
    return true;
  });
}

test("drives a running supervisor through the Orchestrator", { skip, timeout: 120_000 }, async () => {
  const tmp = await mkdtemp(join(tmpdir(), "lockstep-client-"));
  const runDir = join(tmp, "run");
  const manifest = join(tmp, "swarm.toml");
  const agent = (name, m, extra = "") => `[[agents]]\nname = "${name}"\nmodule = "${module(m)}"\n${extra}\n`;
  await writeFile(
    manifest,
    `[run]\nseed = 11\nticks = 100\nworkers = 1\ncheckpoint_every = 0\n\n` +
      agent("counter", "counter") +
      agent("sensor", "sensor") +
      agent("aggregator", "aggregator") +
      agent("ping", "ping") +
      agent("pong", "pong"),
  );
  const child = spawn(bin, ["run", manifest, "--forever", "--run-dir", runDir], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const exited = new Promise((r) => child.on("exit", (code, signal) => r({ code, signal })));
  try {
    const o = await Orchestrator.connect(runDir, { waitMs: 60_000, timeoutMs: 60_000 });

    // Telemetry: tick records from metrics.jsonl.
    const ticks = [];
    const sub = o.registerTelemetryHook({ onTick: (t) => ticks.push(t) }, { pollMs: 20 });

    const before = await o.status();
    assert.equal(before.agents, 5);
    assert.match(before.hash, /^[0-9a-f]{64}$/);

    const spawned = await o.spawnAgent({ name: "extra", module: module("counter"), priority: 2 });
    assert.equal(spawned.name, "extra");
    assert.equal(typeof spawned.agentId, "number");
    assert.ok(spawned.tick > before.tick);

    const pub = await o.publish("sensors", "reading from outside");
    assert.equal(pub.topic, "sensors");
    assert.ok(pub.subscribers >= 1, "the aggregator subscribes to sensors");

    const sent = await o.send("extra", "hello");
    assert.equal(sent.agentId, spawned.agentId);
    assert.equal((await o.send(spawned.agentId, "by id")).agentId, spawned.agentId);

    const task = await o.scheduleTask("extra", { payload: "job", priority: 3 });
    assert.equal(typeof task.taskId, "bigint");
    assert.ok(task.taskId > 0xffffffffn << 32n, "a runtime-issued task id");
    const after = await o.scheduleTask("extra", { payload: "then", deps: [task.taskId] });
    assert.equal(after.taskId, task.taskId + 1n, "the 64-bit dependency id arrived intact");

    const joined = await o.joinChannel("extra", "room");
    assert.deepEqual([joined.agentId, joined.channel], [spawned.agentId, "room"]);

    const up = await o.upgradeAgent("extra", module("counter"));
    assert.equal(up.agentId, spawned.agentId);

    const snap = await o.snapshotState();
    assert.match(snap.stateHash, /^[0-9a-f]{64}$/);
    assert.ok((await stat(snap.path)).size > 0, `${snap.path} exists`);

    // Refusals: typed, coded, and the run goes on.
    await rejectsWith(o.send("nobody", "x"), "unknown-agent");
    await rejectsWith(o.spawnAgent({ name: "extra", module: module("counter") }), "conflict");
    await rejectsWith(o.spawnAgent({ name: "ghost", module: join(tmp, "none.wasm") }), "module-refused");
    await rejectsWith(o.spawnAgent({ name: "t", module: module("counter"), tenant: "nope" }), "unknown-tenant");
    await rejectsWith(o.scheduleTask("extra", { deps: [12345n] }), "bad-dependency");
    await rejectsWith(o.publish("", "x"), "bad-request");
    await rejectsWith(o.request({ cmd: "fly" }), "bad-request");
    await rejectsWith(new ModelRegistry(o).swapModel("mlp", "2"), "unknown-model");
    const stopped = await o.stopAgent("extra");
    assert.equal(stopped.agentId, spawned.agentId);
    await rejectsWith(o.stopAgent("extra"), "not-running");

    // `lockstep ctl … --json` prints the same answers.
    const cli = JSON.parse(execFileSync(bin, ["ctl", runDir, "status", "--json"], { encoding: "utf8" }));
    assert.equal(cli.ok, true);
    assert.equal(typeof cli.tick, "number");
    assert.match(cli.data.hash, /^[0-9a-f]{64}$/);
    const refused = spawnSync(bin, ["ctl", runDir, "--json", "send", "nobody", "x"], { encoding: "utf8" });
    assert.equal(refused.status, 1);
    assert.deepEqual(JSON.parse(refused.stdout), {
      ok: false,
      code: "unknown-agent",
      message: "no agent `nobody`",
      text: "refused: no agent `nobody`",
    });

    const now = await o.status();
    assert.ok(now.tick >= snap.tick);
    assert.ok(now.steps > before.steps);

    // The hook saw the run's ticks, in order.
    const deadline = Date.now() + 30_000;
    while (ticks.length < 3 && Date.now() < deadline) await sleep(20);
    assert.ok(ticks.length >= 3, `tick records arrived (${ticks.length})`);
    for (let i = 1; i < ticks.length; i++) assert.ok(ticks[i].tick > ticks[i - 1].tick);
    assert.equal(ticks[0].type, "tick");
    assert.equal(typeof ticks[0].steps, "number");
    await sub.close();

    const stop = await o.stop();
    assert.ok(stop.stopsAfterTick > now.tick);
    const { code } = await exited;
    assert.equal(code, 0, `the run ended cleanly:\n${output}`);
    await rejectsWith(o.status({ timeoutMs: 5_000 }), "connect-failed");

    // The inputs are in the journal, with their outcomes.
    const log = execFileSync(bin, ["log", runDir, "--kind", "input"], { encoding: "utf8" });
    const lines = log.split("\n").filter((l) => l.includes(" input "));
    const has = (re) => assert.ok(lines.some((l) => re.test(l)), `journal has ${re}:\n${log}`);
    has(/ input spawn .*"name":"extra".*-> applied/);
    has(/ input publish .*"topic":"sensors".*-> applied/);
    has(/ input send .*"agent":"extra".*-> applied/);
    has(/ input task .*"agent":"extra".*-> applied: task 0xffffffff00000001/);
    has(/ input task .*"agent":"extra".*-> applied: task 0xffffffff00000002/);
    has(/ input join-channel .*"channel":"room".*-> applied/);
    has(/ input upgrade .*"agent":"extra".*-> applied/);
    has(/ input send .*"agent":"nobody".*-> refused/);
    has(/ input swap-model .*"id":"mlp".*"version":"2".*-> refused/);
    has(/ input stop-agent .*"agent":"extra".*-> applied/);
    const at = (re) => Number(lines.find((l) => re.test(l)).trim().split(/\s+/)[0]);
    assert.equal(at(/ input spawn .*"name":"extra"/), spawned.tick, "journaled at the tick the answer named");
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      await exited;
    }
    await rm(tmp, { recursive: true, force: true });
  }
});
