#!/usr/bin/env python
"""Export an EfficientFormer features_only backbone to ONNX with dynamic batch, height and width, then check
the file with onnxruntime against PyTorch.

    python tools/export_onnx.py MODEL OUTPUT.onnx [--checkpoint FILE] [--fuse-bn] [--out-indices 0 1 2 3]
                                [--check-sizes 224 512 333x517] [--atol 1e-4] [--opset 18]

The graph takes ``image`` (B, 3, H, W) for any H, W >= 64 and returns ``feature0``, ``feature1``, ... (one per
out index, NCHW). The attention-bias resize is part of the graph (two small interpolation matrices built from
the input size), so one file serves every input size. ``--checkpoint`` takes any format ``load_checkpoint``
reads (timm, the authors' release, transformers); without it the weights are random. The file is written
atomically and only kept when every check size matches PyTorch within ``--atol``.
"""
import argparse
import sys
import warnings

import numpy as np
import onnxruntime
import timm
import torch

import efficientformer_timm  # noqa: F401  (registers the models)
from efficientformer_timm import CheckpointError, load_checkpoint
from efficientformer_timm._validate import MIN_INPUT_SIZE
from efficientformer_timm.checkpoint import atomic_output
from efficientformer_timm.fuse import fuse_batchnorm


def parse_size(text):
    h, _, w = text.partition('x')
    return int(h), int(w or h)


def build_features_model(model_name, checkpoint=None, out_indices=(0, 1, 2, 3), fuse_bn=False):
    model = timm.create_model(model_name, features_only=True, out_indices=tuple(out_indices))
    if checkpoint:
        load_checkpoint(model, checkpoint)
    model.eval()
    return fuse_batchnorm(model) if fuse_bn else model


def export(model, path, opset=18):
    """Write ``model`` (a features_only network in eval) to ``path`` with dynamic batch, height and width."""
    num_outputs = len(model.feature_info.out_indices)
    example = torch.randn(1, 3, 224, 224)
    dims = {0: torch.export.Dim('batch', max=1024),
            2: torch.export.Dim('height', min=MIN_INPUT_SIZE), 3: torch.export.Dim('width', min=MIN_INPUT_SIZE)}
    with warnings.catch_warnings():
        # torch.export's own deprecation chatter about pytree internals, not about this model
        warnings.filterwarnings('ignore', category=FutureWarning, module='copyreg')
        torch.onnx.export(
            model, (example,), path, dynamo=True, opset_version=opset, dynamic_shapes={'x': dims},
            input_names=['image'], output_names=[f'feature{i}' for i in range(num_outputs)], verbose=False,
            external_data=False)  # one self-contained file (every model is far below protobuf's 2 GB)


def _share_of_tolerance(diff, tolerance):
    if tolerance > 0:
        return diff / tolerance
    return 0.0 if diff == 0 else float('inf')  # zero tolerance: only an exact match passes


def check(model, path, sizes, batch=2, rtol=1e-5, atol=1e-4):
    """Run the ONNX file with onnxruntime and PyTorch on the same random batch at each size.

    Each output is within tolerance when max |onnxruntime - torch| <= atol + rtol * max |torch|: relative to the
    output's scale (fp32 rounding grows with the activations), with an absolute floor for near-zero outputs.
    Returns [(size, output shapes, max abs difference, worst difference / tolerance over the outputs)]."""
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    generator = torch.Generator().manual_seed(0)
    results = []
    for height, width in sizes:
        x = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = model(x)
        got = session.run(None, {'image': x.numpy()})
        if len(got) != len(expected):
            raise RuntimeError(f'ONNX graph returned {len(got)} outputs, PyTorch {len(expected)}')
        for g, e in zip(got, expected):
            if g.shape != tuple(e.shape):
                raise RuntimeError(f'at {height}x{width} ONNX output shape {g.shape} != PyTorch {tuple(e.shape)}')
        diffs = [float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected)]
        ratios = [_share_of_tolerance(d, atol + rtol * float(e.abs().max())) for d, e in zip(diffs, expected)]
        results.append(((height, width), [g.shape for g in got], max(diffs), max(ratios)))
    return results


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
            export(model, tmp, args.opset)
            results = check(model, tmp, args.check_sizes, rtol=args.rtol, atol=args.atol)
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
