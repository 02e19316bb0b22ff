#!/usr/bin/env python3
"""zdcflow's performance table, side by side with the PyTorch + nflows peer.

For every shape and measurement of ../shared/peer/peer_bench.py, zdcflow (`zdcflow bench --json`)
and the peer are run alternately ROUNDS times on the same machine; the table gives the median
ms/sample of each and the median of the per-round ratios zdcflow/peer (< 1: zdcflow is faster),
so that drifting machine speed cancels. Full-shower and full-sample timings (the papers' models,
random weights, batch 100 / 1000 / 10 000) follow, with each process's peak memory.

usage: python3 scripts/bench.py [--zdcflow PATH] [--device cpu|cuda] [--threads 2] [--rounds 3]
                                [--peer-python PATH] [--quick]
Standard library only. Without a peer Python (../shared/peer/setup.sh makes one), only zdcflow runs.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

PEER = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "peer", "peer_bench.py")
PAIRS = [
    ("ds2-flow3", "train-step"), ("ds2-flow3", "sample-iaf"), ("ds2-flow3", "sample-maf"),
    ("ds3-flow3", "train-step"), ("ds3-flow3", "sample-iaf"), ("ds3-flow3", "sample-maf"),
    ("zdc", "train-step"), ("zdc", "sample-iaf"),
]


def run_json(cmd):
    """Runs a command, returns (its last JSON line, its own peak RSS in MB)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    line = [l for l in stdout.splitlines() if l.startswith("{")][-1]
    return json.loads(line), usage.ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zdcflow", default="target/release/zdcflow")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--peer-python", default=os.environ.get("PEER_PY", os.path.expanduser("~/.cache/zdcflow-peer/bin/python")))
    p.add_argument("--quick", action="store_true", help="skip the slowest rows")
    a = p.parse_args()
    zdc = [a.zdcflow, "--quiet", "--device", a.device, "--threads", str(a.threads), "bench", "--json"]
    have_peer = os.path.exists(a.peer_python) and os.path.exists(PEER)
    rows = []
    for shape, what in PAIRS:
        if a.quick and (shape, what) in {("ds3-flow3", "train-step"), ("ds3-flow3", "sample-maf")}:
            continue
        ours, theirs, ratios, batch = [], [], [], None
        for _ in range(a.rounds):
            o, _ = run_json(zdc + ["--shape", shape, "--what", what, "--repeats", "3"])
            batch = o["batch"]
            ours.append(o["ms_per_sample"])
            if have_peer:
                t, _ = run_json([a.peer_python, PEER, "--shape", shape, "--what", what, "--threads", str(a.threads), "--device", a.device])
                theirs.append(t["ms_per_sample"])
                ratios.append(o["ms_per_sample"] / t["ms_per_sample"])
        med = statistics.median
        rows.append((f"{shape} {what}", batch, med(ours), med(theirs) if theirs else None, med(ratios) if ratios else None))
        print(f"  {shape} {what}: done", file=sys.stderr)
    print(f"\n| measurement ({a.device}, {a.threads} threads) | batch | zdcflow ms/sample | PyTorch+nflows ms/sample | ratio |")
    print("|---|---|---|---|---|")
    for name, batch, o, t, r in rows:
        tt = f"{t:.4f}" if t is not None else "—"
        rr = f"**{r:.2f}**" if r is not None else "—"
        print(f"| {name} | {batch} | {o:.4f} | {tt} | {rr} |")
    showers = []
    for det in ["zdc", "ds2", "ds3"]:
        for batch in [100, 1000, 10000]:
            if a.quick and batch == 10000:
                continue
            if det == "ds3" and batch == 10000 and a.device == "cpu":
                continue
            o, rss = run_json(zdc + ["--shower", det, "--batch-size", str(batch), "--repeats", "1"])
            showers.append((f"{det} student, whole {'sample' if det == 'zdc' else 'shower'}", batch, o["ms_per_sample"], rss))
    if not a.quick:
        for det in ["zdc", "ds2"]:
            o, rss = run_json(zdc + ["--shower", det, "--teacher", "--batch-size", "100", "--repeats", "1"])
            showers.append((f"{det} teacher (MAF), whole {'sample' if det == 'zdc' else 'shower'}", 100, o["ms_per_sample"], rss))
    print(f"\n| whole showers / samples ({a.device}, {a.threads} threads; papers' sizes, random weights) | batch | ms per shower | showers/s | peak memory |")
    print("|---|---|---|---|---|")
    for name, batch, ms, rss in showers:
        print(f"| {name} | {batch} | {ms:.3f} | {1e3 / ms:.0f} | {rss:.0f} MB |")


if __name__ == "__main__":
    main()
