"""Checkpoint layouts: timm (the models' own keys), the authors' original release and transformers 4.x.

Each foreign layout is one table of parts, ``(foreign prefix, timm prefix, renames inside the part)``, read
left to right to convert to timm keys and right to left to convert back. Prefix templates hold numbers:
``{s}`` a stage, ``{b}`` a block, ``{2s-1}`` a number computed from one (the authors' ``network.N`` interleaves
stages and downsamples). Renames are ``(foreign, timm)`` pairs of dotted names; the longest one that is the key
inside the part, or a dotted prefix of it, applies.
"""
import math
import re
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .._bias import relative_offset_index
from ..variants import model_name_from_widths
from .report import CheckpointError

__all__ = [
    'detect_format', 'original_to_timm', 'timm_to_original', 'transformers_to_timm', 'timm_to_transformers',
    'to_timm_keys', 'infer_model_name', 'v2_bias_index',
]

Renames = Sequence[Tuple[str, str]]
Part = Tuple[str, str, Renames]


def is_v2(state_dict: Dict[str, torch.Tensor]) -> bool:
    return any('.mid.' in k or '.mid_norm.' in k or 'talking_head' in k or k.startswith('stem.conv1.conv')
               for k in state_dict)


def detect_format(state_dict: Dict[str, torch.Tensor]) -> str:
    """'timm', 'original' or 'transformers'; raises CheckpointError when the keys match none."""
    keys = list(state_dict)
    if any(k.startswith(('stem.', 'stages.')) for k in keys):
        return 'timm'
    if any(k.startswith(('patch_embed.0.', 'network.')) for k in keys):
        return 'original'
    if any(k.startswith(('efficientformer.', 'encoder.intermediate_stages.', 'patch_embed.convolution1'))
           for k in keys):
        return 'transformers'
    raise CheckpointError(
        'not an EfficientFormer checkpoint: no key starts with stem./stages. (timm), patch_embed./network. '
        f'(original release) or efficientformer. (transformers); first keys: {keys[:5]}')


# ---- the machinery: prefix templates and renames, in either direction ----

_FIELD = re.compile(r'\{(\d*)([a-z]+)([+-]\d+)?\}')  # {s}, {2s}, {2s-1}, {b+5}: value = k * var + c


@lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    pattern, pos = '', 0
    for m in _FIELD.finditer(template):
        pattern += re.escape(template[pos:m.start()]) + r'(\d+)'
        pos = m.end()
    return re.compile('^' + pattern + re.escape(template[pos:]))


def _match(template: str, key: str) -> Optional[Tuple[Dict[str, int], str]]:
    """The variables a key's prefix gives ``template``, and the rest of the key; None if it does not fit."""
    m = _template_regex(template).match(key)
    if not m:
        return None
    variables = {}
    for field, text in zip(_FIELD.finditer(template), m.groups()):
        k, var, c = int(field.group(1) or 1), field.group(2), int(field.group(3) or 0)
        value, remainder = divmod(int(text) - c, k)
        if remainder or value < 0 or variables.setdefault(var, value) != value:
            return None
    return variables, key[m.end():]


def _fill(template: str, variables: Dict[str, int]) -> str:
    return _FIELD.sub(lambda f: str(int(f.group(1) or 1) * variables[f.group(2)] + int(f.group(3) or 0)),
                      template)


def _rename(name: str, renames: Renames, reverse: bool) -> str:
    src, dst = (1, 0) if reverse else (0, 1)
    fits = [pair for pair in renames if name == pair[src] or name.startswith(pair[src] + '.')]
    if not fits:
        return name
    pair = max(fits, key=lambda p: len(p[src]))
    return pair[dst] + name[len(pair[src]):]


def _convert_key(key: str, parts: Sequence[Part], reverse: bool) -> Optional[str]:
    for foreign, timm_prefix, renames in parts:
        src, dst = (timm_prefix, foreign) if reverse else (foreign, timm_prefix)
        found = _match(src, key)
        if found:
            variables, rest = found
            return _fill(dst, variables) + _rename(rest, renames, reverse)
    return None


# ---- the authors' original release: patch_embed.*, network.N (even N: stage N/2, odd N: downsample) ----

_LAYER_SCALES = (('layer_scale_1', 'ls1.gamma'), ('layer_scale_2', 'ls2.gamma'))
_V2_ATTENTION = tuple(
    (f'{m}.{i}', f'{m}.{part}') for m in ('q', 'k', 'v', 'v_local', 'stride_conv')
    for i, part in ((0, 'conv'), (1, 'bn'))) + (
    ('q.local.0', 'q.local'), ('q.proj.0', 'q.proj.conv'), ('q.proj.1', 'q.proj.bn'),
    ('proj.1', 'proj.conv'), ('proj.2', 'proj.bn'))
