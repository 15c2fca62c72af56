"""Eval-time fusion: fold every BatchNorm that directly follows a convolution into that convolution.

V1: stem, downsamples and the Meta4D MLPs; V2: every conv-BN pair (``ConvNorm`` / ``ConvNormAct``: stem, MLPs,
attention projections, downsamples). The folded BatchNorm becomes an Identity (a ``BatchNormAct2d`` keeps its
activation). ``timm_state_dict`` writes a fused model back in timm format (folded norms as identity BatchNorm),
which loads strictly into an unfused model and computes the same function.
"""
from typing import Dict, List, Tuple

import torch
from timm.layers import BatchNormAct2d
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ['fuse_batchnorm', 'timm_state_dict']

# (convolution, norm) attribute pairs of the EfficientFormer / timm modules
_PAIRS = (('conv1', 'norm1'), ('conv2', 'norm2'), ('conv', 'norm'), ('fc1', 'norm1'), ('fc2', 'norm2'), ('conv', 'bn'))


def _network(model: nn.Module) -> nn.Module:
    return getattr(model, 'model', model)  # timm's features_only wrapper keeps the network as .model


@torch.no_grad()
def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold BatchNorms into the preceding convolutions, in place; the model is put in eval mode."""
    net = _network(model)
    model.eval()
    folded: List[Tuple[str, int, float]] = list(getattr(net, 'folded_norms', []))
    for name, module in list(net.named_modules()):
        for conv_attr, norm_attr in _PAIRS:
            conv, norm = getattr(module, conv_attr, None), getattr(module, norm_attr, None)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                setattr(module, conv_attr, fuse_conv_bn_eval(conv, norm))
                setattr(module, norm_attr, norm.act if isinstance(norm, BatchNormAct2d) else nn.Identity())
                folded.append((f'{name}.{norm_attr}' if name else norm_attr, norm.num_features, norm.eps))
    net.folded_norms = folded
    return model


def timm_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """State dict of a (possibly fused) model in timm's layout: folded norms are written as identity BatchNorm
    (weight 1, bias 0, mean 0, var 1 - eps), so the checkpoint loads into an unfused model unchanged."""
    net = _network(model)
    state = dict(net.state_dict())
    for prefix, channels, eps in getattr(net, 'folded_norms', []):
        state[f'{prefix}.weight'] = torch.ones(channels)
        state[f'{prefix}.bias'] = torch.zeros(channels)
        state[f'{prefix}.running_mean'] = torch.zeros(channels)
        state[f'{prefix}.running_var'] = torch.full((channels,), 1 - eps)
        state[f'{prefix}.num_batches_tracked'] = torch.tensor(0)
    return state
