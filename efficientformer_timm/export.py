"""ONNX export of a features_only backbone, and the runtimes deployers run the file in: onnxruntime and OpenVINO
(the ``onnx`` and ``openvino`` extras); ``tools/export_onnx.py`` is the command line.

The default graph takes ``image`` (B, 3, H, W) for any H, W >= 64 and returns ``feature0``, ``feature1``, ... (one
per out index, NCHW). The attention-bias resize is part of the graph (two small interpolation matrices built from
the input size), so one file serves every input size. ``static_size`` exports for one size (the batch stays
dynamic): the biases then depend on constants only, which the runtimes fold once when they load the file. Every
file is checked against PyTorch in the runtime it is meant for (``check_onnx``).
"""
import os
import tempfile
import warnings
from typing import List, Optional, Sequence, Tuple

import timm
import torch

from ._validate import MIN_INPUT_SIZE
from .checkpoint import load_checkpoint
from .fuse import fuse_batchnorm

__all__ = ['build_features_model', 'export_onnx', 'check_onnx', 'share_of_tolerance', 'outputs_match',
           'onnxruntime_session', 'openvino_model', 'RuntimeFeatures', 'RUNTIMES', 'RTOL', 'ATOL']

RUNTIMES = ('onnxruntime', 'openvino')
# the tolerance of every comparison with PyTorch (``outputs_match``, ``check_onnx``, tools/export_onnx.py): an
# output matches when max |got - expected| <= ATOL + RTOL * max |expected|
RTOL = 1e-5
ATOL = 1e-4


def build_features_model(model_name: str, checkpoint=None, out_indices=(0, 1, 2, 3), fuse_bn: bool = False):
    """The features_only network in eval, with ``checkpoint`` (any format ``load_checkpoint`` reads) loaded and
    BatchNorm folded into the convolutions when ``fuse_bn``."""
    model = timm.create_model(model_name, features_only=True, out_indices=tuple(out_indices))
    if checkpoint:
        load_checkpoint(model, checkpoint)
    model.eval()
    return fuse_batchnorm(model) if fuse_bn else model


def export_onnx(model, path: str, opset: int = 20, static_size: Optional[Tuple[int, int]] = None) -> None:
    """Write ``model`` (a features_only network in eval) to ``path`` with dynamic batch, height and width, or for
    inputs of ``static_size`` (H, W) only (dynamic batch). From opset 20 (the default) GELU is one ``Gelu`` node,
    one kernel in the runtimes; opset 18 spells it as ``Erf`` and four elementwise operations."""
    num_outputs = len(model.feature_info.out_indices)
    size = tuple(static_size) if static_size else (224, 224)
    if min(size) < MIN_INPUT_SIZE:
        raise ValueError(f'static_size {size[0]}x{size[1]}: sizes must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}')
    example = torch.randn(1, 3, *size)
    dims = {0: torch.export.Dim('batch', max=1024)}
    if not static_size:
        dims.update({2: torch.export.Dim('height', min=MIN_INPUT_SIZE), 3: torch.export.Dim('width', min=MIN_INPUT_SIZE)})
    with warnings.catch_warnings(), torch.no_grad():  # an inference graph: what runs without autograd
        # torch.export's own deprecation chatter about pytree internals, not about this model
        warnings.filterwarnings('ignore', category=FutureWarning, module='copyreg')
        torch.onnx.export(
            model, (example,), path, dynamo=True, opset_version=opset, dynamic_shapes={'x': dims},
            input_names=['image'], output_names=[f'feature{i}' for i in range(num_outputs)], verbose=False,
            external_data=False)  # one self-contained file (every model is far below protobuf's 2 GB)


