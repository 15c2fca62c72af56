#!/usr/bin/env python
"""Parameters and GMACs of the seven models, measured with torch.utils.flop_counter (MACs = FLOPs / 2).

    python tools/model_table.py [--json OUT]

Classification model at 224x224 (params include both heads), features_only backbone at 224x224 and
800x1333 (params without heads).
"""
import argparse
import json

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import efficientformer_timm  # noqa: F401
from efficientformer_timm.variants import MODEL_NAMES

MODELS = list(MODEL_NAMES)


@torch.no_grad()
def gmacs(model, height, width):
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(1, 3, height, width))
    return counter.get_total_flops() / 2e9


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--json')
    args = parser.parse_args()
    rows = []
    print('| model | params (M) | GMACs @224 | backbone params (M) | backbone GMACs @224 | backbone GMACs @800x1333 |')
    print('|---|---|---|---|---|---|')
    for name in MODELS:
        cls = timm.create_model(name).eval()
        feats = timm.create_model(name, features_only=True).eval()
        row = dict(
            model=name, params_m=sum(p.numel() for p in cls.parameters()) / 1e6, gmacs_224=gmacs(cls, 224, 224),
            backbone_params_m=sum(p.numel() for p in feats.parameters()) / 1e6,
            backbone_gmacs_224=gmacs(feats, 224, 224), backbone_gmacs_800x1333=gmacs(feats, 800, 1333))
        rows.append(row)
        print(f"| {name} | {row['params_m']:.2f} | {row['gmacs_224']:.2f} | {row['backbone_params_m']:.2f} | "
              f"{row['backbone_gmacs_224']:.2f} | {row['backbone_gmacs_800x1333']:.1f} |", flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
