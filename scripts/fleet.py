"""Simulated fleet for `make demo`: a cloud-expert server, several edge clients answering the test
split at a sensor-like pace, and a cloud outage in the middle. Prints per-client and total
accuracy, offload rate, fallbacks and latency percentiles next to the offline evaluation.

Usage: fleet.py BIN_DIR REPO MODEL LEGACY OUT_DIR [CLIENTS]
"""
import json
import pathlib
import subprocess
import sys
import time

bin_dir, repo, model, legacy, out = (pathlib.Path(a) for a in sys.argv[1:6])
model = str(model)
clients = int(sys.argv[6]) if len(sys.argv) > 6 else 4
env = {"RUST_LOG": "warn"}


def start_cloud(addr):
    p = subprocess.Popen(
        [bin_dir / "cloud-expert", "serve", "--repo", repo, "--addr", addr,
         "--http-addr", "127.0.0.1:0"],
        stdout=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline().strip()
    if not line.startswith("ready on "):
        raise SystemExit(f"cloud did not start: {line!r}")
    return p, line[len("ready on "):].split(" http ")[0]


def pct(values, q):
    v = sorted(values)
    return v[round((len(v) - 1) * q)] if v else float("nan")


cloud, addr = start_cloud("127.0.0.1:0")
print(f"cloud serving on {addr}; starting {clients} edge clients (test split, 6 ms between inputs)")
procs = []
for i in range(clients):
    f = out / f"edge-{i}.jsonl"
    procs.append((f, subprocess.Popen(
        [bin_dir / "edge-client", "run", "--cloud", f"http://{addr}", "--legacy", legacy,
         "--model", model, "--device-id", f"device-{i}", "--input", "digits:test",
         "--interval-ms", "6", "--deadline-ms", "200", "--breaker-backoff-ms", "250",
         "--bundle-cache", out / f"bundle-cache-{i}", "--out", f],
        stderr=subprocess.PIPE, text=True, env=env)))
time.sleep(0.8)
print("cloud outage: killing the server")
cloud.kill()
cloud.wait()
time.sleep(0.4)
cloud, _ = start_cloud(addr)
print("cloud restarted on the same address")
for _, p in procs:
    p.wait()
cloud.terminate()
cloud.wait()

offline = [json.loads(l) for l in open(out / "offline.jsonl")]
off_acc = sum(o["label"] == o["true_label"] for o in offline) / len(offline)
off_rate = sum(o["offload"] for o in offline) / len(offline)
rows, total = [], []
for i, (f, p) in enumerate(procs):
    lines = [json.loads(l) for l in open(f)]
    total += lines
    rows.append((f"device-{i}", lines))
rows.append(("total", total))
print()
print(f"{'client':<10} {'inputs':>6} {'accuracy':>9} {'offload':>8} {'remote':>7} {'fallback':>9} {'p50 us':>8} {'p99 us':>8}")
for name, lines in rows:
    n = len(lines)
    acc = sum(l["label"] == l["true_label"] for l in lines) / n
    off = sum(l["source"] != "local" for l in lines) / n
    rem = sum(l["source"] == "remote" for l in lines)
    fb = sum(l["source"] == "fallback" for l in lines)
    lat = [l["total_latency_us"] for l in lines]
    print(f"{name:<10} {n:>6} {100*acc:>8.2f}% {100*off:>7.1f}% {rem:>7} {fb:>9} {pct(lat, .5):>8} {pct(lat, .99):>8}")
print(f"{'offline':<10} {len(offline):>6} {100*off_acc:>8.2f}% {100*off_rate:>7.1f}%   (L2H evaluation of the same pair, no outage)")
