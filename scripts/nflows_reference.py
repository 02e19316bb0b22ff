#!/usr/bin/env python3
"""Writes nflows reference pairs (NAME.pt + NAME.json, schema of tests/data/nflows/README.md) for
layouts the two public files do not cover: a ZDC MAF with the ZDC group's ConditionalDiagonalNormal
base (an nn.Sequential encoder, and the published module layout: zdc-fast-simulations' BaseContext
encoder with its Permutation subclasses), nflows' plain IAF (InverseTransform of MAF blocks), and a
MAF with residual MADE blocks.

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


class BaseContext(torch.nn.Module):
    """The module layout of zdc-fast-simulations' layers.BaseContext (class and attribute names as
    published, so the state dict has its keys): context -> F -> F -> 2F, ReLU between."""

    def __init__(self, context_size, dimensionality):
        super().__init__()
        self.layer1 = torch.nn.Linear(context_size, dimensionality)
        self.layer2 = torch.nn.Linear(dimensionality, dimensionality)
        self.output = torch.nn.Linear(dimensionality, 2 * dimensionality)

    def forward(self, c):
        return self.output(torch.relu(self.layer2(torch.relu(self.layer1(c)))))


class InversionLayer(transforms.Permutation):
    """Published layout: reverses the order of the features (a Permutation subclass)."""

    def __init__(self, features):
        super().__init__(torch.arange(features - 1, -1, -1))


class RandomPermutationLayer(transforms.Permutation):
    """Published layout: a fixed random permutation (a Permutation subclass)."""

    def __init__(self, features):
        super().__init__(torch.from_numpy(np.random.permutation(features)))


def build(features, context, blocks, hidden, layers, bins, kind, cond_base, residual):
    published = cond_base == "published"
    ts = []
    for i in range(blocks):
        b = block(features, context, hidden, layers, bins, residual)
        ts.append(transforms.InverseTransform(b) if kind == "iaf" else b)
        if i + 1 < blocks:
            if published:
                ts.append(InversionLayer(features) if i % 2 == 0 else RandomPermutationLayer(features))
            else:
                ts.append(transforms.ReversePermutation(features) if i % 2 == 0
                          else transforms.RandomPermutation(features))
    if published:
        base = distributions.ConditionalDiagonalNormal(shape=[features],
                                                       context_encoder=BaseContext(context, features))
    elif cond_base:
        enc = torch.nn.Sequential(torch.nn.Linear(context, features), torch.nn.ReLU(),
                                  torch.nn.Linear(features, features), torch.nn.ReLU(),
                                  torch.nn.Linear(features, 2 * features))
        base = distributions.ConditionalDiagonalNormal(shape=[features], context_encoder=enc)
    else:
        base = distributions.StandardNormal([features])
    return flows.Flow(transforms.CompositeTransform(ts), base)


def write(out, name, features, context, blocks, hidden, layers, bins, kind, dtype, cond_base, residual, seed,
          perturbation=0.3):
    torch.manual_seed(seed)
    np.random.seed(seed)
    flow = build(features, context, blocks, hidden, layers, bins, kind, cond_base, residual)
    tdt = torch.float64 if dtype == "f64" else torch.float32
    flow = flow.to(tdt).eval()
    with torch.no_grad():
        for n, p in flow.named_parameters():
            p.add_(perturbation * torch.randn_like(p))  # away from the near-identity initialisation
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
                blocks=blocks, hidden=hidden, layers=layers, bins=bins, dtype=dtype, cond_base=bool(cond_base),
                residual=residual, tail_bound=14.0, min_bin_width=1e-6, min_bin_height=1e-6, min_derivative=1e-6)
    if cond_base == "published":
        # The published module layout, checked more tightly (relative to 1 + |value|).
        arch.update(encoder="BaseContext", perturbation=perturbation, tolerance=dict(log_prob=1e-5, sample=1e-5))
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
    # float32, checked to 1e-5: a milder perturbation keeps the flow well conditioned (with 0.3 its
    # log-probs reach -4700 and float32 rounding alone moves them by ~1e-5 relative).
    write(out, "zdc-maf-published", 12, 10, 4, 24, 2, 8, "maf", "f32", "published", False, 4, perturbation=0.1)


if __name__ == "__main__":
    main()
