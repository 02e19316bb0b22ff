#!/usr/bin/env python3
"""Runs a zdcflow ONNX export with ONNX Runtime:  onnx_run.py MODEL.onnx Z.npy [CONTEXT.npy] OUT.npy
or, with named inputs (e.g. an `export-onnx --postprocess` graph), writing the graph's first output:
    onnx_run.py MODEL.onnx z=Z.npy particle=P.npy photon_sum=S.npy OUT.npy

The graph's inputs are `z` (N, D) and, for a conditional flow, `context` (N, C); its output `x`
(N, D) is written to OUT.npy. Used by tests/onnx_export.rs; needs `pip install onnxruntime numpy`.
"""
import sys

import numpy as np
import onnxruntime as ort


TYPES = {"tensor(double)": np.float64, "tensor(float)": np.float32, "tensor(int64)": np.int64}


def main():
    if len(sys.argv) >= 4 and "=" in sys.argv[2]:
        sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        types = {i.name: TYPES.get(i.type) for i in sess.get_inputs()}
        feeds = {k: np.load(v) for k, v in (a.split("=", 1) for a in sys.argv[2:-1])}
        # float32 arrays feed a float64 graph exactly (and the other way only if asked for).
        feeds = {k: (v.astype(types[k]) if types.get(k) == np.float64 and v.dtype == np.float32 else v)
                 for k, v in feeds.items()}
        (y,) = sess.run([sess.get_outputs()[0].name], feeds)
        np.save(sys.argv[-1], y)
        return
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    model, z, out = sys.argv[1], np.load(sys.argv[2]), sys.argv[-1]
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    feeds = {"z": z}
    if len(sys.argv) == 5:
        feeds["context"] = np.load(sys.argv[3])
    (x,) = sess.run(["x"], feeds)
    np.save(out, x)


if __name__ == "__main__":
    main()
