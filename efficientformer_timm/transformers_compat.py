"""What transformers' EfficientFormer API gave, the timm way (no transformers import needed).

- ``model_args_from_transformers_config``: an EfficientFormerConfig (object, dict or config.json path) to
  (timm model name, create_model kwargs). Options our models cannot honour raise instead of being ignored.
- ``create_model_from_transformers``: build the timm model from a ``save_pretrained`` folder and load its
  weights (``model.safetensors`` or ``pytorch_model.bin``).
- ``data_config``: timm data configs for the preprocessing presets: 'transformers' reproduces the image
  processor published with the snap-research checkpoints (shortest edge 256 bicubic, center crop 224,
  ImageNet mean / std), 'timm' is timm's own eval transform (crop_pct 0.95).

Outputs map as: ``logits`` = ``model(x)`` (heads averaged), ``cls_logits, distillation_logits`` =
``model.forward_cls_and_dist(x)``, ``last_hidden_state`` = ``model.forward_features(x)``,
``hidden_states`` = ``model.forward_hidden_states(x)``. The loss for ``labels`` is left to the training code,
as everywhere in timm.
"""
import json
import os
from typing import Any, Dict, Tuple, Union

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .checkpoint import load_checkpoint, transformers_weights_file
from .variants import EFFICIENTFORMER_ARCHS

__all__ = ['model_args_from_transformers_config', 'create_model_from_transformers', 'data_config']

# transformers config fields that must keep these values: our models have no switch for them
_FIXED = dict(use_layer_scale=True, pool_size=3, downsample_patch_size=3, downsample_stride=2, downsample_pad=1)


def _config_dict(config: Union[str, os.PathLike, Dict[str, Any], Any]) -> Dict[str, Any]:
    if isinstance(config, (str, os.PathLike)):
        path = os.path.join(config, 'config.json') if os.path.isdir(config) else config
        with open(path) as f:
            return json.load(f)
    if isinstance(config, dict):
        return dict(config)
    return config.to_dict()


def model_args_from_transformers_config(config) -> Tuple[str, Dict[str, Any]]:
    """(model name, timm.create_model kwargs) equivalent to a transformers EfficientFormerConfig."""
    cfg = _config_dict(config)
    if cfg.get('model_type', 'efficientformer') != 'efficientformer':
        raise ValueError(f"not an EfficientFormer config: model_type={cfg.get('model_type')!r}")
    for key, value in _FIXED.items():
        if key in cfg and cfg[key] != value:
            raise ValueError(f'transformers config {key}={cfg[key]!r} is not supported (only {value!r})')
    if cfg.get('hidden_act', 'gelu') != 'gelu':
        raise ValueError(f"transformers config hidden_act={cfg['hidden_act']!r} is not supported (only 'gelu')")
    depths = tuple(cfg.get('depths', (3, 2, 6, 4)))
    widths = tuple(cfg.get('hidden_sizes', (48, 96, 224, 448)))
    if cfg.get('dim', 448) != widths[-1]:
        raise ValueError(f"transformers config dim={cfg.get('dim', 448)} must equal hidden_sizes[-1]={widths[-1]}: "
                         'the attention blocks run at the last stage width')
    hf_downsamples = cfg.get('downsamples', [True] * len(depths))
    # transformers: a downsample follows stage i when downsamples[i] or the width changes; timm: stage i starts
    # with one when downsamples[i]
    downsamples = (False,) + tuple(
        bool(hf_downsamples[i] or widths[i] != widths[i + 1]) for i in range(len(depths) - 1))
    architectures = cfg.get('architectures') or ['EfficientFormerForImageClassificationWithTeacher']
    distillation = any(a.endswith('WithTeacher') for a in architectures)
    hidden_size = cfg.get('hidden_size') or widths[-1]
    if distillation and hidden_size != widths[-1]:  # 4.40.2's distillation heads read hidden_size
        raise ValueError(f'transformers config hidden_size={hidden_size} must equal hidden_sizes[-1]={widths[-1]} '
                         'for the WithTeacher heads: they classify the mean last-stage token')
    # transformers' PretrainedConfig default is 2 labels (config.json omits id2label when it is the default)
    num_labels = len(cfg['id2label']) if cfg.get('id2label') else cfg.get('num_labels', 2)
    kwargs = dict(
        depths=depths, embed_dims=widths, downsamples=downsamples,
        num_vit=cfg.get('num_meta3d_blocks', 1),
        mlp_ratios=cfg.get('mlp_expansion_ratio', 4),
        layer_scale_init_value=cfg.get('layer_scale_init_value', 1e-5),
        layer_norm_eps=cfg.get('layer_norm_eps', 1e-12),
        attn_key_dim=cfg.get('key_dim', 32),
        attn_num_heads=cfg.get('num_attention_heads', 8),
        attn_ratio=cfg.get('attention_ratio', 4),
        attn_resolution=cfg.get('resolution', 7),
        drop_path_rate=cfg.get('drop_path_rate', 0.),
        proj_drop_rate=cfg.get('hidden_dropout_prob', 0.),
        num_classes=num_labels,
        in_chans=cfg.get('num_channels', 3),
        distillation=distillation,
    )
    if cfg.get('batch_norm_eps', 1e-5) != 1e-5:  # timm's default left out of the kwargs
        kwargs['norm_eps'] = cfg['batch_norm_eps']
    name = 'efficientformer_l1'
    for arch_name, arch in EFFICIENTFORMER_ARCHS.items():
        if tuple(arch['embed_dims']) == widths and tuple(arch['depths']) == depths:
            name = f'efficientformer_{arch_name}'
    return name, kwargs


def create_model_from_transformers(path: Union[str, os.PathLike], **overrides):
    """timm model with the config and weights of a transformers ``save_pretrained`` folder."""
    name, kwargs = model_args_from_transformers_config(path)
    kwargs.update(overrides)
    model = timm.create_model(name, **kwargs)
    load_checkpoint(model, transformers_weights_file(path))
    return model


def data_config(preset: str = 'timm', input_size: int = 224) -> Dict[str, Any]:
    """timm data config (for ``timm.data.create_transform(**cfg)``) of a preprocessing preset."""
    base = dict(input_size=(3, input_size, input_size), interpolation='bicubic',
                mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, crop_mode='center')
    if preset == 'transformers':
        return dict(base, crop_pct=input_size / 256)  # resize shortest edge to 256, center crop 224
    if preset == 'timm':
        return dict(base, crop_pct=0.95)
    raise ValueError(f"preset must be 'timm' or 'transformers', got {preset!r}")
