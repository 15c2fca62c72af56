"""EfficientFormer (V1) for any input size.

State-dict compatible with ``timm.models.efficientformer`` (timm 1.0.31). The differences are what dense
prediction needs: the attention bias of the last stage follows the real token grid (see ``_bias.py``),
features and the token-to-map reshape use the real stage sizes (also when H, W are not multiples of 32),
and an optional GroupNorm(1, C) per feature output, as in the authors' detection / segmentation backbone.

Paper: `EfficientFormer: Vision Transformers at MobileNet Speed` - https://arxiv.org/abs/2206.01191
Based on timm's implementation (Ross Wightman) of the Apache 2.0 code of snap-research/EfficientFormer.
"""
from functools import partial
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from timm.layers import DropPath, LayerScale, Mlp, calculate_drop_path_rates
from timm.models import generate_default_cfgs, register_model
from timm.models.efficientformer import Downsample, Flat, MetaBlock2d, Pooling, Stem4

from ._bias import GridAttentionBias, attention_logits, biased_attention
from ._common import EfficientFormerBase, build_efficientformer, checkpoint_filter_fn, pretrained_cfg
from .variants import EFFICIENTFORMER_ARCHS

__all__ = ['EfficientFormer', 'EFFICIENTFORMER_ARCHS']


class Attention(GridAttentionBias):
    """Multi-head self-attention over (B, N, C) tokens laid out on a ``grid`` of H x W = N."""

    def __init__(
            self, dim: int = 448, key_dim: int = 32, num_heads: int = 8, attn_ratio: float = 4,
            resolution: int = 7, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.val_attn_dim = self.val_dim * num_heads
        self.qkv = nn.Linear(dim, key_dim * num_heads * 2 + self.val_attn_dim, **dd)
        self.proj = nn.Linear(self.val_attn_dim, dim, **dd)
        self._init_attention_bias(num_heads, (resolution, resolution), **dd)

    def _qkv(self, x: torch.Tensor) -> List[torch.Tensor]:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        return qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self._qkv(x)
        x = biased_attention(q, k, v, self.attention_bias(grid, q.dtype), self.scale)
        x = x.transpose(1, 2).reshape(B, N, self.val_attn_dim)
        return self.proj(x)

    def forward_with_probs(self, x: torch.Tensor, grid: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``forward`` computed from explicit attention weights: (output, the (B, heads, N, N) weights), the weights
        on the output's autograd path (transformers' ``attentions``)."""
        B, N, _ = x.shape
        q, k, v = self._qkv(x)
        probs = attention_logits(q, k, self.attention_bias(grid, q.dtype), self.scale).softmax(dim=-1)
        x = (probs @ v).transpose(1, 2).reshape(B, N, self.val_attn_dim)
        return self.proj(x), probs


class WindowAveragePooling(Pooling):
    """timm's pooling token mixer, ``pool(x) - x``: the average of each pixel's window, padding left out
    (``count_include_pad=False``). The average is computed as a depthwise convolution with a window of ones divided
    by the number of pixels the window covers inside the image, which gives the same values and runs on the
    convolution kernels, faster than PyTorch's CPU average pooling in NCHW. ``pool`` is kept: timm's module, the
    authors' arithmetic."""

    def __init__(self, pool_size: int = 3):
        super().__init__(pool_size)
        self.pool_size = pool_size
        self.dilation = 1

    def set_dilation(self, dilation: int) -> None:
        """A window of ``pool_size`` pixels ``dilation`` apart (``output_stride`` below 32)."""
        self.dilation = dilation

    def average(self, x: torch.Tensor) -> torch.Tensor:
        size, dilation = self.pool_size, self.dilation
        padding = dilation * (size // 2)
        window = x.new_ones((x.shape[1], 1, size, size))
        covered = F.conv2d(x.new_ones((1, 1, x.shape[2], x.shape[3])), window[:1], padding=padding,
                           dilation=dilation)
        return F.conv2d(x, window, padding=padding, dilation=dilation, groups=x.shape[1]) / covered

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.average(x) - x


class GridMetaBlock2d(MetaBlock2d):
    """timm's Meta4D block with the pooling mixer above, called with the token grid like every block of a stage
    (TorchScript needs one call signature per stage loop); the grid is not used."""

    def __init__(self, dim: int, pool_size: int = 3, **kwargs):
        super().__init__(dim, pool_size=pool_size, **kwargs)
        self.token_mixer = WindowAveragePooling(pool_size)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.token_mixer(x)))
        return x + self.drop_path2(self.ls2(self.mlp(x)))


