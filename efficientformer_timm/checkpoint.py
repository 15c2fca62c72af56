"""Checkpoint formats: timm, the authors' original release and transformers, detected from the keys.

``convert_state_dict(state_dict, model)`` maps any of them to the model's own (timm) keys and checks the
result against the model: a tensor that lands nowhere, a missing tensor or a wrong shape raises
``CheckpointError`` naming the keys. The few deliberate exceptions are logged, never silent:
per-output feature norms absent from a classification checkpoint are kept at their identity-like
initialisation, and classifier heads are dropped when the model has none.
"""
import contextlib
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from timm.models import adapt_input_conv
from timm.models._features import FeatureDictNet
from torch import nn

from ._bias import relative_offset_index
from .variants import model_name_from_widths

_logger = logging.getLogger(__name__)

__all__ = [
    'CheckpointError', 'LoadReport', 'detect_format', 'original_to_timm', 'timm_to_original',
    'transformers_to_timm', 'infer_model_name', 'convert_state_dict', 'read_file', 'unwrap_state_dict',
    'read_checkpoint', 'load_checkpoint', 'atomic_output',
]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model, or cannot be read."""


@dataclass
class LoadReport:
    source_format: str
    loaded: List[str] = field(default_factory=list)
    initialised: List[str] = field(default_factory=list)  # model tensors the checkpoint does not have
    dropped: List[str] = field(default_factory=list)  # checkpoint tensors the model does not use
    skipped: List[str] = field(default_factory=list)  # strict=False only: mismatches left out


def _is_v2(state_dict: Dict[str, torch.Tensor]) -> bool:
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


# ---- the authors' original release: patch_embed.*, network.N (even N: stage N/2, odd N: downsample) ----

_V1_BLOCK_RENAMES = [(r'layer_scale_(\d)$', r'ls\1.gamma')]
_V2_BLOCK_RENAMES = [
    (r'layer_scale_(\d)$', r'ls\1.gamma'),
    (r'mlp\.fc1\.', 'mlp.fc1.conv.'), (r'mlp\.norm1\.', 'mlp.fc1.bn.'),
    (r'mlp\.mid\.', 'mlp.mid.conv.'), (r'mlp\.mid_norm\.', 'mlp.mid.bn.'),
    (r'mlp\.fc2\.', 'mlp.fc2.conv.'), (r'mlp\.norm2\.', 'mlp.fc2.bn.'),
]
_V2_ATTN_RENAMES = [
    (r'q\.local\.0\.', 'q.local.'), (r'q\.proj\.0\.', 'q.proj.conv.'), (r'q\.proj\.1\.', 'q.proj.bn.'),
    (r'^(q|k|v|v_local|stride_conv)\.0\.', r'\1.conv.'), (r'^(q|k|v|v_local|stride_conv)\.1\.', r'\1.bn.'),
    (r'^proj\.1\.', 'proj.conv.'), (r'^proj\.2\.', 'proj.bn.'),
]
_STEM = {
    False: {'patch_embed.0.': 'stem.conv1.', 'patch_embed.1.': 'stem.norm1.',
            'patch_embed.3.': 'stem.conv2.', 'patch_embed.4.': 'stem.norm2.'},
    True: {'patch_embed.0.': 'stem.conv1.conv.', 'patch_embed.1.': 'stem.conv1.bn.',
           'patch_embed.3.': 'stem.conv2.conv.', 'patch_embed.4.': 'stem.conv2.bn.'},
}
_HEADS = {'dist_head.': 'head_dist.', 'head.': 'head.', 'norm.': 'norm.'}
# attention modules whose index buffer timm does not save (derived from the table size)
_V2_DERIVED = re.compile(r'(token_mixer|downsample\.attn)\.attention_bias_idxs$')


def _apply(renames, name: str) -> str:
    for pattern, repl in renames:
        name = re.sub(pattern, repl, name)
    return name


def _original_key_to_timm(key: str, v2: bool) -> Optional[str]:
    for src, dst in _STEM[v2].items():
        if key.startswith(src):
            return dst + key[len(src):]
    for src, dst in _HEADS.items():
        if key.startswith(src):
            return dst + key[len(src):]
    m = re.match(r'norm(\d)\.(.+)$', key)  # dense backbone: one norm per output, after network.0/2/4/6
    if m:
        return f'feature_norms.{int(m.group(1)) // 2}.{m.group(2)}'
    m = re.match(r'network\.(\d+)\.(.+)$', key)
    if not m:
        return None
    net_idx, rest = int(m.group(1)), m.group(2)
    if net_idx % 2 == 0:
        block, rest = rest.split('.', 1)
        if v2 and rest.startswith('token_mixer.'):
            rest = 'token_mixer.' + _apply(_V2_ATTN_RENAMES, rest[len('token_mixer.'):])
        rest = _apply(_V2_BLOCK_RENAMES if v2 else _V1_BLOCK_RENAMES, rest)
        return f'stages.{net_idx // 2}.blocks.{block}.{rest}'
    prefix = f'stages.{(net_idx + 1) // 2}.downsample.'
    if not v2:
        return prefix + rest.replace('proj.', 'conv.', 1) if rest.startswith('proj.') else prefix + rest
    if rest.startswith('attn.'):
        return prefix + 'attn.' + _apply(_V2_ATTN_RENAMES, rest[len('attn.'):])
    rest = re.sub(r'^(proj|conv)\.', 'conv.conv.', rest)
    return prefix + re.sub(r'^(norm|bn)\.', 'conv.bn.', rest)


def original_to_timm(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Authors' release -> timm keys. Returns (converted, unknown source keys)."""
    v2 = _is_v2(state_dict)
    out, unknown = {}, []
    for key, value in state_dict.items():
        new_key = _original_key_to_timm(key, v2)
        if new_key is None:
            unknown.append(key)
            continue
        if new_key.endswith(('ls1.gamma', 'ls2.gamma')):
            value = value.reshape(-1)  # V2 stores (C, 1, 1)
        out[new_key] = value
    return out, unknown


