"""Whole segmentors and detectors to ONNX, from a normalised image batch to the outputs a user consumes, each file
checked in onnxruntime and OpenVINO against the framework's own prediction (``tools/export_model.py`` is the
command line).

Segmentors (mmseg ``EncoderDecoder`` such as Semantic FPN and UperNet, smp's models, transformers'
``UperNetForSemanticSegmentation``) take ``image`` (B, 3, H, W) and return ``logits`` (B, classes, H, W) at the input
size and ``class_map`` (B, H, W), their argmax; H and W are dynamic unless ``static_size`` is given.

Detectors (mmdet RetinaNet-style single-stage and Faster / Mask R-CNN-style two-stage models) take one image
``image`` (1, 3, H, W) and return ``boxes`` (N, 4) in input pixels, ``scores`` (N,), ``labels`` (N,) and for Mask
R-CNN ``masks`` (N, H, W) at the input size, after the score threshold and NMS (``DetectionExport``).

Two kinds of module compute their sizes with Python numbers, which an exporter records as constants of the export
size: mmseg's ``Upsample`` (``int(t * scale_factor)``) and ``nn.AdaptiveAvgPool2d`` with bins other than one (its
bin edges). While exporting they are swapped for ones that compute the same values from the tensor's shape
(``exportable``); every file is then checked at sizes other than the one it was traced at.
"""
import contextlib
import math
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._validate import MIN_INPUT_SIZE
from .export import ATOL, RTOL, RUNTIMES, onnxruntime_session, openvino_model, outputs_match

__all__ = ['ExportCheckError', 'ShapeAdaptiveAvgPool2d', 'ShapeUpsample', 'exportable', 'SegmentationExport',
           'export_segmentor', 'check_segmentor', 'ExportedModel', 'random_images', 'load_mm_model',
           'load_mm_checkpoint', 'preprocessing', 'normalised_image', 'DetectionExport', 'export_detector',
           'check_detector', 'TorchvisionDetectionExport', 'export_torchvision_detector']

SEGMENTATION_OUTPUTS = ('logits', 'class_map')


class ExportCheckError(RuntimeError):
    """An exported file computes something else than the framework: which output, where and by how much."""


def _bin_matrix(size, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size) averaging weights of ``nn.AdaptiveAvgPool2d`` along one axis of ``size`` elements: bin i
    averages [floor(i * size / bins), ceil((i + 1) * size / bins)), computed from ``size`` as a tensor expression so
    that it follows the input's size in an exported graph."""
    index = torch.arange(bins, device=like.device)
    start = (index * size) // bins
    end = ((index + 1) * size + bins - 1) // bins
    position = torch.arange(size, device=like.device)
    inside = ((position >= start[:, None]) & (position < end[:, None])).to(like.dtype)
    return inside / inside.sum(1, keepdim=True)


class ShapeAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two averaging matrices built from the input's shape (what it computes, at any
    size of an exported graph)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        bins_h, bins_w = (size if size is not None else full
                          for size, full in zip(self.output_size, (height, width)))
        return _bin_matrix(height, bins_h, x) @ x @ _bin_matrix(width, bins_w, x).transpose(0, 1)


class ShapeUpsample(nn.Module):
    """mmseg's ``Upsample`` with its output size computed from the input's shape: an integral scale factor
    multiplies the symbolic sizes (mmseg's ``int(t * scale_factor)`` would be recorded as a constant)."""

    def __init__(self, upsample: nn.Module):
        super().__init__()
        self.size, self.scale_factor = upsample.size, upsample.scale_factor
        self.mode, self.align_corners = upsample.mode, upsample.align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size:
            size = self.size
        elif float(self.scale_factor).is_integer():
            size = [t * int(self.scale_factor) for t in x.shape[-2:]]
        else:
            size = [torch.sym_int(t * self.scale_factor) for t in x.shape[-2:]]
        return F.interpolate(x, size, mode=self.mode, align_corners=self.align_corners)


def _replacement(module: nn.Module) -> Optional[nn.Module]:
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        if size not in (1, (1, 1)):  # one bin is a plain mean, which exports at any size
            return ShapeAdaptiveAvgPool2d(size)
    kind = type(module)
    if kind.__name__ == 'Upsample' and kind.__module__.startswith('mmseg.'):
        return ShapeUpsample(module)
    return None


@contextlib.contextmanager
def exportable(model: nn.Module):
    """``model`` with the modules whose sizes are Python numbers swapped for shape-computed ones
    (``ShapeAdaptiveAvgPool2d``, ``ShapeUpsample``), and the package's mm backbone running its BatchNorm-folded
    network directly in the standard layout (its cached copy is keyed on tensor addresses, which an exporter's fake
    tensors lack); all restored on exit."""
    undo = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            new = _replacement(child)
            if new is not None:
                setattr(module, child_name, new)
                undo.append((module, child_name, child))
                # some modules run their children from a plain list too (transformers' UperNet pooling blocks)
                for attr, value in list(vars(module).items()):
                    if isinstance(value, list) and any(v is child for v in value):
                        setattr(module, attr, [new if v is child else v for v in value])
                        undo.append((module, attr, value))
        if type(module).__name__ == 'EfficientFormerBackbone' and hasattr(module, 'folded_model'):
            folded = module.folded_model() if module.fold_bn_in_eval else module.model
            undo += [(module, 'fold_bn_in_eval', module.fold_bn_in_eval), (module, 'model', module.model),
                     (module, 'channels_last', module.channels_last)]
            # memory layouts are the runtime's business: the graph needs no layout conversions
            module.model, module.fold_bn_in_eval, module.channels_last = folded, False, False
    try:
        yield model
    finally:
        for module, name, value in reversed(undo):
            setattr(module, name, value)


