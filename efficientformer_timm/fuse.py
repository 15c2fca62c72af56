"""Eval-time fusion: fold every BatchNorm that directly follows a convolution into that convolution.

V1: stem, downsamples and the Meta4D MLPs; V2: every conv-BN pair (``ConvNorm`` / ``ConvNormAct``: stem, MLPs,
attention projections, downsamples). The folded BatchNorm becomes an Identity (a ``BatchNormAct2d`` keeps its
activation). The convolutional blocks' MLP layer scale is folded into the MLP's last convolution too, and the
blocks are replaced by ``FoldedMetaBlock2d`` / ``FoldedV2Block``, which run their MLP as oneDNN convolutions with
the GELU and the residual add fused in, where those kernels apply. ``timm_state_dict`` writes a fused model back
in timm format (folded norms as identity BatchNorm, folded layer scales as ones), which loads strictly into an
unfused model and computes the same function.
"""
from typing import Dict, List, Optional, Tuple

import torch
from timm.layers import BatchNormAct2d, LayerScale2d
from timm.layers.activations import GELU as TimmGELU, GELUTanh as TimmGELUTanh
from timm.models.efficientformer import MetaBlock2d
from timm.models.efficientformer_v2 import ConvMlpWithNorm as V2ConvMlp
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ['fuse_batchnorm', 'timm_state_dict', 'FoldedMetaBlock2d', 'FoldedV2Block']

# The MLPs' hidden maps (the block's width times its MLP ratio) are the largest tensors of the first stages at
# detection sizes. A channels_last map is computed a band of rows at a time: a band's hidden map of about this size
# stays in the caches between the two convolutions, and is small enough for glibc to serve from its heap, where a
# whole map would be a fresh mapping of its own, page-faulted in again at every block.
MLP_BAND_BYTES = 4 << 20

# (convolution, norm) attribute pairs of the EfficientFormer / timm modules
_PAIRS = (('conv1', 'norm1'), ('conv2', 'norm2'), ('conv', 'norm'), ('fc1', 'norm1'), ('fc2', 'norm2'), ('conv', 'bn'))


def _network(model: nn.Module) -> nn.Module:
    return getattr(model, 'model', model)  # timm's features_only wrapper keeps the network as .model


