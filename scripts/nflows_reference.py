#!/usr/bin/env python3
"""Writes nflows reference pairs (NAME.pt + NAME.json, schema of tests/data/nflows/README.md) for
layouts the two public files do not cover: a ZDC MAF with the ZDC group's ConditionalDiagonalNormal
base, nflows' plain IAF (InverseTransform of MAF blocks), and a MAF with residual MADE blocks.

    ~/.cache/zdcflow-peer/bin/python scripts/nflows_reference.py OUT_DIR

Each model is built the way nflows builds it, its weights are perturbed away from the
initialisation (seeded), and nflows' own `log_prob` and `_transform.inverse(z)` are stored.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from nflows import distributions, flows, transforms
from nflows.transforms.autoregressive import MaskedPiecewiseRationalQuadraticAutoregressiveTransform as RQS


def block(features, context, hidden, layers, bins, residual):
    return RQS(features=features, hidden_features=hidden, context_features=context, num_bins=bins,
               tails="linear", tail_bound=14.0, num_blocks=layers, use_residual_blocks=residual,
               random_mask=False, activation=torch.nn.functional.relu, dropout_probability=0.0,
               use_batch_norm=False, min_bin_width=1e-6, min_bin_height=1e-6, min_derivative=1e-6)


def build(features, context, blocks, hidden, layers, bins, kind, cond_base, residual):
    ts = []
    for i in range(blocks):
        b = block(features, context, hidden, layers, bins, residual)
        ts.append(transforms.InverseTransform(b) if kind == "iaf" else b)
        if i + 1 < blocks:
            ts.append(transforms.ReversePermutation(features) if i % 2 == 0 else transforms.RandomPermutation(features))
    if cond_base:
        enc = torch.nn.Sequential(torch.nn.Linear(context, features), torch.nn.ReLU(),
                                  torch.nn.Linear(features, features), torch.nn.ReLU(),
                                  torch.nn.Linear(features, 2 * features))
        base = distributions.ConditionalDiagonalNormal(shape=[features], context_encoder=enc)
    else:
        base = distributions.StandardNormal([features])
    return flows.Flow(transforms.CompositeTransform(ts), base)


def write(out, name, features, context, blocks, hidden, layers, bins, kind, dtype, cond_base, residual, seed):
    torch.manual_seed(seed)
    flow = build(features, context, blocks, hidden, layers, bins, kind, cond_base, residual)
    tdt = torch.float64 if dtype == "f64" else torch.float32
    flow = flow.to(tdt).eval()
    with torch.no_grad():
        for n, p in flow.named_parameters():
            p.add_(0.3 * torch.randn_like(p))  # away from the near-identity initialisation
        n = 32
        x = torch.randn(n, features, dtype=tdt) * 2.0
        x[0] = 16.0  # in the linear tails
        c = torch.randn(n, context, dtype=tdt)
        z = torch.randn(n, features, dtype=tdt)
        lp = flow.log_prob(x, context=c)
        sample, _ = flow._transform.inverse(z, context=c)
    sd = flow.state_dict()
    torch.save({"model_state_dict": sd}, out / f"{name}.pt")
    arch = dict(layout="zdc" if cond_base else "icaloflow", kind=kind, features=features, context=context,
                blocks=blocks, hidden=hidden, layers=layers, bins=bins, dtype=dtype, cond_base=cond_base,
                residual=residual, tail_bound=14.0, min_bin_width=1e-6, min_bin_height=1e-6, min_derivative=1e-6)
    ref = dict(architecture=arch, state_dict_keys=list(sd.keys()), source="nflows 0.14 / torch " + torch.__version__,
               x=x.tolist(), context=c.tolist(), log_prob=lp.tolist(), z=z.tolist(), sample=sample.tolist(),
               note="written by scripts/nflows_reference.py; sample = transform.inverse(z, context)")
    (out / f"{name}.json").write_text(json.dumps(ref))
    print(f"{name}: {len(sd)} keys")


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    write(out, "zdc-maf-condbase", 10, 5, 3, 16, 1, 6, "maf", "f64", True, False, 1)
    write(out, "nflows-iaf", 7, 3, 3, 14, 2, 5, "iaf", "f64", False, False, 2)
    write(out, "maf-residual", 6, 2, 2, 12, 2, 8, "maf", "f64", False, True, 3)


if __name__ == "__main__":
    main()
