// Compiles TypeScript (AssemblyScript) agents to wasm and checks them.
//
//   node build.mjs <out-dir> <name>...    # examples/<name>.ts -> <out-dir>/ts_<name>.wasm
//   node build.mjs <out-dir> test/probe   # test/probe.ts -> <out-dir>/ts_probe.wasm
//
// Run by scripts/build-ts-agents.sh (which decides what is stale); one node
// process compiles every agent.  Flags: asconfig.json, plus any
// `// asc-flags: ...` lines of the agent's source.  After compiling, each
// module is checked: imports only `lockstep.<name>` functions of the ABI, the
// required exports present.  A source with `// upgrade-of: <name>` must
// declare the same mutable globals and data segments as ts_<name>.wasm (a
// hot-swap keeps the old memory and globals; see README.md, "Upgrades").

import { readFileSync, writeFileSync, mkdirSync, renameSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import asc from "assemblyscript/asc";

const HERE = dirname(fileURLToPath(import.meta.url));
const IMPORTS = new Set([
  "send",
  "publish",
  "subscribe",
  "unsubscribe",
  "join_channel",
  "leave_channel",
  "channel_send",
  "schedule_task",
  "infer",
  "log",
  "random",
  "tick",
  "agent_id",
]);
const EXPORTS = [
  "memory",
  "agent_abi_version",
  "agent_buffer",
  "agent_init",
  "agent_step",
  "agent_receive",
  "agent_shutdown",
];

function directives(source, key) {
  const out = [];
  const re = new RegExp(`^//\\s*${key}:\\s*(.+)$`, "gm");
  for (const m of source.matchAll(re)) out.push(m[1].trim());
  return out;
}

// Section contents of a wasm binary: { globals: [bytes of the global section
// entries' types], data: [bytes of the data section] }.
function sections(bytes) {
  let i = 8;
  const uleb = () => {
    let result = 0;
    let shift = 0;
    for (;;) {
      const b = bytes[i++];
      result += (b & 0x7f) * 2 ** shift;
      shift += 7;
      if (!(b & 0x80)) return result;
    }
  };
  const found = {};
  while (i < bytes.length) {
    const id = bytes[i++];
    const size = uleb();
    found[id] = bytes.subarray(i, i + size);
    i += size;
  }
  return found;
}

function sameBytes(a, b) {
  if (!a || !b) return a === b;
  return a.length === b.length && a.every((x, k) => x === b[k]);
}

function check(name, bytes) {
  const errs = [];
  const mod = new WebAssembly.Module(bytes);
  for (const imp of WebAssembly.Module.imports(mod)) {
    const what = `import ${imp.module}.${imp.name}`;
    if (imp.module !== "lockstep") errs.push(`${what}: only module 'lockstep' may be imported`);
    else if (imp.kind !== "function") errs.push(`${what}: only functions may be imported`);
    else if (!IMPORTS.has(imp.name)) errs.push(`${what}: not in the ABI`);
  }
  const exports = new Map(WebAssembly.Module.exports(mod).map((e) => [e.name, e.kind]));
  for (const e of EXPORTS) {
    if (!exports.has(e)) errs.push(`missing export ${e}`);
  }
  return errs;
}

// A name is a file in examples/, or a path (with a slash) relative to here.
function entryOf(name) {
  return name.includes("/") ? `${name}.ts` : join("examples", `${name}.ts`);
}

async function compile(name, outDir) {
  const entry = entryOf(name);
  const source = readFileSync(join(HERE, entry), "utf8");
  const extra = directives(source, "asc-flags").flatMap((l) => l.split(/\s+/));
  const outFile = join(outDir, `ts_${basename(name)}.wasm`);
  const tmp = `${outFile}.tmp`;
  const args = [entry, "--config", "asconfig.json", "--baseDir", HERE, "-o", tmp, ...extra];
  const { error, stderr } = await asc.main(args, {
    stdout: process.stdout,
    stderr: process.stderr,
  });
  if (error) {
    throw new Error(`${entry}: ${error.message}\n${stderr.toString()}`);
  }
  const bytes = readFileSync(tmp);
  const errs = check(name, bytes);
  for (const base of directives(source, "upgrade-of")) {
    const old = readFileSync(join(outDir, `ts_${base}.wasm`));
    const [a, b] = [sections(old), sections(bytes)];
    if (!sameBytes(a[6], b[6])) errs.push(`globals differ from ts_${base}.wasm (upgrade-of)`);
    if (!sameBytes(a[11], b[11])) errs.push(`data segments differ from ts_${base}.wasm (upgrade-of)`);
  }
  if (errs.length) {
    throw new Error(`${outFile}: ${errs.join("; ")}`);
  }
  renameSync(tmp, outFile);
}

const [outDir, ...names] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: node build.mjs <out-dir> <name>...");
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });
// Upgrade targets after the modules they upgrade.
const order = (n) => (directives(readFileSync(join(HERE, entryOf(n)), "utf8"), "upgrade-of").length ? 1 : 0);
names.sort((a, b) => order(a) - order(b) || a.localeCompare(b));
let failed = 0;
for (const name of names) {
  try {
    await compile(name, outDir);
    console.error(`build-ts-agents: compiled ${entryOf(name)}`);
  } catch (e) {
    failed++;
    console.error(`build-ts-agents: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
