#!/usr/bin/env python
"""Export an EfficientFormer features_only backbone to ONNX with dynamic batch, height and width, then check
the file with onnxruntime against PyTorch (``efficientformer_timm.export``).

    python tools/export_onnx.py MODEL OUTPUT.onnx [--checkpoint FILE] [--fuse-bn] [--out-indices 0 1 2 3]
                                [--check-sizes 224 512 333x517] [--atol 1e-4] [--opset 18]

The graph takes ``image`` (B, 3, H, W) for any H, W >= 64 and returns ``feature0``, ``feature1``, ... (one per
out index, NCHW); one file serves every input size. ``--checkpoint`` takes any format ``load_checkpoint`` reads
(timm, the authors' release, transformers); without it the weights are random. The file is written atomically
and only kept when every check size matches PyTorch within the tolerance.
"""
import argparse
import sys

from efficientformer_timm import CheckpointError
from efficientformer_timm._validate import MIN_INPUT_SIZE
from efficientformer_timm.benchmark import parse_size
from efficientformer_timm.checkpoint import atomic_output
from efficientformer_timm.export import build_features_model, check_onnx, export_onnx


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='timm model name, e.g. efficientformer_l1 or efficientformerv2_s0')
    parser.add_argument('output', help='the .onnx file to write')
    parser.add_argument('--checkpoint', help='weights to load (timm, original release or transformers format)')
    parser.add_argument('--fuse-bn', action='store_true', help='fold BatchNorm into the convolutions first')
    parser.add_argument('--out-indices', type=int, nargs='+', default=[0, 1, 2, 3], choices=range(4),
                        help='stages to output (0-3, strides 4 to 32)')
    parser.add_argument('--check-sizes', type=parse_size, nargs='+',
                        default=[parse_size(s) for s in ('224', '512', '333x517')],
                        help='HxW sizes checked against PyTorch (default: 224 512 333x517)')
    parser.add_argument('--rtol', type=float, default=1e-5,
                        help="accepted difference to PyTorch relative to each output's largest magnitude")
    parser.add_argument('--atol', type=float, default=1e-4,
                        help='accepted absolute difference on top of --rtol (the floor for near-zero outputs)')
    parser.add_argument('--opset', type=int, default=18)
    args = parser.parse_args(argv)
    small = [f'{h}x{w}' for h, w in args.check_sizes if min(h, w) < MIN_INPUT_SIZE]
    if small:
        parser.error(f'--check-sizes {" ".join(small)}: sizes must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}')

    try:
        model = build_features_model(args.model, args.checkpoint, args.out_indices, args.fuse_bn)
    except (CheckpointError, FileNotFoundError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    try:
        with atomic_output(args.output, inputs=tuple(filter(None, [args.checkpoint]))) as tmp:
            export_onnx(model, tmp, args.opset)
            results = check_onnx(model, tmp, args.check_sizes, rtol=args.rtol, atol=args.atol)
            for (h, w), shapes, diff, ratio in results:
                print(f'{h}x{w}: outputs {", ".join("x".join(map(str, s)) for s in shapes)}; '
                      f'max |onnxruntime - torch| = {diff:.2e} ({ratio:.2g} of the tolerance)')
            (h, w), _, diff, ratio = max(results, key=lambda r: r[3])
            if ratio > 1:
                raise RuntimeError(f'onnxruntime differs from PyTorch by {diff:.2e} at {h}x{w}, {ratio:.3g} times '
                                   f'--atol {args.atol} + --rtol {args.rtol} x the output scale; {args.output} not written')
    except (RuntimeError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'wrote {args.output} ({args.model}, features {args.out_indices}, dynamic batch/height/width)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
