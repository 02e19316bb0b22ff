#!/usr/bin/env python3
"""Writes tiny nflows checkpoints with the shapes of zdcflow's detector models, for the test of
`zdcflow import-nflows --detector` (tests/nflows_detector.rs):

- `zdc-condbase.pt`: a ZDC MAF (1936 features, 10 conditions) with a `ConditionalDiagonalNormal`
  base whose context encoder is three Linear layers with ReLU (hidden width 8 here instead of the
  published 1936, to keep the file small), float32;
- `ds2-flow1.pt`, `ds2-flow2.pt`, `ds2-flow3.pt`: iCaloFlow's three MAFs for dataset 2
  (45 | 1, 144 | 2, 144 | 191), `ReversePermutation` / `RandomPermutation` alternating, float64.

    ~/.cache/zdcflow-peer/bin/python scripts/detector_checkpoints.py OUT_DIR

Weights are nflows' initialisation plus seeded noise; each file is
`torch.save({'model_state_dict': flow.state_dict()})`, as both published codes save them.
"""
import sys
from pathlib import Path

import torch
from nflows import distributions, flows, transforms
from nflows.transforms.autoregressive import MaskedPiecewiseRationalQuadraticAutoregressiveTransform as RQS


def build(features, context, blocks, hidden, bins, encoder_hidden):
    ts = []
    for i in range(blocks):
        ts.append(RQS(features=features, hidden_features=hidden, context_features=context, num_bins=bins,
                      tails="linear", tail_bound=14.0, num_blocks=1, use_residual_blocks=False,
                      random_mask=False, activation=torch.nn.functional.relu, dropout_probability=0.0,
                      use_batch_norm=False, min_bin_width=1e-6, min_bin_height=1e-6, min_derivative=1e-6))
        if i + 1 < blocks:
            ts.append(transforms.ReversePermutation(features) if i % 2 == 0 else transforms.RandomPermutation(features))
    if encoder_hidden:
        h = encoder_hidden
        enc = torch.nn.Sequential(torch.nn.Linear(context, h), torch.nn.ReLU(), torch.nn.Linear(h, h),
                                  torch.nn.ReLU(), torch.nn.Linear(h, 2 * features))
        base = distributions.ConditionalDiagonalNormal(shape=[features], context_encoder=enc)
    else:
        base = distributions.StandardNormal([features])
    return flows.Flow(transforms.CompositeTransform(ts), base)


def write(path, seed, dtype, **arch):
    torch.manual_seed(seed)
    flow = build(**arch).to(dtype)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save({"model_state_dict": flow.state_dict()}, path)
    print(f"{path}: {sum(p.numel() for p in flow.parameters())} parameters")


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    write(out / "zdc-condbase.pt", 11, torch.float32, features=1936, context=10, blocks=2, hidden=4, bins=2,
          encoder_hidden=8)
    write(out / "ds2-flow1.pt", 12, torch.float64, features=45, context=1, blocks=2, hidden=8, bins=4,
          encoder_hidden=0)
    write(out / "ds2-flow2.pt", 13, torch.float64, features=144, context=2, blocks=2, hidden=8, bins=4,
          encoder_hidden=0)
    write(out / "ds2-flow3.pt", 14, torch.float64, features=144, context=191, blocks=2, hidden=8, bins=4,
          encoder_hidden=0)


if __name__ == "__main__":
    main()