def timm_to_original(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """timm keys -> the authors' release layout (inverse of ``original_to_timm``).

    V2's attention index buffers, which timm derives instead of saving, are regenerated as the release has them.
    """
    v2 = _is_v2(state_dict)
    out = {}
    for key, value in state_dict.items():
        orig = _timm_key_to_original(key, v2)
        if v2 and re.search(r'layer_scale_\d$', orig):
            value = value.reshape(-1, 1, 1)
        out[orig] = value
        if v2 and key.endswith('attention_biases'):
            out[orig[:-len('attention_biases')] + 'attention_bias_idxs'] = _v2_bias_index(key, value)
    return out


def _v2_bias_index(biases_key: str, biases: torch.Tensor) -> torch.Tensor:
    """The relative-offset index V2's release saves beside ``biases`` (square table; the attention
    downsample's queries sit on every second position)."""
    side = math.isqrt(biases.shape[1])
    return relative_offset_index((side, side), 2 if 'downsample.attn' in biases_key else 1)


def _timm_key_to_original(key: str, v2: bool) -> str:
    for dst, src in _STEM[v2].items():
        if key.startswith(src):
            return dst + key[len(src):]
    for dst, src in _HEADS.items():
        if key.startswith(src):
            return dst + key[len(src):]
    m = re.match(r'feature_norms\.(\d)\.(.+)$', key)
    if m:
        return f'norm{int(m.group(1)) * 2}.{m.group(2)}'
    m = re.match(r'stages\.(\d+)\.blocks\.(\d+)\.(.+)$', key)
    if m:
        stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
        rest = re.sub(r'ls(\d)\.gamma$', r'layer_scale_\1', rest)
        if v2:
            rest = (rest.replace('mlp.fc1.conv.', 'mlp.fc1.').replace('mlp.fc1.bn.', 'mlp.norm1.')
                    .replace('mlp.mid.conv.', 'mlp.mid.').replace('mlp.mid.bn.', 'mlp.mid_norm.')
                    .replace('mlp.fc2.conv.', 'mlp.fc2.').replace('mlp.fc2.bn.', 'mlp.norm2.'))
            if rest.startswith('token_mixer.'):
                rest = 'token_mixer.' + _timm_attn_to_original(rest[len('token_mixer.'):])
        return f'network.{stage * 2}.{block}.{rest}'
    m = re.match(r'stages\.(\d+)\.downsample\.(.+)$', key)
    if not m:
        raise CheckpointError(f'no original-release key for {key!r}')
    net_idx, rest = int(m.group(1)) * 2 - 1, m.group(2)
    if not v2:
        return f'network.{net_idx}.' + ('proj.' + rest[len('conv.'):] if rest.startswith('conv.') else rest)
    if rest.startswith('attn.'):
        return f'network.{net_idx}.attn.' + _timm_attn_to_original(rest[len('attn.'):])
    # V2 Embedding: plain ``proj/norm``, or ``conv/bn`` when it also has an attention branch
    asub = int(m.group(1)) >= 3
    conv, norm = ('conv', 'bn') if asub else ('proj', 'norm')
    rest = re.sub(r'^conv\.conv\.', conv + '.', rest)
    return f'network.{net_idx}.' + re.sub(r'^conv\.bn\.', norm + '.', rest)


def _timm_attn_to_original(rest: str) -> str:
    if rest.startswith('q.local.'):
        return 'q.local.0.' + rest[len('q.local.'):]
    rest = re.sub(r'^q\.proj\.conv\.', 'q.proj.0.', rest)
    rest = re.sub(r'^q\.proj\.bn\.', 'q.proj.1.', rest)
    rest = re.sub(r'^(q|k|v|v_local|stride_conv)\.conv\.', r'\1.0.', rest)
    rest = re.sub(r'^(q|k|v|v_local|stride_conv)\.bn\.', r'\1.1.', rest)
    rest = re.sub(r'^proj\.conv\.', 'proj.1.', rest)
    return re.sub(r'^proj\.bn\.', 'proj.2.', rest)


# ---- transformers (V1 only): efficientformer.patch_embed / encoder.intermediate_stages / last_stage ----

_HF_RENAMES = [
    (r'layer_scale_(\d)$', r'ls\1.gamma'),
    (r'mlp\.convolution1\.', 'mlp.fc1.'), (r'mlp\.batchnorm_before\.', 'mlp.norm1.'),
    (r'mlp\.convolution2\.', 'mlp.fc2.'), (r'mlp\.batchnorm_after\.', 'mlp.norm2.'),
    (r'mlp\.linear_in\.', 'mlp.fc1.'), (r'mlp\.linear_out\.', 'mlp.fc2.'),
    (r'layernorm(\d)\.', r'norm\1.'), (r'token_mixer\.projection\.', 'token_mixer.proj.'),
]
_HF_TOP = {
    'patch_embed.convolution1.': 'stem.conv1.', 'patch_embed.batchnorm_before.': 'stem.norm1.',
    'patch_embed.convolution2.': 'stem.conv2.', 'patch_embed.batchnorm_after.': 'stem.norm2.',
    'layernorm.': 'norm.', 'classifier.': 'head.', 'distillation_classifier.': 'head_dist.',
}


def transformers_to_timm(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """transformers EfficientFormer* keys -> timm keys. Returns (converted, unknown source keys)."""
    keys = [k[len('efficientformer.'):] if k.startswith('efficientformer.') else k for k in state_dict]
    num_stages = 1 + len({int(m.group(1)) // 2 for k in keys
                          if (m := re.match(r'encoder\.intermediate_stages\.(\d+)\.', k))})
    last = num_stages - 1
    num_last_conv = len({m.group(1) for k in keys
                         if (m := re.match(r'encoder\.last_stage\.meta4D_layers\.blocks\.(\d+)\.', k))})
    out, unknown = {}, []
    for src_key, key in zip(state_dict, keys):
        new_key = None
        for src, dst in _HF_TOP.items():
            if key.startswith(src):
                new_key = dst + key[len(src):]
        m = re.match(r'encoder\.intermediate_stages\.(\d+)\.(.+)$', key)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            if idx % 2 == 0:
                rest = re.sub(r'^meta4D_layers\.blocks\.', '', rest)
                new_key = f'stages.{idx // 2}.blocks.' + _apply(_HF_RENAMES, rest)
            else:
                rest = re.sub(r'^projection\.', 'conv.', rest)
                new_key = f'stages.{(idx + 1) // 2}.downsample.{rest}'
        m = re.match(r'encoder\.last_stage\.meta4D_layers\.blocks\.(\d+)\.(.+)$', key)
        if m:
            new_key = f'stages.{last}.blocks.{m.group(1)}.' + _apply(_HF_RENAMES, m.group(2))
        m = re.match(r'encoder\.last_stage\.meta3D_layers\.blocks\.(\d+)\.(.+)$', key)
        if m:  # Flat takes one slot in timm's block list before the first Meta3D block
            block = num_last_conv + 1 + int(m.group(1))
            new_key = f'stages.{last}.blocks.{block}.' + _apply(_HF_RENAMES, m.group(2))
        if new_key is None:
            unknown.append(src_key)
        else:
            out[new_key] = state_dict[src_key]
    return out, unknown


# ---- variant inference and checking against a model ----

def infer_model_name(state_dict: Dict[str, torch.Tensor]) -> str:
    """The registered model name a checkpoint (any format) was made for, from its widths."""
    sd = to_timm_keys(state_dict)[0]
    v2 = _is_v2(sd)
    widths = []
    for stage in range(4):  # any block's layer scale: in L7 the last stage's block 0 is Flat
        w = [v for k, v in sd.items() if re.match(rf'stages\.{stage}\.blocks\.\d+\.ls2\.gamma$', k)]
        widths.append(w[0].numel() if w else None)
    name = model_name_from_widths(widths, v2)
    if name is not None:
        return name
    raise CheckpointError(f'checkpoint stage widths {widths} match no EfficientFormer variant')


def to_timm_keys(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str], str]:
    fmt = detect_format(state_dict)
    if fmt == 'original':
        out, unknown = original_to_timm(state_dict)
    elif fmt == 'transformers':
        out, unknown = transformers_to_timm(state_dict)
    else:
        out, unknown = dict(state_dict), []
    return out, unknown, fmt


# timm's FeatureListNet (V2 features_only) flattens the stem and stages: ``stem.conv1.`` is ``stem_conv1.``
_FLAT_PREFIX = re.compile(r'^(stem|stages)[._](\w+)\.')


def _flatten_key(key: str) -> str:
    return _FLAT_PREFIX.sub(r'\1_\2.', key)


def _unflatten_key(key: str) -> str:
    return _FLAT_PREFIX.sub(r'\1.\2.', key)


def _num_stages(model: nn.Module) -> int:
    if isinstance(model, FeatureDictNet):
        return sum(1 for name in model.keys() if name.startswith('stages_'))
    return len(model.stages)


def _pruned(key: str, model: nn.Module) -> bool:
    """Key of a part that a features_only model does not build (pruned stages, norms and heads)."""
    m = re.match(r'stages\.(\d+)\.', key)
    if m:
        return int(m.group(1)) >= _num_stages(model)
    if isinstance(model, FeatureDictNet):  # only the stem and the stages up to the last output
        return key.startswith(('norm.', 'feature_norms.'))
    m = re.match(r'feature_norms\.(\d+)\.', key)
    if m:
        norms = getattr(model, 'feature_norms', None)
        return norms is None or isinstance(norms[int(m.group(1))], nn.Identity)
    return key.startswith('norm.') and isinstance(model.norm, nn.Identity)


_FIRST_CONV = ('stem.conv1.weight', 'stem.conv1.conv.weight')  # V1, V2


def _other_in_chans(key: str, value: torch.Tensor, target: torch.Tensor) -> bool:
    """The stem's first conv made for another number of input channels (the rest of its shape equal)."""
    return key in _FIRST_CONV and value.ndim == 4 and value.shape[:1] + value.shape[2:] == target.shape[:1] + \
        target.shape[2:]


def convert_state_dict(
        state_dict: Dict[str, torch.Tensor], model: nn.Module, strict: bool = True,
        report: Optional[LoadReport] = None, pass_other_classifier: bool = False) -> Dict[str, torch.Tensor]:
    """Map ``state_dict`` (any supported format) onto ``model``'s keys, checked against the model.

    strict=True raises CheckpointError for any unknown, unused, missing or wrongly shaped tensor (other than
    the logged exceptions in the module docstring); strict=False leaves those out with one warning listing
    them. Tensors the model lacks and does not need (its missing classifier) are dropped with a log line.
    A stem convolution made for another number of input channels is adapted with timm's ``adapt_input_conv``
    (as timm's pretrained loader does), with a log line.
    ``pass_other_classifier`` is set by timm's pretrained loader, which calls this as its filter: classifier
    tensors of another class count and a stem convolution of another input-channel count pass through
    unchanged, because that loader drops the former (``num_classes`` differs) and adapts the latter itself.
    """
    converted, unknown, fmt = to_timm_keys(state_dict)
    report = report if report is not None else LoadReport(fmt)
    report.source_format = fmt
    flat = isinstance(model, FeatureDictNet)
    target = {_unflatten_key(k): v for k, v in model.state_dict().items()} if flat else model.state_dict()
    out, problems = {}, []
    if unknown:
        problems.append(f'keys not recognised as {fmt} EfficientFormer keys: {unknown}')

    has_head = isinstance(getattr(model, 'head', None), nn.Linear)
    wrong_shape, unused = [], []
    for key, value in converted.items():
        if pass_other_classifier and re.match(r'head(_dist)?\.', key) and key in target:
            out[key] = value
            report.loaded.append(key)
        elif key not in target:
            if (re.match(r'head(_dist)?\.', key) and not has_head) or _pruned(key, model):
                report.dropped.append(key)
            elif _V2_DERIVED.search(key):  # the release saves the index V2 derives: check it, then drop it
                biases_key = key[:-len('attention_bias_idxs')] + 'attention_biases'
                biases = converted.get(biases_key)
                if biases is None or not torch.equal(value, _v2_bias_index(biases_key, biases)):
                    wrong_shape.append(f"{key}: index table differs from the model's relative-offset layout")
                else:
                    report.dropped.append(key)
            else:
                unused.append(key)
        elif _other_in_chans(key, value, target[key]):
            if not pass_other_classifier:
                _logger.info('adapting %s from %d to %d input channels (timm adapt_input_conv)',
                             key, value.shape[1], target[key].shape[1])
                value = adapt_input_conv(target[key].shape[1], value)
            out[key] = value
            report.loaded.append(key)
        elif value.shape != target[key].shape:
            wrong_shape.append(f'{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}')
        elif value.is_floating_point() != target[key].is_floating_point():
            wrong_shape.append(f'{key}: checkpoint dtype {value.dtype} vs model {target[key].dtype}')
        elif key.endswith('attention_bias_idxs') and not torch.equal(value.to(target[key]), target[key]):
            wrong_shape.append(f'{key}: index table differs from the model\'s relative-offset layout')
        else:
            out[key] = value
            report.loaded.append(key)
    missing = [k for k in target if k not in out and k not in converted]
    norm_missing = [k for k in missing if k.startswith('feature_norms.')]
    missing = [k for k in missing if not k.startswith('feature_norms.')]
    if norm_missing:
        report.initialised += norm_missing
        _logger.warning(
            'checkpoint has no per-output feature norms; keeping their identity-like initialisation '
            '(weight 1, bias 0) for: %s', ', '.join(sorted({k.rsplit('.', 1)[0] for k in norm_missing})))
        for key in norm_missing:
            out[key] = target[key]
    if report.dropped:
        _logger.info('checkpoint tensors this model does not use (no classifier, pruned for features_only, '
                     'derived index buffers): %s',
                     ', '.join(report.dropped))
    if wrong_shape:
        guess = ''
        try:
            guess = f' The checkpoint looks like {infer_model_name(state_dict)}.'
        except CheckpointError:
            pass
        problems.append(f'{len(wrong_shape)} tensors do not match the model ({type(model).__name__}).{guess} '
                        + '; '.join(wrong_shape[:20]))
    if unused:
        problems.append(f'checkpoint tensors with no place in the model: {unused[:40]}'
                        + (f' (+{len(unused) - 40} more)' if len(unused) > 40 else ''))
    if missing:
        problems.append(f'model tensors missing from the checkpoint: {missing[:40]}'
                        + (f' (+{len(missing) - 40} more)' if len(missing) > 40 else ''))
    if problems:
        if strict:
            raise CheckpointError(f'{fmt}-format checkpoint does not fit the model: ' + ' | '.join(problems))
        report.skipped += unknown + unused + [w.split(':')[0] for w in wrong_shape] + missing
        _logger.warning('strict=False: loading %d tensors, skipping: %s', len(out), ' | '.join(problems))
    return {_flatten_key(k): v for k, v in out.items()} if flat else out


# ---- files ----

def read_file(path, map_location='cpu'):
    """The object in a .pth/.pt/.bin (torch, loaded with ``weights_only=True``) or .safetensors file.

    Raises FileNotFoundError for a missing file and CheckpointError naming the file for one that cannot be read
    (truncated, not a checkpoint, or pickling more than tensors and containers); the reader's own exception is
    its ``__cause__``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            return load_file(path, device=str(map_location or 'cpu'))
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch / safetensors raise many types for truncated or foreign files
        raise CheckpointError(
            f'cannot read checkpoint {path}: {type(e).__name__}: {e}. The file may be truncated or not a '
            'PyTorch / safetensors checkpoint; download it again.') from e


def unwrap_state_dict(obj, source: str) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object: ``state_dict`` / ``model`` containers unwrapped, a DDP
    ``module.`` prefix removed. CheckpointError when ``source`` (a file name, for the message) holds none."""
    if isinstance(obj, dict):
        for key in ('state_dict', 'model'):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{source} holds no state dict of tensors (found {type(obj).__name__})')
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in obj.items()}


