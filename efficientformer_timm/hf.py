"""transformers' EfficientFormer API on transformers 5 (the ``hf`` extra).

transformers documented ``EfficientFormerConfig``, ``EfficientFormerImageProcessor``, ``EfficientFormerModel``,
``EfficientFormerForImageClassification`` and ``EfficientFormerForImageClassificationWithTeacher`` up to 4.40.2
and removed them in 5.0. Importing this module defines them again and registers them with ``AutoConfig``,
``AutoModel``, ``AutoModelForImageClassification`` (the head follows ``config.architectures``) and
``AutoImageProcessor`` and adds them to the ``transformers`` namespace, so code written against those docs
(``from transformers import EfficientFormerModel``, ``pipeline(...)``) runs unchanged.

The models are this package's ``EfficientFormer`` (V1): the same blocks and the attention bias that follows the
token grid, so any input size runs. They are registered under module names that mirror 4.40.2's containers
(``efficientformer.encoder.intermediate_stages.<i>.meta4D_layers.blocks.<j>``, ...), so that folders saved by
4.40.2 load and folders saved here load in 4.40.2; the three leaf names that differ are renamed on load and back
on save by transformers' checkpoint conversion mapping.
"""
import sys
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import (AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                          PreTrainedConfig, PreTrainedModel)
from transformers.backbone_utils import BackboneConfigMixin, BackboneMixin
from transformers import initialization as init
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.modeling_outputs import BackboneOutput, BaseModelOutput, ImageClassifierOutput
from transformers.models.auto import image_processing_auto
from transformers.utils import ModelOutput
from timm.layers import LayerScale

from ._bias import relative_offset_index
from .efficientformer import Attention, EfficientFormer
from .transformers_compat import model_args_from_transformers_config

__all__ = [
    'EfficientFormerConfig', 'EfficientFormerImageProcessor', 'EfficientFormerImageProcessorPil',
    'EfficientFormerImageProcessorFast', 'EfficientFormerPreTrainedModel', 'EfficientFormerModel',
    'EfficientFormerForImageClassification', 'EfficientFormerForImageClassificationWithTeacher',
    'EfficientFormerForImageClassificationWithTeacherOutput', 'EfficientFormerBackbone',
]

MODEL_TYPE = 'efficientformer'


