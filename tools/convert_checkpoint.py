#!/usr/bin/env python
"""Convert an EfficientFormer checkpoint (timm, the authors' release, or transformers) to timm format.

    python tools/convert_checkpoint.py INPUT OUTPUT [--model NAME]

INPUT is a checkpoint file, or a transformers ``save_pretrained`` folder. OUTPUT is written as safetensors
when it ends in .safetensors, else with torch.save; atomically, and never over INPUT.
"""
import argparse
import logging
import os
import sys

import timm
import torch
from safetensors.torch import save_file

import efficientformer_timm  # noqa: F401  (registers the models)
from efficientformer_timm.checkpoint import (
    CheckpointError, atomic_output, convert_state_dict, infer_model_name, read_checkpoint, to_timm_keys,
    transformers_weights_file)
from efficientformer_timm.transformers_compat import model_args_from_transformers_config


def convert(src: str, dst: str, model_name: str = None) -> str:
    src_file = transformers_weights_file(src) if os.path.isdir(src) else src
    state_dict = read_checkpoint(src_file)
    model_name = model_name or infer_model_name(state_dict)
    kwargs = {}
    if os.path.isdir(src) and os.path.isfile(os.path.join(src, 'config.json')):
        model_name, kwargs = model_args_from_transformers_config(src)
    timm_keys = to_timm_keys(state_dict)[0]
    head = timm_keys.get('head.weight')
    kwargs.setdefault('num_classes', head.shape[0] if head is not None else 0)
    kwargs.setdefault('distillation', 'head_dist.weight' in timm_keys)
    kwargs.setdefault('feature_norm', any(k.startswith('feature_norms.') for k in timm_keys))
    model = timm.create_model(model_name, **kwargs)
    out = convert_state_dict(state_dict, model)
    out = {k: v.contiguous() for k, v in out.items()}

    with atomic_output(dst, inputs=(src, src_file)) as tmp:
        if dst.endswith('.safetensors'):
            save_file(out, tmp, metadata={'format': 'pt', 'model': model_name})
        else:
            torch.save(out, tmp)
    return model_name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('input')
    parser.add_argument('output')
    parser.add_argument('--model', help='timm model name (default: inferred from the checkpoint)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    try:
        name = convert(args.input, args.output, args.model)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'wrote {args.output} ({name}, timm format)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
