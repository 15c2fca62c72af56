"""EfficientFormer V1 / V2 as an OpenMMLab backbone: a thin wrapper over the timm ``features_only`` model."""
import copy
import itertools
import os
import re
import socket
from typing import Optional, Sequence, Tuple
from urllib.parse import urlparse

import timm
import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from mmengine.runner.checkpoint import CheckpointLoader
from torch.nn.modules.batchnorm import _BatchNorm

from ..checkpoint import CheckpointError, LoadReport, convert_with_report, unwrap_state_dict
from ..fuse import fuse_batchnorm
from ..variants import MODEL_NAMES, V1_MODEL_NAMES


_HUB_ID = re.compile(r'(hf-hub:)?([\w.-]+/[\w.-]+)')
_CHECKPOINT_SUFFIXES = ('.pth', '.pt', '.bin', '.safetensors', '.ckpt')
_HUB_FILES = ('model.safetensors', 'pytorch_model.bin')  # timm's hub repositories, in timm's order


def hub_repo_id(checkpoint: str) -> Optional[str]:
    """The Hugging Face hub repository a checkpoint names (``timm/efficientformer_l1.snap_dist_in1k``, with or
    without ``hf-hub:``), or None for local paths and URLs."""
    m = _HUB_ID.fullmatch(str(checkpoint))
    if not m or os.path.exists(checkpoint) or (not m.group(1) and str(checkpoint).endswith(_CHECKPOINT_SUFFIXES)):
        return None
    return m.group(2)


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == 'https' else 80)), timeout).close()
        return True
    except OSError:
        return False