_V2_BLOCK = _LAYER_SCALES + (
    ('mlp.fc1', 'mlp.fc1.conv'), ('mlp.norm1', 'mlp.fc1.bn'), ('mlp.mid', 'mlp.mid.conv'),
    ('mlp.mid_norm', 'mlp.mid.bn'), ('mlp.fc2', 'mlp.fc2.conv'), ('mlp.norm2', 'mlp.fc2.bn'),
) + tuple((f'token_mixer.{a}', f'token_mixer.{b}') for a, b in _V2_ATTENTION)
_HEADS: Tuple[Part, ...] = (('dist_head.', 'head_dist.', ()), ('head.', 'head.', ()), ('norm.', 'norm.', ()))
_V2_ATTENTION_DOWNSAMPLE_STAGE = 3  # V2's last downsample adds an attention branch (and names its conv conv/bn)

ORIGINAL_PARTS: Dict[bool, Tuple[Part, ...]] = {  # keyed by "is V2"
    False: (
        ('patch_embed.', 'stem.', (('0', 'conv1'), ('1', 'norm1'), ('3', 'conv2'), ('4', 'norm2'))),
        ('network.{2s}.{b}.', 'stages.{s}.blocks.{b}.', _LAYER_SCALES),
        ('network.{2s-1}.', 'stages.{s}.downsample.', (('proj', 'conv'),)),
        ('norm{2s}.', 'feature_norms.{s}.', ()),  # the detection / segmentation backbones' output norms
    ) + _HEADS,
    True: (
        ('patch_embed.', 'stem.', (('0', 'conv1.conv'), ('1', 'conv1.bn'), ('3', 'conv2.conv'), ('4', 'conv2.bn'))),
        ('network.{2s}.{b}.', 'stages.{s}.blocks.{b}.', _V2_BLOCK),
        (f'network.{2 * _V2_ATTENTION_DOWNSAMPLE_STAGE - 1}.', f'stages.{_V2_ATTENTION_DOWNSAMPLE_STAGE}.downsample.',
         (('conv', 'conv.conv'), ('bn', 'conv.bn')) + tuple((f'attn.{a}', f'attn.{b}') for a, b in _V2_ATTENTION)),
        ('network.{2s-1}.', 'stages.{s}.downsample.', (('proj', 'conv.conv'), ('norm', 'conv.bn'))),
        ('norm{2s}.', 'feature_norms.{s}.', ()),
    ) + _HEADS,
}


def _layer_scale_shape(key: str, value: torch.Tensor, to_original: bool) -> torch.Tensor:
    """V2's release stores layer scales as (C, 1, 1), timm as (C,)."""
    if re.search(r'(layer_scale_\d|ls\d\.gamma)$', key):
        return value.reshape(-1, 1, 1) if to_original else value.reshape(-1)
    return value


def v2_bias_index(biases_key: str, biases: torch.Tensor) -> torch.Tensor:
    """The relative-offset index V2's release saves beside ``biases`` (square table; the attention
    downsample's queries sit on every second position)."""
    side = math.isqrt(biases.shape[1])
    return relative_offset_index((side, side), 2 if 'downsample.attn' in biases_key else 1)