class EfficientFormerConfig(BackboneConfigMixin, PreTrainedConfig):
    """transformers 4.40.2's ``EfficientFormerConfig``: the same arguments and code defaults, plus transformers'
    backbone fields (``out_features`` / ``out_indices`` over ``stage_names`` 'stem', 'stage1' ... 'stage4') for
    ``EfficientFormerBackbone``.

    A data holder, as in transformers: it takes every value 4.40.2 took. A model refuses at build time what its
    blocks cannot run, naming the option. ``hidden_size`` (read by the WithTeacher heads, never set by 4.40.2)
    defaults to ``hidden_sizes[-1]``; the default ``architectures`` is ``EfficientFormerForImageClassification``,
    the head 4.40.2's Auto class built when a config named none.
    """
    model_type = MODEL_TYPE

    def __init__(
            self,
            depths: List[int] = (3, 2, 6, 4),
            hidden_sizes: List[int] = (48, 96, 224, 448),
            downsamples: List[bool] = (True, True, True, True),
            dim: int = 448,
            key_dim: int = 32,
            attention_ratio: int = 4,
            resolution: int = 7,
            num_hidden_layers: int = 5,
            num_attention_heads: int = 8,
            mlp_expansion_ratio: int = 4,
            hidden_dropout_prob: float = 0.0,
            patch_size: int = 16,
            num_channels: int = 3,
            pool_size: int = 3,
            downsample_patch_size: int = 3,
            downsample_stride: int = 2,
            downsample_pad: int = 1,
            drop_path_rate: float = 0.0,
            num_meta3d_blocks: int = 1,
            distillation: bool = True,
            use_layer_scale: bool = True,
            layer_scale_init_value: float = 1e-5,
            hidden_act: str = 'gelu',
            initializer_range: float = 0.02,
            layer_norm_eps: float = 1e-12,
            image_size: int = 224,
            batch_norm_eps: float = 1e-05,
            hidden_size: Optional[int] = None,
            out_features: Optional[List[str]] = None,
            out_indices: Optional[List[int]] = None,
            **kwargs,
    ):
        kwargs.setdefault('architectures', ['EfficientFormerForImageClassification'])
        kwargs.pop('stage_names', None)  # derived from depths
        super().__init__(**kwargs)
        self.depths = list(depths)
        self.hidden_sizes = list(hidden_sizes)
        self.downsamples = list(downsamples)
        self.dim = dim
        self.key_dim = key_dim
        self.attention_ratio = attention_ratio
        self.resolution = resolution
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_expansion_ratio = mlp_expansion_ratio
        self.hidden_dropout_prob = hidden_dropout_prob
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.pool_size = pool_size
        self.downsample_patch_size = downsample_patch_size
        self.downsample_stride = downsample_stride
        self.downsample_pad = downsample_pad
        self.drop_path_rate = drop_path_rate
        self.num_meta3d_blocks = num_meta3d_blocks
        self.distillation = distillation
        self.use_layer_scale = use_layer_scale
        self.layer_scale_init_value = layer_scale_init_value
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.image_size = image_size
        self.batch_norm_eps = batch_norm_eps
        self.hidden_size = self.hidden_sizes[-1] if hidden_size is None else hidden_size
        self.stage_names = ['stem'] + [f'stage{i}' for i in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)

    def set_output_features_output_indices(self, out_features, out_indices):
        unknown = [name for name in out_features or [] if name not in self.stage_names]
        if unknown:
            raise ValueError(f'out_features {unknown} are not stages of this EfficientFormer: choose from '
                             f'{self.stage_names}')
        super().set_output_features_output_indices(out_features, out_indices)

    def body_kwargs(self) -> dict:
        """``EfficientFormer`` keyword arguments of this config (without heads); options the blocks cannot honour
        raise ``ValueError`` naming them."""
        _, kwargs = model_args_from_transformers_config(dict(self.to_dict(), architectures=['EfficientFormerModel']))
        kwargs.update(num_classes=0, distillation=False)
        return kwargs

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get('model_type', MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(
                f'{pretrained_model_name_or_path} holds a {model_type!r} config, not an EfficientFormer one '
                f"(model_type must be {MODEL_TYPE!r}): load it with transformers' Auto classes instead")
        return config_dict, kwargs


class _ProcessorDefaults:
    """4.40.2's code defaults (its docs said bilinear and the 'standard' mean / std)."""
    model_input_names = ['pixel_values']
    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {'height': 224, 'width': 224}
    crop_size = {'height': 224, 'width': 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True


class EfficientFormerImageProcessor(_ProcessorDefaults, TorchvisionBackend):
    """4.40.2's preprocessing on transformers 5's default backend (torchvision's resize: faster on batches, within
    about 2e-2 of PIL's pixels). It saves as ``EfficientFormerImageProcessorFast``, so that a folder it wrote
    reloads as this class."""

    def to_dict(self):
        return dict(super().to_dict(), image_processor_type=f'{type(self).__name__}Fast')


class EfficientFormerImageProcessorPil(_ProcessorDefaults, PilBackend):
    """4.40.2's ``EfficientFormerImageProcessor``: same arguments and defaults, PIL resize (pixel-identical).
    ``size`` is ``{'height', 'width'}`` or ``{'shortest_edge'}`` (aspect kept), then a center crop. It saves as
    4.40.2 did (``EfficientFormerImageProcessor``), and ``AutoImageProcessor`` picks it for such folders (4.40.2's
    and the hub's), so the default keeps 4.40.2's exact pixels."""

    @classmethod
    def from_dict(cls, image_processor_dict, **kwargs):
        # AutoImageProcessor resolves every EfficientFormer folder to PIL first (one base name for both
        # backends): a folder the torchvision class wrote comes back as that class
        if str(image_processor_dict.get('image_processor_type', '')).endswith('Fast'):
            return EfficientFormerImageProcessor.from_dict(image_processor_dict, **kwargs)
        return super().from_dict(image_processor_dict, **kwargs)


# the names transformers 4.x used for the torchvision backend
EfficientFormerImageProcessorFast = EfficientFormerImageProcessor


# ---- models: this package's EfficientFormer, its modules registered under 4.40.2's container names ----

# 4.40.2 leaf name -> ours; everything else is placed by the containers below
_RENAMES = [('layer_scale_1', 'ls1.gamma'), ('layer_scale_2', 'ls2.gamma'),
            ('token_mixer.projection', 'token_mixer.proj')]


def _container(**modules: nn.Module) -> nn.Module:
    container = nn.Module()
    for name, module in modules.items():
        container.add_module(name, module)
    return container


def _blocks(blocks) -> nn.Module:
    return _container(blocks=nn.ModuleList(blocks))


def _meta4d(block: nn.Module) -> nn.Module:
    mlp = block.mlp
    return _container(
        token_mixer=block.token_mixer, ls1=block.ls1, ls2=block.ls2, drop_path=block.drop_path1,
        mlp=_container(convolution1=mlp.fc1, batchnorm_before=mlp.norm1, convolution2=mlp.fc2,
                       batchnorm_after=mlp.norm2, activation=mlp.act, dropout=mlp.drop))


def _meta3d(block: nn.Module) -> nn.Module:
    return _container(
        token_mixer=block.token_mixer, layernorm1=block.norm1, layernorm2=block.norm2, ls1=block.ls1,
        ls2=block.ls2, drop_path=block.drop_path1,
        mlp=_container(linear_in=block.mlp.fc1, activation=block.mlp.act, linear_out=block.mlp.fc2))


def _classifier(in_features: int, num_labels: int) -> nn.Module:
    return nn.Linear(in_features, num_labels) if num_labels > 0 else nn.Identity()


class EfficientFormerPreTrainedModel(PreTrainedModel):
    config_class = EfficientFormerConfig
    base_model_prefix = MODEL_TYPE
    main_input_name = 'pixel_values'
    input_modalities = ('image',)
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if isinstance(module, LayerScale):
            init.constant_(module.gamma, self.config.layer_scale_init_value)
        elif isinstance(module, Attention):
            init.zeros_(module.attention_biases)
            init.copy_(module.attention_bias_idxs, relative_offset_index(module.table_size, module.query_stride))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' ``from_pretrained``; a checkpoint that lacks backbone weights raises instead of leaving
        them at their initialisation (a new classifier head is still initialised, as for fine-tuning)."""
        output_loading_info = kwargs.pop('output_loading_info', False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        head = ('classifier.', 'distillation_classifier.')
        missing = sorted(k for k in info['missing_keys'] if not k.startswith(head))
        if missing:
            raise ValueError(
                f'{pretrained_model_name_or_path} lacks {len(missing)} backbone weights of {cls.__name__} '
                f'(first: {missing[:5]}): the folder is incomplete or was saved for another configuration')
        return (model, info) if output_loading_info else model

    def _pooled_tokens(self, pixel_values, output_attentions, output_hidden_states, return_dict):
        """The heads' input: (return_dict resolved, the base model's outputs, their mean final token)."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.efficientformer(
            pixel_values, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=return_dict)
        return return_dict, outputs, outputs[0].mean(-2)


