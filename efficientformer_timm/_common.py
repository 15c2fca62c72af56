"""What the V1 and V2 model classes share: classifier heads (with distillation), timm's model API hooks, and
the builder behind their ``register_model`` entry points."""
from typing import Callable, List, Optional, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, resolve_pretrained_cfg
from timm.models._features import FeatureListNet, feature_take_indices
from torch import nn

from ._bias import GridAttentionBias, ceil_div
from ._validate import check_image_batch
from .checkpoint import convert_state_dict, read_checkpoint
from .fuse import fuse_batchnorm

# FX symbolic tracing (torch.fx, timm's and torchvision's feature extractors) records the input check as one call
# in the graph, so traced models check their input too
torch.fx.wrap('check_image_batch')


def pretrained_cfg(first_conv: str, **kwargs) -> dict:
    """timm's pretrained config of the ``snap_dist_in1k`` weights (timm's hub), at any input size."""
    return {
        'url': '', 'hf_hub_id': 'timm/',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'fixed_input_size': False,
        'crop_pct': .95, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': first_conv, 'classifier': ('head', 'head_dist'),
        'license': 'apache-2.0',
        **kwargs,
    }


def checkpoint_filter_fn(state_dict, model):
    """timm's pretrained filter: any supported checkpoint format (timm, original release, transformers) -> this
    model's keys, checked (see ``convert_state_dict``)."""
    return convert_state_dict(state_dict, model, pass_other_classifier=True)


class CheckedFeatureListNet(FeatureListNet):
    """timm's ``FeatureListNet`` (same modules and state-dict keys) that checks its input like the model does."""

    def __init__(self, model: nn.Module, *args, **kwargs):
        in_chans = model.in_chans
        super().__init__(model, *args, **kwargs)
        self.in_chans = in_chans

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if not torch.jit.is_scripting():
            check_image_batch(x, self.in_chans, next(self.parameters()).dtype)
        return list(self._collect(x).values())


def _read_pretrained_file(variant: str, kwargs: dict) -> None:
    """A local ``file`` in the pretrained config is read here, so that a missing, truncated or foreign file
    raises ``CheckpointError`` naming it; timm then loads the state dict as given."""
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')).to_dict()
    if cfg.get('file') and not cfg.get('state_dict') and cfg.get('source', '') not in ('hf-hub', 'local-dir'):
        kwargs['pretrained_cfg_overlay'] = dict(
            kwargs.get('pretrained_cfg_overlay') or {}, state_dict=read_checkpoint(cfg['file']))


def build_efficientformer(
        cls: type, variant: str, pretrained: bool, filter_fn: Callable, feature_list: bool = False,
        **kwargs) -> nn.Module:
    """timm's builder; ``fuse_bn=True`` folds BatchNorm after weights load. ``features_only`` gives the wrapper
    stock timm gives (``feature_list``: ``FeatureListNet`` over flattened stem / stages, else the getter); the
    per-output norms, which are not on the module path, always use the getter."""
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3) if feature_list else 4)  # stock timm's defaults
    fuse_bn = kwargs.pop('fuse_bn', False)
    if feature_list and not kwargs.get('feature_norm', False):
        feature_cfg = dict(out_indices=out_indices, flatten_sequential=True, feature_cls=CheckedFeatureListNet)
    else:
        feature_cfg = dict(out_indices=out_indices, feature_cls='getter')
    if kwargs.get('feature_norm') and kwargs.get('feature_cls') not in (None, 'getter'):
        raise ValueError(f"feature_norm=True needs the default features_only wrapper (feature_cls='getter'), got "
                         f"feature_cls={kwargs['feature_cls']!r}: the norms are applied in forward_intermediates")
    if pretrained:
        _read_pretrained_file(variant, kwargs)
    model = build_model_with_cfg(
        cls, variant, pretrained,
        pretrained_filter_fn=filter_fn,
        feature_cfg=feature_cfg,
        **kwargs,
    )
    return fuse_batchnorm(model) if fuse_bn else model