def original_to_timm(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Authors' release -> timm keys. Returns (converted, unknown source keys)."""
    v2 = is_v2(state_dict)
    out, unknown = {}, []
    for key, value in state_dict.items():
        new_key = _convert_key(key, ORIGINAL_PARTS[v2], reverse=False)
        if new_key is None:
            unknown.append(key)
        else:
            out[new_key] = _layer_scale_shape(new_key, value, to_original=False) if v2 else value
    return out, unknown


def timm_to_original(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """timm keys -> the authors' release layout (inverse of ``original_to_timm``).

    V2's attention index buffers, which timm derives instead of saving, are regenerated as the release has them.
    """
    v2 = is_v2(state_dict)
    out = {}
    for key, value in state_dict.items():
        orig = _convert_key(key, ORIGINAL_PARTS[v2], reverse=True)
        if orig is None:
            raise CheckpointError(f'no original-release key for {key!r}')
        out[orig] = _layer_scale_shape(orig, value, to_original=True) if v2 else value
        if v2 and key.endswith('attention_biases'):
            out[orig[:-len('attention_biases')] + 'attention_bias_idxs'] = v2_bias_index(key, value)
    return out


# ---- transformers 4.x (V1 only): efficientformer.patch_embed / encoder.intermediate_stages / last_stage ----

_TRANSFORMERS_META4D = _LAYER_SCALES + (
    ('mlp.convolution1', 'mlp.fc1'), ('mlp.batchnorm_before', 'mlp.norm1'),
    ('mlp.convolution2', 'mlp.fc2'), ('mlp.batchnorm_after', 'mlp.norm2'))
_TRANSFORMERS_META3D = _LAYER_SCALES + (
    ('mlp.linear_in', 'mlp.fc1'), ('mlp.linear_out', 'mlp.fc2'), ('layernorm1', 'norm1'), ('layernorm2', 'norm2'),
    ('token_mixer.projection', 'token_mixer.proj'))
_TRANSFORMERS_BASE = 'efficientformer.'  # the base model's prefix inside the classification models


def _transformers_parts(last: int, num_last_conv: int) -> Tuple[Part, ...]:
    """The parts for a model whose last stage (index ``last``) has ``num_last_conv`` conv blocks, then timm's
    Flat (one slot in timm's block list, none in transformers'), then the attention blocks."""
    base = _TRANSFORMERS_BASE
    return (
        (base + 'patch_embed.', 'stem.', (('convolution1', 'conv1'), ('batchnorm_before', 'norm1'),
                                          ('convolution2', 'conv2'), ('batchnorm_after', 'norm2'))),
        (base + 'encoder.last_stage.meta3D_layers.blocks.{b}.', f'stages.{last}.blocks.{{b+{num_last_conv + 1}}}.',
         _TRANSFORMERS_META3D),
        (base + 'encoder.last_stage.meta4D_layers.blocks.{b}.', f'stages.{last}.blocks.{{b}}.', _TRANSFORMERS_META4D),
        (base + 'encoder.intermediate_stages.{2s}.meta4D_layers.blocks.{b}.', 'stages.{s}.blocks.{b}.',
         _TRANSFORMERS_META4D),
        (base + 'encoder.intermediate_stages.{2s-1}.', 'stages.{s}.downsample.', (('projection', 'conv'),)),
        (base + 'layernorm.', 'norm.', ()),
        ('classifier.', 'head.', ()), ('distillation_classifier.', 'head_dist.', ()),
    )


def transformers_to_timm(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """transformers EfficientFormer* keys (with or without the base model's prefix) -> timm keys.
    Returns (converted, unknown source keys)."""
    keys = {k: k if k.startswith(('classifier.', 'distillation_classifier.')) or k.startswith(_TRANSFORMERS_BASE)
            else _TRANSFORMERS_BASE + k for k in state_dict}
    stages = {int(m.group(1)) // 2 for k in keys.values()
              if (m := re.match(r'efficientformer\.encoder\.intermediate_stages\.(\d+)\.', k))}
    last_conv = {m.group(1) for k in keys.values()
                 if (m := re.match(r'efficientformer\.encoder\.last_stage\.meta4D_layers\.blocks\.(\d+)\.', k))}
    parts = _transformers_parts(len(stages), len(last_conv))
    out, unknown = {}, []
    for src_key, key in keys.items():
        new_key = _convert_key(key, parts, reverse=False)
        if new_key is None:
            unknown.append(src_key)
        else:
            out[new_key] = state_dict[src_key]
    return out, unknown


def timm_to_transformers(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """timm keys of a V1 model -> the keys of transformers' ``EfficientFormerForImageClassification(WithTeacher)``
    (inverse of ``transformers_to_timm``)."""
    if is_v2(state_dict):
        raise CheckpointError('transformers has no EfficientFormerV2: only V1 checkpoints convert to its layout')
    last = max(int(m.group(1)) for k in state_dict if (m := re.match(r'stages\.(\d+)\.', k)))
    attention_blocks = [int(m.group(1)) for k in state_dict
                        if (m := re.match(rf'stages\.{last}\.blocks\.(\d+)\.token_mixer\.', k))]
    parts = _transformers_parts(last, min(attention_blocks) - 1)
    out = {}
    for key, value in state_dict.items():
        new_key = _convert_key(key, parts, reverse=True)
        if new_key is None:
            raise CheckpointError(f'no transformers key for {key!r}')
        out[new_key] = value
    return out


# ---- any layout ----

def to_timm_keys(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str], str]:
    """(timm-keyed state dict, source keys of no known place, detected format)."""
    fmt = detect_format(state_dict)
    if fmt == 'original':
        out, unknown = original_to_timm(state_dict)
    elif fmt == 'transformers':
        out, unknown = transformers_to_timm(state_dict)
    else:
        out, unknown = dict(state_dict), []
    return out, unknown, fmt


def infer_model_name(state_dict: Dict[str, torch.Tensor]) -> str:
    """The registered model name a checkpoint (any format) was made for, from its widths."""
    sd = to_timm_keys(state_dict)[0]
    widths = []
    for stage in range(4):  # any block's layer scale: in L7 the last stage's block 0 is Flat
        w = [v for k, v in sd.items() if re.match(rf'stages\.{stage}\.blocks\.\d+\.ls2\.gamma$', k)]
        widths.append(w[0].numel() if w else None)
    name = model_name_from_widths(widths, is_v2(sd))
    if name is not None:
        return name
    raise CheckpointError(f'checkpoint stage widths {widths} match no EfficientFormer variant')
