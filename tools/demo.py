#!/usr/bin/env python
"""`make demo`: Mask R-CNN and Semantic FPN with EfficientFormer-L1 trained on built-in synthetic data (no
downloads), evaluated before and after training, with one picture per validation image
(``efficientformer_timm.mm.demo``).

    python tools/demo.py [--out DIR] [--task detection|segmentation] [--iters N]

Exit status 1 when a model did not learn. Outputs go to demo_out/ (pictures in demo_out/<task>/pictures/).
"""
import argparse
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=os.path.join(ROOT, 'demo_out'))
    parser.add_argument('--task', choices=('detection', 'segmentation'), action='append',
                        help='run only detection or segmentation (repeatable; default: both)')
    parser.add_argument('--iters', type=int, help="training iterations (default: the toy config's)")
    args = parser.parse_args(argv)
    from efficientformer_timm.mm.demo import run_demo  # the OpenMMLab stack: after --help
    return run_demo(args.out, args.task, args.iters)


if __name__ == '__main__':
    sys.exit(main())
