"""EfficientFormer backbones for torchvision's detection models (``FasterRCNN``, ``MaskRCNN``, ``RetinaNet``, ...).

``efficientformer_fpn_backbone`` is the counterpart of torchvision's ``resnet_fpn_backbone``: this package's
``features_only`` network with torchvision's ``FeaturePyramidNetwork`` on top, returning an ``OrderedDict`` of
maps and carrying the ``out_channels`` the detection heads read. Any input size runs (torchvision's transform
resizes each batch to its own size).
"""
from collections import OrderedDict
from typing import Dict, List, Optional

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool

__all__ = ['EfficientFormerFPN', 'efficientformer_fpn_backbone']

_LAYERS = ('stem', 'stages.0', 'stages.1', 'stages.2', 'stages.3')


class EfficientFormerFPN(nn.Module):
    """A ``features_only`` EfficientFormer (``body``) and an FPN (``fpn``) with ``out_channels`` channels."""

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_blocks: Optional[ExtraFPNBlock] = None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            body.feature_info.channels(), out_channels,
            extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), feature) for i, feature in enumerate(features)))


def _layer_of(param_name: str) -> str:
    """'stem' or 'stages.i' for a parameter of either features_only wrapper (V2's flattened ``stem_conv1``,
    ``stages_i``; V1's ``model.stem``, ``model.stages.i``)."""
    name = param_name.removeprefix('model.').replace('stages_', 'stages.')
    if name.startswith('stem'):
        return 'stem'
    return '.'.join(name.split('.')[:2])


def efficientformer_fpn_backbone(
        model_name: str,
        pretrained: bool = False,
        trainable_layers: int = 3,
        returned_layers: Optional[List[int]] = None,
        extra_blocks: Optional[ExtraFPNBlock] = None,
        out_channels: int = 256,
        freeze_batch_norm: bool = True,
        **kwargs,
) -> EfficientFormerFPN:
    """torchvision's ``resnet_fpn_backbone`` for EfficientFormer.

    Args:
        model_name: one of the seven registered names (``'efficientformer_l1'``, ``'efficientformerv2_s0'``, ...).
        pretrained: load timm's ImageNet weights (``timm.create_model(pretrained=True)``; pass
            ``pretrained_cfg_overlay=dict(file=...)`` for a local checkpoint in any format the package reads).
        trainable_layers: how many of the last layers (stages 3, 2, 1, 0, then the stem) train; 0 to 5, as for
            torchvision's ResNets (default 3).
        returned_layers: the stages (1 to 4, as torchvision numbers ResNet layers) fed to the FPN; default all four.
        extra_blocks: an extra FPN block (default ``LastLevelMaxPool``: five maps, what torchvision's default
            anchor generators expect).
        freeze_batch_norm: BatchNorm statistics and affine frozen, as torchvision's ``FrozenBatchNorm2d`` does for
            detection's small batches.
        **kwargs: passed to ``timm.create_model`` (``output_stride``, ``drop_path_rate``, ...).
    """
    if not 0 <= trainable_layers <= len(_LAYERS):
        raise ValueError(f'trainable_layers must be between 0 and {len(_LAYERS)}, got {trainable_layers}')
    returned_layers = [1, 2, 3, 4] if returned_layers is None else list(returned_layers)
    if not returned_layers or not all(1 <= layer <= 4 for layer in returned_layers):
        raise ValueError(f'returned_layers must be stages 1 to 4, got {returned_layers}')
    body = timm.create_model(model_name, pretrained=pretrained, features_only=True,
                             out_indices=tuple(layer - 1 for layer in returned_layers), **kwargs)
    if freeze_batch_norm:
        body = freeze_batch_norm_2d(body)
    trainable = _LAYERS[::-1][:trainable_layers]
    for name, param in body.named_parameters():
        if _layer_of(name) not in trainable:
            param.requires_grad_(False)
    return EfficientFormerFPN(body, out_channels, extra_blocks)
