"""ONNX export of a features_only backbone with dynamic batch, height and width, and its check against PyTorch in
onnxruntime (the ``onnx`` extra); ``tools/export_onnx.py`` is the command line.

The graph takes ``image`` (B, 3, H, W) for any H, W >= 64 and returns ``feature0``, ``feature1``, ... (one per
out index, NCHW). The attention-bias resize is part of the graph (two small interpolation matrices built from
the input size), so one file serves every input size.
"""
import warnings
from typing import List, Sequence, Tuple

import timm
import torch

from ._validate import MIN_INPUT_SIZE
from .checkpoint import load_checkpoint
from .fuse import fuse_batchnorm

__all__ = ['build_features_model', 'export_onnx', 'check_onnx', 'share_of_tolerance', 'outputs_match']


def build_features_model(model_name: str, checkpoint=None, out_indices=(0, 1, 2, 3), fuse_bn: bool = False):
    """The features_only network in eval, with ``checkpoint`` (any format ``load_checkpoint`` reads) loaded and
    BatchNorm folded into the convolutions when ``fuse_bn``."""
    model = timm.create_model(model_name, features_only=True, out_indices=tuple(out_indices))
    if checkpoint:
        load_checkpoint(model, checkpoint)
    model.eval()
    return fuse_batchnorm(model) if fuse_bn else model


def export_onnx(model, path: str, opset: int = 18) -> None:
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


def share_of_tolerance(diff: float, tolerance: float) -> float:
    """``diff`` as a share of ``tolerance`` (above 1: outside it); with a zero tolerance only 0 passes."""
    if tolerance > 0:
        return diff / tolerance
    return 0.0 if diff == 0 else float('inf')


def outputs_match(got: Sequence, expected: Sequence[torch.Tensor], rtol: float = 1e-4,
                  atol: float = 1e-5) -> Tuple[float, float]:
    """(max |got - expected| over the outputs, the worst output's difference as a share of its tolerance
    ``atol + rtol * max |expected|``): relative to each output's scale (fp32 rounding grows with the activations),
    with an absolute floor for near-zero outputs. ``got`` may hold tensors or numpy arrays."""
    diffs = [float((torch.as_tensor(g).double().cpu() - e.double().cpu()).abs().max()) for g, e in zip(got, expected)]
    shares = [share_of_tolerance(d, atol + rtol * float(e.abs().max())) for d, e in zip(diffs, expected)]
    return max(diffs), max(shares)


def check_onnx(model, path: str, sizes: Sequence[Tuple[int, int]], batch: int = 2, rtol: float = 1e-5,
               atol: float = 1e-4) -> List[tuple]:
    """Run the ONNX file with onnxruntime and ``model`` with PyTorch on the same random batch at each size.

    Each output is within tolerance when max |onnxruntime - torch| <= atol + rtol * max |torch|
    (``outputs_match``). Returns [(size, output shapes, max abs difference, worst difference / tolerance over the
    outputs)]; raises RuntimeError when the graph returns other outputs or shapes."""
    import onnxruntime
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
        diff, share = outputs_match(got, expected, rtol=rtol, atol=atol)
        results.append(((height, width), [g.shape for g in got], diff, share))
    return results