class EfficientFormerModel(EfficientFormerPreTrainedModel):
    """``last_hidden_state`` (B, N, C) after the final LayerNorm, ``hidden_states`` as 4.40.2 gives them (stem,
    each stage and each downsample, the final tokens), ``attentions`` of the Meta3D blocks: the tensors the outputs
    are computed from, so that ``retain_grad()`` on them gives their gradients."""

    def __init__(self, config: EfficientFormerConfig):
        super().__init__(config)
        body = EfficientFormer(**config.body_kwargs())
        self.__dict__['body'] = body  # runs the forward; its modules are registered below under 4.40.2's names
        stem = body.stem
        self.patch_embed = _container(
            convolution1=stem.conv1, batchnorm_before=stem.norm1, convolution2=stem.conv2,
            batchnorm_after=stem.norm2, activation=stem.act1)
        intermediate = []
        for i, stage in enumerate(body.stages[:-1]):
            intermediate.append(_container(meta4D_layers=_blocks(_meta4d(b) for b in stage.blocks)))
            downsample = body.stages[i + 1].downsample
            if not isinstance(downsample, nn.Identity):
                intermediate.append(_container(projection=downsample.conv, norm=downsample.norm))
        last = body.stages[-1].blocks
        num_conv = len(last) - config.num_meta3d_blocks - 1
        self.encoder = _container(
            intermediate_stages=nn.ModuleList(intermediate),
            last_stage=_container(
                meta4D_layers=_blocks(_meta4d(b) for b in last[:num_conv]), flat=last[num_conv],
                meta3D_layers=_blocks(_meta3d(b) for b in last[num_conv + 1:])))
        self.layernorm = body.norm
        self.post_init()

    def train(self, mode: bool = True):
        super().train(mode)
        self.body.train(mode)
        return self

    def forward(
            self,
            pixel_values: Optional[torch.Tensor] = None,
            output_attentions: Optional[bool] = None,
            output_hidden_states: Optional[bool] = None,
            return_dict: Optional[bool] = None,
            **kwargs,
    ) -> Union[tuple, BaseModelOutput]:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if pixel_values is None:
            raise ValueError('You have to specify pixel_values')

        attentions = [] if output_attentions else None
        hidden_states = self.body.forward_hidden_states(pixel_values, attentions)
        last_hidden_state = self.layernorm(hidden_states[-1])
        hidden_states = tuple(hidden_states) if output_hidden_states else None
        attentions = tuple(attentions) if output_attentions else None
        if not return_dict:
            return tuple(v for v in (last_hidden_state, hidden_states, attentions) if v is not None)
        return BaseModelOutput(
            last_hidden_state=last_hidden_state, hidden_states=hidden_states, attentions=attentions)


