#!/usr/bin/env python
"""Export an EfficientFormer features_only backbone to ONNX with dynamic batch, height and width, then check
the file in onnxruntime (and OpenVINO) against PyTorch (``efficientformer_timm.export``).

    python tools/export_onnx.py MODEL OUTPUT.onnx [--checkpoint FILE] [--fuse-bn] [--out-indices 0 1 2 3]
                                [--check-sizes 224 512 333x517] [--atol 1e-4] [--opset 20] [--static HxW]
                                [--check-runtimes onnxruntime openvino] [--onnxruntime-optimized FILE]

The graph takes ``image`` (B, 3, H, W) for any H, W >= 64 and returns ``feature0``, ``feature1``, ... (one per
out index, NCHW); one file serves every input size. ``--static HxW`` writes a file for that size only (the
attention biases depend on constants only, folded by the runtime when it loads the file; the batch stays
dynamic). The default opset 20 writes GELU as one ``Gelu`` node (``--opset 18``: ``Erf`` arithmetic, for runtimes
without opset 20).
``--onnxruntime-optimized`` also writes the graph onnxruntime runs after its own optimizations (its layout and
fused kernels suit this kind of CPU and run in onnxruntime only). ``--checkpoint`` takes any format
``load_checkpoint`` reads (timm, the authors' release, transformers); without it the weights are random. Files are
written atomically and only kept when every check size matches PyTorch within the tolerance in every runtime.
"""
import argparse
import sys

from efficientformer_timm import CheckpointError
from efficientformer_timm._validate import MIN_INPUT_SIZE
from efficientformer_timm.checkpoint import atomic_output
from efficientformer_timm.export import (ATOL, RTOL, RUNTIMES, build_features_model, check_onnx, export_onnx,
                                        onnxruntime_session)

from _cli import parse_size


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
    parser.add_argument('--rtol', type=float, default=RTOL,
                        help="accepted difference to PyTorch relative to each output's largest magnitude "
                             f'(default: {RTOL:g})')
    parser.add_argument('--atol', type=float, default=ATOL,
                        help='accepted absolute difference on top of --rtol (the floor for near-zero outputs; '
                             f'default: {ATOL:g})')
    parser.add_argument('--opset', type=int, default=20,
                        help='ONNX opset (from 20: GELU as one Gelu node; 18: as Erf arithmetic)')
    parser.add_argument('--static', type=parse_size, metavar='HxW',
                        help='a file for this input size only (checked at it; the batch stays dynamic)')
    parser.add_argument('--check-runtimes', nargs='+', default=['onnxruntime'], choices=RUNTIMES,
                        help='runtimes the file is checked in (openvino: the `openvino` extra)')
    parser.add_argument('--onnxruntime-optimized', metavar='FILE',
                        help="also write the graph onnxruntime runs after its optimizations (checked too)")
    args = parser.parse_args(argv)
    if args.static:
        if args.check_sizes != parser.get_default('check_sizes') and args.check_sizes != [args.static]:
            parser.error('--static: the file runs at that size only; leave out --check-sizes')
        args.check_sizes = [args.static]
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
            export_onnx(model, tmp, args.opset, args.static)
            _check(model, tmp, args.check_runtimes, args, args.output)
            if args.onnxruntime_optimized:
                with atomic_output(args.onnxruntime_optimized) as optimized:
                    onnxruntime_session(tmp, optimized_path=optimized)
                    _check(model, optimized, ['onnxruntime'], args, args.onnxruntime_optimized)
    except (RuntimeError, ValueError, ImportError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    shape = f'{args.static[0]}x{args.static[1]} inputs, dynamic batch' if args.static else 'dynamic batch/height/width'
    print(f'wrote {args.output} ({args.model}, features {args.out_indices}, {shape})'
          + (f' and {args.onnxruntime_optimized}' if args.onnxruntime_optimized else ''))
    return 0


def _check(model, path, runtimes, args, name):
    """Every check size of ``args`` in every one of ``runtimes``, printed; RuntimeError naming ``name`` when one is
    outside the tolerance."""
    for runtime in runtimes:
        results = check_onnx(model, path, args.check_sizes, rtol=args.rtol, atol=args.atol, runtime=runtime)
        for (h, w), shapes, diff, ratio in results:
            print(f'{h}x{w}: outputs {", ".join("x".join(map(str, s)) for s in shapes)}; '
                  f'max |{runtime} - torch| = {diff:.2e} ({ratio:.2g} of the tolerance)')
        (h, w), _, diff, ratio = max(results, key=lambda r: r[3])
        if ratio > 1:
            raise RuntimeError(f'{runtime} differs from PyTorch by {diff:.2e} at {h}x{w}, {ratio:.3g} times '
                               f'--atol {args.atol} + --rtol {args.rtol} x the output scale; {name} not written')


if __name__ == '__main__':
    sys.exit(main())
