#!/usr/bin/env python3
"""Runtime model management costs (docs/benchmarks.md, "Runtime model
management"): a `--forever` run of 2 inferrers and 4 counters without
models; `load-model` of mlp (the first load also starts the inference
host) and of magika; then N outside `infer` round trips through the control
socket and 50 `status` round trips as the baseline.  Needs the binaries,
the agents and the models (scripts/build-agents.sh, scripts/gen-models.sh).

Usage: scripts/bench-model-ctl.py [N]"""
import json, os, socket, statistics, subprocess, sys, tempfile, time
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
bin_ = os.environ.get("LOCKSTEP_BIN", f"{root}/target/debug/lockstep")
tmp = tempfile.mkdtemp(prefix="lockstep-bench-model-")
man = f"{tmp}/m.toml"
open(man, "w").write(f"""[run]
seed = 3
workers = 1
checkpoint_every = 0

[[agents]]
name = "inferrer"
module = "{root}/target/agents/inferrer.wasm"
count = 2

[[agents]]
name = "counter"
module = "{root}/target/agents/counter.wasm"
count = 4
""")
rd = f"{tmp}/run"
p = subprocess.Popen([bin_, "run", man, "--forever", "--no-board", "--run-dir", rd], stdout=subprocess.DEVNULL)
sock = f"{rd}/control.sock"
while not os.path.exists(sock): time.sleep(0.01)

def ask(cmd):
    s = socket.socket(socket.AF_UNIX)
    t0 = time.perf_counter()
    s.connect(sock)
    s.sendall((json.dumps({**cmd, "format": "json"}) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        c = s.recv(65536)
        if not c: break
        buf += c
    dt = time.perf_counter() - t0
    s.close()
    return json.loads(buf), dt

time.sleep(1.0)
loads = {}
for (mid, f) in [("mlp", "mlp.onnx"), ("magika", "magika.onnx")]:
    a, dt = ask({"cmd": "load-model", "id": mid, "version": "v1", "path": f"{root}/.deps/models/{f}"})
    assert a["ok"], a
    loads[mid] = (a["tick"], dt)
    time.sleep(0.5)
inp = {"dtype": "f32", "shape": [1, 16], "data": [0.25] * 16}
rts = []
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 50):
    a, dt = ask({"cmd": "infer", "model": "mlp", "input": inp})
    assert a["ok"], a
    rts.append(dt)
st, _ = ask({"cmd": "status"})
sts = []
for i in range(50):
    a, dt = ask({"cmd": "status"})
    sts.append(dt)
ask({"cmd": "stop"})
p.wait()
ticks = {}
for line in open(f"{rd}/metrics.jsonl"):
    r = json.loads(line)
    if r.get("type") == "tick":
        ticks[r["tick"]] = r["wall_us"]
for mid, (t, dt) in loads.items():
    around = [ticks[x] for x in range(t - 20, t + 20) if x in ticks and x != t]
    print(f"load-model {mid}: applied at tick {t}: tick wall {ticks.get(t, 0)/1000:.2f} ms (median of the 40 around it {statistics.median(around)/1000:.3f} ms); ctl round trip {dt*1000:.1f} ms")
print(f"infer mlp round trip: median {statistics.median(rts)*1e6:.0f} us, min {min(rts)*1e6:.0f}, p90 {sorted(rts)[int(len(rts)*0.9)]*1e6:.0f} (n={len(rts)})")
print(f"status round trip (baseline): median {statistics.median(sts)*1e6:.0f} us (n={len(sts)})")
print("median tick wall", statistics.median(ticks.values())/1000, "ms")