@torch.jit.unused
def _onednn_applies(x: torch.Tensor) -> bool:
    """oneDNN's fused convolution kernels (the ones inductor uses on CPU) have no autograd and no export path: use
    them for eager fp32 CPU inference only (not under autocast), and let tracing, FX, torch.compile and export see
    the plain modules."""
    return (type(x) is torch.Tensor and x.device.type == 'cpu' and x.dtype == torch.float32
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled('cpu')
            and torch.backends.mkldnn.is_available()
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


def _gelu_approximation(act: nn.Module) -> Optional[str]:
    """How a GELU module computes (``'none'``: erf, ``'tanh'``), None for any other activation."""
    if isinstance(act, nn.GELU):
        return act.approximate
    return {TimmGELU: 'none', TimmGELUTanh: 'tanh'}.get(type(act))


def _onednn_conv(x: torch.Tensor, conv: nn.Conv2d, gelu: Optional[str] = None,
                 residual: Optional[torch.Tensor] = None, into_residual: bool = False) -> torch.Tensor:
    """``gelu(conv(x))`` or ``conv(x) + residual`` as one oneDNN kernel; ``into_residual`` writes the sum into
    ``residual``."""
    args = (conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups)
    if residual is not None and into_residual:
        return torch.ops.mkldnn._convolution_pointwise_(residual, x, *args, 'add', 1.0, None, [], None)
    if residual is not None:
        return torch.ops.mkldnn._convolution_pointwise(x, residual, *args, 'add', 1.0, None, [], None)
    return torch.ops.mkldnn._convolution_pointwise(x, *args, 'gelu', [], gelu)


def _mlp_in_row_bands(x: torch.Tensor, hidden_channels: int, halo: int, mlp, in_place: bool = False) -> torch.Tensor:
    """``mlp(rows, first, count)`` over bands of rows of each image of a channels_last (B, C, H, W) map: ``rows``
    is the band (a contiguous block of the map) with up to ``halo`` rows either side, ``first`` and ``count`` say
    which of its rows the band's output is. One call on the whole map when an image's hidden map is smaller than
    two bands or the map is not channels_last (a band of a contiguous map is a strided view). ``in_place``: ``mlp``
    writes its output into the rows it read (no halo), and ``x`` is returned."""
    height, width = x.shape[-2:]
    row_bytes = hidden_channels * width * x.element_size()
    if height * row_bytes < 2 * MLP_BAND_BYTES or not x.is_contiguous(memory_format=torch.channels_last):
        return mlp(x, 0, height)
    rows = max(1, MLP_BAND_BYTES // row_bytes)
    images = []
    for image in x.split(1):
        bands = []
        for start in range(0, height, rows):
            stop = min(start + rows, height)
            first = max(start - halo, 0)
            bands.append(mlp(image[:, :, first:min(stop + halo, height)], start - first, stop - start))
        if not in_place:
            images.append(torch.cat(bands, dim=2))
    if in_place:
        return x
    return torch.cat(images) if len(images) > 1 else images[0]


def _fold_layer_scale(conv: nn.Conv2d, layer_scale: nn.Module) -> bool:
    """``gamma * conv(x)`` as one convolution; False when there is no layer scale (an Identity)."""
    if not isinstance(layer_scale, LayerScale2d):
        return False
    gamma = layer_scale.gamma  # the convolution has a bias: BatchNorm folding gave it one
    conv.weight.mul_(gamma.view(-1, 1, 1, 1))
    conv.bias.mul_(gamma)
    return True


class _FoldedBlock(nn.Module):
    """A convolutional block after fusion: its MLP's norms and layer scale are in the MLP's convolutions."""

    def __init__(self, block: nn.Module, mlp_acts: List[nn.Module]):
        super().__init__()
        self.token_mixer = block.token_mixer
        self.ls1 = block.ls1
        self.drop_path1 = block.drop_path1
        self.mlp = block.mlp
        self.drop_path2 = block.drop_path2
        self.gelus = [_gelu_approximation(act) for act in mlp_acts]
        self.gelu_mlp = None not in self.gelus  # the fused kernels compute GELU
        self.train(block.training)

    def _use_onednn(self, x: torch.Tensor) -> bool:
        return not torch.jit.is_scripting() and not self.training and self.gelu_mlp and _onednn_applies(x)


class FoldedMetaBlock2d(_FoldedBlock):
    """V1's Meta4D block after fusion."""

    def __init__(self, block: MetaBlock2d):
        super().__init__(block, [block.mlp.act])

    @torch.jit.unused
    def _forward_onednn(self, x: torch.Tensor) -> torch.Tensor:
        # x + gamma * (pool(x) - x) in one pass (eval: the drop paths are identities); timm's own blocks have
        # no ``average``
        mixer = self.token_mixer
        average = mixer.average(x) if hasattr(mixer, 'average') else mixer.pool(x)
        x = torch.lerp(x, average, self.ls1.gamma.view(-1, 1, 1))
        # the MLP's residual sum is written into x, a tensor of this forward's own
        fc1, fc2 = self.mlp.fc1, self.mlp.fc2
        return _mlp_in_row_bands(x, fc1.out_channels, 0, lambda rows, first, count: _onednn_conv(
            _onednn_conv(rows, fc1, self.gelus[0]), fc2, residual=rows, into_residual=True), in_place=True)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        if self._use_onednn(x):
            return self._forward_onednn(x)
        x = x + self.drop_path1(self.ls1(self.token_mixer(x)))
        return x + self.drop_path2(self.mlp(x))


class FoldedV2Block(_FoldedBlock):
    """V2's block after fusion (the attention branch, when there is one, is unchanged)."""

    def __init__(self, block: nn.Module):
        super().__init__(block, [block.mlp.fc1.bn, block.mlp.mid.bn])

    @torch.jit.unused
    def _forward_onednn(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.mlp
        mid = mlp.mid.conv  # its halo: the rows its 3x3 (possibly dilated) window reaches
        halo = mid.dilation[0] * (mid.kernel_size[0] // 2)

        def rows_mlp(rows: torch.Tensor, first: int, count: int) -> torch.Tensor:
            hidden = _onednn_conv(_onednn_conv(rows, mlp.fc1.conv, self.gelus[0]), mid, self.gelus[1])
            return _onednn_conv(hidden[:, :, first:first + count], mlp.fc2.conv,
                                residual=rows[:, :, first:first + count])
        return _mlp_in_row_bands(x, mlp.fc1.conv.out_channels, halo, rows_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_mixer is not None:
            x = x + self.drop_path1(self.ls1(self.token_mixer(x)))
        if self._use_onednn(x):
            return self._forward_onednn(x)
        return x + self.drop_path2(self.mlp(x))


def _fold_block(block: nn.Module) -> Tuple[Optional[nn.Module], Optional[nn.Conv2d]]:
    """The folded replacement of a convolutional block whose MLP norms are already folded and the MLP's last
    convolution, which takes the layer scale; (None, None) for any other module."""
    if isinstance(block, MetaBlock2d) and isinstance(block.mlp.norm2, nn.Identity):
        return FoldedMetaBlock2d(block), block.mlp.fc2
    mlp = getattr(block, 'mlp', None)
    if isinstance(mlp, V2ConvMlp) and isinstance(mlp.fc2.bn, nn.Identity) and not isinstance(mlp.mid, nn.Identity):
        return FoldedV2Block(block), mlp.fc2.conv
    return None, None


@torch.no_grad()
def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold BatchNorms into the preceding convolutions and the blocks' MLP layer scales into their last
    convolution, in place; the model is put in eval mode."""
    net = _network(model)
    model.eval()
    folded: List[Tuple[str, int, float]] = list(getattr(net, 'folded_norms', []))
    folded_scales: List[Tuple[str, int]] = list(getattr(net, 'folded_layer_scales', []))
    for name, module in list(net.named_modules()):
        for conv_attr, norm_attr in _PAIRS:
            conv, norm = getattr(module, conv_attr, None), getattr(module, norm_attr, None)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                setattr(module, conv_attr, fuse_conv_bn_eval(conv, norm))
                setattr(module, norm_attr, norm.act if isinstance(norm, BatchNormAct2d) else nn.Identity())
                folded.append((f'{name}.{norm_attr}' if name else norm_attr, norm.num_features, norm.eps))
    for name, block in list(net.named_modules()):
        replacement, last_conv = _fold_block(block)
        if replacement is None:
            continue
        if _fold_layer_scale(last_conv, block.ls2):
            folded_scales.append((f'{name}.ls2', block.ls2.gamma.numel()))
        parent, _, attr = name.rpartition('.')
        setattr(net.get_submodule(parent), attr, replacement)
    net.folded_norms = folded
    net.folded_layer_scales = folded_scales
    return model


def timm_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """State dict of a (possibly fused) model in timm's layout: folded norms are written as identity BatchNorm
    (weight 1, bias 0, mean 0, var 1 - eps) and folded layer scales as ones, so the checkpoint loads into an
    unfused model unchanged."""
    net = _network(model)
    state = dict(net.state_dict())
    for prefix, channels, eps in getattr(net, 'folded_norms', []):
        state[f'{prefix}.weight'] = torch.ones(channels)
        state[f'{prefix}.bias'] = torch.zeros(channels)
        state[f'{prefix}.running_mean'] = torch.zeros(channels)
        state[f'{prefix}.running_var'] = torch.full((channels,), 1 - eps)
        state[f'{prefix}.num_batches_tracked'] = torch.tensor(0)
    for prefix, channels in getattr(net, 'folded_layer_scales', []):
        state[f'{prefix}.gamma'] = torch.ones(channels)
    return state
