#!/usr/bin/env python3
"""Times a whole-shower ONNX graph under ONNX Runtime (CPU): ms per shower at the given batch sizes.
    onnx_speed.py GRAPH.onnx --threads 2 --batches 1 100 1000 [--showers 1000] [--repeats 2]
Prints one JSON line per batch size: {"batch", "ms_per_shower", "runs"}; the best of `repeats`
timed passes over `showers` showers (batch 1: min(showers, 50) showers), after one untimed warm-up
run. The noise is drawn here (standard normals and U[0,1)), e_inc log-uniform in 1 GeV - 1 TeV.
With --profile, one run per batch size under ONNX Runtime's profiler instead, printing the share of
the time each operator type takes (kernel time, summed over the Loop bodies' iterations; the Loop
nodes' own time, which contains their bodies', apart).
"""
import collections
import os
import tempfile
import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def main():
    p = argparse.ArgumentParser()
    p.add_argument("graph")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 100, 1000])
    p.add_argument("--showers", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    so = ort.SessionOptions()
    if a.profile:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.graph, so, providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    dtype = np.float64 if sess.get_inputs()[0].type == "tensor(double)" else np.float32
    rng = np.random.default_rng(1)

    def feeds(n):
        f = {}
        for name, shape in shapes.items():
            dims = [n] + list(shape[1:])
            if name == "e_inc":
                f[name] = (10 ** rng.uniform(3, 6, dims)).astype(dtype)
            elif name == "noise_patterns":
                f[name] = rng.random(dims).astype(dtype)
            else:
                f[name] = rng.standard_normal(dims).astype(dtype)
        return f

    if a.profile:
        for b in a.batches:
            sess.run(None, feeds(b))
        events = json.load(open(sess.end_profiling()))
        per_op = collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                per_op[e["args"]["op_name"]] += e["dur"]
        # A Loop's own time includes its body's nodes, which are also listed: leave it out.
        loop = per_op.pop("Loop", 0)
        total = sum(per_op.values())
        print(json.dumps({"batches": a.batches, "kernel_ms": round(total / 1e3, 1), "loop_ms": round(loop / 1e3, 1),
                          "share": {k: round(v / total, 3) for k, v in per_op.most_common(14)}}))
        return
    for b in a.batches:
        total = min(a.showers, 50) if b == 1 else max(a.showers, b)
        runs = max(1, total // b)
        inputs = [feeds(b) for _ in range(min(runs, 4))]
        sess.run(None, inputs[0])
        best = None
        for _ in range(a.repeats):
            t = time.perf_counter()
            for r in range(runs):
                sess.run(None, inputs[r % len(inputs)])
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        print(json.dumps({"batch": b, "ms_per_shower": round(1e3 * best / (runs * b), 3), "runs": runs}), flush=True)


if __name__ == "__main__":
    main()
