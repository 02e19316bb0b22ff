#!/usr/bin/env python3
"""Loads a zdcflow model directory's flow unit into an nflows `Flow` and checks that nflows'
log-probabilities agree with `zdcflow flow log-prob` (the reverse of `zdcflow import-nflows`).

    ~/.cache/zdcflow-peer/bin/python scripts/to_nflows.py MODEL_DIR [--unit NAME] [--zdcflow BIN] [--save OUT.pt]

MODEL_DIR is any zdcflow model directory (import-nflows, train-teacher or distill-student output).
The flow is rebuilt from its spec: `MaskedPiecewiseRationalQuadraticAutoregressiveTransform` blocks
(linear tails, deterministic masks), wrapped in `InverseTransform` for an IAF; zdcflow's own IAF
(and inductive-caloflow's students) evaluate the spline inverse in the sampling pass, so their
blocks are an `IAFRQS` that swaps the element-wise directions; `Permutation`s between blocks; a
`StandardNormal` or `ConditionalDiagonalNormal` base. `--save` writes
`{'model_state_dict': flow.state_dict()}`, which `zdcflow import-nflows` reads back.
Needs torch, nflows and numpy (the peer venv has them).
"""
import argparse
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from nflows import distributions, flows, transforms
from nflows.transforms.autoregressive import MaskedPiecewiseRationalQuadraticAutoregressiveTransform as RQS


class IAFRQS(RQS):
    """inductive-caloflow's student block: the element-wise directions swapped."""

    def _elementwise_forward(self, inputs, autoregressive_params):
        return self._elementwise(inputs, autoregressive_params, inverse=True)

    def _elementwise_inverse(self, inputs, autoregressive_params):
        return self._elementwise(inputs, autoregressive_params)


DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U32": np.uint32}


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        arr = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def unit_of(model_dir, unit):
    m = json.loads((Path(model_dir) / "model.json").read_text())
    flows_ = {k: v for k, v in m["units"].items() if v.get("flow")}
    if unit is None:
        if len(flows_) != 1:
            sys.exit(f"{model_dir}: several flows ({', '.join(flows_)}): pass --unit")
        unit = next(iter(flows_))
    u = flows_[unit]
    d = Path(model_dir) / u["dir"]
    weights = next(p for p in (d / "best.safetensors", d / "last.safetensors") if p.exists())
    return unit, u["flow"], weights, m.get("dtype", "f32")


def build(spec):
    s = spec["spline"]
    kind, fast = spec["kind"], spec.get("fast_spline")
    if kind == "maf" and fast not in (None, "forward"):
        sys.exit("a MAF whose fast pass evaluates the spline inverse has no nflows equivalent here")
    block_cls = IAFRQS if kind == "iaf" and fast in (None, "inverse") else RQS
    ctx = spec["context_features"] or None
    ts = []
    for i in range(spec["blocks"]):
        b = block_cls(features=spec["features"], hidden_features=spec["hidden_features"], context_features=ctx,
                      num_bins=s["num_bins"], tails="linear", tail_bound=s["tail_bound"],
                      num_blocks=spec["hidden_layers"], use_residual_blocks=spec["residual"], random_mask=False,
                      activation=torch.nn.functional.relu, dropout_probability=0.0, use_batch_norm=False,
                      min_bin_width=s["min_bin_width"], min_bin_height=s["min_bin_height"],
                      min_derivative=s["min_derivative"])
        ts.append(transforms.InverseTransform(b) if kind == "iaf" else b)
        if i < len(spec["permutations"]):
            ts.append(transforms.Permutation(torch.tensor(spec["permutations"][i])))
    base = spec.get("base", {"type": "standard-normal"})
    if base["type"] == "conditional-diagonal-normal":
        widths = [spec["context_features"], *base["hidden"], 2 * spec["features"]]
        layers = []
        for j in range(len(widths) - 1):
            layers.append(torch.nn.Linear(widths[j], widths[j + 1]))
            if j + 2 < len(widths):
                layers.append(torch.nn.ReLU())
        dist = distributions.ConditionalDiagonalNormal(shape=[spec["features"]], context_encoder=torch.nn.Sequential(*layers))
    else:
        dist = distributions.StandardNormal([spec["features"]])
    return flows.Flow(transforms.CompositeTransform(ts), dist)


def nflows_name(ours, spec):
    """flow.3.made.layers.1.weight → _transform._transforms.6[._transform].autoregressive_net.blocks.1.linear.weight"""
    parts = ours.split(".")
    assert parts[0] == "flow", ours
    if parts[1] == "base":
        return f"_distribution._context_encoder.{2 * int(parts[2])}.{parts[3]}"
    i, rest = int(parts[1]), parts[3:]
    wrap = "._transform" if spec["kind"] == "iaf" else ""
    layer = rest[0]
    if layer == "initial":
        mod = "initial_layer"
    elif layer == "context":
        mod = "context_layer"
    elif layer == "final":
        mod = "final_layer"
    elif layer == "layers":
        j = rest[1]
        if spec["residual"]:
            sub = {"lin0": "linear_layers.0", "lin1": "linear_layers.1", "context": "context_layer"}[rest[2]]
            mod = f"blocks.{j}.{sub}"
        else:
            mod = f"blocks.{j}.linear"
    else:
        raise ValueError(ours)
    return f"_transform._transforms.{2 * i}{wrap}.autoregressive_net.{mod}.{rest[-1]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--unit")
    ap.add_argument("--zdcflow", default=str(Path(__file__).resolve().parent.parent / "target/release/zdcflow"))
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--save")
    a = ap.parse_args()
    unit, spec, weights, dtype = unit_of(a.model, a.unit)
    tdt = torch.float64 if dtype == "f64" else torch.float32
    flow = build(spec).to(tdt).eval()
    state = flow.state_dict()
    ours = read_safetensors(weights)
    for k, t in ours.items():
        name = nflows_name(k, spec)
        if name not in state or tuple(state[name].shape) != tuple(t.shape):
            sys.exit(f"{weights}: tensor {k} → {name} does not fit the nflows model")
        state[name] = t.to(tdt)
    flow.load_state_dict(state)
    g = torch.Generator().manual_seed(a.seed)
    x = torch.randn(a.rows, spec["features"], generator=g, dtype=tdt)
    c = torch.randn(a.rows, spec["context_features"], generator=g, dtype=tdt)
    with torch.no_grad():
        lp = flow.log_prob(x, context=c if spec["context_features"] else None).numpy()
    with tempfile.TemporaryDirectory() as d:
        np.save(f"{d}/x.npy", x.numpy())
        np.save(f"{d}/c.npy", c.numpy())
        cmd = [a.zdcflow, "-q", "--threads", "1", "flow", "log-prob", "--model", a.model, "--unit", unit,
               "--input", f"{d}/x.npy", "--output", f"{d}/lp.npy"]
        if spec["context_features"]:
            cmd += ["--context", f"{d}/c.npy"]
        subprocess.run(cmd, check=True)
        ours_lp = np.load(f"{d}/lp.npy").reshape(-1)
    err = np.max(np.abs(ours_lp - lp) / (1 + np.abs(lp)))
    tol = 1e-9 if dtype == "f64" else 1e-3
    print(f"{a.model} unit {unit}: {spec['kind']}, {spec['blocks']} blocks; nflows vs zdcflow log-prob: max rel. difference {err:.2e} (tolerance {tol:g})")
    if a.save:
        torch.save({"model_state_dict": flow.state_dict()}, a.save)
        print(f"wrote {a.save}")
    sys.exit(0 if err <= tol else 1)


if __name__ == "__main__":
    main()
