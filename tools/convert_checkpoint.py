#!/usr/bin/env python
"""Convert an EfficientFormer checkpoint to this package's formats.

    python tools/convert_checkpoint.py INPUT OUTPUT [--model NAME]

INPUT is one of
- a classification checkpoint (timm, the authors' release, or transformers; a file or a transformers
  ``save_pretrained`` folder): written in timm format;
- one of the authors' trained Mask R-CNN (COCO) or Semantic FPN (ADE20K) checkpoints (mmdet 2.19 / mmseg 0.x):
  written as an mmengine checkpoint of the model that ``mm_configs/released/<task>_<model>_<dataset>.py`` builds
  (mmdet 3 / mmseg 1), every tensor checked against it; the tool names that config.
OUTPUT is written as safetensors when it ends in .safetensors, else with torch.save; atomically, and never over
INPUT.
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

try:  # the OpenMMLab stack (the package's `mm` extra) is needed only for the authors' detectors / segmenters
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from efficientformer_timm.mm import released
    MM_IMPORT_ERROR = None
except ImportError as e:
    released, MM_IMPORT_ERROR = None, e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def released_config(state_dict, model_name: str = None) -> str:
    """The config in mm_configs/released for one of the authors' detector / segmenter checkpoints."""
    name = model_name or released.model_name_of(state_dict)
    return os.path.join(ROOT, 'mm_configs', 'released',
                        released.released_config_name(name, released.released_task(state_dict)))


def convert_released(state_dict, src: str, dst: str, config_path: str) -> None:
    cfg = Config.fromfile(config_path)
    init_default_scope(released.RELEASED_TASKS[released.released_task(state_dict)][3])
    model = MODELS.build(cfg.model)
    out, dropped = released.convert_released_checkpoint(state_dict, model)
    logging.info('dropped %d tensors the authors\' forward never reads: %s', len(dropped), ', '.join(dropped))
    meta = {'config': os.path.relpath(config_path, ROOT), 'converted_from': os.path.basename(src)}
    with atomic_output(dst, inputs=(src,)) as tmp:
        if dst.endswith('.safetensors'):
            save_file({k: v.contiguous() for k, v in out.items()}, tmp, metadata={'format': 'pt', **meta})
        else:
            torch.save({'state_dict': out, 'meta': meta}, tmp)


def convert(src: str, dst: str, model_name: str = None) -> str:
    """Write ``src`` converted to ``dst``; returns what was written (the model name, or the released config)."""
    src_file = transformers_weights_file(src) if os.path.isdir(src) else src
    state_dict = read_checkpoint(src_file)
    if any(k.startswith('backbone.') for k in state_dict):
        if released is None:
            raise ImportError(f'{src} is a detector / segmenter checkpoint: converting it needs the OpenMMLab '
                              "stack (install the package with its `mm` extra, as `make demo` does): "
                              f'{MM_IMPORT_ERROR}')
        if released.released_task(state_dict) is None:
            raise CheckpointError(f'{src}: a backbone with neither Mask R-CNN heads (rpn_head / roi_head) nor a '
                                  'Semantic FPN decode_head; only the authors\' COCO and ADE20K models convert')
        config_path = released_config(state_dict, model_name)
        convert_released(state_dict, src, dst, config_path)
        return os.path.relpath(config_path, ROOT)
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
    except (CheckpointError, FileNotFoundError, ImportError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    if name.endswith('.py'):
        print(f'wrote {args.output}: an mmengine checkpoint for {name}')
    else:
        print(f'wrote {args.output} ({name}, timm format)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
