"""EfficientFormer-V2 for any input size.

State-dict compatible with ``timm.models.efficientformer_v2`` (timm 1.0.31). Attention (including the
stride-2 attention of stage 3 and the attention downsample into stage 4) works on the real feature size:
biases follow the token grid (see ``_bias.py``) and the stride-2 attention upsamples back to its exact
input size, so odd sizes work. ``feature_norm=True`` adds a BatchNorm2d per feature output (an option:
the authors' V2 dense-prediction backbones have no output norms).

Paper: `Rethinking Vision Transformers for MobileNet Size and Speed` - https://arxiv.org/abs/2212.08059
Based on timm's implementation (Ross Wightman) of the Apache 2.0 code of snap-research/EfficientFormer.
"""
from functools import partial
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import (
    DropPath, LayerScale2d, calculate_drop_path_rates, get_act_layer, get_norm_layer, to_ntuple)
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models.efficientformer_v2 import ConvMlpWithNorm, ConvNorm, LocalGlobalQuery, Stem4

from ._bias import GridAttentionBias, explicit_attention
from ._common import EfficientFormerBase, build_efficientformer, ceil_div, checkpoint_filter_fn, pretrained_cfg
from .variants import EFFICIENTFORMERV2_ARCHS

__all__ = ['EfficientFormerV2', 'EFFICIENTFORMERV2_ARCHS']


def is_channels_last(x: torch.Tensor) -> bool:
    """Strictly channels_last (a map with 1 x 1 pixels or one channel is both layouts: treated as contiguous)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def heads_to_map(x: torch.Tensor, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(B, heads, h * w, d) attention output as a (B, heads * d, h, w) map in the memory format of ``like``: a
    channels_last network stays channels_last after attention (a contiguous map here would send the following
    convolutions to PyTorch's slower NCHW path)."""
    B, heads, _, d = x.shape
    if is_channels_last(like):
        return x.permute(0, 2, 1, 3).reshape(B, h, w, heads * d).permute(0, 3, 1, 2)
    return x.transpose(2, 3).reshape(B, heads * d, h, w)