def _framework(model: nn.Module) -> str:
    """'mmseg', 'smp' or 'transformers' for a segmentor; TypeError for anything else."""
    module = type(model).__module__
    if module.startswith('mmseg.'):
        if not hasattr(model, 'encode_decode'):
            raise TypeError(f'{type(model).__name__}: only mmseg encoder-decoder segmentors export')
        return 'mmseg'
    if module.startswith('segmentation_models_pytorch.'):
        return 'smp'
    if type(model).__name__ == 'UperNetForSemanticSegmentation':
        return 'transformers'
    raise TypeError(f'{type(model).__name__} ({module}): not a segmentor this exports (an mmseg EncoderDecoder, an '
                    'smp model or transformers\' UperNetForSemanticSegmentation)')


class SegmentationExport(nn.Module):
    """A segmentor as the exported graph computes it: (logits at the input size, their argmax)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.framework = _framework(model)
        self.model = model
        if self.framework == 'mmseg':
            mode = (model.test_cfg or {}).get('mode', 'whole')
            if mode != 'whole':
                raise ValueError(f"test_cfg.mode={mode!r}: only whole-image inference exports (mode='whole'); a "
                                 'sliding window is a loop over crops the deployment code runs around the file')
            if model.out_channels == 1:
                raise ValueError('a one-channel (binary, thresholded) mmseg head: only argmax class maps export')

    @property
    def size_multiple(self) -> int:
        """What the input's H and W must be multiples of (smp's decoders need the encoder's output stride)."""
        if self.framework == 'smp' and getattr(self.model, 'requires_divisible_input_shape', True):
            return int(self.model.encoder.output_stride)
        return 1

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        if self.framework == 'mmseg':
            return self.model.encode_decode(image, [dict(img_shape=image.shape[2:])])
        if self.framework == 'smp':
            return self.model(image)
        return self.model(pixel_values=image).logits

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(image)
        return logits, logits.argmax(1)

    @torch.no_grad()
    def reference(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The framework's own prediction for ``image`` (mmseg's ``predict``, smp's ``predict``, transformers'
        forward): (logits at the input size, class map)."""
        if self.framework == 'mmseg':
            samples = self.model.predict(image)
            return (torch.stack([s.seg_logits.data for s in samples]),
                    torch.stack([s.pred_sem_seg.data[0] for s in samples]))
        if self.framework == 'smp':
            logits = self.model.predict(image)
        else:
            logits = self.model(pixel_values=image).logits
        return logits, logits.argmax(1)


def _dims(static_size, multiple: int, batch: bool = True) -> Dict[int, object]:
    dims = {0: torch.export.Dim('batch', max=1024)} if batch else {}
    if static_size:
        return dims
    if multiple > 1:
        dims[2] = multiple * torch.export.Dim('height_blocks', min=math.ceil(MIN_INPUT_SIZE / multiple))
        dims[3] = multiple * torch.export.Dim('width_blocks', min=math.ceil(MIN_INPUT_SIZE / multiple))
    else:
        dims[2] = torch.export.Dim('height', min=MIN_INPUT_SIZE)
        dims[3] = torch.export.Dim('width', min=MIN_INPUT_SIZE)
    return dims


def _check_static_size(static_size, multiple: int) -> Tuple[int, int]:
    size = tuple(static_size)
    if len(size) != 2 or min(size) < MIN_INPUT_SIZE:
        raise ValueError(f'static size {size}: an (H, W) of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}')
    if size[0] % multiple or size[1] % multiple:
        raise ValueError(f'static size {size[0]}x{size[1]}: this model needs H and W multiples of {multiple}')
    return size


def _export(module: nn.Module, path: str, example: torch.Tensor, dims, output_names, opset: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # torch.export's own deprecation chatter about pytree internals, not about the model
        warnings.filterwarnings('ignore', category=FutureWarning, module='copyreg')
        warnings.filterwarnings('ignore', category=UserWarning, module='torch')
        torch.onnx.export(module, (example,), path, dynamo=True, opset_version=opset,
                          dynamic_shapes={'image': dims}, input_names=['image'], output_names=list(output_names),
                          verbose=False, external_data=False)


def export_segmentor(model: nn.Module, path: str, static_size: Optional[Tuple[int, int]] = None,
                     opset: int = 20) -> SegmentationExport:
    """Write ``model`` (an mmseg encoder-decoder, an smp model or transformers' UperNet, in eval) to ``path``:
    ``image`` (B, 3, H, W), normalised as the model was trained, -> ``logits`` (B, classes, H, W) and
    ``class_map`` (B, H, W, int64). Dynamic batch, H and W (multiples of the output stride for smp's decoders), or
    H, W = ``static_size`` only. Returns the wrapper the file was made from (its ``reference`` is what the file is
    checked against: ``check_segmentor``)."""
    wrapper = SegmentationExport(model).eval()
    multiple = wrapper.size_multiple
    size = _check_static_size(static_size, multiple) if static_size else (8 * max(multiple, 32),
                                                                          10 * max(multiple, 32))
    with exportable(model):
        # a batch of two: an example batch of one would make the exporter treat the batch size as fixed
        _export(wrapper, path, torch.randn(2, 3, *size), _dims(static_size, multiple), SEGMENTATION_OUTPUTS, opset)
    return wrapper


class ExportedModel:
    """An exported file run in ``runtime`` ('onnxruntime' or 'openvino'): a float32 numpy batch in, a dict of the
    named outputs out. A file exported for one size refuses others."""

    def __init__(self, path: str, runtime: str = 'onnxruntime', threads: Optional[int] = None):
        if runtime not in RUNTIMES:
            raise ValueError(f'runtime must be one of {", ".join(RUNTIMES)}, got {runtime!r}')
        self.path, self.runtime = path, runtime
        if runtime == 'onnxruntime':
            self.session = onnxruntime_session(path, threads)
            shape = self.session.get_inputs()[0].shape
            self.input_shape = [d if isinstance(d, int) else None for d in shape]
            self.output_names = [o.name for o in self.session.get_outputs()]
        else:
            self.compiled = openvino_model(path, threads)
            shape = self.compiled.input(0).get_partial_shape()
            self.input_shape = [shape[i].get_length() if shape[i].is_static else None for i in range(len(shape))]
            self.output_names = [o.get_any_name() for o in self.compiled.outputs]

    @property
    def static_size(self) -> Optional[Tuple[int, int]]:
        dims = self.input_shape[2:]
        return tuple(dims) if all(d is not None for d in dims) else None

    def __call__(self, image) -> Dict[str, np.ndarray]:
        image = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f'{self.path} takes a (B, 3, H, W) image batch, got shape {tuple(image.shape)}')
        if self.static_size and tuple(image.shape[2:]) != self.static_size:
            raise ValueError(
                f'{self.path} was exported for {self.static_size[0]}x{self.static_size[1]} inputs only (static), '
                f'got {image.shape[2]}x{image.shape[3]}: resize the images or export a dynamic-size file')
        if self.input_shape[0] is not None and image.shape[0] != self.input_shape[0]:
            raise ValueError(f'{self.path} takes batches of {self.input_shape[0]} image(s), got {image.shape[0]}')
        if self.runtime == 'onnxruntime':
            outputs = self.session.run(None, {'image': image})
        else:
            result = self.compiled(image)
            outputs = [result[output] for output in self.compiled.outputs]
        return dict(zip(self.output_names, outputs))


def random_images(sizes: Sequence[Tuple[int, int]], batch: int = 2, seed: int = 0) -> List[torch.Tensor]:
    """One random normalised batch (B, 3, H, W) per size: what a file is checked on when no images are given."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, h, w, generator=generator) for h, w in sizes]


def _batches(images) -> List[torch.Tensor]:
    batches = [image if image.dim() == 4 else image[None] for image in images]
    if not batches:
        raise ValueError('no images to check the exported file on: give at least one image (or size)')
    return batches


def check_segmentor(wrapper: SegmentationExport, path: str, images: Sequence[torch.Tensor],
                    runtimes: Sequence[str] = RUNTIMES, rtol: float = RTOL, atol: float = ATOL,
                    min_agreement: float = 0.999) -> List[dict]:
    """Run the file at ``path`` in each runtime on each of ``images`` (normalised (B, 3, H, W) batches or (3, H, W)
    images) and compare with the framework's own prediction (``wrapper.reference``): the logits within ``atol +
    rtol * max |logits|`` (``outputs_match``) and the class maps equal on at least ``min_agreement`` of the pixels.
    Returns one row per runtime and batch; raises ExportCheckError naming the output, runtime and size that
    differ, and by how much."""
    batches = _batches(images)
    expected = [wrapper.reference(batch) for batch in batches]
    rows = []
    for runtime in runtimes:
        runner = ExportedModel(path, runtime)
        for batch, (logits, class_map) in zip(batches, expected):
            size = f'{batch.shape[2]}x{batch.shape[3]}'
            got = runner(batch)
            if got['logits'].shape != tuple(logits.shape) or got['class_map'].shape != tuple(class_map.shape):
                raise ExportCheckError(
                    f'{runtime} at {size}: logits {got["logits"].shape} and class_map {got["class_map"].shape}, '
                    f'the framework {tuple(logits.shape)} and {tuple(class_map.shape)}')
            diff, share = outputs_match([got['logits']], [logits], rtol=rtol, atol=atol)
            agreement = float((torch.from_numpy(got['class_map']) == class_map).double().mean())
            rows.append(dict(runtime=runtime, size=size, logits_diff=diff, logits_share=share, agreement=agreement))
            if share > 1:
                raise ExportCheckError(
                    f'logits differ in {runtime} at {size}: max |{runtime} - framework| = {diff:.3g}, {share:.3g} '
                    f'times the tolerance (atol {atol} + rtol {rtol} x {float(logits.abs().max()):.3g})')
            if agreement < min_agreement:
                raise ExportCheckError(
                    f'class_map differs in {runtime} at {size}: equal on {agreement:.4%} of the pixels, '
                    f'{min_agreement:.2%} needed')
    return rows


def load_mm_model(config: str, checkpoint: Optional[str] = None, scopes: Sequence[str] = ('mmseg',)):
    """(config, model in eval) for an mm ``config`` file whose default scope is one of ``scopes``, with
    ``checkpoint`` loaded: an mmengine checkpoint of that config, or the authors' released model (converted on the
    way). SyncBN layers become BatchNorm (the same computation in eval). FileNotFoundError, ValueError or
    CheckpointError saying what does not fit."""
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    if not os.path.isfile(config):
        raise FileNotFoundError(f'config {config} not found')
    cfg = Config.fromfile(config)
    scope = cfg.get('default_scope')
    if scope not in scopes:
        raise ValueError(f'{config}: an {scope} config (default_scope {scope!r}); this exports '
                         f'{" and ".join(scopes)} models')
    init_default_scope(scope)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    if checkpoint:
        load_mm_checkpoint(model, checkpoint, config)
    return cfg, model.eval()


def load_mm_checkpoint(model: nn.Module, checkpoint: str, config: str = 'the config') -> None:
    """Load ``checkpoint`` into ``model`` (built from ``config``) strictly; CheckpointError listing what is
    missing, extra or of another shape when the checkpoint was made for another model."""
    from mmengine.runner.checkpoint import CheckpointLoader
    from .checkpoint import CheckpointError, unwrap_state_dict
    if '://' not in checkpoint and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint} not found')
    state = unwrap_state_dict(CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu'), checkpoint)
    if any(k.endswith('attention_biases_seg') for k in state):  # the authors' release: convert on the way
        from .mm.released import convert_released_checkpoint
        state, _ = convert_released_checkpoint(state, model)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f'{k} {tuple(v.shape)} (model {tuple(own[k].shape)})' for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        found = [f'{len(found)} {what}, e.g. {", ".join(found[:3])}' for what, found in
                 (('missing', missing), ('unexpected', unexpected), ('of another shape', shapes)) if found]
        raise CheckpointError(f'{checkpoint} is not a checkpoint of {config}: tensors {"; ".join(found)}. Give '
                              'the config the checkpoint was trained with')
    model.load_state_dict(state, strict=True)


def preprocessing(cfg) -> dict:
    """What the exported file expects of its input, from an mm config's data_preprocessor: ``mean`` and ``std`` (per
    channel, 0-255 pixel values) and ``channels`` ('RGB' or 'BGR', the order of the three input channels)."""
    pre = cfg.model.get('data_preprocessor') or {}
    mean, std = pre.get('mean'), pre.get('std')
    return dict(mean=list(mean) if mean is not None else [0.0] * 3, std=list(std) if std is not None else [1.0] * 3,
                channels='RGB' if pre.get('bgr_to_rgb') else 'BGR')


def normalised_image(path: str, size: Tuple[int, int], mean, std, channels: str = 'RGB') -> torch.Tensor:
    """An image file as the exported file's input (1, 3, H, W): resized to ``size`` (H, W), ``channels`` order,
    (pixel - mean) / std."""
    from PIL import Image
    image = Image.open(path).convert('RGB').resize(size[::-1], Image.BILINEAR)
    x = np.asarray(image, np.float32)
    if channels == 'BGR':
        x = x[..., ::-1]
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))


