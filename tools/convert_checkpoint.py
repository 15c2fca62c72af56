#!/usr/bin/env python
"""Convert an EfficientFormer checkpoint to this package's formats (``efficientformer_timm.convert.convert_file``).

    python tools/convert_checkpoint.py INPUT OUTPUT [--model NAME]

INPUT is one of
- a classification checkpoint (timm, the authors' release, or transformers; a file or a transformers
  ``save_pretrained`` folder): written in timm format;
- one of the authors' trained Mask R-CNN (COCO) or Semantic FPN (ADE20K) checkpoints (mmdet 2.19 / mmseg 0.x):
  written as an mmengine checkpoint of the model that ``mm_configs/released/<task>_<model>_<dataset>.py`` builds
  (mmdet 3 / mmseg 1; the package ships these configs), every tensor checked against it; the tool names that
  config's path.
OUTPUT is written as safetensors when it ends in .safetensors, else with torch.save; atomically, and never over
INPUT. Exit status 1, with the reason, when the checkpoint does not convert.
"""
import argparse
import logging
import sys

from efficientformer_timm.checkpoint import CheckpointError
from efficientformer_timm.convert import convert_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('input')
    parser.add_argument('output')
    parser.add_argument('--model', help='timm model name (default: inferred from the checkpoint)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    try:
        name = convert_file(args.input, args.output, args.model)
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