def map_to_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, heads * d, h, w) map as a (B, heads, h * w, d) view. A channels_last map is viewed by way of
    (B, h, w, C), so that the gradient autograd copies back into map shape is channels_last as well: the NCHW
    route hands the channels_last q / v BatchNorms a contiguous gradient, a mixed-layout backward several times
    slower. (The keys' gradient stays contiguous either way: the batched matrix product returns it so.)"""
    B, C, h, w = x.shape
    if is_channels_last(x):
        return x.permute(0, 2, 3, 1).reshape(B, h * w, heads, C // heads).transpose(1, 2)
    return x.reshape(B, heads, C // heads, h * w).transpose(-2, -1)


torch.fx.wrap('heads_to_map')  # leaf calls in FX graphs: they branch on the memory format
torch.fx.wrap('map_to_heads')


class MapAttention(GridAttentionBias):
    """Base of V2's attentions: queries, keys and values are projections (``q``, ``k``, ``v``) of the attended
    map, viewed as ``num_heads`` heads, plus the depthwise ``v_local`` map of the values."""

    def _attended(self, x: torch.Tensor) -> torch.Tensor:
        """The map the keys and values are taken from."""
        return x

    def _qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, heads, Nq, d) queries, (B, heads, N, d) keys and values, and the local value map."""
        x = self._attended(x)
        q = map_to_heads(self.q(x), self.num_heads)
        k = map_to_heads(self.k(x), self.num_heads)
        v = self.v(x)
        v_local = self.v_local(v)
        return q, k, map_to_heads(v, self.num_heads), v_local


class Attention2d(MapAttention):
    """Attention over a NCHW map with talking heads; ``stride=2`` attends on a strided copy and upsamples
    back to the input size."""

    def __init__(
            self, dim: int = 384, key_dim: int = 32, num_heads: int = 8, attn_ratio: int = 4,
            resolution: int = 7, act_layer=nn.GELU, stride: Optional[int] = None, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        if stride is not None:
            resolution = ceil_div(resolution, stride)
            self.stride_conv = ConvNorm(dim, dim, kernel_size=3, stride=stride, groups=dim, **dd)
        else:
            self.stride_conv = None
        self.dh = int(attn_ratio * key_dim) * num_heads
        kh = key_dim * num_heads
        self.q = ConvNorm(dim, kh, **dd)
        self.k = ConvNorm(dim, kh, **dd)
        self.v = ConvNorm(dim, self.dh, **dd)
        self.v_local = ConvNorm(self.dh, self.dh, kernel_size=3, groups=self.dh, **dd)
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, kernel_size=1, **dd)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, kernel_size=1, **dd)
        self.act = act_layer()
        self.proj = ConvNorm(self.dh, dim, 1, **dd)
        self._init_attention_bias(num_heads, (resolution, resolution), persistent_index=False, **dd)

    def _attended(self, x: torch.Tensor) -> torch.Tensor:
        """The strided copy of the map when ``stride`` is set: queries, keys and values all come from it."""
        if self.stride_conv is not None:
            return self.stride_conv(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        q, k, v, v_local = self._qkv(x)
        h, w = v_local.shape[-2:]

        talking_heads = (self.talking_head1.weight, self.talking_head1.bias,
                         self.talking_head2.weight, self.talking_head2.bias)
        attn = explicit_attention(q, k, v, self.attention_bias((h, w), q.dtype), self.scale, talking_heads)
        x = heads_to_map(attn, h, w, like=v_local) + v_local
        if self.stride_conv is not None:
            x = F.interpolate(x, size=(H, W), mode='bilinear', align_corners=False)
        return self.proj(self.act(x))


class Attention2dDownsample(MapAttention):
    """Attention whose queries sit on every second position (``q`` is strided): keys / values at H x W, output
    and local value map at ceil(H / 2) x ceil(W / 2)."""

    def __init__(
            self, dim: int = 384, key_dim: int = 16, num_heads: int = 8, attn_ratio: int = 4,
            resolution: int = 7, out_dim: Optional[int] = None, act_layer=nn.GELU, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        self.dh = int(attn_ratio * key_dim) * num_heads
        self.out_dim = out_dim or dim
        kh = key_dim * num_heads
        self.q = LocalGlobalQuery(dim, kh, **dd)
        self.k = ConvNorm(dim, kh, 1, **dd)
        self.v = ConvNorm(dim, self.dh, 1, **dd)
        self.v_local = ConvNorm(self.dh, self.dh, kernel_size=3, stride=2, groups=self.dh, **dd)
        self.act = act_layer()
        self.proj = ConvNorm(self.dh, self.out_dim, 1, **dd)
        self._init_attention_bias(num_heads, (resolution, resolution), query_stride=2, persistent_index=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        q, k, v, v_local = self._qkv(x)
        h, w = v_local.shape[-2:]

        # explicit attention: here (q and v head sizes 16 / 64, Nq != Nk) scaled_dot_product_attention takes
        # its slower math path on CPU
        attn = explicit_attention(q, k, v, self.attention_bias((H, W), q.dtype), self.scale)
        x = heads_to_map(attn, h, w, like=v_local) + v_local
        return self.proj(self.act(x))


class Downsample(nn.Module):
    def __init__(
            self, in_chs: int, out_chs: int, resolution: int = 7, use_attn: bool = False, act_layer=nn.GELU,
            norm_layer=nn.BatchNorm2d, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv = ConvNorm(in_chs, out_chs, kernel_size=3, stride=2, padding=1, norm_layer=norm_layer, **dd)
        self.attn = Attention2dDownsample(
            dim=in_chs, out_dim=out_chs, resolution=resolution, act_layer=act_layer, **dd) if use_attn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.attn is not None:
            return self.attn(x) + out
        return out


class EfficientFormerV2Block(nn.Module):
    def __init__(
            self, dim: int, mlp_ratio: float = 4., act_layer=nn.GELU, norm_layer=nn.BatchNorm2d,
            proj_drop: float = 0., drop_path: float = 0., layer_scale_init_value: Optional[float] = 1e-5,
            resolution: int = 7, stride: Optional[int] = None, use_attn: bool = True, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()

        def layer_scale():
            if layer_scale_init_value is None:
                return nn.Identity()
            return LayerScale2d(dim, layer_scale_init_value, **dd)

        if use_attn:
            self.token_mixer = Attention2d(dim, resolution=resolution, act_layer=act_layer, stride=stride, **dd)
            self.ls1 = layer_scale()
            self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        else:
            self.token_mixer = self.ls1 = self.drop_path1 = None
        self.mlp = ConvMlpWithNorm(
            dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, norm_layer=norm_layer,
            drop=proj_drop, mid_conv=True, **dd)
        self.ls2 = layer_scale()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_mixer is not None:
            x = x + self.drop_path1(self.ls1(self.token_mixer(x)))
        return x + self.drop_path2(self.ls2(self.mlp(x)))


class EfficientFormerV2Stage(nn.Module):
    def __init__(
            self, dim: int, dim_out: int, depth: int, resolution: int = 7, downsample: bool = True,
            block_stride: Optional[int] = None, downsample_use_attn: bool = False, block_use_attn: bool = False,
            num_vit: int = 1, mlp_ratio=4., proj_drop: float = 0., drop_path=0.,
            layer_scale_init_value: Optional[float] = 1e-5, act_layer=nn.GELU, norm_layer=nn.BatchNorm2d,
            device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.grad_checkpointing = False
        mlp_ratio = to_ntuple(depth)(mlp_ratio)
        drop_path = drop_path if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        if downsample:
            self.downsample = Downsample(
                dim, dim_out, resolution=resolution, use_attn=downsample_use_attn, act_layer=act_layer,
                norm_layer=norm_layer, **dd)
            resolution = ceil_div(resolution, 2)
        else:
            assert dim == dim_out, 'a stage without downsample keeps its width'
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            EfficientFormerV2Block(
                dim_out, mlp_ratio=mlp_ratio[i], act_layer=act_layer, norm_layer=norm_layer, proj_drop=proj_drop,
                drop_path=drop_path[i], layer_scale_init_value=layer_scale_init_value, resolution=resolution,
                stride=block_stride, use_attn=block_use_attn and i >= depth - num_vit, **dd)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_with_grid(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.forward(x)
        return x, (x.shape[-2], x.shape[-1])

    def to_map(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        return x


class EfficientFormerV2(EfficientFormerBase):
    """EfficientFormer-V2 (S0 / S1 / S2 / L). ``img_size`` only sets the pretraining bias grid."""
    pool_dims = (2, 3)

    def __init__(
            self,
            depths: Tuple[int, ...],
            in_chans: int = 3,
            img_size: Union[int, Tuple[int, int]] = 224,
            global_pool: str = 'avg',
            embed_dims: Optional[Tuple[int, ...]] = None,
            downsamples: Optional[Tuple[bool, ...]] = None,
            mlp_ratios=4,
            norm_layer: str = 'batchnorm2d',
            norm_eps: float = 1e-5,
            act_layer: str = 'gelu',
            num_classes: int = 1000,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            layer_scale_init_value: Optional[float] = 1e-5,
            num_vit: int = 0,
            distillation: bool = True,
            feature_norm: bool = False,
            output_stride: int = 32,
            dynamic_img_size: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self._init_model(in_chans, num_classes, global_pool, len(depths), dynamic_img_size)
        # the biases were trained for this grid; other input sizes resize them
        pretrain_size = img_size if isinstance(img_size, int) else img_size[0]
        norm_layer = partial(get_norm_layer(norm_layer), eps=norm_eps)
        act_layer = get_act_layer(act_layer)

        self.stem = Stem4(in_chans, embed_dims[0], act_layer=act_layer, norm_layer=norm_layer, **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, depths, stagewise=True)
        downsamples = downsamples or (False,) + (True,) * (self.num_stages - 1)
        mlp_ratios = to_ntuple(self.num_stages)(mlp_ratios)
        stages = []
        prev_dim, stride = embed_dims[0], 4
        for i in range(self.num_stages):
            stages.append(EfficientFormerV2Stage(
                prev_dim, embed_dims[i], depth=depths[i], resolution=ceil_div(pretrain_size, stride),
                downsample=downsamples[i], block_stride=2 if i == 2 else None, downsample_use_attn=i >= 3,
                block_use_attn=i >= 2, num_vit=num_vit, mlp_ratio=mlp_ratios[i], proj_drop=proj_drop_rate,
                drop_path=dpr[i], layer_scale_init_value=layer_scale_init_value, act_layer=act_layer,
                norm_layer=norm_layer, **dd))
            stride *= 2 if downsamples[i] else 1
            prev_dim = embed_dims[i]
        self.stages = nn.Sequential(*stages)
        self._init_features(
            embed_dims, downsamples, partial(norm_layer, **dd) if feature_norm else None, output_stride)

        self.norm = norm_layer(embed_dims[-1], **dd)
        self._init_heads(embed_dims[-1], num_classes, distillation, drop_rate, dd)

default_cfgs = generate_default_cfgs({
    'efficientformerv2_s0.snap_dist_in1k': pretrained_cfg(first_conv='stem.conv1.conv'),
    'efficientformerv2_s1.snap_dist_in1k': pretrained_cfg(first_conv='stem.conv1.conv'),
    'efficientformerv2_s2.snap_dist_in1k': pretrained_cfg(first_conv='stem.conv1.conv'),
    'efficientformerv2_l.snap_dist_in1k': pretrained_cfg(first_conv='stem.conv1.conv'),
})


def _create_efficientformerv2(variant, pretrained=False, **kwargs):
    return build_efficientformer(
        EfficientFormerV2, variant, pretrained, checkpoint_filter_fn, feature_list=True, **kwargs)


@register_model
def efficientformerv2_s0(pretrained=False, **kwargs) -> EfficientFormerV2:
    return _create_efficientformerv2(
        'efficientformerv2_s0', pretrained, **dict(EFFICIENTFORMERV2_ARCHS['s0'], **kwargs))


@register_model
def efficientformerv2_s1(pretrained=False, **kwargs) -> EfficientFormerV2:
    return _create_efficientformerv2(
        'efficientformerv2_s1', pretrained, **dict(EFFICIENTFORMERV2_ARCHS['s1'], **kwargs))


@register_model
def efficientformerv2_s2(pretrained=False, **kwargs) -> EfficientFormerV2:
    return _create_efficientformerv2(
        'efficientformerv2_s2', pretrained, **dict(EFFICIENTFORMERV2_ARCHS['s2'], **kwargs))


@register_model
def efficientformerv2_l(pretrained=False, **kwargs) -> EfficientFormerV2:
    return _create_efficientformerv2(
        'efficientformerv2_l', pretrained, **dict(EFFICIENTFORMERV2_ARCHS['l'], **kwargs))