class EfficientFormerForImageClassification(EfficientFormerPreTrainedModel):
    """A linear classifier on the mean final token; ``labels`` give the loss 4.40.2 chose (``problem_type``:
    regression for one label, single-label for integer labels, multi-label otherwise)."""

    def __init__(self, config: EfficientFormerConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.efficientformer = EfficientFormerModel(config)
        self.classifier = _classifier(config.hidden_sizes[-1], config.num_labels)
        self.post_init()

    def forward(
            self,
            pixel_values: Optional[torch.Tensor] = None,
            labels: Optional[torch.Tensor] = None,
            output_attentions: Optional[bool] = None,
            output_hidden_states: Optional[bool] = None,
            return_dict: Optional[bool] = None,
            **kwargs,
    ) -> Union[tuple, ImageClassifierOutput]:
        return_dict, outputs, pooled = self._pooled_tokens(
            pixel_values, output_attentions, output_hidden_states, return_dict)
        logits = self.classifier(pooled)
        loss = None if labels is None else self._loss(logits, labels)
        if not return_dict:
            output = (logits,) + tuple(outputs[1:])
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = 'regression'
            elif self.num_labels > 1 and labels.dtype in (torch.long, torch.int):
                self.config.problem_type = 'single_label_classification'
            else:
                self.config.problem_type = 'multi_label_classification'
        if self.config.problem_type == 'regression':
            if self.num_labels == 1:
                return MSELoss()(logits.squeeze(), labels.squeeze())
            return MSELoss()(logits, labels)
        if self.config.problem_type == 'single_label_classification':
            return CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
        return BCEWithLogitsLoss()(logits, labels)


@dataclass
class EfficientFormerForImageClassificationWithTeacherOutput(ModelOutput):
    """``logits``: the mean of ``cls_logits`` and ``distillation_logits``."""
    logits: Optional[torch.FloatTensor] = None
    cls_logits: Optional[torch.FloatTensor] = None
    distillation_logits: Optional[torch.FloatTensor] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    attentions: Optional[Tuple[torch.FloatTensor, ...]] = None


class EfficientFormerForImageClassificationWithTeacher(EfficientFormerPreTrainedModel):
    """Class and distillation heads on the mean final token (inference, as in 4.40.2)."""

    def __init__(self, config: EfficientFormerConfig):
        if config.hidden_size != config.hidden_sizes[-1]:
            raise ValueError(
                f'EfficientFormerForImageClassificationWithTeacher reads hidden_size={config.hidden_size} as its '
                f'input width, but the last stage gives hidden_sizes[-1]={config.hidden_sizes[-1]} '
                '(4.40.2 built these heads and failed at the first forward): make them equal')
        super().__init__(config)
        self.num_labels = config.num_labels
        self.efficientformer = EfficientFormerModel(config)
        self.classifier = _classifier(config.hidden_size, config.num_labels)
        self.distillation_classifier = _classifier(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
            self,
            pixel_values: Optional[torch.Tensor] = None,
            output_attentions: Optional[bool] = None,
            output_hidden_states: Optional[bool] = None,
            return_dict: Optional[bool] = None,
            **kwargs,
    ) -> Union[tuple, EfficientFormerForImageClassificationWithTeacherOutput]:
        return_dict, outputs, pooled = self._pooled_tokens(
            pixel_values, output_attentions, output_hidden_states, return_dict)
        cls_logits = self.classifier(pooled)
        distillation_logits = self.distillation_classifier(pooled)
        logits = (cls_logits + distillation_logits) / 2
        if not return_dict:
            return (logits, cls_logits, distillation_logits) + tuple(outputs[1:])
        return EfficientFormerForImageClassificationWithTeacherOutput(
            logits=logits, cls_logits=cls_logits, distillation_logits=distillation_logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class EfficientFormerBackbone(BackboneMixin, EfficientFormerModel):
    """transformers' backbone API (``AutoBackbone``, the ``backbone_config`` of UperNet, Mask2Former, DPT, ...):
    ``feature_maps`` are the NCHW outputs of the stages in ``config.out_features`` (the last stage's tokens
    reshaped to their grid), at strides 4 ('stem', 'stage1'), 8, 16, 32, for any input of at least 64 pixels a
    side; ``hidden_states`` are all five. The modules carry ``EfficientFormerModel``'s names, so the weights of
    a classification folder load (its final LayerNorm and heads are not part of the backbone)."""
    has_attentions = False

    def __init__(self, config: EfficientFormerConfig):
        super().__init__(config)
        del self.layernorm  # the classification output's norm; the feature maps are the stages' own
        widths = config.hidden_sizes
        self.num_features = [widths[0]] + list(widths)

    def forward(
            self,
            pixel_values: torch.Tensor,
            output_hidden_states: Optional[bool] = None,
            output_attentions: Optional[bool] = None,
            return_dict: Optional[bool] = None,
            **kwargs,
    ) -> Union[tuple, BackboneOutput]:
        if output_attentions:
            raise ValueError('EfficientFormerBackbone returns no attentions: use EfficientFormerModel for them')
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        body = self.body
        body._check_input(pixel_values)
        x = body.stem(pixel_values)
        hidden_states = [x]
        for stage in body.stages:
            x, grid = stage.forward_with_grid(x)
            hidden_states.append(stage.to_map(x, grid))
        feature_maps = tuple(h for name, h in zip(self.stage_names, hidden_states) if name in self.out_features)
        hidden_states = tuple(hidden_states) if output_hidden_states else None
        if not return_dict:
            return (feature_maps,) + ((hidden_states,) if hidden_states is not None else ())
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states)


def _register() -> None:
    AutoConfig.register(MODEL_TYPE, EfficientFormerConfig, exist_ok=True)
    AutoModel.register(EfficientFormerConfig, EfficientFormerModel, exist_ok=True)
    AutoModelForImageClassification.register(
        EfficientFormerConfig,
        (EfficientFormerForImageClassification, EfficientFormerForImageClassificationWithTeacher), exist_ok=True)
    AutoImageProcessor.register(
        EfficientFormerConfig, exist_ok=True,
        image_processor_classes={'pil': EfficientFormerImageProcessorPil,
                                 'torchvision': EfficientFormerImageProcessor})
    AutoBackbone.register(EfficientFormerConfig, EfficientFormerBackbone, exist_ok=True)
    # 4.40.2's folders name 'EfficientFormerImageProcessor': keep its PIL resize, not torchvision's
    pil_default = image_processing_auto.DEFAULT_TO_PIL_BACKEND_IMAGE_PROCESSORS
    if EfficientFormerImageProcessor.__name__ not in pil_default:
        pil_default.append(EfficientFormerImageProcessor.__name__)
    register_checkpoint_conversion_mapping(
        MODEL_TYPE, [WeightRenaming(source, target) for source, target in _RENAMES], overwrite=True)
    # the documented imports (`from transformers import EfficientFormerModel`) work again; transformers' lazy
    # module may have been replaced in sys.modules while its submodules loaded
    namespace = sys.modules['transformers']
    for name in __all__:
        if not hasattr(namespace, name):
            setattr(namespace, name, globals()[name])


_register()