class GridFlat(Flat):
    """timm's Flat (NCHW map to B, N, C tokens), called with the token grid like every block of a stage."""

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class MetaBlock1d(nn.Module):
    """Meta3D block: LayerNorm, attention, LayerNorm, linear MLP, each branch layer-scaled."""

    def __init__(
            self, dim: int, mlp_ratio: float = 4., act_layer=nn.GELU, norm_layer=nn.LayerNorm,
            proj_drop: float = 0., drop_path: float = 0., layer_scale_init_value: float = 1e-5,
            attn_kwargs: Optional[dict] = None, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm1 = norm_layer(dim, **dd)
        self.token_mixer = Attention(dim, **(attn_kwargs or {}), **dd)
        self.ls1 = LayerScale(dim, layer_scale_init_value, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.ls2 = LayerScale(dim, layer_scale_init_value, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.token_mixer(self.norm1(x), grid)))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x

    def forward_with_attention(
            self, x: torch.Tensor, grid: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(``forward``, the attention weights it is computed from)."""
        attended, probs = self.token_mixer.forward_with_probs(self.norm1(x), grid)
        x = x + self.drop_path1(self.ls1(attended))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, probs


class EfficientFormerStage(nn.Module):
    """Optional downsample, Meta4D blocks, then (last stage) Flat and ``num_vit`` Meta3D blocks.

    Block indices match timm's so checkpoints keep their keys (Flat holds a slot in ``blocks``). Every block is
    called as ``block(x, grid)``: the Meta3D blocks need the token grid.
    """

    def __init__(
            self, dim: int, dim_out: int, depth: int, downsample: bool = True, num_vit: int = 0,
            pool_size: int = 3, mlp_ratio: float = 4., act_layer=nn.GELU, norm_layer=nn.BatchNorm2d,
            norm_layer_cl=nn.LayerNorm, proj_drop: float = 0., drop_path: Union[float, List[float]] = 0.,
            layer_scale_init_value: float = 1e-5, attn_kwargs: Optional[dict] = None, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.grad_checkpointing = False
        if downsample:
            self.downsample = Downsample(dim, dim_out, norm_layer=norm_layer, **dd)
        else:
            assert dim == dim_out, 'a stage without downsample keeps its width'
            self.downsample = nn.Identity()
        drop_path = drop_path if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        num_conv = depth - num_vit
        blocks = [
            GridMetaBlock2d(
                dim_out, pool_size=pool_size, mlp_ratio=mlp_ratio, act_layer=act_layer, norm_layer=norm_layer,
                proj_drop=proj_drop, drop_path=drop_path[i], layer_scale_init_value=layer_scale_init_value, **dd)
            for i in range(num_conv)
        ]
        if num_vit:
            blocks.append(GridFlat())
            blocks += [
                MetaBlock1d(
                    dim_out, mlp_ratio=mlp_ratio, act_layer=act_layer, norm_layer=norm_layer_cl,
                    proj_drop=proj_drop, drop_path=drop_path[i], layer_scale_init_value=layer_scale_init_value,
                    attn_kwargs=attn_kwargs, **dd)
                for i in range(num_conv, depth)
            ]
        self.blocks = nn.ModuleList(blocks)
        self.outputs_tokens = num_vit > 0

    def forward_with_grid(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Returns the stage output (NCHW, or B, N, C tokens after Flat) and its H x W grid."""
        x = self.downsample(x)
        grid = (x.shape[-2], x.shape[-1])
        if not torch.jit.is_scripting():  # checkpoint() cannot be compiled: TorchScript skips this branch
            if self.grad_checkpointing and self.training:
                for block in self.blocks:
                    x = checkpoint(block, x, grid, use_reentrant=False)
                return x, grid
        for block in self.blocks:
            x = block(x, grid)
        return x, grid

    def to_map(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """A stage output as an NCHW map: the last stage's tokens reshaped to their grid."""
        if self.outputs_tokens:
            return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid[0], grid[1])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_grid(x)[0]


class EfficientFormer(EfficientFormerBase):
    """EfficientFormer V1 (L1 / L3 / L7). ``feature_norm=True`` adds GroupNorm(1, C) per feature output."""
    pool_dims = (1,)  # the head averages the final (B, N, C) tokens
    head_needs_last_stage = True

    def __init__(
            self,
            depths: Tuple[int, ...] = (3, 2, 6, 4),
            embed_dims: Tuple[int, ...] = (48, 96, 224, 448),
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            downsamples: Optional[Tuple[bool, ...]] = None,
            num_vit: int = 0,
            mlp_ratios: float = 4,
            pool_size: int = 3,
            layer_scale_init_value: float = 1e-5,
            act_layer=nn.GELU,
            norm_layer=nn.BatchNorm2d,
            norm_eps: float = 1e-5,
            layer_norm_eps: float = 1e-5,
            attn_key_dim: int = 32,
            attn_num_heads: int = 8,
            attn_ratio: float = 4,
            attn_resolution: int = 7,
            distillation: bool = True,
            feature_norm: bool = False,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,  # accepted from the builder, any size runs
            output_stride: int = 32,
            dynamic_img_size: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self._init_model(in_chans, num_classes, global_pool, len(depths), dynamic_img_size)
        norm_layer = partial(norm_layer, eps=norm_eps)
        norm_layer_cl = partial(nn.LayerNorm, eps=layer_norm_eps)
        attn_kwargs = dict(key_dim=attn_key_dim, num_heads=attn_num_heads, attn_ratio=attn_ratio,
                           resolution=attn_resolution)

        self.stem = Stem4(in_chans, embed_dims[0], norm_layer=norm_layer, **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, depths, stagewise=True)
        downsamples = downsamples or (False,) + (True,) * (self.num_stages - 1)
        stages = []
        prev_dim = embed_dims[0]
        for i in range(self.num_stages):
            stages.append(EfficientFormerStage(
                prev_dim, embed_dims[i], depths[i], downsample=downsamples[i],
                num_vit=num_vit if i == self.num_stages - 1 else 0, pool_size=pool_size, mlp_ratio=mlp_ratios,
                act_layer=act_layer, norm_layer=norm_layer, norm_layer_cl=norm_layer_cl,
                proj_drop=proj_drop_rate, drop_path=dpr[i], layer_scale_init_value=layer_scale_init_value,
                attn_kwargs=attn_kwargs, **dd))
            prev_dim = embed_dims[i]
        self.stages = nn.Sequential(*stages)
        self._init_features(
            embed_dims, downsamples, partial(nn.GroupNorm, 1, **dd) if feature_norm else None, output_stride)

        self.norm = norm_layer_cl(embed_dims[-1], **dd)
        self._init_heads(embed_dims[-1], num_classes, distillation, drop_rate, dd)

    def forward_hidden_states(
            self, x: torch.Tensor, attentions: Optional[List[torch.Tensor]] = None) -> List[torch.Tensor]:
        """transformers' ``hidden_states``: stem, then each stage's blocks and each downsample, then the
        final tokens before the last LayerNorm (8 tensors for the 4-stage models), each the tensor the next layer
        reads. A list given as ``attentions`` receives the attention weights of each Meta3D block, computed
        explicitly and used by it (transformers' ``attentions``)."""
        self._check_input(x)
        x = self.stem(x)
        hidden_states = [x]
        for stage in self.stages:
            if not isinstance(stage.downsample, nn.Identity):
                x = stage.downsample(x)
                hidden_states.append(x)
            grid = (x.shape[-2], x.shape[-1])
            for block in stage.blocks:
                if attentions is not None and isinstance(block, MetaBlock1d):
                    x, probs = block.forward_with_attention(x, grid)
                    attentions.append(probs)
                else:
                    x = block(x, grid)
            hidden_states.append(x)
        return hidden_states


default_cfgs = generate_default_cfgs({
    'efficientformer_l1.snap_dist_in1k': pretrained_cfg(first_conv='stem.conv1'),
    'efficientformer_l3.snap_dist_in1k': pretrained_cfg(first_conv='stem.conv1'),
    'efficientformer_l7.snap_dist_in1k': pretrained_cfg(first_conv='stem.conv1'),
})


def _create_efficientformer(variant, pretrained=False, **kwargs):
    return build_efficientformer(EfficientFormer, variant, pretrained, checkpoint_filter_fn, **kwargs)


@register_model
def efficientformer_l1(pretrained=False, **kwargs) -> EfficientFormer:
    return _create_efficientformer('efficientformer_l1', pretrained, **dict(EFFICIENTFORMER_ARCHS['l1'], **kwargs))


@register_model
def efficientformer_l3(pretrained=False, **kwargs) -> EfficientFormer:
    return _create_efficientformer('efficientformer_l3', pretrained, **dict(EFFICIENTFORMER_ARCHS['l3'], **kwargs))


@register_model
def efficientformer_l7(pretrained=False, **kwargs) -> EfficientFormer:
    return _create_efficientformer('efficientformer_l7', pretrained, **dict(EFFICIENTFORMER_ARCHS['l7'], **kwargs))