# ---------------------------------------------------------------------------------------------------------------------
# Detectors: mmdet single-stage (RetinaNet) and two-stage (Mask R-CNN) models, one image per run.

DETECTION_OUTPUTS = ('boxes', 'scores', 'labels')


def _nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float,
         class_agnostic: bool = False) -> torch.Tensor:
    """Indices NMS keeps, highest score first (ONNX ``NonMaxSuppression``); within each group unless
    ``class_agnostic``, through the coordinate offset mmcv's ``batched_nms`` uses (each group's boxes moved beyond
    every other's)."""
    from torchvision.ops import nms
    if not class_agnostic:
        span = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max() + 1
        boxes = boxes + (groups.to(boxes) * span)[:, None]
    return nms(boxes, scores, iou)


def _top(scores: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest scores and their indices (all of them, sorted, when ``k`` <= 0 or more than there are)."""
    count = scores.shape[0] if k <= 0 else torch.sym_min(k, scores.shape[0])
    return scores.topk(count)


def _decode(coder, priors: torch.Tensor, deltas: torch.Tensor, max_shape) -> torch.Tensor:
    """``coder.decode``, for mmdet's delta coder through its eager path (``delta2bbox``): under an exporter its
    ``decode`` takes an ONNX branch that imports a module mmdet 3 no longer has."""
    if type(coder).__name__ == 'DeltaXYWHBBoxCoder':
        from mmdet.models.task_modules.coders.delta_xywh_bbox_coder import delta2bbox
        return delta2bbox(priors, deltas, coder.means, coder.stds, max_shape, clip_border=coder.clip_border,
                          add_ctr_clamp=coder.add_ctr_clamp, ctr_clamp=coder.ctr_clamp)
    return coder.decode(priors, deltas, max_shape=max_shape)


def _filtered(boxes: torch.Tensor, scores: torch.Tensor, min_size: float) -> torch.Tensor:
    """``scores`` with the boxes mmdet drops for ``min_bbox_size`` scored -1 (below every threshold)."""
    if min_size < 0:
        return scores
    valid = ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)
    return torch.where(valid, scores, -1.0)


class DetectionExport(nn.Module):
    """An mmdet detector as the exported graph computes it, one image per run: ``image`` (1, 3, H, W) ->
    ``boxes`` (N, 4) x1 y1 x2 y2 in input pixels, ``scores`` (N,), ``labels`` (N,) [, ``masks`` (N, H, W) bool].

    Single-stage anchor heads (RetinaNet) and two-stage detectors with an RPN and a standard RoI head (Faster /
    Mask R-CNN). The post-processing is mmdet's, with its box coders and test settings (``test_cfg``, overridden by
    ``score_thr``, ``iou_thr``, ``max_per_img``, ``nms_pre``), written without data-dependent branches: the
    per-level top-k, NMS as ONNX ``NonMaxSuppression`` (class-aware through mmcv's coordinate offset), RoI pooling
    as ``RoiAlign`` on every level with mmdet's level assignment selecting one, masks pasted at the input size by
    two interpolation matrices per box (what mmdet's ``grid_sample`` computes) and binarised at
    ``mask_thr_binary``."""

    def __init__(self, model: nn.Module, score_thr: Optional[float] = None, iou_thr: Optional[float] = None,
                 max_per_img: Optional[int] = None, nms_pre: Optional[int] = None):
        super().__init__()
        import copy
        if not type(model).__module__.startswith('mmdet.') or not hasattr(model, 'extract_feat'):
            raise TypeError(f'{type(model).__name__} ({type(model).__module__}): not an mmdet detector')
        self.model = model
        self.two_stage = getattr(model, 'with_rpn', False) and hasattr(model, 'roi_head')
        head = model.roi_head if self.two_stage else getattr(model, 'bbox_head', None)
        if head is None or (not self.two_stage and not hasattr(head, 'prior_generator')) or (
                self.two_stage and type(head).__name__ != 'StandardRoIHead'):
            raise TypeError(f'{type(model).__name__}: only anchor-based single-stage detectors (RetinaNet) and '
                            'two-stage detectors with a StandardRoIHead (Faster / Mask R-CNN) export')
        if not self.two_stage and (getattr(head.loss_cls, 'custom_cls_channels', False) or
                                   type(head).__name__ not in ('RetinaHead', 'AnchorHead', 'RetinaSepBNHead')):
            raise TypeError(f'{type(head).__name__}: of the single-stage heads only RetinaNet-style anchor heads '
                            'export (scores straight from the classification branch)')
        self.cfg = copy.deepcopy(head.test_cfg)
        for key, value in (('score_thr', score_thr), ('max_per_img', max_per_img), ('nms_pre', nms_pre)):
            if value is not None:
                if key == 'nms_pre' and self.two_stage:
                    raise ValueError('nms_pre: a two-stage detector takes it in its RPN settings, not here')
                self.cfg[key] = value
        if iou_thr is not None:
            self.cfg.nms.iou_threshold = iou_thr
        self.with_mask = self.two_stage and model.roi_head.with_mask

    @property
    def output_names(self) -> Tuple[str, ...]:
        return DETECTION_OUTPUTS + (('masks',) if self.with_mask else ())

    def settings(self) -> dict:
        """The test-time settings the graph applies."""
        keys = ('score_thr', 'max_per_img', 'mask_thr_binary') if self.two_stage else (
            'score_thr', 'max_per_img', 'nms_pre')
        return dict({k: self.cfg[k] for k in keys if k in self.cfg}, iou_thr=self.cfg.nms.iou_threshold)

    @staticmethod
    def _candidates(head, cls_scores, bbox_preds, image, nms_pre):
        """Per level, the ``nms_pre`` best (anchor, class) scores with their decoded boxes, labels and level."""
        priors = head.prior_generator.grid_priors([c.shape[-2:] for c in cls_scores], dtype=image.dtype,
                                                  device=image.device)
        boxes, scores, labels, levels = [], [], [], []
        for level, (cls, reg, anchors) in enumerate(zip(cls_scores, bbox_preds, priors)):
            cls = cls[0].permute(1, 2, 0).reshape(-1, head.cls_out_channels)
            reg = reg[0].permute(1, 2, 0).reshape(-1, head.bbox_coder.encode_size)
            prob = cls.sigmoid() if head.use_sigmoid_cls else cls.softmax(-1)[:, :-1]
            classes = prob.shape[1]
            top, index = _top(prob.reshape(-1), nms_pre)
            anchor = index // classes
            boxes.append(_decode(head.bbox_coder, anchors[anchor], reg[anchor], image.shape[2:]))
            scores.append(top)
            labels.append(index % classes)
            levels.append(torch.full_like(index, level))
        return torch.cat(boxes), torch.cat(scores), torch.cat(labels), torch.cat(levels)

    def _final(self, boxes, scores, labels):
        """mmdet's last step: NMS, the score threshold, the best ``max_per_img``. Candidates below the threshold
        come after every one above it in NMS's order and only suppress lower ones: dropping them after NMS keeps
        what dropping them first keeps, with no data-dependent size before NMS."""
        cfg = self.cfg
        keep = _nms(boxes, scores, labels, cfg.nms.iou_threshold, cfg.nms.get('class_agnostic', False))
        keep = keep[scores[keep] > cfg.get('score_thr', 0.0)][:cfg.max_per_img]
        return boxes[keep], scores[keep], labels[keep]

    def forward(self, image: torch.Tensor):
        model = self.model
        feats = model.extract_feat(image)
        if not self.two_stage:
            head = model.bbox_head
            boxes, scores, labels, _ = self._candidates(head, *head(feats), image, self.cfg.get('nms_pre', -1))
            return self._final(boxes, _filtered(boxes, scores, self.cfg.get('min_bbox_size', -1)), labels)
        # RPN: proposals per level, NMS within each level, the best max_per_img; when fewer are kept the rest are
        # padding (scored -1 below), so that the R-CNN's input has a size known before NMS
        rpn, rpn_cfg = model.rpn_head, model.test_cfg.rpn
        boxes, scores, _, levels = self._candidates(rpn, *rpn(feats), image, rpn_cfg.get('nms_pre', -1))
        scores = _filtered(boxes, scores, rpn_cfg.get('min_bbox_size', -1))
        keep = _nms(boxes, scores, levels, rpn_cfg.nms.iou_threshold)
        kept = torch.zeros_like(scores, dtype=torch.bool).index_fill(0, keep, True) & (scores >= 0)
        ranked, order = _top(torch.where(kept, scores, -1.0), rpn_cfg.max_per_img)
        proposals, real = boxes[order], ranked >= 0
        # R-CNN: mmdet's bbox head, its coder, multiclass NMS over every (proposal, class) pair
        roi_head = model.roi_head
        head = roi_head.bbox_head
        rois = torch.cat([proposals.new_zeros(proposals.shape[0], 1), proposals], 1)
        cls_score, bbox_pred = head(self._roi_features(roi_head.bbox_roi_extractor, feats, rois))
        prob = cls_score.softmax(-1)[:, :-1]
        classes = prob.shape[1]
        per_roi = 1 if head.reg_class_agnostic else classes
        decoded = _decode(head.bbox_coder, proposals.repeat_interleave(per_roi, 0),
                          bbox_pred.reshape(-1, head.bbox_coder.encode_size), image.shape[2:]).reshape(-1, per_roi, 4)
        decoded = decoded.expand(-1, classes, 4).reshape(-1, 4)
        prob = torch.where(real[:, None], prob, -1.0).reshape(-1)
        labels = torch.arange(classes, device=image.device).repeat(proposals.shape[0])
        boxes, scores, labels = self._final(decoded, prob, labels)
        if not self.with_mask:
            return boxes, scores, labels
        mask_head = roi_head.mask_head
        mask_rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], 1)
        mask_preds = mask_head(self._roi_features(roi_head.mask_roi_extractor, feats, mask_rois))
        if mask_head.class_agnostic:
            mask_preds = mask_preds[:, 0]
        else:
            mask_preds = mask_preds.gather(1, labels[:, None, None, None].expand(-1, 1, *mask_preds.shape[2:]))[:, 0]
        masks = _paste_masks(mask_preds.sigmoid(), boxes, image.shape[2], image.shape[3])
        return boxes, scores, labels, masks >= self.cfg.mask_thr_binary

    @staticmethod
    def _roi_features(extractor, feats, rois):
        """mmdet's ``SingleRoIExtractor`` with torchvision's ``roi_align`` (ONNX ``RoiAlign``): every RoI pooled on
        every level, the level mmdet assigns it kept (no data-dependent branch in the graph)."""
        from torchvision.ops import roi_align
        levels = extractor.map_roi_levels(rois, len(extractor.featmap_strides))
        out = 0
        for i, layer in enumerate(extractor.roi_layers):
            if type(layer).__name__ != 'RoIAlign' or getattr(layer, 'pool_mode', 'avg') != 'avg':
                raise TypeError(f'{type(layer).__name__}: only RoIAlign (average) RoI layers export')
            pooled = roi_align(feats[i], rois, layer.output_size, layer.spatial_scale, layer.sampling_ratio,
                               layer.aligned)
            out = out + torch.where((levels == i)[:, None, None, None], pooled, 0.0)
        return out

    @torch.no_grad()
    def reference(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        """mmdet's own ``predict`` for one image (1, 3, H, W) with the graph's settings: the outputs by name."""
        from mmdet.structures import DetDataSample
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f'a detector runs on one image (1, 3, H, W) at a time, got {tuple(image.shape)}')
        size = tuple(image.shape[2:])
        sample = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size,
                                             batch_input_shape=size, scale_factor=(1.0, 1.0)))
        head = self.model.roi_head if self.two_stage else self.model.bbox_head
        saved, head.test_cfg = head.test_cfg, self.cfg
        try:
            found = self.model.predict(image, [sample], rescale=True)[0].pred_instances
        finally:
            head.test_cfg = saved
        out = dict(boxes=found.bboxes, scores=found.scores, labels=found.labels)
        if self.with_mask:
            out['masks'] = found.masks
        return out


def _paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height, width) -> torch.Tensor:
    """mmdet's ``_do_paste_mask`` (``grid_sample``: bilinear, zero padding, align_corners=False; the pixels of the
    box and one more on each side, as on CPU) of (N, h, w) masks into their boxes in a height x width image, as two
    interpolation matrices per mask (bilinear sampling is separable): N x (H + W) x h memory rather than
    N x H x W x 2 sampling grids."""
    def weights(length, start, end, size):
        centres = torch.arange(length, device=boxes.device, dtype=boxes.dtype) + 0.5
        grid = (centres[None] - start[:, None]) / (end - start)[:, None] * 2 - 1
        grid = torch.where(torch.isinf(grid), 0.0, grid)  # mmdet's value for a zero-size box
        u = ((grid + 1) * size - 1) / 2
        sampled = (1 - (u[..., None] - torch.arange(size, device=boxes.device, dtype=boxes.dtype)).abs()).clamp(min=0)
        # mmdet on CPU pastes into the box's pixels and one more on each side only
        pixel = centres - 0.5
        inside = (pixel[None] >= start.floor()[:, None] - 1) & (pixel[None] < end.ceil()[:, None] + 1)
        return sampled * inside[..., None].to(sampled)
    rows = weights(height, boxes[:, 1], boxes[:, 3], masks.shape[1])  # (N, H, h)
    cols = weights(width, boxes[:, 0], boxes[:, 2], masks.shape[2])  # (N, W, w)
    return rows @ masks @ cols.transpose(1, 2)


def _export_one_image(wrapper: nn.Module, model: nn.Module, path: str, static_size: Optional[Tuple[int, int]],
                      opset: int) -> nn.Module:
    """Export a detector ``wrapper`` of ``model``: one image a run, H and W dynamic or ``static_size`` only."""
    size = _check_static_size(static_size, 1) if static_size else (256, 320)
    with exportable(model):
        _export(wrapper, path, torch.randn(1, 3, *size), _dims(static_size, 1, batch=False), wrapper.output_names,
                opset)
    return wrapper


def export_detector(model: nn.Module, path: str, static_size: Optional[Tuple[int, int]] = None, opset: int = 20,
                    score_thr: Optional[float] = None, iou_thr: Optional[float] = None,
                    max_per_img: Optional[int] = None, nms_pre: Optional[int] = None) -> DetectionExport:
    """Write an mmdet detector (``DetectionExport``: RetinaNet, Faster / Mask R-CNN, in eval) to ``path``: ``image``
    (1, 3, H, W), normalised as the model was trained, -> ``boxes`` (N, 4) in input pixels, ``scores`` (N,),
    ``labels`` (N,, int64) [, ``masks`` (N, H, W) bool], after the score threshold and NMS. One image per run; H
    and W dynamic, or ``static_size`` only. Returns the wrapper (``check_detector`` compares the file with its
    ``reference``, mmdet's predict)."""
    return _export_one_image(DetectionExport(model, score_thr, iou_thr, max_per_img, nms_pre).eval(), model, path,
                             static_size, opset)


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU; 0 where both boxes have no area (undefined)."""
    from torchvision.ops import box_iou
    return box_iou(a.double(), b.double()).nan_to_num(0.0)


def _mask_agreement(a: torch.Tensor, b: torch.Tensor) -> Tuple[float, float]:
    """(IoU, share of equal pixels) of two boolean masks; IoU 1 for two empty masks."""
    union = int((a | b).sum())
    return (int((a & b).sum()) / union if union else 1.0), float((a == b).double().mean())


def _match_detections(got: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor], settings: dict,
                      min_iou: float, box_atol: float, score_atol: float, min_mask_iou: float,
                      min_mask_agreement: float):
    """Match the file's detections to the framework's one to one: same label, box IoU >= ``min_iou`` (or corners
    within ``box_atol`` pixels: for boxes a fraction of a pixel thin, whose IoU a rounding error decides), score
    within ``score_atol``, highest framework score first. A detection of either side left unmatched is accepted only
    when its score is within ``score_atol`` of where the other side stops (the score threshold, or the last score
    kept when ``max_per_img`` detections are): it may fall on either side of that edge. Returns (matched pairs,
    worst box IoU, worst score difference, worst mask IoU) or a message saying what differed."""
    ious = _box_iou(expected['boxes'], got['boxes'])
    corners = (expected['boxes'][:, None].double() - got['boxes'][None].double()).abs().amax(-1)
    same = expected['labels'][:, None] == got['labels'][None]
    close = (expected['scores'][:, None].double() - got['scores'][None].double()).abs()
    taken = torch.zeros(len(got['scores']), dtype=torch.bool)
    pairs = []
    for i in expected['scores'].argsort(descending=True).tolist():
        fits = same[i] & ((ious[i] >= min_iou) | (corners[i] <= box_atol)) & (close[i] <= score_atol) & ~taken
        if fits.any():
            j = int(torch.where(fits, ious[i], -1.0).argmax())
            taken[j] = True
            pairs.append((i, j))
    matched = torch.zeros(len(expected['scores']), dtype=torch.bool)
    matched[[i for i, _ in pairs]] = True

    def edge(scores):
        full = len(scores) >= settings['max_per_img']
        return max(settings.get('score_thr', 0.0), float(scores.min()) if full and len(scores) else 0.0)

    for side, scores, used, other_edge, name in (('the framework', expected['scores'], matched, edge(got['scores']),
                                                  'in the file'),
                                                 ('the file', got['scores'], taken, edge(expected['scores']),
                                                  "in the framework's prediction")):
        for k in torch.where(~used)[0].tolist():
            if float(scores[k]) > other_edge + score_atol:
                owner = expected if side == 'the framework' else got
                other = got if side == 'the framework' else expected
                row = ious[k] if side == 'the framework' else ious[:, k]
                row = torch.where((other['labels'] == owner['labels'][k]), row, -1.0)
                best = int(row.argmax()) if len(row) else -1
                near = (f'the nearest of label {int(owner["labels"][k])} there has box IoU {float(row[best]):.4f} and '
                        f'score {float(other["scores"][best]):.4f}') if best >= 0 and row[best] >= 0 else \
                    f'none of label {int(owner["labels"][k])} there'
                return (f'a detection of {side} (label {int(owner["labels"][k])}, score {float(scores[k]):.4f}, box '
                        f'{[round(v, 1) for v in owner["boxes"][k].tolist()]}) has no match {name} (same label, box '
                        f'IoU >= {min_iou} or corners within {box_atol} px, score within {score_atol}): {near}')
    worst_iou = min([float(ious[i, j]) for i, j in pairs if corners[i, j] > box_atol], default=1.0)
    worst_score = max([float(close[i, j]) for i, j in pairs], default=0.0)
    worst_mask = (1.0, 1.0)
    if 'masks' in expected:
        for i, j in pairs:
            iou, agreement = _mask_agreement(expected['masks'][i], got['masks'][j])
            if iou < min_mask_iou and agreement < min_mask_agreement:
                return (f'masks differ: the framework\'s detection of label {int(expected["labels"][i])}, score '
                        f'{float(expected["scores"][i]):.4f}, and the file\'s have mask IoU {iou:.4f} '
                        f'({agreement:.4%} of the pixels equal; IoU >= {min_mask_iou} or {min_mask_agreement:.2%} '
                        'needed)')
            worst_mask = (min(worst_mask[0], iou), min(worst_mask[1], agreement))
    return pairs, worst_iou, worst_score, worst_mask


def check_detector(wrapper: DetectionExport, path: str, images: Sequence[torch.Tensor],
                   runtimes: Sequence[str] = RUNTIMES, min_iou: float = 0.99, box_atol: float = 0.05,
                   score_atol: float = 1e-3, min_mask_iou: float = 0.99,
                   min_mask_agreement: float = 0.999) -> List[dict]:
    """Run the file at ``path`` in each runtime on each image of ``images`` (normalised (B, 3, H, W) batches, run
    one image at a time, or (3, H, W) images) and match its detections one to one with mmdet's own ``predict``
    (``wrapper.reference``): same label, box IoU >= ``min_iou`` (or corners within ``box_atol`` pixels, for
    boxes too thin for an IoU to mean anything), score within ``score_atol``, and for masks IoU
    >= ``min_mask_iou`` or pixels equal on ``min_mask_agreement`` of the image (a pixel or two decide a small
    mask's IoU). Returns one row per runtime and image (the worst matched box IoU, score difference, mask IoU and
    pixel agreement); raises ExportCheckError naming the runtime, size and detection that differ, and by how much."""
    singles = [image[None] for batch in _batches(images) for image in batch]
    expected = [wrapper.reference(image) for image in singles]
    settings = wrapper.settings()
    rows = []
    for runtime in runtimes:
        runner = ExportedModel(path, runtime)
        for index, (image, reference) in enumerate(zip(singles, expected)):
            size = f'{image.shape[2]}x{image.shape[3]}'
            got = {k: torch.from_numpy(np.asarray(v)) for k, v in runner(image).items()}
            if set(got) != set(reference):
                raise ExportCheckError(f'{runtime}: the file returns {sorted(got)}, the framework {sorted(reference)}')
            if 'masks' in got and tuple(got['masks'].shape[1:]) != tuple(image.shape[2:]):
                raise ExportCheckError(f'masks in {runtime} at {size}: shape {tuple(got["masks"].shape)}, '
                                       f'(N, {image.shape[2]}, {image.shape[3]}) expected')
            result = _match_detections(got, reference, settings, min_iou, box_atol, score_atol, min_mask_iou,
                                       min_mask_agreement)
            if isinstance(result, str):
                raise ExportCheckError(f'detections differ in {runtime} at {size} (image {index}): {result}')
            pairs, worst_iou, worst_score, worst_mask = result
            row = dict(runtime=runtime, size=size, detections=len(reference['scores']), file=len(got['scores']),
                       matched=len(pairs), box_iou=worst_iou, score_diff=worst_score)
            if 'masks' in got:
                row['mask_iou'], row['mask_agreement'] = worst_mask
            rows.append(row)
    return rows


class TorchvisionDetectionExport(nn.Module):
    """torchvision's ``RetinaNet`` (on any backbone, e.g. ``efficientformer_fpn_backbone``) as the exported graph
    computes it, one image per run: ``image`` (1, 3, H, W) as the model's transform hands it on (resized to the
    model's ``min_size`` / ``max_size`` and normalised with its ``image_mean`` / ``image_std``, 0-1 pixel values) ->
    ``boxes`` (N, 4) in input pixels, ``scores`` (N,), ``labels`` (N,). The padding to ``size_divisible`` is part of
    the graph; the post-processing is torchvision's (per-level top-k of the scores, its box coder, class-aware NMS,
    the score threshold, ``detections_per_img``), with the threshold applied after NMS like ``DetectionExport``.
    """

    def __init__(self, model: nn.Module, score_thr: Optional[float] = None, iou_thr: Optional[float] = None,
                 max_per_img: Optional[int] = None, nms_pre: Optional[int] = None):
        super().__init__()
        if type(model).__name__ != 'RetinaNet' or not type(model).__module__.startswith('torchvision.'):
            raise TypeError(f'{type(model).__name__} ({type(model).__module__}): of torchvision\'s detectors only '
                            'RetinaNet exports')
        self.model = model
        self.score_thr = model.score_thresh if score_thr is None else score_thr
        self.iou_thr = model.nms_thresh if iou_thr is None else iou_thr
        self.max_per_img = model.detections_per_img if max_per_img is None else max_per_img
        self.nms_pre = model.topk_candidates if nms_pre is None else nms_pre
        self.output_names = DETECTION_OUTPUTS

    def settings(self) -> dict:
        return dict(score_thr=self.score_thr, max_per_img=self.max_per_img, nms_pre=self.nms_pre,
                    iou_thr=self.iou_thr)

    def forward(self, image: torch.Tensor):
        from torchvision.models.detection.image_list import ImageList
        from torchvision.ops.boxes import clip_boxes_to_image
        model = self.model
        height, width = image.shape[2:]
        divisor = model.transform.size_divisible
        padded = F.pad(image, (0, (-width) % divisor, 0, (-height) % divisor))
        features = model.backbone(padded)
        features = list(features.values()) if isinstance(features, dict) else [features]
        outputs = model.head(features)
        anchors = model.anchor_generator(ImageList(padded, [(height, width)]), features)[0]
        per_level = [f.shape[2] * f.shape[3] * (outputs['cls_logits'].shape[1] //
                                                 sum(g.shape[2] * g.shape[3] for g in features)) for f in features]
        boxes, scores, labels = [], [], []
        for logits, deltas, level_anchors in zip(outputs['cls_logits'][0].split(per_level),
                                                 outputs['bbox_regression'][0].split(per_level),
                                                 anchors.split(per_level)):
            classes = logits.shape[-1]
            top, index = _top(logits.sigmoid().flatten(), self.nms_pre)
            anchor = index // classes
            decoded = model.box_coder.decode_single(deltas[anchor], level_anchors[anchor])
            boxes.append(clip_boxes_to_image(decoded, (height, width)))
            scores.append(top)
            labels.append(index % classes)
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = _nms(boxes, scores, labels, self.iou_thr)
        keep = keep[scores[keep] > self.score_thr][:self.max_per_img]
        return boxes[keep], scores[keep], labels[keep]

    @torch.no_grad()
    def reference(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        """torchvision's own forward on ``image`` (1, 3, H, W), its transform set to change nothing (no
        normalisation, ``min_size`` / ``max_size`` the image's), with the graph's settings."""
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f'a detector runs on one image (1, 3, H, W) at a time, got {tuple(image.shape)}')
        model, transform = self.model, self.model.transform
        names = ('image_mean', 'image_std', 'min_size', 'max_size')
        saved = [getattr(transform, n) for n in names] + [model.score_thresh, model.nms_thresh,
                                                           model.detections_per_img, model.topk_candidates]
        height, width = image.shape[2:]
        transform.image_mean, transform.image_std = [0.0] * 3, [1.0] * 3
        transform.min_size, transform.max_size = (min(height, width),), max(height, width)
        model.score_thresh, model.nms_thresh = self.score_thr, self.iou_thr
        model.detections_per_img, model.topk_candidates = self.max_per_img, self.nms_pre
        try:
            found = model([image[0]])[0]
        finally:
            for name, value in zip(names + ('score_thresh', 'nms_thresh', 'detections_per_img', 'topk_candidates'),
                                   saved):
                setattr(transform if name in names else model, name, value)
        return dict(boxes=found['boxes'], scores=found['scores'], labels=found['labels'])


def export_torchvision_detector(model: nn.Module, path: str, static_size: Optional[Tuple[int, int]] = None,
                                opset: int = 20, score_thr: Optional[float] = None, iou_thr: Optional[float] = None,
                                max_per_img: Optional[int] = None,
                                nms_pre: Optional[int] = None) -> TorchvisionDetectionExport:
    """Write torchvision's ``RetinaNet`` (in eval) to ``path`` (``TorchvisionDetectionExport``: the image as the
    model's transform hands it on, one per run -> boxes, scores, labels); check it with ``check_detector``."""
    return _export_one_image(TorchvisionDetectionExport(model, score_thr, iou_thr, max_per_img, nms_pre).eval(),
                             model, path, static_size, opset)
