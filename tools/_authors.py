"""The authors' dense (detection / segmentation) backbone, reproduced on this package's modules: the reference a
speed comparison needs, with the same weights and the same outputs as the model.

The authors' mmdet / mmseg code makes the attention bias for the fixed grid of one input size (800 px for
detection, 512 for segmentation) and resizes the whole (N0, N0) bias matrix bicubically to the real (N, N) at
every forward; its attention is an explicit softmax with the scale and the bias as separate passes over the
maps, V2's talking heads run as 1x1 convolution modules, and V1's pooling mixer is PyTorch's average pooling.
``authors_backbone`` is a features_only model of this package with exactly that arithmetic.
"""
import types

import timm
import torch

from efficientformer_timm._bias import GridAttentionBias
from efficientformer_timm.efficientformer import Attention, WindowAveragePooling
from efficientformer_timm.efficientformer_v2 import Attention2d, Attention2dDownsample

__all__ = ['authors_dense_resolution', 'authors_dense_bias', 'authors_backbone', 'average_pooling_mixer',
           'bias_every_forward', 'replace_forwards']


def authors_dense_resolution(size) -> int:
    """The input size the authors' dense configs made their bias grid for: 800 (detection), 512 (segmentation)."""
    return 800 if max(size) >= 800 else 512 if max(size) >= 512 else 224


def _attention(self, x, grid):
    """V1 attention: explicit softmax attention at every grid size."""
    B, N, _ = x.shape
    q, k, v = self._qkv(x)
    attn = ((q @ k.transpose(-2, -1)) * self.scale + self.attention_bias(grid, q.dtype)).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(B, N, self.val_attn_dim))


def _attention2d(self, x):
    """V2 attention as their backbonev2.py computes it: talking heads as 1x1 convolutions, the scale and the bias
    as separate passes over the (B, heads, N, N) maps, a contiguous output."""
    B, _, H, W = x.shape
    q, k, v, v_local = self._qkv(x)
    h, w = v_local.shape[-2:]
    attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_bias((h, w), q.dtype)
    attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
    x = (attn @ v).transpose(2, 3).reshape(B, self.dh, h, w) + v_local
    if self.stride_conv is not None:
        x = torch.nn.functional.interpolate(x, size=(H, W), mode='bilinear', align_corners=False)
    return self.proj(self.act(x))


def _attention2d_downsample(self, x):
    """V2's downsample attention as their backbonev2.py computes it."""
    B, _, H, W = x.shape
    q, k, v, v_local = self._qkv(x)
    h, w = v_local.shape[-2:]
    attn = ((q @ k.transpose(-2, -1)) * self.scale + self.attention_bias((H, W), q.dtype)).softmax(dim=-1)
    x = (attn @ v).transpose(2, 3).reshape(B, self.dh, h, w) + v_local
    return self.proj(self.act(x))


def _average_pooling_mixer(self, x):
    """V1's pooling mixer as timm and the authors compute it: PyTorch's average pooling."""
    return self.pool(x) - x


def _bias_every_forward(self, grid, dtype):
    return self._compute_attention_bias(grid).to(dtype)


AUTHORS_FORWARD = {Attention: _attention, Attention2d: _attention2d, Attention2dDownsample: _attention2d_downsample,
                   WindowAveragePooling: _average_pooling_mixer}


def replace_forwards(model: torch.nn.Module, forwards: dict) -> torch.nn.Module:
    """Give every module whose type is a key of ``forwards`` that function as its forward."""
    for module in model.modules():
        if type(module) in forwards:
            module.forward = types.MethodType(forwards[type(module)], module)
    return model


def average_pooling_mixer(model: torch.nn.Module) -> torch.nn.Module:
    """V1's pooling mixers computed with PyTorch's average pooling instead of the depthwise convolution."""
    return replace_forwards(model, {WindowAveragePooling: _average_pooling_mixer})


def bias_every_forward(model: torch.nn.Module) -> torch.nn.Module:
    """Every attention computes its bias again at every forward, as the authors' code does (no eval cache)."""
    for module in model.modules():
        if isinstance(module, GridAttentionBias):
            module.attention_bias = types.MethodType(_bias_every_forward, module)
    return model


def authors_dense_bias(name: str, size, **kwargs) -> torch.nn.Module:
    """A features_only model (``kwargs`` go to ``timm.create_model``, e.g. ``feature_norm=True`` for their output
    norms) with the authors' bias scheme for inputs of ``size`` (H, W): the fixed bias grid of their configs,
    resized at every forward. The arithmetic is this package's."""
    features = timm.create_model(name, features_only=True, feature_cls='getter', **kwargs)
    features.model.use_fixed_grid_attention_bias(authors_dense_resolution(size))
    return bias_every_forward(features)


def authors_backbone(name: str, size, **kwargs) -> torch.nn.Module:
    """The authors' dense backbone for inputs of ``size`` (H, W): ``authors_dense_bias`` with their attention and
    pooling arithmetic."""
    return replace_forwards(authors_dense_bias(name, size, **kwargs), AUTHORS_FORWARD)