def read_checkpoint(path) -> Dict[str, torch.Tensor]:
    """Read a .pth/.pt/.bin (torch) or .safetensors file and unwrap ``state_dict`` / ``model`` containers."""
    return unwrap_state_dict(read_file(path), os.fspath(path))


def load_checkpoint(model: nn.Module, checkpoint, strict: bool = True) -> LoadReport:
    """Load a checkpoint (path or state dict, any supported format) into an EfficientFormer model or a
    ``features_only`` wrapper of one. Returns what was loaded, initialised, dropped and skipped."""
    target = getattr(model, 'model', model)  # timm's FeatureGetterNet keeps the network as .model
    state_dict = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    report = LoadReport('')
    converted = convert_state_dict(state_dict, target, strict=strict, report=report)
    target.load_state_dict(converted, strict=strict)
    return report


@contextlib.contextmanager
def atomic_output(dst: str, inputs: Tuple[str, ...] = ()):
    """Yield a temporary path next to ``dst`` and move it onto ``dst`` only if the block succeeds, so a failed
    write leaves no half file. Refuses to write over any of ``inputs``."""
    dst_abs = os.path.abspath(dst)
    if any(dst_abs == os.path.abspath(p) for p in inputs):
        raise ValueError(f'refusing to overwrite the input {dst}: choose another output path')
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst_abs), prefix='.' + os.path.basename(dst), suffix='.tmp')
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