def fetch_hub_checkpoint(repo_id: str, option: str = 'model.backbone.init_cfg.checkpoint') -> str:
    """Local path of a hub repository's weights, from the Hugging Face cache or downloaded into it. Offline with no
    cached copy it fails at once (no retries) naming the repository and how to provide it."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    for filename in _HUB_FILES:
        try:
            return hf_hub_download(repo_id, filename, local_files_only=True)
        except EntryNotFoundError:
            pass
    if constants.HF_HUB_OFFLINE or not _hub_reachable():
        raise FileNotFoundError(
            f'{option}={repo_id!r}: the weights are not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and '
            f'the hub ({constants.ENDPOINT}) cannot be reached. Download them where there is network '
            f'(`hf download {repo_id}`, then copy the cache or set HF_HUB_CACHE), or point {option} at a local '
            'checkpoint file (timm, original release or transformers format).')
    for filename in _HUB_FILES:
        try:
            return hf_hub_download(repo_id, filename)
        except EntryNotFoundError:
            continue
    raise FileNotFoundError(f'{option}={repo_id!r}: the repository has none of {_HUB_FILES}')


class _ContiguousWithChannelsLastGrad(torch.autograd.Function):
    """``x.contiguous()`` whose backward hands the gradient back in channels_last, the layout of the network: a
    contiguous gradient would make every backward kernel along the residual stream (BatchNorm, GELU, additions)
    mix two layouts, which takes their slow strided loops."""

    @staticmethod
    def forward(ctx, x):
        return x.contiguous()

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=torch.channels_last)


@MODELS.register_module()
class EfficientFormerBackbone(BaseModule):
    """Multi-scale EfficientFormer features (strides 4 / 8 / 16 / 32) at any input size.

    Args:
        model_name: one of ``MODEL_NAMES``.
        out_indices: stages to output, from 0..3.
        feature_norm: a norm on each output. ``None`` (default): as the authors' dense-prediction backbones, a
            GroupNorm(1, C) for V1 and none for V2; ``True`` / ``False`` force it (V2's is a BatchNorm2d).
        drop_path_rate: stochastic depth rate.
        frozen_stages: -1 trains everything; k >= 0 freezes the stem, the first k stages and their output norms
            (no gradients, norms in eval).
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) while training.
        fixed_grid_bias_resolution: ``None`` (default) resizes each attention's ImageNet bias table to the real
            token grid (any input size). An input size in pixels (800 for the authors' COCO models, 512 for
            ADE20K) uses the authors' dense-prediction scheme instead: one bias table for the token grid of that
            input, the whole bias matrix resized bicubically to the real grid at every forward. Their trained
            detectors and segmenters need it (``mm_configs/released``); ImageNet tables are resized to that grid.
        channels_last: run the network in channels_last memory format (weights and input): on CPU the convolution
            kernels' native layout, for training and inference.
            The outputs are returned in the standard contiguous layout, which necks and heads with compiled ops
            (mmcv's RoIAlign reads raw NCHW memory) expect; their gradients go back into the network in
            channels_last.
        fold_bn_in_eval: in eval mode without gradients (validation, ``mim test``, inference) run a copy of the
            network fused as ``fuse_batchnorm`` does (BatchNorm and the MLP layer scales folded into the
            convolutions, oneDNN's fused MLP kernels on CPU). The copy is made again whenever a weight
            or statistic changes, and is not part of the state dict; training and any forward with gradients
            use the network itself.
        init_cfg: ``dict(type='Pretrained', checkpoint=..., prefix=None)``; the checkpoint is a timm hub id
            (``timm/efficientformer_l1.snap_dist_in1k``, downloaded into and then read from the Hugging Face
            cache), a URL or a local file in timm, the authors' release or transformers format, or an mmdet /
            mmseg training checkpoint (``prefix='backbone.'``, detected when not given).
    """

    def __init__(
            self,
            model_name: str = 'efficientformer_l1',
            out_indices: Sequence[int] = (0, 1, 2, 3),
            feature_norm: Optional[bool] = None,
            drop_path_rate: float = 0.,
            frozen_stages: int = -1,
            norm_eval: bool = False,
            fixed_grid_bias_resolution: Optional[int] = None,
            channels_last: bool = True,
            fold_bn_in_eval: bool = True,
            init_cfg: Optional[dict] = None,
    ):
        if model_name not in MODEL_NAMES:
            raise ValueError(f'EfficientFormerBackbone: unknown model_name {model_name!r}; valid: {MODEL_NAMES}')
        out_indices = tuple(out_indices)
        if not out_indices or any(not isinstance(i, int) or not 0 <= i <= 3 for i in out_indices):
            raise ValueError(f'EfficientFormerBackbone: out_indices {out_indices} must be stage indices in 0..3')
        if fixed_grid_bias_resolution is not None and (
                not isinstance(fixed_grid_bias_resolution, int) or fixed_grid_bias_resolution < 32):
            raise ValueError(f'EfficientFormerBackbone: fixed_grid_bias_resolution={fixed_grid_bias_resolution!r} '
                             'must be None or an input size in pixels (>= 32), e.g. 800 or 512')
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f'EfficientFormerBackbone: frozen_stages={frozen_stages} must be in -1..4')
        super().__init__(init_cfg)
        self.model_name = model_name
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        if feature_norm is None:
            feature_norm = model_name in V1_MODEL_NAMES
        features = timm.create_model(
            model_name, features_only=True, feature_cls='getter', out_indices=out_indices, feature_norm=feature_norm,
            drop_path_rate=drop_path_rate)
        # keep the network itself so parameters are named backbone.model.<timm key>
        self.model = features.model
        if fixed_grid_bias_resolution is not None:
            self.model.use_fixed_grid_attention_bias(fixed_grid_bias_resolution)
        self.feature_info = features.feature_info
        self.out_channels = self.feature_info.channels()
        self.channels_last = channels_last
        self.fold_bn_in_eval = fold_bn_in_eval
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._folded = None  # (weights' identity, folded copy): a plain tuple, so neither a submodule nor saved
        self._freeze_stages()

    def init_weights(self):
        if self.init_cfg is None or self.init_cfg.get('type') != 'Pretrained':
            super().init_weights()
            return
        # mmengine's PretrainedInit loads non-strictly and only unwraps 'state_dict': load ourselves instead
        logger = MMLogger.get_current_instance()
        checkpoint = self.init_cfg['checkpoint']
        report = self.load_pretrained(self.check_init_checkpoint(), prefix=self.init_cfg.get('prefix'))
        logger.info(
            f'EfficientFormerBackbone: loaded {len(report.loaded)} tensors ({report.source_format} format) from '
            f'{checkpoint}; dropped on purpose (classifier head / parts not built for out_indices): '
            f'{report.dropped or "none"}; initialised here: {report.initialised or "none"}')
        self._is_init = True

    def check_init_checkpoint(self) -> Optional[str]:
        """The checkpoint ``init_cfg`` names, as a local path (hub weights fetched) or URL; FileNotFoundError if
        it is a local file that does not exist, or hub weights that are neither cached nor reachable. Called by
        ``init_weights`` and, for runs that start from it, by ``EfficientFormerRunner`` when it builds the model
        (not here in ``__init__``: ``mim test`` builds the model and loads its own checkpoint instead)."""
        if self.init_cfg is None or self.init_cfg.get('type') != 'Pretrained':
            return None
        checkpoint = self.init_cfg.get('checkpoint')
        repo_id = hub_repo_id(checkpoint) if checkpoint else None
        if repo_id:
            return fetch_hub_checkpoint(repo_id)
        if not checkpoint or ('://' not in str(checkpoint) and not os.path.isfile(checkpoint)):
            raise FileNotFoundError(
                f'model.backbone.init_cfg.checkpoint={checkpoint!r} does not exist. Name timm\'s weights by hub id '
                "(e.g. 'timm/efficientformer_l1.snap_dist_in1k'), or convert a checkpoint with "
                'tools/convert_checkpoint.py and point the config (or its environment variable, e.g. '
                'EFFICIENTFORMER_L1_CKPT) at it, or set model.backbone.init_cfg=None to train from scratch.')
        return checkpoint

    def load_pretrained(self, checkpoint: str, prefix: Optional[str] = None) -> LoadReport:
        repo_id = hub_repo_id(checkpoint)
        if repo_id:
            checkpoint = fetch_hub_checkpoint(repo_id)
        state_dict = unwrap_state_dict(CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu'), checkpoint)
        if prefix is None and any(k.startswith('backbone.') for k in state_dict):
            prefix = 'backbone.'
        if prefix:
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            if not state_dict:
                raise CheckpointError(f'{checkpoint}: no key starts with prefix {prefix!r}')
            if all(k.startswith('model.') for k in state_dict):  # saved from this backbone
                state_dict = {k[len('model.'):]: v for k, v in state_dict.items()}
        try:
            converted, report = convert_with_report(state_dict, self.model)
        except CheckpointError as e:
            raise CheckpointError(f'{checkpoint} (for {self.model_name}): {e}') from e
        self.model.load_state_dict(converted, strict=True)
        return report

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        frozen = [self.model.stem] + list(self.model.stages[:self.frozen_stages])
        if self.model.feature_norms is not None:
            frozen += list(self.model.feature_norms[:self.frozen_stages])
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def folded_model(self) -> torch.nn.Module:
        """The network fused (``fuse_batchnorm``), remade when any parameter or buffer was replaced or changed in place
        (optimizer steps, checkpoint loading, EMA swaps change a tensor's storage or version counter)."""
        tensors = itertools.chain(self.model.parameters(), self.model.buffers())
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        if self._folded is None or self._folded[0] != key:
            self._folded = (key, fuse_batchnorm(copy.deepcopy(self.model)))
        return self._folded[1]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        model = self.model
        if self.fold_bn_in_eval and not self.training and not torch.is_grad_enabled():
            model = self.folded_model()
        # anything but a 4-D tensor goes straight to the model, whose input check says what is wrong
        if not (self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4):
            return tuple(model.forward_intermediates(x, indices=self.out_indices, intermediates_only=True))
        x = x.contiguous(memory_format=torch.channels_last)
        outputs = model.forward_intermediates(x, indices=self.out_indices, intermediates_only=True)
        return tuple(_ContiguousWithChannelsLastGrad.apply(o) for o in outputs)
