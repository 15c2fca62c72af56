"""What the V1 and V2 model classes share: classifier heads (with distillation), timm's model API hooks, and
the builder behind their ``register_model`` entry points."""
from typing import Callable, List, Optional, Tuple, Union

import torch
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices
from torch import nn

from .fuse import fuse_batchnorm


def build_efficientformer(cls: type, variant: str, pretrained: bool, filter_fn: Callable, **kwargs) -> nn.Module:
    """timm's builder with the features_only getter; ``fuse_bn=True`` folds BatchNorm after weights load."""
    out_indices = kwargs.pop('out_indices', 4)
    fuse_bn = kwargs.pop('fuse_bn', False)
    model = build_model_with_cfg(
        cls, variant, pretrained,
        pretrained_filter_fn=filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )
    return fuse_batchnorm(model) if fuse_bn else model


class EfficientFormerBase(nn.Module):
    """Subclasses build ``stem``, ``stages``, ``norm``, ``feature_info`` and call ``_init_heads``; they set
    ``pool_dims``, the dimensions the head averages over (tokens for V1, H and W for V2)."""
    pool_dims: Tuple[int, ...]

    def _init_heads(self, num_features: int, num_classes: int, distillation: bool, drop_rate: float, dd: dict):
        self.num_features = self.head_hidden_size = num_features
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.dist = distillation
        self.head_dist = (
            nn.Linear(num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        ) if distillation else None
        self.distilled_training = False
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {k for k, _ in self.named_parameters() if 'attention_biases' in k}

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        return dict(stem=r'^stem', blocks=[(r'^stages\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> Tuple[nn.Module, Optional[nn.Module]]:
        return self.head, self.head_dist

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            if global_pool not in ('', 'avg'):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        weight = next(self.stem.parameters())
        dd = {'device': weight.device, 'dtype': weight.dtype}
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)
        if self.head_dist is not None:
            self.head_dist = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
            self.head_dist.train(self.training)

    @torch.jit.ignore
    def set_distilled_training(self, enable=True):
        self.distilled_training = enable

    def prune_intermediate_layers(
            self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True):
        """Drop stages after the last wanted output, and feature norms of outputs not taken."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        self.stages = self.stages[:max_index + 1]
        if self.feature_norms is not None:
            for i in range(len(self.feature_norms)):
                if i not in take_indices:
                    self.feature_norms[i] = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        if self.global_pool == 'avg':
            x = x.mean(dim=self.pool_dims)
        x = self.head_drop(x)
        if pre_logits:
            return x
        if self.head_dist is None:
            return self.head(x)
        x, x_dist = self.head(x), self.head_dist(x)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x, x_dist
        return (x + x_dist) / 2

    def forward_cls_and_dist(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cls_logits, distillation_logits) for images ``x``: transformers' WithTeacher outputs."""
        if self.head_dist is None:
            raise ValueError('this model was built with distillation=False: it has no distillation head')
        x = self.forward_head(self.forward_features(x), pre_logits=True)
        return self.head(x), self.head_dist(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