def _set_conv_geometry(conv: nn.Conv2d, stride: int, dilation: int) -> None:
    conv.stride = (stride, stride)
    conv.dilation = (dilation, dilation)
    conv.padding = tuple(dilation * (k - 1) // 2 for k in conv.kernel_size)


def dilate_stage(stage: nn.Module, first_dilation: int, dilation: int) -> None:
    """Turn a stage's downsampling off and dilate its spatial operations, as timm's dilated networks do for an
    ``output_stride`` below 32: the downsample's strided convolutions (and V2's strided attention queries) run at
    stride 1 with ``first_dilation``; every larger-than-1x1 convolution of the blocks, and modules with a
    ``set_dilation`` method (V1's pooling mixer), dilate by ``dilation``. V2's stride-2 attention keeps its stride
    (it attends on a copy of half the size and upsamples back). Weights are unchanged."""
    for module in stage.downsample.modules():
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            _set_conv_geometry(module, 1, first_dilation)
        elif isinstance(module, nn.AvgPool2d):  # V2's query pooling (a 1x1 window): stride 1 makes it the identity
            module.stride = 1
        elif isinstance(module, GridAttentionBias):
            module.set_query_stride(1)
    for module in stage.blocks.modules():
        if isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1:
            _set_conv_geometry(module, module.stride[0], dilation)
        elif hasattr(module, 'set_dilation'):
            module.set_dilation(dilation)


class EfficientFormerBase(nn.Module):
    """Subclasses build ``stem``, ``stages``, ``norm``, ``feature_info`` and call ``_init_heads``; they set
    ``pool_dims``, the dimensions the head averages over (tokens for V1, H and W for V2), and
    ``head_needs_last_stage`` when the head cannot pool the output of a pruned network (V1 pools tokens)."""
    pool_dims = ()
    head_needs_last_stage = False

    def _init_model(self, in_chans: int, num_classes: int, global_pool: str, num_stages: int,
                    dynamic_img_size: bool = True):
        if global_pool not in ('', 'avg'):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        # timm's ViT flag, which smp and others pass to timm transformers: these models take any size anyway
        if dynamic_img_size is not True:
            raise ValueError(f'dynamic_img_size={dynamic_img_size!r}: EfficientFormer here takes every input size '
                             '(the attention bias follows the token grid); pass True or leave it out')
        self.dynamic_img_size = True
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_stages = num_stages

    def _init_features(self, embed_dims: Tuple[int, ...], downsamples: Tuple[bool, ...],
                       feature_norm_layer: Optional[Callable], output_stride: int = 32):
        """``feature_info`` (strides from the stride-4 stem and the downsampling stages) and, with a
        ``feature_norm_layer``, the per-output norms that ``forward_intermediates`` applies. With ``output_stride``
        8 or 16, the stages past that stride keep the resolution and dilate instead (``dilate_stage``)."""
        if output_stride not in (8, 16, 32):
            raise ValueError(f'output_stride must be 8, 16 or 32, got {output_stride!r}')
        self.output_stride = output_stride
        self.feature_info = []
        reduction, dilation = 4, 1
        for i, dim in enumerate(embed_dims):
            first_dilation = dilation
            if downsamples[i] and reduction * 2 > output_stride:
                dilation *= 2
                dilate_stage(self.stages[i], first_dilation, dilation)
            elif downsamples[i]:
                reduction *= 2
            elif dilation > 1:
                dilate_stage(self.stages[i], dilation, dilation)
            module = f'feature_norms.{i}' if feature_norm_layer else f'stages.{i}'
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=module))
        self.feature_norms = nn.ModuleList(
            [feature_norm_layer(dim) for dim in embed_dims]) if feature_norm_layer else None

    def use_fixed_grid_attention_bias(self, resolution: int) -> None:
        """The attention bias of the authors' detection / segmentation backbones, made for inputs of
        ``resolution`` pixels (800 for their COCO models, 512 for ADE20K): each attention keeps one table for the
        fixed key grid of that input, ceil(resolution / stride) a side, and resizes the whole bias matrix to the
        real grid at every forward (see ``GridAttentionBias.use_fixed_grid_bias``)."""
        for i, stage in enumerate(self.stages):
            stride = self.feature_info[i]['reduction']
            for module in stage.downsample.modules():  # keys on the previous stage's grid
                if isinstance(module, GridAttentionBias):
                    module.use_fixed_grid_bias(ceil_div(resolution, self.feature_info[i - 1]['reduction']))
            for module in stage.blocks.modules():  # keys on the stage's grid, or a strided copy of it
                if isinstance(module, GridAttentionBias):
                    key_stride = stride * (2 if getattr(module, 'stride_conv', None) is not None else 1)
                    module.use_fixed_grid_bias(ceil_div(resolution, key_stride))

    def _check_input(self, x: torch.Tensor) -> None:
        if not torch.jit.is_scripting():
            check_image_batch(x, self.in_chans, next(self.stem.parameters()).dtype)

    def _init_heads(self, num_features: int, num_classes: int, distillation: bool, drop_rate: float, dd: dict):
        self.num_features = self.head_hidden_size = num_features
        self.pool_dims = list(type(self).pool_dims)  # an instance attribute, which TorchScript can read
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
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
        if global_pool is not None and global_pool not in ('', 'avg'):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        pool = self.global_pool if global_pool is None else global_pool
        if self.head_needs_last_stage and len(self.stages) < self.num_stages and (num_classes or pool):
            raise ValueError(
                f'a classifier or pooling (num_classes={num_classes}, global_pool={pool!r}) needs the final stage, '
                'which prune_intermediate_layers removed: use reset_classifier(0, \'\') and pool the features '
                'yourself, or build an unpruned model.')
        self.global_pool = pool
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

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs as NCHW maps at the real feature size (V1's last-stage tokens reshaped to their grid).

        ``norm`` applies the final norm to the last stage's output; ``feature_norms`` (when built) are applied to
        every returned map.
        """
        self._check_input(x)
        if output_fmt != 'NCHW':
            raise ValueError("output_fmt must be 'NCHW', got '" + output_fmt + "'")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = self.num_stages - 1
        last_run = -1
        x = self.stem(x)
        # one loop over self.stages with a condition, not a slice of it: TorchScript iterates module attributes only
        for feat_idx, stage in enumerate(self.stages):
            if feat_idx <= max_index or not stop_early:
                x, grid = stage.forward_with_grid(x)
                last_run = feat_idx
                if feat_idx in take_indices:
                    x_inter = self.norm(x) if norm and feat_idx == last_idx else x
                    x_inter = stage.to_map(x_inter, grid)
                    if self.feature_norms is not None:
                        x_inter = self.feature_norms[feat_idx](x_inter)
                    intermediates.append(x_inter)

        if intermediates_only:
            return intermediates
        if last_run == last_idx:
            x = self.norm(x)
        return x, intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final stage output after the final norm (V1: (B, N, C) tokens, transformers' ``last_hidden_state``;
        V2: an NCHW map)."""
        self._check_input(x)
        x = self.stem(x)
        x = self.stages(x)
        return self.norm(x)

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
