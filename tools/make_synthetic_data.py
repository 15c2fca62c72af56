#!/usr/bin/env python
"""Write a small synthetic dataset in COCO or ADE20K format (``efficientformer_timm.synthetic``).

    python tools/make_synthetic_data.py coco OUT_DIR [--train N] [--val N] [--size S] [--seed S]
    python tools/make_synthetic_data.py ade20k OUT_DIR [--train N] [--val N] [--size S] [--seed S]
"""
import argparse

from efficientformer_timm.synthetic import make_ade20k, make_coco


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('kind', choices=('coco', 'ade20k'))
    parser.add_argument('out_dir')
    parser.add_argument('--train', type=int, default=64, help='training images')
    parser.add_argument('--val', type=int, default=16, help='validation images')
    parser.add_argument('--size', type=int, default=256, help='side of the square images in pixels')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    make = make_coco if args.kind == 'coco' else make_ade20k
    make(args.out_dir, args.train, args.val, args.size, args.seed)
    print(f'wrote {args.kind} synthetic data to {args.out_dir} ({args.train} train, {args.val} val, {args.size}px)')


if __name__ == '__main__':
    main()