def onnxruntime_session(path: str, threads: Optional[int] = None, optimized_path: Optional[str] = None,
                        profile: bool = False):
    """An onnxruntime CPU session on ``threads`` intra-op threads (onnxruntime's default: one per core);
    ``optimized_path`` also writes the graph onnxruntime runs after its optimizations (its layout and fused ops
    are for this kind of CPU, and run in onnxruntime only); ``profile`` turns onnxruntime's profiler on."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tempfile.gettempdir(), 'efficientformer_onnxruntime_profile')
    return onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def openvino_model(path: str, threads: Optional[int] = None):
    """The file compiled by OpenVINO for the CPU, in fp32 (OpenVINO would otherwise pick bf16 where the CPU has
    it), on ``threads`` threads (OpenVINO's default: every core)."""
    import openvino
    core = openvino.Core()
    config = {'INFERENCE_PRECISION_HINT': 'f32'}
    if threads:
        config['INFERENCE_NUM_THREADS'] = threads
    return core.compile_model(core.read_model(path), 'CPU', config)


class RuntimeFeatures(torch.nn.Module):
    """An exported file run in ``runtime`` ('onnxruntime' or 'openvino') behind the features model's interface:
    a CPU float32 batch in, the list of feature maps out (as tensors sharing the runtime's arrays)."""

    def __init__(self, path: str, runtime: str = 'onnxruntime', threads: Optional[int] = None):
        super().__init__()
        if runtime not in RUNTIMES:
            raise ValueError(f'runtime must be one of {", ".join(RUNTIMES)}, got {runtime!r}')
        self.path, self.runtime = path, runtime
        if runtime == 'onnxruntime':
            self.session = onnxruntime_session(path, threads)
            dims = self.session.get_inputs()[0].shape[2:]
        else:
            self.compiled = openvino_model(path, threads)
            shape = self.compiled.input(0).get_partial_shape()
            dims = [shape[i].get_length() if shape[i].is_static else None for i in (2, 3)]
        self.static_size = tuple(dims) if all(isinstance(d, int) for d in dims) else None

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if self.static_size and tuple(x.shape[2:]) != self.static_size:
            raise ValueError(
                f'{self.path} was exported for {self.static_size[0]}x{self.static_size[1]} inputs only (--static), '
                f'got {x.shape[2]}x{x.shape[3]}: resize the images or export a dynamic-size file')
        image = x.detach().cpu().numpy()
        if self.runtime == 'onnxruntime':
            outputs = self.session.run(None, {'image': image})
        else:
            result = self.compiled(image)
            outputs = [result[output] for output in self.compiled.outputs]
        return [torch.from_numpy(output) for output in outputs]


def share_of_tolerance(diff: float, tolerance: float) -> float:
    """``diff`` as a share of ``tolerance`` (above 1: outside it); with a zero tolerance only 0 passes."""
    if tolerance > 0:
        return diff / tolerance
    return 0.0 if diff == 0 else float('inf')


def outputs_match(got: Sequence, expected: Sequence[torch.Tensor], rtol: float = RTOL,
                  atol: float = ATOL) -> Tuple[float, float]:
    """(max |got - expected| over the outputs, the worst output's difference as a share of its tolerance
    ``atol + rtol * max |expected|``): relative to each output's scale (fp32 rounding grows with the activations),
    with an absolute floor for near-zero outputs. ``got`` may hold tensors or numpy arrays."""
    diffs = [float((torch.as_tensor(g).double().cpu() - e.double().cpu()).abs().max()) for g, e in zip(got, expected)]
    shares = [share_of_tolerance(d, atol + rtol * float(e.abs().max())) for d, e in zip(diffs, expected)]
    return max(diffs), max(shares)


def check_onnx(model, path: str, sizes: Sequence[Tuple[int, int]], batch: int = 2, rtol: float = RTOL,
               atol: float = ATOL, runtime: str = 'onnxruntime') -> List[tuple]:
    """Run the ONNX file in ``runtime`` ('onnxruntime' or 'openvino') and ``model`` with PyTorch on the same random
    batch at each size.

    Each output is within tolerance when max |runtime - torch| <= atol + rtol * max |torch| (``outputs_match``).
    Returns [(size, output shapes, max abs difference, worst difference / tolerance over the outputs)]; raises
    RuntimeError when the graph returns other outputs or shapes."""
    runner = RuntimeFeatures(path, runtime)
    generator = torch.Generator().manual_seed(0)
    results = []
    for height, width in sizes:
        x = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = model(x)
        got = runner(x)
        if len(got) != len(expected):
            raise RuntimeError(f'ONNX graph returned {len(got)} outputs in {runtime}, PyTorch {len(expected)}')
        for g, e in zip(got, expected):
            if g.shape != e.shape:
                raise RuntimeError(f'at {height}x{width} {runtime} output shape {tuple(g.shape)} != PyTorch '
                                   f'{tuple(e.shape)}')
        diff, share = outputs_match(got, expected, rtol=rtol, atol=atol)
        results.append(((height, width), [tuple(g.shape) for g in got], diff, share))
    return results
